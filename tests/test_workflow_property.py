"""Damaged editor workflows: conversion raises the documented GraphFormatError or gives a prompt whose every
link exists and joins an output to an input of the same declared type (never a silently miswired graph)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import comfy_core_video
from hypothesis import given, settings
from hypothesis import strategies as st

from graphrun import GraphFormatError
from graphrun.spec import node_spec
from graphrun.workflow import workflow_to_prompt

WORKFLOWS = {
    path.stem: json.loads(path.read_text())
    for path in sorted((Path(__file__).resolve().parent.parent / "example_workflows").glob("*.json"))
}
REGISTRY = comfy_core_video.registry()  # the video workflow uses ComfyUI's core video nodes


def mutate(workflow: dict[str, Any], data: st.DataObject) -> None:
    """One damage a hand edit or a buggy tool could do to a saved workflow."""
    links, nodes = workflow["links"], workflow["nodes"]
    kind = data.draw(
        st.sampled_from(["duplicate link", "drop node", "slot", "widgets", "link id", "node id", "link end"])
    )
    link = data.draw(st.sampled_from(links))
    node = data.draw(st.sampled_from(nodes))
    number = data.draw(st.integers(-1, 40))
    if kind == "duplicate link":
        twin = data.draw(st.sampled_from(links))
        links.append([link[0], *twin[1:]])
    elif kind == "drop node":
        nodes.remove(node)
    elif kind == "slot":
        link[data.draw(st.sampled_from([2, 4]))] = number
    elif kind == "widgets":
        values = node.setdefault("widgets_values", [])
        if data.draw(st.booleans()):
            values.extend([number] * data.draw(st.integers(1, 3)))
        elif values:
            del values[data.draw(st.integers(0, len(values) - 1))]
    elif kind == "link id":
        link[0] = number
    elif kind == "node id":
        node["id"] = number
    else:
        link[data.draw(st.sampled_from([1, 3]))] = data.draw(st.sampled_from(nodes))["id"]


def declared_types_match(prompt: dict[str, Any]) -> None:
    for node_id, entry in prompt.items():
        inputs = node_spec(REGISTRY.classes[entry["class_type"]]).inputs
        for input_name, value in entry["inputs"].items():
            if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
                continue
            source = prompt.get(value[0])
            assert source is not None, f"node {node_id} input {input_name} links to missing node {value[0]}"
            outputs = node_spec(REGISTRY.classes[source["class_type"]]).return_types
            assert 0 <= value[1] < len(outputs), f"node {node_id} input {input_name}: no output {value[1]}"
            assert outputs[value[1]] == inputs[input_name].type, f"node {node_id} input {input_name}: wrong type"


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(sorted(WORKFLOWS)), data=st.data())
def test_a_damaged_workflow_is_refused_or_converts_to_a_well_typed_prompt(name: str, data: st.DataObject) -> None:
    workflow = copy.deepcopy(WORKFLOWS[name])
    mutate(workflow, data)
    try:
        prompt = workflow_to_prompt(workflow, REGISTRY, name)
    except GraphFormatError:
        return
    declared_types_match(prompt)
