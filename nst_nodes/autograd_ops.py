"""ReLU, max-pooling and the Gram matrix with leaner backward passes than PyTorch's own.

PyTorch's ReLU keeps its float output and max-pooling keeps its float input, so every VGG
activation stays alive until the backward pass reaches it: about 290 MB at 512x512.
Neither needs it: ReLU's gradient only needs where the output was positive (a 1-byte
mask), and max-pooling's only needs the argmax indices. Activations a loss reads are
kept by that loss anyway, so their ReLU keeps the output itself rather than a mask.

The Gram matrix ``F Fᵀ`` is one matrix product, but autograd differentiates it as a product
of two different matrices: two more products and a sum. Its gradient is one product,
``(dG + dGᵀ) F``. With bf16 features (the reduced-precision pass) the Gram is still summed in
fp32, while its gradient, which flows back into the bf16 network anyway, is a bf16 product:
2-4x faster on CPUs with native bf16.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch.autograd import Function


class FunctionContext(Protocol):
    """What the functions below use of autograd's ``ctx`` (a ``torch.autograd.function.BackwardCFunction``)."""

    @property
    def saved_tensors(self) -> tuple[torch.Tensor, ...]: ...

    def save_for_backward(self, *tensors: torch.Tensor | None) -> None: ...

    def mark_dirty(self, *tensors: torch.Tensor) -> None: ...


class _MaxPoolContext(FunctionContext, Protocol):
    input_size: torch.Size


class _GramContext(FunctionContext, Protocol):
    scale: float


class _ReLU(Function):
    @staticmethod
    def forward(ctx: FunctionContext, x: torch.Tensor, keep_output: bool, inplace: bool) -> torch.Tensor:
        if inplace:
            out = x.clamp_min_(0)
            ctx.mark_dirty(out)
        else:
            out = x.clamp_min(0)
        ctx.save_for_backward(out if keep_output else (out > 0).view(torch.uint8))  # uint8 multiplies faster than bool
        return out

    @staticmethod
    def backward(ctx: FunctionContext, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (saved,) = ctx.saved_tensors
        if saved.dtype == torch.uint8:
            return grad * saved, None, None
        return torch.ops.aten.threshold_backward(grad, saved, 0), None, None


class _MaxPool2x2(Function):
    @staticmethod
    def forward(ctx: _MaxPoolContext, x: torch.Tensor) -> torch.Tensor:
        out, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        ctx.save_for_backward(indices)
        ctx.input_size = x.shape[-2:]
        return out

    @staticmethod
    def backward(ctx: _MaxPoolContext, grad: torch.Tensor) -> torch.Tensor:
        (indices,) = ctx.saved_tensors
        # The aten op itself: F.max_unpool2d's Python size check imports sympy on first use (0.4 s).
        return torch.ops.aten.max_unpool2d(grad, indices, list(ctx.input_size))


def relu(x: torch.Tensor, keep_output: bool, inplace: bool) -> torch.Tensor:
    """``max(x, 0)``; ``keep_output``: the caller holds the result anyway, so save it instead of a mask."""
    return _ReLU.apply(x, keep_output, inplace)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2/stride 2 max-pooling, as ``nn.MaxPool2d(2, 2)``."""
    return _MaxPool2x2.apply(x)


class _Gram(Function):
    @staticmethod
    def forward(ctx: _GramContext, flat: torch.Tensor, weights: torch.Tensor | None, scale: float) -> torch.Tensor:
        ctx.save_for_backward(flat, weights)
        ctx.scale = scale
        full = flat.to(torch.promote_types(flat.dtype, torch.float32))
        return ((full if weights is None else full * weights) @ full.t()) * scale

    @staticmethod
    def backward(ctx: _GramContext, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        flat, weights = ctx.saved_tensors
        both = ((grad + grad.t()) * ctx.scale).to(flat.dtype)
        result = both @ flat
        return (result if weights is None else result * weights.to(flat.dtype)), None, None


def gram(flat: torch.Tensor, weights: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``scale · (F · diag(weights)) Fᵀ`` in at least fp32 for ``F`` ``[C, N]`` of any float dtype
    (``weights`` ``[N]`` or None: all 1); the gradient comes back in ``F``'s dtype."""
    return _Gram.apply(flat, weights, scale)
