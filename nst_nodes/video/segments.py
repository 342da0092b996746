"""A clip in parallel: cut into overlapping segments that run as one ``nst batch`` on Dask (each segment
chained inside, frame after frame), then joined, the overlaps cross-faded so that no seam shows a jump.

Segment ``i > 0`` starts ``--overlap`` frames before its own share of the clip: those frames let it settle,
and over them the result fades from the segment before into it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import suppress
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from graphrun.console import counted

from .io import DEFAULT_FPS, Clip, ClipError, read_audio, read_clip, write_output

WORK_FOLDER = ".nst-video-segments"


def plan(start: int, stop: int, parts: int, overlap: int) -> list[tuple[int, int]]:
    """``parts`` segments ``[first, stop)`` covering ``start..stop``; each but the first begins ``overlap``
    frames before its share."""
    count = stop - start
    parts = max(1, min(parts, count // max(1, 2 * overlap)))
    bounds = [start + round(count * part / parts) for part in range(parts + 1)]
    return [(max(start, bounds[part] - (overlap if part else 0)), bounds[part + 1]) for part in range(parts)]


def escaped(text: str) -> str:
    """A value as the batch's templates read it literally (a clip named ``take{1}.mp4``)."""
    return text.replace("{", "{{").replace("}", "}}")


def join(segments: list[torch.Tensor], spans: list[tuple[int, int]]) -> torch.Tensor:
    """One clip from overlapping segments: over each overlap the weight moves linearly to the later one."""
    joined = segments[0]
    for frames, (first, _), (_, previous_stop) in zip(segments[1:], spans[1:], spans[:-1], strict=True):
        shared = previous_stop - first
        weights = torch.arange(1, shared + 1, dtype=frames.dtype).view(-1, 1, 1, 1) / (shared + 1)
        blended = (1 - weights) * joined[-shared:] + weights * frames[:shared]
        joined = torch.cat([joined[:-shared], blended, frames[shared:]])
    return joined


def run_segments(
    args: argparse.Namespace,
    prompt: dict[str, Any],
    settings: list[str],
    common: list[str],
    count: int,
    load: str,
    save: str,
) -> int:
    """Run the segments as a batch (``--workers`` local processes, or the cluster at ``--scheduler``), then
    join them into ``args.output``. After a stop (or a failure) the frames finished from the start are written
    there as a shorter clip, and every segment's frames stay in the work folder."""
    from ..app import main as nst

    start = args.frames[0]
    parts = args.workers or 2
    spans = plan(start, start + count, parts, args.overlap)
    output_dir = Path(common[common.index("--output-dir") + 1])
    work = output_dir / WORK_FOLDER / args.output.stem
    kept = [
        escaped(value)
        for value in settings
        if not value.startswith((f"{load}.start=", f"{load}.stop=", f"{save}.filename_prefix=", f"{save}.format="))
    ]
    command = [
        "batch",
        str(args.graph),
        *[item for value in kept for item in ("--set", value)],
        "--set",
        f"{save}.filename_prefix={WORK_FOLDER}/{escaped(args.output.stem)}/segment_{{index}}",
        "--set",
        f"{save}.format=png frames",
        "--over",
        f"{load}.start={[first for first, _ in spans]}",
        "--over",
        f"{load}.stop={[stop for _, stop in spans]}",
        *common,
    ]
    command += ["--scheduler", args.scheduler] if args.scheduler else ["--workers", str(len(spans))]
    if not work.exists():  # a run before joined its segments and removed their frames: written again, no warning
        command += ["--recompute", save]
    if len(spans) < parts:  # each segment's share is at least twice the overlap
        print(
            f"{count} frames with an overlap of {args.overlap} make {counted(len(spans), 'segment')}, not {parts} "
            "(a smaller --overlap makes more)",
            file=sys.stderr,
        )
    print(f"{counted(len(spans), 'segment')}: {', '.join(f'{first}:{stop}' for first, stop in spans)}", file=sys.stderr)
    code = nst(command)
    segments = [_segment(work / f"segment_{index}") for index in range(len(spans))]
    if code == 0:
        for index, (frames, (first, stop)) in enumerate(zip(segments, spans, strict=True)):
            if len(frames) != stop - first:
                print(
                    f"error: segment {index} has {len(frames)} frames, not {stop - first}; they are in {work}",
                    file=sys.stderr,
                )
                return 1
    finished, finished_spans = finished_prefix(segments, spans)
    if not finished:
        if any(len(frames) for frames in segments):
            print(f"no frame was finished from the start; the segments' work is in {work}", file=sys.stderr)
        else:
            print("no frame was finished", file=sys.stderr)
            _remove_work(work)
        return code or 1
    done = finished_spans[-1][1] - start
    source = Path(args.input)
    fps, audio = DEFAULT_FPS, None
    if source.is_file():
        probe = read_clip(str(source), start, start + 1)
        fps = probe.fps
        if probe.audio is not None:
            audio = read_audio(source, Fraction(start) / fps, Fraction(start + done) / fps)
    write_output(args.output, Clip(join(finished, finished_spans), fps, audio))
    if code != 0:
        print(
            f"the first {done} of {count} frames are in {args.output}; the segments done are in {work}", file=sys.stderr
        )
        return code
    _remove_work(work)
    return 0


def _remove_work(work: Path) -> None:
    """A clip's segment folder, and the folder of all segments when no other clip's are left in it."""
    shutil.rmtree(work, ignore_errors=True)
    with suppress(OSError):  # other clips' segments are there
        work.parent.rmdir()


def _segment(folder: Path) -> torch.Tensor:
    """A segment's frames as written so far (none: an empty batch)."""
    try:
        return read_clip(str(folder)).frames
    except ClipError:
        return torch.zeros(0)


def finished_prefix(
    segments: list[torch.Tensor], spans: list[tuple[int, int]]
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The segments that make one unbroken clip from the start, after a stop: the complete ones up to the
    first that is not, and that one's frames if they reach past the overlap; with each one's span as done."""
    kept: list[torch.Tensor] = []
    kept_spans: list[tuple[int, int]] = []
    for frames, (first, stop) in zip(segments, spans, strict=True):
        reached = first + len(frames)
        if reached <= (kept_spans[-1][1] if kept_spans else first):
            break
        kept.append(frames)
        kept_spans.append((first, reached))
        if reached < stop:
            break
    return kept, kept_spans
