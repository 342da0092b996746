"""The local executor: each ready node computed in this process, in plan order; and :func:`run`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from graphrun.cache import Cache
from graphrun.execute import Execution
from graphrun.graph import Graph, graph_of
from graphrun.host import Folders, resolve_device
from graphrun.plan import plan
from graphrun.registry import Registry, default_registry
from graphrun.reporting import Reporter, SilentReporter, is_reporter
from graphrun.validate import GraphValidationError, check_plan


def run_locally(execution: Execution) -> dict[str, tuple[Any, ...]]:
    """Prepare, compute every ready node until none is left, and return the targets' outputs."""
    execution.prepare()
    while (node_id := execution.next_ready()) is not None:
        execution.complete(node_id, execution.compute(node_id))
    return execution.outputs()


def run(
    graph: Graph | dict[str, Any] | str | Path,
    *,
    device: str = "auto",
    outputs: list[str] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    cache: Cache | None = None,
    recompute: list[str] | tuple[str, ...] = (),
    registry: Registry | None = None,
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
    folders: Folders | None = None,
) -> dict[str, tuple[Any, ...]]:
    """Validate, then run what ``outputs`` (default: every output node) need; returns their outputs.

    Raises :class:`~graphrun.validate.GraphValidationError` before running anything if the graph is
    invalid, :class:`~graphrun.execute.NodeExecutionError` if a node fails and
    :class:`~graphrun.execute.RunInterrupted` once ``stop`` is set (after the best result so far
    reached the output nodes); in every case the results finished before stay cached.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'auto', not {type(device).__name__}")
    for name, value, kind in (
        ("cache", cache, Cache),
        ("registry", registry, Registry),
        ("folders", folders, Folders),
        ("stop", stop, threading.Event),
    ):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__module__}.{kind.__name__}, not {type(value).__name__}")
    if reporter is not None and not is_reporter(reporter):
        raise TypeError(
            "reporter must have the methods node_done, progress and warning (see graphrun.reporting.Reporter)"
        )
    registry = registry or default_registry()
    graph = graph_of(graph, registry, overrides)
    folders = folders or Folders()
    the_plan = plan(graph, registry, outputs, recompute)
    execution = Execution(
        graph=graph,
        registry=registry,
        plan=the_plan,
        cache=cache if cache is not None else Cache(None),
        device=resolve_device(device),
        folders=folders,
        stop=stop or threading.Event(),
        reporter=reporter or SilentReporter(),
    )
    errors = check_plan(graph, registry, the_plan, folders, execution.device)
    if errors:
        raise GraphValidationError(errors, graph.source)
    return run_locally(execution)
