"""Video pure functions (nst_nodes/video/): flow, warps, reliability, cuts, clips in and out, measures."""

from __future__ import annotations

from copy import deepcopy
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nst_nodes.optimize import Keeper
from nst_nodes.video import io
from nst_nodes.video.flow import is_cut, optical_flow, reliable, warp
from nst_nodes.video.metrics import flicker, warping_error

SAMPLES = Path(__file__).resolve().parent.parent / "nst_nodes" / "samples"


def photo(size: tuple[int, int] = (96, 72)) -> torch.Tensor:
    picture = Image.open(SAMPLES / "tubingen.jpg").convert("RGB").resize(size)
    return torch.from_numpy(np.asarray(picture).copy()).float() / 255


def chw(frame: torch.Tensor) -> torch.Tensor:
    return frame.permute(2, 0, 1).unsqueeze(0)


def test_flow_finds_a_shift_and_the_warp_undoes_it() -> None:
    wide = photo((112, 72))
    a, b = wide[:, 8:104], wide[:, 5:101]  # b is a moved 3 px right: a(p) = b(p + (3, 0))
    flow = optical_flow(a, b)
    inner = flow[8:-8, 8:-8]
    assert torch.allclose(inner.median(dim=0).values.median(dim=0).values, torch.tensor([3.0, 0.0]), atol=0.3)
    rebuilt = warp(chw(b), flow)[0].permute(1, 2, 0)
    assert (rebuilt[8:-8, 8:-8] - a[8:-8, 8:-8]).abs().mean() < 0.02
    assert (b[8:-8, 8:-8] - a[8:-8, 8:-8]).abs().mean() > 0.04  # the warp did something


def test_a_warp_by_zero_flow_is_the_identity() -> None:
    frame = chw(photo())
    assert torch.allclose(warp(frame, torch.zeros(72, 96, 2)), frame, atol=1e-5)


def test_what_was_hidden_is_unreliable() -> None:
    background = photo()
    square = torch.ones(16, 16, 3) * torch.tensor([1.0, 0.0, 0.0])
    previous, current = background.clone(), background.clone()
    previous[28:44, 20:36] = square
    current[28:44, 40:56] = square  # the square moved 20 px right: the place it left is disoccluded
    mask = reliable(optical_flow(current, previous), optical_flow(previous, current))
    assert mask[30:42, 22:34].mean() < 0.5  # uncovered in the current frame
    assert mask[:20].mean() > 0.9 and mask[56:].mean() > 0.9  # the still background
    assert not is_cut(mask)


def test_unrelated_frames_are_a_cut() -> None:
    frame = photo()
    other = torch.from_numpy(np.random.default_rng(0).random((72, 96, 3), dtype=np.float32))
    assert is_cut(reliable(optical_flow(other, frame), optical_flow(frame, other)))


def test_a_clip_round_trips_with_its_rate_and_audio(tmp_path: Path) -> None:
    import av

    source = tmp_path / "with_audio.mp4"
    with av.open(str(source), "w") as output:  # two seconds of a tone beside 12 frames at 30000/1001 fps
        video = output.add_stream("libx264", rate=Fraction(30000, 1001))
        video.width, video.height, video.pix_fmt = 96, 72, "yuv420p"
        audio = output.add_stream("aac", rate=44100)
        for frame in (photo() * 255).to(torch.uint8).numpy()[None].repeat(12, 0):
            output.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(video.encode(None))
        tone = np.sin(np.arange(88200) * 2 * np.pi * 440 / 44100).astype(np.float32)[None] * 0.1
        for start in range(0, 88200, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[:, start : start + 1024], format="fltp", layout="mono")
            chunk.sample_rate = 44100
            output.mux(audio.encode(chunk))
        output.mux(audio.encode(None))
    clip = io.read_clip(str(source))
    assert clip.frames.shape == (12, 72, 96, 3) and clip.fps == Fraction(30000, 1001)
    assert clip.audio is not None and clip.audio["sample_rate"] == 44100
    assert abs(clip.audio["waveform"].shape[-1] - 12 * 1001 / 30000 * 44100) < 1024  # the sound of the 12 frames
    io.write_clip(tmp_path / "out.mp4", io.Clip(clip.frames.flip(-1), clip.fps, clip.audio))
    back = io.read_clip(str(tmp_path / "out.mp4"))
    assert back.frames.shape == clip.frames.shape and back.fps == clip.fps
    assert (back.frames - clip.frames.flip(-1)).abs().mean() < 0.03
    assert back.audio is not None and back.audio["waveform"].abs().max() > 0.05  # the tone, not silence
    io.write_clip(tmp_path / "out.webm", io.Clip(clip.frames, clip.fps, clip.audio))
    with av.open(str(tmp_path / "out.webm")) as written:
        assert written.streams.audio[0].codec_context.name == "opus"
    assert not list(tmp_path.glob(".*writing*"))
    later = io.read_clip(str(source), 6, 12)
    assert later.audio is not None and later.audio["waveform"].shape[-1] < clip.audio["waveform"].shape[-1]


@pytest.mark.parametrize("suffix", [".webm", ".gif", ""])
def test_other_outputs(tmp_path: Path, suffix: str) -> None:
    clip = io.read_clip(str(SAMPLES / "carphone.mp4"), 0, 4)
    target = tmp_path / f"out{suffix}"
    io.write_output(target, clip)
    back = io.read_clip(str(target))
    assert back.frames.shape == clip.frames.shape


def test_frames_from_a_folder_in_natural_order(tmp_path: Path) -> None:
    frame = (photo() * 255).to(torch.uint8).numpy()
    for index in (0, 2, 10):
        Image.fromarray(np.roll(frame, index, axis=1)).save(tmp_path / f"frame_{index}.png")
    clip = io.read_clip(str(tmp_path / "frame_*.png"))
    assert clip.frames.shape == (3, 72, 96, 3) and clip.fps == io.DEFAULT_FPS
    assert torch.equal(clip.frames[2], torch.from_numpy(np.roll(frame, 10, axis=1)).float() / 255)
    assert io.read_clip(str(tmp_path), 1, 2, long_side=48).frames.shape == (1, 36, 48, 3)


def test_bad_clips_are_refused_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(io.ClipError, match="not a video FFmpeg can read"):
        io.read_clip(str(tmp_path / "notes.mp4"))
    whole = (SAMPLES / "carphone.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(io.ClipError, match="cut.mp4"):
        io.read_clip(str(tmp_path / "cut.mp4"))
    with pytest.raises(io.ClipError, match="no frames in 500:"):
        io.read_clip(str(SAMPLES / "carphone.mp4"), 500)
    with pytest.raises(io.ClipError, match="no such file, folder or glob"):
        io.read_clip(str(tmp_path / "missing.mp4"))
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (32, 24)).save(frames / "a_1.png")
    Image.new("RGB", (30, 24)).save(frames / "a_2.png")
    with pytest.raises(io.ClipError, match="a_2.png: 30x24, but the first frame is 32x24"):
        io.read_clip(str(frames))
    monkeypatch.setattr(io, "MAX_CLIP_BYTES", 1 << 20)
    with pytest.raises(io.ClipError, match=r"24 frames of 176x144 take .* take at most 3 frames at this size"):
        io.read_clip(str(SAMPLES / "carphone.mp4"))
    with pytest.raises(io.ClipError, match="write .mp4, .mkv"):
        io.write_clip(tmp_path / "out.txt", io.Clip(torch.zeros(1, 8, 8, 3), Fraction(25)))
    folder = tmp_path / "again"
    io.write_frames(folder, torch.zeros(5, 8, 8, 3))
    assert len(io.write_frames(folder, torch.zeros(2, 8, 8, 3))) == 2 and len(list(folder.iterdir())) == 2


def test_a_steady_result_has_no_warping_error_and_no_flicker() -> None:
    wide = photo((112, 72))
    frames = torch.stack([wide[:, 8 - shift : 104 - shift] for shift in range(4)])  # a pan
    assert max(warping_error(frames, frames)) < 2e-3  # the frames themselves follow their own flow
    stuck = frames[:1].repeat(4, 1, 1, 1)  # strokes that stay on the screen while the content moves
    assert min(warping_error(stuck, frames)) > 5 * max(warping_error(frames, frames))
    still = frames[:1].repeat(4, 1, 1, 1)
    noisy = still + 0.05 * torch.randn(4, 72, 96, 3, generator=torch.Generator().manual_seed(0))
    assert flicker(still, still) == [0.0, 0.0, 0.0] and min(flicker(noisy, still)) > 0.03


# --- frames optimized in order (nst_nodes/video/frames.py) -------------------------------------

from nst_nodes.losses import style_statistics, style_term  # noqa: E402
from nst_nodes.optimize import OptimizerSettings  # noqa: E402
from nst_nodes.vgg import load_vgg19  # noqa: E402
from nst_nodes.video.frames import frame_objective, frame_start, optimize_frames  # noqa: E402


@pytest.fixture(scope="module")
def clip_problem():
    """Three 48x40 frames of a pan, their flow, and a Gram objective with per-frame content targets."""
    model = load_vgg19("caffe")
    wide = photo((64, 40))
    frames = torch.stack([wide[:, 8 - shift : 56 - shift] for shift in (0, 2, 4)])
    with torch.inference_mode():
        init = torch.cat([model.preprocessing.normalize(frame[None]) for frame in frames])
        content = torch.cat([model.features(init[i : i + 1], ["relu3_1"])["relu3_1"] for i in range(3)])
        style = {k: style_statistics(v) for k, v in model.features(init[:1].flip(-1), ["relu1_1", "relu2_1"]).items()}
    objective = {
        "model": model.identity,
        "terms": [
            {"kind": "content", "weight": 1.0, "targets": {"relu3_1": content}, "layer_weights": {"relu3_1": 1.0}},
            style_term(style, 1e7, None, "gram", True, None),
        ],
    }
    backward = torch.stack([torch.zeros(40, 48, 2)] + [optical_flow(frames[i], frames[i - 1]) for i in (1, 2)])
    forward = torch.stack([torch.zeros(40, 48, 2)] + [optical_flow(frames[i - 1], frames[i]) for i in (1, 2)])
    masks = torch.stack([torch.zeros(40, 48)] + [reliable(backward[i], forward[i]) for i in (1, 2)])
    flow = {"method": "dis", "backward": backward, "forward": forward, "reliable": masks}
    return model, init, objective, flow


def test_each_frame_gets_its_own_content_target(clip_problem) -> None:
    _, _, objective, _ = clip_problem
    second = frame_objective(objective, 1, 3)
    assert torch.equal(second["terms"][0]["targets"]["relu3_1"], objective["terms"][0]["targets"]["relu3_1"][1:2])
    assert second["terms"][1] is objective["terms"][1]  # the style is shared


def test_a_frame_starts_from_the_warped_previous_result_except_after_a_cut(clip_problem) -> None:
    _, init, _, flow = clip_problem
    previous = init[:1] + 10
    start, term = frame_start(1, init, previous, {"start": "warped", "weight": 5.0, "flow": flow})
    reliable_part = flow["reliable"][1].bool()
    assert term is not None and term["weight"] == 5.0 and torch.equal(term["mask"], flow["reliable"][1])
    assert torch.allclose(start[0][:, reliable_part], term["target"][0][:, reliable_part])
    assert torch.equal(start[0][:, ~reliable_part], init[1][:, ~reliable_part])  # the content fills in
    cut = {**flow, "reliable": torch.zeros_like(flow["reliable"])}
    fresh, no_term = frame_start(1, init, previous, {"start": "warped", "weight": 5.0, "flow": cut})
    assert torch.equal(fresh, init[1:2]) and no_term is None
    chained, no_term = frame_start(1, init, previous, {"start": "previous", "weight": 0.0, "flow": flow})
    assert torch.equal(chained, previous) and no_term is None


def test_frames_are_optimized_in_order_and_a_stop_keeps_the_frames_done(clip_problem) -> None:
    model, init, objective, flow = clip_problem
    temporal = {"start": "warped", "weight": 1e3, "flow": flow}
    seen: list[tuple[int, int]] = []
    results, history, stopped = optimize_frames(
        model,
        objective,
        init,
        temporal,
        OptimizerSettings(steps=3),
        lambda frame, step, total, loss, image: seen.append((frame, step)),
    )
    assert results.shape == init.shape and not stopped
    assert [frame for frame, _ in seen] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(history["frames"]) == 3 and sum(history["frames"]) == len(history["loss"]) == len(history["temporal"])
    assert history["temporal"][: history["frames"][0]] == [0.0] * history["frames"][0]  # frame 0 has no previous
    assert max(history["temporal"]) > 0
    calls = iter(range(100))
    results, history, stopped = optimize_frames(
        model, objective, init, temporal, OptimizerSettings(steps=3), should_stop=lambda: next(calls) >= 4
    )
    assert stopped and results.shape[0] == 2 and len(history["frames"]) == 2


# --- segments (nst_nodes/video/segments.py) ----------------------------------------------------

from nst_nodes.video.segments import join, plan  # noqa: E402


def test_segments_cover_the_clip_and_overlap_by_the_warm_up() -> None:
    assert plan(0, 48, 2, 4) == [(0, 24), (20, 48)]
    assert plan(10, 40, 3, 4) == [(10, 20), (16, 30), (26, 40)]
    assert plan(0, 12, 4, 4) == [(0, 12)]  # too short to share: one segment
    assert plan(0, 5, 2, 4) == [(0, 5)]


def test_joined_segments_fade_from_one_into_the_next_over_the_overlap() -> None:
    spans = [(0, 6), (3, 9)]
    first, second = torch.zeros(6, 2, 2, 3), torch.ones(6, 2, 2, 3)
    joined = join([first, second], spans)
    assert joined.shape[0] == 9
    assert [round(float(frame.mean()), 2) for frame in joined] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]


def test_after_a_stop_the_frames_finished_from_the_start_make_one_clip() -> None:
    from nst_nodes.video.segments import finished_prefix

    spans = [(0, 24), (20, 48)]
    whole, second = torch.zeros(24, 2, 2, 3), torch.ones(28, 2, 2, 3)
    assert finished_prefix([whole, second[:10]], spans)[1] == [(0, 24), (20, 30)]  # 30 frames from the start
    assert join(*finished_prefix([whole, second[:10]], spans)).shape[0] == 30
    assert finished_prefix([whole, second[:4]], spans)[1] == [(0, 24)]  # only the overlap: nothing new
    assert finished_prefix([whole[:7], second], spans)[1] == [(0, 7)]  # a gap after frame 7: the rest waits
    assert finished_prefix([torch.zeros(0), second], spans) == ([], [])


def test_video_metrics_of_one_frame_say_so_instead_of_failing_after_the_work() -> None:
    from nst_nodes.nodes import NODE_CLASS_MAPPINGS

    node = NODE_CLASS_MAPPINGS["NSTVideoMetrics"]()
    one, three = torch.rand(1, 8, 8, 3), torch.rand(3, 8, 8, 3)  # a one-frame clip; a run stopped after one frame
    assert node.measure(one, one)["result"] == ("one frame: no change from frame to frame to measure",)
    assert node.measure(one, three)["result"] == node.measure(one, one)["result"]
    with pytest.raises(ValueError, match="must be of one size"):
        node.measure(three, torch.rand(3, 8, 9, 3))


@pytest.mark.parametrize("stop_after", [4, 2])  # after frame 1's second step; between frames 0 and 1
def test_a_stopped_clip_goes_on_from_its_frames_done_to_the_same_result(clip_problem, stop_after) -> None:
    model, init, objective, flow = clip_problem
    temporal = {"start": "warped", "weight": 1e3, "flow": flow}
    settings = OptimizerSettings(steps=3)
    whole, whole_history, _ = optimize_frames(model, objective, init, temporal, settings)
    kept: list[Any] = []
    calls = iter(range(100))
    keep = Keeper(lambda state, _: kept.append(state))
    optimize_frames(model, objective, init, temporal, settings, None, lambda: next(calls) >= stop_after, keep=keep)
    assert len(kept) == 1 and kept[0]["frames"].shape[0] == 1
    assert (kept[0]["current"] is None) == (stop_after == 2)
    seen: list[tuple[int, int]] = []
    rest, rest_history, stopped = optimize_frames(
        model, objective, init, temporal, settings, lambda frame, step, *_: seen.append((frame, step)), resume=kept[0]
    )
    assert not stopped and torch.equal(rest, whole)
    assert rest_history["loss"] == whole_history["loss"] and rest_history["frames"] == whole_history["frames"]
    assert rest_history["steps"] == whole_history["steps"] == 9
    assert seen[0] == ((1, 3) if stop_after == 4 else (1, 1))


def test_a_clip_keeps_its_state_now_and_then_so_a_killed_run_goes_on_from_it(
    clip_problem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nst_nodes import optimize as module

    model, init, objective, flow = clip_problem
    temporal = {"start": "warped", "weight": 1e3, "flow": flow}
    settings = OptimizerSettings(steps=3)
    whole, whole_history, _ = optimize_frames(model, objective, init, temporal, settings)
    monkeypatch.setattr(module, "KEEP_SECONDS", 0.0)
    monkeypatch.setattr(module, "KEEP_SHARE", float("inf"))
    kept: list[Any] = []  # written out at once, as the engine does with what is kept while running
    keep = Keeper(lambda state, running: kept.append(deepcopy(state)) if running else None)
    _, _, stopped = optimize_frames(model, objective, init, temporal, settings, keep=keep)
    where = [(state["frames"].shape[0], state["current"] and state["current"]["step"]) for state in kept]
    assert not stopped and where == [(0, 1), (0, 2), (1, None), (1, 1), (1, 2), (2, None), (2, 1), (2, 2)]
    for state in (kept[3], kept[5]):  # within frame 1; between frames 1 and 2
        rest, rest_history, _ = optimize_frames(model, objective, init, temporal, settings, resume=state)
        assert torch.equal(rest, whole) and rest_history["loss"] == whole_history["loss"]


def test_a_stop_before_a_frames_first_step_still_keeps_the_frames_done(clip_problem) -> None:
    """It comes after the poll between frames, while the next frame is set up (its state is not kept: the stop may
    have cut the plans' timing short), but the frames done are."""
    model, init, objective, _ = clip_problem
    polls_since_frame_0: list[bool] = []
    frame_0_done = [False]

    def report(frame: int, step: int, *_: Any) -> None:
        frame_0_done[0] = frame_0_done[0] or (frame, step) == (0, 12)

    def should_stop() -> bool:  # False at the poll between frames, True from the next one on (frame 1's setup)
        if frame_0_done[0]:
            polls_since_frame_0.append(True)
        return len(polls_since_frame_0) > 1

    kept: list[Any] = []
    keep = Keeper(lambda state, _: kept.append(state))
    results, _, stopped = optimize_frames(
        model, objective, init, None, OptimizerSettings(steps=12), report, should_stop, keep=keep
    )
    assert stopped and results.shape[0] == 2
    assert len(kept) == 1 and kept[0]["frames"].shape[0] == 1 and kept[0]["current"] is None
