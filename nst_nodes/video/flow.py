"""Optical flow between frames, backward warps and the reliability of a warp (Ruder, Dosovitskiy &
Brox 2016, after Sundaram et al. 2010).

A flow ``w`` from frame ``a`` to frame ``b`` says where each pixel of ``a`` is in ``b``:
``a(p) ≈ b(p + w(p))``. So ``warp(b, w)`` makes ``a`` out of ``b``: the previous stylized frame
warped by the flow from the current frame to the previous one starts the current frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("dis", "farneback")
CUT_FRACTION = 0.3
"""A frame whose warp from the previous one is reliable on less than this share of its pixels starts
fresh: a scene cut (or motion the flow cannot follow), where carrying strokes over would smear them."""


def _gray(frame: torch.Tensor) -> np.ndarray:
    """``[H, W, 3]`` 0..1 -> 8-bit luminance, what OpenCV's flow methods take."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=frame.dtype, device=frame.device)
    luminance = (frame[..., :3] * weights).sum(-1).clamp(0, 1)
    return np.ascontiguousarray((luminance * 255 + 0.5).to(torch.uint8).cpu().numpy())


def optical_flow(a: torch.Tensor, b: torch.Tensor, method: str = "dis") -> torch.Tensor:
    """The flow ``[H, W, 2]`` (x, y in pixels) from frame ``a`` to frame ``b`` (each ``[H, W, 3]``, 0..1).

    ``dis``: OpenCV's DIS flow (Kroeger et al. 2016), medium preset, with variational refinement:
    no weights, milliseconds a frame. ``farneback``: OpenCV's Farnebäck flow, slower and blurrier."""
    import cv2

    if a.shape != b.shape:
        raise ValueError(f"optical flow: the frames differ in size ({list(a.shape)} and {list(b.shape)})")
    first, second = _gray(a), _gray(b)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]  # not in cv2's stubs
        flow = dis.calc(first, second, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(
            first, second, np.zeros((*first.shape, 2), np.float32), 0.5, 4, 15, 3, 5, 1.2, 0
        )
    else:
        raise ValueError(f"optical flow: method {method!r} is not one of {', '.join(METHODS)}")
    return torch.from_numpy(flow)


def _landing(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel ``p`` lands, ``p + flow(p)``: x and y in pixels ``[..., H, W]`` of a flow ``[..., H, W, 2]``."""
    height, width = flow.shape[-3:-1]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=flow.dtype, device=flow.device),
        torch.arange(width, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` (``[B, C, H, W]``) sampled at ``p + flow(p)``, bilinear, for one flow ``[H, W, 2]`` or one per
    picture ``[B, H, W, 2]``; outside the frame the border is repeated (the reliability mask marks those pixels
    anyway)."""
    height, width = flow.shape[-3:-1]
    x, y = _landing(flow.float().to(image.device))
    grid = torch.stack((x * (2 / max(width - 1, 1)) - 1, y * (2 / max(height - 1, 1)) - 1), dim=-1)
    grid = grid.expand(image.shape[0], -1, -1, -1)
    warped = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return warped.to(image.dtype)


def reliable(backward: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """Where the warp of the previous frame into the current one can be trusted: ``[H, W]``, 1 or 0.

    ``backward``: the flow from the current frame to the previous one; ``forward``: from the previous
    frame to the current one. A pixel is unreliable where the two do not undo each other (it was
    hidden in the previous frame: a disocclusion) or at a motion boundary (Sundaram et al.'s tests,
    with their thresholds, as Ruder et al. use them)."""
    along = warp(forward.permute(2, 0, 1).unsqueeze(0), backward)[0].permute(1, 2, 0)  # forward at p + w(p)
    round_trip = ((backward + along) ** 2).sum(-1)
    consistent = round_trip <= 0.01 * ((backward**2).sum(-1) + (along**2).sum(-1)) + 0.5
    dx = torch.zeros_like(backward)
    dy = torch.zeros_like(backward)
    dx[:, :-1] = backward[:, 1:] - backward[:, :-1]
    dy[:-1] = backward[1:] - backward[:-1]
    gradient = (dx**2).sum(-1) + (dy**2).sum(-1)
    smooth = gradient <= 0.01 * (backward**2).sum(-1) + 0.002
    return (consistent & smooth).float()


def inside(flow: torch.Tensor) -> torch.Tensor:
    """Where ``p + flow(p)`` lands inside the frame, for a flow ``[..., H, W, 2]``: ``[..., H, W]``, 1 or 0. A crop's
    flow warps from the crop alone, so what comes from outside it cannot count."""
    height, width = flow.shape[-3:-1]
    x, y = _landing(flow)
    return ((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)).float()


def is_cut(mask: torch.Tensor) -> bool:
    """A scene cut: the warp is reliable on less than :data:`CUT_FRACTION` of the frame."""
    return float(mask.mean()) < CUT_FRACTION
