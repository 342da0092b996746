"""A small generic engine for JSON node graphs in ComfyUI's API format.

Building (graph.py), validation (validate.py), execution (execute.py) and caching
(cache.py) are separate; the runner knows node classes, types and values, nothing else.
"""

from runner.cache import Cache, default_cache_dir
from runner.context import ExecutionContext, Interrupted
from runner.execute import NodeExecutionError, RunInterrupted, run
from runner.graph import Graph, GraphFormatError, load_graph
from runner.registry import Registry, default_registry
from runner.validate import GraphValidationError, ValidationError, validate

__all__ = [
    "Cache",
    "ExecutionContext",
    "Graph",
    "GraphFormatError",
    "GraphValidationError",
    "Interrupted",
    "NodeExecutionError",
    "Registry",
    "RunInterrupted",
    "ValidationError",
    "default_cache_dir",
    "default_registry",
    "load_graph",
    "run",
    "validate",
]
