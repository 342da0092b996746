"""The network: VGG19 and its preprocessing, features and their style statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import kernels, types
from ..files import FileRuleError, file_sha256, input_path, open_regular
from ..host import Host, host_of
from ..limits import check_memory, memory_check_on, network_bytes, smallest_side
from ..losses import check_mask_fits, style_statistics
from ..types import IMAGE, MASK, NST_FEATURES, NST_MODEL, NST_STYLE_STATISTICS, NST_TENSOR, Features, NetworkTensor
from ..vgg import LAYER_INDEX, PREPROCESSINGS, TORCH_FILE_STARTS, VGGModel, load_vgg19
from .base import HIDDEN_CONTEXT, Node, device_of, one_mask, parse_layers, require_same_model
from .schema import Choice, Link, Text, Validation

BUILT_IN_WEIGHTS = {"caffe": "caffe", "torchvision": "torchvision"}  # name -> the preprocessing they expect
POOLINGS = ("max", "avg")
PREPROCESSING_CHOICES = ("auto", *PREPROCESSINGS)


def _weights_file(weights: str, context: Host | None) -> Path:
    """A weights file, found like an input image (inside the input folder where the host confines paths)."""
    return input_path(host_of(context), weights, "weights")


def check_settings() -> None:
    """The environment settings every network pass reads (``NST_CONV``, ``NST_MEMORY_CHECK``): checked when
    the model is validated, so that a typo is refused before anything runs, not at the first pass."""
    kernels.forced_path()
    memory_check_on()


def deepest_layer(layers: list[str]) -> str:
    return max(layers, key=LAYER_INDEX.__getitem__)


def check_large_enough(what: str, pixels: torch.Tensor, layers: list[str]) -> None:
    """Refuse an image too small to reach the deepest layer (each pooling halves it) before the network runs."""
    height, width = pixels.shape[-2:]
    deepest = deepest_layer(layers)
    side = smallest_side(deepest)
    if height < side or width < side:
        raise ValueError(
            f"{what}: a {width}x{height} image is too small for layer {deepest}, which needs at "
            f"least {side}x{side} px; use a larger size"
        )


class VGG19Model(Node):
    DESCRIPTION = (
        "VGG19 with its own preprocessing. weights: 'caffe' (the original network of Gatys et al., shipped, "
        "offline), 'torchvision' (downloaded once through torch.hub) or a torchvision-layout state dict file."
    )
    FUNCTION = "load"
    RETURN_TYPES = (NST_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The frozen network and the preprocessing its weights expect.",)
    DISK_CACHE = False

    INPUTS = (
        Text("weights", default="caffe", tooltip="caffe, torchvision, or a state dict file (features.N.weight keys)"),
        Choice(
            "pooling",
            choices=POOLINGS,
            default="max",
            tooltip="max: the network as trained; avg: smoother, as Gatys et al. preferred",
        ),
        Choice(
            "preprocessing",
            choices=PREPROCESSING_CHOICES,
            default="auto",
            optional=True,
            tooltip="auto: what the weights were trained with; set it only for a weights file",
        ),
    )
    HIDDEN = HIDDEN_CONTEXT

    @classmethod
    def validate(cls, weights: str | None, preprocessing: str | None, context: Host | None) -> Validation:
        """The environment settings a network pass reads, then the weights: a built-in name with its own
        preprocessing, or a file saved by torch.save."""
        try:
            check_settings()
        except ValueError as error:
            return str(error)
        if weights is None:
            return True
        if weights in BUILT_IN_WEIGHTS:
            if preprocessing not in (None, "auto", BUILT_IN_WEIGHTS[weights]):
                return f"preprocessing: the {weights} weights expect '{weights}' preprocessing, not '{preprocessing}'"
            return True
        try:
            with open_regular(_weights_file(weights, context), "weights") as file:
                start = file.read(4)
        except FileRuleError as error:
            return f"{error} (or use 'caffe' or 'torchvision')"
        if not start.startswith(TORCH_FILE_STARTS):
            return f"weights: {weights} is not a file saved by torch.save (or use 'caffe' or 'torchvision')"
        return True

    @classmethod
    def IS_CHANGED(cls, weights: str | None = None, context: Host | None = None, **_: Any) -> str | None:
        if weights is None or weights in BUILT_IN_WEIGHTS:
            return weights
        try:
            return file_sha256(_weights_file(weights, context), "weights")
        except (OSError, ValueError) as error:
            return f"unreadable: {error}"

    def load(
        self, weights: str, pooling: str, preprocessing: str = "auto", context: Host | None = None
    ) -> tuple[VGGModel]:
        source = weights if weights in BUILT_IN_WEIGHTS else _weights_file(weights, context)
        return (load_vgg19(source, pooling, preprocessing).to(device_of(context)),)


class NormalizeImage(Node):
    DESCRIPTION = "IMAGE -> the model's input space, with the preprocessing the model's weights expect."
    FUNCTION = "normalize"
    RETURN_TYPES = (NST_TENSOR,)
    RETURN_NAMES = ("tensor",)
    OUTPUT_TOOLTIPS = ("The image in the network's input space, tagged with the model it belongs to.",)

    INPUTS = (
        Link("image", type=IMAGE, tooltip="A picture, or a batch of frames."),
        Link("model", type=NST_MODEL, tooltip="The model whose preprocessing to apply."),
    )
    HIDDEN = HIDDEN_CONTEXT

    def normalize(self, image: torch.Tensor, model: VGGModel, context: Host | None = None) -> tuple[NetworkTensor]:
        pixels = model.preprocessing.normalize(image.to(device_of(context)))
        return ({"space": model.identity, "preprocessing": model.preprocessing.name, "pixels": pixels},)


class DenormalizeImage(Node):
    DESCRIPTION = "Network-space tensor -> IMAGE (the exact inverse of Normalize), clamped to 0..1."
    FUNCTION = "denormalize"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The picture, ready to save or preview.",)

    INPUTS = (Link("tensor", type=NST_TENSOR, tooltip="An image in a model's input space."),)

    def denormalize(self, tensor: NetworkTensor) -> tuple[torch.Tensor]:
        image = PREPROCESSINGS[tensor["preprocessing"]].denormalize(tensor["pixels"].detach().float().cpu())
        return (image.clamp(0.0, 1.0).contiguous(),)


class VGGFeatures(Node):
    DESCRIPTION = "Activations of the named layers, from one forward pass that stops at the deepest of them."
    FUNCTION = "extract"
    RETURN_TYPES = (NST_FEATURES,)
    RETURN_NAMES = ("features",)
    OUTPUT_TOOLTIPS = ("Layer name -> activation; feed Content Loss, or Style Statistics for a style.",)

    INPUTS = (
        Link("model", type=NST_MODEL, tooltip="The network."),
        Link("tensor", type=NST_TENSOR, tooltip="An image normalized for this model."),
        Text(
            "layers",
            default="relu4_2",
            parse=parse_layers,
            tooltip="Comma-separated: conv1_1 ... conv5_4, relu1_1 ... relu5_4, pool1 ... pool5",
        ),
    )
    HIDDEN = HIDDEN_CONTEXT

    def extract(
        self, model: VGGModel, tensor: NetworkTensor, layers: str, context: Host | None = None
    ) -> tuple[Features]:
        require_same_model("tensor", model.identity, tensor["space"])
        names = parse_layers(layers)
        device = device_of(context)
        check_large_enough("tensor", tensor["pixels"], names)
        height, width = tensor["pixels"].shape[-2:]
        deepest = deepest_layer(names)
        needed = network_bytes(height, width, deepest, with_gradient=False)
        check_memory("tensor", "a network pass", needed, device, height, width, deepest)
        with torch.no_grad():  # frame by frame: a batch needs no more working memory than one frame
            frames = [model.features(frame[None].to(device), names) for frame in tensor["pixels"]]
        activations = {name: torch.cat([frame[name] for frame in frames]) for name in names}
        return ({"model": model.identity, "layers": activations},)


class StyleStatistics(Node):
    DESCRIPTION = (
        "The style statistics of every layer of a feature set: Gram matrices (Gatys et al.), means and projected "
        "quantiles (for the other style losses); with a mask, of that region of the style image only."
    )
    FUNCTION = "statistics"
    RETURN_TYPES = (NST_STYLE_STATISTICS,)
    RETURN_NAMES = ("statistics",)
    OUTPUT_TOOLTIPS = ("Layer name -> Gram matrix, mean and quantiles; feed Style Loss.",)

    INPUTS = (
        Link("features", type=NST_FEATURES, tooltip="Features of the style image."),
        Link(
            "mask",
            type=MASK,
            optional=True,
            tooltip="Take the style from this region of the style image only (white = inside).",
        ),
    )

    def statistics(self, features: Features, mask: torch.Tensor | None = None) -> tuple[types.StyleStatistics]:
        count = next(iter(features["layers"].values())).shape[0]
        if count != 1:
            raise ValueError(
                f"features: of a batch of {count} pictures; the statistics describe one style picture. "
                "Take them of one picture, and blend styles with Style Loss's target_2 and target_3"
            )
        region = None if mask is None else one_mask(mask)
        if region is not None:  # against the largest layer: pooling rounds the deep ones' shapes
            largest = max(features["layers"].values(), key=lambda value: value.shape[-2] * value.shape[-1])
            check_mask_fits("mask", region, *largest.shape[-2:])
        with torch.no_grad():
            layers = {
                layer: style_statistics(value, None if region is None else region.to(value.device))
                for layer, value in features["layers"].items()
            }
        return ({"model": features["model"], "layers": layers},)


class GramMatrices(StyleStatistics):
    """Style Statistics under its former id, NSTGramMatrices: graphs and workflows saved with it still load.
    ComfyUI hides a DEPRECATED node from search and menus."""

    DEPRECATED = True
