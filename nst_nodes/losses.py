"""The losses as plain functions over feature dictionaries.

Conventions (so that a weight means the same at every image size and layer width):

- Statistics are means over the positions of a layer (weighted by a region mask when there is
  one, Gatys et al. 2017 §4): ``gram = Σ_p w_p f_p f_pᵀ / C`` with ``Σ_p w_p = 1``; without a mask
  ``w_p = 1/(H·W)``, so ``gram(F) = F Fᵀ / (C·H·W)``. A mask is resized to every layer by area
  averaging, the way pooling shrinks the image.
- Style statistics of a layer (``style_statistics``): the Gram matrix, the mean, and quantiles of
  the features projected on fixed random directions. The style loss compares one of them:
  ``gram``: ``Σ(G - A)²`` (``4·E_l`` of Gatys et al. 2015); ``mean_cov``: the squared
  2-Wasserstein distance between Gaussians fitted to the two feature distributions;
  ``sliced``: the squared sliced 2-Wasserstein distance between the distributions themselves.
  With ``normalize``, each layer's loss is divided by the same quantity of the target (its
  Gram's squared norm, its second moment, its projections' mean square), so every layer counts.
- content loss of a layer = ``mean((F - P)²)``.
- Features may come in bf16 (a reduced-precision network pass); every loss sums in fp32.
- total variation = mean squared difference of vertically and horizontally adjacent pixels.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from functools import lru_cache, reduce
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from . import autograd_ops
from .types import FeatureTerm, LayerStatistics, Objective, Statistic, StyleTerm, TemporalTerm, Term

if TYPE_CHECKING:
    from .vgg import VGGModel

STATISTICS: tuple[Statistic, ...] = ("gram", "mean_cov", "sliced")
PROJECTIONS = 64  # random directions per layer for the sliced distance
QUANTILES = 256  # quantiles kept of the style's projected features
DIRECTIONS_AT_ONCE = 4
"""Directions projected and sorted together where no gradient is kept (measuring, style statistics): a sliced loss's
buffers are :data:`SLICED_BYTES` per position and direction at once, which all 64 at a 2048 px layer do not fit."""
SLICED_BYTES = 136
"""Bytes per position and direction at the peak of a sliced loss without gradient (measured: docs/performance.md)."""
SLICED_GRADIENT_BYTES = 92
"""Bytes per position and direction that a sliced loss keeps for its backward pass, at every layer (measured: the
same)."""
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
"""Gatys et al.'s layers: the reference objective's (:func:`gatys_objective`) and the quality metrics'."""
EIGEN_FLOOR = 1e-8  # eigenvalues below this count as zero (the covariance of relu features is singular)


def position_weights(mask: torch.Tensor | None, height: int, width: int) -> torch.Tensor | None:
    """A ``[H·W]`` weight per position of a layer summing to 1, from a mask of any size; None: uniform."""
    if mask is None:
        return None
    resized = F.interpolate(mask.float()[None, None], size=(height, width), mode="area").flatten()
    total = resized.sum()
    if total <= 0:
        raise ValueError(f"the mask selects no pixel at a {width}x{height} layer; paint a larger region")
    return resized / total


def check_mask_fits(what: str, mask: torch.Tensor, height: int, width: int) -> None:
    """A mask is resized to every layer, so any size will do, but not another shape: that would misplace it."""
    mask_height, mask_width = mask.shape[-2:]
    if abs(mask_width * height - width * mask_height) > 0.02 * width * mask_height:
        raise ValueError(
            f"{what}: a {mask_width}x{mask_height} mask does not have the shape of the "
            f"{width}x{height} image it covers; resize them alike"
        )
    check_mask_selects(what, mask)


def check_mask_selects(what: str, mask: torch.Tensor) -> None:
    if mask.max() <= 0:
        raise ValueError(f"{what}: the mask is empty (all black); white marks the region")


def _flat(activation: torch.Tensor) -> torch.Tensor:
    return activation.reshape(activation.shape[1], -1)


def _gram(flat: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    channels, positions = flat.shape
    return autograd_ops.gram(flat, weights, 1.0 / (channels * (positions if weights is None else 1)))


def _mean(flat: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    flat = flat.float()
    return flat.mean(1) if weights is None else flat @ weights


def gram_matrix(activation: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``[1, C, H, W]`` -> ``[C, C]``: the weighted mean of ``f fᵀ``, divided by C."""
    return _gram(_flat(activation), weights)


def feature_mean(activation: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    return _mean(_flat(activation), weights)


@lru_cache(maxsize=16)
def projection_directions(channels: int) -> torch.Tensor:
    """``[C, PROJECTIONS]`` unit vectors, the same for every image (fixed seed): a deterministic objective."""
    with torch.inference_mode(False):  # kept for later calls, which may need autograd
        directions = torch.randn(channels, PROJECTIONS, generator=torch.Generator().manual_seed(channels))
        return directions / directions.norm(dim=0, keepdim=True)


def interpolate_columns(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``fp(x)`` per column (``np.interp`` on each of K columns): x ``[L, K]``, xp, fp ``[M, K]``."""
    last = xp.shape[0] - 1
    above = torch.searchsorted(xp.t().contiguous(), x.t().contiguous()).t()
    low, high = (above - 1).clamp(0, last), above.clamp(0, last)
    x0, x1 = xp.gather(0, low), xp.gather(0, high)
    y0, y1 = fp.gather(0, low), fp.gather(0, high)
    t = ((x - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


def direction_groups(activation: torch.Tensor) -> list[slice]:
    """The projection directions in the groups a sliced statistic of ``activation`` handles at once: all of them
    where a gradient is kept (each group's buffers would be kept for the backward pass anyway), else
    :data:`DIRECTIONS_AT_ONCE`."""
    at_once = PROJECTIONS if torch.is_grad_enabled() and activation.requires_grad else DIRECTIONS_AT_ONCE
    return [slice(start, start + at_once) for start in range(0, PROJECTIONS, at_once)]


def sorted_projections(
    flat: torch.Tensor, weights: torch.Tensor | None, directions: slice = slice(None)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features ``[C, N]`` projected on ``directions`` (of the K) and sorted per direction ``[N, K]``, each one's
    weight, and its quantile level (the midpoint of its weight)."""
    positions = flat.shape[1]
    # Sorted as K rows of N and returned transposed: sorting along contiguous rows is 2x faster.
    projected = projection_directions(flat.shape[0])[:, directions].to(flat.device).t() @ flat.float()
    values, order = projected.sort(dim=1)
    if weights is None:
        weight = torch.full_like(values, 1.0 / positions)
    else:
        weight = weights.to(values)[order]
    levels = weight.cumsum(1) - weight / 2
    return values.t(), weight.t(), levels.t()


def quantile_levels(device: torch.device | str = "cpu") -> torch.Tensor:
    return (torch.arange(QUANTILES, dtype=torch.float32, device=device) + 0.5) / QUANTILES


def style_statistics(activation: torch.Tensor, mask: torch.Tensor | None = None) -> LayerStatistics:
    """The statistics every style loss reads, of one layer's activations (inside ``mask``)."""
    weights = position_weights(mask, *activation.shape[-2:])
    flat = _flat(activation)
    if weights is not None:  # positions outside the region would tie with their neighbours' levels
        inside = weights > 0
        flat, weights = flat[:, inside], weights[inside]
    quantiles = []
    for directions in direction_groups(activation):
        values, _, levels = sorted_projections(flat, weights, directions)
        wanted = quantile_levels(values.device)[:, None].expand(-1, values.shape[1])
        quantiles.append(interpolate_columns(wanted, levels, values))
    return {"gram": _gram(flat, weights), "mean": _mean(flat, weights), "quantiles": torch.cat(quantiles, 1)}


def blend_statistics(styles: list[dict[str, LayerStatistics]], weights: list[float]) -> dict[str, LayerStatistics]:
    """Several styles' statistics as one target, layer by layer.

    Grams and means are averaged with the weights: the moments of the mixture, and for ``gram``
    exactly the gradient of the weighted sum of the per-style losses (``Σ wᵢ‖G - Aᵢ‖² =
    (Σ wᵢ)‖G - Ā‖² + const``). Quantiles are averaged too: the 1-D Wasserstein barycentre.
    """
    total = sum(weights)
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"blend weights must be non-negative with a positive sum, got {weights}")
    layers = styles[0].keys()
    for other in styles[1:]:
        if other.keys() != layers:
            raise ValueError(f"style targets have different layers: {sorted(layers)} vs {sorted(other)}")

    def blend(layer: str, key: Literal["gram", "mean", "quantiles"]) -> torch.Tensor:
        return tensor_sum(w * s[layer][key] for w, s in zip(weights, styles, strict=True)) / total

    return {
        layer: {"gram": blend(layer, "gram"), "mean": blend(layer, "mean"), "quantiles": blend(layer, "quantiles")}
        for layer in layers
    }


def style_term(
    targets: dict[str, LayerStatistics],
    weight: float,
    layer_weights: dict[str, float] | None = None,
    statistic: str = "gram",
    normalize: bool = False,
    mask: torch.Tensor | None = None,
) -> StyleTerm:
    """A style term of an objective (``layer_weights`` None: equal)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, not {statistic!r}")
    if mask is not None:
        check_mask_selects("mask", mask)
    equal = {layer: 1.0 / len(targets) for layer in targets}
    return {
        "kind": "style",
        "weight": weight,
        "statistic": statistic,
        "normalize": normalize,
        "targets": targets,
        "layer_weights": layer_weights or equal,
        "mask": mask,
    }


def gatys_objective(
    model: VGGModel,
    content: torch.Tensor,
    style: torch.Tensor,
    *,
    content_weight: float = 1.0,
    style_weight: float = 1e-3,
    style_layer_weights: dict[str, float] | None = None,
    statistic: Statistic = "gram",
    normalize: bool = False,
    tv_weight: float = 0.0,
) -> Objective:
    """Gatys et al.'s objective for a content image (or a batch of frames) and a style image, both in [0, 1]:
    the reference that benchmarks and ``nst calibrate`` time, where graphs build theirs from loss nodes. A batch's
    content targets are computed a frame at a time, in one frame's activations."""
    with torch.no_grad():
        frames = model.preprocessing.normalize(content).split(1)
        targets = {CONTENT_LAYER: torch.cat([model.features(x, [CONTENT_LAYER])[CONTENT_LAYER] for x in frames])}
        style_features = model.features(model.preprocessing.normalize(style), STYLE_LAYERS)
        statistics = {layer: style_statistics(value) for layer, value in style_features.items()}
    content_term: FeatureTerm = {
        "kind": "content",
        "weight": content_weight,
        "targets": targets,
        "layer_weights": {CONTENT_LAYER: 1.0},
    }
    terms: list[Term] = [content_term, style_term(statistics, style_weight, style_layer_weights, statistic, normalize)]
    if tv_weight:
        terms.append({"kind": "tv", "weight": tv_weight})
    return {"model": model.identity, "terms": terms}


def tensor_sum(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of one or more tensors: the built-in ``sum``'s, without its start ``0`` (a ``Tensor | int``)."""
    return reduce(operator.add, values)


def content_loss(
    features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], layer_weights: dict[str, float]
) -> torch.Tensor:
    return tensor_sum(
        layer_weights[layer] * torch.mean((features[layer] - target) ** 2) for layer, target in targets.items()
    )


def temporal_loss(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference to ``target`` where ``mask`` is 1 (Ruder et al. 2016: over all pixels and
    channels, so a weight means the same at every size)."""
    return torch.mean(mask * (image - target) ** 2)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation of ``[B, C, H, W]``; zero for a constant image."""
    vertical = image[:, :, 1:, :] - image[:, :, :-1, :]
    horizontal = image[:, :, :, 1:] - image[:, :, :, :-1]
    return torch.mean(vertical**2) + torch.mean(horizontal**2)


def _covariance(gram: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return gram.shape[0] * gram - torch.outer(mean, mean)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.t()


LayerLoss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def layer_loss(statistic: str, target: LayerStatistics, normalize: bool) -> LayerLoss:
    """The loss of one layer against a style's statistics: ``loss(activation, weights)``.

    Whatever depends on the target alone (its covariance's square root, the normalizer) is
    computed here once, not at every evaluation.
    """
    if statistic == "gram":
        scale = target["gram"].square().sum() if normalize else 1.0

        def gram_loss(activation: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
            return torch.sum((gram_matrix(activation, weights) - target["gram"]) ** 2) / scale

        return gram_loss
    if statistic == "mean_cov":
        covariance = _covariance(target["gram"].double(), target["mean"].double())
        root = _sqrtm(covariance)
        constant = torch.trace(covariance)
        scale = (target["mean"].double().square().sum() + constant) if normalize else 1.0

        def gaussian_loss(activation: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
            mean = feature_mean(activation, weights)
            own = _covariance(gram_matrix(activation, weights), mean).double()
            cross = torch.linalg.eigvalsh(root @ own @ root).clamp(min=EIGEN_FLOOR).sqrt().sum()
            distance = (
                (mean.double() - target["mean"].double()).square().sum() + torch.trace(own) + constant - 2 * cross
            )
            return (distance / scale).float()

        return gaussian_loss
    if statistic == "sliced":
        quantiles = target["quantiles"]
        scale = quantiles.square().mean() if normalize else 1.0
        grid = quantile_levels(quantiles.device)[:, None].expand_as(quantiles)

        def sliced_loss(activation: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
            flat = _flat(activation)
            costs = []  # per direction
            for directions in direction_groups(activation):
                values, weight, levels = sorted_projections(flat, weights, directions)
                wanted = interpolate_columns(levels, grid[:, directions], quantiles[:, directions])
                costs.append((weight * (values - wanted) ** 2).sum(0))
            return torch.cat(costs).mean() / scale

        return sliced_loss
    raise ValueError(f"style statistic must be one of {STATISTICS}, not {statistic!r}")


def term_layers(objective: Objective) -> list[str]:
    """Every layer some term of the objective reads."""
    layers: set[str] = set()
    for term in objective["terms"]:
        if term["kind"] == "content" or term["kind"] == "style":
            layers.update(term["targets"])
    return sorted(layers)


class ObjectiveFunction:
    """An objective's terms, prepared once on one device; calling it gives the weighted loss per kind."""

    def __init__(self, terms: list[Term], device: torch.device | str = "cpu") -> None:
        self.parts: list[tuple[str, float, Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]]] = []
        for term in terms:
            self.parts.append((term["kind"], term["weight"], self._prepare(term, device)))

    @staticmethod
    def _prepare(
        term: Term, device: torch.device | str
    ) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        # Targets are cloned: autograd must not see a host's inference-mode tensors.
        if term["kind"] == "tv":
            return lambda features, image: tv_loss(image)
        if term["kind"] == "temporal":
            temporal: TemporalTerm = term
            target, mask = temporal["target"].to(device).clone(), temporal["mask"].to(device).clone()
            return lambda features, image: temporal_loss(image, target, mask)
        if term["kind"] == "content":
            content: FeatureTerm = term
            targets = {layer: value.to(device).clone() for layer, value in content["targets"].items()}
            return lambda features, image: content_loss(features, targets, content["layer_weights"])
        if term["kind"] == "style":
            style: StyleTerm = term
            style_mask = style.get("mask")
            style_mask = None if style_mask is None else style_mask.to(device).clone()
            losses = {
                layer: layer_loss(
                    style["statistic"],
                    {
                        "gram": target["gram"].to(device).clone(),
                        "mean": target["mean"].to(device).clone(),
                        "quantiles": target["quantiles"].to(device).clone(),
                    },
                    style["normalize"],
                )
                for layer, target in style["targets"].items()
            }

            region: dict[tuple[int, ...], torch.Tensor | None] = {}  # layer size -> position weights

            def style_loss(features: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
                total = torch.zeros((), device=image.device)
                for layer, loss in losses.items():
                    activation = features[layer]
                    size = tuple(activation.shape[-2:])
                    if size not in region:
                        region[size] = position_weights(style_mask, *size)
                    weights = region[size]
                    total = total + style["layer_weights"][layer] * loss(activation, weights)
                return total

            return style_loss
        raise ValueError(f"unknown loss term kind {term['kind']!r}")

    def __call__(self, features: dict[str, torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss per kind (``content``, ``style``, ``tv``) for an image and its features."""
        parts: dict[str, torch.Tensor] = {}
        for kind, weight, loss in self.parts:
            weighted = weight * loss(features, image)
            parts[kind] = parts[kind] + weighted if kind in parts else weighted
        return parts

    def total(self, features: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """The objective's value: the sum of the weighted parts."""
        return tensor_sum(self(features, image).values())
