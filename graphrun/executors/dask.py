"""The Dask executor: every node to run becomes one task, keyed by its cache key, so that nodes
identical across a batch's items run once.

On the client the executor drives the step API like the local loop, completing each ready node
with its task's future (Dask starts a task once its inputs' tasks finished). A task runs its node
on a worker through the same step API: the worker's cache first, then the local loop. Values
travel as cache entries (tensors and JSON read back with ``weights_only``, never an arbitrary
pickle; Dask itself pickles the tasks' arguments, results and errors between the client, the
scheduler and the workers, so a cluster must be one the user trusts). Nodes whose results cannot
be stored (``DISK_CACHE = False``, e.g. a model) are not shipped: each worker computes them
itself, next to the task that needs them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from graphrun.cache import Cache
from graphrun.cache.entry import NodeResult, decode_result, encode_result, result_is_storable
from graphrun.execute import Execution, NodeExecutionError, RunInterrupted
from graphrun.executors.local import run_locally
from graphrun.graph import GraphLimits, load_graph
from graphrun.host import Folders, Preview, resolve_device
from graphrun.plan import plan
from graphrun.registry import Registry, default_registry
from graphrun.reporting import RAN, SilentReporter, Throttle

PLUGIN_NAME = "graphrun"

try:
    from distributed import WorkerPlugin
except ImportError:  # the cluster extra is not installed: the executor says so when it is used
    WorkerPlugin = object  # type: ignore[assignment,misc]  # a plain base without the cluster extra; never used


class WorkerSetup(WorkerPlugin):
    """What a worker keeps between tasks: its node registry, one cache per setting, torch's threads.

    ``registry`` None: the installed packs (read once per worker). ``process_hook`` runs once per
    worker before the first task (an application's process settings)."""

    name = PLUGIN_NAME

    def __init__(self, registry: Registry | None = None, process_hook: Callable[[], object] | None = None) -> None:
        self.registry = registry
        self.process_hook = process_hook
        self.caches: dict[tuple[str | None, int], Cache] = {}
        self.threads: int | None = None
        self.lock = threading.Lock()

    def setup(self, worker: Any) -> None:
        if self.process_hook is not None:
            self.process_hook()
        if self.registry is None:
            self.registry = default_registry()

    def cache(self, directory: str | None, memory_bytes: int) -> Cache:
        with self.lock:
            key = (directory, memory_bytes)
            if key not in self.caches:
                self.caches[key] = Cache(directory, memory_bytes=memory_bytes)
            return self.caches[key]

    def use_threads(self, threads: int | None) -> None:
        if threads and self.threads != threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads

    def __getstate__(self) -> dict[str, Any]:  # sent to the workers: no lock, no caches
        return {"registry": self.registry, "process_hook": self.process_hook}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["registry"], state["process_hook"])  # type: ignore[misc]  # unpickling rebuilds the instance


@dataclass(frozen=True)
class TaskSettings:
    """What every task of a run needs to know besides its node (JSON-able: it travels in each task)."""

    cache: str | None
    memory: int
    device: str
    input: str
    output: str
    confined: bool
    models: str
    threads: int | None
    run_id: str

    @property
    def stop_event(self) -> str:
        return f"graphrun-stop-{self.run_id}"

    @property
    def progress_topic(self) -> str:
        return f"graphrun-progress-{self.run_id}"

    @property
    def nodes_topic(self) -> str:
        return f"graphrun-nodes-{self.run_id}"


def relay(wait: Callable[[float], bool], then: Callable[[], object], finished: threading.Event) -> None:
    """Call ``then`` once ``wait(seconds)`` says the stop was asked, checking until ``finished``: the
    one bridge between a caller's stop event and the cluster's, either way."""
    try:
        while not finished.is_set():
            if wait(0.5):
                then()
                return
    except Exception:  # the cluster went away: nothing left to stop
        return


class TaskReporter(SilentReporter):
    """Collects what a task's nodes did; sends progress to the client as Dask events, at most once a second."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.send = send
        self.throttle = Throttle(1.0)

    def node_done(
        self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path], text: list[str]
    ) -> None:
        self.nodes.append(
            {
                "node_id": node_id,
                "class_type": class_type,
                "outcome": outcome,
                "seconds": seconds,
                "files": [str(path) for path in files],
                "text": text,
            }
        )

    def progress(
        self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any], preview: Preview | None
    ) -> None:
        if self.throttle.due(step, total):
            self.send({"node_id": node_id, "class_type": class_type, "step": step, "total": total})

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def run_task(task_json: str, *inputs: dict[str, Any]) -> dict[str, Any]:
    """Run one node on a Dask worker (``task_json``: see :meth:`DaskExecutor.describe_task`).

    Returns the node's result as a cache entry, whether it is partial (a stopped node's best so
    far) and whether anything it rests on ran (rather than came from a cache). What the nodes did
    goes to the client as one event, sent even when the node fails."""
    from distributed import Event, get_client, get_worker

    task = json.loads(task_json)
    settings = TaskSettings(**task["settings"])
    worker = get_worker()
    setup = cast(WorkerSetup, worker.plugins[PLUGIN_NAME])
    setup.use_threads(settings.threads)
    assert setup.registry is not None
    graph = load_graph(task["prompt"], registry=setup.registry, limits=GraphLimits(max_nodes=1 << 30))
    graph = replace(graph, prompt=task["item_prompt"])  # what the node sees as PROMPT
    node_id = task["node"]
    stop, finished = threading.Event(), threading.Event()
    cluster_stop = Event(settings.stop_event, client=get_client())
    threading.Thread(target=relay, args=(cluster_stop.wait, stop.set, finished), daemon=True).start()
    reporter = TaskReporter(lambda message: worker.log_event(settings.progress_topic, message))
    execution = Execution(
        graph=graph,
        registry=setup.registry,
        plan=plan(graph, setup.registry, [node_id], task["forced"]),
        cache=setup.cache(settings.cache, settings.memory),
        device=resolve_device(settings.device),
        folders=Folders(Path(settings.input), Path(settings.output), settings.confined, Path(settings.models)),
        stop=stop,
        reporter=reporter,
        keys=task["keys"],
        volatile=set(task["volatile"]),
    )
    try:
        if cluster_stop.is_set():
            stop.set()
        for source, shipped in zip(task["shipped"], inputs, strict=True):
            execution.provide(source, decode_result(shipped["entry"], task["keys"][source]), shipped["partial"])
        if stop.is_set() and not execution.partial:
            raise RunInterrupted([], [node_id], {})
        try:
            run_locally(execution)
        except RunInterrupted:
            pass  # a stopped node's best so far still travels to the nodes that save it
        result = execution.values.get(node_id)
        if not isinstance(result, NodeResult):
            raise RunInterrupted([], [node_id], {})
    finally:
        finished.set()
        worker.log_event(settings.nodes_topic, {"nodes": reporter.nodes, "warnings": reporter.warnings})
    if not result_is_storable(result):
        raise NodeExecutionError(
            node_id,
            execution.class_type(node_id),
            "returned values that cannot be sent to other workers (only tensors and JSON-able "
            "values travel); declare DISK_CACHE = False on the class so each worker computes it",
        )
    ran = any(run["outcome"] == RAN for run in reporter.nodes) or any(shipped["ran"] for shipped in inputs)
    # stopped nodes, this one and those upstream, that kept their progress for the next run
    kept = sorted({*execution.kept, *(node for shipped in inputs for node in shipped["kept"])})
    entry = encode_result(task["keys"][node_id], result)
    return {"entry": entry, "partial": node_id in execution.partial, "ran": ran, "kept": kept}


@dataclass
class Submission:
    """What the client holds of a submitted execution: the targets' futures, and which joined node
    each task stands for (``users``: how many nodes one task ran for)."""

    futures: dict[str, Any]  # target node id -> its task's future
    standing_for: dict[str, str] = field(default_factory=dict)  # node key -> the node id its task runs
    users: dict[str, int] = field(default_factory=dict)  # that node id -> how many nodes it stood for


class DaskExecutor:
    """Runs an execution's nodes as tasks on the cluster behind ``client``."""

    def __init__(
        self, client: Any, settings: TaskSettings, prompt_for: Callable[[str], dict[str, Any]] | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.prompt_for = prompt_for

    @staticmethod
    def computed_in_consumer(execution: Execution, node_id: str) -> bool:
        """Computed on each worker that needs it, never shipped: results that cannot be stored."""
        return not execution.spec(node_id).disk_cache and node_id not in execution.plan.targets

    def describe_task(self, execution: Execution, node_id: str) -> tuple[str, list[str]]:
        """The JSON a worker needs to run ``node_id``, and the nodes whose results it is shipped."""
        part, shipped, pending = {node_id}, [], [node_id]
        while pending:
            for source in execution.sources(pending.pop()):
                if self.computed_in_consumer(execution, source) and source not in part:
                    part.add(source)
                    pending.append(source)
                elif not self.computed_in_consumer(execution, source) and source not in shipped:
                    shipped.append(source)
        task = {
            "node": node_id,
            "prompt": {member: execution.graph.prompt[member] for member in part},
            "keys": {member: execution.keys[member] for member in part | set(shipped)},
            "shipped": shipped,
            "volatile": sorted(part & execution.volatile),
            "forced": sorted(part & execution.plan.forced),
            "item_prompt": self.prompt_for(node_id) if self.prompt_for else execution.graph.prompt,
            "settings": vars(self.settings),
        }
        return json.dumps(task), shipped

    def submit(self, execution: Execution) -> Submission:
        """Prepare the execution, then complete every ready node with its task's future; one task per
        node key. The client keeps only the targets' futures: Dask frees the rest once consumed."""
        execution.prepare()
        by_key: dict[str, Any] = {}  # node key -> its task's future, or the client's cached entry scattered once
        submission = Submission({})
        while ready := execution.ready():
            for node_id in ready:
                if self.computed_in_consumer(execution, node_id):  # computed inside its consumers' tasks
                    execution.complete(node_id, None, keeps_inputs=True)
                    continue
                key = execution.keys[node_id]
                standing = submission.standing_for.setdefault(key, node_id)
                submission.users[standing] = submission.users.get(standing, 0) + 1
                if key not in by_key:
                    by_key[key] = self._submit(execution, node_id, by_key)
                execution.complete(node_id, by_key[key])
                if node_id in execution.plan.targets:
                    submission.futures[node_id] = by_key[key]
        return submission

    def _submit(self, execution: Execution, node_id: str, by_key: dict[str, Any]) -> Any:
        task_json, shipped = self.describe_task(execution, node_id)
        inputs = []
        for source in shipped:
            value = execution.values[source]
            if isinstance(value, NodeResult):  # served by the client's cache: sent along as data, once
                key = execution.keys[source]
                if key not in by_key:
                    entry = {"entry": encode_result(key, value), "partial": False, "ran": False, "kept": []}
                    by_key[key] = self.client.scatter([entry], hash=False)[0]
                value = by_key[key]
            inputs.append(value)
        # The run id keeps two runs on one scheduler apart (a Dask key names one task for everyone).
        task_key = f"{execution.class_type(node_id)}-{self.settings.run_id}-{execution.keys[node_id]}"
        return self.client.submit(run_task, task_json, *inputs, key=task_key)


def wait_any(futures: list[Any], abort: threading.Event) -> list[Any]:
    """The futures that are finished, waiting (in short slices, so that ``abort`` is seen) until one is."""
    from distributed import wait

    while not abort.is_set():
        finished = [future for future in futures if future.done()]
        if finished:
            return finished
        try:
            wait(futures, timeout=0.5, return_when="FIRST_COMPLETED")
        except TimeoutError:
            continue
    return []


def stop_cluster_on(
    stop: threading.Event, client: Any, settings: TaskSettings, finished: threading.Event
) -> threading.Thread:
    """Pass the caller's stop request to every task (a Dask event they watch)."""
    from distributed import Event

    thread = threading.Thread(
        target=relay, args=(stop.wait, lambda: Event(settings.stop_event, client=client).set(), finished), daemon=True
    )
    thread.start()
    return thread
