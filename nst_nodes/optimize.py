"""The optimization loop: update the pixels of an image in network space against an objective.

One *step* is one optimizer iteration. For L-BFGS that is ``torch.optim.LBFGS`` with
``max_iter=1`` and no line search, so every step costs exactly one function evaluation
(one forward and one backward pass), the same unit as an Adam step. The image returned is
the best evaluated iterate (the final one is evaluated with one extra forward pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .losses import evaluate_terms, term_layers
from .types import Objective
from .vgg import VGGModel

METHODS = ("lbfgs", "adam")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class OptimizerSettings:
    steps: int = 300
    method: str = "lbfgs"
    lr: float = 1.0
    history_size: int = 50  # L-BFGS pairs kept; 100 costs 2x the memory for the same loss (benchmarks/README)
    precision: str = "fp32"


def start_image(model: VGGModel, init: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """``(1 - noise)·init + noise·N`` in network space; N is a uniform 0..1 RGB image from ``seed``."""
    if noise == 0:
        return init.clone()
    generator = torch.Generator().manual_seed(seed)
    height, width = init.shape[-2:]
    random_image = torch.rand((1, height, width, 3), generator=generator)
    random_input = model.preprocessing.normalize(random_image).to(init.device, init.dtype)
    return (1 - noise) * init + noise * random_input


def optimize(
    model: VGGModel,
    objective: Objective,
    start: torch.Tensor,
    settings: OptimizerSettings,
    report: Callable[[int, int, float, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, dict[str, object]]:
    """Minimize the objective over the pixels of ``start`` ``[1, 3, H, W]``; returns (best image, history).

    ``report(step, total, loss, image)`` is called after every step with the current iterate;
    ``should_stop()`` is polled before every step.

    Works under a host's ``torch.inference_mode()``: targets and the start image are
    cloned into normal tensors before autograd sees them.
    """
    if settings.method not in METHODS:
        raise ValueError(f"optimizer must be one of {METHODS}, not {settings.method!r}")
    if settings.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {settings.precision!r}")
    layers = term_layers(objective)
    report = report or (lambda step, total, loss, image: None)
    should_stop = should_stop or (lambda: False)
    with torch.inference_mode(False), torch.enable_grad():
        device = start.device
        terms = [
            {**term, "targets": {k: v.to(device).clone() for k, v in term.get("targets", {}).items()}}
            for term in objective["terms"]
        ]
        image = start.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
        if settings.method == "lbfgs":
            optimizer: torch.optim.Optimizer = torch.optim.LBFGS(
                [image], lr=settings.lr, max_iter=1, history_size=settings.history_size,
                tolerance_grad=0.0, tolerance_change=0.0,
            )
        else:
            optimizer = torch.optim.Adam([image], lr=settings.lr)
        tracker = _Tracker(image.detach().clone())

        def network_features() -> dict[str, torch.Tensor]:
            """The network under bf16 autocast if asked; losses are always computed in fp32."""
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16"):
                features = model.features(image, layers)
            return {layer: value.float() for layer, value in features.items()}

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            parts = evaluate_terms(terms, network_features(), image)
            loss = sum(parts.values())
            loss.backward()
            tracker.record(image, parts)
            return loss

        steps = 0
        for step in range(1, settings.steps + 1):
            if should_stop():
                break
            optimizer.step(closure)
            steps = step
            report(step, settings.steps, tracker.history["loss"][-1], image.detach())
        if not should_stop():
            with torch.no_grad():
                tracker.record(image, evaluate_terms(terms, network_features(), image))
    history = {"method": settings.method, "steps": steps, **tracker.history}
    return tracker.best_image, history


class _Tracker:
    """Loss history per evaluated iterate, the best iterate so far, and the NaN/inf guard."""

    def __init__(self, image: torch.Tensor) -> None:
        self.history: dict[str, list[float]] = {"loss": []}
        self.best_loss = math.inf
        self.best_image = image

    def record(self, image: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        values = {kind: part.item() for kind, part in parts.items()}
        loss = sum(values.values())
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} at evaluation {len(self.history['loss'])} ({values}); "
                "lower the learning rate or the loss weights"
            )
        self.history["loss"].append(loss)
        for kind, value in values.items():
            self.history.setdefault(kind, []).append(value)
        if loss < self.best_loss:
            self.best_loss, self.best_image = loss, image.detach().clone()
