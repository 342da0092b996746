"""``nst video GRAPH INPUT -o OUTPUT``: a graph with a Load Video and a Save Video node, run on a clip.

    nst video graphs/video.json clip.mp4 -o out.mp4 --frames 0:24 --size 256
    nst video graphs/video.json 'frames/*.png' -o out/ --temporal off
    nst video graphs/video.json clip.mp4 -o out.mp4 --workers 2     # segments in parallel on Dask

It sets the graph's Load Video (the clip, the frames, the size), Save Video (where, which format),
Optimize (steps) and Temporal Loss (the mode) nodes and runs the graph as ``nst run`` does
(validation first, the cache, Ctrl-C saving the frames done). With ``--workers`` or
``--scheduler`` the clip is cut into overlapping segments that run as a batch on Dask, each
chained inside; the overlaps are cross-faded where the segments meet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from graphrun.arguments import at_least_one
from graphrun.graph import load_graph, parse_override
from graphrun.host import DEVICE_HELP, DEVICES

from ..nodes.base import Node
from ..nodes.optimizer import OptimizeImage
from ..nodes.video import LoadVideo
from .io import ENCODERS, ClipError, check_encoder, probe, read_frames_names

LOADER, SAVER, OPTIMIZER, TEMPORAL = "NSTLoadVideo", "NSTSaveVideo", "NSTOptimize", "NSTTemporalLoss"
TRAINER = "NSTTrainStylizer"
CORE_VIDEO_HINT = " (this graph uses ComfyUI's own Load Video and Save Video, which run in the editor only)"
TEMPORAL_MODES = ("off", "chain", "warped", "flow")
OVERLAP = 8
"""Frames two neighbouring segments share by default: the later one warms up on them, then they are cross-faded
(a longer fade changes each frame less: docs/video.md#in-parallel-segments-on-dask)."""


def _output(text: str) -> Path:
    """-o's path. A trailing slash asks for a folder of frames; Path drops it, and would write a video file there."""
    path = Path(text)
    if text.endswith(("/", os.sep)) and path.suffix.lower() in ENCODERS:
        raise argparse.ArgumentTypeError(
            f"{text} ends in a slash (a folder of frames) but is named like a video: write {text.rstrip('/' + os.sep)} "
            f"for a video file, or name the folder without {path.suffix}"
        )
    return path


def _frames(text: str) -> tuple[int, int | None]:
    start, colon, stop = text.partition(":")
    try:
        first = int(start or 0)
        last = int(stop) if stop else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not START:STOP, e.g. 0:24 or 10:") from None
    if not colon or first < 0 or (last is not None and last <= first):
        raise argparse.ArgumentTypeError(f"{text!r}: frames START:STOP with 0 <= START < STOP, e.g. 0:24")
    return first, last


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nst video",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("graph", type=Path, help="a graph with one Load Video and one Save Video node")
    parser.add_argument("input", help="a video file, or a folder or glob of frames")
    parser.add_argument(
        "-o",
        "--output",
        type=_output,
        required=True,
        help=f"the result: {', '.join(ENCODERS)} or a folder of PNG frames",
    )
    parser.add_argument(
        "--frames",
        type=_frames,
        default=(0, None),
        metavar="START:STOP",
        help="the frames to take (STOP exclusive; default all)",
    )
    parser.add_argument(
        "--size",
        type=at_least_one,
        default=None,
        help="scale the frames down to this long side in pixels (a smaller clip stays as it is; default: as is)",
    )
    parser.add_argument(
        "--steps", type=at_least_one, default=None, help="optimizer steps per frame (default: the graph's)"
    )
    parser.add_argument(
        "--temporal",
        choices=TEMPORAL_MODES,
        default=None,
        help="off: frames alone; chain: from the last result; warped: from it warped by the flow; "
        "flow: warped, with the temporal loss (default: the graph's)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ID.INPUT=VALUE",
        help="replace any other constant input",
    )
    where = parser.add_mutually_exclusive_group()  # workers started here, or a cluster's
    where.add_argument(
        "--workers", type=at_least_one, default=None, help="segments in parallel on this many local workers"
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="segments on the Dask cluster at this scheduler")
    parser.add_argument(
        "--overlap", type=at_least_one, default=OVERLAP, help=f"frames neighbouring segments share (default {OVERLAP})"
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="the node cache (default: nst run's)")
    parser.add_argument("--no-cache", action="store_true", help="no disk cache (a stopped clip starts over)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="where Load Stylizer looks (default: ./models)"
    )
    parser.add_argument(
        "--confine",
        action="store_true",
        help="refuse a clip or an output outside the current folder (as a server would)",
    )
    return parser


def _flag_problem(flag: str, value: int | None, node: type[Node], input_name: str) -> None:
    """ValueError naming the flag where its value is outside the range of the node input it sets, so that the
    error is in the user's words rather than a node's (checked before the clip is read)."""
    (declared,) = (spec for spec in node.INPUTS if spec.name == input_name)
    problem = declared.problem(value)
    if problem:
        raise ValueError(f"{flag}: {problem.partition(': ')[2]}")


def check_flags(args: argparse.Namespace) -> None:
    if not args.output.name:  # '' or '.': Save Video writes a named file or folder
        raise ValueError("-o must end in a name: a video file (out.mp4) or a new folder for the frames (out/)")
    _flag_problem("--frames", args.frames[0], LoadVideo, "start")
    _flag_problem("--frames", args.frames[1], LoadVideo, "stop")
    _flag_problem("--size", args.size, LoadVideo, "long_side")
    _flag_problem("--steps", args.steps, OptimizeImage, "steps")


def _nodes(prompt: dict[str, Any], class_type: str) -> list[str]:
    return [node_id for node_id, entry in prompt.items() if entry.get("class_type") == class_type]


def places(args: argparse.Namespace) -> tuple[str, Path, str]:
    """The clip as Load Video names it, the output folder, and Save Video's prefix. With ``--confine`` both
    are relative to the current folder, and Load and Save Video refuse what lies outside it."""
    bare = args.output.with_suffix("") if args.output.suffix else args.output
    if args.confine:
        return os.path.relpath(args.input), Path("."), os.path.relpath(bare)
    return str(Path(args.input).absolute()), args.output.parent, bare.name


def settings_for(prompt: dict[str, Any], args: argparse.Namespace, output_name: str, output_format: str) -> list[str]:
    """The ``--set`` values that point the graph at the clip and the result."""
    loaders, savers = _nodes(prompt, LOADER), _nodes(prompt, SAVER)
    if len(loaders) != 1 or len(savers) != 1:
        raise ValueError(
            f"{args.graph}: nst video needs exactly one {LOADER} and one {SAVER} node "
            f"(found {len(loaders)} and {len(savers)}); see graphs/video.json"
            + (CORE_VIDEO_HINT if _nodes(prompt, "LoadVideo") else "")
        )
    load, save = loaders[0], savers[0]
    start, stop = args.frames
    chosen: dict[str, tuple[Any, str]] = {  # input -> its value, and the option it comes from
        f"{load}.video": (json.dumps(places(args)[0]), "the clip argument"),
        f"{load}.start": (start, "--frames"),
        f"{load}.stop": (stop or 0, "--frames"),
        f"{save}.filename_prefix": (json.dumps(output_name), "-o"),
        f"{save}.format": (output_format, "-o"),
    }
    if args.size is not None:
        chosen[f"{load}.long_side"] = (args.size, "--size")
    if args.steps is not None:
        optimizers = _nodes(prompt, OPTIMIZER)
        if not optimizers:
            trainers = "".join(f"; set Train Stylizer's with --set {node}.steps=N" for node in _nodes(prompt, TRAINER))
            raise ValueError(f"{args.graph}: --steps sets Optimize Image's steps, and it has none{trainers}")
        chosen |= {f"{node}.steps": (args.steps, "--steps") for node in optimizers}
    if args.temporal is not None:
        temporal = _nodes(prompt, TEMPORAL)
        if not temporal:
            raise ValueError(f"{args.graph}: --temporal needs a {TEMPORAL} node in the graph")
        chosen |= {f"{node}.mode": (args.temporal, "--temporal") for node in temporal}
    for override in args.overrides:
        node_id, input_name, _ = parse_override(override)  # as nst run reads it
        key = f"{node_id}.{input_name}"
        if key in chosen:
            raise ValueError(f"--set {key}: nst video sets it from {chosen[key][1]}; use that instead")
    return [f"{key}={value}" for key, (value, _) in chosen.items()] + list(args.overrides)


def _format(output: Path) -> str:
    suffix = output.suffix.lower()
    if suffix and suffix not in ENCODERS:
        raise ValueError(f"-o {output}: write {', '.join(ENCODERS)} or a folder of frames, not {suffix}")
    if suffix:
        check_encoder(suffix)
    return suffix[1:] if suffix else "png frames"


def overwrites_input(clip: str, output: Path) -> bool:
    """Whether the result would land on what it is made from: the clip's own file, or the folder its
    frames are read from (a folder of frames is written as ``frame_*.png``, replacing those there)."""
    target = output.resolve()
    if Path(clip).is_file():
        return Path(clip).resolve() == target
    return any(Path(name).resolve().parent == target for name in read_frames_names(clip))


def main(argv: list[str]) -> int:
    from ..app import main as nst

    args = _parser().parse_args(argv)
    try:
        check_flags(args)
        args.output = args.output.with_suffix(args.output.suffix.lower())  # Save Video writes out.MP4 as out.mp4
        prompt = load_graph(args.graph).prompt  # a prompt or an editor workflow, checked as nst run checks it
        output_format = _format(args.output)
        count = probe(
            args.input, args.frames[0], args.frames[1], long_side=args.size
        )  # refuses a clip that is not one, or too large
        if overwrites_input(args.input, args.output):
            raise ValueError(f"-o {args.output}: the clip is read from there; write the result somewhere else")
    except (OSError, ValueError, ClipError) as error:  # GraphFormatError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        settings = settings_for(prompt, args, places(args)[2], output_format)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output_dir = places(args)[1]
    common = ["--output-dir", str(output_dir), "--models-dir", str(args.models_dir), "--device", args.device]
    common += ["--no-cache"] if args.no_cache else ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    common += ["--confine"] if args.confine else []
    started = time.perf_counter()
    if args.workers or args.scheduler:
        from .segments import run_segments

        if _nodes(prompt, TRAINER):
            print(
                f"error: {args.graph} trains a stylizer on the clip, which takes all its frames at once; "
                "run it without --workers and --scheduler (applying the stylizer is fast)",
                file=sys.stderr,
            )
            return 2

        code = run_segments(args, prompt, settings, common, count, _nodes(prompt, LOADER)[0], _nodes(prompt, SAVER)[0])
    else:
        code = nst(["run", str(args.graph), *[item for value in settings for item in ("--set", value)], *common])
    seconds = time.perf_counter() - started
    if code == 0:
        print(
            f"{count} frames in {seconds:.1f} s: {count * 3600 / seconds:.0f} frames per hour -> {args.output}",
            file=sys.stderr,
        )
    return code
