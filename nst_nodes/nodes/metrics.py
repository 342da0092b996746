"""Measure a result: how close its style is to the painting's and its content to the photo's."""

from __future__ import annotations

from typing import Any

import torch

from ..host import Host, host_of
from ..limits import check_memory, measuring_bytes
from ..metrics import LAYERS, describe, quality
from ..types import IMAGE
from .base import HIDDEN_CONTEXT, Node
from .schema import Link


class QualityMetrics(Node):
    DESCRIPTION = (
        "Style distance (relative Gram error), distribution distance (sliced Wasserstein) and content distance "
        "(relative feature error) of a result, all under one fixed network (Caffe VGG19), so any two results "
        "compare. Lower is closer. Shown on the node and printed by the CLI."
    )
    FUNCTION = "measure"
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("style", "sliced", "content", "summary")
    OUTPUT_TOOLTIPS = (
        "Relative Gram error, averaged over relu1_1 ... relu5_1.",
        "Relative sliced Wasserstein distance, averaged over the same layers.",
        "Relative feature error at relu4_2.",
        "The three figures as one line of text.",
    )
    OUTPUT_NODE = True

    INPUTS = (
        Link("image", type=IMAGE, tooltip="The result to measure."),
        Link("content", type=IMAGE, tooltip="The content photo (resized to the result)."),
        Link("style", type=IMAGE, tooltip="The style image, at the scale the result was made with."),
    )
    HIDDEN = HIDDEN_CONTEXT

    def measure(
        self, image: torch.Tensor, content: torch.Tensor, style: torch.Tensor, context: Host | None = None
    ) -> dict[str, Any]:
        device = host_of(context).device
        for name, picture in (("image", image), ("style", style)):  # the content is measured at the image's size
            height, width = picture.shape[1:3]
            check_memory(name, "measuring", measuring_bytes(height, width, LAYERS, device), device, height, width)
        measured = quality(image, content, style, device)
        summary = describe(measured)
        return {
            "ui": {"text": [summary]},
            "result": (measured["style"], measured["sliced"], measured["content"], summary),
        }
