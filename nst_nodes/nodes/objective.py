"""The objective: content, style and smoothness terms, and their sum."""

from __future__ import annotations

from typing import Any

import torch

from ..losses import STATISTICS, blend_statistics, style_term
from ..types import MASK, NST_FEATURES, NST_STYLE_STATISTICS, NST_LOSS, Features, Objective, StyleStatistics
from .base import (Node, check_choice, check_weight, one_mask, parse_numbers, require_same_model, validation,
                     weight_input, weights_per_layer)

LAYER_WEIGHTS_INPUT = ("STRING", {"default": "", "tooltip": "One weight per layer, comma-separated; empty: equal"})


class LossNode(Node):
    """Loss nodes build an objective (NST_LOSS); the optimizer evaluates it."""

    FUNCTION = "build"
    DISK_CACHE = False  # an objective only packages its inputs (MBs of targets): rebuilt in microseconds
    RETURN_TYPES = (NST_LOSS,)
    RETURN_NAMES = ("loss",)
    OUTPUT_TOOLTIPS = ("A term of the objective; combine terms with Combine Losses.",)


class ContentLoss(LossNode):
    DESCRIPTION = "Mean squared distance to target features, at the target's layers: keeps the photo's content."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "target": (NST_FEATURES, {"tooltip": "Features of the content image (e.g. relu4_2)."}),
                "weight": weight_input(1.0, "Content weight (alpha of Gatys et al.)."),
            },
            "optional": {"layer_weights": LAYER_WEIGHTS_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, weight: float | None = None, layer_weights: str | None = None) -> bool | str:
        outcome = check_weight(weight)
        if outcome is True and layer_weights is not None:
            outcome = validation(parse_numbers, layer_weights, "layer_weights")
        return outcome

    def build(self, target: Features, weight: float, layer_weights: str = "") -> tuple[Objective]:
        layers = list(target["layers"])
        term = {"kind": "content", "weight": weight, "targets": target["layers"],
                "layer_weights": weights_per_layer(layers, layer_weights)}
        return ({"model": target["model"], "terms": [term]},)


class StyleLoss(LossNode):
    DESCRIPTION = (
        "Distance of the result's style statistics to a style's, per layer: Gram matrices (Gatys et al.), "
        "Gaussians (mean and covariance) or whole distributions (sliced Wasserstein). Up to three styles are "
        "blended with 'blend' weights; with a mask, the style applies to that region of the result only."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "target": (NST_STYLE_STATISTICS, {"tooltip": "Statistics of the style image (Style Statistics)."}),
                "weight": weight_input(1e-3, "Style weight (beta of Gatys et al.); 1e-3 suits the Caffe weights "
                                             "with the gram statistic, see the README for the others."),
            },
            "optional": {
                "layer_weights": LAYER_WEIGHTS_INPUT,
                "target_2": (NST_STYLE_STATISTICS, {"tooltip": "A second style to blend in."}),
                "target_3": (NST_STYLE_STATISTICS, {"tooltip": "A third style to blend in."}),
                "blend": ("STRING", {"default": "", "tooltip": "One weight per style, e.g. 0.7,0.3; empty: equal"}),
                "statistic": (list(STATISTICS), {
                    "default": "gram",
                    "tooltip": "gram: Gatys et al.; mean_cov: Gaussians' 2-Wasserstein distance; "
                               "sliced: sliced 2-Wasserstein distance of the feature distributions",
                }),
                "normalize": ("BOOLEAN", {"default": False,
                                          "tooltip": "Divide each layer's loss by the style's own size there, so "
                                                     "deep layers count as much as shallow ones."}),
                "mask": (MASK, {"tooltip": "Apply this style inside the region only (white = inside; any size "
                                           "with the result's shape)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, weight: float | None = None, layer_weights: str | None = None,
                        blend: str | None = None, statistic: str | None = None) -> bool | str:
        outcome = check_choice("statistic", statistic, STATISTICS)
        if outcome is True:
            outcome = check_weight(weight)
        for text, what in ((layer_weights, "layer_weights"), (blend, "blend")):
            if outcome is True and text is not None:
                outcome = validation(parse_numbers, text, what)
        return outcome

    def build(self, target: StyleStatistics, weight: float, layer_weights: str = "",
              target_2: StyleStatistics | None = None, target_3: StyleStatistics | None = None, blend: str = "",
              statistic: str = "gram", normalize: bool = False,
              mask: torch.Tensor | None = None) -> tuple[Objective]:
        targets = [t for t in (target, target_2, target_3) if t is not None]
        for other in targets[1:]:
            require_same_model("style target", target["model"], other["model"])
        blend_weights = parse_numbers(blend, "blend") or [1.0] * len(targets)
        if len(blend_weights) != len(targets):
            raise ValueError(f"blend: {len(blend_weights)} weights for {len(targets)} style targets")
        statistics = blend_statistics([t["layers"] for t in targets], blend_weights)
        term = style_term(statistics, weight, weights_per_layer(list(statistics), layer_weights), statistic,
                          normalize, None if mask is None else one_mask(mask).cpu())
        return ({"model": target["model"], "terms": [term]},)


class TVLoss(LossNode):
    DESCRIPTION = "Total variation: penalizes differences of neighbouring pixels, for a smoother result."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"weight": weight_input(1e-3, "Smoothness weight; raise it (e.g. 10) for a noise start.")}}

    @classmethod
    def VALIDATE_INPUTS(cls, weight: float | None = None) -> bool | str:
        return check_weight(weight)

    def build(self, weight: float) -> tuple[Objective]:
        return ({"model": None, "terms": [{"kind": "tv", "weight": weight}]},)


class CombineLosses(LossNode):
    DESCRIPTION = "Sum several losses into one objective."
    FUNCTION = "combine"
    OUTPUT_TOOLTIPS = ("The sum of the terms: the objective to optimize.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        loss = (NST_LOSS, {"tooltip": "A loss to add."})
        return {"required": {"loss_1": loss, "loss_2": loss}, "optional": {"loss_3": loss, "loss_4": loss}}

    def combine(self, loss_1: Objective, loss_2: Objective, loss_3: Objective | None = None,
                loss_4: Objective | None = None) -> tuple[Objective]:
        losses = [loss for loss in (loss_1, loss_2, loss_3, loss_4) if loss is not None]
        models = {loss["model"] for loss in losses} - {None}
        if len(models) > 1:
            raise ValueError(f"losses were built with different models: {sorted(models)}")
        model = models.pop() if models else None
        return ({"model": model, "terms": [term for loss in losses for term in loss["terms"]]},)
