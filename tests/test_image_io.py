from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst_nodes.files import FileRuleError
from nst_nodes.image import (
    ImageFileError,
    load_image,
    probe_image,
    resize_image,
    save_image,
    target_size,
)
from nst_nodes.plot import COLOURS, plot_history


def saved(tmp_path: Path, picture: Image.Image, name: str, **options: object) -> Path:
    path = tmp_path / name
    picture.save(path, **options)
    return path


def test_rgb_file_loads_as_comfy_image(samples: Path) -> None:
    image = load_image(samples / "tubingen.jpg")
    assert image.shape == (1, 768, 1024, 3) and image.dtype == torch.float32
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


def test_missing_corrupt_and_truncated_files_name_the_path(tmp_path: Path, samples: Path) -> None:
    with pytest.raises(FileRuleError, match="not found: .*nothing.png"):
        load_image(tmp_path / "nothing.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG but not really")
    with pytest.raises(ImageFileError, match="corrupt.png"):
        load_image(corrupt)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((samples / "tubingen.jpg").read_bytes()[:5000])
    with pytest.raises(ImageFileError, match="truncated.jpg"):
        load_image(truncated)


def test_sixteen_bit_rgb_reads_to_within_one_eight_bit_level(tmp_path: Path) -> None:
    values = np.array([[[0, 257, 65535], [40000, 50000, 60000]]], dtype=">u2")
    path = tmp_path / "rgb16.png"
    path.write_bytes(png(width=2, height=1, bit_depth=16, colour_type=2, rows=[values[0].tobytes()]))
    image = load_image(path)
    assert torch.allclose(image[0, 0], torch.from_numpy(values[0].astype(np.float32) / 65535), atol=1 / 255)


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes]) -> bytes:
    """A PNG file made by hand, so its header can claim anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(50000, 50000), (12000, 12000)])
def test_decoded_pixels_are_limited_from_the_header(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png(width, height, 1, 0, rows=[b"\x00" * (width // 8)]))  # a few KB claiming a huge image
    for read in (probe_image, load_image):
        with pytest.raises(
            ValueError,
            match=r"bomb.png: (.*more than the limit of 64 megapixels.*NST_MAX_IMAGE_PIXELS|more pixels than Pillow "
            r"opens \(179 megapixels, its guard against decompression bombs\) and than the limit here \(64 megapixels)",
        ):
            read(path)


def test_the_pixel_limit_has_an_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setenv("NST_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(
        ValueError, match="40x30 is 0.0012 megapixels, more than the limit of 0.001 megapixels.*NST_MAX_IMAGE_PIXELS"
    ):
        load_image(path)
    for wrong in ("inf", "1e3", "-5"):
        monkeypatch.setenv("NST_MAX_IMAGE_PIXELS", wrong)
        with pytest.raises(ValueError, match="NST_MAX_IMAGE_PIXELS="):
            load_image(path)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_only_regular_files_are_opened(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "special.png"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    with pytest.raises(
        FileRuleError,
        match=f"is a {'device or socket' if kind == 'device' else kind.upper() if kind == 'fifo' else 'folder'}, "
        "not a file",
    ):
        probe_image(path)


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


def test_save_embeds_the_graph_and_the_workflow_and_writes_whole_files(tmp_path: Path) -> None:
    image = torch.rand(1, 6, 5, 3)
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    workflow = {"nodes": [], "links": []}
    path = tmp_path / "sub" / "out.png"
    save_image(image, [path], prompt, {"workflow": workflow})
    with Image.open(path) as picture:
        assert json.loads(picture.text["prompt"]) == prompt and json.loads(picture.text["workflow"]) == workflow
        assert np.array_equal(np.asarray(picture), (image[0].numpy() * 255).round().astype(np.uint8))
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]  # no temporary file left behind
    jpeg = tmp_path / "out.jpg"
    save_image(image, [jpeg], prompt)
    with Image.open(jpeg) as picture:
        assert picture.format == "JPEG" and json.loads(picture.info["comment"]) == prompt


def test_plot_history_draws_every_term_on_a_log_scale() -> None:
    history = {
        "method": "lbfgs",
        "steps": 3,
        "loss": [1e6, 1e4, 1e3, 5e2],
        "content": [0.0, 10.0, 20.0, 30.0],
        "style": [1e6, 9e3, 8e2, 4e2],
    }
    plot = plot_history(history, width=320, height=200)
    assert plot.shape == (1, 200, 320, 3) and plot.dtype == torch.float32
    pixels = (plot[0] * 255).round().to(torch.uint8).reshape(-1, 3)
    for colour in (COLOURS["loss"], COLOURS["content"], COLOURS["style"]):
        assert (pixels == torch.tensor(colour, dtype=torch.uint8)).all(dim=1).any(), colour
    empty = plot_history({"method": "adam", "steps": 0, "loss": [float("nan")]})
    assert empty.shape == (1, 400, 640, 3)


def test_environment_integers_name_the_variable_and_a_valid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from nst_nodes.limits import environment_int

    monkeypatch.delenv("NST_TEST_INT", raising=False)
    assert environment_int("NST_TEST_INT", 5) == 5
    monkeypatch.setenv("NST_TEST_INT", "7")
    assert environment_int("NST_TEST_INT", 5) == 7
    for wrong in ("0", "-3", "1.5", "lots"):
        monkeypatch.setenv("NST_TEST_INT", wrong)
        with pytest.raises(
            ValueError, match=f"NST_TEST_INT='{wrong}' must be a whole number of at least 1, e.g. NST_TEST_INT=5"
        ):
            environment_int("NST_TEST_INT", 5)
