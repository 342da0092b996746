"""Run the planned part of a validated graph, reusing cached results, through a step API.

An :class:`Execution` is one run of one plan. Executors drive it in steps, as Hamilton's task
executors and ComfyUI's execution list do:

    execution.prepare()                          # keys; what the cache serves (its inputs untouched)
    while (node_id := execution.next_ready()):   # a node whose inputs are all complete
        execution.complete(node_id, value)       # value: computed here, or a handle to it elsewhere
    execution.outputs()                          # the targets' outputs, or RunInterrupted

The local loop (executors/local.py) computes each value with :meth:`Execution.compute`, one node
at a time, so a stop request is seen before each node starts; the Dask executor
(executors/dask.py) takes every ready node at once and completes it with its task's future. Results are released
as soon as their last consumer completed.

A node whose ``IS_CHANGED`` returns NaN (ComfyUI's "always rerun") is *volatile*: it and its
descendants are never served from or written to the cache. An output node is served from the
cache only while the files it wrote are still there, unchanged. After a stop request only the
nodes downstream of a partial result, and the nodes they still wait for, become ready (so the best
result so far is saved, even where its consumer also needs a short branch not run yet); nothing
partial is cached, and :meth:`Execution.outputs` raises :class:`RunInterrupted`. What a stopped
node kept of its progress (graphrun/cache/progress.py) waits under its key for the next run.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphrun.cache import Cache, NodeResult, UnreadableEntry
from graphrun.cache.entry import result_is_storable
from graphrun.cache.keys import always_changes, code_version, file_digest, node_key, progress_key
from graphrun.cache.progress import KeptProgress
from graphrun.graph import Graph
from graphrun.host import Folders, Preview, RunnerHost
from graphrun.plan import Plan
from graphrun.registry import Registry
from graphrun.reporting import CACHED, PARTIAL, RAN, Reporter
from graphrun.spec import HOST_INPUT, NodeSpec, call_hook, hidden_inputs, node_spec


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
    did finish returned; ``kept``: stopped nodes that kept their progress for the next run.
    """

    def __init__(
        self,
        partial: list[str],
        skipped: list[str],
        outputs: dict[str, tuple[Any, ...]],
        kept: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.partial, self.skipped, self.outputs, self.kept = partial, skipped, outputs, list(kept)
        parts = []
        if partial:
            parts.append(f"the best result so far went through node(s) {', '.join(partial)} (not cached)")
        if self.kept:
            parts.append(f"node(s) {', '.join(self.kept)} kept their progress: run again to go on from it")
        if skipped:
            parts.append(f"{len(skipped)} node(s) not started")
        super().__init__("; ".join(parts) or "stopped")

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # crosses processes (batch runs)
        return type(self), (self.partial, self.skipped, {}, self.kept)


def written_files(result: NodeResult) -> list[Path]:
    """Files an output node reports in ComfyUI's ``ui`` shape (``type`` "output"), relative to the output folder."""
    items = []
    for entries in (result.ui or {}).values():
        for item in entries if isinstance(entries, list) else ():
            if isinstance(item, dict) and item.get("type") == "output" and isinstance(item.get("filename"), str):
                items.append(Path(str(item.get("subfolder") or "")) / item["filename"])
    return items


def shown_text(result: NodeResult) -> list[str]:
    """The lines a node shows, in ComfyUI's ``ui`` shape (``{"text": [...]}``)."""
    text = (result.ui or {}).get("text") or []
    return [str(line) for line in text] if isinstance(text, (list, tuple)) else [str(text)]


@dataclass
class Execution:
    """One run of one planned graph. ``keys`` (and ``volatile``) may be given: an executor that
    computed them elsewhere (a batch's client) hands them to the process that runs the node."""

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
    values: dict[str, Any] = field(default_factory=dict)  # complete nodes -> result (or an executor's handle)
    partial: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    kept: set[str] = field(default_factory=set)  # stopped nodes that kept their progress for the next run
    _readers: Counter[str] = field(default_factory=Counter)  # node -> consumers that have not completed
    _missing: dict[str, int] = field(default_factory=dict)  # node to run -> its inputs not complete yet
    _consumers: dict[str, list[str]] = field(default_factory=dict)  # node -> the nodes to run that read it
    _ready: list[tuple[int, str]] = field(default_factory=list)  # a heap, in plan order
    _position: dict[str, int] = field(default_factory=dict)
    _kept_inputs: set[str] = field(default_factory=set)  # completed with keeps_inputs
    _downstream: set[str] = field(default_factory=set)  # nodes to run that rest on a partial result, at any remove
    _after_stop: set[str] = field(default_factory=set)  # those and the nodes they still wait for: run after a stop

    def spec(self, node_id: str) -> NodeSpec:
        return node_spec(self.registry.classes[self.class_type(node_id)])

    def class_type(self, node_id: str) -> str:
        return str(self.graph.node(node_id)["class_type"])

    def constants(self, node_id: str) -> dict[str, Any]:
        """The node's constants as ComfyUI passes them: a FLOAT written as 1 arrives as 1.0 (and keys the same)."""
        inputs = self.spec(node_id).inputs
        return {
            name: float(value) if name in inputs and inputs[name].type == "FLOAT" else value
            for name, value in self.graph.node(node_id)["constants"].items()
        }

    def sources(self, node_id: str) -> list[str]:
        return [source for source, _ in self.graph.node(node_id)["links"].values()]

    def host(self, node_id: str) -> RunnerHost:
        class_type = self.class_type(node_id)

        def progress(step: int, total: int, info: dict[str, Any], preview: Preview | None) -> None:
            self.reporter.progress(node_id, class_type, step, total, info, preview)

        return RunnerHost(self.device, self.folders, self.stop, progress, self._kept_progress(node_id))

    def _kept_progress(self, node_id: str) -> KeptProgress | None:
        """Where the node keeps its progress when stopped: under its key, unless it has none yet (its
        ``IS_CHANGED`` is being asked), reruns every time, or runs on a stopped node's partial result."""
        if node_id not in self.keys or node_id in self.volatile:
            return None
        if any(source in self.partial for source in self.sources(node_id)):
            return None

        def warn(message: str) -> None:
            self.reporter.warning(f"node {node_id} ({self.class_type(node_id)}): {message}")

        return KeptProgress(
            self.cache,
            progress_key(self.keys[node_id]),
            warn,
            on_kept=lambda: self.kept.add(node_id),
            resumable=node_id not in self.plan.forced,
        )

    def hidden_for(self, node_id: str, host: RunnerHost) -> dict[str, Any]:
        """Hidden inputs by kind, as ComfyUI names them, plus the engine's own host."""
        by_kind = {
            "PROMPT": self.graph.prompt,
            "UNIQUE_ID": node_id,
            "EXTRA_PNGINFO": {"workflow": self.graph.workflow} if self.graph.workflow is not None else None,
            HOST_INPUT: host,
        }
        return hidden_inputs(self.spec(node_id), by_kind)

    # --- keys and the cache ------------------------------------------------------------------

    def compute_keys(self) -> None:
        """Every planned node's key, unless the keys were given."""
        if self.keys:
            return
        for node_id in self.plan.order:
            data = self.graph.node(node_id)
            node_class = self.spec(node_id).node_class
            changed = None
            if hasattr(node_class, "IS_CHANGED"):
                try:
                    changed = call_hook(
                        node_class.IS_CHANGED, self.constants(node_id), self.hidden_for(node_id, self.host(node_id))
                    )
                except Exception as error:  # ComfyUI's reading too: a failing IS_CHANGED means "changed"
                    self.reporter.warning(
                        f"node {node_id}: IS_CHANGED failed ({type(error).__name__}: {error}); it will rerun every time"
                    )
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
        if not self.registry.fits(self.spec(node_id).return_types, result.outputs):
            self.cache.discard(key)
            self.reporter.warning(
                f"node {node_id}: its cached result does not fit the outputs "
                f"{self.spec(node_id).return_types} it declares; discarded, recomputing"
            )
            return None
        changed = [name for name, digest in result.files.items() if file_digest(self.folders.output / name) != digest]
        if changed:
            first = self.folders.output / changed[0]
            what = f"{first} is" if len(changed) == 1 else f"{first} and {len(changed) - 1} more of its files are"
            self.reporter.warning(
                f"node {node_id}: {what} missing or changed; writing {'them' if changed[1:] else 'it'} again"
            )
            return None
        return result

    def _keep(self, node_id: str, result: NodeResult) -> None:
        if node_id in self.volatile:
            return
        to_disk = self.spec(node_id).disk_cache and self._storable(node_id, result)
        try:
            self.cache.store(self.keys[node_id], result, to_disk=to_disk)
        except OSError as error:
            problem = self.cache.take_disk_problem()
            self.reporter.warning(
                problem or f"node {node_id}: could not write its cache entry ({error}); not cached on disk"
            )

    def _storable(self, node_id: str, result: NodeResult) -> bool:
        if result_is_storable(result):
            return True
        self.reporter.warning(
            f"node {node_id} ({self.class_type(node_id)}) returned values that cannot be stored safely; not cached "
            "on disk (declare DISK_CACHE = False on the class to say so)"
        )
        return False

    # --- the steps ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Keys (unless given), then backwards from the targets: what the cache serves (reported as
        cached; its inputs are not touched) and what must run. Values already completed (shipped
        from elsewhere) are neither looked up nor run."""
        self.compute_keys()
        wanted = set(self.plan.targets)
        to_run: set[str] = set()
        hits: dict[str, float] = {}
        for node_id in reversed(self.plan.order):
            if node_id not in wanted or node_id in self.values:
                continue
            started = time.perf_counter()
            result = self.cached(node_id)
            if result is None:
                to_run.add(node_id)
                wanted.update(self.sources(node_id))
            else:
                self.values[node_id] = result
                hits[node_id] = time.perf_counter() - started
        for node_id in self.plan.order:
            if node_id in hits:
                result = self.values[node_id]
                files = [self.folders.output / name for name in result.files]
                self.reporter.node_done(
                    node_id, self.class_type(node_id), hits[node_id], CACHED, files, shown_text(result)
                )
        position = {node_id: index for index, node_id in enumerate(self.plan.order)}
        for node_id in self.plan.order:
            if node_id not in to_run:
                continue
            sources = set(self.sources(node_id))
            self._readers.update(sources)
            self._missing[node_id] = len([source for source in sources if source not in self.values])
            for source in sources:
                self._consumers.setdefault(source, []).append(node_id)
            if self._missing[node_id] == 0:
                heapq.heappush(self._ready, (position[node_id], node_id))
        self._position = position
        for node_id in list(self.partial):  # partial values provided before (a task's shipped inputs)
            self._mark_partial(node_id)

    def next_ready(self) -> str | None:
        """The first node (in plan order) whose inputs are all complete, or None. After a stop request,
        only nodes that rest on a partial result, and the nodes these still wait for, are ready; the others are
        skipped."""
        while self._ready:
            _, node_id = heapq.heappop(self._ready)
            del self._missing[node_id]
            if self.stop.is_set() and node_id not in self._after_stop:
                self.skipped.append(node_id)
                continue
            return node_id
        return None

    def ready(self) -> list[str]:
        """Every node ready now (see :meth:`next_ready`)."""
        found = []
        while (node_id := self.next_ready()) is not None:
            found.append(node_id)
        return found

    def compute(self, node_id: str) -> NodeResult:
        """Run one ready node here; keep its result (unless partial) and report it."""
        started = time.perf_counter()
        result = self._call(node_id)
        if node_id in self.partial:
            outcome = PARTIAL
        else:
            outcome = RAN
            self._keep(node_id, result)
            if node_id not in self.volatile:
                self.cache.discard(progress_key(self.keys[node_id]))  # what a stopped run of it kept
                self.kept.discard(node_id)
        files = [self.folders.output / path for path in written_files(result)]
        self.reporter.node_done(
            node_id, self.class_type(node_id), time.perf_counter() - started, outcome, files, shown_text(result)
        )
        return result

    def complete(self, node_id: str, value: Any, partial: bool = False, keeps_inputs: bool = False) -> None:
        """Record a node's value (its result, or an executor's handle to it) and release the inputs
        that no later node reads. ``partial``: the value is a stopped node's best so far.
        ``keeps_inputs``: the value is only a promise to compute the node later from its inputs (a
        Dask task ships them), so they are released with it, not now."""
        self.values[node_id] = value
        if partial:
            self._mark_partial(node_id)
        for consumer in self._consumers.get(node_id, ()):
            if consumer in self._missing:
                self._missing[consumer] -= 1
                if self._missing[consumer] == 0:
                    heapq.heappush(self._ready, (self._position[consumer], consumer))
        if keeps_inputs:
            self._kept_inputs.add(node_id)
        else:
            self._release_inputs(node_id)

    def _release_inputs(self, node_id: str) -> None:
        pending = [node_id]
        while pending:
            for source in set(self.sources(pending.pop())):
                self._readers[source] -= 1
                if self._readers[source] == 0 and source not in self.plan.targets:
                    self.values.pop(source, None)
                    if source in self._kept_inputs:
                        pending.append(source)

    def provide(self, node_id: str, result: NodeResult, partial: bool = False) -> None:
        """A value computed elsewhere for a node that is not part of this graph (a batch task's shipped input)."""
        self.values[node_id] = result
        if partial:
            self._mark_partial(node_id)

    def _mark_partial(self, node_id: str) -> None:
        """``node_id``'s value is partial: what rests on it is to run after a stop, with the nodes that still have
        to run for it (the picture a stylizer in training is applied to). Each node is visited once a run."""
        self.partial.add(node_id)
        pending = list(self._consumers.get(node_id, ()))
        while pending:
            consumer = pending.pop()
            if consumer not in self._downstream:
                self._downstream.add(consumer)
                pending.extend(self._consumers.get(consumer, ()))
                waited = [consumer]
                while waited:
                    wanted = waited.pop()
                    if wanted not in self._after_stop:
                        self._after_stop.add(wanted)
                        waited.extend(source for source in self.sources(wanted) if source in self._missing)

    def outputs(self) -> dict[str, tuple[Any, ...]]:
        """The targets' outputs; :class:`RunInterrupted` if a stop left anything partial or not started."""
        self.skipped.extend(node_id for node_id in self.plan.order if node_id in self._missing)
        self._missing.clear()
        found = {
            node_id: self.values[node_id].outputs
            for node_id in self.plan.order
            if node_id in self.plan.targets and isinstance(self.values.get(node_id), NodeResult)
        }
        if self.stop.is_set() and (self.partial or self.skipped):  # a stop after the last node changes nothing
            raise RunInterrupted(
                [node_id for node_id in self.plan.order if node_id in self.partial],
                self.skipped,
                found,
                [node_id for node_id in self.plan.order if node_id in self.kept],
            )
        return found

    def _call(self, node_id: str) -> NodeResult:
        data = self.graph.node(node_id)
        class_type = self.class_type(node_id)
        spec = self.spec(node_id)
        inputs = {name: self.values[source].outputs[index] for name, (source, index) in data["links"].items()}
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
            self._mark_partial(node_id)
        elif spec.output_node:
            files = {str(path): file_digest(self.folders.output / path) for path in written_files(result)}
            result = NodeResult(result.outputs, result.ui, {name: d for name, d in files.items() if d})
        return result
