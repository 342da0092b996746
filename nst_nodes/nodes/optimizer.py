"""The optimizer node: minimize the objective over the pixels, with progress, previews and stop."""

from __future__ import annotations

from typing import Any, cast

import torch

from .. import limits
from ..host import Host, host_of
from ..image import to_picture
from ..limits import check_memory
from ..losses import check_mask_fits, check_mask_selects, term_layers
from ..optimize import (
    METHODS,
    PASS_PRECISIONS,
    PRECISIONS,
    Keeper,
    OptimizerSettings,
    kept_here,
    start_image,
)
from ..types import (
    NST_HISTORY,
    NST_LOSS,
    NST_MODEL,
    NST_TEMPORAL,
    NST_TENSOR,
    ClipProgress,
    History,
    NetworkTensor,
    Objective,
    OptimizationProgress,
    Temporal,
)
from ..vgg import VGGModel
from ..video.frames import optimize_frames
from .base import HIDDEN_CONTEXT, Node, require_same_model, seed_input
from .network import check_large_enough, deepest_layer
from .schema import Choice, Float, Int, Link


class OptimizeImage(Node):
    DESCRIPTION = (
        "Optimize the pixels of an image against an objective (L-BFGS or Adam), keeping every iterate inside the "
        "valid pixel range. One step is one optimizer iteration (one forward and backward pass; L-BFGS adds one "
        "per backtrack, which is rare). Shows progress and the current image; stops within one step when asked."
    )
    FUNCTION = "run"
    RETURN_TYPES = (NST_TENSOR, NST_HISTORY)
    RETURN_NAMES = ("tensor", "history")
    OUTPUT_TOOLTIPS = (
        "The best image found, in the network's input space (connect De-normalize).",
        "The loss of every evaluation, per term (connect Plot History).",
    )

    INPUTS = (
        Link("model", type=NST_MODEL, tooltip="The network the objective was built with."),
        Link("objective", type=NST_LOSS, tooltip="What to minimize (Combine Losses)."),
        Link("init", type=NST_TENSOR, tooltip="The start image (usually the content photo), normalized."),
        Int(
            "steps",
            default=300,
            min=1,
            max=100000,
            tooltip="Optimizer iterations; L-BFGS looks converged after 200-500.",
        ),
        Choice(
            "optimizer",
            choices=METHODS,
            default="lbfgs",
            tooltip="lbfgs: fast and the standard for this; adam: simple, needs lr",
        ),
        Float(
            "lr",
            default=1.0,
            min=0.001,
            max=1e4,
            step=0.001,
            optional=True,
            tooltip="Step size: 1 for L-BFGS (it scales its own steps), 1-10 for Adam.",
        ),
        Float(
            "noise",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.01,
            optional=True,
            tooltip="Start from (1-noise)*init + noise*random image; 1: pure noise.",
        ),
        seed_input("Seed of the start noise (used only when noise > 0); fixed, so reruns are cached.", optional=True),
        Int("history_size", default=50, min=1, max=1000, optional=True, tooltip="L-BFGS memory: curvature pairs kept."),
        Choice(
            "precision",
            choices=PASS_PRECISIONS,
            default="auto",
            optional=True,
            tooltip="Of the network pass. auto: bf16 (or TF32 on a CUDA GPU) where the hardware has it and it "
            "measured faster at this size, else fp32",
        ),
        Choice(
            "history_precision",
            choices=PRECISIONS,
            default="bf16",
            optional=True,
            tooltip="Storage of the L-BFGS memory (bf16: half the RAM).",
        ),
        Link(
            "temporal",
            type=NST_TEMPORAL,
            optional=True,
            tooltip="A batch of frames: how each frame is carried into the next (Temporal Loss); without it, "
            "each frame starts from its own init.",
        ),
    )
    HIDDEN = HIDDEN_CONTEXT

    def run(
        self,
        model: VGGModel,
        objective: Objective,
        init: NetworkTensor,
        steps: int,
        optimizer: str,
        lr: float = 1.0,
        noise: float = 0.0,
        seed: int = 0,
        history_size: int = 50,
        precision: str = "auto",
        history_precision: str = "bf16",
        temporal: Temporal | None = None,
        context: Host | None = None,
    ) -> tuple[NetworkTensor, History]:
        host = host_of(context)
        require_same_model("init", model.identity, init["space"])
        if objective["model"] is not None:
            require_same_model("objective", model.identity, objective["model"])
        settings = OptimizerSettings(steps, optimizer, lr, history_size, precision, history_precision)
        layers = term_layers(objective)
        if layers:
            check_large_enough("init", init["pixels"], layers)
        count, height, width = init["pixels"].shape[0], *init["pixels"].shape[-2:]
        check_frames(objective, temporal, count, height, width)
        deepest = deepest_layer(layers) if layers else "conv1_1"
        # A clip's results beside one frame (its frames are held already, and counted as such).
        clip_bytes = init["pixels"].numel() * 4 if count > 1 else 0
        beyond = clip_bytes + limits.objective_bytes(objective, height, width)

        def needed(mapped_from: int | None = limits.TUNED) -> int:
            return limits.optimization_bytes(height, width, deepest, host.device, settings, mapped_from) + beyond

        def report(frame: int, step: int, total: int, loss: float, image: torch.Tensor) -> None:
            shown = {"frame": f"{frame + 1}/{count}"} if count > 1 else {}
            host.progress(
                frame * total + step,
                count * total,
                loss=loss,
                **shown,
                preview=lambda: to_picture(model.preprocessing.denormalize(image.cpu())),
            )

        with limits.fitting_allocator(needed, host.device, f"Optimize Image: init at {width}x{height}"):
            check_memory("init", "optimizing", needed(), host.device, height, width)
            start = start_image(model, init["pixels"].to(host.device), noise, seed)
            result, history, _ = optimize_frames(
                model.to(host.device),
                objective,
                start,
                temporal,
                settings,
                report,
                host.should_stop,
                cast(ClipProgress | None, host.resume_state(lambda state: resumable(state, start, steps))),
                Keeper[ClipProgress](
                    lambda progress, running: host.keep_progress(dict(progress), steps_done(progress, steps), running)
                ),
            )
        return {**init, "pixels": result}, history


def resumable(state: dict[str, Any], start: torch.Tensor, steps: int) -> bool:
    """Whether a stopped run's progress fits these frames and ``steps`` a frame: its frames done are results, but a
    frame stopped part way goes on exactly only on the machine and device it was stopped on."""
    frames, current = state.get("frames"), state.get("current")
    if not ClipProgress.__required_keys__ <= state.keys() or not isinstance(frames, torch.Tensor):
        return False
    if frames.shape[1:] != start.shape[1:] or frames.shape[0] >= start.shape[0]:
        return False
    if current is None:
        return True
    return (
        isinstance(current, dict)
        and kept_here(current, OptimizationProgress.__required_keys__, start.device)
        and isinstance(current["step"], int)
        and 0 < current["step"] < steps
        and all(
            isinstance(current[name], torch.Tensor) and current[name].shape == start[:1].shape
            for name in ("image", "best_image")
        )
    )


def steps_done(progress: ClipProgress, steps: int) -> int:
    current = progress["current"]
    return progress["frames"].shape[0] * steps + (current["step"] if current is not None else 0)


def check_frames(objective: Objective, temporal: Temporal | None, count: int, height: int, width: int) -> None:
    """Masks, content targets and flow fit the batch of ``count`` frames (one for all, or one per frame)."""
    for term in objective["terms"]:
        if term["kind"] == "style" and (mask := term["mask"]) is not None:
            if mask.dim() == 3 and mask.shape[0] not in (1, count):
                raise ValueError(
                    f"objective: a style loss's mask is a batch of {mask.shape[0]} for {count} frames; "
                    "give one mask for every frame, or one per frame"
                )
            for index, frame_mask in enumerate(mask if mask.dim() == 3 else mask[None]):
                what = "objective: a style loss's mask" + (f" of frame {index}" if mask.dim() == 3 else "")
                check_mask_fits(what, frame_mask, height, width)
                check_mask_selects(what, frame_mask)
        if term["kind"] == "content":
            sizes = {value.shape[0] for value in term["targets"].values()}
            if sizes - {1, count}:
                raise ValueError(
                    f"objective: content targets of {sorted(sizes)} frames for an init of {count}; "
                    "take the content features of the same frames"
                )
    flow = temporal["flow"] if temporal is not None else None
    if flow is not None and tuple(flow["backward"].shape[:3]) != (count, height, width):
        raise ValueError(
            f"temporal: its flow is of {list(flow['backward'].shape[:3])} frames x H x W, the init of "
            f"{[count, height, width]}; take the flow of the frames being stylized, at their size"
        )
