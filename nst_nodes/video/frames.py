"""A batch of frames optimized in order, each carried into the next (Ruder, Dosovitskiy & Brox 2016).

Frame ``i`` minimizes the graph's objective with its own content targets (and masks, where they
come per frame), from a start that depends on :class:`~nst_nodes.types.Temporal`: its content,
the previous result, or the previous result warped along the flow into this frame (where the
warp is unreliable, the content fills in). With a temporal weight, the warped previous result is
also a target where the warp is reliable. A scene cut starts fresh from the content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from ..optimize import Keep, OptimizerSettings, optimize
from ..types import ClipProgress, History, Objective, OptimizationProgress, Temporal, TemporalTerm, Term
from ..vgg import VGGModel
from .flow import is_cut, warp


def frame_objective(objective: Objective, index: int, count: int) -> Objective:
    """Frame ``index``'s objective: content targets and masks that come with a batch of ``count`` are
    sliced to that frame; a batch of one goes with every frame."""

    def one(value: torch.Tensor) -> torch.Tensor:
        return value[index : index + 1] if value.shape[0] == count and count > 1 else value

    terms: list[Term] = []
    for term in objective["terms"]:
        if term["kind"] == "content":
            terms.append({**term, "targets": {layer: one(value) for layer, value in term["targets"].items()}})
        elif term["kind"] == "style" and (mask := term["mask"]) is not None and mask.dim() == 3:
            terms.append({**term, "mask": mask[index] if mask.shape[0] == count else mask[0]})
        else:
            terms.append(term)
    return {**objective, "terms": terms}


def frame_start(
    index: int, init: torch.Tensor, previous: torch.Tensor | None, temporal: Temporal | None
) -> tuple[torch.Tensor, TemporalTerm | None]:
    """Frame ``index``'s start ``[1, 3, H, W]`` and its temporal term (None: none)."""
    content = init[index : index + 1]
    if temporal is None or previous is None or temporal["start"] == "content" and temporal["weight"] == 0:
        return content, None
    flow = temporal["flow"]
    if flow is None:
        return (previous if temporal["start"] == "previous" else content), None
    mask = flow["reliable"][index].to(content.device)
    if is_cut(mask):
        return content, None
    warped = warp(previous, flow["backward"][index])
    start = {"content": content, "previous": previous, "warped": mask * warped + (1 - mask) * content}
    term: TemporalTerm | None = None
    if temporal["weight"] > 0:
        term = {"kind": "temporal", "weight": temporal["weight"], "target": warped, "mask": mask}
    return start[temporal["start"]], term


def copied(history: dict[str, Any]) -> dict[str, Any]:
    """A history whose lists are its own (one kept, or one still growing, stays as it is)."""
    return {key: list(value) if isinstance(value, list) else value for key, value in history.items()}


def optimize_frames(
    model: VGGModel,
    objective: Objective,
    init: torch.Tensor,
    temporal: Temporal | None,
    settings: OptimizerSettings,
    report: Callable[[int, int, int, float, torch.Tensor], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: ClipProgress | None = None,
    keep: Keep[ClipProgress] | None = None,
) -> tuple[torch.Tensor, History, bool]:
    """Optimize every frame of ``init`` ``[N, 3, H, W]`` in order; returns the results (the frames done,
    the last one partial when stopped), their history and whether a stop cut the batch short.

    ``report(frame, step, total, loss, image)`` after every step of every frame. A stop, and the keeper's
    times while it runs (within a frame or between frames), hand ``keep`` the state to go on from: the frames
    done, and the frame under way; ``resume``, such a state of a run with the same arguments, goes on from it
    (see :func:`~nst_nodes.optimize.optimize`)."""
    count = init.shape[0]
    should_stop = should_stop or (lambda: False)
    results = [] if resume is None else [frame[None] for frame in resume["frames"].to(init.device, copy=True)]
    history: dict[str, Any] = {"frames": []} if resume is None else copied(resume["history"])
    steps, stopped = history.pop("steps", 0), False
    within = resume["current"] if resume is not None else None

    def kept(current: OptimizationProgress | None, finished: list[torch.Tensor]) -> ClipProgress:
        frames = torch.cat(finished).detach() if finished else init[:0].clone()
        return {"frames": frames, "history": {**copied(history), "steps": steps}, "current": current}

    kept_at_stop = False  # the frame under way handed its state to ``keep`` as it stopped

    def keep_within(current: Callable[[], OptimizationProgress], running: bool) -> None:
        nonlocal kept_at_stop
        assert keep is not None
        keep(lambda: kept(current(), results), running)
        kept_at_stop = kept_at_stop or not running

    for index in range(len(results), count):
        start, term = frame_start(index, init, results[-1] if results else None, temporal)
        goal = frame_objective(objective, index, count)
        if term is not None:
            goal = {**goal, "terms": [*goal["terms"], term]}

        def step(step: int, total: int, loss: float, image: torch.Tensor, frame: int = index) -> None:
            if report is not None:
                report(frame, step, total, loss, image)

        result, frame_history = optimize(
            model, goal, start, settings, step, should_stop, within, keep_within if keep is not None else None
        )
        within = None
        stopped_early = frame_history["steps"] < settings.steps
        if keep is not None and stopped_early and not kept_at_stop and results:  # the frames done at least
            keep(lambda: kept(None, results), False)
        results.append(result)
        evaluations = len(frame_history["loss"])
        before = sum(history["frames"])
        for key, value in frame_history.items():
            if isinstance(value, list):  # a term some frames lack (temporal) counts 0 there
                history.setdefault(key, [0.0] * before).extend(value)
            elif key != "steps":
                history[key] = value
        for key, value in history.items():
            if key != "frames" and isinstance(value, list) and len(value) < before + evaluations:
                value.extend([0.0] * (before + evaluations - len(value)))
        history["frames"].append(evaluations)
        steps += frame_history["steps"]
        if stopped_early:
            stopped = True  # the frames done are kept; the last one is the best so far
            break
        if index < count - 1:
            stopping = should_stop()
            if keep is not None:
                keep(lambda: kept(None, results), not stopping)
            if stopping:
                stopped = True
                break
    history["steps"] = steps
    return torch.cat(results), cast(History, history), stopped
