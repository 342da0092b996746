"""Shipped graphs, whole-graph runs, node-level errors and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from runner import (
    Cache,
    GraphValidationError,
    NodeExecutionError,
    default_registry,
    load_graph,
    run,
    validate,
)
from runner.cli import main

GRAPHS = sorted((Path(__file__).resolve().parent.parent / "graphs").glob("*.json"))


def tiny(output: Path) -> dict[str, object]:
    """Overrides that shrink graphs/gatys.json to 64 px and 3 steps, writing to ``output``."""
    return {"3.size": 64, "4.size": 64 * 48, "15.steps": 3, "17.path": str(output)}


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_every_shipped_graph_is_valid(path: Path) -> None:
    graph = load_graph(path)
    assert validate(graph, default_registry()) == []


def test_registry_finds_the_pack_through_its_entry_point() -> None:
    from nst_nodes import NODE_CLASS_MAPPINGS

    assert set(NODE_CLASS_MAPPINGS) <= set(default_registry().classes)


def test_gatys_graph_runs_end_to_end_and_documents_itself(tmp_path: Path, reporter) -> None:
    output = tmp_path / "out.png"
    cache = Cache(tmp_path / "cache")
    results = run("graphs/gatys.json", device="cpu", overrides=tiny(output), cache=cache, reporter=reporter)
    assert results == {"17": ()}
    with Image.open(output) as picture:
        assert picture.size == (64, 48)
        embedded = json.loads(picture.text["prompt"])
    assert embedded["15"]["inputs"]["steps"] == 3 and embedded["12"]["class_type"] == "NSTStyleLoss"
    # A new style weight reruns the style loss and what follows, nothing upstream of it.
    again = type(reporter)()
    run("graphs/gatys.json", device="cpu", overrides={**tiny(output), "12.weight": 0.01}, cache=cache, reporter=again)
    assert sorted(again.ran, key=int) == ["12", "14", "15", "16", "17"]


def test_a_whole_graph_runs_inside_inference_mode_like_comfyui(tmp_path: Path) -> None:
    with torch.inference_mode():
        results = run("graphs/gatys.json", device="cpu", overrides=tiny(tmp_path / "out.png"), outputs=["15"])
    tensor, history = results["15"]
    assert tensor["pixels"].shape == (1, 3, 48, 64)
    assert history["loss"][-1] < history["loss"][0]


def bad_graph(tmp_path: Path, **changes: object) -> dict:
    graph = json.loads(Path("graphs/gatys.json").read_text())
    for key, value in changes.items():
        node_id, name = key.split("__")
        graph[node_id]["inputs"][name] = value
    return graph


@pytest.mark.parametrize(
    ("changes", "node_id", "text"),
    [
        ({"1__path": "graphs/images/missing.jpg"}, "1", "image file not found: graphs/images/missing.jpg"),
        ({"9__layers": "relu1_1,relu9_1"}, "9", "unknown layer(s) ['relu9_1']; valid names are conv1_1"),
        ({"12__weight": -0.5}, "12", "-0.5 is below the minimum 0.0"),
        ({"12__layer_weights": "1,-1,1,1,1"}, "12", "weights must be non-negative"),
        ({"5__weights": "no/such/weights.pth"}, "5", "no file at no/such/weights.pth"),
        ({"5__preprocessing": "torchvision"}, "5", "the caffe weights expect 'caffe' preprocessing"),
        ({"17__path": "out.gif"}, "17", "must end in one of"),
    ],
)
def test_bad_inputs_are_validation_errors_naming_node_and_input(tmp_path: Path, changes, node_id, text, reporter) -> None:
    with pytest.raises(GraphValidationError) as caught:
        run(bad_graph(tmp_path, **changes), device="cpu", reporter=reporter)
    messages = [str(e) for e in caught.value.errors]
    assert len(messages) == 1 and messages[0].startswith(f"node {node_id} (") and text in messages[0]
    assert reporter.ran == []


def test_corrupt_image_is_an_error_naming_the_path(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(Path("graphs/images/tubingen.jpg").read_bytes()[:3000])
    with pytest.raises(NodeExecutionError, match=r"node 1 \(NSTLoadImage\) failed: .*broken.jpg"):
        run(bad_graph(tmp_path, **{"1__path": str(corrupt)}), device="cpu", overrides=tiny(tmp_path / "o.png"))


def test_features_refuse_a_tensor_normalized_for_another_model(tmp_path: Path) -> None:
    graph = bad_graph(tmp_path)
    graph["50"] = {"class_type": "NSTVGG19", "inputs": {"weights": "caffe", "pooling": "avg"}}
    graph["9"]["inputs"]["model"] = ["50", 0]
    with pytest.raises(NodeExecutionError, match=r"node 9 \(NSTFeatures\) failed: .*tensor was made with model"):
        run(graph, device="cpu", overrides=tiny(tmp_path / "o.png"))


def test_cli_run_and_cache_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output, cache_dir = tmp_path / "cli.png", tmp_path / "cache"
    sets = [arg for key, value in tiny(output).items() for arg in ("--set", f"{key}={value}")]
    assert main(["run", "graphs/gatys.json", *sets, "--cache-dir", str(cache_dir), "--device", "cpu"]) == 0
    first = capsys.readouterr().err
    assert "[15] NSTOptimize: ran in" in first and output.exists()
    assert main(["run", "graphs/gatys.json", *sets, "--cache-dir", str(cache_dir), "--recompute", "16"]) == 0
    second = capsys.readouterr().err
    assert "[15] NSTOptimize: cached" in second and "[16] NSTDenormalize: ran in" in second
    assert main(["cache", "info", "--cache-dir", str(cache_dir)]) == 0
    assert " entries, " in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(cache_dir)]) == 0
    assert "removed" in capsys.readouterr().out and list(cache_dir.glob("*/*.entry")) == []
    assert main(["nodes", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["NSTOptimize"]["output"] == ["NST_TENSOR", "NST_HISTORY"] and info["NSTSaveImage"]["output_node"]


def test_ctrl_c_stops_the_optimizer_keeps_finished_work_and_exits_130(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    sets = [arg for key, value in {**tiny(tmp_path / "o.png"), "15.steps": 100000}.items() for arg in ("--set", f"{key}={value}")]
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", "graphs/gatys.json", *sets, "--cache-dir", str(cache_dir)],
        stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if "NSTCombineLosses" in line:
            break
    process.send_signal(signal.SIGINT)
    remaining = process.stderr.read()
    assert process.wait(timeout=60) == 130
    assert "stopped: interrupted at node 15 (NSTOptimize)" in remaining and "kept" in remaining
    assert len(list(cache_dir.glob("*/*.entry"))) >= 10  # everything before the optimizer
