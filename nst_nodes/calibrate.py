"""``nst calibrate``: time the convolution kernels of VGG19's layers and OpenMP's wait policies on this machine, again.

    nst calibrate                 # the shapes of 256², 512² and 1024² images, then the wait policies (about 2 min)
    nst calibrate --sizes 384x288

Forgets every choice remembered for this machine (kernels and pass plans, at every size), times
every candidate for every convolution of the network at the sizes named (forward and input
gradient), remembers the winners and prints them. Other sizes are timed again on first use.
Then it times L-BFGS steps under each of :data:`tuning.WAIT_POLICIES`, each in a process of its
own (OpenMP reads its policy once, when it loads), and remembers the fastest for ``nst``'s
processes to set before torch loads.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from graphrun.arguments import at_least_one

from . import kernels, tuning
from .files import FileRuleError
from .image import load_image, resize_image
from .limits import MAX_SIDE, check_pixels
from .losses import gatys_objective
from .optimize import OptimizerSettings, optimize
from .vgg import BLOCK_CONVS, BLOCK_WIDTHS, load_vgg19

SAMPLES = Path(__file__).resolve().parent / "samples"
WAIT_STEPS = {128: 10, 320: 3}
"""Sides at which the wait policies are timed, and L-BFGS steps timed at each (after two): a small size, where
every small operation wakes OpenMP's threads, and about the shipped graph's."""
WAIT_ROUNDS = 2
"""Each policy's process runs this many times, taking turns with the others; the best of its runs counts."""

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
    parser = argparse.ArgumentParser(prog="nst calibrate", description=__doc__.splitlines()[0].replace("``", ""))
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
        print(f"NST_CONV forces {kernels.forced_path()}: no kernels to calibrate")
        calibrate_wait_policy()
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
    calibrate_wait_policy()
    return 0


def step_seconds(side: int, steps: int) -> float:
    """Seconds per fp32 L-BFGS step of Gatys' objective on the shipped pair at ``side``², over ``steps`` steps after
    two (a wait policy's process runs it)."""
    model = load_vgg19()
    content, style = (
        resize_image(load_image(SAMPLES / name), side, side) for name in ("tubingen.jpg", "starry_night.jpg")
    )
    objective = gatys_objective(model, content, style)
    start = model.preprocessing.normalize(content)
    marks: list[float] = []
    optimize(
        model,
        objective,
        start,
        OptimizerSettings(steps + 2, precision="fp32"),
        lambda *_: marks.append(time.perf_counter()),
    )
    return (marks[-1] - marks[1]) / steps


def policy_seconds(policy: str, steps: dict[int, int] = WAIT_STEPS) -> dict[str, float]:
    """:func:`step_seconds` at each side of ``steps``, in a fresh process whose OpenMP waits as ``policy`` says (it
    reads its variables once, when torch loads), at torch's default threads."""
    code = (
        "import json, os, sys; from nst_nodes.tuning import WAIT_VARIABLES, configure_process; configure_process(); "
        "from nst_nodes.calibrate import step_seconds; "
        "print(json.dumps({'openmp': {name: os.environ.get(name) for name in WAIT_VARIABLES}, "
        "'seconds': {side: step_seconds(int(side), steps) for side, steps in json.loads(sys.argv[1]).items()}}))"
    )
    environment = {**tuning.untuned_environment(), **tuning.WAIT_POLICIES[policy], "NST_WAIT_POLICY": policy}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(steps)], env=environment, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"timing OpenMP's wait policy {policy} failed: {last}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    wanted = {name: tuning.WAIT_POLICIES[policy].get(name) for name in tuning.WAIT_VARIABLES}
    if report["openmp"] != wanted:
        raise RuntimeError(f"the process timing the wait policy {policy} ran with {report['openmp']}, not {wanted}")
    return {side: float(seconds) for side, seconds in report["seconds"].items()}


def calibrate_wait_policy() -> None:
    """Time every wait policy (:func:`policy_seconds`, in turns), print them and remember the one whose steps take
    the least time relative to the fastest at each side."""
    user_set = [name for name in tuning.WAIT_VARIABLES if name in tuning.untuned_environment()]
    if user_set:
        print(f"OpenMP's wait policy: yours ({', '.join(user_set)} set), not timed")
        return
    seconds: dict[str, dict[str, float]] = {}
    for _ in range(WAIT_ROUNDS):
        for policy in tuning.WAIT_POLICIES:
            timed = policy_seconds(policy)
            best = seconds.setdefault(policy, timed)
            seconds[policy] = {side: min(best[side], value) for side, value in timed.items()}
    fastest = {side: min(timed[side] for timed in seconds.values()) for side in next(iter(seconds.values()))}
    chosen = min(seconds, key=lambda policy: sum(seconds[policy][side] / fastest[side] for side in fastest))
    print(
        f"OpenMP's wait policy, seconds per L-BFGS step (best of {WAIT_ROUNDS}, each in a process of its own, "
        f"{tuning.wait_machine()['cores']} cores):"
    )
    for policy, timed in seconds.items():
        cells = "  ".join(f"{side}²: {value:.3f}" for side, value in timed.items())
        print(f"  {policy:<12}{cells}{'  <- chosen' if policy == chosen else ''}")
    try:
        file = tuning.remember_wait_policy(chosen, seconds)
    except (FileRuleError, OSError) as error:
        print(f"not remembered: {error}")
    else:
        print(f"-> {file} (nst sets it before torch loads; NST_WAIT_POLICY overrides it)")
