"""A small generic engine for JSON node graphs in ComfyUI's API (or editor) format.

Building (graph.py, workflow.py), planning (plan.py), validation (validate.py), execution
(execute.py) and caching (cache.py) are separate; host.py is what running nodes may ask of
the runner. The runner knows node classes, types and values, nothing else.
"""

from runner.cache import Cache, default_cache_dir
from runner.execute import NodeExecutionError, RunInterrupted, run
from runner.graph import Graph, GraphFormatError, GraphLimits, load_graph
from runner.host import Folders, RunnerHost
from runner.plan import Plan, plan
from runner.registry import Registry, default_registry
from runner.validate import GraphValidationError, ValidationError, validate

__all__ = [
    "Cache",
    "Folders",
    "Graph",
    "GraphFormatError",
    "GraphLimits",
    "GraphValidationError",
    "NodeExecutionError",
    "Plan",
    "Registry",
    "RunInterrupted",
    "RunnerHost",
    "ValidationError",
    "default_cache_dir",
    "default_registry",
    "load_graph",
    "plan",
    "run",
    "validate",
]
