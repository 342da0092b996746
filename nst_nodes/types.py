"""The values that cross node boundaries, described once.

The TypedDicts below are the documentation and also what the runner checks a cached value
against (``VALUE_TYPES``, see graphrun/values.py). Tensors inside NST_* values may live on any
device; a consumer moves them to its own. Every type but NST_MODEL is tensors and JSON-able
values, so the runner caches them on disk.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import torch

IMAGE = "IMAGE"  # ComfyUI's image: float32 [B, H, W, 3], RGB, 0..1, on the CPU
MASK = "MASK"  # ComfyUI's mask: float32 [B, H, W] (or [H, W]), 0..1, 1 = selected
AUDIO = "AUDIO"  # ComfyUI's sound: {"waveform": float32 [1, C, S], "sample_rate": int}
NST_MODEL = "NST_MODEL"  # nst_nodes.vgg.VGGModel: a frozen VGG19 and the preprocessing its weights expect
NST_TENSOR = "NST_TENSOR"
NST_FEATURES = "NST_FEATURES"
NST_STYLE_STATISTICS = "NST_STYLE_STATISTICS"
NST_LOSS = "NST_LOSS"
NST_HISTORY = "NST_HISTORY"
NST_FLOW = "NST_FLOW"
NST_TEMPORAL = "NST_TEMPORAL"
NST_STYLIZER = "NST_STYLIZER"


class Audio(TypedDict):
    """AUDIO, as ComfyUI's video nodes pass it."""

    waveform: torch.Tensor  # [1, C, S]
    sample_rate: int


class NetworkTensor(TypedDict):
    """NST_TENSOR: an image in a model's input space."""

    space: str  # identity of the model that normalized it: no node pairs it with another model
    preprocessing: str  # the name of that model's preprocessing, to invert it
    pixels: torch.Tensor  # [1, 3, H, W]


class Features(TypedDict):
    """NST_FEATURES: activations of named layers."""

    model: str
    layers: dict[str, torch.Tensor]  # layer name -> [1, C, H, W]


class LayerStatistics(TypedDict):
    """A style's statistics at one layer (definitions: nst_nodes.losses)."""

    gram: torch.Tensor  # [C, C]
    mean: torch.Tensor  # [C]
    quantiles: torch.Tensor  # [QUANTILES, PROJECTIONS]: of the features projected on fixed directions


class StyleStatistics(TypedDict):
    """NST_STYLE_STATISTICS: what the style losses compare with, per named layer (of a region, with a mask):
    Gram matrices, means and quantiles (see LayerStatistics)."""

    model: str
    layers: dict[str, LayerStatistics]


class FeatureTerm(TypedDict):
    """A content term: features to stay close to."""

    kind: Literal["content"]
    weight: float
    targets: dict[str, torch.Tensor]
    layer_weights: dict[str, float]


Statistic = Literal["gram", "mean_cov", "sliced"]  # the style losses (nst_nodes.losses.layer_loss)


class StyleTerm(TypedDict):
    """A style term: statistics to match, with one of the style losses, inside a region of the result."""

    kind: Literal["style"]
    weight: float
    statistic: Statistic
    normalize: bool  # divide each layer's loss by the target's own size, so that every layer counts
    targets: dict[str, LayerStatistics]
    layer_weights: dict[str, float]
    mask: torch.Tensor | None  # [H, W] 0..1 over the result; None: everywhere


class SmoothnessTerm(TypedDict):
    kind: Literal["tv"]
    weight: float


class TemporalTerm(TypedDict):
    """A video frame's temporal term: stay close to the previous result warped into this frame, where the
    warp is reliable (Ruder et al. 2016)."""

    kind: Literal["temporal"]
    weight: float
    target: torch.Tensor  # [1, 3, H, W], in the network's input space
    mask: torch.Tensor  # [H, W], 1 where the warp is reliable


Term = FeatureTerm | StyleTerm | SmoothnessTerm | TemporalTerm


class Objective(TypedDict):
    """NST_LOSS: the terms to minimize; ``model`` is None when no term depends on a network."""

    model: str | None
    terms: list[Term]


class Flow(TypedDict):
    """NST_FLOW: the optical flow between consecutive frames, both ways, and where warping along it is
    reliable (nst_nodes.video.flow). Entry ``i`` relates frame ``i`` to frame ``i - 1``; entry 0 is zeros."""

    method: str
    backward: torch.Tensor  # [N, H, W, 2]: from frame i to frame i - 1
    forward: torch.Tensor  # [N, H, W, 2]: from frame i - 1 to frame i
    reliable: torch.Tensor  # [N, H, W], 1 where frame i - 1 warped into frame i can be trusted


class Temporal(TypedDict):
    """NST_TEMPORAL: how the optimizer carries a batch of frames from one to the next.

    ``start``: each frame starts from its content (``content``), from the previous result as it is
    (``previous``: a plain chain), or from the previous result warped by the flow (``warped``);
    ``weight`` > 0 adds the temporal term. A scene cut (see ``nst_nodes.video.flow.is_cut``) always
    starts fresh from the content, with no temporal term."""

    start: Literal["content", "previous", "warped"]
    weight: float
    flow: Flow | None


class History(TypedDict, total=False):
    """NST_HISTORY: one value per evaluated iterate (the weighted terms)."""

    method: str
    steps: int  # optimizer steps taken
    precision: str  # the network pass as run (optimize.pass_plan): fp32 [kernel], or bf16 or tf32 after the first steps
    fp32_from: int  # a bf16 plan's steps stood still (bf16 no longer resolved them): fp32 from this step on
    loss: list[float]
    content: list[float]
    style: list[float]
    tv: list[float]
    temporal: list[float]
    frames: list[int]  # a batch of frames: the evaluations of each frame, in order


class Training(TypedDict):
    """How a stylizer was trained (Train Stylizer), kept with it and in its file."""

    model: str  # identity of the network the objective was built with
    steps: int  # the steps taken
    steps_asked: int  # the steps the node was asked for: more than taken where a stop cut the training short
    best_step: int  # the checkpoint kept: the lowest objective on the held-aside picture
    loss: float  # that objective
    size: int  # side of the square training crops
    batch: int
    precision: str  # the loss network's pass plan (nst_nodes.optimize.pass_plan): fp32, or bf16 where faster
    network_precision: str  # the stylizer's own passes while it trained (nst_nodes.fast.train.network_plan)
    seconds: float
    temporal: float  # the temporal term's weight, where it trained on a clip's frames and their flow; else 0


class Stylizer(TypedDict):
    """NST_STYLIZER: a feed-forward network that stylizes a picture in one pass (nst_nodes.fast)."""

    width: int  # channels of its first layer: 32 is Johnson et al.'s network
    blocks: int  # residual blocks
    weights: dict[str, torch.Tensor]  # its state dict
    training: Training


# What a stopped node keeps for its rerun to go on from (the host's keep_progress): tensors and JSON-able values.


class OptimizationProgress(TypedDict):
    """One picture's optimization stopped after ``step`` steps (nst_nodes.optimize.optimize)."""

    machine: str  # where it can go on exactly (nst_nodes.optimize.machine_label)
    step: int
    plan: str  # the pass plan it ran on, and the threads of L-BFGS's vector work: kept, not timed again
    vector_threads: int
    image: torch.Tensor  # the current iterate [1, 3, H, W]
    optimizer: dict[str, Any]  # BoxLBFGS.state(), or Adam's moments of the image
    best_image: torch.Tensor
    best_loss: float
    history: dict[str, list[float]]  # the loss and the terms of every evaluation so far
    fp32_from: int | None  # History's


class ClipProgress(TypedDict):
    """Optimize Image stopped part way through its frames (nst_nodes.video.frames.optimize_frames)."""

    frames: torch.Tensor  # the frames finished, [K, 3, H, W]
    history: dict[str, Any]  # their History
    current: OptimizationProgress | None  # frame K's, where the stop came within it


class TrainingProgress(TypedDict):
    """Train Stylizer stopped after ``step`` steps (nst_nodes.fast.train.train_stylizer)."""

    machine: str  # where it can go on exactly (nst_nodes.optimize.machine_label)
    step: int
    plan: str  # the loss network's pass plan and the stylizer's own ("PRECISION LAYOUT"): kept, not timed again
    network_plan: str
    weights: dict[str, torch.Tensor]  # the network's state dict
    optimizer: dict[str, dict[str, torch.Tensor]]  # Adam's state of each parameter, by its index
    generator: torch.Tensor  # the state of the crops' generator
    best_weights: dict[str, torch.Tensor]  # the checkpoint kept so far, as the run that never stopped has it
    best_loss: float
    best_step: int
    seconds: float  # of training so far


VALUE_TYPES: dict[str, Any] = {
    IMAGE: torch.Tensor,
    NST_TENSOR: NetworkTensor,
    NST_FEATURES: Features,
    NST_STYLE_STATISTICS: StyleStatistics,
    MASK: torch.Tensor,
    NST_LOSS: Objective,
    NST_HISTORY: History,
    AUDIO: Audio | None,
    NST_FLOW: Flow,
    NST_TEMPORAL: Temporal,
    NST_STYLIZER: Stylizer,
}
