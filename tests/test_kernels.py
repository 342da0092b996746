"""The per-machine choice of convolution kernels (nst_nodes/kernels.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nst_nodes import kernels, tuning, winograd

SHAPE = (64, 128, 32, 48)


@pytest.fixture
def timings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Record every timing; 'direct' wins the first, 'channels_last' any later one."""
    calls: list[tuple[int, ...]] = []

    def fake(shape: kernels.Shape, paths: tuple[str, ...]) -> dict[str, float]:
        calls.append(shape)
        winner = "direct" if len(calls) == 1 else "channels_last"
        return {path: 0.001 if path == winner else 0.002 for path in paths}

    monkeypatch.setattr(kernels, "time_paths", fake)
    monkeypatch.delenv("NST_CONV", raising=False)
    return calls


def test_the_winner_is_timed_once_and_remembered_across_processes(tmp_path: Path, timings: list) -> None:
    file = tmp_path / "kernels.json"
    assert kernels.KernelChooser(file).choose(SHAPE, kernels.PATHS) == "direct"
    again = kernels.KernelChooser(file)  # a new process reads the file
    assert again.choose(SHAPE, kernels.PATHS) == "direct" and len(timings) == 1
    stored = json.loads(file.read_text())[again.key]
    assert stored["machine"]["torch"] == torch.__version__ and stored["choices"]["64>128@32x48"]["path"] == "direct"
    assert again.choose((128, 64, 32, 48), kernels.PATHS) == "channels_last"  # the other direction: its own choice
    assert len(timings) == 2


def test_another_machine_times_again_and_calibrate_forgets(
    tmp_path: Path, timings: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "kernels.json"
    kernels.KernelChooser(file).choose(SHAPE, kernels.PATHS)
    monkeypatch.setattr(kernels, "machine", lambda: {"cpu": "another", "flags": "", "threads": "1", "torch": "x"})
    other = kernels.KernelChooser(file)
    assert other.choose(SHAPE, kernels.PATHS) == "channels_last" and len(timings) == 2
    assert len(json.loads(file.read_text())) == 2  # both machines kept
    other.forget()
    other.choose(SHAPE, kernels.PATHS)
    assert len(timings) == 3


def test_a_forced_path_is_used_without_timing(tmp_path: Path, timings: list, monkeypatch: pytest.MonkeyPatch) -> None:
    chooser = kernels.KernelChooser(tmp_path / "kernels.json")
    monkeypatch.setenv("NST_CONV", "winograd")
    assert chooser.choose(SHAPE, kernels.PATHS) == "winograd"
    assert chooser.choose(SHAPE, ("direct", "channels_last")) == "direct"  # where Winograd cannot run
    monkeypatch.setenv("NST_CONV", "fastest")
    with pytest.raises(ValueError, match="NST_CONV=.fastest.: choose one of auto, winograd, winograd_f4, direct"):
        chooser.choose(SHAPE, kernels.PATHS)
    assert timings == []


def test_an_unwritable_or_damaged_file_keeps_choices_in_memory(tmp_path: Path, timings: list) -> None:
    damaged = tmp_path / "kernels.json"
    damaged.write_text("{not json")
    chooser = kernels.KernelChooser(damaged)
    assert chooser.choose(SHAPE, kernels.PATHS) == "direct"
    assert json.loads(damaged.read_text())[chooser.key]  # rewritten whole
    blocked = kernels.KernelChooser(tmp_path / "a_file" / "kernels.json")
    (tmp_path / "a_file").write_text("")
    assert blocked.choose(SHAPE, kernels.PATHS) == "channels_last"
    assert blocked.choose(SHAPE, kernels.PATHS) == "channels_last" and len(timings) == 2


def test_real_timing_gives_every_candidate_a_time() -> None:
    seconds = kernels.time_paths((8, 16, 40, 40), kernels.PATHS, rounds=1)
    assert set(seconds) == set(kernels.PATHS) and all(value > 0 for value in seconds.values())


def test_two_processes_calibrating_side_by_side_keep_each_others_choices(tmp_path: Path, timings: list) -> None:
    file = tmp_path / "kernels.json"
    first, second = kernels.KernelChooser(file), kernels.KernelChooser(file)
    first.choose((3, 64, 32, 32), kernels.PATHS)
    second.choose((64, 64, 32, 32), kernels.PATHS)  # loaded before the first one saved
    stored = json.loads(file.read_text())[first.key]["choices"]
    assert set(stored) == {"3>64@32x32", "64>64@32x32"}


def test_two_processes_timing_one_shape_at_once_both_run_the_first_stored_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch workers must run the same kernels, or the same item gives other pixels on another worker."""
    winners = iter(["direct", "winograd", "channels_last"])
    monkeypatch.setattr(
        kernels,
        "time_paths",
        lambda shape, paths: {path: 0.001 if path == winner else 0.002 for winner in [next(winners)] for path in paths},
    )
    monkeypatch.delenv("NST_CONV", raising=False)
    file = tmp_path / "kernels.json"
    first, second = kernels.KernelChooser(file), kernels.KernelChooser(file)
    second.choose((3, 64, 32, 32), kernels.PATHS)  # the second has read the file before the first stores
    assert first.choose(SHAPE, kernels.PATHS) == "winograd"  # timed and stored first
    assert second.choose(SHAPE, kernels.PATHS) == "winograd"  # timed "channels_last" meanwhile, adopts
    assert second.choose(SHAPE, kernels.PATHS) == "winograd"
    assert json.loads(file.read_text())[first.key]["choices"]["64>128@32x48"]["path"] == "winograd"


def test_large_layers_share_the_choice_of_their_capped_shape(tmp_path: Path, timings: list) -> None:
    chooser = kernels.KernelChooser(tmp_path / "kernels.json")
    chooser.choose((64, 64, 512, 512), kernels.PATHS)
    chooser.choose((64, 64, 1024, 768), kernels.PATHS)
    assert timings == [(64, 64, 512, 512)] and list(chooser.choices) == ["64>64@256x256"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda key: {key: {"choices": {"64>128@32x48": {"path": "direct", "seconds": "x"}}}},
        lambda key: {key: {"choices": ["a list where a dict belongs"]}},
        lambda key: {key: []},
        lambda key: "[" * 100_000,
        lambda key: "{not json",
    ],
    ids=["seconds-a-string", "choices-a-list", "machine-a-list", "nested-100000-deep", "not-json"],
)
def test_a_damaged_file_is_a_miss_with_one_warning_then_rewritten(
    damage, tmp_path: Path, timings: list, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "kernels.json"
    content = damage(kernels.machine_key(kernels.machine()))
    file.write_text(content if isinstance(content, str) else json.dumps(content))
    chooser = kernels.KernelChooser(file)
    assert chooser.choose(SHAPE, kernels.PATHS) == "direct"
    assert chooser.choose((128, 64, 32, 48), kernels.PATHS) == "channels_last"
    assert [record.getMessage() for record in caplog.records if str(file) in record.getMessage()] == [
        record.getMessage() for record in caplog.records
    ] and len(caplog.records) == 1
    stored = json.loads(file.read_text())[chooser.key]["choices"]
    assert {shape: entry["path"] for shape, entry in stored.items()} == {
        "64>128@32x48": "direct",
        "128>64@32x48": "channels_last",
    }


@pytest.mark.parametrize("content", ["notes\n", '{"name": "my-app", "version": 2}', "[1, 2]"])
def test_a_file_nst_kernels_file_names_that_is_not_a_choices_file_is_never_rewritten(
    content: str, tmp_path: Path, timings: list, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo or another program's JSON in NST_KERNELS_FILE: the choices stay in memory, the file as it was."""
    file = tmp_path / "settings.json"
    file.write_text(content)
    monkeypatch.setenv("NST_KERNELS_FILE", str(file))
    chooser = kernels.chooser()
    assert chooser.choose(SHAPE, kernels.PATHS) == "direct"
    assert chooser.choose(SHAPE, kernels.PATHS) == "direct" and len(timings) == 1  # kept in memory
    assert file.read_text() == content and [path.name for path in tmp_path.iterdir()] == ["settings.json"]
    assert len(caplog.records) == 1 and "left as it is" in caplog.text
    monkeypatch.setenv("NST_KERNELS_FILE", str(tmp_path / "new.json"))  # a new file is written
    kernels.chooser().choose(SHAPE, kernels.PATHS)
    assert kernels.chooser().key in json.loads((tmp_path / "new.json").read_text())


def test_a_folder_in_the_files_place_warns_once_and_leaves_no_litter(
    tmp_path: Path, timings: list, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "kernels.json"
    file.mkdir()
    chooser = kernels.KernelChooser(file)
    for channels in range(8, 30):
        chooser.choose((channels, 16, 8, 8), kernels.PATHS)
    assert len(caplog.records) == 1 and str(file) in caplog.records[0].getMessage()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kernels.json", "kernels.json.lock"]


def test_an_oversized_file_is_not_read_and_other_machines_are_pruned(
    tmp_path: Path, timings: list, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "kernels.json"
    file.write_text(json.dumps({"padding": "x" * kernels.MAX_FILE_BYTES}))
    kernels.KernelChooser(file).choose(SHAPE, kernels.PATHS)
    assert "is over 1 MiB" in caplog.text and len(caplog.records) == 1
    assert file.stat().st_size < kernels.MAX_FILE_BYTES
    others = {f"machine{i}": {"machine": {}, "saved": float(i), "choices": {}} for i in range(20)}
    file.write_text(json.dumps(others))
    chooser = kernels.KernelChooser(file)
    chooser.choose(SHAPE, kernels.PATHS)
    kept = json.loads(file.read_text())
    assert len(kept) == kernels.MACHINES_KEPT and chooser.key in kept and "machine19" in kept and "machine5" not in kept


def test_the_kernel_choices_live_in_the_packs_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nst_nodes.files import cache_root

    monkeypatch.delenv("NST_KERNELS_FILE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert (
        cache_root() == tmp_path / "nst-nodes" and kernels.calibration_file() == tmp_path / "nst-nodes" / "kernels.json"
    )
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "nst-nodes"


def test_a_remembered_pass_plan_is_read_back_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass plan's winner is a plan name ("fp32 winograd", "bf16"), not a kernel path: a later process must
    adopt it, not call the file damaged and time the plans again."""
    file = tmp_path / "kernels.json"
    plans = ("fp32", "fp32 winograd", "bf16")
    timed = iter([{"fp32": 0.3, "fp32 winograd": 0.2, "bf16": 0.25}])
    assert kernels.KernelChooser(file).measured("pass:test@8x8:cpu", plans, lambda: next(timed)) == "fp32 winograd"
    again = kernels.KernelChooser(file)
    assert again.measured("pass:test@8x8:cpu", plans, lambda: pytest.fail("timed again")) == "fp32 winograd"
    assert not caplog.records


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_a_frozen_convolution_matches_float64_in_value_and_input_gradient(precision: str, device: torch.device) -> None:
    """The convolution of each pass precision, on ``--device``: fp32 on the kernel chosen here (IEEE fp32 on
    CUDA), TF32 (CUDA only) and bf16 within their rounding, in the output and in the input's gradient."""
    from nst_nodes.optimize import cuda_pass, native_bf16

    if precision == "tf32" and device.type != "cuda":
        pytest.skip("TF32 runs on CUDA only")
    if precision == "bf16" and device.type == "cuda" and not native_bf16(device):
        pytest.skip("this GPU has no native bf16 (compute capability below 8)")
    generator = torch.Generator().manual_seed(7)
    conv = torch.nn.Conv2d(16, 24, 3, padding=1).requires_grad_(False)
    x, upstream = torch.randn(1, 16, 20, 28, generator=generator), torch.randn(1, 24, 20, 28, generator=generator)
    exact_input = x.double().requires_grad_(True)
    exact = torch.nn.functional.conv2d(exact_input, conv.weight.double(), conv.bias.double(), padding=1)
    (exact * upstream.double()).sum().backward()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    leaf = x.to(device, dtype).requires_grad_(True)
    with cuda_pass(device, precision == "tf32"):
        out = kernels.frozen_conv3x3(leaf, conv.to(device))
        (out * upstream.to(device, out.dtype)).sum().backward()
    tolerance = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 3e-2}[precision]
    for got, want in ((out, exact), (leaf.grad, exact_input.grad)):
        assert got.dtype == dtype
        assert ((got.double().cpu() - want).norm() / want.norm()).item() < tolerance


@pytest.mark.parametrize("path", kernels.PATHS)
def test_every_kernel_matches_float64_at_any_size_and_follows_a_changed_weight(path: str) -> None:
    """Each path runs on weights prepared once (reordered, transposed): a new input size or new weights
    must prepare them again, not reuse the old ones. Batches and images smaller than a tile too."""
    generator = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(16, 24, 3, padding=1).requires_grad_(False)
    for batch, height, width, scale in ((1, 40, 36, 1.0), (1, 33, 50, 1.0), (1, 33, 50, -2.0), (2, 1, 3, 1.0)):
        conv.weight.mul_(scale)
        x = torch.randn(batch, 16, height, width, generator=generator)
        upstream = torch.randn(batch, 24, height, width, generator=generator)
        exact_input = x.double().requires_grad_(True)
        exact = torch.nn.functional.conv2d(exact_input, conv.weight.double(), conv.bias.double(), padding=1)
        (exact * upstream.double()).sum().backward()
        leaf = x.clone().requires_grad_(True)
        with kernels.every_layer(path):
            out = kernels.frozen_conv3x3(leaf, conv)
        (out * upstream).sum().backward()
        for got, want in ((out, exact), (leaf.grad, exact_input.grad)):
            assert ((got.double() - want).norm() / want.norm()).item() < 1e-4, (path, batch, height, width, scale)


def test_winograd_f4_in_bands_of_tile_rows_matches_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large picture runs F(4x4) in bands of tile rows (a bounded workspace); bands, the last one shorter, and
    a batch give the convolution of the whole picture."""
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(24, 16, 3, 3, generator=generator)
    bias = torch.randn(24, generator=generator)
    x = torch.randn(2, 16, 30, 21, generator=generator)  # 8 rows of tiles, the last one cropped
    bands = []
    whole_tiles = winograd._convolve_tiles
    monkeypatch.setattr(winograd, "_convolve_tiles", lambda *args: bands.append(args[2].shape) or whole_tiles(*args))
    monkeypatch.setattr(winograd, "TILE_ELEMENTS", 36 * 2 * 6 * 24 * 3)  # 3 rows of 6 tiles, batch 2, 24 channels
    got = winograd.convolve_pretransformed(x, winograd.transform_weight(weight), bias)
    want = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    assert [shape[2] for shape in bands] == [12, 12, 8]
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-5


def test_memory_mode_leaves_out_the_kernels_that_keep_several_times_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NST_TUNING=memory: no F(4x4) kernels (4x the weights per direction) unless NST_CONV forces them, and its
    choices, made among fewer paths, are kept apart from the speed mode's in the file."""
    file = tmp_path / "kernels.json"
    monkeypatch.setenv("NST_KERNELS_FILE", str(file))
    monkeypatch.delenv("NST_CONV", raising=False)
    monkeypatch.setattr(tuning, "_mode", "speed")
    x = torch.randn(1, 64, 32, 32)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False)
    assert "winograd_f4" in kernels.candidates(x) and "paths" not in kernels.machine()  # the keys of before
    kernels.frozen_conv3x3(x, conv)
    monkeypatch.setattr(tuning, "_mode", "memory")
    kernels.forget_prepared_weights()  # the speed mode's pass may have chosen F(4x4) (by timing) and prepared it
    assert "winograd_f4" not in kernels.candidates(x) and "direct" in kernels.candidates(x)
    kernels.frozen_conv3x3(x.clone().requires_grad_(True), conv).sum().backward()
    assert "winograd_f4" not in {path for path, _ in kernels._prepared[conv]}
    stored = json.loads(file.read_text())
    assert len(stored) == 2 and {entry["machine"].get("paths") for entry in stored.values()} == {
        None,
        "winograd direct channels_last",
    }
    monkeypatch.setenv("NST_CONV", "winograd_f4")  # what a user forces runs
    assert "winograd_f4" in kernels.candidates(x)


def test_the_packs_own_damaged_file_is_rewritten_and_a_choices_file_elsewhere_is_kept_up(
    tmp_path: Path, timings: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NST_KERNELS_FILE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    own = tmp_path / "nst-nodes" / "kernels.json"
    own.parent.mkdir()
    own.write_text("[damaged]")
    kernels.chooser().choose(SHAPE, kernels.PATHS)
    assert kernels.chooser().owned and kernels.chooser().key in json.loads(own.read_text())
    elsewhere = tmp_path / "mine.json"
    elsewhere.write_text(own.read_text())
    monkeypatch.setenv("NST_KERNELS_FILE", str(elsewhere))
    assert not kernels.chooser().owned
    kernels.chooser().choose((128, 64, 32, 48), kernels.PATHS)
    assert len(json.loads(elsewhere.read_text())[kernels.chooser().key]["choices"]) == 2
