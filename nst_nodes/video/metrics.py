"""How steady a stylized clip is: warping error (Lai et al. 2018) and flicker."""

from __future__ import annotations

import torch

from .flow import optical_flow, reliable, warp

STILL = 2 / 255
"""Input pixels that change less than this between frames count as still, for flicker."""


def warping_error(results: torch.Tensor, frames: torch.Tensor, method: str = "dis") -> list[float]:
    """Per frame ``i >= 1``: the mean squared difference between result ``i`` and result ``i - 1``
    warped by the input's flow, over the pixels where that warp is reliable (``[N, H, W, 3]``, 0..1)."""
    errors = []
    for index in range(1, len(frames)):
        backward = optical_flow(frames[index], frames[index - 1], method)
        forward = optical_flow(frames[index - 1], frames[index], method)
        mask = reliable(backward, forward)
        previous = warp(results[index - 1].permute(2, 0, 1).unsqueeze(0), backward)[0].permute(1, 2, 0)
        squared = ((results[index] - previous) ** 2).mean(-1)
        errors.append(float((squared * mask).sum() / mask.sum().clamp(min=1)))
    return errors


def flicker(results: torch.Tensor, frames: torch.Tensor) -> list[float]:
    """Per frame ``i >= 1``: the mean absolute change of the result where the input stays still."""
    values = []
    for index in range(1, len(frames)):
        still = ((frames[index] - frames[index - 1]).abs().amax(-1) < STILL).float()
        change = (results[index] - results[index - 1]).abs().mean(-1)
        values.append(float((change * still).sum() / still.sum().clamp(min=1)))
    return values
