"""Batch throughput on Dask: items per hour for different worker layouts, and what shared nodes save.

    python benchmarks/batch.py                     # 8 items at 256 px, 50 steps each
    python benchmarks/batch.py --items 4 --steps 20

The items are a sweep of 8 style weights over the shipped photo and painting (gatys.json), so
the model, the content features and the style statistics are shared by every item. Each layout
runs the same batch from an empty cache: 1 worker process with 2 torch threads, and 2 worker
processes with 1 thread each. "Shared saving" is the work that running the shared nodes once
avoided (their time, times the items beyond the first that needed them). Prints a table and
writes benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

from bench import cpu_flags

from graphrun import Folders
from graphrun.batch import Over
from graphrun.batch.client import run_batch
from nst_nodes import kernels
from nst_nodes.app import application
from nst_nodes.tuning import configure_process

ROOT = Path(__file__).resolve().parent.parent


def sweep(items: int) -> list[float]:
    """Style weights from 1e6 to 1e8 (gatys.json normalizes its Gram loss), evenly spaced on a log scale."""
    return [float(f"{10 ** (6 + 2 * i / max(items - 1, 1)):.3g}") for i in range(items)]


def measure(workers: int, threads: int, items: int, side: int, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        overrides = {
            "3.size": side,
            "4.size": side * side * 3 // 4,
            "15.steps": steps,
            "17.filename_prefix": "sweep_{index}",
            "19.filename_prefix": "history_{index}",
        }
        started = time.perf_counter()
        result = run_batch(
            ROOT / "graphs" / "gatys.json",
            [Over("12", "weight", tuple(sweep(items)))],
            overrides=overrides,
            workers=workers,
            threads=threads,
            cache_dir=Path(folder) / "cache",
            folders=Folders(output=Path(folder) / "out"),
            device="cpu",
            worker_hook=partial(configure_process, None),
            worker_environment=application().worker_environment(),
        )
        wall = time.perf_counter() - started
    if result.failed:
        raise SystemExit(f"{len(result.failed)} items failed: {result.failed[0].error}")
    busy = sum(node.seconds for node in result.nodes if node.outcome == "ran")
    return {
        "workers": workers,
        "threads": threads,
        "items": items,
        "wall_s": round(wall, 1),
        "items_per_hour": round(items * 3600 / wall, 1),
        "node_seconds": round(busy, 1),
        "shared_saving_s": round(result.shared_saving, 1),
        "optimize_s_per_item": round(
            sum(node.seconds for node in result.nodes if node.class_type == "NSTOptimize") / items, 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    machine = f"{kernels.machine()['cpu']}, {os.cpu_count()} cores, flags {' '.join(cpu_flags())}"
    print(f"machine: {machine}")
    rows = [measure(workers, threads, args.items, args.side, args.steps) for workers, threads in ((1, 2), (2, 1))]
    print(f"{args.items} items at {args.side} px, {args.steps} L-BFGS steps each, empty cache")
    print(f"{'layout':<22}{'wall s':>8}{'items/h':>9}{'optimize s/item':>17}{'shared saving s':>17}")
    for row in rows:
        layout = f"{row['workers']} worker x {row['threads']} thread"
        print(
            f"{layout:<22}{row['wall_s']:>8}{row['items_per_hour']:>9}{row['optimize_s_per_item']:>17}"
            f"{row['shared_saving_s']:>17}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "batch.json").write_text(
        json.dumps({"machine": machine, "side": args.side, "steps": args.steps, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
