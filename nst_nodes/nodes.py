"""The nodes: thin adapters from ComfyUI metadata to the plain functions of this package.

Each class declares ComfyUI's v1 attributes directly (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...),
so the package loads as a ComfyUI custom-node pack. The runner's execution context arrives
through the hidden input ``NST_CONTEXT``; under ComfyUI it is ``None`` and defaults apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image, UnidentifiedImageError

from . import image as image_io
from .digest import file_sha256
from .losses import blend_targets, gram_matrix
from .optimize import METHODS, PRECISIONS, OptimizerSettings, optimize, start_image
from .types import (
    IMAGE,
    NST_FEATURES,
    NST_GRAMS,
    NST_HISTORY,
    NST_LOSS,
    NST_MODEL,
    NST_TENSOR,
    Objective,
)
from .vgg import LAYER_NAMES, PREPROCESSINGS, VGGModel, load_vgg19

CATEGORY = "style transfer"
PREPROCESSING_OF_WEIGHTS = {"caffe": "caffe", "torchvision": "torchvision"}
HIDDEN_CONTEXT = {"context": "NST_CONTEXT"}


class Context(Protocol):
    """What nodes use of the runner's ExecutionContext."""

    device: str

    @property
    def interrupted(self) -> bool: ...

    def progress(self, step: int, total: int, **info: Any) -> None: ...


def _device(context: Context | None) -> str:
    if context is not None:
        return context.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _weight(default: float, tooltip: str) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1e12, "step": 0.01, "tooltip": tooltip})


def parse_layers(text: str) -> list[str]:
    """``"relu1_1, relu2_1"`` -> names; raises ValueError listing the valid names."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in LAYER_NAMES]
    if not names or unknown:
        problem = f"unknown layer(s) {unknown}" if unknown else "no layer given"
        raise ValueError(f"layers: {problem}; valid names are {', '.join(LAYER_NAMES)}")
    return names


def parse_numbers(text: str, what: str) -> list[float]:
    """``"1, 0.5"`` -> non-negative floats (empty text -> empty list)."""
    try:
        numbers = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"{what}: {text!r} is not a comma-separated list of numbers") from error
    if any(n < 0 or n != n for n in numbers):
        raise ValueError(f"{what}: weights must be non-negative, got {text!r}")
    return numbers


def _layer_weights(layers: list[str], text: str) -> dict[str, float]:
    """Per-layer weights: equal (1/n) when ``text`` is empty, else one number per layer, in order."""
    numbers = parse_numbers(text, "layer_weights") or [1.0 / len(layers)] * len(layers)
    if len(numbers) != len(layers):
        raise ValueError(f"layer_weights: {len(numbers)} numbers for {len(layers)} layers {layers}")
    return dict(zip(layers, numbers))


def _validation(check: Any, *args: Any) -> bool | str:
    """ComfyUI's VALIDATE_INPUTS convention: True, or the error message."""
    try:
        check(*args)
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    return True


def _require_same_model(what: str, expected: str, found: str) -> None:
    if expected != found:
        raise ValueError(f"{what} was made with model '{found}' but this node uses '{expected}'")


class _Node:
    """What every node of this pack shares (ComfyUI reads inherited attributes too)."""

    CATEGORY = CATEGORY


class _LossNode(_Node):
    """Loss nodes build an objective (NST_LOSS); the optimizer evaluates it."""

    FUNCTION = "build"
    RETURN_TYPES = (NST_LOSS,)
    RETURN_NAMES = ("loss",)


class LoadImage(_Node):
    DESCRIPTION = "Read an image file (EXIF orientation applied; alpha composited over white; 16-bit kept)."
    FUNCTION = "load"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"path": ("STRING", {"default": "graphs/images/tubingen.jpg"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, path: str) -> bool | str:
        try:
            with Image.open(path):
                return True
        except FileNotFoundError:
            return f"path: image file not found: {path}"
        except (UnidentifiedImageError, OSError) as error:
            return f"path: cannot read {path} as an image ({error})"

    @classmethod
    def IS_CHANGED(cls, path: str) -> str:
        """The file's content hash: an edited image invalidates the cache, a renamed one does not matter."""
        return file_sha256(path) if Path(path).is_file() else "missing"

    def load(self, path: str) -> tuple[torch.Tensor]:
        return (image_io.load_image(path),)


class ResizeImage(_Node):
    DESCRIPTION = "Antialiased resize by the long side or by total pixel count, optionally to a multiple of N."
    FUNCTION = "resize"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": (IMAGE,),
                "mode": (["long_side", "pixels"], {"default": "long_side"}),
                "size": ("INT", {"default": 512, "min": 8, "max": 1 << 28,
                                 "tooltip": "long side in px, or H*W for mode 'pixels'"}),
            },
            "optional": {"multiple_of": ("INT", {"default": 1, "min": 1, "max": 256})},
        }

    def resize(self, image: torch.Tensor, mode: str, size: int, multiple_of: int = 1) -> tuple[torch.Tensor]:
        height, width = image_io.target_size(image.shape[1], image.shape[2], mode, size, multiple_of)
        return (image_io.resize_image(image, height, width),)


class VGG19Model(_Node):
    DESCRIPTION = (
        "VGG19 with its own preprocessing. weights: 'caffe' (the original network, shipped offline), "
        "'torchvision' (downloaded once through torch.hub) or a path to a torchvision-layout state dict."
    )
    FUNCTION = "load"
    RETURN_TYPES = (NST_MODEL,)
    RETURN_NAMES = ("model",)
    DISK_CACHE = False

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "weights": ("STRING", {"default": "caffe"}),
                "pooling": (["max", "avg"], {"default": "max"}),
            },
            "optional": {
                "preprocessing": (["auto", *PREPROCESSINGS], {
                    "default": "auto",
                    "tooltip": "auto: what the weights were trained with; set it only for a weights file",
                }),
            },
            "hidden": HIDDEN_CONTEXT,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, weights: str, preprocessing: str = "auto") -> bool | str:
        if weights in PREPROCESSING_OF_WEIGHTS:
            if preprocessing not in ("auto", PREPROCESSING_OF_WEIGHTS[weights]):
                return f"preprocessing: the {weights} weights expect '{weights}' preprocessing, not '{preprocessing}'"
            return True
        if not Path(weights).is_file():
            return f"weights: expected 'caffe', 'torchvision' or a state dict file; no file at {weights}"
        return True

    @classmethod
    def IS_CHANGED(cls, weights: str) -> str:
        return file_sha256(weights) if Path(weights).is_file() else weights

    def load(self, weights: str, pooling: str, preprocessing: str = "auto",
             context: Context | None = None) -> tuple[VGGModel]:
        return (load_vgg19(weights, pooling, preprocessing).to(_device(context)),)


class NormalizeImage(_Node):
    DESCRIPTION = "IMAGE -> the model's input space, with the preprocessing the model's weights expect."
    FUNCTION = "normalize"
    RETURN_TYPES = (NST_TENSOR,)
    RETURN_NAMES = ("tensor",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": (IMAGE,), "model": (NST_MODEL,)}, "hidden": HIDDEN_CONTEXT}

    def normalize(self, image: torch.Tensor, model: VGGModel, context: Context | None = None) -> tuple[dict]:
        if image.shape[0] != 1:
            raise ValueError(f"image: expected a batch of one image, got {image.shape[0]}")
        pixels = model.preprocessing.normalize(image.to(_device(context)))
        return ({"space": model.identity, "preprocessing": model.preprocessing.name, "pixels": pixels},)


class DenormalizeImage(_Node):
    DESCRIPTION = "Network-space tensor -> IMAGE (exact inverse of Normalize), clamped to 0..1."
    FUNCTION = "denormalize"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"tensor": (NST_TENSOR,)}}

    def denormalize(self, tensor: dict) -> tuple[torch.Tensor]:
        image = PREPROCESSINGS[tensor["preprocessing"]].denormalize(tensor["pixels"].detach().float().cpu())
        return (image.clamp(0.0, 1.0).contiguous(),)


class VGGFeatures(_Node):
    DESCRIPTION = "Activations of the named layers, from one forward pass."
    FUNCTION = "extract"
    RETURN_TYPES = (NST_FEATURES,)
    RETURN_NAMES = ("features",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": (NST_MODEL,),
                "tensor": (NST_TENSOR,),
                "layers": ("STRING", {"default": "relu4_2", "tooltip": "comma-separated, e.g. relu1_1,relu2_1"}),
            },
            "hidden": HIDDEN_CONTEXT,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, layers: str) -> bool | str:
        return _validation(parse_layers, layers)

    def extract(self, model: VGGModel, tensor: dict, layers: str, context: Context | None = None) -> tuple[dict]:
        _require_same_model("tensor", model.identity, tensor["space"])
        with torch.no_grad():
            activations = model.features(tensor["pixels"].to(_device(context)), parse_layers(layers))
        return ({"model": model.identity, "layers": activations},)


class GramMatrices(_Node):
    DESCRIPTION = "Gram matrix of every layer of a feature set, divided by C*H*W."
    FUNCTION = "grams"
    RETURN_TYPES = (NST_GRAMS,)
    RETURN_NAMES = ("grams",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"features": (NST_FEATURES,)}}

    def grams(self, features: dict) -> tuple[dict]:
        with torch.no_grad():
            grams = {layer: gram_matrix(value) for layer, value in features["layers"].items()}
        return ({"model": features["model"], "layers": grams},)


class ContentLoss(_LossNode):
    DESCRIPTION = "Mean squared distance to target features, at the target's layers."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"target": (NST_FEATURES,), "weight": _weight(1.0, "content weight (alpha)")},
            "optional": {"layer_weights": ("STRING", {"default": "", "tooltip": "one per layer; empty = equal"})},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, layer_weights: str = "") -> bool | str:
        return _validation(parse_numbers, layer_weights, "layer_weights")

    def build(self, target: dict, weight: float, layer_weights: str = "") -> tuple[Objective]:
        layers = list(target["layers"])
        term = {"kind": "content", "weight": weight, "targets": target["layers"],
                "layer_weights": _layer_weights(layers, layer_weights)}
        return ({"model": target["model"], "terms": [term]},)


class StyleLoss(_LossNode):
    DESCRIPTION = (
        "Squared distance of Gram matrices to a style's, per layer. Up to three styles are blended "
        "with 'blend' weights (empty = equal)."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"target": (NST_GRAMS,), "weight": _weight(1e-3, "style weight (beta); 1e-3 suits the Caffe weights")},
            "optional": {
                "layer_weights": ("STRING", {"default": "", "tooltip": "one per layer; empty = equal"}),
                "target_2": (NST_GRAMS,),
                "target_3": (NST_GRAMS,),
                "blend": ("STRING", {"default": "", "tooltip": "one weight per target, e.g. 0.7,0.3"}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, layer_weights: str = "", blend: str = "") -> bool | str:
        for text, what in ((layer_weights, "layer_weights"), (blend, "blend")):
            outcome = _validation(parse_numbers, text, what)
            if outcome is not True:
                return outcome
        return True

    def build(self, target: dict, weight: float, layer_weights: str = "", target_2: dict | None = None,
              target_3: dict | None = None, blend: str = "") -> tuple[Objective]:
        targets = [t for t in (target, target_2, target_3) if t is not None]
        for other in targets[1:]:
            _require_same_model("style target", target["model"], other["model"])
        blend_weights = parse_numbers(blend, "blend") or [1.0] * len(targets)
        if len(blend_weights) != len(targets):
            raise ValueError(f"blend: {len(blend_weights)} weights for {len(targets)} style targets")
        grams = blend_targets([t["layers"] for t in targets], blend_weights)
        term = {"kind": "style", "weight": weight, "targets": grams,
                "layer_weights": _layer_weights(list(grams), layer_weights)}
        return ({"model": target["model"], "terms": [term]},)


class TVLoss(_LossNode):
    DESCRIPTION = "Total variation: penalizes differences of neighbouring pixels (smoothness)."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"weight": _weight(1e-3, "total-variation weight")}}

    def build(self, weight: float) -> tuple[Objective]:
        return ({"model": None, "terms": [{"kind": "tv", "weight": weight}]},)


class CombineLosses(_LossNode):
    DESCRIPTION = "Sum several losses into one objective."
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"loss_1": (NST_LOSS,), "loss_2": (NST_LOSS,)},
            "optional": {"loss_3": (NST_LOSS,), "loss_4": (NST_LOSS,)},
        }

    def combine(self, loss_1: Objective, loss_2: Objective, loss_3: Objective | None = None,
                loss_4: Objective | None = None) -> tuple[Objective]:
        losses = [loss for loss in (loss_1, loss_2, loss_3, loss_4) if loss is not None]
        models = {loss["model"] for loss in losses} - {None}
        if len(models) > 1:
            raise ValueError(f"losses were built with different models: {sorted(models)}")
        model = models.pop() if models else None
        return ({"model": model, "terms": [term for loss in losses for term in loss["terms"]]},)


class OptimizeImage(_Node):
    DESCRIPTION = (
        "Optimize the pixels of an image against an objective (L-BFGS or Adam), keeping every iterate "
        "inside the valid pixel range. One step is one optimizer iteration = one forward+backward pass "
        "(L-BFGS adds one per backtrack, which is rare). Start = (1-noise)*init + noise*uniform noise."
    )
    FUNCTION = "run"
    RETURN_TYPES = (NST_TENSOR, NST_HISTORY)
    RETURN_NAMES = ("tensor", "history")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": (NST_MODEL,),
                "objective": (NST_LOSS,),
                "init": (NST_TENSOR,),
                "steps": ("INT", {"default": 300, "min": 1, "max": 100000}),
                "optimizer": (list(METHODS), {"default": "lbfgs"}),
            },
            "optional": {
                "lr": ("FLOAT", {"default": 1.0, "min": 1e-6, "max": 1e4, "step": 0.01}),
                "noise": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1}),
                "history_size": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "L-BFGS memory"}),
                "precision": (list(PRECISIONS), {"default": "fp32",
                                                 "tooltip": "bf16: autocast for the network (fast on GPUs and bf16 CPUs)"}),
                "history_precision": (list(PRECISIONS), {"default": "bf16",
                                                         "tooltip": "storage of the L-BFGS memory (bf16: half the RAM)"}),
            },
            "hidden": HIDDEN_CONTEXT,
        }

    def run(self, model: VGGModel, objective: Objective, init: dict, steps: int, optimizer: str,
            lr: float = 1.0, noise: float = 0.0, seed: int = 0, history_size: int = 50,
            precision: str = "fp32", history_precision: str = "bf16",
            context: Context | None = None) -> tuple[dict, dict]:
        _require_same_model("init", model.identity, init["space"])
        if objective["model"] is not None:
            _require_same_model("objective", model.identity, objective["model"])
        start = start_image(model, init["pixels"].to(_device(context)), noise, seed)
        settings = OptimizerSettings(steps, optimizer, lr, history_size, precision, history_precision)
        report = should_stop = None
        if context is not None:
            report = lambda step, total, loss, image: context.progress(step, total, loss=loss)  # noqa: E731
            should_stop = lambda: context.interrupted  # noqa: E731
        result, history = optimize(model.to(_device(context)), objective, start, settings, report, should_stop)
        return {**init, "pixels": result}, history


class SaveImage(_Node):
    DESCRIPTION = "Write PNG or JPEG with the graph embedded ('prompt'); numbered names unless overwrite."
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": (IMAGE,),
                "path": ("STRING", {"default": "output/nst.png"}),
                "overwrite": ("BOOLEAN", {"default": False}),
            },
            "hidden": {"prompt": "PROMPT"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, path: str) -> bool | str:
        if Path(path).suffix.lower() not in image_io.SAVE_FORMATS:
            return f"path: {path} must end in one of {sorted(image_io.SAVE_FORMATS)}"
        return True

    def save(self, image: torch.Tensor, path: str, overwrite: bool, prompt: dict | None = None) -> dict:
        saved = image_io.save_image(image, path, prompt, overwrite)
        return {"ui": {"images": [{"filename": p.name, "subfolder": str(p.parent), "type": "output"} for p in saved]},
                "result": ()}


NODE_CLASS_MAPPINGS: dict[str, type] = {
    "NSTLoadImage": LoadImage,
    "NSTResizeImage": ResizeImage,
    "NSTVGG19": VGG19Model,
    "NSTNormalize": NormalizeImage,
    "NSTDenormalize": DenormalizeImage,
    "NSTFeatures": VGGFeatures,
    "NSTGramMatrices": GramMatrices,
    "NSTContentLoss": ContentLoss,
    "NSTStyleLoss": StyleLoss,
    "NSTTVLoss": TVLoss,
    "NSTCombineLosses": CombineLosses,
    "NSTOptimize": OptimizeImage,
    "NSTSaveImage": SaveImage,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "NSTLoadImage": "Load Image (NST)",
    "NSTResizeImage": "Resize Image (NST)",
    "NSTVGG19": "VGG19 Model",
    "NSTNormalize": "Normalize for Model",
    "NSTDenormalize": "De-normalize and Clamp",
    "NSTFeatures": "VGG Features",
    "NSTGramMatrices": "Gram Matrices",
    "NSTContentLoss": "Content Loss",
    "NSTStyleLoss": "Style Loss",
    "NSTTVLoss": "Total Variation Loss",
    "NSTCombineLosses": "Combine Losses",
    "NSTOptimize": "Optimize Image",
    "NSTSaveImage": "Save Image (NST)",
}
