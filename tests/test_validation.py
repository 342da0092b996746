"""Every validation error, each from a real bad graph, reported together and before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import fake_nodes
import pytest

from graphrun import GraphFormatError, GraphValidationError, load_graph, run, validate
from nst_nodes.app import main

REGISTRY = fake_nodes.registry()


def errors_of(prompt: dict, outputs: list[str] | None = None) -> list:
    return validate(load_graph(prompt), REGISTRY, outputs)


def only_error(prompt: dict) -> object:
    errors = errors_of(prompt)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


GOOD = {
    "1": {"class_type": "Vector", "inputs": {"length": 4, "scale": 2.0, "kind": "ones"}},
    "2": {"class_type": "Total", "inputs": {"tensor": ["1", 0]}},
}


def with_inputs(node_id: str, **inputs: object) -> dict:
    prompt = json.loads(json.dumps(GOOD))
    prompt[node_id]["inputs"].update(inputs)
    return prompt


def test_good_graph_has_no_errors() -> None:
    assert errors_of(GOOD) == []


def test_unknown_class_type_suggests_a_name() -> None:
    error = only_error({**GOOD, "3": {"class_type": "Totl", "inputs": {}}})
    assert (error.kind, error.node_id, error.class_type) == ("invalid_class_type", "3", "Totl")
    assert "did you mean 'Total'" in error.message


def test_a_graph_with_an_unknown_node_is_not_also_said_to_have_no_output() -> None:
    """Its output may be the unknown node (a workflow of ComfyUI's own video nodes, loaded outside ComfyUI)."""
    errors = errors_of({"1": {"class_type": "SaveVideo", "inputs": {}}})
    assert [error.kind for error in errors] == ["invalid_class_type"]
    assert "no node of that name is loaded here (ComfyUI's own nodes run only in ComfyUI)" in errors[0].message


def test_missing_required_input() -> None:
    prompt = with_inputs("1")
    del prompt["1"]["inputs"]["scale"]
    error = only_error(prompt)
    assert (error.kind, error.node_id, error.input_name) == ("required_input_missing", "1", "scale")
    assert "node 1 (Vector), input 'scale'" in str(error)


def test_link_to_missing_node() -> None:
    error = only_error(with_inputs("2", tensor=["9", 0]))
    assert (error.kind, error.input_name) == ("bad_linked_input", "tensor")
    assert "'9'" in error.message


def test_link_to_missing_output_index() -> None:
    error = only_error(with_inputs("2", tensor=["1", 5]))
    assert error.kind == "bad_linked_input" and "outputs 0..1" in error.message


def test_link_type_mismatch() -> None:
    error = only_error(with_inputs("2", tensor=["1", 1]))
    assert error.kind == "return_type_mismatch"
    assert "expects TENSOR but output 1 of node 1 is STRING" in error.message


@pytest.mark.parametrize(
    ("inputs", "kind", "input_name"),
    [
        ({"length": "four"}, "invalid_input_type", "length"),
        ({"length": True}, "invalid_input_type", "length"),
        ({"length": 2.5}, "invalid_input_type", "length"),
        ({"length": 0}, "value_smaller_than_min", "length"),
        ({"scale": 11}, "value_bigger_than_max", "scale"),
        ({"kind": "zeros"}, "value_not_in_list", "kind"),
    ],
)
def test_bad_constants(inputs: dict, kind: str, input_name: str) -> None:
    error = only_error(with_inputs("1", **inputs))
    assert (error.kind, error.node_id, error.class_type, error.input_name) == (kind, "1", "Vector", input_name)


def test_constant_for_a_link_only_type() -> None:
    error = only_error(with_inputs("2", tensor=5))
    assert error.kind == "invalid_input_type" and "must come from a link" in error.message


def test_unknown_input_name_suggests_the_closest() -> None:
    error = only_error(with_inputs("1", lenght=3))
    assert (error.kind, error.input_name) == ("unknown_input", "lenght")
    assert "did you mean 'length'" in error.message


def test_custom_validation_runs_on_constants() -> None:
    prompt = {
        "1": {"class_type": "Checked", "inputs": {"even": 3}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
    }
    error = only_error(prompt)
    assert error.kind == "custom_validation_failed" and "3 is odd" in error.message


def test_two_output_nodes_that_would_replace_the_same_file_are_refused() -> None:
    numbers = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Number", "inputs": {"value": 2}},
    }
    prompt = {
        **numbers,
        "3": {"class_type": "WriteText", "inputs": {"value": ["1", 0], "name": "out.txt"}},
        "4": {"class_type": "WriteText", "inputs": {"value": ["2", 0], "name": "out.txt"}},
    }
    error = only_error(prompt)
    assert error.node_id == "4" and "would replace output/out.txt, which node 3 writes" in error.message
    for other in ({"name": "other.txt"}, {"value": ["1", 0]}):  # another file, or the same content
        assert (
            errors_of({**prompt, "4": {"class_type": "WriteText", "inputs": {**prompt["4"]["inputs"], **other}}}) == []
        )
    for node_id in ("3", "4"):  # files numbered as they are written never clash (its class says which)
        prompt[node_id]["inputs"]["name"] = "numbered.txt"
    assert errors_of(prompt) == []
    assert errors_of({**prompt, "3": {"class_type": "Number", "inputs": {"value": 3}}}, outputs=["2", "3"]) == []


def test_cycle_names_the_nodes_on_it() -> None:
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    }
    errors = errors_of(prompt)
    assert {e.node_id for e in errors} == {"1", "2", "3"}
    assert all(e.kind == "dependency_cycle" for e in errors)
    assert all("is on a cycle among nodes 1, 2, 3" in e.message for e in errors)


def test_graph_without_output_node() -> None:
    error = only_error({"1": GOOD["1"]})
    assert error.kind == "prompt_no_outputs" and error.node_id is None


def test_all_errors_are_reported_together_and_nothing_runs(reporter) -> None:
    prompt = {
        "1": {"class_type": "Vector", "inputs": {"length": 0, "scale": 2.0, "kind": "zeros"}},
        "2": {"class_type": "Total", "inputs": {"tensor": ["1", 0], "ofset": 1}},
        "3": {"class_type": "Nope", "inputs": {}},
    }
    with pytest.raises(GraphValidationError) as caught:
        run(prompt, registry=REGISTRY, device="cpu", reporter=reporter)
    kinds = sorted(e.kind for e in caught.value.errors)
    assert kinds == ["invalid_class_type", "unknown_input", "value_not_in_list", "value_smaller_than_min"]
    assert reporter.ran == [] and reporter.cached == []
    node_errors = caught.value.to_comfy()["node_errors"]
    assert set(node_errors) == {"1", "2", "3"}
    assert node_errors["1"]["class_type"] == "Vector"
    assert {e["details"] for e in node_errors["1"]["errors"]} == {"length", "kind"}


def test_list_constants_and_prompt_wrapper_load() -> None:
    graph = load_graph({"prompt": {"1": {"class_type": "Show", "inputs": {"value": {"__value__": [1, 2]}}}}})
    assert graph.node("1")["constants"] == {"value": [1, 2]}
    assert list(graph.dag.nodes) == ["1"]


def test_edges_carry_input_names_and_output_indices() -> None:
    graph = load_graph(GOOD)
    assert graph.dag.edges["1", "2"]["inputs"] == {"tensor": 0}


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "{}", '{"1": {"inputs": {}}}'])
def test_malformed_files_are_format_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(GraphFormatError):
        load_graph(path)


def test_cli_validate_exit_code_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = json.loads(Path("graphs/gatys.json").read_text())
    graph["12"]["inputs"]["weight"] = -1.0
    graph["9"]["inputs"]["layers"] = "relu1_1,conv9_9"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(graph))
    assert main(["validate", str(path)]) == 2
    text = capsys.readouterr().err
    assert "node 12 (NSTStyleLoss), input 'weight': -1.0 is below the minimum 0.0" in text
    assert "node 9 (NSTFeatures)" in text and "conv9_9" in text and "relu5_4" in text
    assert main(["run", str(path), "--json", "--no-cache"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["node_errors"]["12"]["errors"][0]["type"] == "value_smaller_than_min"
    assert report["node_errors"]["9"]["errors"][0]["type"] == "custom_validation_failed"


def test_a_dense_cycle_is_reported_once_per_node_quickly() -> None:
    count = 40
    prompt = {
        str(i): {"class_type": "Add", "inputs": {"a": [str((i + 1) % count), 0], "b": [str((i + 7) % count), 0]}}
        for i in range(count)
    }  # more simple cycles than could ever be listed
    prompt["show"] = {"class_type": "Show", "inputs": {"value": ["0", 0]}}
    errors = errors_of(prompt)
    assert len(errors) == count and all(e.kind == "dependency_cycle" for e in errors)
    assert "and 28 more" in errors[0].message


def test_a_self_link_is_a_cycle() -> None:
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
    }
    assert [e.kind for e in errors_of(prompt)] == ["dependency_cycle"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_validation_errors(value: float) -> None:
    error = only_error(with_inputs("1", scale=value))
    assert (error.kind, error.input_name) == ("invalid_input_type", "scale") and "not a finite number" in error.message


def test_a_crashing_validate_inputs_names_its_node() -> None:
    prompt = {
        "1": {"class_type": "Crashing", "inputs": {"text": "abc"}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
    }
    error = only_error(prompt)
    assert error.node_id == "1" and "VALIDATE_INPUTS failed: ValueError: invalid literal" in error.message


@pytest.mark.parametrize("node_id", ["²", "①", "٣"])
def test_odd_node_ids_are_sorted_and_named(node_id: str) -> None:
    prompt = {
        node_id: {"class_type": "Vector", "inputs": {"length": 0, "scale": 1.0, "kind": "ones"}},
        "2": {"class_type": "Total", "inputs": {"tensor": [node_id, 0]}},
    }
    error = only_error(prompt)
    assert error.node_id == node_id and str(error).startswith(f"node {node_id} (Vector)")


@pytest.mark.parametrize("node_id", ["", "x" * 65, "a\nb", "\ud800"])
def test_unusable_node_ids_are_format_errors(node_id: str) -> None:
    with pytest.raises(GraphFormatError, match="is not usable"):
        load_graph({node_id: {"class_type": "Show", "inputs": {}}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 10_000 + "]" * 10_000, "nested"),
        (
            '{"1": {"class_type": "Show", "inputs": {"value": ' + '{"__value__": [' * 900 + "1" + "]}" * 900 + "}}}",
            "nested",
        ),
        (
            '{"1": {"class_type": "Show", "inputs": {"value": ' + '{"__value__": [' * 40 + "1" + "]}" * 40 + "}}}",
            "nested deeper than 64",
        ),
        ('{"1": {"class_type": "Show", "inputs": {"value": ' + "9" * 5000 + "}}}", "digits"),
        ('{"1": {"class_type": "Show"}}'.encode("utf-16").decode("latin-1"), "not UTF-8"),
    ],
    ids=["deep-json", "deep-value", "deeper-than-the-limit", "huge-int", "utf16"],
)
def test_hostile_files_are_clear_format_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(GraphFormatError, match=message):
        load_graph(path)


def test_a_graph_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Windows editors (Notepad) start UTF-8 files with one."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + Path("graphs/gatys.json").read_bytes())
    assert load_graph(path).prompt == load_graph(Path("graphs/gatys.json")).prompt


def test_graph_limits_have_clear_messages_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({str(i): {"class_type": "Number", "inputs": {"value": 1}} for i in range(30)}))
    monkeypatch.setenv("GRAPHRUN_MAX_GRAPH_NODES", "20")
    with pytest.raises(GraphFormatError, match="has 30 nodes, more than 20 .raise GRAPHRUN_MAX_GRAPH_NODES"):
        load_graph(path)
    monkeypatch.setenv("GRAPHRUN_MAX_GRAPH_NODES", "40")
    monkeypatch.setenv("GRAPHRUN_MAX_GRAPH_BYTES", "100")
    with pytest.raises(GraphFormatError, match="larger than"):
        load_graph(path)
    monkeypatch.setenv("GRAPHRUN_MAX_GRAPH_BYTES", "lots")
    with pytest.raises(GraphFormatError, match="GRAPHRUN_MAX_GRAPH_BYTES='lots' must be a whole number of at least 1"):
        load_graph(path)


def test_graph_files_that_cannot_be_read_are_format_errors(tmp_path: Path) -> None:
    for path, message in (
        (tmp_path, "cannot read graph file"),
        (tmp_path / "none.json", "No such file"),
        ("bad\x00name.json", "cannot read graph file"),
    ):
        with pytest.raises(GraphFormatError, match=message):
            load_graph(path)


def workflow(*nodes: dict, links: list | None = None) -> dict:
    return {
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": list(nodes),
        "links": links or [],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def test_editor_workflows_become_prompts_through_the_node_specs() -> None:
    document = workflow(
        {
            "id": 1,
            "type": "Vector",
            "mode": 0,
            "widgets_values": [4, 2.0, "arange"],
            "title": "Four",
            "outputs": [{"name": "TENSOR", "type": "TENSOR", "links": [1]}],
        },
        {"id": 2, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}]},
        {
            "id": 3,
            "type": "Total",
            "mode": 0,
            "widgets_values": [],
            "inputs": [{"name": "tensor", "type": "TENSOR", "link": 2}, {"name": "offset", "type": "INT", "link": 3}],
        },
        {"id": 4, "type": "PrimitiveNode", "mode": 0, "widgets_values": [3, "fixed"]},
        {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["a note"]},
        {"id": 6, "type": "Show", "mode": 2, "widgets_values": []},
        links=[[1, 1, 0, 2, 0, "TENSOR"], [2, 2, 0, 3, 0, "TENSOR"], [3, 4, 0, 3, 1, "INT"]],
    )
    graph = load_graph(document, registry=REGISTRY)
    assert graph.prompt == {
        "1": {
            "class_type": "Vector",
            "inputs": {"length": 4, "scale": 2.0, "kind": "arange"},
            "_meta": {"title": "Four"},
        },
        "3": {"class_type": "Total", "inputs": {"tensor": ["1", 0]}},
    }
    assert graph.workflow is document
    assert errors_of(graph.prompt) == []


def test_editor_extra_widgets_bypassed_nodes_and_subgraphs() -> None:
    document = workflow(
        {"id": 1, "type": "Number", "mode": 0, "widgets_values": [5]},
        {
            "id": 2,
            "type": "Add",
            "mode": 4,
            "widgets_values": [0, 0],
            "inputs": [{"name": "a", "type": "INT", "link": 1, "widget": {"name": "a"}}],
        },
        {
            "id": 3,
            "type": "Countdown",
            "mode": 0,
            "widgets_values": [0, 9],
            "inputs": [{"name": "start", "type": "INT", "link": 2}],
        },
        links=[[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "INT"]],
    )
    prompt = load_graph(document, registry=REGISTRY).prompt
    assert prompt["3"]["inputs"] == {"steps": 9, "start": ["1", 0]}  # through the bypassed Add
    with pytest.raises(GraphFormatError, match="subgraphs are not supported"):
        load_graph({**document, "definitions": {"subgraphs": [{"id": "x"}]}}, registry=REGISTRY)


def test_editor_workflows_with_duplicate_ids_or_nothing_to_run_are_format_errors() -> None:
    twice = workflow(
        {"id": 1, "type": "Number", "mode": 0, "widgets_values": [1]},
        {"id": 1, "type": "Show", "mode": 0, "widgets_values": []},
    )
    with pytest.raises(GraphFormatError, match="two nodes have the id 1"):
        load_graph(twice, registry=REGISTRY)
    muted = workflow(
        {"id": 1, "type": "Number", "mode": 2, "widgets_values": [1]},
        {"id": 2, "type": "Note", "mode": 0, "widgets_values": ["x"]},
    )
    with pytest.raises(GraphFormatError, match="the workflow has no node to run"):
        load_graph(muted, registry=REGISTRY)


def gatys_workflow() -> dict:
    return json.loads(Path("example_workflows/gatys.json").read_text())


def node_of(document: dict, node_id: int) -> dict:
    return next(node for node in document["nodes"] if node["id"] == node_id)


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda w: w["links"].append([24, 2, 0, 6, 0, "IMAGE"]), "two links have the id 24"),
        (lambda w: w["nodes"].remove(node_of(w, 1)), "link 24 comes from node 1, which the workflow lacks"),
        (
            lambda w: w["links"][0].__setitem__(2, 3),
            r"link 24 uses output 3 of node 1 \(NSTLoadImage\), which has no such slot",
        ),
        (lambda w: w["links"][0].__setitem__(4, 9), r"link 24 uses input 9 of node 3 \(NSTResizeImage\)"),
        (lambda w: w["links"][0].__setitem__(4, 1), r"link 24 carries 'IMAGE' but input 1 of node 3 .* is 'COMBO'"),
        (
            lambda w: node_of(w, 3)["inputs"][0].__setitem__("link", 99),
            r"input 0 of node 3 .* names link 99, which does not end",
        ),
        (
            lambda w: node_of(w, 15)["widgets_values"].extend([1, 2, 3]),
            r"node 15 \(NSTOptimize\) has \d+ widget values but takes at most",
        ),
    ],
)
def test_editor_workflows_with_a_broken_link_table_are_format_errors(break_it, message: str) -> None:
    document = gatys_workflow()
    break_it(document)
    with pytest.raises(GraphFormatError, match=message):
        load_graph(document)


def test_a_link_to_a_missing_node_and_a_primitive_without_outputs_are_dropped() -> None:
    document = gatys_workflow()
    expected = load_graph(gatys_workflow()).prompt
    document["links"].append([99, 1, 0, 42, 0, "IMAGE"])  # its target is gone: it feeds nothing
    document["nodes"].append({"id": 43, "type": "PrimitiveNode", "mode": 0, "widgets_values": [3]})
    assert load_graph(document).prompt == expected
