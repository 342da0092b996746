"""A batch before it runs: every item's copy of the graph joined, validated and keyed at once, with
the problems of the batch as a whole refused up front and items that cannot run set aside."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from dataclasses import dataclass

from graphrun.batch.items import BatchError, Chain, Item, joined_prompt, split_item_id
from graphrun.cache import Cache
from graphrun.execute import Execution
from graphrun.graph import Graph, GraphLimits, load_graph
from graphrun.host import Folders
from graphrun.plan import plan
from graphrun.registry import Registry
from graphrun.reporting import Reporter
from graphrun.spec import ANY_TYPE, node_spec
from graphrun.validate import ValidationError, check_plan

CLIENT_BYTES_PER_NODE = 5 << 10
"""What the client holds per node of the joined graph while it prepares and runs a batch (measured:
970 MiB for 10,000 items of a 19-node graph)."""
MAX_CLIENT_BYTES = 2 << 30


@dataclass
class Batch:
    """The joined graph, its items, the execution that keys it, and the items set aside (index -> why)."""

    graph: Graph
    items: list[Item]
    execution: Execution
    failed: dict[int, str]

    def item_targets(self) -> dict[int, list[str]]:
        found: dict[int, list[str]] = defaultdict(list)
        for node_id in self.execution.plan.targets:
            found[split_item_id(node_id)[0]].append(node_id)
        return found


def check_size(graph: Graph, items: list[Item]) -> None:
    """Refuse a batch whose joined graph the client cannot hold, with the estimate and a size that fits."""
    nodes = len(graph.prompt)
    estimate = len(items) * nodes * CLIENT_BYTES_PER_NODE
    if estimate > MAX_CLIENT_BYTES:
        fits = MAX_CLIENT_BYTES // (nodes * CLIENT_BYTES_PER_NODE)
        raise BatchError(
            f"{len(items):,} items of a {nodes}-node graph would take about {estimate / 2**30:.1f} GiB "
            f"in the client; at most {fits:,} items fit in {MAX_CLIENT_BYTES / 2**30:.0f} GiB: run the "
            "sweep in parts (e.g. --over ID.INPUT=START:STOP for each part)"
        )


def check_inputs(graph: Graph, items: list[Item], chain: Chain | None, registry: Registry) -> None:
    """One error up front for a swept or chained input the node does not have, or a chain whose source
    output does not exist or does not fit the input (not one error per item)."""
    named = [over_name.rpartition(".")[::2] for over_name in items[0].values]
    if chain is not None:
        named.append((chain.node_id, chain.input_name))
    for node_id, input_name in named:
        entry = graph.prompt.get(node_id)
        if entry is None:
            raise BatchError(f"no node {node_id} in the graph (--over/--chain {node_id}.{input_name})")
        node_class = registry.classes.get(entry["class_type"])
        if node_class is not None and input_name not in node_spec(node_class).inputs:
            known = ", ".join(node_spec(node_class).inputs)
            raise BatchError(f"node {node_id} ({entry['class_type']}) has no input {input_name!r}; its inputs: {known}")
    if chain is not None:
        _check_chain(graph, chain, registry)


def _check_chain(graph: Graph, chain: Chain, registry: Registry) -> None:
    source = graph.prompt.get(chain.source_id)
    if source is None:
        raise BatchError(f"--chain: no node {chain.source_id} in the graph")
    source_class = registry.classes.get(source["class_type"])
    target_class = registry.classes.get(graph.prompt[chain.node_id]["class_type"])
    if source_class is None or target_class is None:
        return  # an unknown class is reported by validation, with the node named
    outputs = node_spec(source_class).return_types
    if not outputs:
        raise BatchError(f"--chain: node {chain.source_id} ({source['class_type']}) has no outputs to chain")
    if chain.index >= len(outputs):
        raise BatchError(
            f"--chain: node {chain.source_id} ({source['class_type']}) has outputs "
            f"0..{len(outputs) - 1}, not {chain.index}"
        )
    wanted = node_spec(target_class).inputs[chain.input_name].type
    offered = outputs[chain.index]
    if ANY_TYPE not in (wanted, offered) and wanted != offered:
        raise BatchError(
            f"--chain: input {chain.node_id}.{chain.input_name} takes {wanted}, but output "
            f"{chain.index} of node {chain.source_id} ({source['class_type']}) is {offered}"
        )


def _validation_failures(graph: Graph, errors: list[ValidationError]) -> dict[int, str]:
    """Item index -> its first problems; an item that reads a failed item's node (a chain) fails too."""
    failed: dict[int, list[str]] = defaultdict(list)
    for error in errors:
        if error.node_id is None:
            raise BatchError(str(error))
        index = split_item_id(error.node_id)[0]
        failed[index].append(str(error).replace(f"node {index}/", "node "))  # the item's node ids, as in its graph
    reasons = {
        index: "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "") for index, problems in failed.items()
    }
    reads: dict[int, set[int]] = defaultdict(set)  # item -> the earlier items it reads
    for source, target in graph.dag.edges:
        if split_item_id(source)[0] != split_item_id(target)[0]:
            reads[split_item_id(target)[0]].add(split_item_id(source)[0])
    for index in sorted(reads):
        broken = sorted(earlier for earlier in reads[index] if earlier in reasons)
        if broken and index not in reasons:
            reasons[index] = f"it starts from item {broken[0]}, which cannot run"
    return reasons


def _check_outputs_differ(batch: Batch, registry: Registry) -> None:
    """Two items must not write the same files: refuse output nodes that take a name (a text input) and
    differ in their inputs but not in their constants."""
    execution = batch.execution
    seen: dict[tuple[str, str, str], tuple[str, str]] = {}
    for node_id in execution.plan.targets:
        data = batch.graph.node(node_id)
        index, inner = split_item_id(node_id)
        spec = node_spec(registry.classes[data["class_type"]])
        texts = [name for name, spec_input in spec.inputs.items() if spec_input.type == "STRING"]
        if not texts:
            continue  # names no file
        constants = json.dumps(data["constants"], sort_keys=True, default=repr)
        key = (inner, data["class_type"], constants)
        if key in seen and seen[key][1] != execution.keys[node_id]:
            hint = f" (e.g. --set {inner}.{texts[0]}=out/{{stem}}_{{index}})"
            raise BatchError(
                f"items {split_item_id(seen[key][0])[0]} and {index} would write the same files with "
                f"node {inner} ({data['class_type']}); put {{index}}, {{stem}} or a swept input's name "
                f"in its file name{hint}"
            )
        seen.setdefault(key, (node_id, execution.keys[node_id]))


def prepare(
    graph: Graph,
    items: list[Item],
    chain: Chain | None,
    cache: Cache,
    folders: Folders,
    device: str,
    registry: Registry,
    reporter: Reporter,
    recompute: list[str] | tuple[str, ...] = (),
) -> Batch:
    """Join, validate and key the items; items with problems are set aside with the reason. ``recompute``: node
    ids of the graph whose cached results every item ignores (with their descendants)."""
    check_size(graph, items)
    check_inputs(graph, items, chain, registry)
    unknown = [node_id for node_id in recompute if node_id not in graph.dag]
    if unknown:
        raise BatchError(f"node {unknown[0]!r:.100} to recompute is not in the graph")
    joined = load_graph(
        joined_prompt(graph.prompt, items, chain),
        name=graph.source,
        limits=GraphLimits(max_nodes=1 << 30),
        registry=registry,
    )
    everything = plan(joined, registry)
    failed = _validation_failures(
        joined,
        check_plan(joined, registry, everything, folders, device, part_of=lambda node_id: split_item_id(node_id)[0]),
    )
    targets = [node_id for node_id in everything.targets if split_item_id(node_id)[0] not in failed]
    execution = Execution(
        graph=joined,
        registry=registry,
        plan=plan(joined, registry, targets, [f"{item.index}/{node_id}" for item in items for node_id in recompute]),
        cache=cache,
        device=device,
        folders=folders,
        stop=threading.Event(),
        reporter=reporter,
    )
    if targets:
        execution.compute_keys()
    batch = Batch(joined, items, execution, failed)
    _check_outputs_differ(batch, registry)
    return batch
