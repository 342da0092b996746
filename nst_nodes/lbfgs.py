"""L-BFGS whose iterates stay inside a box: the valid pixel range of the image.

Why not ``torch.optim.LBFGS``: unconstrained, a few percent of the pixels drift outside
0..1 RGB, and clamping them when the image is saved destroys texture the style loss paid
for (measured at 256 px: clamping 2% of the pixels raised the style loss by 85%). Here every
iterate is projected onto the box, and pixels held at a bound by their gradient are left
out of the search direction (a projected quasi-Newton step, as in Kim, Sra & Dhillon 2010).

One :meth:`BoxLBFGS.step` is one iteration: it takes the quasi-Newton step and evaluates the
loss there (one forward and backward pass through the closure). If the loss did not fall
enough (Armijo) it backtracks along the projected path: a few times in the first steps, while
the curvature estimate still comes from the tiny first step, rarely later. Without that, the
first full step pushed 99% of the pixels onto the bounds at 256 px and the method cycled.
The curvature history lives in buffers allocated once (no per-step allocations that fragment
the heap), optionally in bfloat16 at half the memory.

The step's own vector work (the two-loop: a few hundred small operations) can run on fewer threads
than the closure: right after a backward pass, whose last convolution may leave its thread pool
holding a core, each parallel operation waited for the other core, and at 128² the two-loop took
16 ms on 2 threads against 2.2 ms on one (docs/performance.md). :func:`time_vector_work` times both
for the caller to choose.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

MAX_BACKTRACKS = 8
SUFFICIENT_DECREASE = 1e-4  # Armijo constant: accept any step that achieves this share of the predicted decrease
ROUNDING = 1e-6  # relative loss change below float32 summation noise: not a reason to backtrack
FIRST_STEP = 0.03
"""A gradient step (the first, or a restart) moves the pixel that moves most by this share of the box's width.
``torch.optim.LBFGS``'s length, ``1 / |g|_1``, moved a 256² image so little that the gradient's change over the
step drowned in float32 rounding: the next five steps crawled (the loss fell by 10 in 10 million each) until
the curvature pairs meant something, or overshot by 100x and backtracked. Measured on pastiche's objective,
the loss after 44 steps: 168 to 165 thousand at 128², 65 to 54 thousand at 256², 38 to 28 thousand at 512²
(0.01 and 0.1 did about as well; 0.001 and 0.003 overshot)."""


@contextmanager
def threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` within the block (nothing changes where it already is)."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != previous:
            torch.set_num_threads(previous)


class BoxLBFGS:
    """Minimizes over one tensor with ``lower <= x <= upper`` (bounds broadcast against ``x``).

    Not a ``torch.optim.Optimizer``: there is one tensor and no parameter groups, and building
    the first Optimizer of a process imports torch._dynamo (about 1 s, 800 modules)."""

    def __init__(
        self,
        x: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        lr: float = 1.0,
        history_size: int = 50,
        history_dtype: torch.dtype = torch.float32,
        vector_threads: int | None = None,
    ) -> None:
        """``vector_threads``: the threads of the step's own vector work (None: torch's, as the closure)."""
        self.x, self.lr = x, lr
        self.closure_threads = torch.get_num_threads()
        self.vector_threads = vector_threads or self.closure_threads
        self.lower, self.upper = lower, upper
        shape = (history_size, *self.x.shape)
        self.steps_taken = torch.empty(shape, dtype=history_dtype, device=self.x.device)  # s_i
        self.gradient_changes = torch.empty(shape, dtype=history_dtype, device=self.x.device)  # y_i
        self.inverse_curvatures: list[float] = []  # rho_i = 1 / (y_i . s_i), oldest first
        self.order: list[int] = []  # buffer slots, oldest first
        self.loss: float | None = None  # at the current x, whose gradient is in x.grad
        self.stood_still = False  # the last step found no lower loss than where it started

    @torch.no_grad()
    def step(self, closure: Callable[[], float]) -> float:
        """One iteration; ``closure()`` sets ``x.grad`` at the current ``x`` and returns the loss.

        Returns the loss at the new ``x``. Costs one evaluation, plus one per backtrack.
        """
        with threads(self.vector_threads):
            return self._step(closure)

    def _step(self, closure: Callable[[], float]) -> float:
        x = self.x
        if self.loss is None:
            self.loss = self._evaluate(closure)
        gradient = self._gradient()
        free = ~(((x <= self.lower) & (gradient > 0)) | ((x >= self.upper) & (gradient < 0)))
        projected_gradient = gradient * free
        direction = self._inverse_hessian_times(projected_gradient).neg_().mul_(free)
        slope = torch.vdot(direction.flatten(), gradient.flatten()).item()
        if not self.order or slope >= 0:
            # No curvature known yet, or the model points uphill: restart with a small
            # gradient step, as torch.optim.LBFGS does on its first iteration.
            self._forget()
            direction = projected_gradient.neg()
            slope = -torch.vdot(projected_gradient.flatten(), projected_gradient.flatten()).item()
            length = self._gradient_step_length(projected_gradient)
        else:
            length = 1.0
        length *= self.lr
        start = x.clone()
        for _ in range(MAX_BACKTRACKS):
            x.copy_(start).add_(direction, alpha=length).clamp_(self.lower, self.upper)
            loss = self._evaluate(closure)
            decrease = torch.vdot(gradient.flatten(), (x - start).flatten()).item()
            if loss <= self.loss + SUFFICIENT_DECREASE * decrease + ROUNDING * abs(self.loss):
                break
            # Minimizer of the parabola through loss(0), its slope and loss(length), kept in [0.1, 0.5]·length.
            curvature = loss - self.loss - slope * length
            shrink = -slope * length / (2 * curvature) if curvature > 0 else 0.5
            length *= min(max(shrink, 0.1), 0.5)
        else:
            self._forget()  # the model was useless this far out: start over from the gradient
        self._remember(x - start, self._gradient() - gradient)
        self.stood_still = loss >= self.loss  # the line search found no lower loss
        self.loss = loss
        return loss

    def objective_changed(self) -> None:
        """The closure now computes the loss otherwise (in another precision): the next step evaluates it here again
        before it compares a trial against it."""
        self.loss = None

    def state(self) -> dict[str, Any]:
        """What a later run needs, with ``x``, to go on exactly from here: the loss and gradient at ``x`` and the
        curvature pairs. Once the buffers are full, the buffers themselves, not a copy (at 2048² they hold 2.5 GB):
        the caller writes them out at once while this optimizer runs on, or keeps them once it has stopped. Until
        then, a copy of the slots in use (the first ones)."""
        grad = self.x.grad
        used = len(self.order)
        full = used == self.steps_taken.shape[0]
        return {
            "loss": self.loss,
            "gradient": grad if self.loss is not None else None,
            "steps_taken": self.steps_taken if full else self.steps_taken[:used].clone(),
            "gradient_changes": self.gradient_changes if full else self.gradient_changes[:used].clone(),
            "order": list(self.order),
            "inverse_curvatures": list(self.inverse_curvatures),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Go on from :meth:`state` (of a run with the same settings, at the ``x`` it was taken at). Full buffers
        on this device are taken over rather than copied: the state's owner lets them go."""
        for name in ("steps_taken", "gradient_changes"):
            buffer, kept = getattr(self, name), state[name]
            if kept.shape == buffer.shape and kept.dtype == buffer.dtype and kept.device == buffer.device:
                setattr(self, name, kept)
            else:
                buffer[: len(kept)] = kept.to(buffer.device)
        self.order = [int(slot) for slot in state["order"]]
        self.inverse_curvatures = [float(rho) for rho in state["inverse_curvatures"]]
        self.loss = state["loss"]
        if state["gradient"] is not None:
            self.x.grad = state["gradient"].to(self.x.device, self.x.dtype, copy=True)

    def _gradient_step_length(self, gradient: torch.Tensor) -> float:
        """At most 1; :data:`FIRST_STEP` of the box's width for the pixel that moves most (``1 / |g|_1`` in an
        unbounded box, as ``torch.optim.LBFGS``)."""
        width = float((self.upper - self.lower).max())
        if math.isfinite(width):
            return min(1.0, FIRST_STEP * width / max(gradient.abs().max().item(), 1e-30))
        return min(1.0, 1.0 / max(gradient.abs().sum().item(), 1e-30))

    def _evaluate(self, closure: Callable[[], float]) -> float:
        with torch.enable_grad(), threads(self.closure_threads):
            loss = float(closure())
        self._gradient()
        return loss

    def _gradient(self) -> torch.Tensor:
        """``x.grad``, which the closure must have set."""
        if self.x.grad is None:
            raise RuntimeError("BoxLBFGS: the closure must call backward() so that x.grad is set")
        return self.x.grad

    def _forget(self) -> None:
        self.order.clear()
        self.inverse_curvatures.clear()

    def _remember(self, step: torch.Tensor, gradient_change: torch.Tensor) -> None:
        """Keep the pair (as stored, possibly rounded) if it shows positive curvature; drop the oldest when full."""
        dtype = self.steps_taken.dtype
        step, gradient_change = step.to(dtype), gradient_change.to(dtype)
        curvature = torch.vdot(step.float().flatten(), gradient_change.float().flatten()).item()
        if curvature <= 1e-10:
            return
        if len(self.order) == self.steps_taken.shape[0]:
            slot = self.order.pop(0)
            self.inverse_curvatures.pop(0)
        else:
            slot = len(self.order)
        self.steps_taken[slot] = step
        self.gradient_changes[slot] = gradient_change
        self.order.append(slot)
        self.inverse_curvatures.append(1.0 / curvature)

    def _inverse_hessian_times(self, vector: torch.Tensor) -> torch.Tensor:
        """The two-loop recursion: the L-BFGS inverse Hessian estimate applied to ``vector``."""
        q = vector.clone()
        if not self.order:
            return q
        coefficients = []
        for slot, rho in zip(reversed(self.order), reversed(self.inverse_curvatures), strict=True):
            alpha = rho * torch.vdot(self.steps_taken[slot].float().flatten(), q.flatten()).item()
            q.add_(self.gradient_changes[slot], alpha=-alpha)
            coefficients.append(alpha)
        # Initial scale sᵀy / yᵀy of the newest pair, whose sᵀy is already known as 1 / rho.
        newest_y = self.gradient_changes[self.order[-1]].float().flatten()
        q.mul_(1.0 / (self.inverse_curvatures[-1] * torch.vdot(newest_y, newest_y).item()))
        for slot, rho, alpha in zip(self.order, self.inverse_curvatures, reversed(coefficients), strict=True):
            beta = rho * torch.vdot(self.gradient_changes[slot].float().flatten(), q.flatten()).item()
            q.add_(self.steps_taken[slot], alpha=alpha - beta)
        return q


def time_vector_work(
    x: torch.Tensor, history_dtype: torch.dtype, pairs: int, after: Callable[[], None], rounds: int = 3
) -> dict[int, float]:
    """Seconds of a two-loop over ``pairs`` curvature pairs shaped like ``x`` on one thread and on all of
    torch's, each timed right after ``after()`` (what precedes that work in a real step), the counts
    taking turns; the best of ``rounds`` each. The pairs are random: the optimization's own are untouched."""
    generator = torch.Generator(device=x.device).manual_seed(0)
    probe = BoxLBFGS(x.detach().clone(), x, x, history_size=pairs, history_dtype=history_dtype)
    for _ in range(pairs):
        step = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        probe._remember(step, step + 0.1)  # positive curvature: kept
    best: dict[int, float] = {1: math.inf, torch.get_num_threads(): math.inf}
    for _ in range(rounds):
        for count in best:
            after()
            with threads(count):
                started = time.perf_counter()
                probe._inverse_hessian_times(probe.x)
                best[count] = min(best[count], time.perf_counter() - started)
    return best
