"""Colour control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer", §5).

Two ways to keep the photo's colours while taking the painting's strokes:

- *luminance-only transfer*: stylize the luminance channel alone (style luminance matched to
  the content's mean and deviation first), then put the content's chrominance back;
- *colour histogram matching*: move the style image's colours to the content's mean and
  covariance with a linear map ``x' = A (x - μ_s) + μ_c``, ``A Σ_s Aᵀ = Σ_c``, before its style
  statistics are computed.

All functions take and return ComfyUI ``IMAGE`` tensors ``[B, H, W, 3]`` (RGB, 0..1).
"""

from __future__ import annotations

import torch

from .image import resize_image

RGB_TO_YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)  # NTSC YIQ, the colour space of the paper
MATCH_METHODS = ("symmetric", "cholesky")
EPSILON = 1e-5  # added to variances: a flat image has none


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return image @ RGB_TO_YIQ.to(image).t()


def yiq_to_rgb(yiq: torch.Tensor) -> torch.Tensor:
    return yiq @ torch.linalg.inv(RGB_TO_YIQ.double()).to(yiq).t()


def luminance(image: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """The Y channel repeated into RGB (a grey picture the network reads as usual).

    With ``reference``, Y is shifted and scaled to the reference's luminance mean and standard
    deviation, as the paper does to the style image before luminance-only transfer.
    """
    y = rgb_to_yiq(image)[..., :1]
    if reference is not None:
        target = rgb_to_yiq(reference)[..., :1]
        y = (y - y.mean()) * (target.std() / (y.std() + EPSILON)) + target.mean()
    return y.clamp(0.0, 1.0).expand(*y.shape[:-1], 3).contiguous()


def keep_colors(image: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """The luminance of ``image`` with the chrominance (I, Q) of ``colors``, which is resized to it."""
    if colors.shape[1:3] != image.shape[1:3]:
        colors = resize_image(colors, image.shape[1], image.shape[2])
    yiq = torch.cat([rgb_to_yiq(image)[..., :1], rgb_to_yiq(colors)[..., 1:].expand(len(image), -1, -1, -1)], dim=-1)
    return yiq_to_rgb(yiq).clamp(0.0, 1.0)


def _matrix_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=EPSILON) ** power) @ vectors.t()


def color_transform(
    image: torch.Tensor, reference: torch.Tensor, method: str = "symmetric"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, b)`` with ``A x + b`` having the reference's colour mean and covariance.

    ``symmetric``: ``A = Σ_c^½ Σ_s^-½`` (the "image analogies" variant of the paper);
    ``cholesky``: ``A = L_c L_s⁻¹``. Both satisfy ``A Σ_s Aᵀ = Σ_c``.
    """
    if method not in MATCH_METHODS:
        raise ValueError(f"method must be one of {MATCH_METHODS}, not {method!r}")
    source = image.reshape(-1, 3).double()
    target = reference.reshape(-1, 3).double()
    mean_s, mean_c = source.mean(0), target.mean(0)
    eye = EPSILON * torch.eye(3, dtype=torch.float64)
    cov_s = torch.cov(source.t(), correction=0) + eye
    cov_c = torch.cov(target.t(), correction=0) + eye
    if method == "symmetric":
        matrix = _matrix_power(cov_c, 0.5) @ _matrix_power(cov_s, -0.5)
    else:
        matrix = torch.linalg.cholesky(cov_c) @ torch.linalg.inv(torch.linalg.cholesky(cov_s))
    return matrix, mean_c - matrix @ mean_s


def match_colors(image: torch.Tensor, reference: torch.Tensor, method: str = "symmetric") -> torch.Tensor:
    """``image`` with the colour mean and covariance of ``reference`` (exact before clamping to 0..1)."""
    matrix, offset = color_transform(image, reference, method)
    moved = image.double() @ matrix.t() + offset
    return moved.clamp(0.0, 1.0).to(image.dtype)
