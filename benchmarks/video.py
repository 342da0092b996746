"""Video: the four ways of carrying frames, on a real clip, with the measures of nst_nodes/video/metrics.py.

    python benchmarks/video.py ../shared/data/video/carphone.mp4 --frames 0:24 --size 256 --steps 40
    python benchmarks/video.py ../shared/data/video/bikes.mp4 --frames 0:40 --size 256 --steps 40

Runs graphs/video.json's objective (the Gram loss normalized per layer against The Starry Night,
the content at relu4_2) frame by frame in each mode (off: frames alone; chain: from the previous
result; warped: from it warped along the flow; flow: warped, with the temporal loss), and prints
per mode: warping error and flicker (lower is steadier), Quality Metrics' style and content
distances averaged over the frames, and frames per hour. Each mode's frames go to --out as PNGs,
and a GIF of the steadiest mode beside frames alone (--gif).
"""

from __future__ import annotations

# ruff: noqa: E402  (the imports below follow configure_process, which must run before torch is imported)
from nst_nodes.tuning import configure_process

TUNING = configure_process()

import argparse
import json
import time
from pathlib import Path

import torch
from bench import cpu_flags

from nst_nodes.image import load_image
from nst_nodes.losses import gatys_objective
from nst_nodes.metrics import quality
from nst_nodes.nodes.images import ResizeToMatch
from nst_nodes.nodes.video import OpticalFlow, TemporalLoss
from nst_nodes.optimize import OptimizerSettings
from nst_nodes.vgg import load_vgg19
from nst_nodes.video.command import OVERLAP
from nst_nodes.video.flow import is_cut
from nst_nodes.video.frames import optimize_frames
from nst_nodes.video.io import Clip, read_clip, write_clip, write_frames
from nst_nodes.video.metrics import flicker, warping_error

ROOT = Path(__file__).resolve().parent.parent
MODES = ("off", "chain", "warped", "flow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip")
    parser.add_argument("--frames", default="0:24", help="START:STOP")
    parser.add_argument("--size", type=int, default=256, help="long side")
    parser.add_argument("--steps", type=int, default=40, help="L-BFGS steps per frame")
    parser.add_argument("--weight", type=float, default=1e3, help="temporal weight of mode flow")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "video")
    parser.add_argument("--gif", type=Path, default=None, help="write off | the steadiest mode side by side here")
    parser.add_argument(
        "--segments",
        action="store_true",
        help="instead: `nst video` in one process and in 2 segments on 2 workers (time, seams)",
    )
    parser.add_argument(
        "--overlaps", type=int, nargs="+", default=[OVERLAP], help="with --segments: the overlaps to run"
    )
    args = parser.parse_args()
    if args.segments:
        compare_segments(args)
        return
    start, stop = (int(part) for part in args.frames.split(":"))
    clip = read_clip(args.clip, start, stop, args.size)
    frames = clip.frames
    print(
        f"machine: {', '.join(cpu_flags())}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} from {args.clip}, {args.steps} steps each"
    )
    model = load_vgg19("caffe")
    style = ResizeToMatch().resize(load_image(ROOT / "nst_nodes" / "samples" / "starry_night.jpg"), frames, 1.0)[0]
    init = model.preprocessing.normalize(frames)
    objective = gatys_objective(model, frames, style, style_weight=1e7, normalize=True, tv_weight=1e-3)
    started = time.perf_counter()
    flow, reliable = OpticalFlow().flow(frames, "dis")
    flow_seconds = time.perf_counter() - started
    cuts = [index for index in range(1, len(frames)) if is_cut(reliable[index])]
    pair = 1000 * flow_seconds / max(1, len(frames) - 1)
    print(
        f"optical flow (DIS, both ways, with the reliability check): {pair:.1f} ms a frame pair; "
        f"scene cuts before frames {cuts or 'none'}"
    )
    settings = OptimizerSettings(steps=args.steps)
    optimize_frames(model, objective, init[:1], None, OptimizerSettings(steps=12))  # the pass plan, timed once
    rows, results = [], {}
    print(
        f"{'mode':8s} {'warping error':>14s} {'flicker':>8s} {'style':>7s} {'content':>8s} {'s/frame':>8s} "
        f"{'frames/h':>9s}"
    )
    for mode in args.modes.split(","):
        temporal = TemporalLoss().build(mode, args.weight, flow)[0]
        started = time.perf_counter()
        result, _, _ = optimize_frames(model, objective, init, temporal, settings)
        seconds = time.perf_counter() - started
        images = torch.cat([model.preprocessing.denormalize(frame[None]) for frame in result]).clamp(0, 1)
        errors, flickers = warping_error(images, frames), flicker(images, frames)
        measured = [quality(images[i : i + 1], frames[i : i + 1], style) for i in range(len(frames))]
        row = {
            "mode": mode,
            "warping_error": sum(errors) / len(errors),
            "flicker": sum(flickers) / len(flickers),
            "style": sum(m["style"] for m in measured) / len(measured),
            "content": sum(m["content"] for m in measured) / len(measured),
            "seconds_per_frame": seconds / len(frames),
            "frames_per_hour": 3600 * len(frames) / seconds,
            "seam_errors": errors,
        }
        rows.append(row)
        results[mode] = images
        print(
            f"{mode:8s} {row['warping_error']:14.5f} {row['flicker']:8.4f} {row['style']:7.3f} {row['content']:8.3f} "
            f"{row['seconds_per_frame']:8.2f} {row['frames_per_hour']:9.0f}",
            flush=True,
        )
        write_frames(args.out / Path(args.clip).stem / mode, images)
    (args.out / f"{Path(args.clip).stem}.json").write_text(
        json.dumps(
            {
                "clip": args.clip,
                "frames": args.frames,
                "size": args.size,
                "steps": args.steps,
                "cuts": cuts,
                "flags": cpu_flags(),
                "tuning": TUNING,
                "rows": rows,
            },
            indent=1,
        )
    )
    if args.gif and "off" in results and len(results) > 1:
        steadiest = min((row for row in rows if row["mode"] != "off"), key=lambda row: row["warping_error"])["mode"]
        side_by_side = torch.cat([frames, results["off"], results[steadiest]], dim=2)
        write_clip(args.gif, Clip(side_by_side, clip.fps))
        print(f"{args.gif}: input | off | {steadiest}")


def compare_segments(args: argparse.Namespace) -> None:
    """graphs/video.json with --temporal flow, whole in one process and in 2 segments on 2 local workers (for
    each ``--overlaps``): wall time, and the warping error at the seam (the frames the segments share) against
    the rest."""
    from nst_nodes.app import main as nst
    from nst_nodes.video.segments import plan

    start, stop = (int(part) for part in args.frames.split(":"))
    frames = read_clip(args.clip, start, stop, args.size).frames
    print(
        f"machine: {', '.join(cpu_flags())}; {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}, "
        f"{args.steps} steps each, temporal flow"
    )
    runs = [("one process", [])] + [
        (f"2 segments, 2 workers, overlap {overlap}", ["--workers", "2", "--overlap", str(overlap)])
        for overlap in args.overlaps
    ]
    whole: tuple[torch.Tensor, float] | None = None
    for name, extra in runs:
        output = args.out / f"{Path(args.clip).stem}_{f'overlap{extra[-1]}' if extra else 'whole'}.mp4"
        started = time.perf_counter()
        code = nst(
            [
                "video",
                str(ROOT / "graphs" / "video.json"),
                args.clip,
                "-o",
                str(output),
                "--frames",
                args.frames,
                "--size",
                str(args.size),
                "--steps",
                str(args.steps),
                "--temporal",
                "flow",
                "--no-cache",
                *extra,
            ]
        )
        seconds = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"{name}: nst video exited {code}")
        result = read_clip(str(output)).frames
        errors = warping_error(result, frames)
        print(f"{name}: {seconds:.1f} s, {3600 * len(frames) / seconds:.0f} frames per hour", flush=True)
        if whole is None:
            whole = result, seconds
            print(f"  warping error {sum(errors) / len(errors):.5f}")
            continue
        spans = plan(start, stop, 2, int(extra[-1]))
        seam = set(range(spans[1][0] - start, spans[0][1] - start + 1))  # pairs (i-1, i) touching the shared frames
        at_seam = [error for index, error in enumerate(errors, start=1) if index in seam]
        inside = [error for index, error in enumerate(errors, start=1) if index not in seam]
        seam_mean, inside_mean = sum(at_seam) / len(at_seam), sum(inside) / len(inside)
        print(
            f"  speed-up {whole[1] / seconds:.2f}x; warping error at the seam {seam_mean:.5f} (frames "
            f"{min(seam)}..{max(seam)}), inside the segments {inside_mean:.5f}: {seam_mean / inside_mean:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
