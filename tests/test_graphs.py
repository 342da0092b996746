"""Shipped graphs, whole-graph runs, node-level errors and the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_untrained_stylizer, small_graph, small_overrides
from PIL import Image

from graphrun import (
    Cache,
    Folders,
    GraphValidationError,
    NodeExecutionError,
    RunInterrupted,
    default_registry,
    load_graph,
    run,
    validate,
)
from nst_nodes.app import main
from nst_nodes.limits import Available, optimization_bytes

GRAPHS = sorted((Path(__file__).resolve().parent.parent / "graphs").glob("*.json"))


TINY = small_overrides()
"""Overrides that shrink graphs/gatys.json to 64x48 px and 3 steps."""


def tiny_run(tmp_path: Path, device: str = "cpu", **kwargs: object) -> dict:
    """graphs/gatys.json at 64 px, writing into ``tmp_path/output``."""
    overrides = {**TINY, **kwargs.pop("overrides", {})}
    return run(
        "graphs/gatys.json", device=device, overrides=overrides, folders=Folders(output=tmp_path / "output"), **kwargs
    )


@pytest.mark.parametrize("path", GRAPHS, ids=lambda p: p.name)
def test_every_shipped_graph_is_valid(path: Path, tmp_path: Path) -> None:
    """graphs/fast_video.json loads the stylizer graphs/fast.json saves: an untrained one stands in for it."""
    save_untrained_stylizer(tmp_path)
    graph = load_graph(path)
    assert validate(graph, default_registry(), folders=Folders(models=tmp_path)) == []


def test_registry_finds_the_pack_through_its_entry_point() -> None:
    from nst_nodes import NODE_CLASS_MAPPINGS

    assert set(NODE_CLASS_MAPPINGS) <= set(default_registry().classes)


def test_gatys_graph_runs_end_to_end_and_documents_itself(tmp_path: Path, reporter) -> None:
    cache = Cache(tmp_path / "cache")
    results = tiny_run(tmp_path, cache=cache, reporter=reporter)
    assert results == {"17": (), "19": ()}
    output = tmp_path / "output" / "gatys.png"
    with Image.open(tmp_path / "output" / "gatys_history.png") as plot:
        assert plot.size == (640, 400)
    assert reporter.files["17"] == [output]
    with Image.open(output) as picture:
        assert picture.size == (64, 48)
        embedded = json.loads(picture.text["prompt"])
    assert embedded["15"]["inputs"]["steps"] == 3 and embedded["12"]["class_type"] == "NSTStyleLoss"
    # A new style weight reruns the style loss and what follows, nothing upstream of it.
    again = type(reporter)()
    tiny_run(tmp_path, overrides={"12.weight": 0.01}, cache=cache, reporter=again)
    assert sorted(again.ran, key=int) == ["12", "14", "15", "16", "17", "18", "19"]


def test_a_stopped_optimization_is_taken_up_again_by_the_next_run_to_the_same_image(tmp_path: Path, reporter) -> None:
    """Through the engine and the node: the stop keeps the optimizer's state in the cache (a new process's cache
    finds it), the rerun goes on from the step after the stop, and its image is the uninterrupted run's."""
    steps = {"15.steps": 14}
    whole = tiny_run(tmp_path / "whole", overrides=steps, outputs=["15"])["15"][0]["pixels"]
    stop = threading.Event()
    reporter.stop_at = ("15", 5, stop)
    with pytest.raises(RunInterrupted):
        tiny_run(tmp_path, overrides=steps, cache=Cache(tmp_path / "cache"), reporter=reporter, stop=stop)
    again = type(reporter)()
    rest = tiny_run(tmp_path, overrides=steps, cache=Cache(tmp_path / "cache"), reporter=again, outputs=["15"])
    assert [step for node, step, _ in again.steps if node == "15"] == list(range(6, 15))
    assert any(warning.startswith("node 15 (NSTOptimize): goes on from") for warning in again.warnings)
    assert torch.equal(rest["15"][0]["pixels"], whole)


def test_a_whole_graph_runs_inside_inference_mode_like_comfyui(tmp_path: Path, device: torch.device) -> None:
    with torch.inference_mode():
        results = tiny_run(tmp_path, device.type, outputs=["15"])
    tensor, history = results["15"]
    assert tensor["pixels"].shape == (1, 3, 48, 64) and tensor["pixels"].device.type == device.type
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
        ({"1__image": "graphs/missing.jpg"}, "1", "image: file not found: graphs/missing.jpg"),
        ({"9__layers": "relu1_1,relu9_1"}, "9", "unknown layer(s) ['relu9_1']; valid names are conv1_1"),
        ({"12__weight": -0.5}, "12", "-0.5 is below the minimum 0.0"),
        ({"12__layer_weights": "1,-1,1,1,1"}, "12", "weights must be finite and non-negative"),
        ({"5__weights": "no/such/weights.pth"}, "5", "weights: file not found: no/such/weights.pth"),
        ({"5__preprocessing": "torchvision"}, "5", "the caffe weights expect 'caffe' preprocessing"),
        ({"17__format": "gif"}, "17", "'gif' is not one of ['png', 'jpg']"),
        ({"17__filename_prefix": "results/"}, "17", "must end in a file name"),
        ({"12__weight": float("nan")}, "12", "nan is not a finite number"),
        ({"12__layer_weights": "inf,1,1,1,1"}, "12", "weights must be finite and non-negative"),
        ({"3__size": 100000}, "3", "size: 100000 is outside 8..16384 for mode long_side"),
        ({"1__image": "graphs/gatys.json"}, "1", "is not an image file"),
        ({"1__image": "graphs"}, "1", "is a folder, not a file"),
        ({"1__image": "nst-samples/\x00.jpg"}, "1", "contains a NUL character"),
    ],
)
def test_bad_inputs_are_validation_errors_naming_node_and_input(
    tmp_path: Path, changes, node_id, text, reporter
) -> None:
    with pytest.raises(GraphValidationError) as caught:
        run(bad_graph(tmp_path, **changes), device="cpu", reporter=reporter)
    messages = [str(e) for e in caught.value.errors]
    assert len(messages) == 1 and messages[0].startswith(f"node {node_id} (") and text in messages[0]
    assert reporter.ran == []


def test_corrupt_image_is_an_error_naming_the_path(tmp_path: Path, samples: Path) -> None:
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes((samples / "tubingen.jpg").read_bytes()[:3000])
    with pytest.raises(NodeExecutionError, match=r"node 1 \(NSTLoadImage\) failed: .*broken.jpg"):
        tiny_run(tmp_path, overrides={"1.image": str(corrupt)})


def test_features_refuse_a_tensor_normalized_for_another_model(tmp_path: Path) -> None:
    graph = bad_graph(tmp_path)
    graph["50"] = {"class_type": "NSTVGG19", "inputs": {"weights": "caffe", "pooling": "avg"}}
    graph["9"]["inputs"]["model"] = ["50", 0]
    with pytest.raises(NodeExecutionError, match=r"node 9 \(NSTFeatures\) failed: .*tensor was made with model"):
        run(graph, device="cpu", overrides=TINY, folders=Folders(output=tmp_path))


def test_an_image_too_small_for_the_deepest_layer_is_refused_before_the_network_runs(tmp_path: Path) -> None:
    with pytest.raises(
        NodeExecutionError,
        match=r"node 9 \(NSTFeatures\) failed: ValueError: tensor: a 8x5 image "
        r"is too small for layer relu5_1, which needs at least 16x16 px",
    ):
        tiny_run(tmp_path, overrides={"4.size": 40})


def test_work_that_cannot_fit_in_memory_is_refused_with_the_estimate(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("nst_nodes.limits.available", lambda device: Available(700 << 20))
    with pytest.raises(NodeExecutionError) as caught:
        tiny_run(tmp_path, overrides={"3.size": 2048, "4.size": 64 * 64})
    message = str(caught.value)
    assert message.startswith(
        "node 8 (NSTFeatures) failed: MemoryError: tensor: a network pass at 2048x1536 needs about"
    )
    assert "would fit, also for optimizing it), or set NST_MEMORY_CHECK=0" in message
    assert "but cpu has 700 MiB available; use a smaller size (about" in message
    width, height = map(int, re.search(r"about (\d+)x(\d+) would fit", message).groups())  # type: ignore[union-attr]
    fits = [
        optimization_bytes(h, w, "relu5_1", "cpu") <= 700 << 20 for h, w in ((height, width), (height + 8, width + 8))
    ]
    assert fits == [True, False]  # the size suggested can be optimized too, and it is about the largest that can


def test_an_optimization_that_fits_only_with_its_large_blocks_handed_back_runs_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given memory between the estimates with and without the heap keeping its blocks, Optimize Image runs (at
    64x48 only NST_TUNING=memory's 128 KiB threshold maps its blocks), says so, and leaves the process as tuned."""
    from nst_nodes import limits, tuning

    class Libc:  # glibc as nst tuned it, without changing this process's allocator
        def mallopt(self, option: int, value: int) -> int:
            return 1

    monkeypatch.setattr(tuning, "_libc", Libc())
    monkeypatch.setattr(tuning, "_tuned_threshold", 1 << 30)
    monkeypatch.setenv("NST_MEMORY_CHECK", "1")
    pooled, mapped = (
        optimization_bytes(48, 64, "relu5_1", "cpu", None, threshold) for threshold in (1 << 30, 128 << 10)
    )
    monkeypatch.setattr(limits, "available", lambda device: limits.Available((pooled + mapped) // 2))
    tensor, history = tiny_run(tmp_path, outputs=["15"])["15"]
    assert tensor["pixels"].shape == (1, 3, 48, 64) and history["loss"][-1] < history["loss"][0]
    assert "Optimize Image: init at 64x48 needs about" in caplog.text and "blocks of 128 KiB and more" in caplog.text
    assert tuning.mmap_threshold() == 1 << 30


def cli_sets(overrides: dict[str, object]) -> list[str]:
    return [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]


def test_cli_run_and_cache_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from graphrun import cli

    caches: list[Cache] = []

    def recording_run(*args: object, cache: Cache, **kwargs: object) -> dict:
        caches.append(cache)
        return run(*args, cache=cache, **kwargs)

    monkeypatch.setattr(cli, "run", recording_run)
    cache_dir, output = tmp_path / "cache", tmp_path / "out"
    sets = [*cli_sets(TINY), "--output-dir", str(output), "--preview", str(tmp_path / "preview.png")]
    assert main(["run", "graphs/gatys.json", *sets, "--cache-dir", str(cache_dir), "--device", "cpu"]) == 0
    assert caches[0].memory_held == 0  # its one run read the cache first: results kept in memory would serve no one
    first = capsys.readouterr().err
    assert "[15] NSTOptimize: ran in" in first and f"-> {output / 'gatys.png'}" in first
    with Image.open(tmp_path / "preview.png") as preview:  # the last step's image, as the result
        assert preview.size == (64, 48)
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


@pytest.mark.parametrize(
    ("signal_number", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")]
)
def test_a_signal_stops_the_optimizer_saves_the_best_image_so_far_and_caches_none_of_it(
    tmp_path: Path, signal_number: int, code: int, name: str
) -> None:
    cache_dir, output = tmp_path / "cache", tmp_path / "output"
    sets = cli_sets({**TINY, "15.steps": 100000})
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nst_nodes",
            "run",
            "graphs/gatys.json",
            *sets,
            "--cache-dir",
            str(cache_dir),
            "--output-dir",
            str(output),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # text mode reads tqdm's carriage returns as line ends
        if "NSTOptimize" in line and "loss=" in line:  # a step done: past the timing of the pass plans
            break
    process.send_signal(signal_number)
    remaining = process.stderr.read()
    assert process.wait(timeout=60) == code
    assert f"{name}: stopping after the current step" in remaining
    assert "[15] NSTOptimize: stopped early at step" in remaining and "(partial result, not cached)" in remaining
    assert f"-> {output / 'gatys.png'}" in remaining and f"stopped by {name}:" in remaining
    assert remaining.rstrip().endswith("; finished results stay cached")  # not said under --no-cache
    with Image.open(output / "gatys.png") as picture:
        assert picture.size == (64, 48)
    # everything before the optimizer but the model and the losses (memory-only), and the optimizer's state
    assert len(list(cache_dir.glob("*/*.entry"))) == 9 + 1


@pytest.mark.parametrize("name", ["gatys", "blend", "colors", "regions", "styles", "hires", "fast"])
def test_every_example_workflow_is_its_shipped_graph(name: str) -> None:
    """The editor workflows in example_workflows/ queue exactly the prompts in graphs/."""
    example = load_graph(Path("example_workflows") / f"{name}.json")
    assert example.prompt == load_graph(Path("graphs") / f"{name}.json").prompt
    assert example.workflow is not None


def saved_with_the_former_id(text: str) -> str:
    """A graph or editor workflow as saved while Style Statistics was NSTGramMatrices with a NST_GRAMS output
    "grams"."""
    return (
        text.replace("NSTStyleStatistics", "NSTGramMatrices")
        .replace("NST_STYLE_STATISTICS", "NST_GRAMS")
        .replace('"name": "statistics"', '"name": "grams"')
        .replace('"localized_name": "statistics"', '"localized_name": "grams"')
    )


def test_a_graph_saved_with_the_former_id_of_style_statistics_still_validates_and_runs(reporter) -> None:
    prompt = json.loads(saved_with_the_former_id(json.dumps(small_graph())))
    assert prompt["10"]["class_type"] == "NSTGramMatrices"
    assert validate(load_graph(prompt), default_registry()) == []
    tensor, history = run(prompt, device="cpu", outputs=["15"], reporter=reporter)["15"]
    assert "10" in reporter.ran and tensor["pixels"].shape == (1, 3, 48, 64) and len(history["loss"]) >= 3


def test_an_editor_workflow_saved_with_the_former_id_converts_to_its_graph(tmp_path: Path) -> None:
    path = tmp_path / "old_workflow.json"
    path.write_text(saved_with_the_former_id(Path("example_workflows/gatys.json").read_text()))
    assert '"NSTGramMatrices"' in path.read_text()
    converted = load_graph(path)
    shipped = load_graph(Path("graphs/gatys.json")).prompt
    assert converted.prompt == json.loads(saved_with_the_former_id(json.dumps(shipped)))
    assert validate(converted, default_registry()) == []


def test_the_former_id_is_hidden_in_comfyui_but_declares_the_same_node() -> None:
    from nst_nodes import NODE_CLASS_MAPPINGS

    former, current = NODE_CLASS_MAPPINGS["NSTGramMatrices"], NODE_CLASS_MAPPINGS["NSTStyleStatistics"]
    assert former.DEPRECATED is True and not getattr(current, "DEPRECATED", False)
    assert former.INPUT_TYPES() == current.INPUT_TYPES() and former.RETURN_TYPES == current.RETURN_TYPES


def tiny_workflow(tmp_path: Path) -> Path:
    """example_workflows/gatys.json with its widgets set to 64 px and 3 steps, as a user would in the editor."""
    workflow = json.loads(Path("example_workflows/gatys.json").read_text())
    sizes = {3: {1: 64}, 4: {1: 64 * 48}, 15: {0: 3}}
    for node in workflow["nodes"]:
        for index, value in sizes.get(node["id"], {}).items():
            node["widgets_values"][index] = value
    path = tmp_path / "tiny_workflow.json"
    path.write_text(json.dumps(workflow))
    return path


def test_an_editor_workflow_runs_from_the_cli_like_its_graph_and_embeds_itself(tmp_path: Path, capsys) -> None:
    cache = str(tmp_path / "cache")
    assert (
        main(["run", "graphs/gatys.json", *cli_sets(TINY), "--cache-dir", cache, "--output-dir", str(tmp_path / "a")])
        == 0
    )
    capsys.readouterr()
    workflow = tiny_workflow(tmp_path)
    assert main(["run", str(workflow), "--cache-dir", cache, "--output-dir", str(tmp_path / "b")]) == 0
    log = capsys.readouterr().err
    # The same prompt, so the same keys: only the files missing from the new folder are written.
    assert "[16] NSTDenormalize: cached" in log and "NSTOptimize" not in log and "[17] NSTSaveImage: ran" in log
    assert main(["run", str(workflow), "--no-cache", "--output-dir", str(tmp_path / "c")]) == 0
    with (
        Image.open(tmp_path / "a" / "gatys.png") as graph_image,
        Image.open(tmp_path / "c" / "gatys.png") as editor_image,
    ):
        assert np.array_equal(np.asarray(graph_image), np.asarray(editor_image))
        assert json.loads(editor_image.text["workflow"])["nodes"] == json.loads(workflow.read_text())["nodes"]
        assert json.loads(editor_image.text["prompt"]) == json.loads(graph_image.text["prompt"])


def test_a_second_signal_aborts_at_once() -> None:
    from graphrun.cli import _StopOnSignal

    with _StopOnSignal() as stop:
        stop.handle(signal.SIGTERM, None)
        assert stop.event.is_set() and stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)


def test_one_stop_delivered_twice_at_once_is_one_stop(monkeypatch) -> None:
    """``timeout -s INT`` signals the process and then its group: that is not a second Ctrl-C."""
    import graphrun.cli
    from graphrun.cli import SAME_SIGNAL_SECONDS

    now = [100.0]
    monkeypatch.setattr(graphrun.cli.time, "monotonic", lambda: now[0])
    with graphrun.cli._StopOnSignal() as stop:
        stop.handle(signal.SIGINT, None)
        now[0] += SAME_SIGNAL_SECONDS / 2
        stop.handle(signal.SIGINT, None)  # still a stop, not an abort
        now[0] += SAME_SIGNAL_SECONDS  # pressed again
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT, None)


def test_a_stop_as_the_run_finishes_still_ends_nst_with_the_signals_code(monkeypatch, capsys) -> None:
    """Its results are complete (all cached, say), but a shell loop around nst must stop on the Ctrl-C."""
    import graphrun.cli

    def finishes_as_the_signal_comes(*args: object, **kwargs: object) -> dict:
        signal.raise_signal(signal.SIGINT)  # handled as a stop request: the run is past its last step
        return {}

    monkeypatch.setattr(graphrun.cli, "run", finishes_as_the_signal_comes)
    assert main(["run", "graphs/gatys.json", "--no-cache"]) == 130
    assert "Ctrl-C: stopping after the current step" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["validate", "graphs/gatys.json"], ["video", "graphs/video.json", "clip.mp4", "-o", "out.mp4"]]
)
def test_a_signal_while_the_packs_load_ends_the_command_with_a_word(argv: list[str], monkeypatch, capsys) -> None:
    """A Ctrl-C inside a library's import was swallowed by it, or left numpy half loaded: it is held, then said."""
    import graphrun.cli

    def interrupted_import() -> object:
        signal.raise_signal(signal.SIGTERM)
        return graphrun.cli.Registry()

    monkeypatch.setattr(graphrun.cli, "default_registry", interrupted_import)
    before = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 143
    assert capsys.readouterr() == (
        "",
        "\nSIGTERM: stopping once the node packs have loaded (again: at once)\naborted\n",
    )
    assert signal.getsignal(signal.SIGTERM) == before  # put back as it was


LATE_SIGNALS = {
    # as the command returns, after a run's own stop handling handed the signals back: its exit code, no traceback
    "return": (
        "import graphrun.cli as cli\n"
        "command = cli.main\n"
        "def main(*args, **kwargs):\n"
        "    code = command(*args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(1)\n"
        "    return code\n"
        "cli.main = main\n",
        130,
    ),
    # in an exit handler that the command registered (as dask's and torch's are): it ends the process at once
    "exit handler": (
        "import graphrun.cli as cli\n"
        "command = cli.main\n"
        "def main(*args, **kwargs):\n"
        "    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))\n"
        "    return command(*args, **kwargs)\n"
        "cli.main = main\n",
        130,
    ),
    # in the interpreter's teardown, after every exit handler (a finalizer at module cleanup, where Python
    # has put back the default handlers): the command's own exit code, not a death by the signal
    "teardown": (
        "class Late:\n"
        "    def __del__(self):\n"
        "        os.write(2, b'late signal\\n')\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(1)\n"
        "late = Late()\n",
        0,
    ),
}


@pytest.mark.parametrize("when", sorted(LATE_SIGNALS))
def test_a_signal_while_the_process_winds_up_ends_it_without_a_traceback(when: str) -> None:
    """A second Ctrl-C that lands after the command finished, while the interpreter exits (as on a fast machine)."""
    setup, code = LATE_SIGNALS[when]
    script = (
        "import atexit, os, signal, sys, time\n"
        "from nst_nodes.app import console\n"
        f"{setup}"
        "sys.argv = ['nst', 'validate', 'graphs/gatys.json']\n"
        "sys.exit(console())\n"
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert finished.returncode == code and "valid" in finished.stdout, finished
    assert "Traceback" not in finished.stderr and "Exception ignored" not in finished.stderr, finished.stderr
    assert when != "teardown" or "late signal" in finished.stderr  # the finalizer did run, and signal


def test_a_ctrl_c_while_nst_or_a_pack_command_starts_ends_it_with_a_word(capsys, monkeypatch) -> None:
    """A Ctrl-C while the engine's modules load, or inside a pack's own command (``nst video``), as in ``nst run``."""
    import types

    from nst_nodes import app

    class Interrupted(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "graphrun.cli", Interrupted("graphrun.cli"))
        assert app.console() == 130
    assert capsys.readouterr().err == "aborted\n"

    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    command = types.SimpleNamespace(load=lambda: interrupted)
    monkeypatch.setattr("graphrun.cli.pack_commands", lambda: {"video": command})
    assert main(["video", "graphs/fast_video.json"]) == 130
    assert capsys.readouterr().err == "aborted\n"


def test_no_traceback_reaches_the_user(tmp_path: Path, capsys, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr("graphrun.cli.run", broken)
    assert main(["run", "graphs/gatys.json", "--no-cache"]) == 1
    assert (
        capsys.readouterr().err
        == "error: unexpected RuntimeError: something nobody foresaw (GRAPHRUN_DEBUG=1 shows where)\n"
    )
    (tmp_path / "bad.json").write_text("{")
    assert main(["validate", str(tmp_path / "bad.json"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "invalid_prompt"


def test_bad_output_destinations_fail_validation_not_the_save_after_the_work(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    assert main(["validate", "graphs/gatys.json", "--output-dir", str(tmp_path / "afile")]) == 2
    assert "node 17 (NSTSaveImage): filename_prefix: " in capsys.readouterr().err
    assert (
        main(["validate", "graphs/gatys.json", "--set", "17.filename_prefix=afile/x", "--output-dir", str(tmp_path)])
        == 2
    )
    assert "is a file, so the folder" in capsys.readouterr().err


def test_a_closed_console_silences_the_run_but_never_stops_it(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "nst_nodes",
        "run",
        "graphs/gatys.json",
        *cli_sets(TINY),
        "--no-cache",
        "--output-dir",
        str(tmp_path),
    ]
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(2), timeout=120)
    assert finished.returncode == 0 and (tmp_path / "gatys.png").exists()


def test_quiet_runs_still_write_previews_and_json_reports_node_failures(tmp_path: Path, capsys) -> None:
    preview = tmp_path / "p.png"
    assert (
        main(
            [
                "run",
                "graphs/gatys.json",
                *cli_sets(TINY),
                "--no-cache",
                "--quiet",
                "--preview",
                str(preview),
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert preview.exists() and capsys.readouterr().err == ""
    assert (
        main(
            [
                "run",
                "graphs/gatys.json",
                *cli_sets({**TINY, "4.size": 40}),
                "--no-cache",
                "--json",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 1
    )
    report = json.loads(capsys.readouterr().out)
    assert report["error"]["type"] == "execution_error" and report["error"]["node_id"] == "9"


def test_odd_requests_get_clear_answers(tmp_path: Path, capsys) -> None:
    assert main(["validate", "graphs/gatys.json", "--only", ""]) == 2
    assert "no node was requested" in capsys.readouterr().err
    dotted = json.loads(Path("graphs/gatys.json").read_text())
    dotted["opt.main"] = dotted.pop("15")
    for node in dotted.values():
        node["inputs"] = {
            k: ["opt.main", v[1]] if isinstance(v, list) and v[0] == "15" else v for k, v in node["inputs"].items()
        }
    path = tmp_path / "dotted.json"
    path.write_text(json.dumps(dotted))
    assert main(["validate", str(path), "--set", "opt.main.steps=0"]) == 2
    assert "node opt.main (NSTOptimize), input 'steps': 0 is below the minimum 1" in capsys.readouterr().err


def test_a_huge_cycle_reports_briefly_in_text_and_fully_in_json(tmp_path: Path, capsys) -> None:
    count = 300
    graph = {
        str(i): {
            "class_type": "NSTCombineLosses",
            "inputs": {"loss_1": [str((i + 1) % count), 0], "loss_2": [str((i + 1) % count), 0]},
        }
        for i in range(count)
    }
    path = tmp_path / "cycle.json"
    path.write_text(json.dumps(graph))
    assert main(["validate", str(path), "--only", "0"]) == 2
    text = capsys.readouterr().err
    assert len(text.splitlines()) < 50 and "and 260 more (--json lists them all)" in text
    assert main(["validate", str(path), "--only", "0", "--json"]) == 2
    assert len(json.loads(capsys.readouterr().out)["node_errors"]) == count


@pytest.mark.parametrize(
    "setting", ["NST_CONV=bogus", "NST_MEMORY_CHECK=banana", "NST_MAX_IMAGE_PIXELS=lots", "NST_MEMORY_LIMIT_MIB=abc"]
)
def test_a_bad_environment_setting_is_refused_before_anything_runs(
    setting: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, value = setting.split("=")
    monkeypatch.setenv(name, value)
    assert main(["run", "graphs/gatys.json", "--no-cache", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{name}='{value}'" in err and "ran in" not in err and not any(tmp_path.iterdir())
    if name != "NST_CONV":  # read by the nodes as they run: validate refuses it too
        assert main(["validate", "graphs/gatys.json"]) == 2 and f"{name}='{value}'" in capsys.readouterr().err


def test_calibrate_refuses_sizes_the_nodes_refuse(capsys) -> None:
    for size, message in (("100000", "has a side longer than 16384 px"), ("9000x8000", "more than the limit of 64")):
        with pytest.raises(SystemExit) as exit:
            main(["calibrate", "--sizes", size])
        assert exit.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf", "soon"])
def test_preview_every_takes_a_number_of_seconds(seconds: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["run", "graphs/gatys.json", "--preview-every", seconds])
    assert refused.value.code == 2 and f"'{seconds}' is not a number of seconds" in capsys.readouterr().err


def test_calibrate_refuses_no_threads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["calibrate", "--threads", "0"])
    assert refused.value.code == 2 and "--threads: '0' is not a whole number of at least 1" in capsys.readouterr().err


def test_two_save_nodes_that_would_replace_one_file_are_refused_unless_they_number_their_files(capsys) -> None:
    same = ["validate", "graphs/gatys.json", "--set", "19.filename_prefix=gatys"]
    assert main(same) == 2 and "would replace output/gatys.png, which node 17 writes" in capsys.readouterr().err
    assert main([*same, "--set", "17.overwrite=false", "--set", "19.overwrite=false"]) == 0
