from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_nodes.image import (
    ImageFileError,
    load_image,
    resize_image,
    save_image,
    target_size,
)


def saved(tmp_path: Path, picture: Image.Image, name: str, **options: object) -> Path:
    path = tmp_path / name
    picture.save(path, **options)
    return path


def test_rgb_file_loads_as_comfy_image(images: Path) -> None:
    image = load_image(images / "tubingen.jpg")
    assert image.shape == (1, 384, 512, 3) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    picture = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image = load_image(saved(tmp_path, picture, "rotated.jpg", exif=exif.tobytes()))
    assert image.shape == (1, 40, 20, 3)


def test_greyscale_and_palette_become_rgb(tmp_path: Path) -> None:
    grey = load_image(saved(tmp_path, Image.new("L", (4, 3), 128), "grey.png"))
    assert grey.shape == (1, 3, 4, 3) and torch.allclose(grey, torch.full_like(grey, 128 / 255))
    palette = Image.new("RGB", (4, 3), (0, 255, 0)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert torch.allclose(load_image(saved(tmp_path, palette, "palette.png"))[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    picture = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    picture.putpixel((1, 0), (0, 0, 0, 255))
    image = load_image(saved(tmp_path, picture, "alpha.png"))
    assert image[0, 0, 0].tolist() == [1.0, 1.0, 1.0] and image[0, 0, 1].tolist() == [0.0, 0.0, 0.0]


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    image = load_image(saved(tmp_path, Image.new("CMYK", (3, 3), (0, 255, 255, 0)), "cmyk.jpg"))
    red, green, blue = image[0, 1, 1].tolist()
    assert red > 0.9 and green < 0.1 and blue < 0.1


def test_sixteen_bit_keeps_its_precision(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535]], dtype=np.uint16)
    image = load_image(saved(tmp_path, Image.fromarray(values), "deep.png"))
    assert image.shape == (1, 1, 3, 3)
    assert image[0, 0, :, 0].tolist() == pytest.approx([0.0, 257 / 65535, 1.0])


def test_missing_corrupt_and_truncated_files_name_the_path(tmp_path: Path, images: Path) -> None:
    with pytest.raises(ImageFileError, match="not found: .*nothing.png"):
        load_image(tmp_path / "nothing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageFileError, match="corrupt.png"):
        load_image(corrupt)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((images / "tubingen.jpg").read_bytes()[:5000])
    with pytest.raises(ImageFileError, match="truncated.jpg"):
        load_image(truncated)


def test_target_size_by_long_side_pixels_and_multiple() -> None:
    assert target_size(384, 512, "long_side", 256) == (192, 256)
    height, width = target_size(384, 512, "pixels", 64 * 64)
    assert abs(height * width - 4096) < 100 and height / width == pytest.approx(0.75, abs=0.02)
    assert target_size(384, 512, "long_side", 100, multiple_of=16) == (80, 96)


def test_resize_is_antialiased_and_stays_in_range() -> None:
    stripes = torch.zeros(1, 64, 64, 3)
    stripes[:, :, ::2] = 1.0
    small = resize_image(stripes, 8, 8)
    assert small.shape == (1, 8, 8, 3)
    assert torch.allclose(small, torch.full_like(small, 0.5), atol=0.05)  # no aliasing into stripes
    assert 0.0 <= small.min() and small.max() <= 1.0


def test_save_embeds_the_graph_and_never_overwrites_silently(tmp_path: Path) -> None:
    image = torch.rand(1, 6, 5, 3)
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    first = save_image(image, tmp_path / "out.png", prompt, overwrite=False)
    second = save_image(image, tmp_path / "out.png", prompt, overwrite=False)
    assert [p.name for p in first + second] == ["out.png", "out_0001.png"]
    with Image.open(first[0]) as picture:
        assert json.loads(picture.text["prompt"]) == prompt
        assert np.array_equal(np.asarray(picture), (image[0].numpy() * 255).round().astype(np.uint8))
    assert save_image(image, tmp_path / "out.png", prompt, overwrite=True) == first
    jpeg = save_image(image, tmp_path / "out.jpg", prompt, overwrite=False)[0]
    with Image.open(jpeg) as picture:
        assert picture.format == "JPEG" and json.loads(picture.info["comment"]) == prompt
