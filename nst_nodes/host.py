"""The host interface: what a node may ask of the application that runs it.

Two hosts run these nodes. The runner (``nst run``, the Python API) hands each node a
``graphrun.host.RunnerHost`` through the hidden input ``GRAPHRUN_HOST``. ComfyUI passes nothing
there; when ComfyUI loads the pack, ``nst_nodes/comfy.py`` makes its :class:`ComfyHost` the
process's host. Plain Python calls get :class:`LocalHost`. A node calls :func:`host_of` with
its ``context`` and never asks which host it has; only ``comfy.py`` imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Preview = Callable[[], Any]
"""Makes a preview (a PIL image) when the host wants one; hosts throttle, so it is often not called."""


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
    def confined(self) -> bool:
        """True: paths must stay inside the two folders (a server's rule); False: plain paths."""

    def progress(self, step: int, total: int, preview: Preview | None = None, **info: Any) -> None:
        """Report that ``step`` of ``total`` is done; ``info`` holds figures such as ``loss``."""

    def should_stop(self) -> bool:
        """Polled after every step. True: return the best result so far now. A host may instead
        raise its own interruption (ComfyUI does: an interrupted node returns nothing there)."""


class LocalHost:
    """Plain Python use: plain paths from the current directory, no progress, never asked to stop."""

    confined = False

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def input_folder(self) -> Path:
        return Path(".")

    @property
    def output_folder(self) -> Path:
        return Path("output")

    def progress(self, step: int, total: int, preview: Preview | None = None, **info: Any) -> None:
        return None

    def should_stop(self) -> bool:
        return False


_process_host: Host = LocalHost()


def use_host(host: Host) -> None:
    """Make ``host`` the one nodes get when their host passes no ``context`` (ComfyUI's entry point does)."""
    global _process_host
    _process_host = host


def host_of(context: Host | None) -> Host:
    """The host a node runs under: the runner's ``context``, else the process's host."""
    return context if context is not None else _process_host
