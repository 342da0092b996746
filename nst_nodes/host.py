"""The host interface: what a node may ask of the application that runs it.

Two hosts run these nodes. The runner (``nst run``, the Python API) hands each node a
``graphrun.host.RunnerHost`` through the hidden input ``GRAPHRUN_HOST``. ComfyUI passes nothing
there; :func:`host_of` then finds ComfyUI's adapter (``nst_nodes/comfy.py``) when ComfyUI is
loaded in the process, however the pack was imported, and :class:`LocalHost` otherwise. A node
calls :func:`host_of` with its ``context`` and never asks which host it has; only ``comfy.py``
imports ComfyUI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

COMFYUI_MODULES = ("folder_paths", "comfy.model_management")
"""Modules ComfyUI imports before it loads any custom node: both present means this process is ComfyUI."""


@runtime_checkable
class Host(Protocol):
    @property
    def device(self) -> str:
        """Where tensors go: ``cpu``, ``cuda``, ..."""

    @property
    def input_folder(self) -> Path:
        """Relative image names are read from here."""

    @property
    def output_folder(self) -> Path:
        """File name prefixes are written under here."""

    @property
    def models_folder(self) -> Path:
        """Trained models (stylizers) are saved and loaded here."""

    @property
    def confined(self) -> bool:
        """True: paths must stay inside the two folders (a server's rule); False: plain paths."""

    def progress(self, step: int, total: int, preview: Callable[[], Any] | None = None, **info: Any) -> None:
        """Report that ``step`` of ``total`` is done; ``info`` holds figures such as ``loss``. ``preview`` makes
        the current image (a PIL image) only if called: hosts throttle previews, so it often is not."""

    def should_stop(self) -> bool:
        """Polled after every step. True: return the best result so far now. A host may instead
        raise its own interruption (ComfyUI does: an interrupted node returns nothing there)."""

    def resume_state(self, fits: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """What a stopped run of this same node kept with :meth:`keep_progress`, or None: go on from it.
        ``fits``: the node's check that it can (the host says when it cannot)."""

    def keep_progress(self, state: dict[str, Any], done: int, running: bool = False) -> None:
        """On a stop, before returning the best result so far (and now and then while ``running``, so that a
        killed process goes on too; the node may go on changing the state's tensors): keep ``state`` (tensors and
        JSON-able values) for a rerun to go on from; ``done`` says how far the node got. Hosts without a store
        ignore it."""


class LocalHost:
    """Plain Python use: plain paths from the current directory, no progress, never asked to stop."""

    confined = False

    @property
    def device(self) -> str:
        """The best device there is, as the runner's ``auto`` picks it: cuda, then mps, then cpu."""
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    @property
    def input_folder(self) -> Path:
        return Path(".")

    @property
    def output_folder(self) -> Path:
        return Path("output")

    @property
    def models_folder(self) -> Path:
        return Path("models")

    def progress(self, step: int, total: int, preview: Callable[[], Any] | None = None, **info: Any) -> None:
        return None

    def should_stop(self) -> bool:
        return False

    def resume_state(self, fits: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        return None

    def keep_progress(self, state: dict[str, Any], done: int, running: bool = False) -> None:
        return None


def comfyui_is_running() -> bool:
    return all(name in sys.modules for name in COMFYUI_MODULES)


def host_of(context: Host | None) -> Host:
    """The host a node runs under, found when it is asked for, so that progress, Cancel and the folder
    confinement never depend on how the pack was imported: the runner's ``context``; else ComfyUI's
    adapter in a ComfyUI process; else a :class:`LocalHost`."""
    if context is not None:
        return context
    if comfyui_is_running():
        from .comfy import comfy_host

        return comfy_host()
    return LocalHost()
