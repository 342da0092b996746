from __future__ import annotations

import pytest
import torch

from nst_nodes.losses import (
    blend_targets,
    content_loss,
    gram_matrix,
    style_loss,
    tv_loss,
)


def test_gram_matrix_matches_a_hand_computed_example() -> None:
    activation = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)
    # F Fᵀ = [[1+4, 3+8], [3+8, 9+16]] = [[5, 11], [11, 25]]; C·H·W = 2·1·2 = 4
    expected = torch.tensor([[5.0, 11.0], [11.0, 25.0]]) / 4
    assert torch.allclose(gram_matrix(activation), expected)


def test_gram_normalization_makes_a_tiled_image_match_its_tile() -> None:
    tile = torch.rand(1, 8, 5, 7)
    assert torch.allclose(gram_matrix(tile), gram_matrix(tile.repeat(1, 1, 3, 2)), rtol=1e-5)


def features() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"a": torch.rand(1, 4, 6, 6, generator=generator), "b": torch.rand(1, 8, 3, 3, generator=generator)}


def test_content_loss_is_zero_at_its_target_and_positive_elsewhere() -> None:
    target, other = features(), {k: v + 0.1 for k, v in features().items()}
    weights = {"a": 0.5, "b": 0.5}
    assert content_loss(target, target, weights).item() == 0.0
    assert content_loss(other, target, weights).item() == pytest.approx(0.01, rel=1e-4)


def test_style_loss_is_zero_at_its_target_and_positive_elsewhere() -> None:
    target = features()
    grams = {k: gram_matrix(v) for k, v in target.items()}
    weights = {"a": 1.0, "b": 1.0}
    assert style_loss(target, grams, weights).item() == 0.0
    shifted = {k: v * 1.5 for k, v in target.items()}
    assert style_loss(shifted, grams, weights).item() > 0.0


def test_total_variation_of_a_constant_image_is_zero() -> None:
    assert tv_loss(torch.full((1, 3, 9, 7), 0.3)).item() == 0.0
    assert tv_loss(torch.rand(1, 3, 9, 7)).item() > 0.0


def test_blended_style_target_has_the_gradient_of_blended_losses() -> None:
    first, second = features(), {k: v.flip(-1) ** 2 for k, v in features().items()}
    grams = [{k: gram_matrix(v) for k, v in f.items()} for f in (first, second)]
    weights = {"a": 1.0, "b": 1.0}
    image = {k: (v + 0.3).requires_grad_(True) for k, v in features().items()}
    blended = style_loss(image, blend_targets(grams, [0.7, 0.3]), weights)
    separate = 0.7 * style_loss(image, grams[0], weights) + 0.3 * style_loss(image, grams[1], weights)
    got = torch.autograd.grad(blended, list(image.values()))
    want = torch.autograd.grad(separate, list(image.values()))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7)


def test_blend_rejects_negative_weights() -> None:
    grams = {k: gram_matrix(v) for k, v in features().items()}
    with pytest.raises(ValueError, match="non-negative"):
        blend_targets([grams, grams], [1.0, -1.0])
