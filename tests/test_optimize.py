"""The optimizer on the project's own 64 px copies of the real sample images, on ``--device`` (default cpu)."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from nst_nodes.image import load_image, resize_image, target_size
from nst_nodes.lbfgs import BoxLBFGS
from nst_nodes.losses import gatys_objective
from nst_nodes.optimize import Keeper, OptimizerSettings, optimize, start_image
from nst_nodes.types import Objective
from nst_nodes.vgg import VGGModel, load_vgg19


@pytest.fixture(scope="module")
def model(device: torch.device) -> VGGModel:
    return load_vgg19("caffe").to(device)


def tiny(path: Path, device: torch.device) -> torch.Tensor:
    image = load_image(path)
    return resize_image(image, *target_size(image.shape[1], image.shape[2], "long_side", 64)).to(device)


@pytest.fixture(scope="module")
def problem(model: VGGModel, device: torch.device) -> tuple[torch.Tensor, Objective]:
    """The start (the content photo, normalized) and Gatys' objective."""
    images = Path(__file__).resolve().parent.parent / "nst_nodes" / "samples"
    content, style = tiny(images / "tubingen.jpg", device), tiny(images / "starry_night.jpg", device)
    return model.preprocessing.normalize(content), gatys_objective(model, content, style)


def test_gatys_objective_takes_a_batch_frame_by_frame(model: VGGModel, device: torch.device) -> None:
    images = Path(__file__).resolve().parent.parent / "nst_nodes" / "samples"
    photo, style = tiny(images / "tubingen.jpg", device), tiny(images / "starry_night.jpg", device)
    frames = torch.cat([photo, photo.flip(2)])
    terms: list[Any] = gatys_objective(model, frames, style, style_weight=2.0)["terms"]
    content, gram = terms
    assert content["kind"] == "content" and gram["kind"] == "style" and gram["weight"] == 2.0
    targets = content["targets"]["relu4_2"]
    alone: Any = gatys_objective(model, frames[1:], style)["terms"][0]
    alone = alone["targets"]["relu4_2"]
    assert targets.shape[0] == 2 and torch.allclose(targets[1:], alone, atol=1e-5)
    assert not torch.allclose(targets[:1], alone)


def test_lbfgs_lowers_the_objective_substantially(model: VGGModel, problem) -> None:
    content, objective = problem
    _, history = optimize(model, objective, content, OptimizerSettings(steps=10))
    assert history["steps"] == 10 and len(history["loss"]) >= 11  # the start, 10 steps, any backtracks
    assert min(history["loss"]) < 0.2 * history["loss"][0]
    assert history["style"][-1] < 0.2 * history["style"][0]


def test_adam_lowers_the_objective(model: VGGModel, problem) -> None:
    content, objective = problem
    _, history = optimize(model, objective, content, OptimizerSettings(steps=10, method="adam", lr=5.0))
    assert history["loss"][-1] < 0.7 * history["loss"][0]


def test_noise_start_is_repeatable_with_a_seed(model: VGGModel, problem, monkeypatch: pytest.MonkeyPatch) -> None:
    content, objective = problem
    if content.device.type == "cuda":  # cuDNN's fastest backward kernels may add in any order
        monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    settings = OptimizerSettings(steps=3)
    runs = [optimize(model, objective, start_image(model, content, 0.7, seed=5), settings) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    other = optimize(model, objective, start_image(model, content, 0.7, seed=6), settings)
    assert not torch.equal(runs[0][0], other[0])


def test_stop_request_returns_the_best_image_so_far(model: VGGModel, problem) -> None:
    content, objective = problem
    reports: list[int] = []
    result, history = optimize(
        model,
        objective,
        content,
        OptimizerSettings(steps=50),
        report=lambda step, total, loss, image: reports.append(step),
        should_stop=lambda: len(reports) >= 3,
    )
    assert history["steps"] == 3 and reports == [1, 2, 3]
    assert result.shape == content.shape and not torch.equal(result, content)


def test_non_finite_loss_stops_with_a_clear_error(model: VGGModel, problem) -> None:
    content, objective = problem
    broken = {**objective, "terms": [{**objective["terms"][0], "weight": float("nan")}]}
    with pytest.raises(FloatingPointError, match="loss became nan"):
        optimize(model, broken, content, OptimizerSettings(steps=3))


def test_autograd_works_under_a_hosts_inference_mode(problem) -> None:
    content, _ = problem
    with torch.inference_mode():
        model = load_vgg19("caffe").to(content.device)
        photo = model.preprocessing.denormalize(content)
        objective = gatys_objective(model, photo, photo.flip(2))
        _, history = optimize(model, objective, content.clone(), OptimizerSettings(steps=3))
    assert history["loss"][-1] < history["loss"][0]


def skip_without_bf16(device: torch.device) -> None:
    """bf16 passes need compute capability 8 on a GPU (a CPU runs them, emulated where not native)."""
    from nst_nodes.optimize import native_bf16

    if device.type == "cuda" and not native_bf16(device):
        pytest.skip("this GPU has no native bf16 (compute capability below 8)")


def test_bf16_passes_evaluate_nearly_the_same_loss_and_still_optimize(
    model: VGGModel, problem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nst_nodes import optimize as optimizing

    content, objective = problem
    skip_without_bf16(content.device)
    monkeypatch.setattr(optimizing, "FP32_START", 0)  # every pass in bf16
    fp32 = optimize(model, objective, content, OptimizerSettings(steps=5, method="adam", lr=5.0, precision="fp32"))[1]
    bf16 = optimize(model, objective, content, OptimizerSettings(steps=5, method="adam", lr=5.0, precision="bf16"))[1]
    assert bf16["loss"][0] == pytest.approx(fp32["loss"][0], rel=0.02)  # same start image
    assert bf16["loss"][-1] == pytest.approx(fp32["loss"][-1], rel=0.05)
    monkeypatch.setattr(optimizing, "FP32_START", 3)  # L-BFGS: fp32 first, then bf16
    lbfgs = [
        optimize(model, objective, content, OptimizerSettings(steps=12, precision=precision))[1]["loss"][-1]
        for precision in ("fp32", "bf16")
    ]
    # Not closer: the first L-BFGS steps overshoot to 60x the start here, so which kernel each layer got
    # (timed in this session) moves the 12th step's loss by 10-15% in either precision; a stalled bf16
    # run stays at 8x fp32's.
    assert lbfgs[1] == pytest.approx(lbfgs[0], rel=0.25)


def squares(features: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    return sum(value.float().square().mean() for value in features.values())


@dataclass
class TimedPlans:
    image: torch.Tensor
    loss: Callable[..., torch.Tensor]
    candidates: tuple[str, ...]


def timing_plans_as(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seconds: Callable[[str, int], float]
) -> list[TimedPlans]:
    """pass_plan with a kernel choices file of its own, NST_CONV unset, and each candidate plan's seconds given by
    ``seconds(candidate, its index)`` instead of timed; returns the record of what it timed."""
    from nst_nodes import optimize as optimizing

    monkeypatch.setenv("NST_KERNELS_FILE", str(tmp_path / "kernels.json"))
    monkeypatch.delenv("NST_CONV", raising=False)
    timed: list[TimedPlans] = []

    def fake(model, image, layers, loss, candidates, repeats, should_stop):
        timed.append(TimedPlans(image, loss, candidates))
        return {candidate: seconds(candidate, index) for index, candidate in enumerate(candidates)}

    monkeypatch.setattr(optimizing, "time_passes", fake)
    return timed


def test_the_pass_plan_is_timed_once_and_bf16_only_where_native(
    model: VGGModel, problem, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nst_nodes import kernels
    from nst_nodes import optimize as optimizing

    content, _ = problem
    timed = timing_plans_as(  # the single-kernel plans lose, bf16 wins
        monkeypatch, tmp_path, lambda candidate, index: {"fp32": 1.0, "bf16": 0.6}.get(candidate, 1.5)
    )
    monkeypatch.setattr(optimizing, "native_bf16", lambda device: False)
    monkeypatch.setattr(optimizing, "native_tf32", lambda device: device.type == "cuda")
    assert optimizing.pass_plan("auto", model, content, ["relu4_1"], squares) == "fp32"
    # a CPU times its kernels, CUDA (cuDNN picks the kernels) TF32
    candidates = timed[-1].candidates
    assert "bf16" not in candidates and ("fp32 direct" if content.device.type == "cpu" else "tf32") in candidates
    monkeypatch.setattr(optimizing, "native_bf16", lambda device: True)
    assert optimizing.pass_plan("auto", model, content, ["relu4_1"], squares) == "bf16"
    assert (
        optimizing.pass_plan("auto", model, content, ["relu4_1"], squares) == "bf16" and len(timed) == 2
    )  # remembered
    assert optimizing.pass_plan("bf16", model, content, ["relu4_1"], squares) == "bf16" and len(timed) == 2
    monkeypatch.setenv("NST_CONV", "direct")
    assert optimizing.pass_plan("fp32", model, content, ["relu4_1"], squares) == "fp32" and len(timed) == 2
    assert kernels.chooser().choices


def test_a_large_images_pass_plan_is_timed_on_its_centre_and_shared_by_larger_sizes(
    model: VGGModel, problem, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from nst_nodes import optimize as optimizing

    content, _ = problem
    monkeypatch.setattr(optimizing, "PLAN_PIXELS", 16 * 16)
    timed = timing_plans_as(monkeypatch, tmp_path, lambda candidate, index: 2.0 - index)  # the last one wins
    monkeypatch.setattr(optimizing, "native_bf16", lambda device: False)
    small = torch.rand(1, 3, 16, 12, device=content.device)
    wide = torch.rand(1, 3, 20, 64, device=content.device)
    wide[..., 2:18, 24:40] = 5.0  # its centre
    chosen = optimizing.pass_plan("auto", model, wide, ["relu2_1"], squares)
    (first,) = timed
    assert first.image.shape[-2:] == (16, 16) and bool((first.image == 5.0).all())
    assert first.loss is optimizing.feature_energy
    assert optimizing.pass_plan("auto", model, torch.rand(1, 3, 40, 40), ["relu2_1"], squares) == chosen
    assert len(timed) == 1  # 40x40 shares the choice made for 20x64: both are timed at 16x16
    optimizing.pass_plan("auto", model, small, ["relu2_1"], squares)
    assert timed[-1].image is small and timed[-1].loss is squares  # a small image: itself, with its own objective


def test_one_kernel_for_every_layer_is_used_within_its_block(
    model: VGGModel, problem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nst_nodes import kernels

    content, _ = problem
    if content.device.type != "cpu":
        pytest.skip("NST_CONV's kernels are the CPU's: cuDNN runs every convolution on CUDA")
    monkeypatch.delenv("NST_CONV", raising=False)
    used: list[str] = []
    for path, kernel in kernels.KERNELS.items():
        counted = kernels.Kernel(
            kernel.prepare, lambda x, w, b, path=path, run=kernel.run: used.append(path) or run(x, w, b)
        )
        monkeypatch.setitem(kernels.KERNELS, path, counted)
    with kernels.every_layer("direct"):
        model.features(content, ["relu3_1"])
    assert set(used) == {"direct"}


def test_timing_the_passes_measures_every_candidate(model: VGGModel, problem) -> None:
    from nst_nodes import kernels
    from nst_nodes.optimize import time_passes

    content, _ = problem
    plans = ("fp32", "fp32 direct", "bf16") if content.device.type == "cpu" else ("fp32", "tf32", "bf16")
    seconds = time_passes(model, content, ["relu1_1", "relu2_1"], squares, plans)
    assert set(seconds) == set(plans) and all(value > 0 for value in seconds.values())
    assert not kernels._prepared  # each plan's prepared weights are dropped: the chosen plan prepares its own


def test_a_tf32_pass_turns_tf32_on_for_its_block_on_cuda_only() -> None:
    """The flags are only set and read back: no GPU is needed to check them."""
    from nst_nodes.optimize import cuda_pass

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32
    for tf32 in (True, False):
        with cuda_pass(torch.device("cuda"), tf32):
            assert (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32) == (True, tf32, tf32)
        assert (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32) == before
    with cuda_pass(torch.device("cpu"), True):
        assert (cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32) == before


def test_iterates_stay_in_the_valid_pixel_range(model: VGGModel, problem) -> None:
    content, objective = problem
    for method, lr in (("lbfgs", 1.0), ("adam", 20.0)):
        iterates: list[torch.Tensor] = []
        result, _ = optimize(
            model,
            objective,
            content,
            OptimizerSettings(steps=8, method=method, lr=lr),
            report=lambda step, total, loss, image, iterates=iterates: iterates.append(image.clone()),
        )
        for image in [*iterates, result]:
            rgb = model.preprocessing.denormalize(image)
            assert rgb.min() >= -1e-5 and rgb.max() <= 1 + 1e-5, method
        assert any(bool((model.preprocessing.denormalize(i) <= 1e-5).any()) for i in iterates), (
            "no pixel reached a bound"
        )


def quadratic_problem(
    bounded: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An ill-conditioned quadratic (curvatures 1..100) whose minimum lies partly outside [-1, 1]."""
    generator = torch.Generator().manual_seed(0)
    curvature = torch.logspace(0, 2, 200)
    center = 3 * torch.randn(200, generator=generator)
    limit = torch.tensor(1.0 if bounded else float("inf"))
    return curvature.to(device), center.to(device), -limit.to(device), limit.to(device)


def minimize_quadratic(
    bounded: bool, steps: int, device: torch.device, history_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, int]:
    curvature, center, lower, upper = quadratic_problem(bounded, device)
    x = torch.zeros(200, device=device, requires_grad=True)
    optimizer = BoxLBFGS(x, lower, upper, history_size=10, history_dtype=history_dtype)
    evaluations = 0

    def closure() -> float:
        nonlocal evaluations
        evaluations += 1
        x.grad = None
        loss = 0.5 * (curvature * (x - center) ** 2).sum()
        loss.backward()
        return loss.item()

    for _ in range(steps):
        optimizer.step(closure)
    return x.detach(), evaluations


@pytest.mark.parametrize("history_dtype", [torch.float32, torch.bfloat16])
def test_box_lbfgs_finds_the_projected_minimum_of_an_ill_conditioned_quadratic(
    history_dtype: torch.dtype, device: torch.device
) -> None:
    curvature, center, lower, upper = quadratic_problem(True, device)
    x, evaluations = minimize_quadratic(True, 60, device, history_dtype)
    assert torch.allclose(x, center.clamp(lower, upper), atol=1e-3)
    assert evaluations < 70  # 60 steps: backtracking stays rare


def test_box_lbfgs_beats_gradient_descent_unconstrained(device: torch.device) -> None:
    curvature, center, _, _ = quadratic_problem(False, device)
    x, _ = minimize_quadratic(False, 60, device)
    assert (x - center).abs().max() < 1e-3  # steepest descent (step 1/100) would still be off by ~3


def test_bf16_history_reaches_the_losses_of_fp32_history(model: VGGModel, problem) -> None:
    content, objective = problem
    final = [
        optimize(model, objective, content, OptimizerSettings(steps=15, history_precision=precision))[1]["loss"][-1]
        for precision in ("fp32", "bf16")
    ]
    assert final[1] == pytest.approx(final[0], rel=0.1)


def test_a_stop_while_the_pass_plan_is_timed_remembers_nothing(model: VGGModel, problem, monkeypatch) -> None:
    """At a new size the plan's timing takes seconds: a stop asked then is heard before the next pass."""
    from nst_nodes import kernels
    from nst_nodes import optimize as optimizing

    content, _ = problem
    chooser = kernels.KernelChooser(None)
    monkeypatch.setattr(kernels, "chooser", lambda: chooser)
    monkeypatch.setattr(optimizing, "native_bf16", lambda device: True)  # so that there are plans to time
    calls = iter(range(100))
    plan = optimizing.pass_plan("auto", model, content, ["relu4_1"], squares, lambda: next(calls) >= 2)
    assert plan == "fp32"  # the first candidate, and no plan remembered (kernels met on the way are)
    assert not [key for key in chooser.choices if key.startswith("pass:")]


def test_box_lbfgs_runs_its_vector_work_on_its_threads_and_the_closure_on_torchs(device: torch.device) -> None:
    curvature, center, lower, upper = quadratic_problem(True, device)
    x = torch.zeros(200, device=device, requires_grad=True)
    before = torch.get_num_threads()
    optimizer = BoxLBFGS(x, lower, upper, history_size=10, vector_threads=1)
    seen = []

    def closure() -> float:
        seen.append(torch.get_num_threads())
        x.grad = None
        loss = 0.5 * (curvature * (x - center) ** 2).sum()
        loss.backward()
        return loss.item()

    for _ in range(60):
        optimizer.step(closure)
    assert set(seen) == {before} and torch.get_num_threads() == before
    assert torch.allclose(x.detach(), center.clamp(lower, upper), atol=1e-3)


def test_vector_threads_time_as_many_pairs_as_fit_in_their_memory_budget(
    model: VGGModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty pairs shaped like a 1448² image's vectors took 724 MiB at the optimization's peak: the timing holds
    at most VECTOR_TIMING_BYTES of them, and never fewer than 2."""
    from nst_nodes import kernels, lbfgs
    from nst_nodes import optimize as optimizing

    image = torch.rand(1, 3, 32, 32)
    pair_bytes = 2 * image.numel() * torch.bfloat16.itemsize
    timed = []

    def recorded(x: torch.Tensor, dtype: torch.dtype, pairs: int, after: object) -> dict[int, float]:
        timed.append(pairs)
        return {1: 1.0, torch.get_num_threads(): 2.0}

    monkeypatch.setattr(optimizing, "time_vector_work", recorded)
    with lbfgs.threads(2):
        for budget, expected in ((100 * pair_bytes, optimizing.VECTOR_PAIRS_TIMED), (5 * pair_bytes, 5), (1, 2)):
            kernels.chooser().forget()
            monkeypatch.setattr(optimizing, "VECTOR_TIMING_BYTES", budget)
            assert optimizing.vector_threads(model, image, "fp32", torch.bfloat16) == 1
            assert timed[-1] == expected


def test_vector_threads_are_timed_once_and_remembered_so_runs_repeat(
    model: VGGModel, problem, device: torch.device
) -> None:
    from nst_nodes import kernels, lbfgs

    content, objective = problem
    timings = []
    real = lbfgs.time_vector_work

    def counted(*args: object, **kwargs: object) -> dict[int, float]:
        timings.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    kernels.chooser().forget()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("nst_nodes.optimize.time_vector_work", counted)
        first, _ = optimize(model, objective, content, OptimizerSettings(steps=12))
        second, _ = optimize(model, objective, content, OptimizerSettings(steps=12))
    assert torch.equal(first, second)
    on_cpu_with_threads = device.type == "cpu" and torch.get_num_threads() > 1
    assert len(timings) == (1 if on_cpu_with_threads else 0)
    if on_cpu_with_threads:
        key = f"lbfgs vector threads:{'x'.join(map(str, content.shape))}:torch.bfloat16"
        assert kernels.chooser().choices[key].path in ("1", str(torch.get_num_threads()))


@pytest.mark.parametrize("method, lr, pairs", [("lbfgs", 1.0, 50), ("lbfgs", 1.0, 2), ("adam", 5.0, 50)])
def test_a_stopped_optimization_goes_on_to_the_result_it_would_have_reached(
    model: VGGModel, problem, method, lr, pairs
):
    """What a stop keeps (L-BFGS's curvature pairs, the slots in use or the full buffers taken over; Adam's moments;
    the best iterate; the history) makes the rest of the run the same as a run that never stopped, bit for bit."""
    content, objective = problem
    settings = OptimizerSettings(steps=6, method=method, lr=lr, history_size=pairs)
    optimize(model, objective, content, replace(settings, steps=1))  # the kernels of this size chosen for all three
    whole, whole_history = optimize(model, objective, content, settings)
    kept: list[Any] = []
    calls = iter(range(100))
    part, part_history = optimize(
        model,
        objective,
        content,
        settings,
        None,
        lambda: next(calls) >= 2,
        keep=Keeper(lambda state, _: kept.append(state)),
    )
    assert part_history["steps"] == 3 and len(kept) == 1 and kept[0]["step"] == 3
    assert not torch.equal(part, whole)
    steps: list[int] = []
    rest, rest_history = optimize(
        model, objective, content, settings, lambda step, *_: steps.append(step), resume=kept[0]
    )
    assert steps == [4, 5, 6] and rest_history["steps"] == 6
    assert torch.equal(rest, whole) and rest_history["loss"] == whole_history["loss"]
    if method == "lbfgs":
        assert len(kept[0]["optimizer"]["inverse_curvatures"]) >= 1  # the pairs were kept, not rebuilt


@pytest.mark.parametrize("pairs", [50, 2])  # the pairs' slots in use; the full buffers, which go on changing
def test_a_killed_optimization_goes_on_from_the_state_kept_while_it_ran(
    model: VGGModel, problem, pairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nst_nodes import optimize as module

    content, objective = problem
    settings = OptimizerSettings(steps=6, history_size=pairs)
    whole, whole_history = optimize(model, objective, content, settings)
    monkeypatch.setattr(module, "KEEP_SECONDS", 0.0)
    monkeypatch.setattr(module, "KEEP_SHARE", float("inf"))
    kept: list[tuple[Any, bool]] = []  # written out at once, as the engine does with what is kept while running
    keep = Keeper(lambda state, running: kept.append((deepcopy(state), running)))
    optimize(model, objective, content, settings, keep=keep)
    assert [(state["step"], running) for state, running in kept] == [(step, True) for step in range(1, 6)]
    rest, rest_history = optimize(model, objective, content, settings, resume=kept[2][0])
    assert torch.equal(rest, whole) and rest_history["loss"] == whole_history["loss"]


def test_a_keeper_keeps_at_every_stop_and_while_running_spends_at_most_a_share_of_the_time_keeping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nst_nodes import optimize as module

    now = [0.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    kept: list[tuple[float, bool]] = []

    def keep(state: float, running: bool) -> None:
        kept.append((state, running))
        now[0] += 10.0  # writing it takes 10 s: the next is due 10 / KEEP_SHARE (500 s) later, not KEEP_SECONDS

    keeper = Keeper(keep)
    for at in (100.0, 300.0, 700.0, 809.0, 810.0, 1000.0):
        now[0] = at
        keeper(lambda: now[0], running=True)
    keeper(lambda: now[0], running=False)  # a stop always keeps
    assert kept == [(300.0, True), (810.0, True), (1000.0, False)]


def test_a_stop_before_the_first_step_keeps_nothing(model: VGGModel, problem) -> None:
    """It may have come while the pass plans were timed: the stand-in plan run then is not the one a rerun times."""
    content, objective = problem
    kept: list[Any] = []
    keep = Keeper(lambda state, _: kept.append(state))
    _, history = optimize(model, objective, content, OptimizerSettings(steps=12), None, lambda: True, keep=keep)
    assert history["steps"] == 1 and kept == []


def test_a_frame_stopped_part_way_goes_on_only_on_the_machine_it_was_stopped_on() -> None:
    from nst_nodes.nodes.optimizer import resumable
    from nst_nodes.optimize import machine_label

    start = torch.zeros(3, 3, 8, 8)
    current = {"machine": machine_label(start.device), "step": 2, "plan": "fp32"}
    current |= {"image": start[:1], "optimizer": {}, "best_image": start[:1], "best_loss": 1.0}
    current |= {"vector_threads": 1, "history": {}, "fp32_from": None}
    state: dict[str, Any] = {"frames": start[:1], "history": {"frames": [3]}, "current": current}
    assert resumable(state, start, 10)
    assert not resumable({**state, "current": {**current, "machine": "elsewhere cpu"}}, start, 10)
    assert resumable({**state, "current": None}, start, 10)  # frames done are results: they go anywhere
    assert not resumable({**state, "frames": start[:1, :, :4]}, start, 10)  # of other frames
    assert not resumable({"frames": start[:1]}, start, 10)  # not ours
    for wrong in ({"step": 10}, {"step": -5}, {"step": 2.0}, {"image": start[:1, :, :4]}, {"best_image": start}):
        assert not resumable({**state, "current": {**current, **wrong}}, start, 10), wrong  # a damaged state


def test_box_lbfgs_says_when_a_step_found_no_lower_loss(device: torch.device) -> None:
    """What tells a bf16 plan that its steps have fallen below what bf16 resolves."""
    x = torch.zeros(3, device=device, requires_grad=True)
    optimizer = BoxLBFGS(x, torch.tensor(-1.0), torch.tensor(1.0), history_size=5)

    def sloped(level: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], float]:
        def closure() -> float:
            x.grad = None
            loss = level(x)
            loss.backward()
            return loss.item()

        return closure

    optimizer.step(sloped(lambda x: ((x - 0.5) ** 2).sum()))
    assert not optimizer.stood_still
    level = optimizer.loss
    assert level is not None
    # the same loss wherever x moves, with a slope: a pass that rounds every step away
    optimizer.step(sloped(lambda x: (x - x.detach()).sum() + level))
    assert optimizer.stood_still


def test_a_bf16_plan_whose_steps_stand_still_runs_on_in_fp32_and_goes_on_so_after_a_stop(
    model: VGGModel, problem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nst_nodes import optimize as optimizing

    content, objective = problem
    skip_without_bf16(content.device)
    monkeypatch.setattr(optimizing, "FP32_START", 1)
    original_step = BoxLBFGS._step

    def standing_still_at_step_4(self: BoxLBFGS, closure: Callable[[], float]) -> float:
        loss = original_step(self, closure)
        self.taken = getattr(self, "taken", 0) + 1
        self.stood_still = self.stood_still or self.taken == 4
        return loss

    monkeypatch.setattr(BoxLBFGS, "_step", standing_still_at_step_4)
    passes: list[tuple[int, bool]] = []  # (the step it belongs to, in bf16)
    step = [1]
    features = model.features

    def recording(image: torch.Tensor, layers: list[str], reduced: torch.dtype | None = None):
        passes.append((step[0], reduced is not None))
        return features(image, layers, reduced=reduced)

    def next_step(done: int, *_: Any) -> None:
        step[0] = done + 1

    monkeypatch.setattr(model, "features", recording)
    settings = OptimizerSettings(steps=7, precision="bf16")
    whole, history = optimize(model, objective, content, settings, next_step)
    assert history["fp32_from"] == 5 and history["precision"] == "bf16"
    assert all(in_bf16 == (2 <= at <= 4) for at, in_bf16 in passes)  # step 1 in fp32 (FP32_START), then bf16 ...
    assert len([at for at, _ in passes if at == 5]) >= 2  # ... then the loss evaluated again, in fp32, and fp32 on
    kept: list[Any] = []
    step[0] = 1
    after_step_5 = lambda: step[0] > 5  # noqa: E731
    optimize(model, objective, content, settings, next_step, after_step_5, keep=Keeper(lambda s, _: kept.append(s)))
    assert kept[0]["step"] == 5 and kept[0]["fp32_from"] == 5
    passes.clear()
    rest, rest_history = optimize(model, objective, content, settings, resume=kept[0])
    assert passes and not any(in_bf16 for _, in_bf16 in passes) and rest_history["fp32_from"] == 5
    assert torch.equal(rest, whole) and rest_history["loss"] == history["loss"]
