"""The objective: content, style and smoothness terms, and their sum."""

from __future__ import annotations

from functools import partial

import torch

from ..losses import STATISTICS, blend_statistics, style_term
from ..types import (
    MASK,
    NST_FEATURES,
    NST_LOSS,
    NST_STYLE_STATISTICS,
    Features,
    FeatureTerm,
    Objective,
    StyleStatistics,
)
from .base import Node, frame_masks, parse_numbers, require_same_model, weight, weights_per_layer
from .schema import Boolean, Choice, Link, Text

LAYER_WEIGHTS = Text(
    "layer_weights",
    default="",
    optional=True,
    parse=partial(parse_numbers, what="layer_weights"),
    tooltip="One weight per layer, comma-separated; empty: equal",
)


class LossNode(Node):
    """Loss nodes build an objective (NST_LOSS); the optimizer evaluates it."""

    FUNCTION = "build"
    DISK_CACHE = False  # an objective only packages its inputs (MBs of targets): rebuilt in microseconds
    RETURN_TYPES = (NST_LOSS,)
    RETURN_NAMES = ("loss",)
    OUTPUT_TOOLTIPS = ("A term of the objective; combine terms with Combine Losses.",)


class ContentLoss(LossNode):
    DESCRIPTION = "Mean squared distance to target features, at the target's layers: keeps the photo's content."

    INPUTS = (
        Link("target", type=NST_FEATURES, tooltip="Features of the content image (e.g. relu4_2)."),
        weight(1.0, "Content weight (alpha of Gatys et al.)."),
        LAYER_WEIGHTS,
    )

    def build(self, target: Features, weight: float, layer_weights: str = "") -> tuple[Objective]:
        layers = list(target["layers"])
        term: FeatureTerm = {
            "kind": "content",
            "weight": weight,
            "targets": target["layers"],
            "layer_weights": weights_per_layer(layers, layer_weights),
        }
        return ({"model": target["model"], "terms": [term]},)


class StyleLoss(LossNode):
    DESCRIPTION = (
        "Distance of the result's style statistics to a style's, per layer: Gram matrices (Gatys et al.), "
        "Gaussians (mean and covariance) or whole distributions (sliced Wasserstein). Up to three styles are "
        "blended with 'blend' weights; with a mask, the style applies to that region of the result only."
    )

    INPUTS = (
        Link("target", type=NST_STYLE_STATISTICS, tooltip="Statistics of the style image (Style Statistics)."),
        weight(
            1e-3,
            "Style weight (beta of Gatys et al.); 1e-3 suits the Caffe weights with the gram statistic, "
            "see the README for the others.",
        ),
        LAYER_WEIGHTS,
        Link("target_2", type=NST_STYLE_STATISTICS, optional=True, tooltip="A second style to blend in."),
        Link("target_3", type=NST_STYLE_STATISTICS, optional=True, tooltip="A third style to blend in."),
        Text(
            "blend",
            default="",
            optional=True,
            parse=partial(parse_numbers, what="blend"),
            tooltip="One weight per style, e.g. 0.7,0.3; empty: equal",
        ),
        Choice(
            "statistic",
            choices=STATISTICS,
            default="gram",
            optional=True,
            tooltip="gram: Gatys et al.; mean_cov: Gaussians' 2-Wasserstein distance; "
            "sliced: sliced 2-Wasserstein distance of the feature distributions",
        ),
        Boolean(
            "normalize",
            default=False,
            optional=True,
            tooltip="Divide each layer's loss by the style's own size there, so deep layers count as much as "
            "shallow ones.",
        ),
        Link(
            "mask",
            type=MASK,
            optional=True,
            tooltip="Apply this style inside the region only (white = inside; any size with the result's shape); "
            "for a batch of frames, one mask for all or one per frame.",
        ),
    )

    def build(
        self,
        target: StyleStatistics,
        weight: float,
        layer_weights: str = "",
        target_2: StyleStatistics | None = None,
        target_3: StyleStatistics | None = None,
        blend: str = "",
        statistic: str = "gram",
        normalize: bool = False,
        mask: torch.Tensor | None = None,
    ) -> tuple[Objective]:
        targets = [t for t in (target, target_2, target_3) if t is not None]
        for other in targets[1:]:
            require_same_model("style target", target["model"], other["model"])
        blend_weights = parse_numbers(blend, "blend") or [1.0] * len(targets)
        if len(blend_weights) != len(targets):
            raise ValueError(f"blend: {len(blend_weights)} weights for {len(targets)} style targets")
        statistics = blend_statistics([t["layers"] for t in targets], blend_weights)
        term = style_term(
            statistics,
            weight,
            weights_per_layer(list(statistics), layer_weights),
            statistic,
            normalize,
            None if mask is None else frame_masks(mask).cpu(),
        )
        return ({"model": target["model"], "terms": [term]},)


class TVLoss(LossNode):
    DESCRIPTION = "Total variation: penalizes differences of neighbouring pixels, for a smoother result."

    INPUTS = (weight(1e-3, "Smoothness weight; raise it (e.g. 10) for a noise start."),)

    def build(self, weight: float) -> tuple[Objective]:
        return ({"model": None, "terms": [{"kind": "tv", "weight": weight}]},)


class CombineLosses(LossNode):
    DESCRIPTION = "Sum several losses into one objective."
    FUNCTION = "combine"
    OUTPUT_TOOLTIPS = ("The sum of the terms: the objective to optimize.",)

    INPUTS = tuple(
        Link(f"loss_{number}", type=NST_LOSS, optional=number > 2, tooltip="A loss to add.") for number in (1, 2, 3, 4)
    )

    def combine(
        self, loss_1: Objective, loss_2: Objective, loss_3: Objective | None = None, loss_4: Objective | None = None
    ) -> tuple[Objective]:
        losses = [loss for loss in (loss_1, loss_2, loss_3, loss_4) if loss is not None]
        models = {loss["model"] for loss in losses if loss["model"] is not None}
        if len(models) > 1:
            raise ValueError(f"losses were built with different models: {sorted(models)}")
        model = models.pop() if models else None
        return ({"model": model, "terms": [term for loss in losses for term in loss["terms"]]},)
