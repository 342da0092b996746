"""Run the part of a validated graph that the requested outputs need, reusing cached results."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import networkx as nx

from runner.cache import Cache, CorruptCacheEntry, NodeResult, is_storable, node_key
from runner.context import ExecutionContext, Interrupted, resolve_device
from runner.graph import Graph, load_graph, with_overrides
from runner.registry import Registry, default_registry
from runner.spec import call_with_constants, code_version, node_spec
from runner.validate import GraphValidationError, output_nodes, validate


class Reporter(Protocol):
    """Receives what happens during a run (the CLI prints it; tests count it)."""

    def node_done(
        self, node_id: str, class_type: str, seconds: float, cached: bool, ui: dict[str, Any] | None
    ) -> None: ...

    def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any]) -> None: ...

    def warning(self, message: str) -> None: ...


class SilentReporter:
    def node_done(
        self, node_id: str, class_type: str, seconds: float, cached: bool, ui: dict[str, Any] | None
    ) -> None:
        return None

    def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any]) -> None:
        return None

    def warning(self, message: str) -> None:
        return None


class NodeExecutionError(RuntimeError):
    """A node failed while running; results finished before it stay cached."""

    def __init__(self, node_id: str, class_type: str, message: str) -> None:
        self.node_id, self.class_type = node_id, class_type
        super().__init__(f"node {node_id} ({class_type}) failed: {message}")


class RunInterrupted(RuntimeError):
    """The run stopped on request; ``kept`` lists the nodes whose results are cached."""

    def __init__(self, node_id: str, class_type: str, kept: list[str]) -> None:
        self.kept = kept
        super().__init__(
            f"interrupted at node {node_id} ({class_type}), whose result was not cached; "
            f"kept {len(kept)} finished result(s): {', '.join(kept) or 'none'}"
        )


@dataclass
class Execution:
    """One run of one graph: keys every needed node, then evaluates the outputs depth-first."""

    graph: Graph
    registry: Registry
    cache: Cache
    context: ExecutionContext
    reporter: Reporter
    forced: set[str] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)
    results: dict[str, NodeResult] = field(default_factory=dict)

    def node_class(self, node_id: str) -> type:
        return self.registry.classes[self.graph.node(node_id)["class_type"]]

    def compute_keys(self, needed: Iterable[str]) -> None:
        for node_id in nx.topological_sort(self.graph.dag.subgraph(needed)):
            data = self.graph.node(node_id)
            node_class = self.node_class(node_id)
            changed = None
            if hasattr(node_class, "IS_CHANGED"):
                try:
                    changed = call_with_constants(node_class.IS_CHANGED, data["constants"])
                except Exception as error:
                    raise NodeExecutionError(node_id, data["class_type"], f"IS_CHANGED failed: {error}") from error
            linked = {name: (self.keys[source], index) for name, (source, index) in data["links"].items()}
            self.keys[node_id] = node_key(
                data["class_type"], code_version(node_class), data["constants"], changed, linked
            )

    def evaluate(self, node_id: str) -> NodeResult:
        """The node's result: from this run, the cache, or by running it (after its inputs)."""
        if node_id in self.results:
            return self.results[node_id]
        data = self.graph.node(node_id)
        key = self.keys[node_id]
        started = time.perf_counter()
        result = None if node_id in self.forced else self._cached(node_id, key)
        cached = result is not None
        if result is None:
            inputs = {
                name: self.evaluate(source).outputs[index] for name, (source, index) in data["links"].items()
            }
            started = time.perf_counter()
            result = self._run_node(node_id, inputs)
            spec = node_spec(self.node_class(node_id))
            to_disk = spec.disk_cache and self._storable(node_id, result)
            try:
                self.cache.store(key, result, to_disk=to_disk)
            except OSError as error:
                self.reporter.warning(f"node {node_id}: could not write its cache entry ({error}); kept in memory")
        self.reporter.node_done(node_id, data["class_type"], time.perf_counter() - started, cached, result.ui)
        self.results[node_id] = result
        return result

    def _cached(self, node_id: str, key: str) -> NodeResult | None:
        try:
            return self.cache.lookup(key)
        except CorruptCacheEntry as error:
            self.reporter.warning(f"node {node_id}: {error}; recomputing")
            return None

    def _storable(self, node_id: str, result: NodeResult) -> bool:
        if is_storable(list(result.outputs)) and is_storable(result.ui):
            return True
        class_type = self.graph.node(node_id)["class_type"]
        self.reporter.warning(
            f"node {node_id} ({class_type}) returned values that cannot be stored safely; kept in memory "
            "only (declare DISK_CACHE = False on the class to say so)"
        )
        return False

    def _run_node(self, node_id: str, inputs: dict[str, Any]) -> NodeResult:
        data = self.graph.node(node_id)
        class_type = data["class_type"]
        spec = node_spec(self.node_class(node_id))
        hidden_values = {"PROMPT": self.graph.prompt, "UNIQUE_ID": node_id}
        context = ExecutionContext(
            device=self.context.device,
            on_progress=lambda step, total, info: self.reporter.progress(node_id, class_type, step, total, info),
            interrupt=self.context.interrupt,
        )
        hidden_values["NST_CONTEXT"] = context
        hidden = {name: hidden_values[kind] for name, kind in spec.hidden.items() if kind in hidden_values}
        function = getattr(spec.node_class(), spec.function)
        if self.context.interrupted:
            raise RunInterrupted(node_id, class_type, kept=sorted(self.results, key=str))
        try:
            returned = function(**data["constants"], **inputs, **hidden)
        except Interrupted:
            returned = None
        except Exception as error:
            raise NodeExecutionError(node_id, class_type, f"{type(error).__name__}: {error}") from error
        if self.context.interrupted:
            raise RunInterrupted(node_id, class_type, kept=sorted(self.results, key=str))
        if isinstance(returned, dict):
            result = NodeResult(tuple(returned.get("result", ())), returned.get("ui"))
        else:
            result = NodeResult(tuple(returned))
        if len(result.outputs) != len(spec.return_types):
            raise NodeExecutionError(
                node_id, class_type, f"returned {len(result.outputs)} values for {len(spec.return_types)} outputs"
            )
        return result


def run(
    graph: Graph | dict[str, Any] | str | Path,
    *,
    device: str = "auto",
    outputs: list[str] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    cache: Cache | None = None,
    recompute: Iterable[str] = (),
    registry: Registry | None = None,
    reporter: Reporter | None = None,
    interrupt: threading.Event | None = None,
) -> dict[str, tuple[Any, ...]]:
    """Validate, then run what ``outputs`` (default: every output node) need; returns their outputs.

    Raises :class:`GraphValidationError` before running anything if the graph is invalid,
    :class:`NodeExecutionError` if a node fails and :class:`RunInterrupted` if ``interrupt``
    is set; in both cases every result finished before stays cached.
    """
    if not isinstance(graph, Graph):
        graph = load_graph(graph)
    if overrides:
        graph = with_overrides(graph, overrides)
    registry = registry or default_registry()
    recompute = list(recompute)
    errors = validate(graph, registry, outputs, recompute)
    if errors:
        raise GraphValidationError(errors, graph.source)
    targets = outputs if outputs is not None else output_nodes(graph, registry)
    needed = set(targets).union(*(nx.ancestors(graph.dag, t) for t in targets))
    forced = set(recompute).union(*(nx.descendants(graph.dag, r) for r in recompute)) & needed

    execution = Execution(
        graph=graph,
        registry=registry,
        cache=cache if cache is not None else Cache(None),
        context=ExecutionContext(device=resolve_device(device), interrupt=interrupt or threading.Event()),
        reporter=reporter or SilentReporter(),
        forced=forced,
    )
    execution.compute_keys(needed)
    order = [n for n in nx.topological_sort(graph.dag) if n in targets]
    return {node_id: execution.evaluate(node_id).outputs for node_id in order}

