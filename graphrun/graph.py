"""Graph files: ComfyUI "API" prompts (or editor workflows, see workflow.py) loaded into a networkx DiGraph.

A prompt is ``{"<id>": {"class_type": str, "inputs": {name: constant | [source_id, index]}}}``,
optionally wrapped as ``{"prompt": {...}}`` (the body ComfyUI's /prompt endpoint takes).
A list constant is written ``{"__value__": [...]}`` because a bare two-element list is a link.

Graph nodes carry ``class_type``, ``constants`` and ``links`` (input name -> (source id,
output index)); an edge source -> target carries ``inputs`` (input name -> output index).
Links to ids that are not in the prompt are kept in ``links`` (validation reports them) but
make no edge, so networkx never invents a node.

Files are read within :class:`GraphLimits` (size, node count, nesting depth), checked without
recursion, so a hostile file gets a clear :class:`GraphFormatError`, never a RecursionError.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from graphrun.registry import Registry, default_registry

ENVIRONMENT_PREFIX = "GRAPHRUN_"


class GraphFormatError(ValueError):
    """The file is not a prompt at all (bad JSON, wrong shape, over a limit); validation cannot start."""


Link = tuple[str, int]


def environment_int(name: str, default: int) -> int:
    """A whole number >= 1 from the environment variable ``name``, else ``default``; a GraphFormatError shows a
    valid setting."""
    text = os.environ.get(name)
    try:
        value = default if text is None else int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise GraphFormatError(f"{name}={text!r} must be a whole number of at least 1, e.g. {name}={default}")
    return value


@dataclass(frozen=True)
class GraphLimits:
    """What a graph file may be; each limit can be raised with the environment variable in brackets."""

    max_bytes: int = 16 << 20  # [GRAPHRUN_MAX_GRAPH_BYTES] a 17-node graph is 4 KB, an editor workflow 30 KB
    max_nodes: int = 10_000  # [GRAPHRUN_MAX_GRAPH_NODES]
    max_depth: int = 64  # [GRAPHRUN_MAX_GRAPH_DEPTH] JSON nesting; a prompt needs 5, an editor workflow about 8

    @classmethod
    def from_environment(cls) -> GraphLimits:
        defaults = cls()
        return cls(
            max_bytes=environment_int(f"{ENVIRONMENT_PREFIX}MAX_GRAPH_BYTES", defaults.max_bytes),
            max_nodes=environment_int(f"{ENVIRONMENT_PREFIX}MAX_GRAPH_NODES", defaults.max_nodes),
            max_depth=environment_int(f"{ENVIRONMENT_PREFIX}MAX_GRAPH_DEPTH", defaults.max_depth),
        )


@dataclass
class Graph:
    """A loaded prompt: the DiGraph the runner works on, the prompt it came from and, for an
    editor workflow, the workflow itself (embedded in saved files as ComfyUI does)."""

    dag: nx.DiGraph
    prompt: dict[str, Any]
    source: str = "<dict>"
    workflow: dict[str, Any] | None = field(default=None, repr=False)

    def node(self, node_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.dag.nodes[node_id]
        return data


def is_link(value: Any) -> bool:
    """``[source_id, output_index]``: an input fed by another node's output."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _unwrap_constant(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def _check_depth(document: Any, name: str, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit`` (iteratively: the check itself cannot overflow)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise GraphFormatError(
                f"{name}: nested deeper than {limit} levels; a graph needs about 8 "
                "(raise GRAPHRUN_MAX_GRAPH_DEPTH if this is intended)"
            )
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _check_node_id(node_id: str, name: str) -> None:
    printable = node_id.isprintable() and not any(0xD800 <= ord(c) <= 0xDFFF for c in node_id)
    if not node_id or len(node_id) > 64 or not printable or "," in node_id or node_id.strip() != node_id:
        raise GraphFormatError(
            f"{name}: node id {node_id!r:.80} is not usable; ids are 1 to 64 printable characters without "
            "commas or surrounding spaces, such as '17'"
        )


def read_document(path: str | Path, limits: GraphLimits) -> Any:
    """The parsed JSON of a graph file, within the size and nesting limits."""
    name = str(path)
    try:
        with open(path, "rb") as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as error:
        raise GraphFormatError(f"cannot read graph file {name}: {error.strerror or error}") from error
    except ValueError as error:  # e.g. an embedded NUL in the path
        raise GraphFormatError(f"cannot read graph file {name!r}: {error}") from error
    if len(data) > limits.max_bytes:
        raise GraphFormatError(
            f"{name} is larger than {limits.max_bytes:,} bytes; is it a graph? "
            "(raise GRAPHRUN_MAX_GRAPH_BYTES if it is)"
        )
    try:
        document = json.loads(data.decode("utf-8-sig"))  # a byte order mark, as Windows editors write, is skipped
    except UnicodeDecodeError as error:
        raise GraphFormatError(f"{name} is not UTF-8 text: {error}") from error
    except json.JSONDecodeError as error:
        raise GraphFormatError(f"{name} is not valid JSON: {error}") from error
    except RecursionError:
        raise GraphFormatError(f"{name}: JSON nested too deeply to read") from None
    except ValueError as error:  # e.g. an integer with more than 4300 digits
        raise GraphFormatError(f"{name}: {error}") from error
    _check_depth(document, name, limits.max_depth)
    return document


def load_graph(
    source: str | Path | dict[str, Any],
    name: str = "<dict>",
    limits: GraphLimits | None = None,
    registry: Registry | None = None,
) -> Graph:
    """Load a prompt or an editor workflow from a JSON file path or an already parsed dict.

    ``name`` labels a dict in messages. An editor workflow (``{"nodes": [...], "links": [...]}``)
    is converted through the node specs of ``registry`` (default: every installed pack).
    """
    limits = limits or GraphLimits.from_environment()
    if isinstance(source, dict):
        document: Any = source
        _check_depth(document, name, limits.max_depth)
    elif isinstance(source, (str, os.PathLike)):
        name = str(source)
        document = read_document(source, limits)
    else:
        raise TypeError(f"a graph is a file path or a dict, not {type(source).__name__}")
    workflow = None
    from graphrun.workflow import is_workflow, workflow_to_prompt  # imported here: workflow.py imports this module

    if is_workflow(document):
        workflow = document
        document = workflow_to_prompt(workflow, registry or default_registry(), name)
    if isinstance(document, dict) and isinstance(document.get("prompt"), dict):
        document = document["prompt"]
    if not isinstance(document, dict) or not document:
        raise GraphFormatError(f"{name}: a graph is a non-empty JSON object of nodes keyed by id")
    if len(document) > limits.max_nodes:
        raise GraphFormatError(
            f"{name} has {len(document)} nodes, more than {limits.max_nodes} "
            "(raise GRAPHRUN_MAX_GRAPH_NODES if intended)"
        )
    prompt = {str(node_id): entry for node_id, entry in copy.deepcopy(document).items()}  # JSON keys are strings

    dag = nx.DiGraph()
    for node_id, entry in prompt.items():
        _check_node_id(node_id, name)
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str):
            raise GraphFormatError(f"{name}: node {node_id} must be an object with a string 'class_type'")
        inputs = entry.get("inputs", {})
        if not isinstance(inputs, dict):
            raise GraphFormatError(f"{name}: node {node_id}: 'inputs' must be an object")
        constants = {k: _unwrap_constant(v) for k, v in inputs.items() if not is_link(v)}
        links = {k: (str(v[0]), v[1]) for k, v in inputs.items() if is_link(v)}
        dag.add_node(node_id, class_type=entry["class_type"], constants=constants, links=links)
    for target, data in dag.nodes(data=True):
        for input_name, (source_id, index) in data["links"].items():
            if source_id in prompt:
                dag.add_edge(source_id, target)
                dag.edges[source_id, target].setdefault("inputs", {})[input_name] = index
    return Graph(dag=dag, prompt=prompt, source=name, workflow=workflow)


def _split_target(target: str, text: str) -> tuple[str, str]:
    node_id, dot, input_name = target.rpartition(".")  # input names have no dots; ids may
    if not dot or not node_id or not input_name:
        raise ValueError(f"override {text!r:.80} is not of the form ID.INPUT=VALUE")
    return node_id, input_name


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``ID.INPUT=VALUE``; VALUE is read as JSON when it parses, else as a string."""
    target, separator, raw = text.partition("=")
    if not separator:
        raise ValueError(f"override {text!r:.80} is not of the form ID.INPUT=VALUE")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = raw
    return (*_split_target(target, text), _unwrap_constant(value))


def with_overrides(graph: Graph, overrides: dict[str, Any] | list[str]) -> Graph:
    """A copy of the graph with constants replaced: ``{"ID.INPUT": value}`` or ``["ID.INPUT=VALUE"]``."""
    items = (
        [parse_override(text) for text in overrides]
        if isinstance(overrides, list)
        else [(*_split_target(key, key), value) for key, value in overrides.items()]
    )
    prompt = copy.deepcopy(graph.prompt)
    for node_id, input_name, value in items:
        if node_id not in prompt:
            raise ValueError(f"override {node_id}.{input_name}: no node {node_id} in the graph")
        if isinstance(value, list):
            value = {"__value__": value}
        prompt[node_id].setdefault("inputs", {})[input_name] = value
    return load_graph(prompt, name=graph.source)  # the editor workflow no longer describes it: dropped


def graph_of(
    source: Graph | str | Path | dict[str, Any],
    registry: Registry,
    overrides: dict[str, Any] | list[str] | None = None,
) -> Graph:
    """``source`` as a graph (loaded unless it is one already), with ``overrides`` applied: what the
    Python API's entry points take."""
    graph = source if isinstance(source, Graph) else load_graph(source, registry=registry)
    return with_overrides(graph, overrides) if overrides else graph
