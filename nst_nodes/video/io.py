"""Clips in and out through FFmpeg's libraries (PyAV): video files, or folders and globs of frames.

PyAV decodes and encodes in process with the FFmpeg it ships and keeps the frame rate exact (a
fraction); nothing is spawned. Audio travels as ComfyUI's AUDIO (``{"waveform": [1, C, S],
"sample_rate": R}``), cut to the frames taken, so that a clip from ComfyUI's own Load Video and one
read here are the same thing.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..types import Audio

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".gif", ".m4v")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
ENCODERS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9", ".gif": "gif"}
DEFAULT_FPS = Fraction(25)
MAX_CLIP_BYTES = 8 << 30
"""The decoded frames of a clip, as float32 RGB, may take at most this much memory."""


class ClipError(ValueError):
    """A clip that cannot be read or written, with what to do."""


@dataclass
class Clip:
    """Frames ``[N, H, W, 3]`` float32 in 0..1 (ComfyUI's IMAGE batch), their rate, and their sound
    (ComfyUI's AUDIO; None: silent)."""

    frames: torch.Tensor
    fps: Fraction
    audio: Audio | None = None


def natural_key(text: str) -> list[int | str]:
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _scaled(width: int, height: int, long_side: int | None) -> tuple[int, int]:
    if not long_side or max(width, height) <= long_side:
        return width, height
    scale = long_side / max(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def check_clip_size(count: int, width: int, height: int, what: str) -> None:
    """Refuse a clip whose frames would not fit in :data:`MAX_CLIP_BYTES`, naming what would."""
    needed = count * width * height * 3 * 4
    if needed > MAX_CLIP_BYTES:
        fits = max(1, MAX_CLIP_BYTES // (width * height * 12))
        raise ClipError(
            f"{what}: {count} frames of {width}x{height} take {needed / 2**30:.1f} GiB as RGB floats, "
            f"more than {MAX_CLIP_BYTES / 2**30:.0f} GiB; take at most {fits} frames at this size "
            "(--frames START:STOP) or a smaller size (--size)"
        )


def read_video(path: Path, start: int = 0, stop: int | None = None, long_side: int | None = None) -> Clip:
    """Frames ``start`` to ``stop`` (exclusive) of a video file, the long side scaled down to ``long_side``."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise ClipError(f"{path}: not a video FFmpeg can read ({error})") from None
    with container:
        if not container.streams.video:
            raise ClipError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.name is None:
            raise ClipError(f"{path}: its video codec is not one FFmpeg here can decode")
        width, height = _scaled(stream.codec_context.width, stream.codec_context.height, long_side)
        expected = stream.frames or 0
        wanted = (stop if stop is not None else expected) - start
        if expected and wanted > 0:
            check_clip_size(min(wanted, expected - start), width, height, str(path))
        frames: list[np.ndarray] = []
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index < start:
                    continue
                if stop is not None and index >= stop:
                    break
                frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
                if len(frames) * width * height * 12 > MAX_CLIP_BYTES:
                    check_clip_size(len(frames), width, height, str(path))
        except av.error.FFmpegError as error:
            where = f"at frame {start + len(frames)}"
            hint = f"; take the frames before it (--frames {start}:{start + len(frames)})" if frames else ""
            raise ClipError(f"{path}: cannot be decoded {where} ({error}); is it truncated?{hint}") from None
        has_audio = bool(container.streams.audio)
        fps = Fraction(stream.average_rate) if stream.average_rate else DEFAULT_FPS
    if not frames:
        raise ClipError(f"{path}: no frames in {start}:{'' if stop is None else stop}")
    pixels = torch.from_numpy(np.stack(frames)).float() / 255
    audio = read_audio(path, start / fps, (start + len(frames)) / fps) if has_audio else None
    return Clip(pixels, fps, audio)


def read_audio(path: Path, begin: Fraction, end: Fraction) -> Audio | None:
    """The first audio stream from ``begin`` to ``end`` seconds, as ComfyUI's AUDIO (float planar)."""
    import av

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=rate)
        try:
            for frame in container.decode(stream):
                chunks += [piece.to_ndarray() for piece in resampler.resample(frame)]
        except av.error.FFmpegError:
            pass  # a damaged tail: the sound up to there
    if not chunks:
        return None
    samples = np.concatenate(chunks, axis=1)[:, int(begin * rate) : int(end * rate)]
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples))[None], "sample_rate": rate}


def read_frames_names(pattern: str) -> list[str]:
    """The pictures of a folder, or those a glob matches, in natural order."""
    folder = Path(pattern)
    if folder.is_dir():
        names = [str(path) for path in folder.iterdir() if path.suffix.lower() in FRAME_SUFFIXES]
    else:
        names = [name for name in glob.glob(pattern) if Path(name).suffix.lower() in FRAME_SUFFIXES]
    return sorted(names, key=natural_key)


def read_frames(
    pattern: str, start: int = 0, stop: int | None = None, long_side: int | None = None, fps: Fraction = DEFAULT_FPS
) -> Clip:
    """Frames from a folder (its pictures) or a glob, in natural order (frame_2 before frame_10)."""
    names = read_frames_names(pattern)[start:stop]
    if not names:
        raise ClipError(f"{pattern}: no frames ({', '.join(FRAME_SUFFIXES)}) there")
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for name in names:
        try:
            with Image.open(name) as picture:
                if size is None:
                    size = picture.size
                    check_clip_size(len(names), *_scaled(size[0], size[1], long_side), pattern)
                elif picture.size != size:
                    raise ClipError(
                        f"{name}: {picture.size[0]}x{picture.size[1]}, but the first frame is "
                        f"{size[0]}x{size[1]}; every frame of a clip has one size"
                    )
                frames.append(
                    np.asarray(
                        picture.convert("RGB").resize(_scaled(size[0], size[1], long_side), Image.Resampling.BICUBIC)
                    )
                )
        except OSError as error:
            raise ClipError(f"{name}: not a picture that can be read ({error})") from None
    return Clip(torch.from_numpy(np.stack(frames)).float() / 255, fps)


def read_clip(source: str, start: int = 0, stop: int | None = None, long_side: int | None = None) -> Clip:
    """A video file, or a folder or glob of frames."""
    path = Path(source)
    if path.is_file():
        return read_video(path, start, stop, long_side)
    if path.exists() or any(character in source for character in "*?["):
        return read_frames(source, start, stop, long_side)
    raise ClipError(f"{source}: no such file, folder or glob")


def probe(source: str, start: int = 0, stop: int | None = None, long_side: int | None = None) -> int:
    """How many frames ``start:stop`` of a clip holds, without decoding it (a video's header may not say:
    then it is decoded); raises :class:`ClipError` for what cannot be a clip, or one too large."""
    path = Path(source)
    if not path.is_file():
        names = read_frames_names(source)[start:stop]
        if not names:
            return len(read_clip(source, start, stop, long_side).frames)  # says why there is nothing
        sizes: dict[tuple[int, int], str] = {}
        for name in names:  # headers only
            try:
                with Image.open(name) as picture:
                    sizes.setdefault(picture.size, name)
            except OSError as error:
                raise ClipError(f"{name}: not a picture that can be read ({error})") from None
        if len(sizes) > 1:
            (first, _), (size, name) = list(sizes.items())[:2]
            raise ClipError(
                f"{name}: {size[0]}x{size[1]}, but the first frame is {first[0]}x{first[1]}; every frame "
                "of a clip has one size"
            )
        width, height = next(iter(sizes))
        check_clip_size(len(names), *_scaled(width, height, long_side), source)
        return len(names)
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            width, height = _scaled(stream.codec_context.width, stream.codec_context.height, long_side)
            total = stream.frames
    except av.error.FFmpegError as error:
        raise ClipError(f"{path}: not a video FFmpeg can read ({error})") from None
    if not total:  # the header does not say: count the frames, without converting them
        try:
            with av.open(str(path)) as container:
                total = sum(1 for _ in container.decode(container.streams.video[0]))
        except av.error.FFmpegError as error:
            raise ClipError(f"{path}: cannot be decoded ({error}); is it truncated?") from None
    count = len(range(total)[start:stop])
    if count == 0:
        raise ClipError(f"{path}: no frames in {start}:{'' if stop is None else stop} (it has {total})")
    check_clip_size(count, width, height, str(path))
    return count


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def write_frames(folder: Path, frames: torch.Tensor) -> list[Path]:
    """The frames as ``frame_00000.png``... in ``folder``; the frames of an earlier, longer clip there are
    removed first, so that the folder holds exactly this clip."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("frame_*.png"):
        old.unlink()
    paths = [folder / f"frame_{index:05d}.png" for index in range(len(frames))]
    for path, frame in zip(paths, to_uint8(frames), strict=True):
        Image.fromarray(frame).save(path)
    return paths


def check_encoder(suffix: str) -> None:
    """Refuse, before any work, a video format whose encoders this FFmpeg build lacks (PyAV's wheels carry
    them all; a PyAV built against a system FFmpeg may not)."""
    import av

    sound = {".webm": "libopus", ".gif": None}.get(suffix, "aac")
    for name in (ENCODERS[suffix], sound):
        if name is None:
            continue
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            others = [other[1:] for other in ENCODERS if other != suffix]
            raise ClipError(
                f"{suffix[1:]}: this FFmpeg has no '{name}' encoder; write {', '.join(others)} or PNG frames"
            ) from None


def write_output(target: Path, clip: Clip) -> list[Path]:
    """A video file for a video suffix (see :func:`write_clip`), else a folder of frames: what was written."""
    if target.suffix.lower() in ENCODERS:
        write_clip(target, clip)
        return [target]
    return write_frames(target, clip.frames)


def write_clip(target: Path, clip: Clip) -> None:
    """Write ``clip`` as a video (by the suffix: mp4, mkv, mov, webm, gif) with its sound (cut to the
    frames' length: a stopped run's frames get the sound of those frames). Written to a temporary name
    first, so a stopped write leaves no half file under the real one."""
    suffix = target.suffix.lower()
    if suffix not in ENCODERS:
        raise ClipError(f"{target}: write {', '.join(ENCODERS)} or a folder of frames, not {suffix or 'no suffix'}")
    import av

    temporary = target.with_name(f".{target.stem}.writing{suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    height, width = clip.frames.shape[1:3]
    try:
        with av.open(str(temporary), "w") as output:
            stream = output.add_stream(ENCODERS[suffix], rate=clip.fps)
            stream.width, stream.height = width - width % 2, height - height % 2
            stream.pix_fmt = "rgb8" if suffix == ".gif" else "yuv420p"
            sound = None
            if clip.audio is not None and suffix != ".gif":  # every stream is added before the first packet
                sound = output.add_stream(
                    "libopus" if suffix == ".webm" else "aac",
                    rate=48000 if suffix == ".webm" else int(clip.audio["sample_rate"]),
                    layout="mono" if clip.audio["waveform"].shape[1] == 1 else "stereo",
                )
            for frame in to_uint8(clip.frames):
                picture = av.VideoFrame.from_ndarray(frame[: stream.height, : stream.width], format="rgb24")
                output.mux(stream.encode(picture))
            output.mux(stream.encode(None))
            if sound is not None and clip.audio is not None:
                duration = Fraction(len(clip.frames)) / clip.fps
                samples = int(duration * int(clip.audio["sample_rate"]))
                _write_audio(output, sound, {**clip.audio, "waveform": clip.audio["waveform"][..., :samples]})
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_audio(output: Any, stream: Any, audio: Audio) -> None:
    """Encode ComfyUI's AUDIO into ``stream`` of ``output``, resampled to what its codec takes."""
    import av

    layout = stream.codec_context.layout.name
    waveform = audio["waveform"][0].float().cpu().numpy()[: 1 if layout == "mono" else 2]
    resampler = av.AudioResampler(
        format=stream.codec_context.format.name, layout=layout, rate=stream.codec_context.sample_rate
    )
    for begin in range(0, waveform.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(waveform[:, begin : begin + 1024]), format="fltp", layout=layout
        )
        frame.sample_rate = int(audio["sample_rate"])
        for piece in resampler.resample(frame):
            output.mux(stream.encode(piece))
    for piece in resampler.resample(None):
        output.mux(stream.encode(piece))
    output.mux(stream.encode(None))
