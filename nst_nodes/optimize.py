"""The optimization loop: update the pixels of an image in network space against an objective.

One *step* is one optimizer iteration: one function evaluation (a forward and a backward
pass), the same unit as an Adam step, plus one per L-BFGS backtrack (a few in the first
steps, rarely later). Every iterate stays inside the valid pixel range, so the saved image
is the one that was optimized (see lbfgs.py). The image returned is the best evaluated
iterate (Adam's final one is evaluated with one extra forward pass).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar, cast

import torch

from . import kernels
from .lbfgs import BoxLBFGS, time_vector_work
from .losses import ObjectiveFunction, tensor_sum, term_layers
from .types import History, Objective, OptimizationProgress
from .vgg import LAYER_INDEX, VGGModel

State = TypeVar("State")
Keep = Callable[[Callable[[], State], bool], None]
"""``keep(state, running)``: a run hands over the state to go on from (made by ``state()`` only if it is kept) as it
stops, and while ``running``; a :class:`Keeper` decides how often."""
KEEP_SECONDS = 300.0
KEEP_SHARE = 0.02


class Keeper(Generic[State]):
    """Hands a run's state to ``keep(state, running)`` as it stops, and while it runs every :data:`KEEP_SECONDS`,
    or more seldom where keeping takes more than :data:`KEEP_SHARE` of the time (at 2048², L-BFGS's pairs are GBs
    to write), so that a killed process (a second Ctrl-C, the OOM killer, a lost worker) goes on from the last."""

    def __init__(self, keep: Callable[[State, bool], None]) -> None:
        self.keep = keep
        self.last, self.seconds = time.monotonic(), 0.0

    def __call__(self, state: Callable[[], State], running: bool = False) -> None:
        started = time.monotonic()
        if running and started - self.last < max(KEEP_SECONDS, self.seconds / KEEP_SHARE):
            return
        self.keep(state(), running)
        self.last = time.monotonic()
        if running:
            self.seconds = self.last - started


METHODS = ("lbfgs", "adam")
PRECISIONS = ("fp32", "bf16")
PASS_PRECISIONS = ("auto", *PRECISIONS)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FP32_START = 10
"""Steps a bf16 optimization takes in fp32 first. L-BFGS's first steps are tiny, and the change of
the gradient over a tiny step (its curvature pair) drowns in bf16's rounding noise: the inverse
Hessian estimate then keeps every later step tiny too (measured at 512 px: no progress at all)."""


def native_bf16(device: torch.device) -> bool:
    """True where bf16 runs in hardware: CUDA from compute capability 8 (Ampere), CPUs with
    AVX512-BF16 or AMX (oneDNN's own check); emulated elsewhere, and much slower."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check and check())
    return False


def native_tf32(device: torch.device) -> bool:
    """True where TF32 runs on tensor cores: CUDA from compute capability 8 (Ampere); nowhere else."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work, so that a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_in_turns(runs: Mapping[str, Callable[[], object]], rounds: int, device: torch.device) -> dict[str, float]:
    """Each run's fastest of ``rounds`` after one warm-up, the runs taking turns so that a burst of other work on
    the machine slows them alike instead of deciding between them; the timer waits for ``device``'s queue."""
    best = dict.fromkeys(runs, math.inf)
    for turn in range(rounds + 1):
        for name, run in runs.items():
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            if turn:
                best[name] = min(best[name], time.perf_counter() - started)
    return best


@contextmanager
def cuda_pass(device: torch.device, tf32: bool) -> Iterator[None]:
    """On CUDA, for the block: cuDNN's benchmark on (it times its own kernels per shape) and TF32 on or
    off for matrix products and convolutions (off: fp32 is IEEE fp32, as on a CPU), then the process's
    settings back. Elsewhere nothing. A pass's backward must run inside the block too: the flags are
    read when each kernel runs."""
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32
    cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = True, tf32, tf32
    try:
        yield
    finally:
        cudnn.benchmark, matmul.allow_tf32, cudnn.allow_tf32 = saved


Loss = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
"""The objective's value from the features and the image it is evaluated at."""


class PlanStopped(Exception):
    """A stop was asked while the pass plan was being timed: nothing is remembered."""


def time_passes(
    model: VGGModel,
    image: torch.Tensor,
    layers: list[str],
    loss: Loss,
    candidates: tuple[str, ...],
    repeats: int = 2,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Seconds of one evaluation (network pass, the objective, their gradient) at ``image`` for each
    candidate pass: the best of ``repeats``, the candidates taking turns so that a hiccup of the
    machine does not decide (one pass each, at 256², once picked the slower plan by 20%).
    ``should_stop`` is polled between passes (the timing takes seconds at a new size):
    :class:`PlanStopped` when it says so."""

    def one_pass(candidate: str) -> None:
        if should_stop is not None and should_stop():
            raise PlanStopped
        precision, _, path = candidate.partition(" ")
        with kernels.every_layer(path or None), cuda_pass(image.device, precision == "tf32"):
            x = image.detach().clone().requires_grad_(True)
            loss(model.features(x, layers, reduced=torch.bfloat16 if precision == "bf16" else None), x).backward()

    with torch.inference_mode(False), torch.enable_grad():
        try:  # the warm-up round also calibrates the kernels
            return best_in_turns(
                {candidate: partial(one_pass, candidate) for candidate in candidates}, repeats, image.device
            )
        finally:
            kernels.forget_prepared_weights()


PLAN_PIXELS = 512 * 512
"""The most pixels the pass plans are timed at. A larger image's plans are timed on its centre crop of about this
many pixels, against a stand-in objective (the objective's own work is the same under every plan), and the choice
is shared by every size above it: timing each plan on a whole 2048² image took minutes, at the memory of the
hungriest plan (docs/performance.md#memory)."""


def plan_sample(image: torch.Tensor) -> torch.Tensor:
    """What the pass plans for ``image`` are timed on: the image itself, or its centre crop of at most
    :data:`PLAN_PIXELS` (a view)."""
    height, width = image.shape[-2:]
    if height * width <= PLAN_PIXELS:
        return image
    crop_height = min(height, math.isqrt(PLAN_PIXELS))
    crop_width = min(width, PLAN_PIXELS // crop_height)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image[..., top : top + crop_height, left : left + crop_width]


def feature_energy(features: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """A stand-in objective that takes every feature map's gradient: what the pass plans of a cropped image
    are timed with (the objective itself is built for the whole image)."""
    return tensor_sum(value.float().square().mean() for value in features.values())


def plan_candidates(precision: str, image: torch.Tensor) -> list[str]:
    """The plans :func:`pass_plan` times for ``precision`` at ``image``, the plain fp32 pass first. On a
    CPU: fp32 on each layer's kernel, on Winograd or oneDNN everywhere (unless ``NST_CONV`` forces one),
    and for ``auto`` bf16 where native. On CUDA (cuDNN picks the kernels): for ``auto``, TF32 and bf16
    where the tensor cores run them."""
    candidates = ["fp32"]
    if image.device.type == "cpu" and kernels.forced_path() is None:
        candidates += [f"fp32 {path}" for path in ("winograd", "direct") if path in kernels.candidates(image)]
    if precision == "auto" and native_tf32(image.device):
        candidates.append("tf32")
    if precision == "auto" and native_bf16(image.device):
        candidates.append("bf16")
    return candidates


def plan_key(candidates: list[str], layers: list[str], image: torch.Tensor) -> str:
    """Where a pass plan is remembered among the kernel choices: the candidates, the network's depth,
    the image size and the device (a GPU by its name)."""
    depth = max(LAYER_INDEX[name] for name in layers)
    height, width = plan_sample(image).shape[-2:]
    return f"pass:{'|'.join(candidates)}:{depth}@{height}x{width}:{device_label(image.device)}"


def device_label(device: torch.device) -> str:
    """A device in the keys of timed choices: a GPU by its name, else its type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def machine_label(device: torch.device) -> str:
    """Where a stopped run's state can go on exactly (its plans were timed there; its sums ran on those
    threads): this machine and thread count (the kernel choices' key) and the device."""
    return f"{kernels.chooser().key} {device_label(device)}"


def kept_here(state: Mapping[str, Any], keys: frozenset[str], device: torch.device) -> bool:
    """Whether a kept ``state`` has ``keys`` (OptimizationProgress's, TrainingProgress's: ``machine`` among them) and
    was kept on this machine and device, so that it goes on exactly here."""
    return keys <= state.keys() and state["machine"] == machine_label(device)


def pass_plan(
    precision: str,
    model: VGGModel,
    image: torch.Tensor,
    layers: list[str],
    loss: Loss,
    should_stop: Callable[[], bool] | None = None,
) -> str:
    """How the network pass runs at this size on this machine, timed once on the first objective met
    (``loss``; a larger image's plans on :func:`plan_sample`) and remembered with the kernel choices:
    ``fp32`` (on a CPU each layer on its own fastest kernel; on CUDA IEEE fp32, TF32 off), ``fp32
    winograd`` or ``fp32 direct`` (CPU: one kernel for every layer: layers timed alone miss the cost of
    switching between NNPACK's and oneDNN's thread pools), ``tf32`` (CUDA from Ampere, ``auto`` only) or
    ``bf16`` (``auto`` only, where the hardware runs it natively; it ends a little higher at equal steps,
    so it must buy more steps: docs/performance.md). The candidates: :func:`plan_candidates`. A stop asked
    while timing gives ``fp32``, remembered nowhere."""
    if precision == "bf16":
        return "bf16"
    candidates = plan_candidates(precision, image)
    if len(candidates) == 1:
        return candidates[0]
    sample = plan_sample(image)
    timed_loss = loss if sample is image else feature_energy
    try:
        return kernels.chooser().measured(
            plan_key(candidates, layers, image),
            tuple(candidates),
            lambda: time_passes(model, sample, layers, timed_loss, tuple(candidates), 2, should_stop),
        )
    except PlanStopped:
        return candidates[0]


def vector_threads(model: VGGModel, image: torch.Tensor, plan: str, history_dtype: torch.dtype) -> int:
    """The threads L-BFGS's own vector work runs on at this image size on this machine (its closure keeps
    torch's): one or all, timed once and remembered with the kernel choices, so that every run here computes
    the same steps. Each timing follows what precedes that work in a step: the input gradient of the first
    convolution on ``plan``'s kernel (a thread pool may still be spinning after it)."""
    everything = torch.get_num_threads()
    if image.device.type != "cpu" or everything == 1:
        return everything
    key = f"lbfgs vector threads:{'x'.join(map(str, image.shape))}:{history_dtype}"
    first = cast(torch.nn.Conv2d, model.network[0])  # VGG's conv1_1
    path = plan.partition(" ")[2]

    def first_layer() -> None:
        with torch.enable_grad(), kernels.every_layer(path or None):
            x = image.detach().clone().requires_grad_(True)
            kernels.frozen_conv3x3(x, first).sum().backward()

    pair_bytes = 2 * image.numel() * history_dtype.itemsize
    pairs = max(2, min(VECTOR_PAIRS_TIMED, VECTOR_TIMING_BYTES // pair_bytes))

    def time_them() -> dict[str, float]:
        seconds = time_vector_work(image, history_dtype, pairs, first_layer)
        return {str(count): value for count, value in seconds.items()}

    return int(kernels.chooser().measured(key, ("1", str(everything)), time_them))


VECTOR_PAIRS_TIMED = 20
"""Curvature pairs in the two-loop that :func:`vector_threads` times (a run holds up to ``history_size``), as
many as the pairs' own storage fits in ``VECTOR_TIMING_BYTES`` (at least 2): pairs the size of a large image's
vectors all stream from memory alike, and twenty at 1448² held 724 MiB and took seconds to time, where two chose
the same in 0.5 s."""
VECTOR_TIMING_BYTES = 64 * 2**20


@dataclass(frozen=True)
class OptimizerSettings:
    steps: int = 300
    method: str = "lbfgs"
    lr: float = 1.0
    history_size: int = 50  # L-BFGS pairs kept; 100 costs 2x the memory for the same loss (benchmarks/README)
    precision: str = "auto"  # of the network pass: auto (fp32, or tf32/bf16 where faster), fp32 or bf16
    # (tf32 and bf16 after FP32_START steps in fp32)
    history_precision: str = "bf16"  # of the stored L-BFGS pairs: half the memory, the same losses (README)


def start_image(model: VGGModel, init: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """``(1 - noise)·init + noise·N`` in network space; N is a uniform 0..1 RGB image from ``seed``."""
    if noise == 0:
        return init.clone()
    generator = torch.Generator().manual_seed(seed)
    height, width = init.shape[-2:]
    random_image = torch.rand((1, height, width, 3), generator=generator)
    random_input = model.preprocessing.normalize(random_image).to(init.device, init.dtype)
    return (1 - noise) * init + noise * random_input


def optimize(
    model: VGGModel,
    objective: Objective,
    start: torch.Tensor,
    settings: OptimizerSettings,
    report: Callable[[int, int, float, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: OptimizationProgress | None = None,
    keep: Keep[OptimizationProgress] | None = None,
) -> tuple[torch.Tensor, History]:
    """Minimize the objective over the pixels of ``start`` ``[1, 3, H, W]``; returns (best image, history).

    ``report(step, total, loss, image)`` is called after every step with the current iterate, then
    ``should_stop()`` is polled: True ends the run with the best image so far (at least one step
    is always taken, so a stopped run still returns an optimized image), after handing ``keep`` the
    state to go on from (handed while it runs too: :class:`Keeper`). ``resume``: such a state, of a run
    with the same arguments; the run goes on from it to the result it would have reached had it not stopped.

    Works under a host's ``torch.inference_mode()``: targets (ObjectiveFunction) and the start
    image are cloned into normal tensors before autograd sees them.
    """
    if settings.method not in METHODS:
        raise ValueError(f"optimizer must be one of {METHODS}, not {settings.method!r}")
    if settings.precision not in PASS_PRECISIONS:
        raise ValueError(f"precision must be one of {PASS_PRECISIONS}, not {settings.precision!r}")
    if settings.history_precision not in PRECISIONS:
        raise ValueError(f"history_precision must be one of {PRECISIONS}, not {settings.history_precision!r}")
    layers = term_layers(objective)
    report = report or (lambda step, total, loss, image: None)
    should_stop = should_stop or (lambda: False)
    with torch.inference_mode(False), torch.enable_grad():
        device = start.device
        loss_parts = ObjectiveFunction(objective["terms"], device)
        lower, upper = model.preprocessing.bounds(start)
        first = start if resume is None else resume["image"].to(device, start.dtype)
        image = first.detach().clone(memory_format=torch.contiguous_format).clamp_(lower, upper).requires_grad_(True)
        short = settings.steps <= FP32_START  # nothing timed: it would cost more than it saves
        history_dtype = DTYPES[settings.history_precision]
        if resume is not None:
            plan, threads = resume["plan"], resume["vector_threads"]
        elif short:
            plan, threads = "fp32", torch.get_num_threads()
        else:
            plan = pass_plan(settings.precision, model, image.detach(), layers, loss_parts.total, should_stop)
            threads = vector_threads(model, image.detach(), plan, history_dtype) if settings.method == "lbfgs" else 0
            if should_stop():  # perhaps during the timing: its stand-in plan is not what a rerun will time
                keep = None
        if settings.method == "lbfgs":
            optimizer: BoxLBFGS | torch.optim.Optimizer = BoxLBFGS(
                image,
                lower,
                upper,
                lr=settings.lr,
                history_size=settings.history_size,
                history_dtype=history_dtype,
                vector_threads=threads or None,
            )
        else:
            optimizer = torch.optim.Adam([image], lr=settings.lr)
        tracker = _Tracker(image.detach().clone())
        if resume is not None:
            tracker.restore(resume, device)
            restore_optimizer(optimizer, image, resume["optimizer"])
        precision, _, one_kernel = plan.partition(" ")
        reduced = False  # a bf16 or tf32 plan's passes, after its first FP32_START steps in fp32
        fp32_from = resume["fp32_from"] if resume is not None else None  # a bf16 plan's steps stood still: fp32 on

        def network_features() -> dict[str, torch.Tensor]:
            """The network pass as planned, in bf16 after the first steps (the losses sum in fp32)."""
            in_bf16 = reduced and precision == "bf16"
            with kernels.every_layer(one_kernel or None):
                return model.features(image, layers, reduced=torch.bfloat16 if in_bf16 else None)

        def evaluate() -> float:
            """Loss and gradient at the current image (on CUDA, TF32 after the first steps of a tf32 plan)."""
            image.grad = None
            with cuda_pass(device, reduced and precision == "tf32"):
                parts = loss_parts(network_features(), image)
                tensor_sum(parts.values()).backward()
            return tracker.record(image, parts)

        steps = resume["step"] if resume is not None else 0
        stopped = False
        for step in range(steps + 1, settings.steps + 1):
            reduced = step > FP32_START and fp32_from is None
            optimizer.step(evaluate)
            bf16_step = reduced and precision == "bf16" and step > FP32_START + 1  # the first compares with fp32's loss
            if bf16_step and isinstance(optimizer, BoxLBFGS) and optimizer.stood_still:
                # L-BFGS's steps, smaller as it converges, have fallen below what bf16 resolves (about 1 in 256 of a
                # pixel's value), and each step from here would backtrack for nothing (graphs/gatys.json at 128×96:
                # from step 285 the loss stood still at 5-8 evaluations a step, where fp32 went on falling). The rest
                # run in fp32, from the loss here evaluated again.
                fp32_from = step + 1
                optimizer.objective_changed()
            if settings.method == "adam":
                with torch.no_grad():
                    image.clamp_(lower, upper)  # projected Adam; L-BFGS keeps its iterates inside itself
            steps = step
            report(step, settings.steps, tracker.history["loss"][-1], image.detach())
            if step == settings.steps:  # after the last step there is nothing left to stop or keep
                break
            stopped = should_stop()
            if keep is not None:
                keep(partial(tracker.progress, step, plan, threads, image, optimizer, fp32_from), not stopped)
            if stopped:
                break
        if settings.method == "adam" and not stopped:  # its last step moved past the last evaluation
            with torch.no_grad(), cuda_pass(device, reduced and precision == "tf32"):
                tracker.record(image, loss_parts(network_features(), image))
    # The tracker's lists are History's: "loss" and one per term kind
    history: History = {"method": settings.method, "steps": steps, "precision": plan, **cast(History, tracker.history)}
    if fp32_from is not None:
        history["fp32_from"] = fp32_from
    return tracker.best_image, history


def optimizer_state(optimizer: BoxLBFGS | torch.optim.Optimizer, image: torch.Tensor) -> dict[str, Any]:
    """What the optimizer carries from step to step: L-BFGS's (:meth:`BoxLBFGS.state`) or Adam's moments."""
    if isinstance(optimizer, BoxLBFGS):
        return optimizer.state()
    return {name: value.detach().clone() for name, value in optimizer.state[image].items()}


def restore_optimizer(optimizer: BoxLBFGS | torch.optim.Optimizer, image: torch.Tensor, state: dict[str, Any]) -> None:
    if isinstance(optimizer, BoxLBFGS):
        optimizer.restore(state)
    elif state:
        # Adam's step count stays where Adam keeps it (the CPU); its moments go with the image
        optimizer.state[image] = {
            name: value.clone() if name == "step" else value.to(image.device, image.dtype, copy=True)
            for name, value in state.items()
        }


class _Tracker:
    """Loss history per evaluated iterate, the best iterate so far, and the NaN/inf guard."""

    def __init__(self, image: torch.Tensor) -> None:
        self.history: dict[str, list[float]] = {"loss": []}
        self.best_loss = math.inf
        self.best_image = image

    def progress(
        self,
        step: int,
        plan: str,
        threads: int,
        image: torch.Tensor,
        optimizer: BoxLBFGS | torch.optim.Optimizer,
        fp32_from: int | None,
    ) -> OptimizationProgress:
        """The state to go on from after ``step``. L-BFGS's full pair buffers are in it, not a copy: while the run
        goes on they change, so what is kept while running is written out at once."""
        return {
            "machine": machine_label(image.device),
            "step": step,
            "plan": plan,
            "vector_threads": threads,
            "image": image.detach().clone(),
            "optimizer": optimizer_state(optimizer, image),
            "best_image": self.best_image.clone(),
            "best_loss": self.best_loss,
            "history": {kind: list(values) for kind, values in self.history.items()},
            "fp32_from": fp32_from,
        }

    def restore(self, progress: OptimizationProgress, device: torch.device) -> None:
        self.history = {kind: list(values) for kind, values in progress["history"].items()}
        self.best_loss = progress["best_loss"]
        self.best_image = progress["best_image"].to(device, copy=True)

    def record(self, image: torch.Tensor, parts: dict[str, torch.Tensor]) -> float:
        values = {kind: part.item() for kind, part in parts.items()}
        loss = sum(values.values())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} at evaluation {len(self.history['loss'])} ({values}); "
                "lower the learning rate or the loss weights"
            )
        self.history["loss"].append(loss)
        for kind, value in values.items():
            self.history.setdefault(kind, []).append(value)
        if loss < self.best_loss:
            self.best_loss, self.best_image = loss, image.detach().clone()
        return loss
