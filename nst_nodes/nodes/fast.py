"""Fast style transfer: train a stylizer on the graph's objective, apply it, save and load it."""

from __future__ import annotations

from typing import Any, cast

import torch

from ..fast.network import APPLY_PRECISIONS, apply_precision, build, stylize
from ..fast.store import EXTENSION, read_stylizer, write_stylizer
from ..fast.train import TrainSettings, check_pictures, frame_pairs, split_objective, train_stylizer
from ..files import (
    FileRuleError,
    file_sha256,
    model_path,
    models_stem,
    open_regular,
    output_paths,
    write_atomically,
)
from ..host import Host, host_of
from ..image import to_picture
from ..limits import check_memory, network_bytes, objective_bytes
from ..losses import term_layers
from ..optimize import kept_here
from ..types import (
    IMAGE,
    NST_LOSS,
    NST_MODEL,
    NST_STYLIZER,
    NST_TEMPORAL,
    Objective,
    Stylizer,
    Temporal,
    TrainingProgress,
)
from ..vgg import VGGModel
from .base import HIDDEN_CONTEXT, Node, require_same_model, seed_input
from .images import prefix_problem
from .network import check_large_enough, deepest_layer
from .schema import Boolean, Choice, Float, Int, Link, ModelFile, Text, Validation

STYLIZER_BYTES_PER_PIXEL = 96
"""Activations of a width-1 stylizer per pixel, forward and backward (scales with the width): an estimate."""


def stylizer_bytes(channels: int, height: int, width: int, with_gradient: bool) -> int:
    """A stylizer of ``channels`` (its width) on one ``height`` x ``width`` picture."""
    return STYLIZER_BYTES_PER_PIXEL * channels * height * width // (1 if with_gradient else 3)


class TrainStylizer(Node):
    DESCRIPTION = (
        "Train a feed-forward stylizer (Johnson et al. 2016) on the objective the optimizer would minimize: its "
        "style and smoothness terms as they are, its content terms against each training picture itself. Then "
        "Apply Stylizer stylizes any picture in one pass. Cached like any node (by nst run on disk, across runs), "
        "so it trains again only when its inputs change; keep it with Save Stylizer."
    )
    FUNCTION = "train"
    RETURN_TYPES = (NST_STYLIZER,)
    RETURN_NAMES = ("stylizer",)
    OUTPUT_TOOLTIPS = ("The trained network (the best checkpoint on the held-aside picture or frames).",)

    INPUTS = (
        Link("model", type=NST_MODEL, tooltip="The network the objective was built with."),
        Link("objective", type=NST_LOSS, tooltip="Content, style and smoothness terms (Combine Losses)."),
        Link(
            "images",
            type=IMAGE,
            tooltip="Training pictures (Load Image Set, or a clip's frames); of two or more, the last is held "
            "aside (with a temporal input, the last two): the previews show it and it picks the checkpoint kept.",
        ),
        Int(
            "size",
            default=128,
            min=32,
            max=2048,
            tooltip="Side of the square random crops trained on; 256 is Johnson et al.'s, for a GPU.",
        ),
        Int("steps", default=600, min=1, max=1_000_000, tooltip="Training steps (one batch of crops each)."),
        Int("batch", default=4, min=1, max=64, tooltip="Crops per step (even with a temporal input: pairs of frames)."),
        Float("lr", default=1e-3, min=1e-6, max=1.0, step=1e-5, tooltip="Adam's learning rate."),
        seed_input("Of the network's start and the crops: the same seed trains the same network on a CPU."),
        Int(
            "width",
            default=16,
            min=4,
            max=128,
            tooltip="Channels of the network's first layer: 16 for CPUs, 32 is Johnson et al.'s network.",
        ),
        Link(
            "temporal",
            type=NST_TEMPORAL,
            optional=True,
            tooltip="For video: Temporal Loss (mode flow) on Optical Flow of the training frames. Each step then "
            "trains on pairs of consecutive frames, and its weight keeps a frame's result close to the previous "
            "one's warped along the flow (Huang et al. 2017); the last two frames are held aside.",
        ),
    )
    HIDDEN = HIDDEN_CONTEXT

    def train(
        self,
        model: VGGModel,
        objective: Objective,
        images: torch.Tensor,
        size: int,
        steps: int,
        batch: int,
        lr: float,
        seed: int,
        width: int,
        temporal: Temporal | None = None,
        context: Host | None = None,
    ) -> tuple[Stylizer]:
        host = host_of(context)
        if objective["model"] is not None:
            require_same_model("objective", model.identity, objective["model"])
        split_objective(objective)
        check_pictures(images, size)
        if temporal is not None:
            if temporal["weight"] == 0:
                raise ValueError(
                    "temporal: its mode or weight adds no temporal term (only mode flow with a weight above 0 "
                    "does); set mode flow with a weight above 0, or disconnect it"
                )
            frame_pairs(images, temporal, batch)
        layers = term_layers(objective)
        check_large_enough("images", images[:, :size, :size].permute(0, 3, 1, 2), layers)
        needed = batch * (
            network_bytes(size, size, deepest_layer(layers), True, host.device)
            + objective_bytes(objective, size, size)
            + stylizer_bytes(width, size, size, with_gradient=True)
        )
        check_memory("batch", "training", needed, host.device, size, size)

        def report(step: int, total: int, loss: float, preview: torch.Tensor) -> None:
            host.progress(step, total, loss=loss, preview=lambda: to_picture(preview[:1].cpu()))

        settings = TrainSettings(size, steps, batch, lr, seed, width)
        device = torch.device(host.device)
        kept = host.resume_state(lambda state: kept_here(state, TrainingProgress.__required_keys__, device))
        stylizer = train_stylizer(
            model.to(host.device),
            objective,
            images,
            settings,
            report,
            host.should_stop,
            temporal,
            cast(TrainingProgress | None, kept),
            lambda progress, running: host.keep_progress(dict(progress), progress["step"], running),
        )
        return (stylizer,)


class ApplyStylizer(Node):
    DESCRIPTION = "Stylize pictures or a clip's frames in one pass each of a trained stylizer, at any size."
    FUNCTION = "apply"
    RETURN_TYPES = (IMAGE,)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The stylized pictures, the same size and number as the input.",)

    INPUTS = (
        Link("stylizer", type=NST_STYLIZER, tooltip="Train Stylizer's or Load Stylizer's."),
        Link("image", type=IMAGE, tooltip="A picture, or a batch of frames."),
        Choice(
            "precision",
            choices=APPLY_PRECISIONS,
            default="auto",
            optional=True,
            tooltip="auto: bf16 where the hardware has it and it measured faster, else fp32",
        ),
    )
    HIDDEN = HIDDEN_CONTEXT

    def apply(
        self, stylizer: Stylizer, image: torch.Tensor, precision: str = "auto", context: Host | None = None
    ) -> tuple[torch.Tensor]:
        host = host_of(context)
        count, height, width = image.shape[:3]
        if count == 0:
            raise ValueError("image: the batch holds no pictures; connect a picture or a clip's frames")
        needed = stylizer_bytes(stylizer["width"], height, width, with_gradient=False) + 2 * image[:1].numel() * 4
        check_memory("image", "stylizing", needed, host.device, height, width)
        network = build(stylizer).to(host.device)
        # A stop asked for before this node started (while Train Stylizer ran) is what made its input the best so
        # far: that input is then stylized on every frame, and only a stop that comes while stylizing cuts it short.
        stopped_upstream = host.should_stop()
        frames = []
        precision = apply_precision(precision, network, image[:1].to(host.device))
        with torch.no_grad():
            for index in range(count):
                frames.append(stylize(network, image[index : index + 1].to(host.device), precision).clamp(0, 1).cpu())
                host.progress(index + 1, count, preview=lambda: to_picture(frames[-1]))
                if index + 1 < count and not stopped_upstream and host.should_stop():
                    break
        return (torch.cat(frames),)


class SaveStylizer(Node):
    DESCRIPTION = "Write a stylizer into the models folder as a .safetensors file (no code inside: safe to share)."
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    INPUTS = (
        Link("stylizer", type=NST_STYLIZER, tooltip="The stylizer to keep."),
        Text(
            "filename_prefix",
            default="nst/stylizer",
            tooltip="Relative to the models folder (ComfyUI: models/nst_stylizers); may name subfolders.",
        ),
        Boolean("overwrite", default=True, tooltip="On: <prefix>.safetensors. Off: the next free numbered name."),
    )
    HIDDEN = HIDDEN_CONTEXT

    @classmethod
    def validate(cls, filename_prefix: str | None, overwrite: bool | None, context: Host | None) -> Validation:
        return prefix_problem(filename_prefix, context, models_stem, EXTENSION.removeprefix(".") if overwrite else None)

    @classmethod
    def REPLACED_FILES(cls, filename_prefix: str, overwrite: bool, context: Host | None) -> list[str]:
        return [f"{models_stem(host_of(context), filename_prefix)}{EXTENSION}"] if overwrite else []

    def save(
        self, stylizer: Stylizer, filename_prefix: str, overwrite: bool = True, context: Host | None = None
    ) -> dict[str, Any]:
        host = host_of(context)
        stem = models_stem(host, filename_prefix)
        target = output_paths(stem, EXTENSION.removeprefix("."), overwrite)[0]
        path = write_atomically(target, lambda file: write_stylizer(file, stylizer), overwrite)
        shown = path.relative_to(host.models_folder) if path.is_relative_to(host.models_folder) else path
        return {"ui": {"text": [str(shown)]}, "result": ()}


class LoadStylizer(Node):
    DESCRIPTION = "Read a stylizer that Save Stylizer wrote (.safetensors only: a pickle could run code)."
    FUNCTION = "load"
    RETURN_TYPES = (NST_STYLIZER,)
    RETURN_NAMES = ("stylizer",)
    OUTPUT_TOOLTIPS = ("The stylizer, for Apply Stylizer.",)

    INPUTS = (
        ModelFile(
            "stylizer",
            extension=EXTENSION,
            tooltip="A stylizer of the models folder (ComfyUI: models/nst_stylizers).",
            path_tooltip="A .safetensors file, relative to the models folder (--models-dir, default ./models).",
        ),
    )
    HIDDEN = HIDDEN_CONTEXT

    @classmethod
    def validate(cls, stylizer: str | None, context: Host | None) -> Validation:
        if stylizer is None:
            return True
        try:
            cls.read(stylizer, context)
        except (FileRuleError, ValueError) as error:
            return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, stylizer: str, context: Host | None = None, **_: Any) -> str:
        try:
            return file_sha256(model_path(host_of(context), stylizer, "stylizer"), "stylizer")
        except (OSError, ValueError) as error:
            return f"unreadable: {error}"

    @staticmethod
    def read(name: str, context: Host | None) -> Stylizer:
        path = model_path(host_of(context), name, "stylizer")
        if path.suffix.lower() != EXTENSION:
            raise FileRuleError(f"stylizer: {name} is not a {EXTENSION} file; stylizers are saved by Save Stylizer")
        if not path.exists():
            raise FileRuleError(
                f"stylizer: file not found: {path}; Save Stylizer writes stylizers into the models folder "
                "(graphs/fast.json trains and saves nst/starry_night)"
            )
        with open_regular(path, "stylizer") as file:
            return read_stylizer(file, path)

    def load(self, stylizer: str, context: Host | None = None) -> tuple[Stylizer]:
        return (self.read(stylizer, context),)
