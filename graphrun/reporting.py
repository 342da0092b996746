"""What a run tells its caller: one reporter protocol, and one throttle for what is sent often."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from graphrun.host import Preview

RAN, CACHED, PARTIAL = "ran", "cached", "partial"


class Reporter(Protocol):
    """Receives what happens during a run (the CLI prints it; tests count it)."""

    def node_done(
        self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path], text: list[str]
    ) -> None:
        """``outcome``: ``ran``, ``cached`` or ``partial`` (ran on a stopped node's result; not cached);
        ``files``: what it wrote; ``text``: what it shows (ComfyUI's ``ui`` text)."""

    def progress(
        self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any], preview: Preview | None
    ) -> None:
        """A running node's progress; ``preview`` makes a picture of it when called."""

    def warning(self, message: str) -> None: ...


class SilentReporter:
    """Reports nothing; the base of reporters that only want some of the calls."""

    def node_done(
        self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path], text: list[str]
    ) -> None:
        return None

    def progress(
        self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any], preview: Preview | None
    ) -> None:
        return None

    def warning(self, message: str) -> None:
        return None


def is_reporter(value: object) -> bool:
    return all(callable(getattr(value, method, None)) for method in ("node_done", "progress", "warning"))


class Throttle:
    """At most one event per ``seconds``, and always the first and the last step (previews, progress messages)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = -float("inf")

    def due(self, step: int, total: int) -> bool:
        now = time.monotonic()
        if step >= total or now - self.last >= self.seconds:
            self.last = now
            return True
        return False
