"""3x3 convolutions through NNPACK's Winograd kernels, forward and input-gradient.

On CPUs without AVX-512 (e.g. 2-core AVX2 machines) NNPACK's Winograd transform runs
VGG's 3x3, stride-1, pad-1 convolutions 1.3-2x faster than oneDNN's direct kernels, with a
relative error around 1e-5. PyTorch only routes large batches to NNPACK and computes the
backward pass with direct kernels, so this module wires it in explicitly. The weights of an
NST network are frozen, so the backward pass needs only the gradient of the input, which is
itself a 3x3 convolution of the output gradient with the flipped, transposed kernel: both
passes run on Winograd, and no activation is saved for backward.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_PIXELS = 32 * 32
"""Below this many pixels per channel NNPACK's transforms cost more than they save (measured)."""


def available(x: torch.Tensor) -> bool:
    """True where the fast path pays: float32 on the CPU with NNPACK built in, outside autocast."""
    return (
        x.device.type == "cpu"
        and x.shape[-2] * x.shape[-1] >= MIN_PIXELS
        and x.dtype == torch.float32
        and torch.backends.nnpack.is_available()
        and not torch.is_autocast_enabled("cpu")
    )


def _convolve(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch._nnpack_spatial_convolution(x.contiguous(), weight, bias, [1, 1])


class _FrozenConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _convolve(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        # The input gradient is the output gradient convolved with the kernel's channels
        # swapped and flipped in space (a copy of a few MB, made when needed).
        transposed = weight.transpose(0, 1).flip(2, 3).contiguous()
        return _convolve(grad, transposed, None), None, None


def frozen_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a frozen 3x3/stride 1/pad 1 convolution, differentiable in ``x`` only."""
    return _FrozenConv3x3.apply(x, conv.weight.detach(), conv.bias.detach())
