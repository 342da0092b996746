"""The batch's client: start or join a cluster, submit the prepared batch through the Dask executor,
and turn finished tasks into finished items."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphrun.batch.items import BatchError, Chain, Over, batch_items, item_prompt, split_item_id
from graphrun.batch.prepare import Batch, prepare
from graphrun.batch.report import DONE, FAILED, NOT_STARTED, UNFINISHED, BatchReporter, BatchResult, ItemResult, NodeRun
from graphrun.cache import DEFAULT_MEMORY_BYTES, Cache
from graphrun.execute import NodeExecutionError, RunInterrupted
from graphrun.executors.dask import DaskExecutor, Submission, TaskSettings, WorkerSetup, stop_cluster_on, wait_any
from graphrun.graph import Graph, graph_of
from graphrun.host import Folders, resolve_device
from graphrun.registry import Registry, default_registry
from graphrun.reporting import CACHED, PARTIAL


def start_client(
    scheduler: str | None, workers: int, threads: int | None, environment: dict[str, str]
) -> tuple[Any, Any, int | None]:
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``workers`` processes that
    each run one task at a time; and the torch threads a task uses (None: the worker's default)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BatchError(
            "batches run on Dask, which is not installed: pip install 'dask[distributed]' "
            "(or the cluster extra of the application)"
        ) from None
    if scheduler:
        return Client(scheduler), None, threads
    cores = os.cpu_count() or 1
    if workers > cores:
        raise BatchError(
            f"--workers {workers}: this machine has {cores} cores, and each local worker is a process "
            f"that runs one node at a time with its own copy of the models; use at most {cores} "
            "(or --scheduler to join a larger cluster)"
        )
    # Ctrl-C reaches the whole process group: the workers ignore it (they inherit SIG_IGN), so that the
    # batch stops the way a run does, saving the best results so far, instead of losing its workers.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,  # a failing item is reported once, by the batch
            env=environment,
        )
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return Client(cluster), cluster, threads or max(1, cores // workers)


def _error_text(error: BaseException | None) -> str | None:
    """Why an item failed, with the node named as in the user's graph; None: it was stopped before it started."""
    if isinstance(error, RunInterrupted):
        return None
    if isinstance(error, NodeExecutionError):
        return f"node {split_item_id(error.node_id)[1]} ({error.class_type}) failed: {error.reason}"
    return f"{type(error).__name__}: {error}"


class _Collector:
    """Turns the cluster's events and finished targets into finished items."""

    def __init__(self, batch: Batch, reporter: BatchReporter, started: float) -> None:
        self.batch, self.reporter, self.started = batch, reporter, started
        self.results: dict[int, ItemResult] = {}
        self.nodes: list[NodeRun] = []
        self.files_of: dict[str, list[Path]] = {}  # joined id -> the files it wrote
        self.lock = threading.Lock()  # events arrive on Dask's event-loop thread

    def finish(
        self, index: int, outcome: str, files: list[Path] | None = None, error: str | None = None, kept: bool = False
    ) -> None:
        self.results[index] = ItemResult(
            self.batch.items[index], outcome, time.perf_counter() - self.started, files or [], error, kept
        )
        self.reporter.item_done(self.results[index])

    def received(self, event: tuple[float, dict[str, Any]]) -> None:
        with self.lock:
            for run in event[1]["nodes"]:
                self.nodes.append(NodeRun(**run))
                self.files_of[run["node_id"]] = [Path(path) for path in run["files"]]
        for message in event[1]["warnings"]:
            self.reporter.warning(message)

    def progressed(self, event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        self.reporter.progress(message["node_id"], message["class_type"], message["step"], message["total"], {}, None)

    def collect(self, submission: Submission, output: Path, abort: threading.Event) -> None:
        """Wait for every item's targets (until ``abort``); an item ends with its last target."""
        execution = self.batch.execution
        item_targets = self.batch.item_targets()

        def files(index: int) -> list[Path]:
            """What the item's targets wrote: those that ran (their task's report) and those the cache served."""
            found: list[Path] = []
            with self.lock:
                for target in item_targets[index]:
                    if target in submission.futures:
                        found += self.files_of.get(submission.standing_for.get(execution.keys[target], ""), [])
                    else:
                        found += [output / name for name in execution.values[target].files]
            return found

        waiting: dict[int, set[str]] = {}  # item -> its targets not finished yet
        for index, targets in item_targets.items():
            submitted = {node_id for node_id in targets if node_id in submission.futures}
            if submitted:
                waiting[index] = submitted
            else:
                self.finish(index, CACHED, files(index))
        future_targets: dict[Any, list[str]] = defaultdict(list)  # future -> the targets it stands for
        for node_id, future in submission.futures.items():
            future_targets[future].append(node_id)
        ran: dict[int, bool] = defaultdict(bool)
        partial: dict[int, bool] = defaultdict(bool)
        kept: dict[int, bool] = defaultdict(bool)
        while future_targets and (finished := wait_any(list(future_targets), abort)):
            for future in finished:
                if future.status == "error":
                    error = _error_text(future.exception())
                elif future.status != "finished":  # cancelled, or lost with its worker
                    error = f"its task was {future.status}"
                else:
                    error = None
                stopped = future.status == "error" and error is None
                value = future.result() if future.status == "finished" else None
                for node_id in future_targets.pop(future):
                    index = split_item_id(node_id)[0]
                    if index in self.results:
                        continue
                    if value is not None:
                        ran[index] |= value["ran"]
                        partial[index] |= value["partial"]
                        kept[index] |= bool(value["kept"])
                    waiting[index].discard(node_id)
                    if stopped or error is not None:
                        self.finish(index, NOT_STARTED if stopped else FAILED, error=error)
                    elif not waiting[index]:
                        outcome = PARTIAL if partial[index] else DONE if ran[index] else CACHED
                        self.finish(index, outcome, files(index), kept=kept[index])
        for index in waiting:
            if index not in self.results:
                self.finish(index, UNFINISHED, error="aborted: not waited for")


def run_batch(
    graph: Graph | dict[str, Any] | str | Path,
    overs: list[Over] | None = None,
    *,
    grid: bool = False,
    chain: Chain | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    scheduler: str | None = None,
    workers: int = 1,
    threads: int | None = None,
    cache_dir: Path | str | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    folders: Folders | None = None,
    device: str = "auto",
    reporter: BatchReporter | None = None,
    stop: threading.Event | None = None,
    abort: threading.Event | None = None,
    registry: Registry | None = None,
    worker_hook: Callable[[], object] | None = None,
    worker_environment: dict[str, str] | None = None,
    recompute: list[str] | tuple[str, ...] = (),
) -> BatchResult:
    """Run every item of the batch on Dask: a local cluster of ``workers`` processes (each running one
    node at a time with ``threads`` torch threads, default the cores shared out), or the cluster at
    ``scheduler``. Items that fail do not stop the others; see :class:`BatchResult`.

    ``stop``: tasks stop after their current step and the best results so far are saved, as a run
    does; ``abort``: stop waiting at once (items not finished are reported as unfinished).
    ``registry``: the node classes (default: the installed packs; workers must be able to import
    them); ``worker_hook`` runs once in each worker process before its first task; ``recompute``: as ``nst run``'s,
    in every item."""
    shipped_registry = registry  # None: each worker reads the installed packs itself
    registry = registry or default_registry()
    graph = graph_of(graph, registry, overrides)
    folders = (folders or Folders()).resolved()
    items = batch_items(list(overs or []), grid)
    reporter = reporter or BatchReporter()
    cache = Cache(cache_dir, memory_bytes=memory_bytes)
    stop, abort = stop or threading.Event(), abort or threading.Event()
    started = time.perf_counter()
    batch = prepare(graph, items, chain, cache, folders, resolve_device(device), registry, reporter, recompute)
    collector = _Collector(batch, reporter, started)
    for index, reason in batch.failed.items():
        collector.finish(index, FAILED, error=reason)
    users: dict[str, int] = {}
    if batch.execution.plan.targets:
        client, cluster, threads = start_client(scheduler, workers, threads, worker_environment or {})
        settings = TaskSettings(
            cache=str(cache.directory) if cache.directory else None,
            memory=memory_bytes,
            device=device,
            input=str(folders.input),
            output=str(folders.output),
            confined=folders.confined,
            models=str(folders.models),
            threads=threads,
            run_id=uuid.uuid4().hex,
        )
        finished = threading.Event()
        try:
            client.register_plugin(WorkerSetup(shipped_registry, worker_hook))
            client.subscribe_topic(settings.progress_topic, collector.progressed)
            client.subscribe_topic(settings.nodes_topic, collector.received)
            stop_cluster_on(stop, client, settings, finished)
            prompts = {item.index: item_prompt(batch.graph.prompt, item.index) for item in items}
            executor = DaskExecutor(client, settings, lambda node_id: prompts[split_item_id(node_id)[0]])
            submission = executor.submit(batch.execution)
            users = submission.users
            collector.collect(submission, folders.output, abort)
        finally:
            finished.set()
            client.close()
            if cluster is not None:
                cluster.close()
    ordered = [collector.results[item.index] for item in items]
    return BatchResult(ordered, collector.nodes, users, time.perf_counter() - started)
