"""The stylizer network of Johnson, Alahi & Fei-Fei (ECCV 2016), with instance normalization (Ulyanov et
al. 2016) and upsample-then-convolve decoding (no checkerboard artefacts), at a chosen width.

Width 32 is Johnson's network; 16 runs four times faster on a CPU. The network halves the image twice, so
:func:`stylize` pads any size to a multiple of 4 by reflection and crops the result back.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..optimize import best_in_turns, device_label, native_bf16, plan_sample
from ..types import Stylizer

JOHNSON_WIDTH = 32
RESIDUAL_BLOCKS = 5
SCALE = 4  # two stride-2 convolutions
TAIL_LAYOUTS = ("contiguous", "channels_last")
"""Memory layouts of the last convolution's input while training (:attr:`StylizerNetwork.tail_layout`)."""


def _conv(inputs: int, outputs: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(inputs, outputs, kernel, stride))


def _block(inputs: int, outputs: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution, instance norm, ReLU."""
    return nn.Sequential(_conv(inputs, outputs, kernel, stride), nn.InstanceNorm2d(outputs, affine=True), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(channels, channels, 3), _conv(channels, channels, 3), nn.InstanceNorm2d(channels, affine=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsample(nn.Module):
    """Nearest-neighbour doubling, then a convolution block."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.block = _block(inputs, outputs, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(F.interpolate(x, scale_factor=2, mode="nearest"))


class StylizerNetwork(nn.Module):
    """``[B, 3, H, W]`` RGB 0..1 -> the stylized image, same shape (H and W multiples of 4).

    The network computes a change to its input, and its last layer starts at zero: like the optimizer, which
    starts from the photo, training starts from the identity and learns the style's change, so the content is
    there from the first step rather than learnt over thousands (Johnson's network maps to the image directly).
    """

    tail_layout = "contiguous"
    """The memory layout of the last convolution's input while training: its input gradient (a 9x9 convolution to
    3 channels) took oneDNN 5x as long from NCHW as channels-last on an AVX2 EPYC; timed per machine by training."""

    def __init__(self, width: int = JOHNSON_WIDTH, blocks: int = RESIDUAL_BLOCKS) -> None:
        super().__init__()
        self.width, self.blocks = width, blocks
        last = nn.Conv2d(width, 3, 9)
        with torch.no_grad():
            for parameter in last.parameters():
                parameter.zero_()
        self.layers = nn.Sequential(
            _block(3, width, 9),
            _block(width, 2 * width, 3, stride=2),
            _block(2 * width, 4 * width, 3, stride=2),
            *[Residual(4 * width) for _ in range(blocks)],
            Upsample(4 * width, 2 * width),
            Upsample(2 * width, width),
            nn.ReflectionPad2d(4),
            last,
        )

    @property
    def architecture(self) -> str:
        """``WIDTHxBLOCKS``: what the timings remembered for this network (its plans) depend on."""
        return f"{self.width}x{self.blocks}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.layers[:-1](x)
        if self.training and self.tail_layout == "channels_last":
            features = features.contiguous(memory_format=torch.channels_last)
        return x + self.layers[-1](features)


def build(stylizer: Stylizer) -> StylizerNetwork:
    """The network a STYLIZER value describes, with its weights; a ValueError says what does not fit.

    The shape a file names is checked against its tensors before anything is allocated (on the meta
    device), so that a crafted width or block count cannot exhaust the memory."""
    width, blocks, weights = stylizer["width"], stylizer["blocks"], stylizer["weights"]
    largest = max((max(value.shape, default=1) for value in weights.values()), default=0)
    if not (1 <= blocks <= len(weights) and 1 <= width <= largest):
        raise ValueError(
            f"stylizer: a network of width {width} with {blocks} residual blocks cannot be what its "
            f"{len(weights)} tensors hold; it was not made by Train Stylizer"
        )
    with torch.device("meta"):
        expected = {name: value.shape for name, value in StylizerNetwork(width, blocks).state_dict().items()}
    if expected != {name: value.shape for name, value in weights.items()}:
        raise ValueError(
            f"stylizer: its tensors do not fit a network of width {width} with {blocks} residual blocks; "
            "it was not made by Train Stylizer"
        )
    if not all(bool(torch.isfinite(value).all()) for value in weights.values()):
        raise ValueError("stylizer: its weights hold NaN or infinite values (a diverged training?); train it again")
    network = StylizerNetwork(width, blocks)
    network.load_state_dict(weights, strict=True)
    return network.eval().requires_grad_(False)


def stylize(network: StylizerNetwork, images: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """IMAGE ``[B, H, W, 3]`` -> IMAGE, any size: padded to a multiple of 4 by reflection, cropped back.
    ``precision`` ``bf16``: the network runs under autocast (its change to the picture is added in fp32)."""
    height, width = images.shape[1:3]
    x = images.permute(0, 3, 1, 2)
    pad_bottom, pad_right = -height % SCALE, -width % SCALE
    if pad_bottom or pad_right:
        mode = "reflect" if min(height, width) > max(pad_bottom, pad_right) else "replicate"
        x = F.pad(x, (0, pad_right, 0, pad_bottom), mode=mode)
    with autocast_in(precision, x.device):
        stylized = network(x)
    return stylized.float()[:, :, :height, :width].permute(0, 2, 3, 1)


def autocast_in(precision: str, device: torch.device) -> torch.autocast:
    """The block in which the stylizer's passes run in ``precision`` (bf16: autocast; fp32: as they are), when it
    stylizes and when it trains."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


APPLY_PRECISIONS = ("auto", "fp32", "bf16")
KEY_STEP = 64
"""Sizes share :func:`apply_precision`'s choice within steps of this many pixels: timing one costs about six
passes, more than a single picture's."""


def apply_precision(precision: str, network: StylizerNetwork, frame: torch.Tensor) -> str:
    """What :func:`stylize` runs in for ``precision`` at IMAGE ``frame``'s size: ``auto`` is bf16 where the hardware
    runs it natively and a pass of it timed faster than fp32's, else fp32. Timed once per machine, network shape
    and size (to ``KEY_STEP`` pixels; a larger frame's on its centre crop of ``PLAN_PIXELS``, shared by larger
    sizes, as the optimizer's pass plans), remembered with the kernel choices."""
    if precision not in APPLY_PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(APPLY_PRECISIONS)}")
    if precision != "auto":
        return precision
    if not native_bf16(frame.device):
        return "fp32"
    candidates = ("fp32", "bf16")
    sample = plan_sample(frame.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    height, width = (-(-side // KEY_STEP) * KEY_STEP for side in sample.shape[1:3])
    key = f"stylizer:{'|'.join(candidates)}:{network.architecture}@{height}x{width}:{device_label(frame.device)}"

    def time_them() -> dict[str, float]:
        with torch.no_grad():
            runs = {candidate: partial(stylize, network, sample, candidate) for candidate in candidates}
            return best_in_turns(runs, 2, frame.device)

    return kernels.chooser().measured(key, candidates, time_them)
