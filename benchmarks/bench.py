"""Speed and memory of the optimizer step, against the hardware and against pastiche.

    python benchmarks/bench.py                # full run, ~25 min on 2 cores
    python benchmarks/bench.py --quick        # smaller sizes and fewer steps, ~5 min
    python benchmarks/bench.py --device cuda  # on the GPU: synchronized timers, peak GPU memory
    python benchmarks/bench.py --dry-run      # tiny sizes: every part runs, no figure means anything

Prints a table and writes benchmarks/results/bench.json. Every figure is measured in this
run on this machine; each measurement that needs a clean peak-RSS reading runs in its own
child process (this script with ``--worker``). On CUDA the timers wait for the GPU
(``torch.cuda.synchronize``), peak memory is ``torch.cuda.max_memory_allocated`` of the child
(host RSS is kept beside it), pastiche runs on the GPU too, and the rows that only mean something
on a CPU (one forced CPU kernel; bf16 without native bf16; the CPU allocator's tuning modes) are
skipped with the reason.
"""

from __future__ import annotations

# ruff: noqa: E402  (the imports below follow configure_process, which must run before torch is imported)
from nst_nodes.tuning import configure_process, untuned_environment

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
from nst_nodes.losses import STYLE_LAYERS, ObjectiveFunction, gatys_objective, term_layers
from nst_nodes.optimize import OptimizerSettings, optimize, synchronize
from nst_nodes.types import Objective
from nst_nodes.vgg import BLOCK_CONVS, BLOCK_WIDTHS, VGGModel, load_vgg19

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "nst_nodes" / "samples"
RUNS = (("auto", "auto"), ("fp32", "auto"), ("fp32", "winograd"), ("fp32", "direct"), ("bf16", "auto"))
"""(precision, kernels) per timed row: the default first, then fp32 on each kernel, then bf16 passes."""
PASTICHE_CLOCK = 0.1
"""pastiche prints its elapsed time to 0.1 s: on a GPU a step is far shorter, so it runs more steps there."""
STEP_WINDOW = 20
"""Steps of the default row timed between pastiche's runs, whose evaluations per step the per-step ratio uses: at
128² one backtrack came in 40 steps (at step 14), and the 4-step rows, which caught it, said 1.25 a step."""


INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "avx_vnni")


def cpu_flags() -> list[str]:
    """The vector extensions of this CPU that decide which kernels win (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    return [flag for flag in INTERESTING_FLAGS if flag in flags]


def conv_peak_gflops(device: torch.device) -> float:
    """Best fp32 throughput of a 3x3 convolution (torch's default CPU path; on CUDA cuDNN's, TF32 off)
    over VGG-like shapes."""
    best, repeats = 0.0, 5 if device.type == "cpu" else 20
    for channels, side in ((64, 128), (128, 96), (256, 64), (512, 32)):
        x = torch.randn(1, channels, side, side).to(device).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).requires_grad_(False)
        conv = conv.to(device, memory_format=torch.channels_last)
        with torch.no_grad(), optimizing.cuda_pass(device, tf32=False):
            conv(x)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                conv(x)
            synchronize(device)
            seconds = (time.perf_counter() - start) / repeats
        best = max(best, 2 * channels * channels * 9 * side * side / seconds / 1e9)
    return best


def require_device(name: str) -> torch.device:
    """The device to measure on; one line and exit status 1 where torch cannot use it."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        script = Path(sys.argv[0]).name
        sys.exit(f"{script}: --device cuda, but torch {torch.__version__} ({build}) sees no CUDA device")
    return device


def describe_device(device: torch.device) -> dict:
    """What the figures were measured on, beyond the CPU: the GPU, its compute capability, CUDA and cuDNN."""
    if device.type != "cuda":
        return {"device": device.type}
    return {
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


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


def max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_peak_memory(device: torch.device) -> None:
    """On CUDA, the peak of torch's GPU allocations counts from here (a child's RSS counts from its start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """This process's peak RSS, and on CUDA the peak of torch's GPU allocations since :func:`start_peak_memory`."""
    peaks = {"max_rss_mib": max_rss_mib()}
    if device.type == "cuda":
        peaks["max_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks


def plan_seconds(precision: str, image: torch.Tensor, layers: list[str]) -> dict[str, float]:
    """Seconds per evaluation of each candidate pass plan, as timed when the plan was chosen ({} where
    there was nothing to choose)."""
    if precision == "bf16":
        return {}
    candidates = optimizing.plan_candidates(precision, image)
    choice = kernels.chooser().choices.get(optimizing.plan_key(candidates, layers, image))
    return dict(choice.seconds) if len(candidates) > 1 and choice is not None else {}


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


def clock(device: torch.device) -> float:
    """The time once the device's queued work is done (on a CPU: now)."""
    synchronize(device)
    return time.perf_counter()


def timed_steps(
    model: VGGModel,
    objective: Objective,
    start: torch.Tensor,
    settings: OptimizerSettings,
    skip: int,
    device: torch.device,
) -> dict:
    """Seconds per optimizer step, evaluations (network passes) per step and seconds per evaluation of an
    optimization, over its steps after the first ``skip`` (which choose the pass plan and, in a bf16 or tf32
    plan, run in fp32)."""
    marks: list[tuple[float, int]] = []  # (time, evaluations so far) after each step
    evaluations = 0
    features = model.features

    def counted(*args: object, **kwargs: object) -> dict:
        nonlocal evaluations
        evaluations += 1
        return features(*args, **kwargs)

    model.features = counted  # type: ignore[method-assign]
    try:
        _, history = optimize(model, objective, start, settings, lambda *_: marks.append((clock(device), evaluations)))
    finally:
        del model.features  # the class's method again
    (first_time, first_count), (last_time, last_count) = marks[skip - 1], marks[-1]
    steps = len(marks) - skip
    return {
        "plan": history["precision"],
        "seconds_per_optimizer_step": (last_time - first_time) / steps,
        "evaluations_per_step": (last_count - first_count) / steps,
        "seconds_per_step": (last_time - first_time) / (last_count - first_count),
        "start_loss": history["loss"][0],
        "final_loss": history["loss"][-1],
    }


def worker_step(side: int, steps: int, precision: str, conv: str, device: torch.device) -> dict:
    """Seconds per evaluation (with a phase split), evaluations per step and peak RSS (on CUDA, GPU memory
    too) for the Gatys objective at side x side, over ``steps`` steps after the optimizer's first
    FP32_START; ``precision`` as Optimize Image's (``auto``: the default), ``conv``: the kernel path
    (``auto``: this machine's choice per layer). The split is timed on the pass plan the optimizer runs."""
    os.environ["NST_CONV"] = conv
    start_peak_memory(device)
    model = load_vgg19("caffe").to(device)
    content, style = (image.to(device) for image in sample_pair(side))
    objective = gatys_objective(model, content, style)
    start = model.preprocessing.normalize(content)
    layers = term_layers(objective)
    loss_parts = ObjectiveFunction(objective["terms"], device)
    plan = optimizing.pass_plan(precision, model, start, layers, loss_parts.total)
    pass_precision, _, one_kernel = plan.partition(" ")
    phases = {"forward": [], "loss": [], "backward": []}
    for _ in range(3):  # the same work as one closure call, timed phase by phase
        image = start.clone().requires_grad_(True)
        with kernels.every_layer(one_kernel or None), optimizing.cuda_pass(device, pass_precision == "tf32"):
            t0 = clock(device)
            features = model.features(image, layers, reduced=torch.bfloat16 if pass_precision == "bf16" else None)
            t1 = clock(device)
            loss = loss_parts.total(features, image)
            t2 = clock(device)
            loss.backward()
            t3 = clock(device)
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases[name].append(seconds)
    skip = optimizing.FP32_START
    figures = timed_steps(model, objective, start, OptimizerSettings(skip + steps, precision=precision), skip, device)
    split = {name: sorted(values)[1] for name, values in phases.items()}
    split["optimizer"] = max(0.0, figures["seconds_per_step"] - sum(split.values()))
    return {
        "side": side,
        "steps": steps,
        "precision": precision,
        "conv": conv,
        "chosen": chosen_paths(side),
        "plan_seconds": plan_seconds(precision, start, layers),
        **figures,
        "split": split,
        **peak_memory(device),
    }


def worker_memory(side: int, steps: int, device: torch.device) -> dict:
    """Peak RSS (on CUDA, GPU memory too) of what `nst run` does at side x side: load, targets, then
    only the optimizer."""
    start_peak_memory(device)
    model = load_vgg19("caffe").to(device)
    content, style = (image.to(device) for image in sample_pair(side))
    objective = gatys_objective(model, content, style)
    started = clock(device)
    _, history = optimize(model, objective, model.preprocessing.normalize(content), OptimizerSettings(steps=steps))
    return {
        "side": side,
        "steps": steps,
        "seconds_per_step": (clock(device) - started) / len(history["loss"]),
        **peak_memory(device),
    }


def in_child(*args: str, device: torch.device, tuning: str = "speed") -> dict:
    environment = {**os.environ, "NST_TUNING": tuning}
    command = [sys.executable, __file__, "--worker", *args, "--device", device.type]
    output = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if output.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{output.stderr}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def long_side(path: Path) -> int:
    return max(load_image(path).shape[1:3])


def pastiche_run(content: Path, style: Path, steps: int, output: Path, device: str = "cpu") -> dict:
    """pastiche's CLI on the same pre-resized images (each at its own size), on ``device``; per-step time
    from its own elapsed column (None where its 0.1 s clock saw no time pass). It runs in the environment its
    user would give it, without the variables this process's tuning added (OpenMP's wait policy moves the step at small
    sizes: docs/performance.md). Its peak RSS is the child's;
    on a GPU its GPU memory is not measured (another process's allocations)."""
    command = [
        "pastiche",
        "--content",
        str(content),
        "--styles",
        str(style),
        "--size",
        str(long_side(content)),
        "--style-size",
        str(long_side(style)),
        "--num-steps",
        str(steps),
        "--info-step",
        "1",
        "--device",
        device,
        "--seed",
        "0",
        "--output",
        str(output),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=untuned_environment()
    )
    text = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"pastiche failed:\n{text}")
    elapsed = {int(m[1]): float(m[2]) for m in re.finditer(r"^(\d+)\s+([\d.]+)\s+[\d.]+$", text, re.M)}
    first = min(3, steps - 1)
    span = elapsed[steps] - elapsed[first]
    return {
        "seconds_per_step": span / (steps - first) if span > 0 else None,
        "optimize_seconds": elapsed[steps] - elapsed[0],
        "max_rss_mib": usage.ru_maxrss / 1024,
    }


def pastiche_equivalent_objective(model: VGGModel, content: torch.Tensor, style: torch.Tensor) -> Objective:
    """pastiche's objective in our terms: 0.01*MSE(relu4_2) + sum_l 10/C_l^2 * MSE(gram/HW).

    Its Gram is ours times C and it averages over C^2 entries, so its layer loss is
    10/C^2 times our sum-of-squares layer loss; scaling everything by 100 changes nothing.
    """
    widths = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512, "relu5_1": 512}
    weights = {layer: 10.0 / widths[layer] ** 2 for layer in STYLE_LAYERS}
    return gatys_objective(model, content, style, content_weight=0.01, style_weight=1.0, style_layer_weights=weights)


def quality(model: VGGModel, objective: Objective, image: torch.Tensor) -> tuple[float, float]:
    """(content, style) losses of an IMAGE, weighted by the term weights: their sum is the objective."""
    with torch.no_grad():
        x = model.preprocessing.normalize(image)
        parts = ObjectiveFunction(objective["terms"], x.device)(model.features(x, term_layers(objective)), x)
    return parts["content"].item(), parts["style"].item()


def png_round_trip(image: torch.Tensor, folder: Path) -> torch.Tensor:
    """The image as saved (8-bit PNG) and read back, on the device it came from."""
    path = folder / "iterate.png"
    save_image(image.cpu(), [path], None)
    return load_image(path).to(image.device)


def time_to_quality(side: int, pastiche_steps: int, work: Path, device: torch.device) -> dict:
    """Our default optimizer's time to reach the objective value pastiche reaches in ``pastiche_steps``.

    Both minimize the same objective (``pastiche_equivalent_objective``), so the sum is what
    counts: two optimizers that take different paths end with different content/style splits,
    and one that goes further trades content for style, so its content loss need never come
    back down to that of one that stopped earlier. Each iterate is measured as saved (8-bit
    PNG), like pastiche's output. The pass plan is timed before the clock starts (it is timed
    once per machine and size, then remembered).
    """
    model = load_vgg19("caffe").to(device)
    content_path, style_path = write_sample_pair(side, work)
    # exactly what pastiche reads
    content, style = load_image(content_path).to(device), load_image(style_path).to(device)
    objective = pastiche_equivalent_objective(model, content, style)
    theirs = pastiche_run(content_path, style_path, pastiche_steps, work / "pastiche.png", device.type)
    goal = quality(model, objective, load_image(work / "pastiche.png").to(device))
    start = model.preprocessing.normalize(content)
    settings = OptimizerSettings(steps=10 * pastiche_steps)
    optimizing.pass_plan(
        settings.precision, model, start, term_layers(objective), ObjectiveFunction(objective["terms"], device).total
    )

    iterates: list[tuple[float, torch.Tensor]] = []
    started = time.perf_counter()

    def report(step: int, total: int, loss: float, image: torch.Tensor) -> None:
        iterates.append((clock(device) - started, image.clone()))

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


def shipped_graph_steps(steps: int, work: Path, device: torch.device, overrides: dict) -> dict:
    """graphs/gatys.json as shipped (its pictures, sizes, objective and Optimize Image's settings; ``overrides``
    for a dry run): seconds and evaluations per optimizer step after its first 5 steps, the best of 2 runs;
    pastiche on the same pictures at the same sizes, the same way, the two taking turns."""
    graph = ROOT / "graphs" / "gatys.json"
    outputs = run(graph, device=device.type, overrides=overrides, outputs=["3", "4", "5", "14", "6"])
    content, style, model, objective, start = (outputs[node][0] for node in ("3", "4", "5", "14", "6"))
    shipped = json.loads(graph.read_text())["15"]["inputs"]  # Optimize Image
    settings = OptimizerSettings(
        steps,
        shipped["optimizer"],
        shipped["lr"],
        shipped["history_size"],
        shipped["precision"],
        shipped["history_precision"],
    )
    content_path, style_path = work / "shipped_content.png", work / "shipped_style.png"
    save_image(content.cpu(), [content_path], None)
    save_image(style.cpu(), [style_path], None)
    ours, theirs = [], []
    for _ in range(2):  # taking turns, so that a machine slowing down or speeding up weighs on both alike
        ours.append(timed_steps(model, objective, start["pixels"], settings, 5, device))
        theirs.append(pastiche_run(content_path, style_path, steps, work / "shipped.png", device.type))
    return {
        "size": f"{content.shape[2]}x{content.shape[1]}",
        "steps": steps,
        "ours": min(ours, key=lambda figures: figures["seconds_per_optimizer_step"]),
        "pastiche_seconds_per_step": min(attempt["seconds_per_step"] or float("inf") for attempt in theirs),
    }


def cached_rerun(side: int, steps: int, work: Path, device: torch.device) -> dict:
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
            device=device.type,
            overrides={**overrides, **extra},
            cache=cache,
            reporter=timing,
            folders=Folders(output=work),
        )
        wall = time.perf_counter() - started
        before = sum(s for node, s in timing.seconds.items() if node not in ("15", "16", "17", "18", "19"))
        figures[label] = {"wall_seconds": wall, "before_optimizer_seconds": before}
    return figures


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny sizes and steps (64² and 96²): checks that every part runs, in about 2 min on 2 cores; "
        "its figures mean nothing",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to measure (default cpu)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "bench.json",
        help="where the figures go as JSON (default benchmarks/results/bench.json); rewritten after each part, "
        "so a run cut short keeps what it measured",
    )
    return parser.parse_args()


def timed_row(side: int, steps: int, precision: str, conv: str, peak: float, device: torch.device) -> dict:
    """One row of the step table, measured in its own child process."""
    figures = in_child(str(side), str(steps), precision, conv, device=device)
    figures["gflop"] = vgg_step_gflop(side, side)
    figures["fraction_of_conv_peak"] = figures["gflop"] / figures["seconds_per_step"] / peak
    say(f"measured {side}x{side} {row_name(figures)}: {figures['seconds_per_step']:.3f} s per evaluation")
    return figures


def run_worker(job: list[str], device: torch.device) -> None:
    """One measurement in this child process, its figures as one JSON line."""
    if job[0] == "memory":
        print(json.dumps(worker_memory(int(job[1]), int(job[2]), device)))
    else:
        side, steps, precision, conv = job
        print(json.dumps(worker_step(int(side), int(steps), precision, conv, device)))


def timed_rows(sides: tuple[int, ...], steps: int, device: torch.device) -> tuple[list[tuple], list[str]]:
    """The (side, steps, precision, kernels) rows that can run on ``device``, and why the others are skipped."""
    skipped = []
    native = optimizing.native_bf16(device)
    if not native and device.type == "cpu":  # emulated bf16 is 60-90x slower: the row would run for hours
        skipped.append("the forced bf16 rows (this CPU has no native bf16: no avx512_bf16 or amx_bf16)")
    elif not native:
        skipped.append("the forced bf16 rows (this GPU has no native bf16: compute capability below 8)")
    if device.type != "cpu":
        skipped.append("the fp32 winograd and fp32 direct rows (NST_CONV forces a CPU kernel; cuDNN picks on CUDA)")
    runs = [
        (side, steps, precision, conv)
        for side in sides
        for precision, conv in RUNS
        if (native or precision != "bf16") and (device.type == "cpu" or conv == "auto")
    ]
    return runs, skipped


def tuning_modes(device: torch.device) -> tuple[tuple[str, ...], list[str]]:
    """The tuning modes whose peak memory is measured, and why the others are skipped."""
    if device.type == "cpu":
        return ("speed", "memory"), []
    return ("speed",), ["tuning mode memory (it sets the CPU's allocator, not the GPU's)"]


def pastiche_steps(fill_history: bool, args: argparse.Namespace) -> int:
    """pastiche's steps for its per-step figures: with ``fill_history`` in the full run, enough to fill its
    100-pair L-BFGS history (its peak RSS); else 9 after the 3 its figure leaves out, so that its 0.1 s clock
    rounds 0.2 s steps by at most 6% (4 steps rounded 128² to 0.200 or 0.250 s in one run); on a GPU enough for
    that clock."""
    count = 102 if fill_history and not args.quick and not args.dry_run else 12
    return max(count, 200) if args.device == "cuda" else count


def run_sizes(args: argparse.Namespace) -> tuple[tuple[int, int], int, int, int]:
    """(the two sides, steps per timed row, steps of the memory rows, pastiche's steps for time to quality)."""
    if args.dry_run:
        return (64, 96), 3, 4, 10
    if args.quick:
        return (128, 256), 4, 12, 30
    # Peak memory with the L-BFGS history filled (as many steps as the default history holds).
    return (256, 512), 8, OptimizerSettings().history_size + 2, 100


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    args = parse_arguments()
    device = require_device(args.device)
    if args.worker:
        run_worker(args.worker, device)
        return

    sides, steps, memory_steps, quality_steps = run_sizes(args)
    results: dict = {
        "tuning": TUNING,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_flags": cpu_flags(),
        **describe_device(device),
        "dry_run": args.dry_run,
    }

    def save() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))

    say(f"CPU flags: {' '.join(results['cpu_flags']) or 'none of ' + ', '.join(INTERESTING_FLAGS)}")
    if device.type == "cuda":
        say(f"GPU: {results['gpu']} (compute capability {results['compute_capability']}), CUDA {results['cuda']}")
    results["conv_peak_gflops"] = peak = conv_peak_gflops(device)
    results["steps"] = []
    runs, skipped = timed_rows(sides, steps, device)
    modes, skipped_modes = tuning_modes(device)
    results["skipped"] = skipped + skipped_modes
    for reason in results["skipped"]:
        say(f"skipped: {reason}")
    for side, count, precision, conv in runs:
        results["steps"].append(timed_row(side, count, precision, conv, peak, device))
        save()
    # Peak memory in the tuning modes of nst_nodes.tuning.py
    results["memory"] = {
        mode: in_child("memory", str(sides[-1]), str(memory_steps), device=device, tuning=mode) for mode in modes
    }
    save()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results["pastiche"] = []
        if shutil.which("pastiche"):
            for side in sides:  # pastiche, our default row again, pastiche: the two taking turns
                content, style = write_sample_pair(side, work)
                count = pastiche_steps(side == sides[-1], args)  # its peak RSS at the larger size
                theirs = pastiche_run(content, style, count, work / "p.png", device.type)
                window = steps if args.dry_run else max(steps, STEP_WINDOW)
                results["steps"].append(timed_row(side, window, "auto", "auto", peak, device))
                again = pastiche_run(content, style, pastiche_steps(False, args), work / "p.png", device.type)
                per_step = [run["seconds_per_step"] for run in (theirs, again) if run["seconds_per_step"]]
                theirs |= {"seconds_per_step": min(per_step, default=None), "runs_seconds_per_step": per_step}
                results["pastiche"].append({"side": side, "steps": count, **theirs})
                save()
            results["time_to_quality"] = [time_to_quality(side, quality_steps, work, device) for side in sides]
            save()
            results["shipped_graph"] = shipped_graph_steps(
                8 if args.dry_run else 25 if args.quick else 45,
                work,
                device,
                {"3.size": 96, "4.size": 96 * 72} if args.dry_run else {},
            )
            save()
        else:
            say("skipped: pastiche (no pastiche command on the PATH)")
        results["cached_rerun"] = cached_rerun(sides[0], 3, work, device)
    print_table(results)
    save()
    print(f"\nwrote {args.output}")


def row_name(row: dict) -> str:
    if row["precision"] == "auto":
        return "default"
    return row["precision"] if row["conv"] == "auto" else f"{row['precision']} {row['conv']}"


def on_gpu(results: dict) -> bool:
    return results.get("device") == "cuda"


def peak_mib(results: dict, figures: dict) -> float:
    """The peak memory a row is judged by: RSS on a CPU, torch's GPU allocations on CUDA."""
    return figures["max_cuda_allocated_mib"] if on_gpu(results) else figures["max_rss_mib"]


def times(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as a speed-up, or n/a where either was not measured."""
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "n/a"


def print_table(results: dict) -> None:
    print(f"torch {results['torch']}, {results['threads']} threads, tuning: {', '.join(results['tuning']) or 'none'}")
    if on_gpu(results):
        print(f"GPU: {results['gpu']}, compute capability {results['compute_capability']}, CUDA {results['cuda']}")
        print(f"3x3 conv peak (cuDNN, fp32 with TF32 off): {results['conv_peak_gflops']:.0f} GFLOP/s")
    else:
        print(f"3x3 conv peak (default torch path): {results['conv_peak_gflops']:.0f} GFLOP/s")
    print(
        "\nseconds per L-BFGS evaluation (= step, but for backtracks), Gatys objective (content relu4_2 + 5 style "
        "layers); default = precision auto, each layer's kernel, as Optimize Image runs after its first steps; "
        "evals/step: evaluations per optimizer step (backtracks add some), s/opt step: seconds per optimizer step"
    )
    print(
        f"{'size':>9} {'run':>15} {'plan':>14} {'step s':>7} {'fwd':>6} {'loss':>6} {'bwd':>6} {'optim':>6} "
        f"{'GFLOP':>6} {'of peak':>8} {'GPU MiB' if on_gpu(results) else 'RSS MiB':>8} {'evals/step':>10} "
        f"{'s/opt step':>10}"
    )
    for row in results["steps"]:
        split = row["split"]
        plan = row["plan"] if row["conv"] == "auto" else "forced"  # NST_CONV leaves the plan nothing to choose
        print(
            f"{row['side']:>4}x{row['side']:<4} {row_name(row):>15} {plan:>14} {row['seconds_per_step']:>7.3f} "
            f"{split['forward']:>6.3f} {split['loss']:>6.3f} {split['backward']:>6.3f} {split['optimizer']:>6.3f} "
            f"{row['gflop']:>6.1f} {row['fraction_of_conv_peak']:>8.0%} {peak_mib(results, row):>8.0f} "
            f"{row['evaluations_per_step']:>10.2f} {row['seconds_per_optimizer_step']:>10.3f}"
        )

    def row(side: int, name: str) -> dict:
        """The row ``name`` at ``side``: of two (the default's, measured again between pastiche's runs), the faster."""
        rows = [r for r in results["steps"] if r["side"] == side and row_name(r) == name]
        return min(rows, key=lambda r: r["seconds_per_step"])

    first_defaults = {r["side"]: r for r in reversed(results["steps"]) if r["precision"] == "auto"}
    for default in (r for r in first_defaults.values() if r.get("plan_seconds")):
        print(
            f"pass plans timed at {default['side']}px (s per evaluation): "
            + ", ".join(f"{plan} {seconds:.3f}" for plan, seconds in default["plan_seconds"].items())
            + f"; chosen: {default['plan']}"
        )
    for bf16 in (r for r in results["steps"] if r["precision"] == "bf16"):
        fp32 = row(bf16["side"], "fp32")
        print(
            f"bf16 passes at {bf16['side']}px: {fp32['seconds_per_step'] / bf16['seconds_per_step']:.2f}x the fp32 "
            f"speed; loss of the start image {bf16['start_loss'] / fp32['start_loss'] - 1:+.2%} vs fp32"
        )
    if on_gpu(results):
        print("kernels per layer: cuDNN's own choice (benchmark mode)")
    for side in sorted({r["side"] for r in results["steps"]} if not on_gpu(results) else ()):
        print(
            f"kernels per layer at {side}px (forward/input gradient): "
            + ", ".join(f"{layer} {paths}" for layer, paths in row(side, "fp32")["chosen"].items())
        )
    for theirs in results.get("pastiche", []):
        default, fp32 = row(theirs["side"], "default"), row(theirs["side"], "fp32")
        window = max(
            (r for r in results["steps"] if r["side"] == theirs["side"] and r["precision"] == "auto"),
            key=lambda r: r["steps"],
        )
        per_optimizer_step = default["seconds_per_step"] * window["evaluations_per_step"]
        per_step = theirs["seconds_per_step"]
        memory = (
            "its GPU memory not measured (another process)"
            if on_gpu(results)
            else f"peak RSS {theirs['max_rss_mib']:.0f} MiB"
        )
        print(
            f"pastiche {theirs['side']}x{theirs['side']}: "
            + (f"{per_step:.3f} s/step" if per_step else f"under its {PASTICHE_CLOCK} s clock per step")
            + (f" (best of {', '.join(f'{run:.3f}' for run in theirs['runs_seconds_per_step'])})" if per_step else "")
            + f", {memory} after {theirs['steps']} steps; ours is "
            f"{times(per_step, default['seconds_per_step'])} faster per evaluation by default ({default['plan']}), "
            f"{times(per_step, fp32['seconds_per_step'])} in fp32; per optimizer step "
            f"{times(per_step, per_optimizer_step)} by default ({window['evaluations_per_step']:.2f} evaluations a "
            f"step over {window['steps']} steps)"
        )
    if "shipped_graph" in results:
        shipped = results["shipped_graph"]
        ours = shipped["ours"]
        print(
            f"graphs/gatys.json as shipped ({shipped['size']}, plan {ours['plan']}), steps 6-{shipped['steps']}, best "
            f"of 2: {ours['seconds_per_optimizer_step']:.3f} s per optimizer step ({ours['evaluations_per_step']:.2f} "
            f"evaluations of {ours['seconds_per_step']:.3f} s); pastiche {shipped['pastiche_seconds_per_step']:.3f} s "
            f"per step: ours is {times(shipped['pastiche_seconds_per_step'], ours['seconds_per_optimizer_step'])} "
            "faster per step"
        )
    for reach in results.get("time_to_quality", []):
        ours, goal = reach["ours"], reach["goal"]
        line = (
            f"time to quality at {reach['side']}px: pastiche {reach['pastiche_seconds']:.1f} s for "
            f"{reach['pastiche_steps']} steps to content + style {goal['content']:.4g} + {goal['style']:.4g}; "
        )
        share = f"{ours['seconds'] / reach['pastiche_seconds']:.0%}" if ours and reach["pastiche_seconds"] else "n/a"
        line += (
            (
                f"ours ({reach['plan']}) {ours['seconds']:.1f} s, {ours['step'] + 1} steps, "
                f"{share} of pastiche's, to {ours['content']:.4g} + "
                f"{ours['style']:.4g}"
            )
            if ours
            else "ours: not reached in pastiche's time"
        )
        print(line)
    settings = OptimizerSettings()
    measure = "peak GPU memory (torch.cuda.max_memory_allocated)" if on_gpu(results) else "peak RSS"
    for mode, memory in results["memory"].items():
        theirs = next((p for p in results.get("pastiche", []) if p["side"] == memory["side"]), None)
        print(
            f"tuning {mode}: {measure} at {memory['side']}x{memory['side']} after {memory['steps']} L-BFGS steps "
            f"(history {settings.history_size} in {settings.history_precision}): {peak_mib(results, memory):.0f} MiB, "
            f"{memory['seconds_per_step']:.3f} s per evaluation"
            + (f"; pastiche {theirs['max_rss_mib']:.0f} MiB" if theirs and not on_gpu(results) else "")
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
    for reason in results.get("skipped", []):
        print(f"skipped: {reason}")


if __name__ == "__main__":
    main()
