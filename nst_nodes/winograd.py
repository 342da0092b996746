"""3x3 convolutions by Winograd's minimal filtering: two of the paths kernels.py chooses from.

Winograd's F(m x m, 3x3) computes m x m outputs of a 3x3 convolution from an (m+2) x (m+2) input
tile with (m+2)² multiplications instead of 9m² (Lavin & Gray, arXiv:1509.09308), at a relative
error around 1e-5 in fp32.

* :func:`convolve`: NNPACK's F(6x6, 3x3). On some CPUs (a 2-core AVX2 EPYC) it runs VGG's
  large, shallow layers 1.3-2x faster than oneDNN's direct kernels; on others (AVX-512) it is
  slower. PyTorch only routes large batches to NNPACK, so it is called explicitly here. It
  transforms the kernels again at every call: 64 MB for a 512-channel layer, which costs more
  than the convolution itself on the deep layers' small images.
* :func:`convolve_pretransformed`: F(4x4, 3x3) as three matrix products (input transform,
  one product per tile position, output transform) on kernels transformed once
  (:func:`transform_weight`): the weights are frozen. On the deep layers (256-512 channels)
  of the AVX2 EPYC it is 2x faster than oneDNN direct and NNPACK.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def _kron(matrix: list[list[float]]) -> torch.Tensor:
    """``m ⊗ m``: the 2-D transform ``m · tile · mᵀ`` of flattened tiles as one matrix."""
    rows = torch.tensor(matrix, dtype=torch.float32)  # the convolutions' dtype: no cast at each call
    return torch.kron(rows, rows)


# F(4x4, 3x3) on the points 0, ±1, ±2, ∞ (Lavin & Gray).
_INPUT = _kron(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ]
)
_KERNEL = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
)
_OUTPUT = _kron([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])
TILE, OUT = 6, 4
TILE_ELEMENTS = 1 << 23
"""Most elements of each transformed-tile intermediate of F(4x4) per band (36 per tile and channel: 2.25x the
picture's). Unbanded, they took several GiB at once at 2048² (docs/performance.md#memory)."""


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[K, C, 3, 3]`` -> ``[36, C, K]``: each kernel as a 6x6 tile, one ``C x K`` matrix per tile
    position (4x the weight's memory)."""
    kernel = _KERNEL.to(weight.dtype)
    tiles = kernel @ weight @ kernel.t()  # [K, C, 6, 6]
    by_position = tiles.permute(2, 3, 1, 0).reshape(TILE * TILE, weight.shape[1], weight.shape[0])
    return by_position.contiguous()


def convolve_pretransformed(x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Same-size 3x3 convolution of ``x`` ``[N, C, H, W]`` with a kernel from :func:`transform_weight`, in
    horizontal bands of tile rows whose transformed tiles hold at most ``TILE_ELEMENTS`` each."""
    batch, channels, height, width = x.shape
    outputs = transformed.shape[2]
    rows, columns = -(-height // OUT), -(-width // OUT)
    padded = F.pad(x, (1, OUT * columns + 1 - width, 1, OUT * rows + 1 - height))  # zeros around, to whole tiles
    result = x.new_empty((batch, outputs, OUT * rows, OUT * columns))
    band = max(1, TILE_ELEMENTS // (TILE * TILE * batch * columns * max(channels, outputs)))
    for top in range(0, rows, band):
        bottom = min(top + band, rows)
        _convolve_tiles(padded[:, :, OUT * top : OUT * bottom + 2], transformed, result[:, :, OUT * top : OUT * bottom])
    if OUT * rows != height or OUT * columns != width:
        result = result[:, :, :height, :width].contiguous()
    if bias is not None:
        result += bias.view(-1, 1, 1)
    return result


def _convolve_tiles(padded: torch.Tensor, transformed: torch.Tensor, result: torch.Tensor) -> None:
    """Convolve ``padded`` (whole tiles with their border) into the view ``result``."""
    batch, outputs, height, width = result.shape
    channels, rows, columns = padded.shape[1], height // OUT, width // OUT
    step_n, step_c, step_y, step_x = padded.stride()
    tiles = padded.as_strided(  # overlapping 6x6 tiles every 4 pixels: [6, 6, N, rows, columns, C]
        (TILE, TILE, batch, rows, columns, channels),
        (step_y, step_x, step_n, OUT * step_y, OUT * step_x, step_c),
    ).reshape(TILE * TILE, -1)
    transformed_input = (_INPUT.to(padded.dtype) @ tiles).view(TILE * TILE, -1, channels)
    products = torch.bmm(transformed_input, transformed)  # [36, tiles, K]
    out = (_OUTPUT.to(padded.dtype) @ products.view(TILE * TILE, -1)).view(OUT, OUT, batch, rows, columns, outputs)
    result.view(batch, outputs, rows, OUT, columns, OUT).copy_(out.permute(2, 5, 3, 0, 4, 1))


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
