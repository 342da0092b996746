"""A small generic engine for JSON node graphs in ComfyUI's API (or editor) format.

Building (graph.py, workflow.py), planning (plan.py), validation (validate.py), execution
(execute.py) and caching (cache.py) are separate; host.py is what running nodes may ask of
the runner. The runner knows node classes, types and values, nothing else.
"""

from graphrun.cache import Cache, default_cache_dir
from graphrun.execute import NodeExecutionError, RunInterrupted, run
from graphrun.graph import Graph, GraphFormatError, GraphLimits, load_graph
from graphrun.host import Folders, RunnerHost
from graphrun.plan import Plan, plan
from graphrun.registry import Registry, default_registry
from graphrun.validate import GraphValidationError, ValidationError, validate

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
