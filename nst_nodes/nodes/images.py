"""Images in and out: load, resize, save, and the picture of an optimization's history."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import image as image_io
from ..files import (
    FileRuleError,
    check_target,
    check_writable,
    file_sha256,
    input_path,
    input_pictures,
    output_paths,
    output_stem,
)
from ..host import Host, host_of
from ..limits import MAX_SIDE, check_pixels, max_image_pixels
from ..plot import plot_history
from ..types import IMAGE, MASK, NST_HISTORY, History
from ..video.io import ClipError, check_clip_size
from .base import HIDDEN_CONTEXT, Node
from .schema import Boolean, Choice, Float, ImageFile, Int, Link, Text, Validation

RESIZE_MODES = ("long_side", "pixels")
SAVE_FORMATS = ("png", "jpg")
DEFAULT_IMAGE = "nst-samples/tubingen.jpg"
DEFAULT_MASK = "nst-samples/tubingen_sky.png"
DEFAULT_SET = "nst-samples/photo_*.jpg"
MAX_SET = 1000


def image_file(default: str) -> ImageFile:
    return ImageFile(
        "image",
        default=default,
        tooltip="An image of the input folder; upload one with the button. nst-samples/ holds the pack's samples.",
        path_tooltip="A path (relative to the input folder, default the current directory) or nst-samples/<name>.",
    )


class ImageFileNode(Node):
    """A node that reads an image file of the input folder (``image``): its checks and its cache key."""

    FUNCTION = "load"
    HIDDEN = HIDDEN_CONTEXT

    @classmethod
    def validate(cls, image: str | None, context: Host | None) -> Validation:
        """The file is there, inside the input folder where the host confines paths, and an image."""
        if image is None:  # linked: checked when it runs
            return True
        try:
            image_io.probe_image(input_path(host_of(context), image))
        except (FileRuleError, image_io.ImageFileError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, image: str | None = None, context: Host | None = None, **_: Any) -> str:
        """The file's content hash: an edited image invalidates the cache, a renamed one does not matter."""
        try:
            return file_sha256(input_path(host_of(context), image))
        except (OSError, ValueError) as error:
            return f"unreadable: {error}"


class LoadImage(ImageFileNode):
    DESCRIPTION = (
        "Read an image: EXIF orientation applied, transparency composited over white, greyscale, "
        "palette and CMYK converted to RGB. In ComfyUI, pick or upload a file of the input folder."
    )
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The picture: float RGB 0..1, one image.",)

    INPUTS = (image_file(DEFAULT_IMAGE),)

    def load(self, image: str, context: Host | None = None) -> tuple[torch.Tensor]:
        return (image_io.load_image(input_path(host_of(context), image)),)


class LoadMask(ImageFileNode):
    DESCRIPTION = (
        "Read one channel of an image file as a mask (white = inside) for Style Statistics and Style Loss. "
        "In ComfyUI a mask painted in the editor (Load Image's MASK output) works the same."
    )
    RETURN_TYPES = (MASK,)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The mask: 0..1, one per file.",)

    INPUTS = (
        image_file(DEFAULT_MASK),
        Choice(
            "channel",
            choices=image_io.MASK_CHANNELS,
            default="luminance",
            tooltip="Which channel is the mask; alpha: opaque = inside",
        ),
        Boolean("invert", default=False, tooltip="Swap inside and outside."),
    )

    def load(
        self, image: str, channel: str = "luminance", invert: bool = False, context: Host | None = None
    ) -> tuple[torch.Tensor]:
        mask = image_io.load_mask(input_path(host_of(context), image), channel)
        return (1.0 - mask if invert else mask,)


class ResizeNode(Node):
    FUNCTION = "resize"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The resized picture.",)


class ResizeImage(ResizeNode):
    DESCRIPTION = "Antialiased bicubic resize, by the long side or by total pixel count, optionally to a multiple of N."

    INPUTS = (
        Link("image", type=IMAGE, tooltip="The picture to resize."),
        Choice(
            "mode",
            choices=RESIZE_MODES,
            default="long_side",
            tooltip="long_side: size is the longer side in px; pixels: size is H*W",
        ),
        Int(
            "size",
            default=512,
            min=8,
            max=1 << 28,
            tooltip=f"The long side in px (at most {MAX_SIDE}), or H*W for mode 'pixels'.",
        ),
        Int(
            "multiple_of",
            default=1,
            min=1,
            max=256,
            optional=True,
            tooltip="Round both sides to a multiple of this (1: no rounding).",
        ),
    )

    @classmethod
    def validate(cls, mode: str | None, size: int | None) -> Validation:
        """The size's limit depends on the mode."""
        if size is not None:
            try:
                limit = MAX_SIDE if mode in (None, "long_side") else max_image_pixels()
            except ValueError as error:
                return str(error)
            if not 8 <= size <= limit:
                return f"size: {size} is outside 8..{limit} for mode {mode or 'long_side'}"
        return True

    def resize(self, image: torch.Tensor, mode: str, size: int, multiple_of: int = 1) -> tuple[torch.Tensor]:
        height, width = image_io.target_size(image.shape[1], image.shape[2], mode, size, multiple_of)
        check_pixels(width, height, "size")
        return (image_io.resize_image(image, height, width),)


class ResizeToMatch(ResizeNode):
    DESCRIPTION = (
        "Resize an image, keeping its shape, to scale² times the area of a reference: the style scale of "
        "Gatys et al. 2017 (smaller: finer strokes; larger: bigger ones)."
    )

    INPUTS = (
        Link("image", type=IMAGE, tooltip="The picture to resize (usually the style)."),
        Link("reference", type=IMAGE, tooltip="The picture whose area to match (usually the content)."),
        Float(
            "scale",
            default=1.0,
            min=0.05,
            max=8.0,
            step=0.01,
            tooltip="Side length relative to the reference's area; 1: the same area.",
        ),
    )

    def resize(self, image: torch.Tensor, reference: torch.Tensor, scale: float) -> tuple[torch.Tensor]:
        height, width = image_io.matching_size(
            image.shape[1], image.shape[2], reference.shape[1], reference.shape[2], scale
        )
        check_pixels(width, height, "scale")
        return (image_io.resize_image(image, height, width),)


class LoadImageSet(Node):
    DESCRIPTION = (
        "The pictures of a folder or glob as one IMAGE batch (a training set for Train Stylizer): each scaled so "
        "that its short side is 'size', then cut square around its centre."
    )
    FUNCTION = "load"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The pictures, [N, size, size, 3], in the order of their names.",)

    INPUTS = (
        Text(
            "images",
            default=DEFAULT_SET,
            tooltip="A folder or a glob of pictures, relative to the input folder; nst-samples/ holds the pack's.",
        ),
        Int("size", default=288, min=64, max=MAX_SIDE, tooltip="Side of the square pictures."),
    )
    HIDDEN = HIDDEN_CONTEXT

    @classmethod
    def validate(cls, images: str | None, size: int | None, context: Host | None) -> Validation:
        """Pictures are there (inside the input folder where the host confines paths), not too many, and each one
        can be read."""
        if images is None:
            return True
        try:
            paths = cls.pictures(images, context)
            check_clip_size(len(paths), size or 1, size or 1, images)
            for path in paths:
                image_io.probe_image(path)
        except (FileRuleError, image_io.ImageFileError, ClipError, ValueError) as error:
            return str(error)
        return True

    @staticmethod
    def pictures(images: str, context: Host | None) -> list[Path]:
        paths = input_pictures(host_of(context), images, "images")
        if not paths:
            raise FileRuleError(f"images: no pictures in {images!r}; name a folder or a glob such as 'photos/*.jpg'")
        if len(paths) > MAX_SET:
            raise FileRuleError(f"images: {len(paths)} pictures in {images!r}; at most {MAX_SET} make a set")
        return paths

    @classmethod
    def IS_CHANGED(cls, images: str, context: Host | None = None, **_: Any) -> str:
        """The pictures' content hashes: adding, editing or removing one changes the set."""
        try:
            return repr([(path.name, file_sha256(path)) for path in cls.pictures(images, context)])
        except (OSError, ValueError) as error:
            return f"unreadable: {error}"

    def load(self, images: str, size: int, context: Host | None = None) -> tuple[torch.Tensor]:
        return (torch.cat([square(image_io.load_image(path), size) for path in self.pictures(images, context)]),)


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[1, H, W, 3]`` scaled so its short side is ``size``, then its centre ``size``²."""
    height, width = image.shape[1:3]
    scale = size / min(height, width)
    height, width = max(size, round(height * scale)), max(size, round(width * scale))
    image = image_io.resize_image(image, height, width)
    top, left = (height - size) // 2, (width - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


class SaveImage(Node):
    DESCRIPTION = (
        "Write PNG or JPEG into the output folder, with the graph embedded (PNG: 'prompt' and 'workflow', "
        "so dropping the file onto the editor restores the graph). Numbered names unless overwrite."
    )
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    INPUTS = (
        Link("image", type=IMAGE, tooltip="The picture(s) to write."),
        Text("filename_prefix", default="nst/result", tooltip="Relative to the output folder; may name subfolders."),
        Choice("format", choices=SAVE_FORMATS, default="png", tooltip="png (lossless) or jpg (quality 95)."),
        Boolean(
            "overwrite",
            default=False,
            tooltip="On: write <prefix>.png every time. Off: <prefix>_00001_.png, then the next free number.",
        ),
    )
    HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", **HIDDEN_CONTEXT}

    @classmethod
    def validate(
        cls, filename_prefix: str | None, format: str | None, overwrite: bool | None, context: Host | None
    ) -> Validation:
        return prefix_problem(filename_prefix, context, extension=format if overwrite else None)

    @classmethod
    def REPLACED_FILES(cls, filename_prefix: str, format: str, overwrite: bool, context: Host | None) -> list[str]:
        """``<prefix>.<format>`` (a batch's ``<prefix>_NN.<format>``) where it overwrites; numbered names differ."""
        return [f"{output_stem(host_of(context), filename_prefix)}.{format}"] if overwrite else []

    def save(
        self,
        image: torch.Tensor,
        filename_prefix: str,
        format: str = "png",
        overwrite: bool = False,
        prompt: dict | None = None,
        extra_pnginfo: dict | None = None,
        context: Host | None = None,
    ) -> dict[str, Any]:
        host = host_of(context)
        stem = output_stem(host, filename_prefix)
        paths = image_io.save_image(
            image, output_paths(stem, format, overwrite, len(image)), prompt, extra_pnginfo, overwrite
        )
        return {"ui": {"images": output_files(paths, host.output_folder)}, "result": ()}


def prefix_problem(
    filename_prefix: str | None,
    context: Host | None,
    stem: Callable[[Host, object], Path] = output_stem,
    extension: str | None = None,
) -> Validation:
    """A save node's prefix stays inside its folder (``stem``'s: the output folder, or the models folder) where
    the host confines paths, and that folder is writable (for the nodes' VALIDATE_INPUTS). ``extension``: the
    save replaces ``<prefix>.<extension>`` (``""``: the folder ``<prefix>``), which must not be taken by
    something else."""
    if filename_prefix is None:
        return True
    try:
        path = stem(host_of(context), filename_prefix)
        check_writable(path.parent, "filename_prefix")
        if extension is not None:
            target = path.with_name(f"{path.name}.{extension}") if extension else path
            check_target(target, "filename_prefix", folder=not extension)
    except FileRuleError as error:
        return str(error)
    return True


def output_files(paths: list[Path], output_folder: Path) -> list[dict[str, str]]:
    """Written files in ComfyUI's ``ui`` shape: name, subfolder of the output folder, type ``output``."""
    folder = os.path.abspath(output_folder)
    files = []
    for path in paths:
        parent = os.path.abspath(path.parent)
        inside = os.path.commonpath([folder, parent]) == folder
        subfolder = Path(os.path.relpath(parent, folder)).as_posix() if inside else parent
        files.append({"filename": path.name, "subfolder": "" if subfolder == "." else subfolder, "type": "output"})
    return files


class PlotHistory(Node):
    DESCRIPTION = "Draw an optimization's history: every loss term per evaluation, log scale, the total in black."
    FUNCTION = "plot"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The plot as an image (connect a preview or save node).",)

    INPUTS = (
        Link("history", type=NST_HISTORY, tooltip="The history output of Optimize Image."),
        Int("width", default=640, min=160, max=4096, tooltip="Plot width in px."),
        Int("height", default=400, min=120, max=4096, tooltip="Plot height in px."),
    )

    def plot(self, history: History, width: int, height: int) -> tuple[torch.Tensor]:
        return (plot_history(history, width, height),)
