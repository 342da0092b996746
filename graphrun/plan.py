"""The execution plan: which nodes a request needs, which are forced to rerun, and their order.

Validation, execution and the CLI all work from one :class:`Plan`, so the part of a graph
that is checked is exactly the part that runs. Every walk here is iterative (networkx's
traversals are), so a chain of thousands of nodes is as safe as a chain of three.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import networkx as nx

from graphrun.graph import Graph
from graphrun.registry import Registry
from graphrun.spec import node_spec


def id_order(node_id: str) -> tuple[int, str]:
    """Sort key: numeric ids numerically ('2' before '10'), then the others by text."""
    return (int(node_id), "") if node_id.isascii() and node_id.isdecimal() else (1 << 62, node_id)


def node_ids(value: Iterable[str | int] | None, what: str) -> list[str] | None:
    """Check an ``outputs``/``recompute`` argument: a list of node ids (ints are read as ids)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a list of node ids, not the string {value!r}; did you mean [{value!r}]?")
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{what} must be a list of node ids, not {type(value).__name__}") from None
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(f"{what}: node ids are strings such as '17', not {item!r}")
    return [str(item) for item in items]


@dataclass(frozen=True)
class Plan:
    """What one run does.

    ``order`` lists the needed nodes, each after its inputs (by id where the graph has a
    cycle, which validation reports). ``unknown`` holds requested ids that are not nodes.
    """

    targets: tuple[str, ...]
    requested: tuple[str, ...] | None  # the outputs asked for; None: every output node
    order: tuple[str, ...]
    forced: frozenset[str]
    cycles: tuple[tuple[str, ...], ...]
    unknown_outputs: tuple[str, ...]
    unknown_recompute: tuple[str, ...]

    @property
    def needed(self) -> frozenset[str]:
        return frozenset(self.order)


def output_nodes(graph: Graph, registry: Registry) -> list[str]:
    """Ids of the nodes whose class is an ``OUTPUT_NODE``, in id order."""
    found = [
        node_id
        for node_id, data in graph.dag.nodes(data=True)
        if data["class_type"] in registry.classes and node_spec(registry.classes[data["class_type"]]).output_node
    ]
    return sorted(found, key=id_order)


def _cycles(dag: nx.DiGraph) -> tuple[tuple[str, ...], ...]:
    """The strongly connected parts that contain a cycle (one per part, however many cycles it holds)."""
    parts = [
        tuple(sorted(part, key=id_order))
        for part in nx.strongly_connected_components(dag)
        if len(part) > 1 or dag.has_edge(next(iter(part)), next(iter(part)))
    ]
    return tuple(sorted(parts, key=lambda part: id_order(part[0])))


def _reachable(starts: Iterable[str], neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    """``starts`` and every node reachable from them through ``neighbours`` (an iterative walk)."""
    found = set(starts)
    stack = list(found)
    while stack:
        for neighbour in neighbours(stack.pop()):
            if neighbour not in found:
                found.add(neighbour)
                stack.append(neighbour)
    return found


def plan(
    graph: Graph,
    registry: Registry,
    outputs: Iterable[str | int] | None = None,
    recompute: Iterable[str | int] | None = None,
) -> Plan:
    """The plan for ``outputs`` (default: every output node) with ``recompute`` and its descendants forced."""
    requested = node_ids(outputs, "outputs")
    forced_ids = node_ids(recompute, "recompute") or []
    dag = graph.dag
    targets = output_nodes(graph, registry) if requested is None else [t for t in requested if t in dag]
    needed = _reachable(targets, dag.predecessors)
    part = dag.subgraph(needed)
    cycles = _cycles(part)
    if cycles:
        order = sorted(needed, key=id_order)
    else:
        order = list(nx.lexicographical_topological_sort(part, key=id_order))
    forced = _reachable([r for r in forced_ids if r in dag], dag.successors)
    return Plan(
        targets=tuple(dict.fromkeys(targets)),
        requested=None if requested is None else tuple(requested),
        order=tuple(order),
        forced=frozenset(forced & needed),
        cycles=cycles,
        unknown_outputs=tuple(t for t in requested or () if t not in dag),
        unknown_recompute=tuple(r for r in forced_ids if r not in dag),
    )
