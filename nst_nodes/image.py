"""Image files <-> ComfyUI ``IMAGE`` tensors (float32 ``[B, H, W, 3]``, RGB, 0..1, on the CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageFileError(ValueError):
    """A file that is missing or cannot be decoded as an image; the message names the path."""


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


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as ``[1, H, W, 3]``, with its EXIF orientation applied."""
    try:
        with Image.open(path) as picture:
            picture.load()
            picture = ImageOps.exif_transpose(picture)
            pixels = _to_rgb_array(picture)
    except FileNotFoundError as error:
        raise ImageFileError(f"image file not found: {path}") from error
    except UnidentifiedImageError as error:
        raise ImageFileError(f"not an image file (unrecognised format): {path}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageFileError(f"cannot decode image file {path}: {error}") from error
    return torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0)


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


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of ``[B, H, W, 3]``, clamped back into 0..1."""
    if image.shape[1:3] == (height, width):
        return image
    x = image.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def free_path(path: Path) -> Path:
    """``path`` if unused, else the first free ``stem_0001.ext``, ``stem_0002.ext``, ..."""
    if not path.exists():
        return path
    number = 1
    while (candidate := path.with_name(f"{path.stem}_{number:04d}{path.suffix}")).exists():
        number += 1
    return candidate


def save_image(image: torch.Tensor, path: str | Path, prompt: dict[str, Any] | None, overwrite: bool) -> list[Path]:
    """Write each image of the batch; the graph is embedded as ``prompt`` (PNG text chunk / JPEG comment).

    Without ``overwrite`` an existing file is never replaced: a numbered name is used instead.
    """
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot save {path}: use one of {sorted(SAVE_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(prompt) if prompt is not None else None
    saved = []
    for index, item in enumerate(image):
        pixels = (item.detach().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
        target = path if len(image) == 1 else path.with_name(f"{path.stem}_{index:02d}{path.suffix}")
        target = target if overwrite else free_path(target)
        options: dict[str, Any] = {}
        if fmt == "PNG" and text is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text("prompt", text)
            options["pnginfo"] = info
        elif fmt == "JPEG":
            options["quality"] = 95
            if text is not None:
                options["comment"] = text.encode()
        Image.fromarray(pixels, "RGB").save(target, fmt, **options)
        saved.append(target)
    return saved
