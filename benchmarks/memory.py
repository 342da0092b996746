"""Memory of an optimization per megapixel: the measured peak against the estimate that refuses a size.

    python benchmarks/memory.py                     # 1, 2 and 4 megapixels (1024², 1448², 2048²), 13 steps each
    python benchmarks/memory.py --sides 512 1024    # other sizes
    python benchmarks/memory.py --sides 2048 --history 50 --plan-steps 50   # the default history, filled
    NST_MEMORY_LIMIT_MIB=15259 python benchmarks/memory.py --sides 2048 --history 50 --plan-steps 42   # within 16 GB

Each size runs in its own child process (so that its peak RSS is its own): the Caffe VGG19, the
shipped pair squared to the size, graphs/gatys.json's objective, then Optimize Image's settings
(L-BFGS, history in bf16) with a history of 2 pairs (``--history``), for the optimizer's first FP32_START steps
(in fp32 under every plan) and 3 steps (``--plan-steps``) of the pass plan a run chooses here, so that the peak
includes a full history and both phases.
Prints per size: the process's RSS with torch and the model loaded, its peak RSS
(Linux's VmHWM: the pictures, the targets, the optimization; of the fp32 start, and of the plan's steps alone,
the peak being reset in between: with a full history, the fp32 start holds at most FP32_START pairs, and the plan's
steps all of them), the growth,
Optimize Image's estimate of that growth (``optimization_bytes``), their ratio, and seconds per step of the plan
(the last 2 steps; the first of the plan's steps is left out) and of the fp32 start (its steps 2-10; the first
times the kernels and the plan). NST_CONV forces one kernel; the `plan` column shows what ran. The optimization
runs as Optimize Image's does: where its estimate does not fit in what is available (or in NST_MEMORY_LIMIT_MIB),
with the largest mmap threshold at which it does (``limits.fitting_allocator``); the last column shows the
threshold it ran with (the tuned one where it fits: 1.0 GiB in NST_TUNING=speed).
"""

from __future__ import annotations

# ruff: noqa: E402  (the imports below follow configure_process, which must run before torch is imported)
import os

from nst_nodes.tuning import configure_process

TUNING = configure_process()

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench import cpu_flags, sample_pair

from nst_nodes.limits import TUNED, amount, fitting_allocator, optimization_bytes
from nst_nodes.losses import gatys_objective, term_layers
from nst_nodes.nodes.network import deepest_layer
from nst_nodes.optimize import FP32_START, OptimizerSettings, optimize
from nst_nodes.tuning import mmap_threshold
from nst_nodes.vgg import load_vgg19

HISTORY = 2
PLAN_STEPS = 3


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: the peak)."""
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(side: int, history_size: int, plan_steps: int) -> dict:
    model = load_vgg19("caffe")
    before = status_mib("VmRSS")  # torch and the model: what the process holds before any picture
    content, style = sample_pair(side)
    objective = gatys_objective(model, content, style)
    start = model.preprocessing.normalize(content)
    settings = OptimizerSettings(steps=FP32_START + plan_steps, history_size=history_size)
    deepest = deepest_layer(term_layers(objective))
    finished: list[float] = []  # when each step ended: the first includes timing the kernels and the plan
    start_peak: list[float] = []  # the peak over the fp32 start

    def step_done(step: int, *_: object) -> None:
        finished.append(time.perf_counter())
        if step == FP32_START:
            start_peak.append(status_mib("VmHWM"))
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from now: the plan's own peak

    def needed(mapped_from: int | None = TUNED) -> int:
        return optimization_bytes(side, side, deepest, "cpu", settings, mapped_from)

    with fitting_allocator(needed, "cpu", f"{side}x{side}"):
        estimate, mapped_from = needed(), mmap_threshold()
        _, history = optimize(model, objective, start, settings, step_done)
    plan_peak = status_mib("VmHWM")
    return {
        "side": side,
        "megapixels": side * side / 1e6,
        "rss_before_mib": before,
        "peak_mib": max(start_peak[0], plan_peak),
        "fp32_start_peak_mib": start_peak[0],
        "plan_peak_mib": plan_peak,
        "estimate_mib": estimate / 2**20,
        "seconds_per_step": (finished[-1] - finished[-3]) / 2,
        "fp32_start_seconds_per_step": (finished[FP32_START - 1] - finished[0]) / (FP32_START - 1),
        "plan": history["precision"],
        "mapped_from": amount(mapped_from) if mapped_from else "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[1024, 1448, 2048])
    parser.add_argument("--history", type=int, default=HISTORY, help="L-BFGS pairs kept (Optimize Image's default: 50)")
    parser.add_argument("--plan-steps", type=int, default=PLAN_STEPS, help="steps after the fp32 start")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.history, args.plan_steps)))
        return
    print(
        f"machine: {', '.join(cpu_flags())}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"NST_TUNING={os.environ.get('NST_TUNING', 'speed')}, NST_CONV={os.environ.get('NST_CONV', 'auto')}; "
        f"history {args.history} pairs, {FP32_START} + {args.plan_steps} steps; "
        f"NST_MEMORY_LIMIT_MIB={os.environ.get('NST_MEMORY_LIMIT_MIB', 'unset')}"
    )
    print(
        " size      MP  before MiB  peak MiB  growth MiB  estimate MiB  estimate/growth  s/step  plan"
        "  (fp32 start: s/step, peak MiB; plan steps' peak MiB)  blocks mapped from"
    )
    for side in args.sides:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                str(side),
                "--history",
                str(args.history),
                "--plan-steps",
                str(args.plan_steps),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(f"{side}x{side}: failed: {child.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(child.stdout.strip().splitlines()[-1])
        growth = row["peak_mib"] - row["rss_before_mib"]
        print(
            f"{side:5d} {row['megapixels']:6.2f} {row['rss_before_mib']:11.0f} {row['peak_mib']:9.0f} "
            f"{growth:11.0f} {row['estimate_mib']:13.0f} {row['estimate_mib'] / growth:16.2f} "
            f"{row['seconds_per_step']:7.1f}  {row['plan']}"
            f"  ({row['fp32_start_seconds_per_step']:.1f}, {row['fp32_start_peak_mib']:.0f}; "
            f"{row['plan_peak_mib']:.0f})  {row['mapped_from']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
