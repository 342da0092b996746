"""The control graphs (colour, regions, style losses, coarse to fine) at tiny sizes, and the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_overrides
from PIL import Image

from graphrun import Folders, NodeExecutionError, run
from nst_nodes.color import rgb_to_yiq
from nst_nodes.image import load_image, resize_image
from nst_nodes.metrics import quality

GRAPHS = Path(__file__).resolve().parent.parent / "graphs"
SAMPLES = Path(__file__).resolve().parent.parent / "nst_nodes" / "samples"


def tiny_run(name: str, tmp_path: Path, reporter=None, **overrides) -> Path:
    """Run a shipped graph with every side divided by 8 and 2 optimizer steps; returns the output folder."""
    run(
        GRAPHS / f"{name}.json",
        device="cpu",
        overrides={**small_overrides(name, shrink=8, steps=2), **overrides},
        reporter=reporter,
        folders=Folders(output=tmp_path / "output"),
    )
    return tmp_path / "output"


def picture(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).unsqueeze(0)


def test_luminance_only_transfer_keeps_the_photos_colours(tmp_path: Path) -> None:
    output = tiny_run("colors", tmp_path)
    result = picture(output / "colors_luminance.png")
    content = load_image(SAMPLES / "tubingen.jpg")
    content = resize_image(content, *result.shape[1:3])
    chroma = (rgb_to_yiq(result)[..., 1:] - rgb_to_yiq(content)[..., 1:]).abs()
    assert result.shape == (1, 36, 48, 3) and chroma.mean().item() < 0.01  # 8-bit rounding and clamping only
    assert (output / "colors_histogram.png").is_file()


def test_two_styles_in_two_regions_run_and_a_mask_of_another_shape_is_refused(tmp_path: Path) -> None:
    assert Image.open(tiny_run("regions", tmp_path) / "regions.png").size == (48, 36)
    with pytest.raises(NodeExecutionError, match="does not have the shape"):
        tiny_run("regions", tmp_path, **{"4.image": "nst-samples/starry_night.jpg"})


def test_every_style_loss_runs_and_the_metrics_are_shown(tmp_path: Path, reporter) -> None:
    output = tiny_run("styles", tmp_path, reporter=reporter)
    graph = json.loads((GRAPHS / "styles.json").read_text())
    metric_nodes = [node_id for node_id, node in graph.items() if node["class_type"] == "NSTQualityMetrics"]
    assert len(metric_nodes) == 4 and len(list(output.glob("styles_*.png"))) == 4
    for node_id in metric_nodes:
        (line,) = reporter.text[node_id]
        assert line.startswith("style ") and "content" in line


def test_coarse_to_fine_upsamples_the_coarse_result(tmp_path: Path) -> None:
    output = tiny_run("hires", tmp_path)
    assert Image.open(output / "hires_coarse.png").size == (64, 48)
    assert Image.open(output / "hires.png").size == (128, 96)


def test_metrics_are_zero_for_the_images_themselves_and_grow_with_change() -> None:
    content = resize_image(load_image(SAMPLES / "tubingen.jpg"), 48, 64)
    style = resize_image(load_image(SAMPLES / "starry_night.jpg"), 40, 64)
    same = quality(content, content, style)
    assert same["content"] == 0.0 and same["style"] > 0.1
    assert quality(style, content, style)["style"] < 1e-6
    assert quality(style, content, style)["sliced"] < 0.02  # quantiles of the style itself, interpolated
    blurred = resize_image(resize_image(content, 12, 16), 48, 64)
    assert quality(blurred, content, style)["content"] > 0.1


def test_metrics_too_large_for_the_memory_are_refused_before_anything_is_measured(monkeypatch) -> None:
    from nst_nodes.limits import Available, measuring_bytes
    from nst_nodes.metrics import LAYERS
    from nst_nodes.nodes import NODE_CLASS_MAPPINGS

    image, style = torch.rand(1, 384, 512, 3), torch.rand(1, 96, 128, 3)
    monkeypatch.setattr("nst_nodes.limits.available", lambda device: Available(measuring_bytes(384, 512, LAYERS) - 1))
    monkeypatch.setattr("nst_nodes.nodes.metrics.quality", lambda *args: pytest.fail("measured anyway"))
    measure = NODE_CLASS_MAPPINGS["NSTQualityMetrics"]().measure
    with pytest.raises(MemoryError, match=r"^image: measuring at 512x384 needs about .* use a smaller size \(about"):
        measure(image, image, style)
    with pytest.raises(MemoryError, match=r"^style: measuring at 512x384"):  # the style image is measured as given
        measure(style, style, image)


def test_optimize_image_counts_what_a_sliced_loss_keeps_before_it_starts(monkeypatch) -> None:
    """A sliced loss keeps its sorted projections of every layer for the backward pass: several times the features,
    which the network pass's estimate does not hold. A budget that fits a Gram loss's run refuses the sliced one."""
    from nst_nodes import limits
    from nst_nodes.losses import PROJECTIONS, SLICED_GRADIENT_BYTES, style_statistics, style_term
    from nst_nodes.nodes import NODE_CLASS_MAPPINGS
    from nst_nodes.vgg import load_vgg19

    model = load_vgg19("caffe")
    statistics = {layer: style_statistics(torch.rand(1, c, 8, 8)) for layer, c in (("relu1_1", 64), ("relu2_1", 128))}
    gram, sliced = ({"model": None, "terms": [style_term(statistics, 1.0, statistic=s)]} for s in ("gram", "sliced"))
    assert limits.objective_bytes(gram, 96, 128) == 0
    assert limits.objective_bytes(sliced, 96, 128) == (96 * 128 + 48 * 64) * PROJECTIONS * SLICED_GRADIENT_BYTES
    init = {"pixels": torch.rand(1, 3, 96, 128), "space": model.identity}
    budget = limits.optimization_bytes(96, 128, "relu2_1", "cpu") + limits.objective_bytes(sliced, 96, 128) // 2
    monkeypatch.setattr(limits, "available", lambda device: limits.Available(budget))
    skipped = lambda model, objective, start, *rest: (start, [], 0)  # noqa: E731  (only the check is under test)
    monkeypatch.setattr("nst_nodes.nodes.optimizer.optimize_frames", skipped)
    optimize = NODE_CLASS_MAPPINGS["NSTOptimize"]().run
    optimize(model, gram, init, 1, "lbfgs")  # fits
    with pytest.raises(MemoryError, match=r"^init: optimizing at 128x96 needs about"):
        optimize(model, sliced, init, 1, "lbfgs")


def test_a_style_mask_fits_features_whose_deep_layers_pooling_rounded() -> None:
    from nst_nodes.nodes import NODE_CLASS_MAPPINGS

    # 72x96 pooled four times is 4x6 (4.5 rounded down): a shape 12% off the image's, which is fine.
    features = {"model": "m", "layers": {"relu1_1": torch.rand(1, 3, 72, 96), "relu5_1": torch.rand(1, 3, 4, 6)}}
    mask = torch.zeros(1, 36, 48)
    mask[:, :18] = 1.0
    (statistics,) = NODE_CLASS_MAPPINGS["NSTStyleStatistics"]().statistics(features, mask)
    assert set(statistics["layers"]) == {"relu1_1", "relu5_1"}
    with pytest.raises(ValueError, match="does not have the shape"):
        NODE_CLASS_MAPPINGS["NSTStyleStatistics"]().statistics(features, torch.ones(1, 48, 48))
