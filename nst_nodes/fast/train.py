"""Train a stylizer on an objective: the same terms the optimizer minimizes, on a set of pictures.

The objective's style and smoothness terms apply as they are. A content term gives its layers, their weights
and its weight; its target is, at every step, the features of the picture being stylized (Johnson et al.'s
feature reconstruction loss). Each step draws random square crops (and mirror images) of the training pictures
with a seeded generator, so training is deterministic on the CPU.

The last picture of a set of two or more is held aside: never trained on, it is what the previews show and
what picks the checkpoint that is kept (the lowest objective on it), also when a stop cuts training short.

With a temporal term (a clip's frames and their flow: Temporal Loss), each step trains on pairs of consecutive
frames cut at the same place, and the term keeps a frame's result close to the previous frame's result warped
along the flow (Huang et al. 2017, "Real-Time Neural Style Transfer for Videos"): the optimizer's temporal loss,
counted where the warp is reliable and lands inside the crop. The last two frames are then held aside, and the
checkpoint's objective on them includes the term between them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch

from .. import kernels
from ..losses import ObjectiveFunction, content_loss, temporal_loss, tensor_sum, term_layers
from ..optimize import best_in_turns, device_label, machine_label, native_bf16, pass_plan
from ..types import FeatureTerm, Flow, Objective, Stylizer, Temporal, Term, Training, TrainingProgress
from ..vgg import VGGModel
from ..video.flow import inside, is_cut, warp
from .network import RESIDUAL_BLOCKS, TAIL_LAYOUTS, StylizerNetwork, autocast_in, stylize

CHECKPOINTS = 20  # held-aside evaluations per training (and at the end, or at a stop)

Report = Callable[[int, int, float, torch.Tensor], None]
"""``report(step, total, loss, preview)``: after every step, with the stylized held-aside picture."""

Motion = tuple[torch.Tensor, torch.Tensor]
"""The flow from each frame of a batch's first half to the frame in the same place of its second half
``[P, H, W, 2]``, and where warping along it counts ``[P, H, W]`` (1 or 0)."""


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
            raise ValueError(
                "objective: a temporal term belongs to one frame of a clip; connect Temporal Loss to Train "
                "Stylizer's temporal input instead"
            )
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


def _placement(
    choices: int, height: int, width: int, size: int, generator: torch.Generator
) -> tuple[int, slice, slice, bool]:
    """A random choice among ``choices`` pictures, a ``size``² window of a ``height`` x ``width`` one, and whether to
    mirror it."""
    index = int(torch.randint(choices, (1,), generator=generator))
    top = int(torch.randint(height - size + 1, (1,), generator=generator))
    left = int(torch.randint(width - size + 1, (1,), generator=generator))
    mirrored = bool(torch.rand((), generator=generator) < 0.5)
    return index, slice(top, top + size), slice(left, left + size), mirrored


def random_crops(images: torch.Tensor, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """``settings.batch`` random ``size``² crops of IMAGE ``[N, H, W, 3]``, half of them mirrored:
    ``[B, 3, size, size]``. Pictures smaller than a crop were refused before (:func:`check_pictures`)."""
    crops = []
    height, width = images.shape[1:3]
    for _ in range(settings.batch):
        index, rows, columns, mirrored = _placement(len(images), height, width, settings.size, generator)
        crop = images[index, rows, columns]
        crops.append((crop.flip(1) if mirrored else crop).permute(2, 0, 1))
    return torch.stack(crops)


def motion_of(backward: torch.Tensor, reliable: torch.Tensor) -> Motion:
    """A frame's (or crop's) flow to the previous one ``[H, W, 2]`` and where the temporal term counts: reliable and
    landing inside."""
    return backward[None], (reliable * inside(backward))[None]


def random_pairs(
    frames: torch.Tensor, pairs: list[int], flow: Flow, settings: TrainSettings, generator: torch.Generator
) -> tuple[torch.Tensor, Motion]:
    """``settings.batch // 2`` random ``size``² crops of frames ``i`` of IMAGE ``[N, H, W, 3]``, ``i`` drawn from
    ``pairs``, then the same crops of frames ``i - 1``: ``[B, 3, size, size]``; with the flow between them and
    where warping along it is reliable and stays inside the crop. Half of the pairs mirrored, flow included."""
    now, before, flows, masks = [], [], [], []
    height, width = frames.shape[1:3]
    for _ in range(settings.batch // 2):
        choice, rows, columns, mirrored = _placement(len(pairs), height, width, settings.size, generator)
        index = pairs[choice]
        backward, reliable = flow["backward"][index, rows, columns], flow["reliable"][index, rows, columns]
        crops = frames[index, rows, columns], frames[index - 1, rows, columns]
        if mirrored:
            crops = crops[0].flip(1), crops[1].flip(1)
            backward, reliable = backward.flip(1) * backward.new_tensor([-1.0, 1.0]), reliable.flip(1)
        now.append(crops[0].permute(2, 0, 1))
        before.append(crops[1].permute(2, 0, 1))
        crop_flow, crop_mask = motion_of(backward, reliable)
        flows.append(crop_flow)
        masks.append(crop_mask)
    return torch.stack(now + before), (torch.cat(flows), torch.cat(masks))


def frame_pairs(images: torch.Tensor, temporal: Temporal, batch: int) -> list[int]:
    """The training frames ``i`` (the last two are held aside) whose warp from frame ``i - 1`` is no scene cut;
    ValueError, naming what to change, where a temporal term cannot train on ``images``."""
    flow = temporal["flow"]
    if flow is None:
        raise ValueError("temporal: it carries no flow; connect Optical Flow of the training frames to Temporal Loss")
    count, height, width = images.shape[:3]
    flow_count, flow_height, flow_width = flow["backward"].shape[:3]
    if (flow_count, flow_height, flow_width) != (count, height, width):
        raise ValueError(
            f"temporal: its flow is of {flow_count} frames of {flow_width}x{flow_height}, the images are {count} of "
            f"{width}x{height}; take Optical Flow of the training frames themselves"
        )
    if batch % 2:
        raise ValueError(f"batch: with a temporal term a step trains on pairs of frames; make it even, not {batch}")
    if count < 4:
        raise ValueError(
            f"images: {count} frames; with a temporal term the last two are held aside and a step trains on two "
            "consecutive ones of the rest: give at least 4"
        )
    pairs = [index for index in range(1, count - 2) if not is_cut(flow["reliable"][index])]
    if not pairs:
        raise ValueError(
            f"images: every two consecutive training frames of the {count} lie across a scene cut (the flow's warp "
            "is reliable on too little of the frame), so the temporal term has nothing to train on"
        )
    return pairs


def check_pictures(images: torch.Tensor, size: int) -> None:
    height, width = images.shape[1:3]
    if min(height, width) < size:
        raise ValueError(
            f"images: {width}x{height} pictures are smaller than the {size}x{size} training crops; "
            f"resize them to at least {size} px on their short side, or lower size"
        )


def network_plan(network: StylizerNetwork, crops: torch.Tensor, bf16_allowed: bool = True) -> str:
    """How the stylizer itself trains fastest on ``crops``' size here, ``"PRECISION LAYOUT"``: fp32, or bf16 under
    autocast where the hardware runs it natively (the weights and Adam's state stay fp32), and the layout of the
    last convolution's input (on a CPU: :attr:`StylizerNetwork.tail_layout`). A forward and backward pass of each,
    timed once per machine, network width and crop size (remembered with the kernel choices), the candidates
    taking turns. Not bf16 where ``bf16_allowed`` is false: a loss term that is small at every pixel (a temporal
    term) rounds away in bf16's gradients (in a 3-step test with one, the weights came out as without it)."""
    precisions = ("fp32", "bf16") if bf16_allowed and native_bf16(crops.device) else ("fp32",)
    layouts = TAIL_LAYOUTS if crops.device.type == "cpu" else TAIL_LAYOUTS[:1]
    candidates = tuple(f"{precision} {layout}" for precision in precisions for layout in layouts)
    if len(candidates) == 1:
        return candidates[0]

    def train_pass(candidate: str) -> None:
        precision, network.tail_layout = candidate.split()
        with autocast_in(precision, crops.device):
            stylized = network(crops)
        stylized.square().mean().backward()

    def time_them() -> dict[str, float]:
        runs = {candidate: partial(train_pass, candidate) for candidate in candidates}
        best = best_in_turns(runs, 3, crops.device)
        network.zero_grad(set_to_none=True)
        return best

    shape = "x".join(map(str, crops.shape))
    key = f"stylizer training:{'|'.join(candidates)}:{network.architecture}@{shape}:{device_label(crops.device)}"
    return kernels.chooser().measured(key, candidates, time_them)


class _Loss:
    """The objective of a batch of stylized pictures against their own content: the mean over the batch. The
    network passes run on a pass plan (:func:`~nst_nodes.optimize.pass_plan`): fp32 until :meth:`plan` is
    called."""

    def __init__(self, model: VGGModel, objective: Objective, device: torch.device, temporal_weight: float) -> None:
        self.model = model
        self.temporal_weight = temporal_weight
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
        return self.use(pass_plan("auto", self.model, sample, self.layers, self.others.total, should_stop))

    def use(self, plan: str) -> str:
        precision, _, kernel = plan.partition(" ")
        self.reduced = torch.bfloat16 if precision == "bf16" else None
        self.kernel = kernel or None
        return plan

    def targets(self, pictures: torch.Tensor) -> dict[str, torch.Tensor]:
        """The content terms' targets for ``pictures`` ``[B, 3, H, W]`` (RGB 0..1): their content layers' fp32
        features, on the pass plan."""
        with torch.no_grad(), kernels.every_layer(self.kernel):
            pictures_in = self.model.preprocessing.normalize(pictures.permute(0, 2, 3, 1))
            targets = self.model.features(pictures_in, self.content_layers, reduced=self.reduced)
        return {layer: value.float() for layer, value in targets.items()}

    def __call__(
        self, stylized: torch.Tensor, targets: dict[str, torch.Tensor], motion: Motion | None = None
    ) -> torch.Tensor:
        """``stylized``: ``[B, 3, H, W]`` RGB 0..1; ``targets``: their pictures' (:meth:`targets`); with ``motion``,
        the temporal term between the batch's first half and the second half warped into it (:func:`random_pairs`)."""
        x = self.model.preprocessing.normalize(stylized.permute(0, 2, 3, 1))
        with kernels.every_layer(self.kernel):
            features = self.model.features(x, self.layers, reduced=self.reduced)
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
        total = tensor_sum(losses) / len(losses)
        if motion is None or self.temporal_weight == 0:
            return total
        flow, mask = motion
        now, before = x[: len(flow)], x[len(flow) : 2 * len(flow)]
        return total + self.temporal_weight * temporal_loss(now, warp(before, flow), mask[:, None])


def held_aside(images: torch.Tensor, flow: Flow | None) -> tuple[torch.Tensor, Motion | None, torch.Tensor]:
    """The held-aside frames (the last, then with a flow the one before it), their motion where the temporal term
    applies between them (no scene cut), and the training frames: all of ``images`` if it is one picture."""
    if flow is None:
        return images[-1:], None, images[:-1] if len(images) > 1 else images
    held, training = images[[-1, -2]], images[:-2]
    if is_cut(flow["reliable"][-1]):
        return held, None, training
    return held, motion_of(flow["backward"][-1], flow["reliable"][-1]), training


def train_stylizer(
    model: VGGModel,
    objective: Objective,
    images: torch.Tensor,
    settings: TrainSettings,
    report: Report | None = None,
    should_stop: Callable[[], bool] | None = None,
    temporal: Temporal | None = None,
    resume: TrainingProgress | None = None,
    keep: Callable[[TrainingProgress, bool], None] | None = None,
) -> Stylizer:
    """Train a stylizer on IMAGE ``[N, H, W, 3]`` against ``objective``, with ``temporal``'s term on the frames'
    flow (see the module's docstring); returns the best checkpoint on the held-aside picture. ``should_stop()`` is
    polled after every step; a stop, and every checkpoint, hands ``keep(state, running)`` the state to go on from
    (``running``: at a checkpoint). ``resume``: such a state, of a run with the same arguments; the training goes on
    from it to the stylizer it would have reached had it not stopped."""
    check_pictures(images, settings.size)
    pairs = frame_pairs(images, temporal, settings.batch) if temporal is not None else []
    flow = temporal["flow"] if temporal is not None else None  # not None with a temporal term (frame_pairs)
    report = report or (lambda step, total, loss, preview: None)
    should_stop = should_stop or (lambda: False)
    device = next(model.network.parameters()).device
    started = time.perf_counter()
    held, held_motion, training = held_aside(images, flow)
    if held_motion is not None:
        held_motion = held_motion[0].to(device), held_motion[1].to(device)
    with torch.inference_mode(False), torch.enable_grad():
        held, training = held.to(device).clone(), training.to(device).clone()  # a host's inference-mode tensors
        loss_of = _Loss(model, objective, device, temporal["weight"] if temporal is not None else 0.0)
        generator = torch.Generator().manual_seed(settings.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            network = StylizerNetwork(settings.width).to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
        best = _Checkpoint(held, held_motion, loss_of)
        if resume is None:
            plan = loss_of.plan(training, settings.size, should_stop)
            if should_stop():  # perhaps during the timing: its stand-in plan is not what a rerun will time
                keep = None
            sample = training[:1, : settings.size, : settings.size].permute(0, 3, 1, 2)
            trains_on = network_plan(
                network,
                sample.expand(settings.batch, -1, -1, -1).contiguous(),
                bf16_allowed=loss_of.temporal_weight == 0,
            )
            steps, seconds_before = 0, 0.0
        else:
            plan, trains_on = loss_of.use(resume["plan"]), resume["network_plan"]
            restore_training(resume, network, optimizer, generator, best)
            steps, seconds_before = resume["step"], resume["seconds"]
        network_precision, network.tail_layout = trains_on.split()
        every = max(1, settings.steps // CHECKPOINTS)
        preview = held
        for step in range(steps + 1, settings.steps + 1):
            motion = None
            if flow is not None:
                crops, (flows, masks) = random_pairs(training, pairs, flow, settings, generator)
                motion = flows.to(device), masks.to(device)
            else:
                crops = random_crops(training, settings, generator)
            crops = crops.to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast_in(network_precision, device):
                stylized = network(crops)
            loss = loss_of(stylized, loss_of.targets(crops), motion)
            loss.backward()
            optimizer.step()
            steps = step
            if step % every == 0 or step == settings.steps:
                preview = best.consider(network, step)
            report(step, settings.steps, loss.item(), preview)
            stopping = step < settings.steps and should_stop()
            # kept at a stop, and at each checkpoint too: a killed process (a second Ctrl-C, the OOM killer, a lost
            # worker) goes on from the last one
            if keep is not None and step < settings.steps and (stopping or step % every == 0):
                seconds = seconds_before + time.perf_counter() - started
                keep(
                    training_progress(step, plan, trains_on, network, optimizer, generator, best, seconds), not stopping
                )
            if stopping:
                if step % every:
                    best.consider(network, step)
                break
    training_record: Training = {
        "model": model.identity,
        "steps": steps,
        "steps_asked": settings.steps,
        "best_step": best.step,
        "loss": best.loss,
        "size": settings.size,
        "batch": settings.batch,
        "precision": plan,
        "network_precision": network_precision,
        "seconds": round(seconds_before + time.perf_counter() - started, 1),
        "temporal": loss_of.temporal_weight,
    }
    return {"width": settings.width, "blocks": RESIDUAL_BLOCKS, "weights": best.weights, "training": training_record}


def cpu_copy(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies on the CPU, which the training's later steps leave as they are."""
    return {name: value.detach().to("cpu", copy=True) for name, value in tensors.items()}


def training_progress(
    step: int,
    plan: str,
    network_plan: str,
    network: StylizerNetwork,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    best: _Checkpoint,
    seconds: float,
) -> TrainingProgress:
    """What a training stopped after ``step`` needs to go on (the checkpoint as the steps so far left it)."""
    return {
        "machine": machine_label(next(network.parameters()).device),
        "step": step,
        "plan": plan,
        "network_plan": network_plan,
        "weights": cpu_copy(network.state_dict()),
        "optimizer": {str(index): cpu_copy(state) for index, state in optimizer.state_dict()["state"].items()},
        "generator": generator.get_state(),
        "best_weights": dict(best.weights),
        "best_loss": best.loss,
        "best_step": best.step,
        "seconds": seconds,
    }


def restore_training(
    progress: TrainingProgress,
    network: StylizerNetwork,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    best: _Checkpoint,
) -> None:
    network.load_state_dict(progress["weights"])
    state = {
        int(index): {name: value.clone() for name, value in moments.items()}
        for index, moments in progress["optimizer"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    generator.set_state(progress["generator"])
    best.weights = {name: value.clone() for name, value in progress["best_weights"].items()}
    best.loss, best.step = progress["best_loss"], progress["best_step"]


class _Checkpoint:
    """The network's weights at its lowest objective on the held-aside frames so far."""

    def __init__(self, held: torch.Tensor, motion: Motion | None, loss_of: _Loss) -> None:
        self.held, self.motion, self.loss_of = held, motion, loss_of
        self.targets = loss_of.targets(held.permute(0, 3, 1, 2))  # the same at every checkpoint
        self.loss = float("inf")
        self.step = 0
        self.weights: dict[str, torch.Tensor] = {}

    def consider(self, network: StylizerNetwork, step: int) -> torch.Tensor:
        """Evaluate the network on the held-aside frames, keep its weights if they are the best so far; returns
        the stylized frames (IMAGE), the held-aside picture first, for the preview."""
        network.eval()
        with torch.no_grad():
            stylized = stylize(network, self.held)
            loss = float(self.loss_of(stylized.permute(0, 3, 1, 2), self.targets, self.motion))
        network.train()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss} at step {step}; lower the learning rate or the loss weights"
            )
        if loss < self.loss:
            self.loss, self.step = loss, step
            self.weights = cpu_copy(network.state_dict())
        return stylized.clamp(0, 1)
