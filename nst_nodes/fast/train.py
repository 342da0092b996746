"""Train a stylizer on an objective: the same terms the optimizer minimizes, on a set of pictures.

The objective's style and smoothness terms apply as they are. A content term gives its layers, their weights
and its weight; its target is, at every step, the features of the picture being stylized (Johnson et al.'s
feature reconstruction loss). Each step draws random square crops (and mirror images) of the training pictures
with a seeded generator, so training is deterministic on the CPU.

The last picture of a set of two or more is held aside: never trained on, it is what the previews show and
what picks the checkpoint that is kept (the lowest objective on it), also when a stop cuts training short.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import kernels
from ..losses import ObjectiveFunction, content_loss, tensor_sum, term_layers
from ..optimize import pass_plan
from ..types import FeatureTerm, Objective, Stylizer, Term
from ..vgg import VGGModel
from .network import RESIDUAL_BLOCKS, TAIL_LAYOUTS, StylizerNetwork, stylize

CHECKPOINTS = 20  # held-aside evaluations per training (and at the end, or at a stop)

Report = Callable[[int, int, float, torch.Tensor], None]
"""``report(step, total, loss, preview)``: after every step, with the stylized held-aside picture."""


@dataclass(frozen=True)
class TrainSettings:
    size: int = 256  # side of the square training crops
    steps: int = 1000
    batch: int = 4
    lr: float = 1e-3  # Adam's, on the network's weights
    seed: int = 0
    width: int = 16


def split_objective(objective: Objective) -> tuple[list[FeatureTerm], list[Term]]:
    """The content terms (retargeted at every step) and the others; ValueError for terms that cannot train a
    stylizer, naming what to change."""
    content: list[FeatureTerm] = []
    others: list[Term] = []
    for term in objective["terms"]:
        if term["kind"] == "temporal":
            raise ValueError("objective: a temporal term belongs to one clip's frames; train without Temporal Loss")
        if term["kind"] == "style" and term["mask"] is not None:
            raise ValueError(
                "objective: a style loss with a mask places a style in one region of one picture, but a stylizer "
                "applies to any picture; leave the mask out"
            )
        if term["kind"] == "content":
            content.append(term)
        else:
            others.append(term)
    if not any(term["kind"] == "style" for term in others):
        raise ValueError("objective: it has no style loss, so there is no style to learn; add a Style Loss")
    if not content:
        raise ValueError("objective: it has no content loss, so the stylizer would forget the picture; add one")
    return content, others


def random_crops(images: torch.Tensor, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """``settings.batch`` random ``size``² crops of IMAGE ``[N, H, W, 3]``, half of them mirrored:
    ``[B, 3, size, size]``. Pictures smaller than a crop were refused before (:func:`check_pictures`)."""
    crops = []
    count, height, width = images.shape[:3]
    size = settings.size
    for _ in range(settings.batch):
        index = int(torch.randint(count, (1,), generator=generator))
        top = int(torch.randint(height - size + 1, (1,), generator=generator))
        left = int(torch.randint(width - size + 1, (1,), generator=generator))
        crop = images[index, top : top + size, left : left + size]
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(1)
        crops.append(crop.permute(2, 0, 1))
    return torch.stack(crops)


def check_pictures(images: torch.Tensor, size: int) -> None:
    height, width = images.shape[1:3]
    if min(height, width) < size:
        raise ValueError(
            f"images: {width}x{height} pictures are smaller than the {size}x{size} training crops; "
            f"resize them to at least {size} px on their short side, or lower size"
        )


def tail_layout(network: StylizerNetwork, crops: torch.Tensor) -> str:
    """The layout of the network's last convolution's input that trains fastest on ``crops``' size here: a forward
    and backward pass in each, timed once per machine, network width and crop size (remembered with the kernel
    choices), the layouts taking turns. NCHW where there is nothing to choose (CUDA)."""
    if crops.device.type != "cpu":
        return TAIL_LAYOUTS[0]

    def time_them() -> dict[str, float]:
        best = dict.fromkeys(TAIL_LAYOUTS, math.inf)
        for turn in range(4):  # the first one warms up
            for layout in TAIL_LAYOUTS:
                network.tail_layout = layout
                started = time.perf_counter()
                network(crops).square().mean().backward()
                if turn:
                    best[layout] = min(best[layout], time.perf_counter() - started)
        network.zero_grad(set_to_none=True)
        return best

    key = f"stylizer tail:{network.width}@{'x'.join(map(str, crops.shape))}"
    return kernels.chooser().measured(key, TAIL_LAYOUTS, time_them)


class _Loss:
    """The objective of a batch of stylized pictures against their own content: the mean over the batch. The
    network passes run on a pass plan (:func:`~nst_nodes.optimize.pass_plan`): fp32 until :meth:`plan` is
    called."""

    def __init__(self, model: VGGModel, objective: Objective, device: torch.device) -> None:
        self.model = model
        self.content, others = split_objective(objective)
        self.others = ObjectiveFunction(others, device)
        self.layers = term_layers(objective)
        self.content_layers = sorted({layer for term in self.content for layer in term["targets"]})
        self.reduced: torch.dtype | None = None
        self.kernel: str | None = None

    def plan(self, pictures: torch.Tensor, size: int, should_stop: Callable[[], bool]) -> str:
        """Time the pass plans on one ``size``² crop of IMAGE ``pictures`` (once per machine and crop size) and
        use the fastest: bf16 where the hardware runs it natively and it is faster, one kernel everywhere, or
        fp32."""
        sample = self.model.preprocessing.normalize(pictures[:1, :size, :size])
        plan = pass_plan("auto", self.model, sample, self.layers, self.others.total, should_stop)
        precision, _, kernel = plan.partition(" ")
        self.reduced = torch.bfloat16 if precision == "bf16" else None
        self.kernel = kernel or None
        return plan

    def __call__(self, stylized: torch.Tensor, pictures: torch.Tensor) -> torch.Tensor:
        """``stylized``, ``pictures``: ``[B, 3, H, W]`` RGB 0..1."""
        normalize = self.model.preprocessing.normalize
        x = normalize(stylized.permute(0, 2, 3, 1))
        with kernels.every_layer(self.kernel):
            features = self.model.features(x, self.layers, reduced=self.reduced)
            with torch.no_grad():
                pictures_in = normalize(pictures.permute(0, 2, 3, 1))
                targets = self.model.features(pictures_in, self.content_layers, reduced=self.reduced)
        targets = {layer: value.float() for layer, value in targets.items()}
        losses = []
        for item in range(len(x)):
            own = {layer: value[item : item + 1] for layer, value in features.items()}
            own_content = {layer: own[layer].float() for layer in self.content_layers}
            content = [
                term["weight"]
                * content_loss(
                    own_content,
                    {layer: targets[layer][item : item + 1] for layer in term["targets"]},
                    term["layer_weights"],
                )
                for term in self.content
            ]
            losses.append(self.others.total(own, x[item : item + 1]) + tensor_sum(content))
        return tensor_sum(losses) / len(losses)


def train_stylizer(
    model: VGGModel,
    objective: Objective,
    images: torch.Tensor,
    settings: TrainSettings,
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Stylizer:
    """Train a stylizer on IMAGE ``[N, H, W, 3]`` against ``objective`` (see the module's docstring); returns
    the best checkpoint on the held-aside picture. ``should_stop()`` is polled after every step."""
    check_pictures(images, settings.size)
    report = report or (lambda step, total, loss, preview: None)
    should_stop = should_stop or (lambda: False)
    device = next(model.network.parameters()).device
    started = time.perf_counter()
    held = images[-1:].to(device)
    training = (images[:-1] if len(images) > 1 else images).to(device)
    with torch.inference_mode(False), torch.enable_grad():
        held, training = held.clone(), training.clone()  # a host's inference-mode tensors, made normal
        loss_of = _Loss(model, objective, device)
        plan = loss_of.plan(training, settings.size, should_stop)
        generator = torch.Generator().manual_seed(settings.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            network = StylizerNetwork(settings.width).to(device)
        sample = training[:1, : settings.size, : settings.size].permute(0, 3, 1, 2)
        network.tail_layout = tail_layout(network, sample.expand(settings.batch, -1, -1, -1).contiguous())
        optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
        best = _Checkpoint()
        every = max(1, settings.steps // CHECKPOINTS)
        preview = held
        steps = 0
        for step in range(1, settings.steps + 1):
            crops = random_crops(training, settings, generator).to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(network(crops), crops)
            loss.backward()
            optimizer.step()
            steps = step
            if step % every == 0 or step == settings.steps:
                preview = best.consider(network, step, held, loss_of)
            report(step, settings.steps, loss.item(), preview)
            if step < settings.steps and should_stop():
                if step % every:
                    best.consider(network, step, held, loss_of)
                break
    return {
        "width": settings.width,
        "blocks": RESIDUAL_BLOCKS,
        "weights": best.weights,
        "training": {
            "model": model.identity,
            "steps": steps,
            "best_step": best.step,
            "loss": best.loss,
            "size": settings.size,
            "batch": settings.batch,
            "precision": plan,
            "seconds": round(time.perf_counter() - started, 1),
        },
    }


class _Checkpoint:
    """The network's weights at its lowest objective on the held-aside picture so far."""

    def __init__(self) -> None:
        self.loss = float("inf")
        self.step = 0
        self.weights: dict[str, torch.Tensor] = {}

    def consider(self, network: StylizerNetwork, step: int, held: torch.Tensor, loss_of: _Loss) -> torch.Tensor:
        """Evaluate the network on the held-aside picture, keep its weights if they are the best so far; returns
        the stylized picture (IMAGE) for the preview."""
        network.eval()
        with torch.no_grad():
            stylized = stylize(network, held)
            loss = float(loss_of(stylized.permute(0, 3, 1, 2), held.permute(0, 3, 1, 2)))
        network.train()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss} at step {step}; lower the learning rate or the loss weights"
            )
        if loss < self.loss:
            self.loss, self.step = loss, step
            self.weights = {name: value.detach().cpu().clone() for name, value in network.state_dict().items()}
        return stylized.clamp(0, 1)
