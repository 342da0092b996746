"""Fast style transfer: a stylizer trained on graphs/fast.json's objective, against graphs/gatys.json's optimization.

    python benchmarks/fast.py                  # 30 min of training, then the figures (about 45 min on 2 cores)
    python benchmarks/fast.py --minutes 3 --optimized 1    # a quick look
    python benchmarks/fast.py --steps 400 --optimized 0    # fixed steps: compare settings over several --seed
    python benchmarks/fast.py --images 'photos/*.jpg'      # another training set (its last picture held aside)
    python benchmarks/fast.py --steps 500 --lr 0.002       # another rate (also --size, --batch, --width, --seed)
    python benchmarks/fast.py --clip ../shared/data/video/bikes.mp4 --temporal 1000   # a clip, with a temporal term
    python benchmarks/fast.py --speed --device cuda        # speed only: apply and training step, widths 16 and 32

Trains a stylizer on the shipped photos (nst-samples/photo_*.jpg, or --images; the last held aside), or on a --clip's
frames in pairs with their flow and a --temporal term (0: pairs, no term; the last two held aside), for --minutes,
then prints, on this machine:
- the training: steps, seconds, crops of --size;
- apply time per frame at 256², 384x288, 512² and 1024² (median of 5, after one warm-up), and frames per second;
- Quality Metrics' style and content distances on photos it never saw (tubingen, and frames of
  ../shared/data/video when there), against the shipped optimization (graphs/gatys.json, 200 steps) on the
  same photos at the same size, with the optimization's time per photo (frames of the --clip left out);
- warping error, flicker, style and content distances of the stylizer on carphone.mp4's first 24 frames
  (benchmarks/video.py measures the optimization's modes on the same frames).
Writes the stylizer, the pictures, the stylized carphone frames (GIF) and results.json to --out. --device cuda
trains and applies on the GPU (the timers wait for it); --speed prints only the apply and training-step times of
untrained networks of width 16 and 32 (speed does not depend on the weights), as benchmarks/gpu_check.sh does.
"""

from __future__ import annotations

# ruff: noqa: E402  (the imports below follow configure_process, which must run before torch is imported)
from nst_nodes.tuning import configure_process

TUNING = configure_process()

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from bench import clock, cpu_flags, describe_device, require_device

from graphrun import Folders, load_graph, run
from nst_nodes.fast.network import JOHNSON_WIDTH, StylizerNetwork, apply_precision, build, stylize
from nst_nodes.fast.store import stylizer_bytes
from nst_nodes.fast.train import TrainSettings, train_stylizer
from nst_nodes.image import load_image, resize_image, save_image
from nst_nodes.metrics import quality
from nst_nodes.nodes.video import OpticalFlow
from nst_nodes.optimize import native_bf16
from nst_nodes.types import Objective, Temporal
from nst_nodes.vgg import VGGModel
from nst_nodes.video.io import read_clip, write_clip
from nst_nodes.video.metrics import flicker, warping_error

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "nst_nodes" / "samples"
SHARED = ROOT.parent / "shared" / "data"
APPLY_SIZES = ((256, 256), (384, 288), (512, 512), (1024, 1024))


def objective_and_set(
    images: str | None = None, device: str = "cpu"
) -> tuple[VGGModel, Objective, torch.Tensor, torch.Tensor]:
    """graphs/fast.json's model, objective, training set (or ``images``, a folder or glob) and style picture,
    computed by its own nodes on ``device``."""
    graph = load_graph(ROOT / "graphs" / "fast.json")
    outputs = run(
        graph, device=device, outputs=["4", "13", "1", "3"], overrides={"1.images": images} if images else None
    )
    return outputs["4"][0], outputs["13"][0], outputs["1"][0], outputs["3"][0]


def clip_and_flow(path: str, frames: str, weight: float) -> tuple[torch.Tensor, Temporal]:
    """Frames ``START:STOP`` of a clip and Temporal Loss (mode flow, ``weight``) on their flow (Optical Flow)."""
    start, _, stop = frames.partition(":")
    clip = read_clip(path, int(start or 0), int(stop) if stop else None).frames
    started = time.perf_counter()
    flow = OpticalFlow().flow(clip)[0]
    seconds = time.perf_counter() - started
    print(f"training clip: {len(clip)} frames of {clip.shape[2]}x{clip.shape[1]}, their flow in {seconds:.0f} s")
    return clip, {"start": "warped", "weight": weight, "flow": flow}


def unseen_photos(limit: int, clip: str | None = None) -> dict[str, torch.Tensor]:
    """Photos not in the training set, at 384 px on their long side."""
    photos = {"tubingen": load_image(SAMPLES / "tubingen.jpg")}
    bikes = SHARED / "video" / "bikes.mp4"
    if bikes.is_file() and not (clip and Path(clip).resolve() == bikes.resolve()):
        for index in (40, 100, 200):
            photos[f"bikes_{index}"] = read_clip(str(bikes), index, index + 1).frames
    resized = {}
    for name, photo in list(photos.items())[:limit]:
        height, width = photo.shape[1:3]
        scale = 384 / max(height, width)
        resized[name] = resize_image(photo, round(height * scale), round(width * scale))
    return resized


def optimized(photo: torch.Tensor, folder: Path, device: torch.device) -> tuple[torch.Tensor, float]:
    """graphs/gatys.json's result (200 steps) for ``photo`` on ``device``, and its seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    save_image(photo, [folder / "content.png"], None, None)
    height, width = photo.shape[1:3]
    started = clock(device)
    outputs = run(
        ROOT / "graphs" / "gatys.json",
        device=device.type,
        overrides={"1.image": str(folder / "content.png"), "3.size": max(height, width), "4.size": height * width},
        outputs=["16"],
        folders=Folders(output=folder),
    )
    return outputs["16"][0].cpu(), clock(device) - started


def apply_times(network: StylizerNetwork, sizes: Sequence[tuple[int, int]], device: torch.device) -> dict[str, dict]:
    """Per ``WIDTHxHEIGHT``: seconds per frame in each precision Apply Stylizer can run here (fp32, and bf16 where
    the hardware has it; the median of 5 after a warm-up, the device's queue drained), and the one its ``auto``
    picks."""
    precisions = ("fp32", "bf16") if native_bf16(device) else ("fp32",)
    figures = {}
    with torch.no_grad():
        for width, height in sizes:
            frame = torch.rand(1, height, width, 3, device=device)
            seconds = {}
            for precision in precisions:
                stylize(network, frame, precision)
                runs = []
                for _ in range(5):
                    started = clock(device)
                    stylize(network, frame, precision)
                    runs.append(clock(device) - started)
                seconds[precision] = statistics.median(runs)
            figures[f"{width}x{height}"] = {"seconds": seconds, "auto": apply_precision("auto", network, frame)}
    return figures


def print_apply_times(figures: dict[str, dict], prefix: str = "") -> None:
    for size, row in figures.items():
        for precision, seconds in row["seconds"].items():
            print(
                f"{prefix}apply {size:>9} {precision}: {seconds * 1000:7.1f} ms per frame, "
                f"{1 / seconds:6.1f} frames per second{' (auto)' if precision == row['auto'] else ''}",
                flush=True,
            )


def step_seconds(
    model: VGGModel,
    objective: Objective,
    pictures: torch.Tensor,
    settings: TrainSettings,
    temporal: Temporal | None = None,
) -> float:
    """Seconds per training step, from a probe of 6 steps whose last 3 are timed (the first ones choose the
    kernels; each step's report reads its loss, which waits for a GPU). The probe is planned as a long training and
    stopped, so that it evaluates no checkpoint between steps (a 6-step training would after each)."""
    stamps: list[float] = []

    def stamp(*_: object) -> None:
        stamps.append(time.perf_counter())

    probe = replace(settings, steps=1 << 30)
    train_stylizer(model, objective, pictures, probe, stamp, lambda: len(stamps) >= 6, temporal)
    return (stamps[-1] - stamps[-4]) / 3


def speed(
    model: VGGModel,
    objective: Objective,
    pictures: torch.Tensor,
    settings: TrainSettings,
    args: argparse.Namespace,
    machine: dict,
) -> None:
    """Apply and training-step times of untrained networks of --width and Johnson's 32 (--speed), written to
    speed.json after each width, so that a run cut short keeps what it measured."""
    figures = {}
    for width in sorted({settings.width, JOHNSON_WIDTH}):
        network = StylizerNetwork(width).to(args.device).eval().requires_grad_(False)
        times = apply_times(network, args.apply_sizes, args.device)
        print_apply_times(times, f"width {width}: ")
        seconds = step_seconds(model, objective, pictures, replace(settings, width=width))
        print(
            f"width {width}: training step (batch {settings.batch}, {settings.size}² crops): {seconds:.3f} s",
            flush=True,
        )
        figures[str(width)] = {"apply_seconds": times, "training_step_seconds": seconds}
        (args.out / "speed.json").write_text(json.dumps(machine | {"widths": figures}, indent=1))


def frame_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, such as 512x512")
    return int(width), int(height)


def device_argument(name: str) -> torch.device:
    if name not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{name!r}: cpu or cuda")
    return require_device(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training time")
    parser.add_argument("--steps", type=int, help="train this many steps instead (to compare settings at equal steps)")
    parser.add_argument("--size", type=int, default=128, help="side of the training crops")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--lr", type=float, default=TrainSettings.lr, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, default=TrainSettings.seed, help="of the network's start and the crops")
    parser.add_argument("--optimized", type=int, default=2, help="unseen photos to optimize for the comparison")
    parser.add_argument("--photos", type=int, default=4, help="unseen photos to measure the stylizer on")
    parser.add_argument("--images", help="train on this folder or glob (the last picture held aside) instead")
    parser.add_argument("--clip", help="train on this clip's frames in pairs, with their flow, instead")
    parser.add_argument("--frames", default="0:", help="of --clip, START:STOP")
    parser.add_argument("--temporal", type=float, default=0.0, help="with --clip, the temporal term's weight")
    parser.add_argument("--device", type=device_argument, default=torch.device("cpu"), help="cpu or cuda")
    parser.add_argument("--speed", action="store_true", help="only the speed of untrained networks of --width and 32")
    parser.add_argument(
        "--apply-sizes", type=frame_size, nargs="+", default=APPLY_SIZES, help="frame sizes to apply at, as WxH"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fast")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"machine": cpu_flags(), "threads": torch.get_num_threads(), **describe_device(args.device)}
    on = ", ".join(f"{key} {value}" for key, value in machine.items() if key not in ("machine", "threads"))
    print(
        f"machine: {', '.join(machine['machine'])}, {machine['threads']} threads; {on}; torch {torch.__version__}",
        flush=True,
    )
    settings = TrainSettings(args.size, batch=args.batch, lr=args.lr, seed=args.seed, width=args.width)

    model, objective, pictures, style = objective_and_set(args.images, args.device.type)
    if args.speed:
        speed(model, objective, pictures, settings, args, machine)
        return
    temporal = None
    if args.clip:
        pictures, temporal = clip_and_flow(args.clip, args.frames, args.temporal)
        print(f"temporal term weight {args.temporal:g}; the last two frames held aside")
    else:
        print(f"training set: {len(pictures)} pictures, the last held aside")
    if args.steps:
        steps, deadline, planned = args.steps, float("inf"), ""
    else:
        steps = max(1, int(args.minutes * 60 / step_seconds(model, objective, pictures, settings, temporal)))
        deadline, planned = time.perf_counter() + args.minutes * 60, " (as many as fit)"
    settings = replace(settings, steps=steps)
    print(f"training {steps} steps of {settings.batch} crops of {settings.size}²{planned} ...", flush=True)
    stylizer = train_stylizer(
        model,
        objective,
        pictures,
        settings,
        should_stop=lambda: time.perf_counter() > deadline,
        temporal=temporal,
    )
    training = stylizer["training"]
    (args.out / "stylizer.safetensors").write_bytes(stylizer_bytes(stylizer))
    print(
        f"trained: {training['steps']} steps in {training['seconds']:.0f} s (loss network {training['precision']}, "
        f"stylizer {training['network_precision']}), "
        f"kept step {training['best_step']} (held-aside objective {training['loss']:.4g})"
    )
    network = build(stylizer).to(args.device)
    times = apply_times(network, args.apply_sizes, args.device)
    print_apply_times(times)

    rows = []
    for index, (name, photo) in enumerate(unseen_photos(args.photos, args.clip).items()):
        picture = photo.to(args.device)
        with torch.no_grad():  # as Apply Stylizer runs it
            fast = stylize(network, picture, apply_precision("auto", network, picture)).clamp(0, 1).cpu()
        save_image(fast, [args.out / f"{name}_fast.png"], None, None)
        row = {"photo": name, "fast": quality(fast, photo, style)}
        if index < args.optimized:
            result, seconds = optimized(photo, args.out / name, args.device)
            save_image(result, [args.out / f"{name}_optimized.png"], None, None)
            row |= {"optimized": quality(result, photo, style), "optimized_seconds": seconds}
        rows.append(row)
        line = f"{name:>10}: fast style {row['fast']['style']:.4f} content {row['fast']['content']:.4f}"
        if "optimized" in row:
            line += (
                f" | optimized style {row['optimized']['style']:.4f} content {row['optimized']['content']:.4f}"
                f" in {row['optimized_seconds']:.0f} s: ratios {row['fast']['style'] / row['optimized']['style']:.2f}x"
                f" style, {row['fast']['content'] / row['optimized']['content']:.2f}x content"
            )
        print(line, flush=True)

    clip_path = SHARED / "video" / "carphone.mp4"
    carphone = read_clip(str(clip_path if clip_path.is_file() else SAMPLES / "carphone.mp4"), 0, 24)
    clip = carphone.frames
    precision = apply_precision("auto", network, clip[:1].to(args.device))
    with torch.no_grad():
        results = torch.cat(
            [stylize(network, frame[None].to(args.device), precision).clamp(0, 1).cpu() for frame in clip]
        )
    write_clip(args.out / "carphone_fast.gif", replace(carphone, frames=results, audio=None))
    distances = [quality(result[None], frame[None], style) for result, frame in zip(results, clip, strict=True)]
    video = {
        "warping_error": statistics.mean(warping_error(results, clip)),
        "flicker": statistics.mean(flicker(results, clip)),
        "style": statistics.mean(distance["style"] for distance in distances),
        "content": statistics.mean(distance["content"] for distance in distances),
    }
    print(
        f"carphone 0:24: warping error {video['warping_error']:.5f}, flicker {video['flicker']:.4f}, "
        f"style {video['style']:.4f}, content {video['content']:.4f} (means over the frames)"
    )
    summary = machine | {
        "training": training,
        "apply_seconds": times,
        "photos": rows,
        "video": video,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
