"""Run the planned part of a validated graph, reusing cached results.

Execution is two iterative passes over the plan's order (no recursion, however long the graph):
backwards to decide what can come from the cache (a cached output is loaded without touching
its inputs), then forwards to run the rest, each node after its inputs. A result is released
as soon as its last consumer has run.

A node whose ``IS_CHANGED`` returns NaN (ComfyUI's "always rerun") is *volatile*: it and its
descendants are never served from or written to the cache. An output node is served from the
cache only while the files it wrote are still there, unchanged. After a stop request only the
nodes downstream of a partial result run (so the best result so far is saved); nothing partial
is cached, and the run ends with :class:`RunInterrupted`.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from graphrun.cache import Cache, NodeResult, UnreadableEntry, always_changes, is_storable, node_key
from graphrun.graph import Graph, load_graph, with_overrides
from graphrun.host import Folders, Preview, RunnerHost, resolve_device
from graphrun.plan import Plan, plan
from graphrun.registry import Registry, default_registry
from graphrun.spec import NodeSpec, call_hook, code_version, hidden_inputs, node_spec
from graphrun.validate import GraphValidationError, check_plan
from graphrun.values import conforms

RAN, CACHED, PARTIAL = "ran", "cached", "partial"


class Reporter(Protocol):
    """Receives what happens during a run (the CLI prints it; tests count it)."""

    def node_done(self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path],
                  text: list[str]) -> None:
        """``outcome``: ``ran``, ``cached`` or ``partial`` (ran on a stopped node's result; not cached);
        ``files``: what it wrote; ``text``: what it shows (ComfyUI's ``ui`` text)."""

    def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any],
                 preview: Preview | None) -> None: ...

    def warning(self, message: str) -> None: ...


class SilentReporter:
    def node_done(self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path],
                  text: list[str]) -> None:
        return None

    def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any],
                 preview: Preview | None) -> None:
        return None

    def warning(self, message: str) -> None:
        return None


class NodeExecutionError(RuntimeError):
    """A node failed while running; results finished before it stay cached."""

    def __init__(self, node_id: str, class_type: str, reason: str) -> None:
        self.node_id, self.class_type, self.reason = node_id, class_type, reason
        super().__init__(f"node {node_id} ({class_type}) failed: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # crosses processes (batch runs)
        return type(self), (self.node_id, self.class_type, self.reason)


class RunInterrupted(RuntimeError):
    """The run stopped on request.

    ``partial``: nodes that ran on a stopped node's result (their files were written, nothing
    was cached); ``skipped``: nodes not started; ``outputs``: what the requested outputs that
    did finish returned.
    """

    def __init__(self, partial: list[str], skipped: list[str], outputs: dict[str, tuple[Any, ...]]) -> None:
        self.partial, self.skipped, self.outputs = partial, skipped, outputs
        parts = []
        if partial:
            parts.append(f"the best result so far went through node(s) {', '.join(partial)} (not cached)")
        if skipped:
            parts.append(f"{len(skipped)} node(s) not started")
        super().__init__("; ".join(parts) or "stopped")


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


@dataclass
class Execution:
    """One run of one planned graph."""

    graph: Graph
    registry: Registry
    plan: Plan
    cache: Cache
    device: str
    folders: Folders
    stop: threading.Event
    reporter: Reporter
    keys: dict[str, str] = field(default_factory=dict)
    volatile: set[str] = field(default_factory=set)
    results: dict[str, NodeResult] = field(default_factory=dict)
    partial: set[str] = field(default_factory=set)

    def spec(self, node_id: str) -> NodeSpec:
        return node_spec(self.registry.classes[self.graph.node(node_id)["class_type"]])

    def constants(self, node_id: str) -> dict[str, Any]:
        """The node's constants as ComfyUI passes them: a FLOAT written as 1 arrives as 1.0 (and keys the same)."""
        inputs = self.spec(node_id).inputs
        return {name: float(value) if name in inputs and inputs[name].type == "FLOAT" else value
                for name, value in self.graph.node(node_id)["constants"].items()}

    def sources(self, node_id: str) -> list[str]:
        return [source for source, _ in self.graph.node(node_id)["links"].values()]

    def host(self, node_id: str) -> RunnerHost:
        class_type = self.graph.node(node_id)["class_type"]

        def progress(step: int, total: int, info: dict[str, Any], preview: Preview | None) -> None:
            self.reporter.progress(node_id, class_type, step, total, info, preview)

        return RunnerHost(self.device, self.folders, self.stop, progress)

    def hidden(self, node_id: str, host: RunnerHost) -> dict[str, Any]:
        """Hidden inputs by kind, as ComfyUI names them, plus the runner's own ``NST_CONTEXT``."""
        return {
            "PROMPT": self.graph.prompt,
            "UNIQUE_ID": node_id,
            "EXTRA_PNGINFO": {"workflow": self.graph.workflow} if self.graph.workflow is not None else None,
            "NST_CONTEXT": host,
        }

    def hidden_for(self, node_id: str, host: RunnerHost) -> dict[str, Any]:
        return hidden_inputs(self.spec(node_id), self.hidden(node_id, host))

    # --- keys ----------------------------------------------------------------------------------

    def compute_keys(self) -> None:
        for node_id in self.plan.order:
            data = self.graph.node(node_id)
            node_class = self.spec(node_id).node_class
            changed = None
            if hasattr(node_class, "IS_CHANGED"):
                try:
                    changed = call_hook(node_class.IS_CHANGED, self.constants(node_id),
                                        self.hidden_for(node_id, self.host(node_id)))
                except Exception as error:  # ComfyUI's reading too: a failing IS_CHANGED means "changed"
                    self.reporter.warning(f"node {node_id}: IS_CHANGED failed ({type(error).__name__}: {error}); "
                                          "it will rerun every time")
                    changed = float("nan")
                if always_changes(changed):
                    self.volatile.add(node_id)
            if any(source in self.volatile for source in self.sources(node_id)):
                self.volatile.add(node_id)
            if node_id in self.volatile:
                self.keys[node_id] = uuid.uuid4().hex  # matches nothing cached, is never stored
                continue
            linked = {name: (self.keys[source], index) for name, (source, index) in data["links"].items()}
            self.keys[node_id] = node_key(
                data["class_type"], code_version(node_class), self.constants(node_id), changed, linked
            )

    # --- the cache -----------------------------------------------------------------------------

    def cached(self, node_id: str) -> NodeResult | None:
        """A usable cached result: readable, fitting the node's declared outputs, with its files in place."""
        if node_id in self.plan.forced or node_id in self.volatile:
            return None
        key = self.keys[node_id]
        try:
            result = self.cache.lookup(key)
        except UnreadableEntry as error:
            self.reporter.warning(f"node {node_id}: {error}; recomputing")
            return None
        finally:
            problem = self.cache.take_disk_problem()
            if problem:
                self.reporter.warning(problem)
        if result is None:
            return None
        spec = self.spec(node_id)
        if not self.fits(spec, result):
            self.cache.discard(key)
            self.reporter.warning(f"node {node_id}: its cached result does not fit the outputs {spec.return_types} "
                                  "it declares; discarded, recomputing")
            return None
        changed = [name for name, digest in result.files.items()
                   if file_digest(self.folders.output / name) != digest]
        if changed:
            missing = ", ".join(str(self.folders.output / name) for name in changed)
            self.reporter.warning(f"node {node_id}: {missing} is missing or changed; writing it again")
            return None
        return result

    def fits(self, spec: NodeSpec, result: NodeResult) -> bool:
        if len(result.outputs) != len(spec.return_types):
            return False
        return all(
            conforms(value, self.registry.value_types[kind])
            for value, kind in zip(result.outputs, spec.return_types)
            if kind in self.registry.value_types
        )

    def keep(self, node_id: str, result: NodeResult) -> None:
        if node_id in self.volatile:
            return
        spec = self.spec(node_id)
        to_disk = spec.disk_cache and self.storable(node_id, result)
        try:
            self.cache.store(self.keys[node_id], result, to_disk=to_disk)
        except OSError as error:
            problem = self.cache.take_disk_problem()
            self.reporter.warning(problem or f"node {node_id}: could not write its cache entry ({error}); "
                                             "kept in memory")

    def storable(self, node_id: str, result: NodeResult) -> bool:
        if is_storable(list(result.outputs)) and is_storable(result.ui):
            return True
        class_type = self.graph.node(node_id)["class_type"]
        self.reporter.warning(
            f"node {node_id} ({class_type}) returned values that cannot be stored safely; kept in memory "
            "only (declare DISK_CACHE = False on the class to say so)"
        )
        return False

    # --- running -------------------------------------------------------------------------------

    def written_files(self, result: NodeResult) -> list[Path]:
        """Files an output node reports in ComfyUI's ``ui`` shape (``type`` "output"), relative to the output folder."""
        items = []
        for entries in (result.ui or {}).values():
            for item in entries if isinstance(entries, list) else ():
                if isinstance(item, dict) and item.get("type") == "output" and isinstance(item.get("filename"), str):
                    items.append(Path(str(item.get("subfolder") or "")) / item["filename"])
        return items

    @staticmethod
    def shown_text(result: NodeResult) -> list[str]:
        """The lines a node shows, in ComfyUI's ``ui`` shape (``{"text": [...]}``)."""
        text = (result.ui or {}).get("text") or []
        return [str(line) for line in text] if isinstance(text, (list, tuple)) else [str(text)]

    def run_node(self, node_id: str) -> NodeResult:
        data = self.graph.node(node_id)
        class_type = data["class_type"]
        spec = self.spec(node_id)
        inputs = {name: self.results[source].outputs[index] for name, (source, index) in data["links"].items()}
        host = self.host(node_id)
        function = getattr(spec.node_class(), spec.function)
        try:
            returned = function(**self.constants(node_id), **inputs, **self.hidden_for(node_id, host))
        except Exception as error:
            raise NodeExecutionError(node_id, class_type, f"{type(error).__name__}: {error}") from error
        if isinstance(returned, dict):
            result = NodeResult(tuple(returned.get("result") or ()), returned.get("ui"))
        elif isinstance(returned, (tuple, list)):
            result = NodeResult(tuple(returned))
        else:
            raise NodeExecutionError(node_id, class_type, f"returned {type(returned).__name__}, not a tuple of outputs")
        if len(result.outputs) != len(spec.return_types):
            raise NodeExecutionError(
                node_id, class_type, f"returned {len(result.outputs)} values for {len(spec.return_types)} outputs"
            )
        if host.stopped_early or any(source in self.partial for source in self.sources(node_id)):
            self.partial.add(node_id)
        elif spec.output_node:
            files = {str(path): file_digest(self.folders.output / path) for path in self.written_files(result)}
            result = NodeResult(result.outputs, result.ui, {name: d for name, d in files.items() if d})
        return result

    def execute(self, node_id: str) -> NodeResult:
        """Run one node whose inputs are in ``results``; keep (unless partial) and report its result."""
        started = time.perf_counter()
        result = self.run_node(node_id)
        self.results[node_id] = result
        if node_id in self.partial:
            outcome = PARTIAL
        else:
            outcome = RAN
            self.keep(node_id, result)
        files = [self.folders.output / path for path in self.written_files(result)]
        self.reporter.node_done(node_id, self.graph.node(node_id)["class_type"], time.perf_counter() - started,
                                outcome, files, self.shown_text(result))
        return result

    def serve_from_cache(self) -> tuple[dict[str, float], set[str]]:
        """Backwards from the targets: the nodes the cache serves (with the seconds that took) and
        the nodes that must run. The inputs of a served node are not touched."""
        hits: dict[str, float] = {}
        to_run: set[str] = set()
        wanted = set(self.plan.targets)
        for node_id in reversed(self.plan.order):
            if node_id not in wanted:
                continue
            started = time.perf_counter()
            result = self.cached(node_id)
            if result is None:
                to_run.add(node_id)
                wanted.update(self.sources(node_id))
            else:
                self.results[node_id] = result
                hits[node_id] = time.perf_counter() - started
        return hits, to_run

    def run(self) -> dict[str, tuple[Any, ...]]:
        """Forwards through the plan: report what the cache served, run the rest, each after its inputs."""
        self.compute_keys()
        hits, to_run = self.serve_from_cache()
        readers = Counter(source for node_id in to_run for source in self.sources(node_id))
        skipped: list[str] = []
        for node_id in self.plan.order:
            class_type = self.graph.node(node_id)["class_type"]
            if node_id in hits:
                result = self.results[node_id]
                files = [self.folders.output / name for name in result.files]
                self.reporter.node_done(node_id, class_type, hits[node_id], CACHED, files, self.shown_text(result))
                continue
            if node_id not in to_run:
                continue
            sources = self.sources(node_id)
            ready = all(source in self.results for source in sources)
            on_partial = any(source in self.partial for source in sources)
            if not ready or (self.stop.is_set() and not on_partial):
                skipped.append(node_id)
                continue
            self.execute(node_id)
            for source in sources:  # release what no later node reads
                readers[source] -= 1
                if readers[source] == 0 and source not in self.plan.targets:
                    self.results.pop(source, None)

        outputs = {node_id: self.results[node_id].outputs for node_id in self.plan.order
                   if node_id in self.plan.targets and node_id in self.results}
        if self.stop.is_set() and (self.partial or skipped):  # a stop after the last node changes nothing
            raise RunInterrupted(sorted(self.partial, key=self.plan.order.index), skipped, outputs)
        return outputs


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
    interrupt: threading.Event | None = None,
    folders: Folders | None = None,
) -> dict[str, tuple[Any, ...]]:
    """Validate, then run what ``outputs`` (default: every output node) need; returns their outputs.

    Raises :class:`GraphValidationError` before running anything if the graph is invalid,
    :class:`NodeExecutionError` if a node fails and :class:`RunInterrupted` once ``interrupt``
    is set (after the best result so far reached the output nodes); in every case the results
    finished before stay cached.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'auto', not {type(device).__name__}")
    for name, value, kind in (("cache", cache, Cache), ("registry", registry, Registry),
                              ("folders", folders, Folders), ("interrupt", interrupt, threading.Event)):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__module__}.{kind.__name__}, not {type(value).__name__}")
    if reporter is not None and not all(callable(getattr(reporter, method, None))
                                        for method in ("node_done", "progress", "warning")):
        raise TypeError("reporter must have the methods node_done, progress and warning (see graphrun.execute.Reporter)")
    registry = registry or default_registry()
    if not isinstance(graph, Graph):
        graph = load_graph(graph, registry=registry)
    if overrides:
        graph = with_overrides(graph, overrides)
    folders = folders or Folders()
    stop = interrupt or threading.Event()
    the_plan = plan(graph, registry, outputs, recompute)
    execution = Execution(
        graph=graph,
        registry=registry,
        plan=the_plan,
        cache=cache if cache is not None else Cache(None),
        device=resolve_device(device),
        folders=folders,
        stop=stop,
        reporter=reporter or SilentReporter(),
    )
    errors = check_plan(graph, registry, the_plan, folders, execution.device)
    if errors:
        raise GraphValidationError(errors, graph.source)
    return execution.run()
