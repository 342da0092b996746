"""Quality of a result, measured the same way whatever made it.

Every figure is computed under one fixed network (the Caffe VGG19 of Gatys et al., max pooling),
whatever network the graph optimized with, so results of different graphs and tools compare:

- ``style``: the relative Gram error ``‖G(x) - G(s)‖ / ‖G(s)‖`` at relu1_1 ... relu5_1, averaged;
- ``sliced``: the sliced 2-Wasserstein distance of the feature distributions, relative to the
  style's (``√(sliced loss / mean square of the style's projections)``), at the same layers, averaged;
- ``content``: the relative feature error ``‖F(x) - F(c)‖ / ‖F(c)‖`` at relu4_2.

The content image is resized to the result; the style image is used as given (its scale is a choice).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TypedDict

import torch

from .image import resize_image
from .losses import CONTENT_LAYER, STYLE_LAYERS, gram_matrix, layer_loss, style_statistics
from .vgg import VGGModel, load_vgg19

LAYERS = (*STYLE_LAYERS, CONTENT_LAYER)


class Quality(TypedDict):
    style: float
    sliced: float
    content: float


@lru_cache(maxsize=1)
def metric_model() -> VGGModel:
    return load_vgg19("caffe", "max")


def quality(result: torch.Tensor, content: torch.Tensor, style: torch.Tensor, device: str = "cpu") -> Quality:
    """The three distances for ``IMAGE`` tensors (lower is closer). One image's features are alive at a time."""
    model = metric_model().to(device)
    if content.shape[1:3] != result.shape[1:3]:
        content = resize_image(content, result.shape[1], result.shape[2])

    def features(image: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        return model.features(model.preprocessing.normalize(image[:1].to(device)), layers)

    with torch.no_grad():
        targets = {
            layer: (gram_matrix(value), layer_loss("sliced", style_statistics(value), normalize=True))
            for layer, value in features(style, STYLE_LAYERS).items()
        }
        original = features(content, (CONTENT_LAYER,))[CONTENT_LAYER]
        mine = features(result, LAYERS)
        change = torch.linalg.norm(mine.pop(CONTENT_LAYER) - original)
        content_error = (change / torch.linalg.norm(original)).item()
        style_errors, sliced_errors = [], []
        for layer in STYLE_LAYERS:
            value = mine.pop(layer)  # freed once measured
            target, sliced = targets.pop(layer)
            style_errors.append((torch.linalg.norm(gram_matrix(value) - target) / torch.linalg.norm(target)).item())
            sliced_errors.append(sliced(value, None).clamp(min=0).sqrt().item())
    return {
        "style": sum(style_errors) / len(style_errors),
        "sliced": sum(sliced_errors) / len(sliced_errors),
        "content": content_error,
    }


def describe(measured: Quality) -> str:
    return f"style {measured['style']:.4f}  sliced {measured['sliced']:.4f}  content {measured['content']:.4f}"
