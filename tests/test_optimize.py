"""The optimizer on the project's own 64 px copies of the real sample images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nst_nodes.image import load_image, resize_image, target_size
from nst_nodes.losses import gram_matrix
from nst_nodes.optimize import OptimizerSettings, optimize, start_image
from nst_nodes.vgg import VGGModel, load_vgg19

STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@pytest.fixture(scope="module")
def model() -> VGGModel:
    return load_vgg19("caffe")


def tiny(path: Path, model: VGGModel) -> torch.Tensor:
    image = load_image(path)
    return model.preprocessing.normalize(resize_image(image, *target_size(image.shape[1], image.shape[2], "long_side", 64)))


def gatys_objective(model: VGGModel, content: torch.Tensor, style: torch.Tensor, style_weight: float = 1e-3) -> dict:
    with torch.no_grad():
        content_features = model.features(content, ["relu4_2"])
        style_grams = {k: gram_matrix(v) for k, v in model.features(style, STYLE_LAYERS).items()}
    equal = {layer: 1 / len(STYLE_LAYERS) for layer in STYLE_LAYERS}
    return {
        "model": model.identity,
        "terms": [
            {"kind": "content", "weight": 1.0, "targets": content_features, "layer_weights": {"relu4_2": 1.0}},
            {"kind": "style", "weight": style_weight, "targets": style_grams, "layer_weights": equal},
        ],
    }


@pytest.fixture(scope="module")
def problem(model: VGGModel, request: pytest.FixtureRequest) -> tuple[torch.Tensor, dict]:
    images = Path(__file__).resolve().parent.parent / "graphs" / "images"
    content, style = tiny(images / "tubingen.jpg", model), tiny(images / "starry_night.jpg", model)
    return content, gatys_objective(model, content, style)


def test_lbfgs_lowers_the_objective_substantially(model: VGGModel, problem) -> None:
    content, objective = problem
    _, history = optimize(model, objective, content, OptimizerSettings(steps=10))
    assert history["steps"] == 10 and len(history["loss"]) == 11  # 10 evaluations + the final iterate
    assert min(history["loss"]) < 0.2 * history["loss"][0]
    assert history["style"][-1] < 0.2 * history["style"][0]


def test_adam_lowers_the_objective(model: VGGModel, problem) -> None:
    content, objective = problem
    _, history = optimize(model, objective, content, OptimizerSettings(steps=10, method="adam", lr=5.0))
    assert history["loss"][-1] < 0.7 * history["loss"][0]


def test_noise_start_is_repeatable_with_a_seed(model: VGGModel, problem) -> None:
    content, objective = problem
    settings = OptimizerSettings(steps=3)
    runs = [optimize(model, objective, start_image(model, content, 0.7, seed=5), settings) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    other = optimize(model, objective, start_image(model, content, 0.7, seed=6), settings)
    assert not torch.equal(runs[0][0], other[0])


def test_stop_request_returns_the_best_image_so_far(model: VGGModel, problem) -> None:
    content, objective = problem
    reports: list[int] = []
    result, history = optimize(
        model, objective, content, OptimizerSettings(steps=50),
        report=lambda step, total, loss, image: reports.append(step), should_stop=lambda: len(reports) >= 3,
    )
    assert history["steps"] == 3 and reports == [1, 2, 3]
    assert result.shape == content.shape and not torch.equal(result, content)


def test_non_finite_loss_stops_with_a_clear_error(model: VGGModel, problem) -> None:
    content, objective = problem
    broken = {**objective, "terms": [{**objective["terms"][0], "weight": float("nan")}]}
    with pytest.raises(FloatingPointError, match="loss became nan"):
        optimize(model, broken, content, OptimizerSettings(steps=3))


def test_autograd_works_under_a_hosts_inference_mode(problem) -> None:
    content, _ = problem
    with torch.inference_mode():
        model = load_vgg19("caffe")
        style = content.flip(-1)
        objective = gatys_objective(model, content, style)
        _, history = optimize(model, objective, content.clone(), OptimizerSettings(steps=3))
    assert history["loss"][-1] < history["loss"][0]


def test_bf16_autocast_evaluates_nearly_the_same_loss_and_still_optimizes(model: VGGModel, problem) -> None:
    content, objective = problem
    fp32 = optimize(model, objective, content, OptimizerSettings(steps=5, method="adam", lr=5.0))[1]
    bf16 = optimize(model, objective, content, OptimizerSettings(steps=5, method="adam", lr=5.0, precision="bf16"))[1]
    assert bf16["loss"][0] == pytest.approx(fp32["loss"][0], rel=0.02)  # same start image
    assert bf16["loss"][-1] == pytest.approx(fp32["loss"][-1], rel=0.05)
