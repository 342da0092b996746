"""The losses against hand computations and reference formulas (scipy), on small random features, on
``--device`` (default cpu): the inputs are made on the CPU from seeded generators, then moved."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from nst_nodes.losses import (
    PROJECTIONS,
    QUANTILES,
    ObjectiveFunction,
    blend_statistics,
    check_mask_fits,
    content_loss,
    direction_groups,
    gram_matrix,
    layer_loss,
    position_weights,
    projection_directions,
    style_statistics,
    style_term,
    tv_loss,
)


def test_gram_matrix_matches_a_hand_computed_example(device: torch.device) -> None:
    activation = torch.tensor([[1.0, 2.0], [3.0, 4.0]], device=device).reshape(1, 2, 1, 2)
    # F Fᵀ = [[1+4, 3+8], [3+8, 9+16]] = [[5, 11], [11, 25]]; C·H·W = 2·1·2 = 4
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]], device=device) / 4
    assert torch.allclose(gram_matrix(activation), expected)


def test_gram_normalization_makes_a_tiled_image_match_its_tile(device: torch.device) -> None:
    tile = torch.rand(1, 8, 5, 7).to(device)
    assert torch.allclose(gram_matrix(tile), gram_matrix(tile.repeat(1, 1, 3, 2)), rtol=1e-5)


def features(device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    made = {"a": torch.rand(1, 4, 6, 6, generator=generator), "b": torch.rand(1, 8, 3, 3, generator=generator)}
    return {name: value.to(device) for name, value in made.items()}


def evaluate(term: dict, activations: dict[str, torch.Tensor]) -> torch.Tensor:
    device = next(iter(activations.values())).device
    return ObjectiveFunction([term], device)(activations, torch.zeros(1, 3, 4, 4, device=device))["style"]


def test_content_loss_is_zero_at_its_target_and_positive_elsewhere(device: torch.device) -> None:
    target, other = features(device), {k: v + 0.1 for k, v in features(device).items()}
    weights = {"a": 0.5, "b": 0.5}
    assert content_loss(target, target, weights).item() == 0.0
    assert content_loss(other, target, weights).item() == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("statistic", ["gram", "mean_cov", "sliced"])
def test_every_style_loss_is_zero_at_its_own_statistics_and_positive_elsewhere(
    statistic: str, device: torch.device
) -> None:
    target = features(device)
    term = style_term({k: style_statistics(v) for k, v in target.items()}, 1.0, statistic=statistic)
    assert abs(evaluate(term, target).item()) < 1e-4 * evaluate(term, {k: v * 1.5 for k, v in target.items()}).item()
    assert evaluate(term, {k: v * 1.5 for k, v in target.items()}).item() > 0.0


def test_a_mask_takes_the_statistics_of_its_region_alone(device: torch.device) -> None:
    activation = torch.rand(1, 5, 8, 8).to(device)
    left = torch.zeros(8, 8, device=device)
    left[:, :4] = 1.0
    inside = style_statistics(activation, left)
    alone = style_statistics(activation[..., :4].contiguous())
    assert torch.allclose(inside["gram"], alone["gram"], atol=1e-6)
    assert torch.allclose(inside["mean"], alone["mean"], atol=1e-6)
    assert torch.allclose(inside["quantiles"], alone["quantiles"], atol=1e-5)
    everywhere = style_statistics(activation, torch.ones(8, 8, device=device))
    assert torch.allclose(everywhere["gram"], gram_matrix(activation), atol=1e-6)


def test_a_mask_follows_the_network_down_by_area_averaging(device: torch.device) -> None:
    mask = (torch.rand(16, 16) > 0.5).float().to(device)
    weights = position_weights(mask, 8, 8)
    pooled = torch.nn.functional.avg_pool2d(mask[None, None], 2).flatten()
    assert torch.allclose(weights, pooled / pooled.sum())
    assert weights.sum().item() == pytest.approx(1.0)


def test_masks_must_have_the_image_shape_and_select_something() -> None:
    check_mask_fits("mask", torch.ones(50, 100), 25, 50)
    with pytest.raises(ValueError, match="shape"):
        check_mask_fits("mask", torch.ones(50, 50), 25, 50)
    with pytest.raises(ValueError, match="empty"):
        check_mask_fits("mask", torch.zeros(25, 50), 25, 50)


def test_mean_cov_is_the_2_wasserstein_distance_between_fitted_gaussians(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(1)
    style = torch.randn(1, 6, 10, 10, generator=generator) * torch.arange(1, 7.0).reshape(1, 6, 1, 1)
    image = torch.randn(1, 6, 9, 11, generator=generator) + 0.5
    got = layer_loss("mean_cov", style_statistics(style.to(device)), normalize=False)(image.to(device), None).item()

    def gaussian(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        flat = x.reshape(6, -1).double().numpy()
        return flat.mean(1), np.cov(flat, bias=True)

    (m1, s1), (m2, s2) = gaussian(image), gaussian(style)
    root = scipy.linalg.sqrtm(s2).real
    want = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(root @ s1 @ root).real)
    assert got == pytest.approx(want, rel=1e-4)


def test_sliced_is_the_mean_squared_gap_of_sorted_projections(device: torch.device) -> None:
    # With QUANTILES positions on both sides the quantile grid is the samples themselves: exact.
    generator = torch.Generator().manual_seed(2)
    style = torch.randn(1, 3, 16, QUANTILES // 16, generator=generator) * 2
    image = torch.rand(1, 3, QUANTILES // 16, 16, generator=generator)
    got = layer_loss("sliced", style_statistics(style.to(device)), normalize=False)(image.to(device), None).item()
    directions = projection_directions(3).double().numpy()
    project = lambda x: np.sort(x.reshape(3, -1).double().numpy().T @ directions, axis=0)  # noqa: E731
    want = np.mean((project(image) - project(style)) ** 2)
    assert got == pytest.approx(want, rel=1e-4)


def test_without_a_gradient_the_sliced_statistics_take_a_few_directions_at_a_time_to_the_same_values(
    device: torch.device,
) -> None:
    """Measuring a large result (no gradient) sorts the projections a group of directions at a time, which bounds
    its memory; optimizing (a gradient) sorts them all at once. Both give the same quantiles and loss."""
    needing_gradient = torch.rand(1, 8, 4, 4, requires_grad=True)
    assert direction_groups(needing_gradient) == [slice(0, PROJECTIONS)]
    assert len(direction_groups(needing_gradient.detach())) > 1
    with torch.no_grad():
        assert len(direction_groups(needing_gradient)) > 1
    generator = torch.Generator().manual_seed(3)
    style, image = (torch.rand(1, 8, 24, 20, generator=generator).to(device) for _ in range(2))
    with torch.no_grad():
        statistics = style_statistics(style)
        grouped = layer_loss("sliced", statistics, normalize=True)(image, None)
    whole_statistics = style_statistics(style.clone().requires_grad_())
    assert torch.allclose(whole_statistics["quantiles"], statistics["quantiles"])
    whole = layer_loss("sliced", statistics, normalize=True)(image.clone().requires_grad_(), None)
    assert whole.item() == pytest.approx(grouped.item(), rel=1e-6)


@pytest.mark.parametrize("statistic", ["gram", "mean_cov", "sliced"])
def test_normalize_divides_each_layer_by_the_size_of_its_target(statistic: str, device: torch.device) -> None:
    target = style_statistics(torch.rand(1, 4, 16, 16).to(device) * 3)
    image = torch.rand(1, 4, 16, 16).to(device)
    plain = layer_loss(statistic, target, normalize=False)(image, None)
    scaled = layer_loss(statistic, target, normalize=True)(image, None)
    size = {
        "gram": target["gram"].square().sum(),
        "mean_cov": 4 * torch.trace(target["gram"]),
        "sliced": target["quantiles"].square().mean(),
    }[statistic]
    assert scaled.item() == pytest.approx((plain / size).item(), rel=1e-4)


@pytest.mark.parametrize("statistic", ["gram", "mean_cov", "sliced"])
def test_gradient_descent_on_each_style_loss_moves_features_to_the_style(statistic: str, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(3)
    style = (torch.randn(1, 4, 12, 12, generator=generator) * torch.tensor([3.0, 1, 0.5, 2]).reshape(1, 4, 1, 1)).relu()
    loss = layer_loss(statistic, style_statistics(style.to(device)), normalize=True)
    image = torch.rand(1, 4, 12, 12, generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([image], lr=0.05)
    start = loss(image, None).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss(image, None).backward()
        optimizer.step()
    assert loss(image, None).item() < 0.2 * start


@pytest.mark.parametrize("statistic", ["content", "gram", "mean_cov", "sliced"])
def test_bf16_features_give_the_fp32_loss_of_their_values_and_a_bf16_gradient(
    statistic: str, device: torch.device
) -> None:
    """A bf16 network pass hands its features (channels-last) straight to the losses, which sum in fp32."""
    generator = torch.Generator().manual_seed(5)
    style = (torch.rand(1, 8, 10, 12, generator=generator) * 3).to(device)
    values = (torch.rand(1, 8, 10, 12, generator=generator) * 3).bfloat16().to(device)
    if statistic == "content":
        term = {"kind": "content", "weight": 1.0, "targets": {"a": style}, "layer_weights": {"a": 1.0}}
    else:
        term = style_term({"a": style_statistics(style)}, 1.0, statistic=statistic, normalize=True)
    objective = ObjectiveFunction([term], device)
    results = []
    for features in (values.float(), values.contiguous(memory_format=torch.channels_last)):
        leaf = features.detach().clone().requires_grad_(True)
        loss = sum(objective({"a": leaf}, torch.zeros(1, 3, 4, 4, device=device)).values())
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    (loss32, grad32), (loss16, grad16) = results
    assert loss16.dtype == torch.float32 and grad16.dtype == torch.bfloat16
    assert loss16.item() == pytest.approx(loss32.item(), rel=1e-5)
    assert torch.nn.functional.cosine_similarity(grad16.float().flatten(), grad32.flatten(), dim=0) > 0.999


def test_total_variation_of_a_constant_image_is_zero(device: torch.device) -> None:
    assert tv_loss(torch.full((1, 3, 9, 7), 0.3, device=device)).item() == 0.0
    assert tv_loss(torch.rand(1, 3, 9, 7).to(device)).item() > 0.0


def test_blended_gram_target_has_the_gradient_of_blended_losses(device: torch.device) -> None:
    first, second = features(device), {k: v.flip(-1) ** 2 for k, v in features(device).items()}
    styles = [{k: style_statistics(v) for k, v in f.items()} for f in (first, second)]
    image = {k: (v + 0.3).requires_grad_(True) for k, v in features(device).items()}
    blended = evaluate(style_term(blend_statistics(styles, [0.7, 0.3]), 1.0), image)
    separate = 0.7 * evaluate(style_term(styles[0], 1.0), image) + 0.3 * evaluate(style_term(styles[1], 1.0), image)
    got = torch.autograd.grad(blended, list(image.values()))
    want = torch.autograd.grad(separate, list(image.values()))
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)


def test_blend_rejects_negative_weights() -> None:
    statistics = {k: style_statistics(v) for k, v in features(torch.device("cpu")).items()}
    with pytest.raises(ValueError, match="non-negative"):
        blend_statistics([statistics, statistics], [1.0, -1.0])


def test_a_masked_style_term_ignores_the_image_outside_its_region(device: torch.device) -> None:
    target = {"a": style_statistics(torch.rand(1, 4, 8, 8).to(device))}
    mask = torch.zeros(8, 8, device=device)
    mask[:4] = 1.0
    term = style_term(target, 1.0, mask=mask)
    image = torch.rand(1, 4, 8, 8).to(device).requires_grad_(True)
    evaluate(term, {"a": image}).backward()
    assert image.grad[..., 4:, :].abs().max().item() == 0.0
    assert image.grad[..., :4, :].abs().max().item() > 0.0
