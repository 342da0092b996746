"""graphs/video.json through `nst video` and the nodes: tiny frames, few steps."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from PIL import Image

from graphrun import Folders, RunInterrupted, run
from nst_nodes.app import main
from nst_nodes.video import io

ROOT = Path(__file__).resolve().parent.parent
CLIP = ROOT / "nst_nodes" / "samples" / "carphone.mp4"
TINY = ["--frames", "0:3", "--size", "48", "--steps", "2", "--no-cache"]


def test_nst_video_writes_every_frame_at_the_clips_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["video", "graphs/video.json", str(CLIP), "-o", str(tmp_path / "out.mp4"), *TINY]) == 0
    result = io.read_clip(str(tmp_path / "out.mp4"))
    assert result.frames.shape == (3, 40, 48, 3) and result.fps == Fraction(30000, 1001)
    err = capsys.readouterr().err
    assert "warping error" in err and "3 frames in" in err and "frames per hour" in err


@pytest.mark.parametrize("mode", ["off", "chain", "warped"])
def test_every_temporal_mode_runs(tmp_path: Path, mode: str) -> None:
    assert (
        main(["video", "graphs/video.json", str(CLIP), "-o", str(tmp_path / "frames"), *TINY, "--temporal", mode]) == 0
    )
    assert sorted(path.name for path in (tmp_path / "frames").iterdir()) == [
        "frame_00000.png",
        "frame_00001.png",
        "frame_00002.png",
    ]


def test_frames_from_a_folder_make_a_gif(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    io.write_frames(frames, io.read_clip(str(CLIP), 0, 3).frames)
    assert main(["video", "graphs/video.json", str(frames / "*.png"), "-o", str(tmp_path / "out.gif"), *TINY]) == 0
    assert io.read_clip(str(tmp_path / "out.gif")).frames.shape[0] == 3


def bad_clips(tmp_path: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "notes.mp4").write_text("not a video")
    whole = CLIP.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 3])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (32, 24)).save(mixed / "a_1.png")
    Image.new("RGB", (30, 24)).save(mixed / "a_2.png")
    return {
        "not a video": (str(tmp_path / "notes.mp4"), "not a video FFmpeg can read"),
        "truncated": (str(tmp_path / "cut.mp4"), "cut.mp4"),
        "zero frames": (str(CLIP), "no frames in 500:"),
        "mixed sizes": (str(mixed), "a_2.png: 30x24, but the first frame is 32x24"),
        "missing": (str(tmp_path / "gone.mp4"), "no such file, folder or glob"),
    }


@pytest.mark.parametrize("case", ["not a video", "truncated", "zero frames", "mixed sizes", "missing"])
def test_a_bad_clip_is_refused_before_anything_runs(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, message = bad_clips(tmp_path)[case]
    frames = ["--frames", "500:"] if case == "zero frames" else []
    assert main(["video", "graphs/video.json", source, "-o", str(tmp_path / "out.mp4"), *TINY[2:], *frames]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "NSTOptimize" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_a_clip_too_large_is_refused_with_a_size_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(io, "MAX_CLIP_BYTES", 1 << 20)
    assert main(["video", "graphs/video.json", str(CLIP), "-o", str(tmp_path / "out.mp4")]) == 2
    assert "24 frames of 176x144" in capsys.readouterr().err


def test_a_format_whose_encoder_ffmpeg_lacks_is_refused_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nst_nodes.nodes import NODE_CLASS_MAPPINGS

    monkeypatch.setitem(io.ENCODERS, ".webm", "no-such-encoder")  # as a PyAV built without libvpx would lack it
    assert main(["video", "graphs/video.json", str(CLIP), "-o", str(tmp_path / "out.webm"), *TINY]) == 2
    assert "this FFmpeg has no 'no-such-encoder' encoder; write mp4" in capsys.readouterr().err
    assert not (tmp_path / "out.webm").exists()
    problem = NODE_CLASS_MAPPINGS["NSTSaveVideo"].VALIDATE_INPUTS(filename_prefix="v", format="webm", context=None)
    assert problem.startswith("format: webm: this FFmpeg has no 'no-such-encoder' encoder")


def test_an_output_outside_the_folder_is_refused_when_confined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inside").mkdir()
    graph, clip = ROOT / "graphs" / "video.json", tmp_path / "inside" / "clip.mp4"
    clip.write_bytes(CLIP.read_bytes())
    arguments = ["video", str(graph), str(clip), *TINY, "--confine", "-o"]
    assert main([*arguments, str(tmp_path.parent / "escaped.mp4")]) == 2
    assert "filename_prefix" in capsys.readouterr().err and not (tmp_path.parent / "escaped.mp4").exists()
    assert main([*arguments, "out.avi"]) == 2
    assert "write .mp4, .mkv" in capsys.readouterr().err
    assert main([*arguments, "inside/out.mp4"]) == 0 and (tmp_path / "inside" / "out.mp4").exists()


def test_a_stop_mid_clip_keeps_the_frames_done_in_a_playable_video(tmp_path: Path) -> None:
    stop = threading.Event()

    class StopInFrameTwo:
        def node_done(self, *args: object) -> None: ...

        def warning(self, message: str) -> None: ...

        def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict, preview: object) -> None:
            if info.get("frame") == "2/3":
                stop.set()

    overrides = {"1.video": str(CLIP), "1.stop": 3, "1.long_side": 48, "16.steps": 2, "18.filename_prefix": "part"}
    with pytest.raises(RunInterrupted) as stopped:
        run(
            "graphs/video.json",
            device="cpu",
            overrides=overrides,
            folders=Folders(output=tmp_path),
            stop=stop,
            reporter=StopInFrameTwo(),
        )
    assert "16" in stopped.value.partial
    partial = io.read_clip(str(tmp_path / "part.mp4"))
    assert partial.frames.shape[0] == 2  # frame 1 whole, frame 2 as far as it went
    assert torch.isfinite(partial.frames).all()


def test_nst_video_in_segments_on_two_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--frames", "0:16", "--size", "48", "--steps", "2", "--cache-dir", str(tmp_path / "cache")]
    command = ["video", "graphs/video.json", str(CLIP), "-o", str(tmp_path / "out.mp4"), *arguments, "--workers", "2"]
    command += ["--overlap", "4"]
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "2 segments: 0:8, 4:16" in err and "2 items: 2 done" in err
    result = io.read_clip(str(tmp_path / "out.mp4"))
    assert result.frames.shape == (16, 40, 48, 3) and result.fps == Fraction(30000, 1001)
    assert not (tmp_path / ".nst-video-segments").exists()  # the work folder is cleaned up, and its parent
    assert main(command) == 0  # again: the segments from the cache, their frames written again without a warning
    err = capsys.readouterr().err
    assert "2 items: 2 done" in err and "warning" not in err and "0.0 s of work" in err
    assert torch.equal(io.read_clip(str(tmp_path / "out.mp4")).frames, result.frames)


def test_the_video_workflow_converts_and_validates_with_comfyuis_core_video_nodes() -> None:
    import json

    import comfy_core_video

    from graphrun import load_graph, validate

    registry = comfy_core_video.registry()
    workflow = json.loads((ROOT / "example_workflows" / "video.json").read_text())
    graph = load_graph(workflow, registry=registry)
    assert validate(graph, registry) == []
    classes = {entry["class_type"] for entry in graph.prompt.values()}
    assert {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo"} <= classes  # no third-party pack
    assert {"NSTOpticalFlow", "NSTTemporalLoss", "NSTOptimize", "NSTVideoMetrics"} <= classes
    optimize = next(entry for entry in graph.prompt.values() if entry["class_type"] == "NSTOptimize")
    temporal = graph.prompt[optimize["inputs"]["temporal"][0]]
    assert temporal["class_type"] == "NSTTemporalLoss" and temporal["inputs"]["mode"] == "flow"
    resize = next(entry for entry in graph.prompt.values() if entry["class_type"] == "NSTResizeImage")
    assert resize["inputs"]["multiple_of"] % 2 == 0  # core Save Video's H.264 (4:2:0) fails on an odd side


def test_the_fast_video_workflow_uses_comfyuis_core_video_nodes_around_apply_stylizer(tmp_path: Path) -> None:
    import json

    import comfy_core_video
    from conftest import save_untrained_stylizer

    from graphrun import Folders, load_graph, validate

    registry = comfy_core_video.registry()
    graph = load_graph(json.loads((ROOT / "example_workflows" / "fast_video.json").read_text()), registry=registry)
    classes = {entry["class_type"] for entry in graph.prompt.values()}
    assert classes == {
        "LoadVideo",
        "GetVideoComponents",
        "CreateVideo",
        "SaveVideo",
        "NSTLoadStylizer",
        "NSTApplyStylizer",
    }
    assert "Save Stylizer writes stylizers into the models folder (graphs/fast.json trains" in str(
        validate(graph, registry, folders=Folders(models=tmp_path))
    )
    save_untrained_stylizer(tmp_path)
    assert validate(graph, registry, folders=Folders(models=tmp_path)) == []


@pytest.mark.parametrize("option", ["--overlap", "--workers", "--size", "--steps"])
def test_counts_of_the_video_command_must_be_at_least_one(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["video", "graphs/video.json", str(CLIP), "-o", str(tmp_path / "out.mp4"), option, "0"])
    assert refused.value.code == 2
    assert f"{option}: '0' is not a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--steps", "100001"], "--steps: 100001 is outside 1..100000"),
        (["--size", "16385"], "--size: 16385 is outside 0..16384"),
        (["--frames", "0:10000001"], "--frames: 10000001 is outside 0..10000000"),
    ],
)
def test_the_video_commands_flags_are_checked_against_the_nodes_they_set(
    tmp_path: Path, options: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The error names the flag the user typed, not the node input it became."""
    assert main(["video", "graphs/video.json", str(CLIP), "-o", str(tmp_path / "out.mp4"), *options]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_nst_video_refuses_to_write_over_its_own_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(CLIP.read_bytes())
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (32, 24)).save(frames / "frame_00000.png")
    Image.new("RGB", (32, 24)).save(frames / "frame_00001.png")
    upper = tmp_path / "clip.MP4"  # Save Video writes clip.mp4: the clip itself
    for source, output in ((clip, clip), (clip, upper), (frames, frames), (frames / "*.png", frames)):
        assert main(["video", "graphs/video.json", str(source), "-o", str(output), "--size", "32", "--steps", "1"]) == 2
        assert "the clip is read from there; write the result somewhere else" in capsys.readouterr().err
    assert clip.read_bytes() == CLIP.read_bytes() and len(list(frames.iterdir())) == 2


def test_nst_video_refuses_a_graph_it_cannot_run_as_nst_run_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An editor workflow is read as one (its core video nodes named), a broken file is refused by name."""
    broken, stray = tmp_path / "broken.json", tmp_path / "stray.json"
    broken.write_text('{"1": ')
    stray.write_text('{"comment": "hi"}')
    expected = {
        "example_workflows/fast_video.json": "ComfyUI's own Load Video and Save Video, which run in the editor only",
        str(broken): f"{broken} is not valid JSON",
        str(stray): "node comment must be an object",
        str(tmp_path / "missing.json"): "cannot read graph file",
    }
    for graph, message in expected.items():
        assert main(["video", graph, str(CLIP), "-o", str(tmp_path / "out.mp4"), *TINY]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_nst_video_refuses_a_set_that_its_own_options_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--set 1.start would silently win over --frames (and the summary count the frames asked for)."""
    output = str(tmp_path / "out.mp4")
    for setting, option in (("1.start=1", "--frames"), ("18.format=gif", "-o"), ("16.steps=9", "--steps")):
        assert main(["video", "graphs/video.json", str(CLIP), "-o", output, *TINY, "--set", setting]) == 2
        assert (
            f"--set {setting.split('=')[0]}: nst video sets it from {option}; use that instead"
            in capsys.readouterr().err
        )
    assert not Path(output).exists()
    assert main(["video", "graphs/video.json", str(CLIP), "-o", "", *TINY]) == 2
    assert "-o must end in a name: a video file (out.mp4) or a new folder for the frames" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse's exit
        main(["video", "graphs/video.json", str(CLIP), "-o", f"{tmp_path}/out.mp4/", *TINY])
    assert refused.value.code == 2 and "ends in a slash (a folder of frames) but is named like a video: write" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out.mp4").exists()


def test_nst_video_refuses_steps_for_a_graph_that_does_not_optimize(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = str(tmp_path / "out.mp4")
    assert main(["video", "graphs/fast_video.json", str(CLIP), "-o", output, "--steps", "3"]) == 2
    assert capsys.readouterr().err.endswith("--steps sets Optimize Image's steps, and it has none\n")
    assert main(["video", "graphs/fast_clip.json", str(CLIP), "-o", output, "--steps", "3"]) == 2
    assert "and it has none; set Train Stylizer's with --set 16.steps=N" in capsys.readouterr().err


def test_the_fast_clip_workflow_trains_on_the_clip_with_temporal_loss_between_comfyuis_core_video_nodes() -> None:
    import json

    import comfy_core_video

    from graphrun import load_graph, validate

    registry = comfy_core_video.registry()
    graph = load_graph(json.loads((ROOT / "example_workflows" / "fast_clip.json").read_text()), registry=registry)
    assert validate(graph, registry) == []
    prompt = graph.prompt
    classes = {entry["class_type"] for entry in prompt.values()}
    assert {"LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo", "NSTApplyStylizer"} <= classes
    train = next(entry for entry in prompt.values() if entry["class_type"] == "NSTTrainStylizer")
    temporal = prompt[train["inputs"]["temporal"][0]]
    flow = prompt[temporal["inputs"]["flow"][0]]
    assert temporal["class_type"] == "NSTTemporalLoss" and temporal["inputs"]["mode"] == "flow"
    assert flow["inputs"]["frames"] == train["inputs"]["images"]  # the flow of the frames trained on
    frames = prompt[train["inputs"]["images"][0]]
    assert frames["inputs"]["multiple_of"] % 2 == 0 and frames["inputs"]["size"] >= train["inputs"]["size"]


def test_nst_video_runs_a_graph_that_trains_on_the_clip_in_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Segments would each train a stylizer of their own on part of the clip: refused before anything runs."""
    out = tmp_path / "out.mp4"
    assert main(["video", "graphs/fast_clip.json", str(CLIP), "-o", str(out), "--workers", "2"]) == 2
    assert "without --workers" in capsys.readouterr().err and not out.exists()
