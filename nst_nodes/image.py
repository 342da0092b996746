"""Image files <-> ComfyUI ``IMAGE`` tensors (float32 ``[B, H, W, 3]``, RGB, 0..1, on the CPU)."""

from __future__ import annotations

import json
import math
import warnings
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .files import open_regular, write_atomically
from .limits import check_pixels, max_image_pixels, megapixels

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageFileError(ValueError):
    """A file that cannot be decoded as an image; the message names the path."""


def _to_rgb_array(picture: Image.Image) -> np.ndarray:
    """RGB float32 0..1. Transparency is composited over white; 16-bit data keeps its precision."""
    if picture.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(picture, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=2)
    if picture.mode == "F":
        return np.repeat(np.clip(np.asarray(picture, dtype=np.float32), 0.0, 1.0)[..., None], 3, axis=2)
    if picture.mode == "P":
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    if picture.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = picture.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(background, rgba)
    return np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0


def _open(file: BinaryIO, path: Path) -> Image.Image:
    """Read the header and check the pixel limit before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is lower
            picture = Image.open(file)
    except Image.DecompressionBombError:
        # Pillow refuses above twice its MAX_IMAGE_PIXELS whatever our limit: raising ours would not help
        raise ImageFileError(
            f"image: {path}: more pixels than Pillow opens ({megapixels(2 * (Image.MAX_IMAGE_PIXELS or 0))}, its "
            f"guard against decompression bombs) and than the limit here ({megapixels(max_image_pixels())}); "
            "use a smaller image"
        ) from None
    except UnidentifiedImageError as error:
        raise ImageFileError(f"image: {path} is not an image file (unrecognised format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"image: cannot read {path} as an image ({error})") from error
    check_pixels(*picture.size, what=f"image {path}")
    return picture


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) from the header of a regular image file, within the pixel limit; nothing decoded."""
    with open_regular(path) as file:
        return _open(file, path).size


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as ``[1, H, W, 3]``, with its EXIF orientation applied.

    16-bit greyscale keeps its precision; Pillow reads 16-bit RGB(A) at 8 bits per channel
    (finer than the network tells apart).
    """
    path = Path(path)
    with open_regular(path) as file, _open(file, path) as picture:
        try:
            picture.load()
            picture = ImageOps.exif_transpose(picture)
            pixels = _to_rgb_array(picture)
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageFileError(f"image: cannot decode {path}: {error}") from error
    return torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0)


MASK_CHANNELS = ("luminance", "alpha", "red", "green", "blue")


def load_mask(path: str | Path, channel: str = "luminance") -> torch.Tensor:
    """One channel of an image file as a ComfyUI ``MASK`` ``[1, H, W]``, 0..1 (``alpha``: opaque = 1;
    a file without transparency is all 1), with the EXIF orientation applied."""
    if channel not in MASK_CHANNELS:
        raise ValueError(f"channel must be one of {MASK_CHANNELS}, not {channel!r}")
    path = Path(path)
    with open_regular(path) as file, _open(file, path) as picture:
        try:
            picture.load()
            picture = ImageOps.exif_transpose(picture)
            if channel == "luminance":
                values = np.asarray(picture.convert("L"), dtype=np.float32) / 255.0
            else:
                index = {"red": 0, "green": 1, "blue": 2, "alpha": 3}[channel]
                values = np.asarray(picture.convert("RGBA"), dtype=np.float32)[..., index] / 255.0
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageFileError(f"image: cannot decode {path}: {error}") from error
    return torch.from_numpy(np.ascontiguousarray(values)).unsqueeze(0)


def to_picture(image: torch.Tensor) -> Image.Image:
    """The first image of an ``IMAGE`` batch as an 8-bit RGB PIL image."""
    pixels = (image[0].detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def target_size(height: int, width: int, mode: str, size: int, multiple_of: int = 1) -> tuple[int, int]:
    """(height, width) for ``mode`` ``long_side`` (size = longer side in px) or ``pixels`` (size = H*W)."""
    if mode == "long_side":
        scale = size / max(height, width)
    elif mode == "pixels":
        scale = math.sqrt(size / (height * width))
    else:
        raise ValueError(f"resize mode must be 'long_side' or 'pixels', not {mode!r}")

    def snap(length: float) -> int:
        return max(multiple_of, int(round(length / multiple_of)) * multiple_of)

    return snap(height * scale), snap(width * scale)


def matching_size(
    height: int, width: int, reference_height: int, reference_width: int, scale: float
) -> tuple[int, int]:
    """(height, width) with the image's shape and ``scale²`` times the reference's area: a style image at
    ``scale`` 1 has strokes the size the network sees them at in the content's frame."""
    factor = scale * math.sqrt(reference_height * reference_width / (height * width))
    return max(1, round(height * factor)), max(1, round(width * factor))


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of ``[B, H, W, 3]``, clamped back into 0..1."""
    if image.shape[1:3] == (height, width):
        return image
    x = image.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def save_image(
    image: torch.Tensor,
    paths: list[Path],
    prompt: dict[str, Any] | None,
    extra_pnginfo: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Write each image of the batch to its path, whole or not at all.

    PNG carries the graph as ComfyUI writes it (text chunk ``prompt``, plus one per key of
    ``extra_pnginfo``, where the editor puts its ``workflow``), so dropping the file onto the
    editor restores the graph; JPEG carries the prompt as its comment. Without ``overwrite`` a
    numbered name another writer took meanwhile moves on to the next number; returns the paths.
    """
    written = []
    for item, path in zip(image, paths, strict=True):
        fmt = SAVE_FORMATS[path.suffix.lower()]
        options: dict[str, Any] = {}
        if fmt == "PNG":
            info = PngImagePlugin.PngInfo()
            for key, value in {"prompt": prompt, **(extra_pnginfo or {})}.items():
                if value is not None:
                    info.add_text(key, json.dumps(value))
            options = {"pnginfo": info, "compress_level": 4}
        else:
            options = {"quality": 95, **({"comment": json.dumps(prompt).encode()} if prompt is not None else {})}
        picture = to_picture(item.unsqueeze(0))
        written.append(write_atomically(path, partial(_save, picture, fmt, options), overwrite))
    return written


def _save(picture: Image.Image, fmt: str, options: dict[str, Any], file: BinaryIO) -> None:
    picture.save(file, fmt, **options)
