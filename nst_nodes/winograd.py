"""3x3 convolutions through NNPACK's Winograd kernels (one of the paths kernels.py chooses from).

On some CPUs (a 2-core AVX2 EPYC) NNPACK's Winograd transform runs VGG's 3x3, stride-1,
pad-1 convolutions 1.3-2x faster than oneDNN's direct kernels, with a relative error around
1e-5; on others (AVX-512) it is slower. PyTorch only routes large batches to NNPACK, so it is
called explicitly here.
"""

from __future__ import annotations

import math

import torch

MIN_PIXELS = 32 * 32
"""Below this many pixels per channel NNPACK's transforms cost more than they save (measured)."""

BAND_ELEMENTS = 1 << 22
"""Most output elements (channels x rows x width) per NNPACK call. NNPACK's workspace is about
3.6x the output and PyTorch keeps the largest one for the life of the process: 233 MB for a
64-channel 512x512 layer in one call (measured), 58 MB in bands of this size."""


def available(x: torch.Tensor) -> bool:
    """True where the fast path pays: float32 on the CPU with NNPACK built in, outside autocast."""
    return (
        x.device.type == "cpu"
        and x.shape[-2] * x.shape[-1] >= MIN_PIXELS
        and x.dtype == torch.float32
        and torch.backends.nnpack.is_available()
        and not torch.is_autocast_enabled("cpu")
    )


def convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Same-size 3x3 convolution, in horizontal bands of at most ``BAND_ELEMENTS`` outputs."""
    torch.backends.nnpack.is_available()  # initializes NNPACK on first use (microseconds after that)
    batch, _, height, width = x.shape
    bands = math.ceil(weight.shape[0] * height * width / BAND_ELEMENTS)
    if bands <= 1:
        return torch._nnpack_spatial_convolution(x.contiguous(), weight, bias, [1, 1])
    rows = math.ceil(height / bands)
    out = x.new_empty((batch, weight.shape[0], height, width))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        first = max(top - 1, 0)  # one row of context on each side; at the image border, the zero padding
        band = x[:, :, first : min(bottom + 1, height)].contiguous()
        out[:, :, top:bottom] = torch._nnpack_spatial_convolution(band, weight, bias, [1, 1])[
            :, :, top - first : bottom - first
        ]
    return out
