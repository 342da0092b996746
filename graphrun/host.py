"""The runner as the host of the nodes it runs: device, folders, progress with previews, and stop.

A node that declares the hidden input ``"GRAPHRUN_HOST"`` (``graphrun.spec.HOST_INPUT``) receives a
:class:`RunnerHost` (the class hooks ``VALIDATE_INPUTS`` and ``IS_CHANGED`` receive it too when
they name it). ComfyUI passes nothing for that input; a node pack that also runs in ComfyUI offers
its nodes the same interface through its own adapter there.

Stopping is one path: ``should_stop()`` answers True once the user asked to stop (Ctrl-C,
SIGTERM, an API caller's event). A node that sees it returns the best result it has; the
runner marks that result partial, lets it flow to the output nodes, caches none of it, and
then reports the run as interrupted. A node that can go on from where it stopped keeps its
state with ``keep_progress`` first; a rerun of the same node gets it from ``resume_state``
(graphrun/cache/progress.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_HELP = "where the nodes compute (default auto: a GPU where there is one, else the CPU)"

Preview = Callable[[], Any]
"""Makes a preview picture (an object with ``save(path)``) when a reporter wants one."""

ProgressSink = Callable[[int, int, dict[str, Any], Preview | None], None]


class ProgressStore(Protocol):
    """Where a node's progress is kept between runs (``graphrun.cache.progress.KeptProgress``)."""

    def load(self, fits: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any], done: int, running: bool = False) -> None: ...


def resolve_device(name: str) -> str:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must be available."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.split(":")[0] not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but torch sees no MPS device")
    return name


@dataclass(frozen=True)
class Folders:
    """Where relative file names point: inputs are read from ``input``, outputs written under ``output``,
    trained models saved and loaded in ``models``.

    ``confined``: names must stay inside these folders (no absolute paths, no ``..`` out),
    as a server must insist; the CLI's default is plain paths.
    """

    input: Path = Path(".")
    output: Path = Path("output")
    confined: bool = False
    models: Path = Path("models")

    def __post_init__(self) -> None:
        for name in ("input", "output", "models"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser())

    def resolved(self) -> Folders:
        """The same folders as absolute paths, for processes that start elsewhere."""
        return Folders(self.input.resolve(), self.output.resolve(), self.confined, self.models.resolve())


class RunnerHost:
    """What a running node may ask of the runner; one per node execution."""

    def __init__(
        self,
        device: str,
        folders: Folders,
        stop: threading.Event,
        on_progress: ProgressSink | None = None,
        kept: ProgressStore | None = None,
    ) -> None:
        self.device = device
        self.folders = folders
        self._stop = stop
        self._on_progress = on_progress
        self._kept = kept
        self.stopped_early = False  # the node saw a stop request: what it returns is partial

    @property
    def input_folder(self) -> Path:
        return self.folders.input

    @property
    def output_folder(self) -> Path:
        return self.folders.output

    @property
    def models_folder(self) -> Path:
        return self.folders.models

    @property
    def confined(self) -> bool:
        return self.folders.confined

    def progress(self, step: int, total: int, preview: Preview | None = None, **info: Any) -> None:
        """Report progress; ``preview`` is called only if the user watches (``run --preview``)."""
        if self._on_progress is not None:
            self._on_progress(step, total, info, preview)

    def should_stop(self) -> bool:
        """True once a stop was requested: return the best result so far, now."""
        if self._stop.is_set():
            self.stopped_early = True
        return self.stopped_early

    def resume_state(self, fits: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The state a stopped run of this same node (the same inputs, settings and code) kept, or None:
        go on from it, to the same result as a run that never stopped. ``fits``: the node's check that it
        can (a state kept on another machine may not)."""
        return self._kept.load(fits) if self._kept is not None else None

    def keep_progress(self, state: dict[str, Any], done: int, running: bool = False) -> None:
        """Keep this node's state as it stops, or now and then while it runs (``running``: it goes on changing
        the state's tensors, so they are written out at once, to disk only), for a rerun to go on from (tensors
        and JSON-able values); ``done`` says how far it got: progress kept that got as far or further stays.
        A run that completes the node drops it."""
        if self._kept is not None:
            self._kept.save(state, done, running)
