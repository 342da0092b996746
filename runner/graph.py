"""Graph files: ComfyUI "API" prompts loaded into a networkx DiGraph.

A prompt is ``{"<id>": {"class_type": str, "inputs": {name: constant | [source_id, index]}}}``,
optionally wrapped as ``{"prompt": {...}}`` (the body ComfyUI's /prompt endpoint takes).
A list constant is written ``{"__value__": [...]}`` because a bare two-element list is a link.

Graph nodes carry ``class_type``, ``constants`` and ``links`` (input name -> (source id,
output index)); an edge source -> target carries ``inputs`` (input name -> output index).
Links to ids that are not in the prompt are kept in ``links`` (validation reports them) but
make no edge, so networkx never invents a node.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx


class GraphFormatError(ValueError):
    """The file is not a prompt at all (bad JSON, wrong shape); validation cannot start."""


Link = tuple[str, int]


@dataclass
class Graph:
    """A loaded prompt: the DiGraph the runner works on, and the prompt it came from."""

    dag: nx.DiGraph
    prompt: dict[str, Any]
    source: str = "<dict>"

    def node(self, node_id: str) -> dict[str, Any]:
        return self.dag.nodes[node_id]


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _unwrap_constant(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def load_graph(source: str | Path | dict[str, Any], name: str = "<dict>") -> Graph:
    """Load a prompt from a JSON file path or an already parsed dict (``name`` labels a dict)."""
    if isinstance(source, dict):
        prompt = source
    else:
        name = str(source)
        try:
            prompt = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as error:
            raise GraphFormatError(f"cannot read graph file {name}: {error.strerror}") from error
        except json.JSONDecodeError as error:
            raise GraphFormatError(f"{name} is not valid JSON: {error}") from error
    if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), dict):
        prompt = prompt["prompt"]
    if not isinstance(prompt, dict) or not prompt:
        raise GraphFormatError(f"{name}: a graph is a non-empty JSON object of nodes keyed by id")
    prompt = copy.deepcopy(prompt)

    dag = nx.DiGraph()
    for node_id, entry in prompt.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("class_type"), str):
            raise GraphFormatError(f"{name}: node {node_id} must be an object with a string 'class_type'")
        inputs = entry.get("inputs", {})
        if not isinstance(inputs, dict):
            raise GraphFormatError(f"{name}: node {node_id}: 'inputs' must be an object")
        constants = {k: _unwrap_constant(v) for k, v in inputs.items() if not _is_link(v)}
        links = {k: (str(v[0]), v[1]) for k, v in inputs.items() if _is_link(v)}
        dag.add_node(str(node_id), class_type=entry["class_type"], constants=constants, links=links)
    for target, data in dag.nodes(data=True):
        for input_name, (source_id, index) in data["links"].items():
            if source_id in prompt:
                dag.add_edge(source_id, target)
                dag.edges[source_id, target].setdefault("inputs", {})[input_name] = index
    return Graph(dag=dag, prompt=prompt, source=name)


def _split_target(target: str, text: str) -> tuple[str, str]:
    node_id, dot, input_name = target.partition(".")
    if not dot or not node_id or not input_name:
        raise ValueError(f"override {text!r} is not of the form ID.INPUT=VALUE")
    return node_id, input_name


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``ID.INPUT=VALUE``; VALUE is read as JSON when it parses, else as a string."""
    target, separator, raw = text.partition("=")
    if not separator:
        raise ValueError(f"override {text!r} is not of the form ID.INPUT=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
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
    return load_graph(prompt, name=graph.source)
