"""Fast style transfer: the stylizer network, its training, its files, its nodes and graphs/fast.json."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from graphrun import Cache, Folders, GraphValidationError, NodeExecutionError, run
from graphrun.host import RunnerHost
from nst_nodes import kernels
from nst_nodes.fast import network as stylizer_network
from nst_nodes.fast.network import TAIL_LAYOUTS, StylizerNetwork, apply_precision, autocast_in, build, stylize
from nst_nodes.fast.store import read_stylizer, stylizer_bytes
from nst_nodes.fast.train import (
    TrainSettings,
    frame_pairs,
    held_aside,
    motion_of,
    network_plan,
    random_pairs,
    split_objective,
    train_stylizer,
)
from nst_nodes.losses import style_statistics, style_term
from nst_nodes.nodes import NODE_CLASS_MAPPINGS
from nst_nodes.optimize import device_label, native_bf16
from nst_nodes.types import Flow, Objective, Stylizer, Temporal, TrainingProgress
from nst_nodes.vgg import VGGModel, load_vgg19
from nst_nodes.video.flow import warp

TINY_FAST = {"1.size": 64, "3.size": 4096, "14.size": 48, "14.steps": 2, "14.batch": 2, "17.size": 40}
"""graphs/fast.json shrunk: 64 px training photos, 2 steps of 2 crops of 48 px, a 40x30 photo stylized."""


@pytest.fixture(scope="module")
def model() -> VGGModel:
    return load_vgg19("caffe")


def objective_of(model: VGGModel, style: torch.Tensor, weight: float = 1e5) -> Objective:
    with torch.no_grad():
        features = model.features(model.preprocessing.normalize(style), ["relu1_1", "relu2_1"])
    statistics = {layer: style_statistics(value) for layer, value in features.items()}
    content: Objective = {
        "model": model.identity,
        "terms": [
            {"kind": "content", "weight": 1.0, "targets": {"relu2_1": torch.zeros(1)}, "layer_weights": {"relu2_1": 1}},
            style_term(statistics, weight),
            {"kind": "tv", "weight": 1e-3},
        ],
    }
    return content


def pictures(count: int = 3, size: int = 40) -> torch.Tensor:
    return torch.rand((count, size, size + 8, 3), generator=torch.Generator().manual_seed(count))


def trained(model: VGGModel, steps: int = 2, seed: int = 0, **kwargs) -> Stylizer:
    settings = TrainSettings(size=32, steps=steps, batch=2, seed=seed, width=4)
    return train_stylizer(model, objective_of(model, pictures(1, 48)), pictures(), settings, **kwargs)


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (37, 50), (5, 9)])
def test_the_stylizer_takes_any_size_and_batch_and_returns_the_same(count: int, size: tuple[int, int]) -> None:
    images = torch.rand(count, *size, 3)
    with torch.no_grad():
        result = stylize(StylizerNetwork(width=4).eval(), images)
    assert result.shape == images.shape


def test_a_stylizer_in_bf16_stays_within_a_level_of_8_bit_colour_of_fp32() -> None:
    generator = torch.Generator().manual_seed(0)
    network = StylizerNetwork(width=8).eval().requires_grad_(False)
    for parameter in network.parameters():  # a network that changes the picture (the last layer starts at zero)
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    images = torch.rand(2, 30, 42, 3, generator=generator)
    with torch.no_grad():
        exact, reduced = stylize(network, images), stylize(network, images, "bf16")
    assert reduced.dtype == torch.float32 and reduced.shape == images.shape
    change, error = (exact - images).abs().mean(), (reduced - exact).abs().mean()
    assert change > 0.02 and error < min(1 / 255, 0.05 * change)  # a few percent of the change it makes


def test_apply_precision_auto_is_timed_once_where_bf16_is_native_and_fp32_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network, frame = StylizerNetwork(width=4).eval(), torch.rand(1, 13, 17, 3)
    timed: list[tuple[str, tuple[int, ...]]] = []
    plain = stylizer_network.stylize
    monkeypatch.setattr(
        stylizer_network, "stylize", lambda n, x, p="fp32": timed.append((p, tuple(x.shape))) or plain(n, x, p)
    )
    monkeypatch.setattr(stylizer_network, "native_bf16", lambda device: False)
    assert apply_precision("auto", network, frame) == "fp32" and timed == []
    assert apply_precision("bf16", network, frame) == "bf16" and timed == []  # forced: used as it is
    monkeypatch.setattr(stylizer_network, "native_bf16", lambda device: True)
    chosen = apply_precision("auto", network, frame)
    assert chosen in ("fp32", "bf16") and sorted(timed) == [("bf16", frame.shape)] * 3 + [("fp32", frame.shape)] * 3
    assert apply_precision("auto", network, frame) == chosen and len(timed) == 6  # remembered
    assert apply_precision("auto", network, torch.rand(1, 60, 40, 3)) == chosen and len(timed) == 6  # within 64 px
    apply_precision("auto", network, torch.rand(1, 700, 600, 3))  # timed on its centre crop of PLAN_PIXELS
    assert {shape for _, shape in timed[6:]} == {(1, 512, 512, 3)} and len(timed) == 12
    apply_precision("auto", network, torch.rand(1, 800, 900, 3))  # a larger size shares that choice
    assert len(timed) == 12
    with pytest.raises(ValueError, match="precision: 'fp16' is not one of auto, fp32, bf16"):
        apply_precision("fp16", network, frame)


def test_training_is_deterministic_with_a_seed_and_each_seed_trains_its_own(model: VGGModel) -> None:
    first, again, other = trained(model), trained(model), trained(model, seed=1)
    assert first["weights"].keys() == again["weights"].keys()
    assert all(torch.equal(first["weights"][name], again["weights"][name]) for name in first["weights"])
    assert not all(torch.equal(first["weights"][name], other["weights"][name]) for name in first["weights"])
    assert first["training"]["steps"] == 2 and first["training"]["model"] == model.identity


def test_the_networks_training_plan_is_timed_once_and_every_candidate_trains_alike() -> None:
    """Channels-last or not, the last convolution computes the same values and gradients, and bf16 nearly the same;
    which trains faster is timed once per machine and size, then remembered with the kernel choices."""
    network = StylizerNetwork(width=4)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(parameter.numel()))
    crops = torch.rand(2, 3, 32, 36, generator=torch.Generator().manual_seed(0))
    results = {}
    for precision in ("fp32", "bf16"):
        for layout in TAIL_LAYOUTS:
            network.tail_layout = layout
            network.zero_grad(set_to_none=True)
            with autocast_in(precision, crops.device):
                out = network(crops)
            out.float().square().mean().backward()
            results[precision, layout] = [out.detach().float(), *(p.grad.clone() for p in network.parameters())]
    exact = results["fp32", "contiguous"]
    assert all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(exact, results["fp32", "channels_last"], strict=True)
    )
    change = (exact[0] - crops).abs().mean()
    for layout in TAIL_LAYOUTS:
        reduced = results["bf16", layout]
        assert (exact[0] - reduced[0]).abs().mean() < 0.05 * change  # bf16's picture: within 5% of the network's change
        gradients = [torch.cat([gradient.flatten() for gradient in run[1:]]) for run in (exact, reduced)]
        assert F.cosine_similarity(*gradients, dim=0) > 0.99  # the step points the same way
    network.zero_grad(set_to_none=True)
    chosen = network_plan(network, crops)
    candidates = [f"{p} {layout}" for p in ("fp32", "bf16")[: 1 + native_bf16(crops.device)] for layout in TAIL_LAYOUTS]
    key = f"stylizer training:{'|'.join(candidates)}:4x5@2x3x32x36:{device_label(crops.device)}"
    assert chosen in candidates and kernels.chooser().choices[key].path == chosen
    assert set(kernels.chooser().choices[key].seconds) == set(candidates)
    assert all(parameter.grad is None for parameter in network.parameters())  # the timing leaves no gradient
    with pytest.MonkeyPatch.context() as patch:  # remembered: not timed again
        patch.setattr("nst_nodes.fast.train.best_in_turns", lambda *args: pytest.fail("timed again"))
        assert network_plan(network, crops) == chosen


def test_a_stylizer_trains_in_bf16_deterministically_and_records_it(
    model: VGGModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stylizer's own passes under bf16 autocast (chosen where native and faster) lower the objective, repeat
    with a seed, and are kept in the record; a file saved before the record had them reads as fp32."""
    from nst_nodes.fast import train

    monkeypatch.setattr(train, "network_plan", lambda *args, **kwargs: "bf16 channels_last")
    first = trained(model, steps=20)
    assert first["training"]["network_precision"] == "bf16"
    assert first["training"]["loss"] < trained(model, steps=1)["training"]["loss"]
    again = trained(model, steps=20)
    assert all(torch.equal(first["weights"][name], again["weights"][name]) for name in first["weights"])
    older = {**first, "training": {k: v for k, v in first["training"].items() if k != "network_precision"}}
    assert read_stylizer(io.BytesIO(stylizer_bytes(older)), Path("old"))["training"]["network_precision"] == "fp32"


def test_training_lowers_the_objective_on_the_held_aside_picture(model: VGGModel) -> None:
    losses: list[float] = []
    longer = trained(model, steps=20, report=lambda step, total, loss, preview: losses.append(loss))
    assert len(losses) == 20
    assert longer["training"]["loss"] < trained(model, steps=1)["training"]["loss"]  # one step: nearly the identity


def test_training_runs_the_loss_network_on_the_pass_plan_and_records_it(
    model: VGGModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 passes (chosen where the hardware runs them faster) train too; the plan is kept with the stylizer."""
    from nst_nodes.fast import train

    monkeypatch.setattr(train, "pass_plan", lambda *args: "bf16")
    reduced = trained(model, steps=20)
    assert reduced["training"]["precision"] == "bf16"
    assert reduced["training"]["loss"] < trained(model, steps=1)["training"]["loss"]
    monkeypatch.setattr(train, "pass_plan", lambda *args: "fp32")
    assert trained(model, steps=2)["training"]["precision"] == "fp32"


def test_a_stop_keeps_the_best_checkpoint_so_far_and_it_stylizes(model: VGGModel) -> None:
    steps: list[int] = []
    previews: list[torch.Tensor] = []

    def report(step: int, total: int, loss: float, preview: torch.Tensor) -> None:
        steps.append(step)
        previews.append(preview)

    stylizer = trained(model, steps=50, report=report, should_stop=lambda: len(steps) >= 3)
    assert steps == [1, 2, 3] and stylizer["training"]["steps"] == 3 and stylizer["training"]["steps_asked"] == 50
    assert 1 <= stylizer["training"]["best_step"] <= 3
    assert previews[-1].shape == pictures()[-1:].shape  # the held-aside picture, stylized
    assert stylize(build(stylizer), pictures(1)).shape == pictures(1).shape


@pytest.mark.parametrize("resume_from", [-1, 0])  # the stop's state; the checkpoint kept before it (a killed run)
def test_a_stopped_training_goes_on_to_the_stylizer_it_would_have_trained(model: VGGModel, resume_from: int) -> None:
    """The weights, Adam's moments, the crops' generator and the checkpoint as the steps so far left it (not the
    stop's own extra checkpoint) make the rest of the training the same as one that never stopped."""
    longer = trained(model, steps=40)  # a checkpoint every second step (CHECKPOINTS is 20)
    kept: list[TrainingProgress] = []
    calls = iter(range(100))

    def keep(state: TrainingProgress, running: bool) -> None:
        kept.append(state)

    part = trained(model, steps=40, should_stop=lambda: next(calls) >= 5, keep=keep)  # 0: after the timing
    assert part["training"]["steps"] == 5 and part["training"]["best_step"] == 5  # the stop's own checkpoint
    assert [state["step"] for state in kept] == [2, 4, 5] and kept[-1]["best_step"] in (2, 4)
    steps: list[int] = []
    rest = trained(model, steps=40, report=lambda step, *_: steps.append(step), resume=kept[resume_from])
    assert steps == list(range(kept[resume_from]["step"] + 1, 41))
    assert rest["training"]["best_step"] == longer["training"]["best_step"]
    assert rest["training"]["loss"] == longer["training"]["loss"] and rest["training"]["steps"] == 40
    assert all(torch.equal(rest["weights"][name], longer["weights"][name]) for name in longer["weights"])
    assert not all(torch.equal(part["weights"][name], longer["weights"][name]) for name in longer["weights"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda terms: terms + [{"kind": "temporal", "weight": 1.0}], "Train Stylizer's temporal input"),
        (lambda terms: [{**terms[1], "mask": torch.ones(4, 4)}] + terms[:1], "leave the mask out"),
        (lambda terms: [terms[0], terms[2]], "no style loss"),
        (lambda terms: terms[1:], "no content loss"),
    ],
)
def test_objectives_that_cannot_train_a_stylizer_are_refused_with_what_to_do(
    model: VGGModel, change, message: str
) -> None:
    objective = objective_of(model, pictures(1, 48))
    with pytest.raises(ValueError, match=message):
        split_objective({**objective, "terms": change(objective["terms"])})


def test_a_stylizer_file_round_trips_and_runs_no_code(model: VGGModel, tmp_path: Path) -> None:
    stylizer = trained(model)
    path = tmp_path / "s.safetensors"
    path.write_bytes(stylizer_bytes(stylizer))
    with path.open("rb") as file:
        loaded = read_stylizer(file, path)
    assert loaded["training"] == stylizer["training"] and loaded["width"] == 4
    assert all(torch.equal(loaded["weights"][name], value) for name, value in stylizer["weights"].items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"blocks": 100_000}, "cannot be what its"),
        ({"width": 100_000}, "cannot be what its"),
        ({"blocks": 4}, "do not fit a network of width 4 with 4 residual blocks"),
        ({"blocks": -1}, "cannot be what its"),
        ({"nan": True}, "NaN or infinite"),
        ({"training": [1]}, "damaged .*training record is not one of ours"),
        ({"training": {"seconds": 3}}, "damaged .*training record is not one of ours"),
        ({"padding": 1000}, "damaged .*holds .* bytes where its header declares"),
    ],
    ids=["blocks", "width", "one-block-short", "negative", "nan", "record-a-list", "record-without-steps", "padded"],
)
def test_a_crafted_stylizer_file_is_refused_before_its_network_is_built(
    model: VGGModel, tmp_path: Path, change: dict, message: str
) -> None:
    """A genuine file with its header's shape changed (100 000 blocks took 24 GB before), its weights poisoned, or
    bytes added (the file is measured against its header before it is read: a file of GBs was read whole)."""
    stylizer = trained(model, steps=1)
    if change.pop("nan", False):
        first = next(iter(stylizer["weights"]))
        stylizer["weights"][first] = stylizer["weights"][first].clone().fill_(float("nan"))
    padding = bytes(change.pop("padding", 0))
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(stylizer_bytes({**stylizer, **change}) + padding)
    with path.open("rb") as file, pytest.raises(ValueError, match=message) as refused:
        read_stylizer(file, path)
    assert str(path) in str(refused.value)


def test_save_stylizer_outside_the_models_folder_names_where_it_wrote(model: VGGModel, tmp_path: Path) -> None:
    node = NODE_CLASS_MAPPINGS["NSTSaveStylizer"]()
    host = RunnerHost("cpu", Folders(tmp_path, tmp_path, False, tmp_path / "models"), threading.Event())
    saved = tmp_path / "elsewhere" / "s.safetensors"
    shown = node.save(trained(model, steps=1), str(tmp_path / "elsewhere" / "s"), context=host)["ui"]["text"]
    assert shown == [str(saved)] and saved.is_file()


def write_pickle(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def write_foreign(path: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (write_pickle, "not a safetensors file"),
        (write_foreign, "not a stylizer saved by Save Stylizer"),
        (lambda path: path.write_bytes(b""), "not a safetensors file"),
    ],
    ids=["pickle", "foreign", "empty"],
)
def test_load_stylizer_refuses_what_is_not_ours_before_the_run(tmp_path: Path, write, message: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write(models / "bad.safetensors")
    graph = {"1": {"class_type": "NSTLoadStylizer", "inputs": {"stylizer": "bad.safetensors"}}}
    with pytest.raises(GraphValidationError, match=message):
        run(graph, device="cpu", folders=Folders(models=models), outputs=["1"])


def test_load_stylizer_refuses_other_extensions_and_names_outside_a_confined_models_folder(tmp_path: Path) -> None:
    node = NODE_CLASS_MAPPINGS["NSTLoadStylizer"]
    host = RunnerHost("cpu", Folders(tmp_path, tmp_path, True, tmp_path / "models"), threading.Event())
    (tmp_path / "models").mkdir()
    write_pickle(tmp_path / "models" / "a.pt")
    assert "outside the models folder" in node.VALIDATE_INPUTS(stylizer="../x.safetensors", context=host)
    assert "not a .safetensors file" in node.VALIDATE_INPUTS(stylizer="a.pt", context=host)


def test_fast_graph_trains_applies_saves_and_caches_the_training(tmp_path: Path, reporter) -> None:
    cache = Cache(tmp_path / "cache")
    folders = Folders(output=tmp_path / "output", models=tmp_path / "models")
    run("graphs/fast.json", device="cpu", overrides=TINY_FAST, folders=folders, cache=cache, reporter=reporter)
    assert "14" in reporter.ran and (tmp_path / "output" / "fast.png").is_file()
    saved = tmp_path / "models" / "nst" / "starry_night.safetensors"
    with saved.open("rb") as file:
        assert read_stylizer(file, saved)["training"]["steps"] == 2
    again = type(reporter)()
    run("graphs/fast.json", device="cpu", overrides=TINY_FAST, folders=folders, cache=cache, reporter=again)
    assert again.ran == [] or set(again.ran) <= {"15", "19"}  # output nodes write their files again
    other_photo = type(reporter)()
    overrides = {**TINY_FAST, "17.size": 44}
    run("graphs/fast.json", device="cpu", overrides=overrides, folders=folders, cache=cache, reporter=other_photo)
    assert "14" not in other_photo.ran and "18" in other_photo.ran
    other_weight = type(reporter)()
    overrides = {**TINY_FAST, "11.weight": 1e6}
    run("graphs/fast.json", device="cpu", overrides=overrides, folders=folders, cache=cache, reporter=other_weight)
    assert "14" in other_weight.ran


def test_apply_stylizer_keeps_a_batch_of_frames_in_order(model: VGGModel) -> None:
    stylizer = trained(model)
    frames = pictures(4, 24)
    (result,) = NODE_CLASS_MAPPINGS["NSTApplyStylizer"]().apply(stylizer, frames)
    assert result.shape == frames.shape and 0 <= result.min() and result.max() <= 1
    (second,) = NODE_CLASS_MAPPINGS["NSTApplyStylizer"]().apply(stylizer, frames[1:2])
    assert torch.allclose(result[1:2], second, atol=1e-5)
    for precision in ("fp32", "bf16"):
        (forced,) = NODE_CLASS_MAPPINGS["NSTApplyStylizer"]().apply(stylizer, frames, precision)
        assert forced.shape == frames.shape and (forced - result).abs().mean() < 1 / 255
    with pytest.raises(ValueError, match="image: the batch holds no pictures"):
        NODE_CLASS_MAPPINGS["NSTApplyStylizer"]().apply(stylizer, frames[:0])


def test_apply_stylizer_stylizes_every_frame_after_a_stop_during_training_and_stops_on_its_own(
    model: VGGModel, tmp_path: Path
) -> None:
    """A stop during training makes the stylizer a best-so-far: the clip is still stylized whole (it was cut to one
    frame, which then replaced the output video); a stop while stylizing keeps the frames done."""
    stylizer, frames, apply = trained(model), pictures(4, 24), NODE_CLASS_MAPPINGS["NSTApplyStylizer"]().apply
    stop = threading.Event()
    stop.set()
    host = RunnerHost("cpu", Folders(tmp_path, tmp_path), stop)
    (result,) = apply(stylizer, frames, context=host)
    assert len(result) == 4 and host.stopped_early

    stop = threading.Event()
    host = RunnerHost("cpu", Folders(tmp_path, tmp_path), stop, on_progress=lambda *_: stop.set())
    (result,) = apply(stylizer, frames, context=host)
    assert len(result) == 1 and host.stopped_early


def test_nst_video_applies_the_stylizer_fast_json_saved_to_every_frame(tmp_path: Path, monkeypatch) -> None:
    from nst_nodes.app import main
    from nst_nodes.video.io import read_clip

    monkeypatch.chdir(tmp_path)  # both graphs use the default models folder, ./models
    root = Path(__file__).resolve().parent.parent
    sets = [item for key, value in TINY_FAST.items() for item in ("--set", f"{key}={value}")]
    assert main(["run", str(root / "graphs" / "fast.json"), *sets, "--no-cache"]) == 0
    clip = root / "nst_nodes" / "samples" / "carphone.mp4"
    out = tmp_path / "out.mp4"
    assert main(["video", str(root / "graphs" / "fast_video.json"), str(clip), "-o", str(out), "--frames", "0:5"]) == 0
    assert read_clip(str(out)).frames.shape == read_clip(str(clip), 0, 5).frames.shape


def shifted_clip(count: int = 6, size: int = 40, shift: int = 2) -> tuple[torch.Tensor, Flow]:
    """A clip whose frames slide ``shift`` pixels to the right each, and its exact backward flow: every pixel of
    frame ``i`` is ``shift`` pixels left in frame ``i - 1``, so the flow is (-shift, 0) and reliable everywhere."""
    wide = torch.rand((size, size + count * shift, 3), generator=torch.Generator().manual_seed(7))
    frames = torch.stack([wide[:, (count - i) * shift : (count - i) * shift + size] for i in range(count)])
    backward = torch.zeros(count, size, size, 2)
    backward[1:, ..., 0] = -shift
    reliable = torch.ones(count, size, size)
    reliable[0] = 0  # entry 0 relates frame 0 to nothing
    return frames, {"method": "exact", "backward": backward, "forward": -backward, "reliable": reliable}


def test_pairs_of_frames_are_cut_alike_and_their_flow_warps_one_crop_onto_the_other() -> None:
    """Mirrored or not, the previous frame's crop warped along the pair's flow is the frame's crop, wherever
    the warp stays inside the crop; where it leaves the crop (the 2 columns the motion brings in) it does not
    count."""
    frames, flow = shifted_clip()
    settings = TrainSettings(size=24, batch=16)
    crops, (flows, masks) = random_pairs(frames, [1, 2, 3], flow, settings, torch.Generator().manual_seed(0))
    now, before = crops[:8], crops[8:]
    assert crops.shape == (16, 3, 24, 24) and flows.shape == (8, 24, 24, 2) and masks.shape == (8, 24, 24)
    assert not torch.equal(now, before)
    warped = warp(before, flows)
    assert torch.allclose(warped * masks[:, None], now * masks[:, None], atol=1e-5)
    assert (masks.sum((1, 2)) == 24 * 22).all()  # 2 columns leave the crop, on the left or (mirrored) the right
    mirrored = flows[..., 0] > 0
    assert 0 < mirrored[:, 0, 0].sum() < 8  # both kinds drawn
    assert (masks[:, :, :2].sum((1, 2)) == 0).eq(~mirrored[:, 0, 0]).all()


def test_the_temporal_term_is_zero_for_results_that_follow_the_flow(model: VGGModel) -> None:
    from nst_nodes.fast.train import _Loss

    frames, flow = shifted_clip(count=3)
    objective = objective_of(model, pictures(1, 48), weight=1e-6)  # the temporal term dominates
    loss_of = _Loss(model, objective, torch.device("cpu"), temporal_weight=1.0)
    pair = frames[[2, 1]].permute(0, 3, 1, 2)  # frame 2, then frame 1
    motion = motion_of(flow["backward"][2], flow["reliable"][2])
    with torch.no_grad():
        own, swapped_own = loss_of.targets(pair), loss_of.targets(pair.flip(0))
        following = loss_of(pair, own, motion) - loss_of(pair, own)
        swapped = loss_of(pair.flip(0), swapped_own, motion) - loss_of(pair.flip(0), swapped_own)  # 4 px off
    assert abs(float(following)) < 1e-3
    assert float(swapped) > 100  # random pixels, 0..255 in the network's input space


def test_training_on_a_clip_with_a_temporal_term_is_deterministic_and_recorded(model: VGGModel) -> None:
    frames, flow = shifted_clip()
    settings = TrainSettings(size=32, steps=3, batch=2, width=4)
    objective = objective_of(model, pictures(1, 48))
    temporal: Temporal = {"start": "warped", "weight": 1e3, "flow": flow}
    previews: list[torch.Tensor] = []
    first = train_stylizer(
        model, objective, frames, settings, lambda *args: previews.append(args[3]), temporal=temporal
    )
    again = train_stylizer(model, objective, frames, settings, temporal=temporal)
    without = train_stylizer(model, objective, frames, settings, temporal={**temporal, "weight": 0.0})
    assert all(torch.equal(first["weights"][name], again["weights"][name]) for name in first["weights"])
    assert not all(torch.equal(first["weights"][name], without["weights"][name]) for name in first["weights"])
    assert first["training"]["temporal"] == 1e3 and without["training"]["temporal"] == 0
    assert first["training"]["network_precision"] == "fp32"  # the term would round away in bf16's gradients
    assert previews[-1].shape == (2, 40, 40, 3)  # the held-aside frames: the last first


@pytest.mark.parametrize(
    ("change", "batch", "message"),
    [
        (lambda frames, flow: (frames[:5], flow), 2, "flow is of 6 frames of 40x40, the images are 5"),
        (lambda frames, flow: (frames, flow), 3, "make it even"),
        (
            lambda frames, flow: (frames[:3], {**flow, **{k: flow[k][:3] for k in ("backward", "reliable")}}),
            2,
            "give at least 4",
        ),
        (lambda frames, flow: (frames, {**flow, "reliable": torch.zeros_like(flow["reliable"])}), 2, "scene cut"),
        (lambda frames, flow: (frames, None), 2, "no flow"),
    ],
)
def test_a_temporal_term_that_cannot_train_is_refused_with_what_to_do(change, batch: int, message: str) -> None:
    frames, flow = change(*shifted_clip())
    with pytest.raises(ValueError, match=message):
        frame_pairs(frames, {"start": "warped", "weight": 1.0, "flow": flow}, batch)


def test_pairs_come_from_the_training_frames_and_the_held_aside_pair_warps_onto_the_last_frame() -> None:
    """Of 6 frames, 4 train (pairs end at frames 1, 2 and 3) and the last two are held aside, the last first:
    the one before it warped along their flow is it, where the warp counts."""
    frames, flow = shifted_clip()
    temporal: Temporal = {"start": "warped", "weight": 1.0, "flow": flow}
    assert frame_pairs(frames, temporal, 2) == [1, 2, 3]
    cut = flow["reliable"].clone()
    cut[2] = 0
    assert frame_pairs(frames, {**temporal, "flow": {**flow, "reliable": cut}}, 2) == [1, 3]
    held, motion, training = held_aside(frames, flow)
    assert torch.equal(held, frames[[5, 4]]) and torch.equal(training, frames[:4]) and motion is not None
    pair = held.permute(0, 3, 1, 2)
    mask = motion[1][:, None]
    assert torch.allclose(warp(pair[1:], motion[0]) * mask, pair[:1] * mask, atol=1e-5) and mask.mean() > 0.9
    cut = flow["reliable"].clone()
    cut[5] = 0
    assert held_aside(frames, {**flow, "reliable": cut})[1] is None  # no term across a cut


def test_fast_clip_graph_trains_on_the_clip_with_temporal_loss_then_stylizes_it(tmp_path: Path, reporter) -> None:
    """graphs/fast_clip.json, shrunk: Load Video -> Optical Flow -> Temporal Loss into Train Stylizer beside the
    clip's frames, then the clip stylized and saved; Temporal Loss in a mode without a term is refused."""
    from nst_nodes.video.io import read_clip

    overrides = {"1.stop": 6, "1.long_side": 64, "3.size": 4096, "16.size": 48, "16.steps": 2, "16.batch": 2}
    folders = Folders(output=tmp_path / "output", models=tmp_path / "models")
    run("graphs/fast_clip.json", device="cpu", overrides=overrides, folders=folders, reporter=reporter)
    saved = tmp_path / "models" / "nst" / "starry_night_clip.safetensors"
    with saved.open("rb") as file:
        training = read_stylizer(file, saved)["training"]
    assert training["temporal"] == 1e4 and training["steps"] == training["steps_asked"] == 2
    assert read_clip(str(tmp_path / "output" / "fast_clip.mp4")).frames.shape == (6, 52, 64, 3)
    with pytest.raises(NodeExecutionError, match="adds no temporal term"):
        run("graphs/fast_clip.json", device="cpu", overrides={**overrides, "15.mode": "off"}, folders=folders)
