"""A small generic engine for JSON node graphs in ComfyUI's API (or editor) format.

Building (graph.py, workflow.py), planning (plan.py), validation (validate.py), execution through
a step API (execute.py) driven by executors (executors/: the local loop, Dask), caching (cache/)
and batches (batch/) are separate; host.py is what running nodes may ask of the engine, app.py how
an application names itself. The engine knows node classes, types and values, nothing else.
"""

from graphrun.app import App
from graphrun.cache import Cache, user_cache_dir
from graphrun.execute import Execution, NodeExecutionError, RunInterrupted
from graphrun.executors.local import run, run_locally
from graphrun.graph import Graph, GraphFormatError, GraphLimits, load_graph
from graphrun.host import Folders, RunnerHost
from graphrun.plan import Plan, plan
from graphrun.registry import Registry, default_registry
from graphrun.validate import GraphValidationError, ValidationError, validate

__all__ = [
    "App",
    "Cache",
    "Execution",
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
    "default_registry",
    "load_graph",
    "plan",
    "run",
    "run_locally",
    "user_cache_dir",
    "validate",
]
