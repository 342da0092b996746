"""Many runs of one graph as one Dask task graph: batches (``--over``), sweeps (``--grid``), chains.

Every item is the graph with some constants replaced. The items are joined into one graph
(item ``i``'s node ``N`` becomes ``i/N``), validated at once and keyed by the cache's node
keys, so nodes that are identical across items (the model, the style's statistics, a shared
content) have one key, become one Dask task and run once. Per-item problems fail that item
only; the rest run.

A task runs one node on a worker through the same :class:`~graphrun.execute.Execution` code as
``nst run``: the worker's cache is consulted first, results are kept in it, and the value goes
to the consumers as a cache entry (tensors and JSON read back with ``weights_only``, never an
arbitrary pickle). Nodes whose results cannot be stored (``DISK_CACHE = False``, e.g. a model)
are not shipped: each worker computes them itself, once, next to the task that needs them.

With a disk cache that every worker sees (one machine, or a shared file system), a finished
node is never recomputed: a stopped batch resumes where it stopped.
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import math
import os
import re
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from graphrun.cache import DEFAULT_MEMORY_BYTES, Cache, NodeResult, decode_result, encode_result, is_storable
from graphrun.execute import CACHED, PARTIAL, RAN, Execution, NodeExecutionError
from graphrun.graph import Graph, GraphLimits, load_graph, with_overrides
from graphrun.host import Folders, Preview, resolve_device
from graphrun.plan import plan
from graphrun.registry import Registry, default_registry
from graphrun.spec import node_spec
from graphrun.validate import ValidationError, check_plan

DONE, FAILED, NOT_STARTED, STOPPED = "done", "failed", "not started", "stopped"
GLOB_CHARACTERS = re.compile(r"[*?\[]")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
RANGE = re.compile(rf"({NUMBER}):({NUMBER})(?::({NUMBER}))?")
FIELD = re.compile(r"\{([^{}]+)\}")
MAX_ITEMS = 100_000


class BatchError(ValueError):
    """The batch itself cannot start (a bad ``--over``, ``--chain`` or template)."""


# --- what the items are ------------------------------------------------------------------------

@dataclass(frozen=True)
class Over:
    """One swept input: ``node_id.input_name`` takes each of ``values`` in turn."""

    node_id: str
    input_name: str
    values: tuple[Any, ...]
    files: bool = False  # the values came from a glob: each names a file

    @property
    def name(self) -> str:
        return f"{self.node_id}.{self.input_name}"


def _numeric_range(match: re.Match[str]) -> list[int | float]:
    start, stop = float(match.group(1)), float(match.group(2))
    step = float(match.group(3)) if match.group(3) else 1.0
    if step == 0 or (stop - start) / step < 0:
        raise BatchError(f"range {match.group(0)} never reaches its end (start:stop:step)")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_ITEMS:
        raise BatchError(f"range {match.group(0)} has {count:,} values; at most {MAX_ITEMS:,}")
    whole = all(part is None or re.fullmatch(r"[-+]?\d+", part) for part in match.groups())
    values = [start + i * step for i in range(count)]
    return [int(value) for value in values] if whole else [round(value, 12) for value in values]


def natural_key(text: str) -> list[int | str]:
    """Sort key that puts frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def parse_over(text: str, input_folder: Path = Path(".")) -> Over:
    """``ID.INPUT=VALUES``: a JSON list, a glob of files (relative to ``input_folder``, in natural
    order: frame_2 before frame_10), ``START:STOP[:STEP]`` (inclusive), or a comma list whose
    entries read as JSON where they parse (else as text)."""
    target, separator, raw = text.partition("=")
    node_id, dot, input_name = target.rpartition(".")
    if not separator or not dot or not node_id or not input_name:
        raise BatchError(f"--over {text!r:.80} is not of the form ID.INPUT=VALUES")
    try:
        listed = json.loads(raw)
    except ValueError:
        listed = None
    if isinstance(listed, list):
        if not listed:
            raise BatchError(f"--over {target}: the list is empty")
        return Over(node_id, input_name, tuple(listed))
    if GLOB_CHARACTERS.search(raw):
        base = Path(input_folder).expanduser()
        pattern = Path(raw).expanduser()
        matches = glob.glob(str(pattern if pattern.is_absolute() else base / raw))
        found = sorted((path if pattern.is_absolute() else str(Path(path).relative_to(base))
                        for path in matches if Path(path).is_file()), key=natural_key)
        if not found:
            raise BatchError(f"--over {target}: {raw!r} matches no files in {base}")
        return Over(node_id, input_name, tuple(found), files=True)
    match = RANGE.fullmatch(raw.strip())
    if match:
        return Over(node_id, input_name, tuple(_numeric_range(match)))
    values = []
    for part in raw.split(","):
        try:
            values.append(json.loads(part))
        except ValueError:
            values.append(part.strip())
    return Over(node_id, input_name, tuple(values))


@dataclass(frozen=True)
class Chain:
    """Item ``i``'s ``node_id.input_name`` reads item ``i-1``'s output ``index`` of ``source_id``
    (a video: each frame starts from the previous frame's result). Item 0 keeps its own input."""

    node_id: str
    input_name: str
    source_id: str
    index: int = 0


def parse_chain(text: str) -> Chain:
    """``ID.INPUT=SOURCE_ID`` or ``ID.INPUT=SOURCE_ID:INDEX``."""
    target, _, source = text.partition("=")
    node_id, dot, input_name = target.rpartition(".")
    source_id, colon, index = source.partition(":")
    if not dot or not node_id or not input_name or not source_id or (colon and not index.isdecimal()):
        raise BatchError(f"--chain {text!r:.80} is not of the form ID.INPUT=SOURCE_ID[:OUTPUT_INDEX]")
    return Chain(node_id, input_name, source_id, int(index) if colon else 0)


@dataclass(frozen=True)
class Item:
    """One run of the batch: its position and the values it gives the swept inputs."""

    index: int
    values: dict[str, Any]
    stem: str | None = None

    @property
    def fields(self) -> dict[str, str]:
        """What ``{...}`` in a text input can name: ``index``, ``stem``, ``ID.INPUT`` and ``INPUT``."""
        found = {"index": str(self.index)}
        if self.stem is not None:
            found["stem"] = self.stem
        short = defaultdict(list)
        for name, value in self.values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            found[name] = text
            short[name.rpartition(".")[2]].append(text)
        found.update({name: texts[0] for name, texts in short.items() if len(texts) == 1 and name not in found})
        return found

    @property
    def label(self) -> str:
        shown = ", ".join(f"{name}={value}" for name, value in self.values.items())
        return f"item {self.index}" + (f" ({shown})" if shown else "")


def batch_items(overs: list[Over], grid: bool = False) -> list[Item]:
    """The items: the ``overs`` zipped (a list of one value goes with every item), or with ``grid``
    their cartesian product. No ``overs``: one item, the graph as it is."""
    if not overs:
        return [Item(0, {})]
    names = [over.name for over in overs]
    for name in names:
        if names.count(name) > 1:
            raise BatchError(f"--over {name} is given twice; put all its values in one --over")
    if grid and math.prod(len(over.values) for over in overs) > MAX_ITEMS:
        raise BatchError(f"--grid makes {math.prod(len(over.values) for over in overs):,} items; at most {MAX_ITEMS:,}")
    if grid:
        rows = list(itertools.product(*(over.values for over in overs)))
    else:
        lengths = {len(over.values) for over in overs if len(over.values) != 1}
        if len(lengths) > 1:
            described = ", ".join(f"{over.name} has {len(over.values)}" for over in overs)
            raise BatchError(f"--over lists zip together and must have the same length ({described}); "
                             "add --grid for every combination")
        count = lengths.pop() if lengths else 1
        rows = [tuple(over.values[i if len(over.values) > 1 else 0] for over in overs) for i in range(count)]
    items = []
    for index, row in enumerate(rows):
        stem = next((Path(value).stem for over, value in zip(overs, row) if over.files), None)
        items.append(Item(index, {over.name: value for over, value in zip(overs, row)}, stem))
    return items


def fill_template(text: str, fields: dict[str, str]) -> str:
    """``{name}`` replaced where ``name`` is a field; other braces are left as they are."""
    return FIELD.sub(lambda match: fields.get(match.group(1), match.group(0)), text)


def item_id(index: int, node_id: str) -> str:
    return f"{index}/{node_id}"


def split_item_id(node_id: str) -> tuple[int, str]:
    index, _, inner = node_id.partition("/")
    return int(index), inner


def joined_prompt(prompt: dict[str, Any], items: list[Item], chain: Chain | None = None) -> dict[str, Any]:
    """One prompt holding every item's copy of ``prompt``, its values and templates filled in (the
    swept and chained nodes are checked beforehand, by :func:`_check_inputs_exist`)."""
    joined: dict[str, Any] = {}
    for item in items:
        fields = item.fields
        for node_id, entry in prompt.items():
            inputs = {}
            for name, value in entry.get("inputs", {}).items():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)):
                    value = [item_id(item.index, str(value[0])), value[1]]
                elif isinstance(value, str):
                    value = fill_template(value, fields)
                inputs[name] = value
            for over_name, value in item.values.items():
                over_node, _, over_input = over_name.rpartition(".")
                if over_node == node_id:
                    inputs[over_input] = {"__value__": value} if isinstance(value, list) else value
            if chain is not None and item.index > 0 and node_id == chain.node_id:
                inputs[chain.input_name] = [item_id(item.index - 1, chain.source_id), chain.index]
            joined[item_id(item.index, node_id)] = {**entry, "inputs": inputs}
    return joined


# --- reporting ---------------------------------------------------------------------------------

@dataclass
class ItemResult:
    """How an item ended: ``done`` (something ran), ``cached``, ``partial`` (stopped: the best result so
    far was saved), ``failed`` or ``not started``."""

    item: Item
    outcome: str
    seconds: float = 0.0  # since the batch started, when the item finished
    files: list[Path] = field(default_factory=list)
    error: str | None = None


@dataclass
class NodeRun:
    """A node a worker ran (or served from its cache) for the batch."""

    node_id: str  # the joined graph's id, ``item/node``
    class_type: str
    outcome: str
    seconds: float
    files: list[str]
    text: list[str]


@dataclass
class BatchResult:
    items: list[ItemResult]
    nodes: list[NodeRun]  # every node run by a worker, once per task
    users: dict[str, int]  # joined id of a task's node -> how many items' nodes it stood for
    seconds: float

    @property
    def failed(self) -> list[ItemResult]:
        return [result for result in self.items if result.outcome in (FAILED, NOT_STARTED)]

    @property
    def shared_saving(self) -> float:
        """Seconds that running shared nodes once saved, against running them once per item."""
        return sum(run.seconds * (self.users.get(run.node_id, 1) - 1) for run in self.nodes if run.outcome == RAN)

    def summary(self) -> str:
        counts = defaultdict(int)
        for result in self.items:
            counts[result.outcome] += 1
        parts = ", ".join(f"{counts[o]} {o}" for o in (DONE, CACHED, PARTIAL, FAILED, NOT_STARTED) if counts[o])
        ran = [run for run in self.nodes if run.outcome == RAN]
        busy = sum(run.seconds for run in ran)
        finished = [result for result in self.items if result.outcome == DONE]
        lines = [f"{len(self.items)} items: {parts} in {self.seconds:.1f} s",
                 f"{len(ran)} node runs, {busy:.1f} s of work; shared nodes saved {self.shared_saving:.1f} s"]
        if finished:
            lines.append(f"{len(finished) * 3600 / max(self.seconds, 1e-9):.1f} items per hour")
        return "\n".join(lines)


class BatchReporter(Protocol):
    def item_done(self, result: ItemResult) -> None: ...

    def progress(self, node_id: str, class_type: str, step: int, total: int) -> None:
        """A running node's progress (``node_id`` is the joined graph's ``item/node``)."""

    def warning(self, message: str) -> None: ...


# --- the worker side ---------------------------------------------------------------------------

_worker_caches: dict[tuple[str | None, int], Cache] = {}
_worker_lock = threading.Lock()


def _worker_cache(directory: str | None, memory_bytes: int) -> Cache:
    """One cache per worker process, so a worker keeps its models and results between tasks."""
    with _worker_lock:
        key = (directory, memory_bytes)
        if key not in _worker_caches:
            _worker_caches[key] = Cache(directory, memory_bytes=memory_bytes)
        return _worker_caches[key]


class _TaskReporter:
    """Collects what a task's nodes did; sends progress to the client as Dask events."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        self.nodes: list[NodeRun] = []
        self.warnings: list[str] = []
        self.send = send
        self.last_sent = 0.0

    def node_done(self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path],
                  text: list[str]) -> None:
        self.nodes.append(NodeRun(node_id, class_type, outcome, seconds, [str(path) for path in files], text))

    def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any],
                 preview: Preview | None) -> None:
        now = time.monotonic()
        if now - self.last_sent >= 1.0 or step == total:
            self.last_sent = now
            self.send({"node_id": node_id, "class_type": class_type, "step": step, "total": total})

    def warning(self, message: str) -> None:
        self.warnings.append(message)


class _Stopped(Exception):
    """The batch was stopped before this task started."""


def _watch_stop(event: Any, local: threading.Event, finished: threading.Event) -> None:
    """Set ``local`` once the batch's Dask ``event`` is set (checked every second until ``finished``)."""
    try:
        while not finished.is_set():
            if event.wait(timeout=1.0):
                local.set()
                return
    except Exception:  # the cluster went away: nothing left to stop
        return


_worker_state: dict[str, Any] = {"configured": False, "threads": None, "registry": None}


def _prepare_worker(threads: int | None) -> None:
    """Process settings and the node registry once per worker (as `nst run` has them), and the torch
    threads a task uses."""
    if not _worker_state["configured"]:
        from graphrun.tuning import configure_process

        configure_process()
        _worker_state["configured"] = True
        _worker_state["registry"] = default_registry()  # the installed packs: read once per worker
    if threads and _worker_state["threads"] != threads:
        import torch

        torch.set_num_threads(threads)
        _worker_state["threads"] = threads


def run_task(order: str, *inputs: dict[str, Any]) -> dict[str, Any]:
    """Run one node of a batch on a Dask worker (``order`` is JSON, see :func:`_task_order`).

    Returns the node's result as a cache entry, whether it is partial (a stopped optimization's
    best so far) and whether anything it rests on ran (rather than came from a cache). What
    the nodes did goes to the client as one event, sent even when the node fails."""
    from distributed import Event, get_client, get_worker

    task = json.loads(order)
    worker = get_worker()
    _prepare_worker(task["threads"])
    registry = _worker_state["registry"]
    graph = load_graph(task["prompt"], registry=registry, limits=GraphLimits(max_nodes=1 << 30))
    graph = replace(graph, prompt=task["item_prompt"])  # what the node sees as PROMPT: its item's graph
    node_id = task["node"]
    stop, finished = threading.Event(), threading.Event()
    stop_event = Event(task["stop"], client=get_client())
    if stop_event.is_set():
        stop.set()
    threading.Thread(target=_watch_stop, args=(stop_event, stop, finished), daemon=True).start()
    reporter = _TaskReporter(lambda message: worker.log_event(task["progress"], message))
    execution = Execution(
        graph=graph, registry=registry, plan=plan(graph, registry, [node_id]),
        cache=_worker_cache(task["cache"], task["memory"]), device=resolve_device(task["device"]),
        folders=Folders(Path(task["input"]), Path(task["output"]), task["confined"]),
        stop=stop, reporter=reporter,
    )
    execution.keys.update(task["keys"])
    execution.volatile.update(task["volatile"])
    try:
        for source, shipped in zip(task["shipped"], inputs):
            execution.results[source] = decode_result(shipped["entry"], task["keys"][source])
            if shipped["partial"]:
                execution.partial.add(source)
        if stop.is_set() and not execution.partial:
            raise _Stopped(node_id)
        result = execution.cached(node_id)
        if result is None:
            for member in execution.plan.order:
                if member not in execution.results:
                    served = execution.cached(member)
                    if served is None:
                        execution.execute(member)
                    else:
                        execution.results[member] = served
            result = execution.results[node_id]
        else:
            reporter.node_done(node_id, graph.node(node_id)["class_type"], 0.0, CACHED,
                               [execution.folders.output / name for name in result.files],
                               execution.shown_text(result))
    finally:
        finished.set()
        worker.log_event(task["nodes"], {"nodes": [vars(run) for run in reporter.nodes],
                                         "warnings": reporter.warnings})
    if not is_storable(list(result.outputs)) or not is_storable(result.ui):
        raise NodeExecutionError(node_id, graph.node(node_id)["class_type"],
                                 "returned values that cannot be sent to other workers (only tensors and JSON-able "
                                 "values travel); declare DISK_CACHE = False on the class so each worker computes it")
    ran = any(run.outcome == RAN for run in reporter.nodes) or any(shipped["ran"] for shipped in inputs)
    return {"entry": encode_result(task["keys"][node_id], result), "partial": node_id in execution.partial,
            "ran": ran}


# --- the client side ---------------------------------------------------------------------------

@dataclass
class _Batch:
    graph: Graph
    items: list[Item]
    execution: Execution
    failed: dict[int, str]  # item index -> why it cannot run

    def item_targets(self) -> dict[int, list[str]]:
        found: dict[int, list[str]] = defaultdict(list)
        for node_id in self.execution.plan.targets:
            found[split_item_id(node_id)[0]].append(node_id)
        return found


def _validation_failures(graph: Graph, errors: list[ValidationError]) -> dict[int, str]:
    """Item index -> its first problems; an item that reads a failed item's node (a chain) fails too."""
    failed: dict[int, list[str]] = defaultdict(list)
    for error in errors:
        if error.node_id is None:
            raise BatchError(str(error))
        index, inner = split_item_id(error.node_id)
        failed[index].append(str(error).replace(f"node {error.node_id} ", f"node {inner} ", 1))
    reasons = {index: "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
               for index, problems in failed.items()}
    reads: dict[int, set[int]] = defaultdict(set)  # item -> the earlier items it reads
    for source, target in graph.dag.edges:
        if split_item_id(source)[0] != split_item_id(target)[0]:
            reads[split_item_id(target)[0]].add(split_item_id(source)[0])
    for index in sorted(reads):
        broken = sorted(earlier for earlier in reads[index] if earlier in reasons)
        if broken and index not in reasons:
            reasons[index] = f"it starts from item {broken[0]}, which cannot run"
    return reasons


def _check_outputs_differ(batch: _Batch, registry: Registry) -> None:
    """Two items must not write the same files: refuse output nodes that differ in their inputs but
    not in their constants (the file names)."""
    execution = batch.execution
    seen: dict[tuple[str, str, str], tuple[str, str]] = {}
    for node_id in execution.plan.targets:
        data = batch.graph.node(node_id)
        index, inner = split_item_id(node_id)
        constants = json.dumps(data["constants"], sort_keys=True, default=repr)
        key = (inner, data["class_type"], constants)
        if key in seen and seen[key][1] != execution.keys[node_id]:
            spec = node_spec(registry.classes[data["class_type"]])
            texts = [name for name, spec_input in spec.inputs.items() if spec_input.type == "STRING"]
            hint = f" (e.g. --set {inner}.{texts[0]}=out/{{stem}}_{{index}})" if texts else ""
            raise BatchError(f"items {split_item_id(seen[key][0])[0]} and {index} would write the same files with "
                             f"node {inner} ({data['class_type']}); put {{index}}, {{stem}} or a swept input's name "
                             f"in its file name{hint}")
        seen.setdefault(key, (node_id, execution.keys[node_id]))


def _check_inputs_exist(graph: Graph, items: list[Item], chain: Chain | None, registry: Registry) -> None:
    """One error up front for a swept or chained input the node does not have (not one per item)."""
    named = [over_name.rpartition(".")[::2] for over_name in items[0].values]
    if chain is not None:
        named.append((chain.node_id, chain.input_name))
    if chain is not None and chain.source_id not in graph.prompt:
        raise BatchError(f"--chain: no node {chain.source_id} in the graph")
    for node_id, input_name in named:
        entry = graph.prompt.get(node_id)
        if entry is None:
            raise BatchError(f"no node {node_id} in the graph (--over/--chain {node_id}.{input_name})")
        node_class = registry.classes.get(entry["class_type"])
        if node_class is not None and input_name not in node_spec(node_class).inputs:
            known = ", ".join(node_spec(node_class).inputs)
            raise BatchError(f"node {node_id} ({entry['class_type']}) has no input {input_name!r}; its inputs: {known}")


def prepare(
    graph: Graph,
    items: list[Item],
    chain: Chain | None,
    cache: Cache,
    folders: Folders,
    device: str,
    registry: Registry,
    reporter: Any,
) -> _Batch:
    """Join, validate and key the items; items with problems are set aside with the reason."""
    _check_inputs_exist(graph, items, chain, registry)
    joined = load_graph(joined_prompt(graph.prompt, items, chain), name=graph.source,
                        limits=GraphLimits(max_nodes=1 << 30), registry=registry)
    everything = plan(joined, registry)
    failed = _validation_failures(joined, check_plan(joined, registry, everything, folders, device))
    targets = [node_id for node_id in everything.targets if split_item_id(node_id)[0] not in failed]
    execution = Execution(graph=joined, registry=registry, plan=plan(joined, registry, targets), cache=cache,
                          device=device, folders=folders, stop=threading.Event(), reporter=reporter)
    if targets:
        execution.compute_keys()
    batch = _Batch(joined, items, execution, failed)
    _check_outputs_differ(batch, registry)
    return batch


def _local(execution: Execution, node_id: str) -> bool:
    """Computed on each worker that needs it, never shipped: results that cannot be stored."""
    return not execution.spec(node_id).disk_cache and node_id not in execution.plan.targets


def _task_order(execution: Execution, node_id: str, settings: dict[str, Any],
                item_prompts: dict[int, dict[str, Any]]) -> tuple[str, list[str]]:
    """The JSON a worker needs to run ``node_id``, and the nodes whose results it is shipped."""
    part, shipped, pending = {node_id}, [], [node_id]
    while pending:
        for source in execution.sources(pending.pop()):
            if _local(execution, source) and source not in part:
                part.add(source)
                pending.append(source)
            elif not _local(execution, source) and source not in shipped:
                shipped.append(source)
    prompt = {member: execution.graph.prompt[member] for member in part}
    keys = {member: execution.keys[member] for member in part | set(shipped)}
    order = {"node": node_id, "prompt": prompt, "keys": keys, "shipped": shipped,
             "volatile": sorted(part & execution.volatile), "item_prompt": item_prompts[split_item_id(node_id)[0]],
             **settings}
    return json.dumps(order), shipped


def item_prompt(joined: dict[str, Any], index: int) -> dict[str, Any]:
    """Item ``index``'s graph under its own ids (what its nodes see as ``PROMPT``, e.g. in a PNG's metadata)."""
    prefix = f"{index}/"
    found = {}
    for node_id, entry in joined.items():
        if node_id.startswith(prefix):
            inputs = {name: [value[0].removeprefix(prefix), value[1]] if isinstance(value, list) and len(value) == 2
                      and isinstance(value[0], str) else value for name, value in entry.get("inputs", {}).items()}
            found[node_id.removeprefix(prefix)] = {**entry, "inputs": inputs}
    return found


def _class_of(execution: Execution, node_id: str) -> str:
    return execution.graph.node(node_id)["class_type"]


def _start_client(scheduler: str | None, workers: int, threads: int | None) -> tuple[Any, Any, int | None]:
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``workers`` processes
    that each run one task at a time; and the torch threads a task uses (None: the worker's default)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BatchError("batches run on Dask, which is not installed: pip install 'nst-nodes[cluster]' "
                         "(or pip install -e '.[cluster]' in a clone)") from None

    if scheduler:
        return Client(scheduler), None, threads
    # Ctrl-C reaches the whole process group: the workers ignore it (they inherit SIG_IGN), so that the
    # batch stops the way a run does, saving the best results so far, instead of losing its workers.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL,  # a failing item is reported once, by the batch
                               env={"OMP_WAIT_POLICY": "PASSIVE"})
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return Client(cluster), cluster, threads or max(1, (os.cpu_count() or 1) // workers)


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
) -> BatchResult:
    """Run every item of the batch on Dask: a local cluster of ``workers`` processes (each running one
    node at a time with ``threads`` torch threads, default the cores shared out), or the cluster
    at ``scheduler``. Items that fail do not stop the others; see :class:`BatchResult`."""
    registry = default_registry()
    if not isinstance(graph, Graph):
        graph = load_graph(graph, registry=registry)
    if overrides:
        graph = with_overrides(graph, overrides)
    folders = folders or Folders()
    folders = Folders(folders.input.resolve(), folders.output.resolve(), folders.confined)
    items = batch_items(list(overs or []), grid)
    reporter = reporter or _QuietBatchReporter()
    cache = Cache(cache_dir, memory_bytes=memory_bytes)
    stop = stop or threading.Event()
    started = time.perf_counter()
    batch = prepare(graph, items, chain, cache, folders, resolve_device(device), registry, _Warnings(reporter))
    results: dict[int, ItemResult] = {}
    for index, reason in batch.failed.items():
        results[index] = ItemResult(items[index], FAILED, 0.0, [], reason)
        reporter.item_done(results[index])
    nodes: list[NodeRun] = []
    users: dict[str, int] = {}
    if batch.execution.plan.targets:
        client, cluster, threads = _start_client(scheduler, workers, threads)
        task_settings = {"cache": str(cache.directory) if cache.directory else None, "memory": memory_bytes,
                         "device": device, "input": str(folders.input), "output": str(folders.output),
                         "confined": folders.confined, "threads": threads}
        try:
            _run_on_cluster(client, batch, task_settings, reporter, stop, started, results, nodes, users)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    ordered = [results[item.index] for item in items]
    return BatchResult(ordered, nodes, users, time.perf_counter() - started)


class _QuietBatchReporter:
    def item_done(self, result: ItemResult) -> None:
        return None

    def progress(self, node_id: str, class_type: str, step: int, total: int) -> None:
        return None

    def warning(self, message: str) -> None:
        return None


class _Warnings:
    """A runner reporter for the client's own Execution: it only passes warnings on."""

    def __init__(self, reporter: BatchReporter) -> None:
        self.reporter = reporter

    def node_done(self, *args: Any) -> None:
        return None

    def progress(self, *args: Any) -> None:
        return None

    def warning(self, message: str) -> None:
        self.reporter.warning(message)


def _forward_stop(stop: threading.Event, name: str, client: Any, finished: threading.Event) -> None:
    """Pass the caller's stop request to the workers (a Dask event every task watches)."""
    from distributed import Event

    while not finished.is_set():
        if stop.wait(timeout=0.5):
            Event(name, client=client).set()
            return


def _run_on_cluster(client: Any, batch: _Batch, task_settings: dict[str, Any], reporter: BatchReporter,
                    stop: threading.Event, started: float, results: dict[int, ItemResult],
                    nodes: list[NodeRun], users: dict[str, int]) -> None:
    from distributed import as_completed

    execution = batch.execution
    hits, to_run = execution.serve_from_cache()
    run_id = uuid.uuid4().hex
    task_settings = {**task_settings, "stop": f"nst-stop-{run_id}", "progress": f"nst-progress-{run_id}",
                     "nodes": f"nst-nodes-{run_id}"}
    lock = threading.Lock()

    files_of: dict[str, list[Path]] = {}  # joined id -> the files it wrote

    def received(event: tuple[float, dict[str, Any]]) -> None:
        with lock:
            for run in event[1]["nodes"]:
                nodes.append(NodeRun(**run))
                files_of[run["node_id"]] = [Path(path) for path in run["files"]]
        for message in event[1]["warnings"]:
            reporter.warning(message)

    def progressed(event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        reporter.progress(message["node_id"], message["class_type"], message["step"], message["total"])

    client.subscribe_topic(task_settings["progress"], progressed)
    client.subscribe_topic(task_settings["nodes"], received)

    futures: dict[str, Any] = {}  # node key -> its task's future
    standing_for: dict[str, str] = {}  # node key -> the joined id its task runs
    item_prompts = {item.index: item_prompt(execution.graph.prompt, item.index) for item in batch.items}
    for node_id in execution.plan.order:
        key = execution.keys[node_id]
        if node_id in hits or node_id not in to_run or _local(execution, node_id):
            continue
        standing = standing_for.setdefault(key, node_id)
        users[standing] = users.get(standing, 0) + 1
        if key in futures:
            continue
        order, shipped = _task_order(execution, node_id, task_settings, item_prompts)
        inputs = []
        for source in shipped:
            source_key = execution.keys[source]
            if source_key not in futures:  # served by the client's cache: sent along as data
                entry = encode_result(source_key, execution.results[source])
                shipped_value = {"entry": entry, "partial": False, "ran": False}
                futures[source_key] = client.scatter([shipped_value], hash=False)[0]
            inputs.append(futures[source_key])
        # The run id keeps two batches on one scheduler apart (a Dask key names one task for everyone).
        futures[key] = client.submit(run_task, order, *inputs, key=f"{_class_of(execution, node_id)}-{run_id}-{key}")

    waiting: dict[int, set[str]] = {}  # item -> keys of its targets not finished yet
    targets_of = batch.item_targets()
    for index, targets in targets_of.items():
        keys = {execution.keys[node_id] for node_id in targets if node_id not in hits}
        if keys:
            waiting[index] = keys
        else:
            files = [Path(task_settings["output"]) / name for node_id in targets
                     for name in execution.results[node_id].files]
            results[index] = ItemResult(batch.items[index], CACHED, time.perf_counter() - started, files)
            reporter.item_done(results[index])
    items_of: dict[str, list[int]] = defaultdict(list)
    for index, keys in waiting.items():
        for key in keys:
            items_of[key].append(index)
    ran: dict[int, bool] = defaultdict(bool)
    partial: dict[int, bool] = defaultdict(bool)
    key_of = {futures[key]: key for key in items_of}
    futures.clear()  # only the targets are held: Dask frees the rest once their consumers ran

    finished = threading.Event()
    threading.Thread(target=_forward_stop, args=(stop, task_settings["stop"], client, finished), daemon=True).start()
    try:
        for future in as_completed(list(key_of)):
            key = key_of.pop(future)
            error = _error_text(future.exception()) if future.status == "error" else None
            if error is None:
                value = future.result()
                for index in items_of[key]:
                    ran[index] |= value["ran"]
                    partial[index] |= value["partial"]
            for index in items_of[key]:
                if index in results:
                    continue
                waiting[index].discard(key)
                if error is not None:
                    outcome = NOT_STARTED if error == STOPPED else FAILED
                    results[index] = ItemResult(batch.items[index], outcome, time.perf_counter() - started, [],
                                                None if outcome == NOT_STARTED else error)
                elif not waiting[index]:
                    outcome = PARTIAL if partial[index] else DONE if ran[index] else CACHED
                    with lock:
                        files = [path for target in targets_of[index]
                                 for path in files_of.get(standing_for.get(execution.keys[target], ""), [])]
                    results[index] = ItemResult(batch.items[index], outcome, time.perf_counter() - started, files)
                else:
                    continue
                reporter.item_done(results[index])
    finally:
        finished.set()
        client.unsubscribe_topic(task_settings["progress"])
        client.unsubscribe_topic(task_settings["nodes"])


def _error_text(error: BaseException | None) -> str:
    """Why an item failed, with the node named as in the user's graph."""
    if isinstance(error, _Stopped):
        return STOPPED
    if isinstance(error, NodeExecutionError):
        return f"node {split_item_id(error.node_id)[1]} ({error.class_type}) failed: {error.reason}"
    return f"{type(error).__name__}: {error}"
