"""Colour control (Gatys et al. 2017): luminance-only transfer and colour histogram matching."""

from __future__ import annotations

import torch

from ..color import MATCH_METHODS, keep_colors, luminance, match_colors
from ..types import IMAGE
from .base import Node
from .schema import Choice, Link


class ColorNode(Node):
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)


class Luminance(ColorNode):
    DESCRIPTION = (
        "The luminance (Y of YIQ) as a grey image, for luminance-only style transfer: stylize the luminance of "
        "content and style, then restore the content's colours with Original Colours."
    )
    FUNCTION = "luminance"
    OUTPUT_TOOLTIPS = ("Y repeated into R, G and B.",)

    INPUTS = (
        Link("image", type=IMAGE, tooltip="A picture."),
        Link(
            "match",
            type=IMAGE,
            optional=True,
            tooltip="Shift and scale the luminance to this image's mean and "
            "deviation (connect the content when this is the style).",
        ),
    )

    def luminance(self, image: torch.Tensor, match: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (luminance(image, match),)


class OriginalColors(ColorNode):
    DESCRIPTION = "The luminance of a result with the colours (I and Q of YIQ) of another image, usually the content."
    FUNCTION = "recolor"
    OUTPUT_TOOLTIPS = ("The result in the original colours.",)

    INPUTS = (
        Link("image", type=IMAGE, tooltip="The stylized result (its luminance is kept)."),
        Link("colors", type=IMAGE, tooltip="The image whose colours to use (resized to the result)."),
    )

    def recolor(self, image: torch.Tensor, colors: torch.Tensor) -> tuple[torch.Tensor]:
        return (keep_colors(image, colors),)


class MatchColors(ColorNode):
    DESCRIPTION = (
        "Move an image's colours to another's mean and covariance (a linear map): applied to the style image "
        "with the content as reference, the result keeps the photo's palette."
    )
    FUNCTION = "match"
    OUTPUT_TOOLTIPS = ("The image in the reference's colours.",)

    INPUTS = (
        Link("image", type=IMAGE, tooltip="The image to recolour (usually the style)."),
        Link("reference", type=IMAGE, tooltip="The image whose colour statistics to take (usually the content)."),
        Choice(
            "method",
            choices=MATCH_METHODS,
            default="symmetric",
            tooltip="symmetric: Σc^½ Σs^-½ (keeps hues closest); cholesky: Lc Ls⁻¹",
        ),
    )

    def match(self, image: torch.Tensor, reference: torch.Tensor, method: str) -> tuple[torch.Tensor]:
        return (match_colors(image, reference, method),)
