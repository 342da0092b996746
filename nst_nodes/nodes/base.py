"""What every node of the pack shares: its category, how its inputs become ComfyUI's attributes, the hidden
host input, and the parsers of its text inputs."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..host import Host, host_of
from ..vgg import LAYER_NAMES
from .schema import Float, Input, Int, input_types, validate_inputs

CATEGORY = "style transfer"
HIDDEN_CONTEXT = {"context": "GRAPHRUN_HOST"}  # the engine's host (graphrun.spec.HOST_INPUT); ComfyUI passes nothing
WEIGHT_STEP = 1e-5
"""The editor rounds a FLOAT widget to its step's decimals; 1e-5 keeps the default weights (1e-3) and
every weight down to 1e-5 intact."""
MAX_WEIGHT = 1e12


class Node:
    """Base of the pack's nodes (ComfyUI reads inherited attributes too). A node declares its inputs once, in
    INPUTS (and HIDDEN); a classmethod ``validate`` may add checks that need a file or several inputs; the
    ComfyUI V1 attributes INPUT_TYPES and VALIDATE_INPUTS come from them (schema.py)."""

    CATEGORY = CATEGORY
    INPUTS: tuple[Input, ...] = ()
    HIDDEN: dict[str, str] = {}
    VALIDATE_INPUTS: ClassVar[classmethod]  # set by __init_subclass__ only where there is something to check

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hook = validate_inputs(cls.INPUTS, getattr(cls, "validate", None))
        if hook is not None:
            cls.VALIDATE_INPUTS = hook

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return input_types(cls.INPUTS, cls.HIDDEN)


def weight(default: float, tooltip: str) -> Float:
    """The weight of a loss term: any finite number from 0 up, kept intact by the editor down to 1e-5."""
    return Float("weight", default=default, min=0.0, max=MAX_WEIGHT, step=WEIGHT_STEP, tooltip=tooltip)


def seed_input(tooltip: str, optional: bool = False) -> Int:
    """A seed: any non-negative 64-bit number, kept by the editor between runs so that a rerun is cached."""
    return Int(
        "seed", default=0, min=0, max=2**63 - 1, control_after_generate=False, optional=optional, tooltip=tooltip
    )


def parse_layers(text: str) -> list[str]:
    """``"relu1_1, relu2_1"`` -> names; raises ValueError listing the valid names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in LAYER_NAMES]
    if not names or unknown:
        problem = f"unknown layer(s) {unknown}" if unknown else "no layer given"
        raise ValueError(f"layers: {problem}; valid names are {', '.join(LAYER_NAMES)}")
    return names


def parse_numbers(text: str, what: str) -> list[float]:
    """``"1, 0.5"`` -> finite non-negative floats (empty text -> empty list)."""
    try:
        numbers = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from error
    if any(not math.isfinite(n) or n < 0 for n in numbers):
        raise ValueError(f"{what}: weights must be finite and non-negative, got {text!r}")
    return numbers


def weights_per_layer(layers: list[str], text: str) -> dict[str, float]:
    """Per-layer weights: equal (1/n) when ``text`` is empty, else one number per layer, in order."""
    numbers = parse_numbers(text, "layer_weights") or [1.0 / len(layers)] * len(layers)
    if len(numbers) != len(layers):
        raise ValueError(f"layer_weights: {len(numbers)} numbers for {len(layers)} layers {layers}")
    return dict(zip(layers, numbers, strict=True))


def require_same_model(what: str, expected: str, found: str) -> None:
    if expected != found:
        raise ValueError(f"{what} was made with model '{found}' but this node uses '{expected}'")


def frame_masks(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI's MASK -> ``[H, W]`` for one mask, ``[B, H, W]`` float for one per frame of a batch."""
    if mask.dim() == 3 and mask.shape[0] > 1:
        return mask.float()
    return one_mask(mask)


def one_mask(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI's MASK (``[B, H, W]`` or ``[H, W]``) -> the first mask, ``[H, W]`` float."""
    if mask.dim() == 3:
        mask = mask[0]
    if mask.dim() != 2:
        raise ValueError(f"mask: expected [H, W] or [B, H, W], got shape {list(mask.shape)}")
    return mask.float()


def device_of(context: Host | None) -> str:
    return host_of(context).device
