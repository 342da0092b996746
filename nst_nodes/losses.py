"""The losses of Gatys et al. as plain functions over feature dictionaries.

Conventions (so that weights carry across image sizes and layer widths):

- ``gram_matrix(F) = F Fᵀ / (C·H·W)`` for activations F of shape ``C × (H·W)``.
- style loss of a layer = ``sum((G - A)²)`` of the normalized Grams. With this
  normalization it equals ``4·E_l`` of the paper (``E_l = Σ(G-A)² / (4 N² M²)`` on raw Grams).
- content loss of a layer = ``mean((F - P)²)`` (the paper's ``½ Σ(F-P)²`` divided by the
  element count, so it does not grow with image size).
- total variation = mean squared difference of vertically and horizontally adjacent pixels.
"""

from __future__ import annotations

import torch

from .types import Objective, Term


def gram_matrix(activation: torch.Tensor) -> torch.Tensor:
    """``[1, C, H, W]`` -> ``[C, C]``, divided by C·H·W."""
    _, channels, height, width = activation.shape
    flat = activation.reshape(channels, height * width)
    return (flat @ flat.t()) / (channels * height * width)


def content_loss(features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                 layer_weights: dict[str, float]) -> torch.Tensor:
    return sum(
        layer_weights[layer] * torch.mean((features[layer] - target) ** 2) for layer, target in targets.items()
    )


def style_loss(features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               layer_weights: dict[str, float]) -> torch.Tensor:
    return sum(
        layer_weights[layer] * torch.sum((gram_matrix(features[layer]) - target) ** 2)
        for layer, target in targets.items()
    )


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation of ``[B, C, H, W]``; zero for a constant image."""
    vertical = image[:, :, 1:, :] - image[:, :, :-1, :]
    horizontal = image[:, :, :, 1:] - image[:, :, :, :-1]
    return torch.mean(vertical**2) + torch.mean(horizontal**2)


def blend_targets(targets: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of several styles' Gram targets, layer by layer.

    ``Σ wᵢ·‖G - Aᵢ‖² = (Σ wᵢ)·‖G - Ā‖² + const`` with ``Ā = Σ wᵢ Aᵢ / Σ wᵢ``, so optimizing against
    the blended target has exactly the gradient of blending the per-style losses.
    """
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"blend weights must be non-negative with a positive sum, got {weights}")
    layers = targets[0].keys()
    for other in targets[1:]:
        if other.keys() != layers:
            raise ValueError(f"style targets have different layers: {sorted(layers)} vs {sorted(other)}")
    return {layer: sum(w * t[layer] for w, t in zip(weights, targets)) / total for layer in layers}


def term_layers(objective: Objective) -> list[str]:
    """Every layer some term of the objective reads."""
    return sorted({layer for term in objective["terms"] for layer in term.get("targets", {})})


def evaluate_terms(
    terms: list[Term], features: dict[str, torch.Tensor], image: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Weighted loss per kind (``content``, ``style``, ``tv``) for the current image and its features."""
    parts: dict[str, torch.Tensor] = {}
    for term in terms:
        if term["kind"] == "content":
            value = content_loss(features, term["targets"], term["layer_weights"])
        elif term["kind"] == "style":
            value = style_loss(features, term["targets"], term["layer_weights"])
        elif term["kind"] == "tv":
            value = tv_loss(image)
        else:
            raise ValueError(f"unknown loss term kind {term['kind']!r}")
        weighted = term["weight"] * value
        parts[term["kind"]] = parts[term["kind"]] + weighted if term["kind"] in parts else weighted
    return parts
