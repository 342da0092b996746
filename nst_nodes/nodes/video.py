"""Video nodes: clips in and out, optical flow, warps, and how the optimizer carries frames (temporal).

In ComfyUI a clip is an IMAGE batch (core Load Video -> Get Video Components gives images, audio and
fps; Create Video -> Save Video takes them back), so these nodes take and give IMAGE batches; Load
Video and Save Video here do the same from the command line (``nst video``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from ..files import FileRuleError, check_target, input_path, output_paths, output_stem
from ..host import Host, host_of
from ..types import AUDIO, IMAGE, MASK, NST_FLOW, NST_TEMPORAL, Audio, Flow, Temporal
from ..video import io as video_io
from ..video.flow import METHODS, optical_flow, reliable, warp
from ..video.metrics import flicker, warping_error
from .base import HIDDEN_CONTEXT, Node, weight
from .images import output_files, prefix_problem
from .schema import Choice, Float, Int, Link, Text, Validation

TEMPORAL_MODES = ("off", "chain", "warped", "flow")
FRAMES = "png frames"
VIDEO_FORMATS = (*(suffix[1:] for suffix in video_io.ENCODERS), FRAMES)


class LoadVideo(Node):
    DESCRIPTION = (
        "Read a clip (a video file, or a folder or glob of frames) as an IMAGE batch, with its frame "
        "rate and sound, as ComfyUI's Load Video and Get Video Components give them."
    )
    FUNCTION = "load"
    RETURN_TYPES = (IMAGE, "FLOAT", AUDIO)
    RETURN_NAMES = ("frames", "fps", "audio")
    OUTPUT_TOOLTIPS = ("The frames, [N, H, W, 3].", "Frames per second.", "The sound of those frames (or none).")

    INPUTS = (
        Text(
            "video",
            default="nst-samples/carphone.mp4",
            tooltip="A video file, a folder of frames or a glob (relative to the input folder).",
        ),
        Int("start", default=0, min=0, max=10_000_000, tooltip="The first frame to take."),
        Int("stop", default=0, min=0, max=10_000_000, tooltip="The frame to stop before; 0: to the end."),
        Int(
            "long_side", default=0, min=0, max=16384, tooltip="Scale the frames down to this long side; 0: as they are."
        ),
    )
    HIDDEN = HIDDEN_CONTEXT

    @classmethod
    def validate(
        cls, video: str | None, start: int | None, stop: int | None, long_side: int | None, context: Host | None
    ) -> Validation:
        """The clip is there (inside the input folder where the host confines paths), is a clip, and fits."""
        if video is None:
            return True
        try:
            video_io.probe(str(cls.source(video, context)), start or 0, stop or None, long_side or None)
        except (FileRuleError, video_io.ClipError) as error:
            return str(error)
        return True

    @staticmethod
    def source(video: str, context: Host | None) -> Path:
        """The clip's file, folder or glob: inside the input folder where the host confines paths, relative
        to it otherwise (a glob too)."""
        host = host_of(context)
        if any(character in video for character in "*?[") and not host.confined:
            return host.input_folder / video
        return input_path(host, video, "video")

    @classmethod
    def IS_CHANGED(
        cls, video: str, start: int = 0, stop: int = 0, long_side: int = 0, context: Host | None = None, **_: Any
    ) -> str:
        """The clip's files (every frame of a folder or glob): names, sizes and times, so that a clip is read
        again only when one of them changed."""
        source = cls.source(video, context)
        names = [source] if source.is_file() else [Path(name) for name in video_io.read_frames_names(str(source))]
        stamps = [(str(name), name.stat().st_size, name.stat().st_mtime_ns) for name in names if name.exists()]
        return repr([*stamps, start, stop, long_side])

    def load(
        self, video: str, start: int = 0, stop: int = 0, long_side: int = 0, context: Host | None = None
    ) -> tuple[torch.Tensor, float, Audio | None]:
        clip = video_io.read_clip(str(self.source(video, context)), start, stop or None, long_side or None)
        return clip.frames, float(clip.fps), clip.audio


class SaveVideo(Node):
    DESCRIPTION = "Write an IMAGE batch as a video (mp4, webm, gif) with its sound, or as numbered PNG frames."
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    INPUTS = (
        Link("frames", type=IMAGE, tooltip="The frames to write, in order."),
        Float("fps", default=25.0, min=0.01, max=1000.0, step=0.001, tooltip="Frames per second."),
        Text("filename_prefix", default="nst/video", tooltip="Relative to the output folder; may name subfolders."),
        Choice(
            "format",
            choices=VIDEO_FORMATS,
            default="mp4",
            tooltip="mp4, mkv or mov (H.264), webm (VP9), gif, or a folder of numbered PNG frames.",
        ),
        Link("audio", type=AUDIO, optional=True, tooltip="The sound to put beside the frames."),
    )
    HIDDEN = HIDDEN_CONTEXT

    @classmethod
    def validate(cls, filename_prefix: str | None, format: str | None, context: Host | None) -> Validation:
        """The prefix stays inside the output folder and can be written; FFmpeg has the format's encoders."""
        if format not in (None, FRAMES):
            try:
                video_io.check_encoder(f".{format}")
            except video_io.ClipError as error:
                return f"format: {error}"
        return prefix_problem(filename_prefix, context, extension="" if format == FRAMES else format)

    @classmethod
    def REPLACED_FILES(cls, filename_prefix: str, format: str, context: Host | None) -> list[str]:
        stem = output_stem(host_of(context), filename_prefix)
        return [f"{stem}/" if format == FRAMES else f"{stem}.{format}"]

    def save(
        self,
        frames: torch.Tensor,
        fps: float,
        filename_prefix: str,
        format: str = "mp4",
        audio: Audio | None = None,
        context: Host | None = None,
    ) -> dict[str, Any]:
        host = host_of(context)
        stem = output_stem(host, filename_prefix)
        clip = video_io.Clip(frames, Fraction(fps).limit_denominator(1001), audio)
        target = stem if format == FRAMES else output_paths(stem, format, overwrite=True)[0]
        check_target(target, "filename_prefix", folder=format == FRAMES)  # taken since validation?
        if format == FRAMES:
            written = video_io.write_frames(target, frames)
        else:
            video_io.write_clip(target, clip)
            written = [target]
        files = output_files(written, host.output_folder)
        return {"ui": {"videos": files, "text": [f"{len(frames)} frames at {fps:g} fps -> {target}"]}, "result": ()}


class OpticalFlow(Node):
    DESCRIPTION = (
        "The optical flow between consecutive frames, both ways (OpenCV's DIS: no weights, milliseconds "
        "a frame), and where warping the previous frame into the next can be trusted (Ruder et al.'s "
        "forward/backward check: not where something was hidden before, nor at motion boundaries)."
    )
    FUNCTION = "flow"
    RETURN_TYPES = (NST_FLOW, MASK)
    RETURN_NAMES = ("flow", "reliable")
    OUTPUT_TOOLTIPS = (
        "The flows, for Temporal Loss and Warp.",
        "Per frame: 1 where frame i-1 warped into frame i can be trusted (frame 0: none).",
    )

    INPUTS = (
        Link("frames", type=IMAGE, tooltip="The clip (the input frames, not the stylized ones)."),
        Choice("method", choices=METHODS, default="dis", tooltip="dis: fast and sharp; farneback: slower, blurrier."),
    )

    def flow(self, frames: torch.Tensor, method: str = "dis") -> tuple[Flow, torch.Tensor]:
        count, height, width = frames.shape[:3]
        backward = torch.zeros(count, height, width, 2)
        forward = torch.zeros(count, height, width, 2)
        masks = torch.zeros(count, height, width)
        for index in range(1, count):
            backward[index] = optical_flow(frames[index], frames[index - 1], method)
            forward[index] = optical_flow(frames[index - 1], frames[index], method)
            masks[index] = reliable(backward[index], forward[index])
        return {"method": method, "backward": backward, "forward": forward, "reliable": masks}, masks


class Warp(Node):
    DESCRIPTION = "Each frame but the first replaced by the frame before it, warped along the flow (to check a flow)."
    FUNCTION = "warp"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("Frame i: frame i-1 warped into it; where it matches frame i, the flow is right.",)

    INPUTS = (
        Link("frames", type=IMAGE, tooltip="Frames to carry forward (the clip, or a stylized clip)."),
        Link("flow", type=NST_FLOW, tooltip="The flow of the clip (Optical Flow)."),
    )

    def warp(self, frames: torch.Tensor, flow: Flow) -> tuple[torch.Tensor]:
        if frames.shape[:3] != flow["backward"].shape[:3]:
            raise ValueError(
                f"frames: {list(frames.shape[:3])} frames of H x W, but the flow is of "
                f"{list(flow['backward'].shape[:3])}; use the clip the flow was taken from"
            )
        carried = frames.clone()
        for index in range(1, len(frames)):
            previous = frames[index - 1].permute(2, 0, 1).unsqueeze(0)
            carried[index] = warp(previous, flow["backward"][index])[0].permute(1, 2, 0)
        return (carried,)


class TemporalLoss(Node):
    DESCRIPTION = (
        "How Optimize Image carries a batch of frames from one to the next (Ruder et al. 2016): off "
        "(each frame alone), chain (from the previous result), warped (from it warped along the flow) or "
        "flow (warped, and the temporal loss keeps the result close to it where the warp is reliable). "
        "A scene cut starts fresh. In mode flow it also trains a stylizer (Train Stylizer's temporal input)."
    )
    FUNCTION = "build"
    RETURN_TYPES = (NST_TEMPORAL,)
    RETURN_NAMES = ("temporal",)
    OUTPUT_TOOLTIPS = ("For Optimize Image's or Train Stylizer's temporal input.",)

    INPUTS = (
        Choice("mode", choices=TEMPORAL_MODES, default="flow", tooltip="off, chain, warped or flow (see above)."),
        weight(1e3, "Weight of the temporal loss (mode flow), beside the content and style weights."),
        Link(
            "flow", type=NST_FLOW, optional=True, tooltip="The clip's flow (Optical Flow): needed by warped and flow."
        ),
    )

    def build(self, mode: str, weight: float, flow: Flow | None = None) -> tuple[Temporal]:
        if mode in ("warped", "flow") and flow is None:
            raise ValueError(f"mode {mode!r} warps along the flow: connect Optical Flow to 'flow'")
        start = {"off": "content", "chain": "previous", "warped": "warped", "flow": "warped"}[mode]
        return ({"start": start, "weight": weight if mode == "flow" else 0.0, "flow": flow},)  # type: ignore[typeddict-item]


class VideoMetrics(Node):
    DESCRIPTION = (
        "How steady a stylized clip is: warping error (Lai et al. 2018: the change from the previous "
        "result warped by the input's flow, where that warp is reliable) and flicker (the change where "
        "the input stays still). Lower is steadier."
    )
    FUNCTION = "measure"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    OUTPUT_TOOLTIPS = ("The measures as one line of text.",)
    OUTPUT_NODE = True

    INPUTS = (
        Link("result", type=IMAGE, tooltip="The stylized frames."),
        Link("frames", type=IMAGE, tooltip="The input frames they were made from."),
    )

    def measure(self, result: torch.Tensor, frames: torch.Tensor) -> dict[str, Any]:
        count = min(len(result), len(frames))  # a stopped run: the frames done
        if result.shape[1:] != frames.shape[1:]:
            raise ValueError(f"result: {list(result.shape)} and frames: {list(frames.shape)} must be of one size")
        if count < 2:  # a one-frame clip, or a run stopped after its first frame
            text = "one frame: no change from frame to frame to measure"
            return {"ui": {"text": [text]}, "result": (text,)}
        errors, flickers = warping_error(result[:count], frames[:count]), flicker(result[:count], frames[:count])
        text = (
            f"warping error {sum(errors) / len(errors):.5f} (max {max(errors):.5f}), "
            f"flicker {sum(flickers) / len(flickers):.4f}, over {count} frames"
        )
        return {"ui": {"text": [text]}, "result": (text,)}
