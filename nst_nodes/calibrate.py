"""``nst calibrate``: time the convolution kernels of VGG19's layers on this machine, again.

    nst calibrate                 # the shapes of 256², 512² and 1024² images (about a minute)
    nst calibrate --sizes 384x288

Forgets every choice remembered for this machine (kernels and pass plans, at every size), times
every candidate for every convolution of the network at the sizes named (forward and input
gradient), remembers the winners and prints them. Other sizes are timed again on first use.
"""

from __future__ import annotations

import argparse
import re

import torch

from graphrun.arguments import at_least_one

from . import kernels
from .limits import MAX_SIDE, check_pixels
from .vgg import BLOCK_CONVS, BLOCK_WIDTHS

SHORT = {"winograd": "wino", "winograd_f4": "f4", "direct": "direct", "channels_last": "cl"}


def conv_shapes(height: int, width: int) -> list[tuple[str, kernels.Shape]]:
    """(layer name, (in, out, height, width)) of VGG19's convolutions for an image of this size."""
    shapes, channels = [], 3
    for block, (convs, out) in enumerate(zip(BLOCK_CONVS, BLOCK_WIDTHS, strict=True), start=1):
        for conv in range(1, convs + 1):
            shapes.append((f"conv{block}_{conv}", (channels, out, height, width)))
            channels = out
        height, width = height // 2, width // 2
    return shapes


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not match or int(match.group(1)) < 8:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512 or 384x288")
    return int(match.group(1)), int(match.group(2) or match.group(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nst calibrate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=_size,
        nargs="+",
        default=[(256, 256), (512, 512), (1024, 1024)],
        metavar="WxH",
        help="image sizes whose layer shapes are timed (default 256 512 1024)",
    )
    parser.add_argument(
        "--threads",
        type=at_least_one,
        default=None,
        help="torch threads to calibrate for (default torch's; a batch worker uses its --threads)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for width, height in args.sizes:  # the nodes' limits, before minutes of timing
        if max(width, height) > MAX_SIDE:
            parser.error(
                f"--sizes: {width}x{height} has a side longer than {MAX_SIDE} px; name a smaller size, e.g. 1024"
            )
        try:
            check_pixels(width, height, "--sizes")
        except ValueError as error:
            parser.error(str(error))
    if kernels.forced_path() is not None:
        print(f"NST_CONV forces {kernels.forced_path()}: nothing to calibrate")
        return 0
    chooser = kernels.chooser()
    chooser.forget()
    description = chooser.description
    print(
        f"{description['cpu']} ({description['flags'] or 'no listed flags'}), {description['threads']} threads, "
        f"torch {description['torch']} -> {chooser.file}"
    )
    print(
        "winner per layer and direction, and each candidate's milliseconds at the layer's shape, or at most "
        f"{kernels.MAX_CALIBRATION_PIXELS} pixels of it (wino = NNPACK Winograd, "
        "f4 = Winograd F(4x4) on kernels transformed once, cl = channels_last)"
    )
    print(f"{'layer':<9}{'shape':>16}  {'forward':<52}{'input gradient'}")
    for width, height in args.sizes:
        for layer, shape in conv_shapes(height, width):
            paths = kernels.candidates_for(shape)
            cells = []
            for direction in (shape, kernels.input_gradient(shape)):
                path = chooser.choose(direction, paths)
                seconds = chooser.choices[kernels.shape_key(direction)].seconds
                others = " ".join(f"{SHORT[name]} {value * 1e3:.2f}" for name, value in sorted(seconds.items()))
                cells.append(f"{SHORT[path]:<7}({others})")
            channels_in, channels_out, height, width = shape
            real = f"{channels_in}>{channels_out}@{width}x{height}"
            print(f"{layer:<9}{real:>16}  {cells[0]:<52}{cells[1]}")
    return 0
