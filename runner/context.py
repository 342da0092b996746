"""What a running node may know about its surroundings: device, progress and interrupt."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEVICES = ("auto", "cpu", "cuda", "mps")

ProgressCallback = Callable[[int, int, dict[str, Any]], None]


class Interrupted(Exception):
    """The run was asked to stop; raised at the next progress report."""


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


def _ignore_progress(step: int, total: int, info: dict[str, Any]) -> None:
    return None


@dataclass
class ExecutionContext:
    """Handed to nodes through the hidden input ``NST_CONTEXT``; nodes read nothing global."""

    device: str = "cpu"
    on_progress: ProgressCallback = _ignore_progress
    interrupt: threading.Event = field(default_factory=threading.Event)

    @property
    def interrupted(self) -> bool:
        return self.interrupt.is_set()

    def progress(self, step: int, total: int, **info: Any) -> None:
        """Report progress; raises :class:`Interrupted` once an interrupt was requested."""
        self.on_progress(step, total, info)
        if self.interrupted:
            raise Interrupted(f"interrupted at step {step} of {total}")
