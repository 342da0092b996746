"""Colour control against the formulas of Gatys et al. 2017 (§5)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from nst_nodes.color import RGB_TO_YIQ, color_transform, keep_colors, luminance, match_colors, rgb_to_yiq, yiq_to_rgb


def picture(seed: int, spread: float = 0.15, height: int = 20, width: int = 30) -> torch.Tensor:
    """Mid-range colours with correlated channels: nothing is clamped after a colour transform."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.rand(3, 3, generator=generator) + torch.eye(3)
    noise = torch.randn(1, height, width, 3, generator=generator) @ mixing.t()
    return (0.5 + spread * noise / noise.std()).clamp(0.0, 1.0).double()


def moments(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    pixels = image.reshape(-1, 3).double().numpy()
    return pixels.mean(0), np.cov(pixels.T, bias=True)


def test_yiq_round_trips_and_y_is_the_ntsc_luma() -> None:
    image = torch.rand(1, 5, 7, 3, dtype=torch.float64)
    assert torch.allclose(yiq_to_rgb(rgb_to_yiq(image)), image, atol=1e-6)
    r, g, b = image.unbind(-1)
    assert torch.allclose(rgb_to_yiq(image)[..., 0], 0.299 * r + 0.587 * g + 0.114 * b)
    assert RGB_TO_YIQ[1:].sum(1).abs().max() < 1e-5  # grey has no chrominance


def test_luminance_is_grey_and_matches_the_reference_mean_and_deviation() -> None:
    image, reference = picture(0), picture(1, spread=0.08)
    grey = luminance(image)
    assert torch.equal(grey[..., 0], grey[..., 1]) and torch.equal(grey[..., 1], grey[..., 2])
    matched = luminance(image, reference)[..., 0]
    y_ref = rgb_to_yiq(reference)[..., 0]
    assert matched.mean().item() == pytest.approx(y_ref.mean().item(), abs=1e-6)
    assert matched.std().item() == pytest.approx(y_ref.std().item(), rel=1e-3)


def test_original_colors_keep_the_luminance_of_one_image_and_the_chrominance_of_the_other() -> None:
    stylized, content = picture(2, spread=0.05), picture(3, spread=0.05)
    result = rgb_to_yiq(keep_colors(stylized, content))
    assert torch.allclose(result[..., 0], rgb_to_yiq(stylized)[..., 0], atol=1e-6)
    assert torch.allclose(result[..., 1:], rgb_to_yiq(content)[..., 1:], atol=1e-6)


def test_colors_of_another_size_are_resized_to_the_result() -> None:
    assert keep_colors(picture(2).float(), picture(3, height=40, width=60).float()).shape == (1, 20, 30, 3)


@pytest.mark.parametrize("method", ["symmetric", "cholesky"])
def test_matched_colors_have_the_reference_mean_and_covariance(method: str) -> None:
    style, content = picture(4, spread=0.1), picture(5, spread=0.12, height=25)
    matched = match_colors(style, content, method)
    (mean, cov), (want_mean, want_cov) = moments(matched), moments(content)
    np.testing.assert_allclose(mean, want_mean, atol=1e-6)
    np.testing.assert_allclose(cov, want_cov, atol=1e-4)


def test_symmetric_transform_is_the_image_analogies_formula() -> None:
    style, content = picture(6), picture(7)
    matrix, offset = color_transform(style, content, "symmetric")
    (mean_s, cov_s), (mean_c, cov_c) = moments(style), moments(content)
    eye = 1e-5 * np.eye(3)
    want = scipy.linalg.sqrtm(cov_c + eye).real @ np.linalg.inv(scipy.linalg.sqrtm(cov_s + eye).real)
    np.testing.assert_allclose(matrix.numpy(), want, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(offset.numpy(), mean_c - want @ mean_s, atol=1e-8)


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        match_colors(picture(0), picture(1), "lab")
