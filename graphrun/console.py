"""Console reporting: one line per node, a tqdm bar for nodes that report progress, previews to a file."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from graphrun.batch.report import BatchReporter, ItemResult
from graphrun.host import Preview
from graphrun.reporting import Throttle


class ConsoleReporter:
    """Prints what a run does (nothing with ``quiet``); with ``preview_path``, writes the running
    node's preview there.

    The preview file is replaced atomically at most every ``preview_seconds`` (and at a node's
    last step), so a viewer watching it never sees half a file. A console that goes away
    (a closed pipe, a closed terminal) silences the reporter, never the run.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        preview_path: Path | None = None,
        preview_seconds: float = 1.0,
        quiet: bool = False,
    ) -> None:
        self.stream = None if quiet else (stream or sys.stderr)
        self.bar: tqdm[Any] | None = None
        self.preview_path = preview_path
        self.preview_throttle = Throttle(preview_seconds)
        self.last_step: dict[str, tuple[int, int]] = {}

    def _write(self, show: Callable[[TextIO], None]) -> None:
        if self.stream is None:
            return
        try:
            show(self.stream)
        except (OSError, ValueError):  # the console is gone: keep working, silently
            self.stream, self.bar = None, None

    def _close_bar(self) -> None:
        if self.bar is not None:
            bar, self.bar = self.bar, None
            self._write(lambda stream: bar.close())

    def node_done(
        self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path], text: list[str]
    ) -> None:
        self._close_bar()
        step, total = self.last_step.get(node_id, (0, 0))
        if outcome == "cached":
            how = "cached"
        elif outcome == "partial" and step < total:
            how = f"stopped early at step {step} of {total} after {seconds:.2f} s (partial result, not cached)"
        elif outcome == "partial":  # every step, on a stopped node's result
            how = f"ran in {seconds:.2f} s on a partial result (not cached)"
        else:
            how = f"ran in {seconds:.2f} s"
        written = listed_files(files)
        shown = "".join(f"\n    {line}" for line in text)
        self._write(lambda stream: print(f"[{node_id}] {class_type}: {how}{written}{shown}", file=stream, flush=True))

    def progress(
        self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any], preview: Preview | None
    ) -> None:
        self.last_step[node_id] = (step, total)
        self._write(lambda stream: self._update_bar(stream, node_id, class_type, step, total, info))
        if preview is not None and self.preview_path is not None and self.preview_throttle.due(step, total):
            self._write_preview(preview)

    def _update_bar(
        self, stream: TextIO, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any]
    ) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"[{node_id}] {class_type}", file=stream, leave=False)
        self.bar.n = step
        if info:
            self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in info.items()}, refresh=False)
        self.bar.refresh()

    def _write_preview(self, preview: Preview) -> None:
        path = self.preview_path
        assert path is not None
        temporary = path.with_name(f".{path.stem}.writing{path.suffix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            preview().save(temporary)
            os.replace(temporary, path)
        except (OSError, ValueError) as error:
            self.warning(f"cannot write the preview to {path} ({error}); previews are off for this run")
            self.preview_path = None

    def warning(self, message: str) -> None:
        self._close_bar()
        self._write(lambda stream: print(f"warning: {message}", file=stream, flush=True))


class ConsoleBatchReporter(BatchReporter):
    """Prints a batch: a line per finished item, and every few seconds what is running."""

    def __init__(self, total: int, stream: TextIO | None = None, quiet: bool = False, every: float = 5.0) -> None:
        self.total = total
        self.stream = None if quiet else (stream or sys.stderr)
        self.finished = 0
        self.every = every
        self.last_shown = time.monotonic()
        self.running: dict[str, str] = {}
        self.warned: set[str] = set()
        self.lock = threading.Lock()  # progress arrives on Dask's event-loop thread, items on the caller's

    def _print(self, text: str) -> None:
        if self.stream is None:
            return
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):
            self.stream = None

    def item_done(self, result: ItemResult) -> None:
        self.finished += 1
        prefix = f"{result.item.index}/"
        with self.lock:
            self.running = {node: shown for node, shown in self.running.items() if not node.startswith(prefix)}
        how = f"{result.outcome} at {result.seconds:.1f} s"
        if result.error:
            how += f": {result.error}"
        self._print(f"[{self.finished}/{self.total}] {result.item.label}: {how}{listed_files(result.files)}")

    def progress(
        self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any], preview: Preview | None
    ) -> None:
        with self.lock:
            self.running[node_id] = f"{node_id} {class_type} {step}/{total}"
            if step >= total:
                self.running.pop(node_id, None)
            now = time.monotonic()
            shown = ", ".join(self.running.values()) if now - self.last_shown >= self.every else ""
            if shown:
                self.last_shown = now
        if shown:
            self._print(f"    running: {shown}")

    def warning(self, message: str) -> None:
        """Each once: the client and a worker may both find the same thing (an output file gone)."""
        with self.lock:
            if message in self.warned:
                return
            self.warned.add(message)
        self._print(f"warning: {message}")


def listed_files(files: list[Path], shown: int = 3) -> str:
    """`` -> a, b, c``; beyond ``shown`` files (a clip's frames) the first and how many more."""
    if len(files) > shown:
        return f" -> {files[0]} and {len(files) - 1} more"
    return f" -> {', '.join(str(path) for path in files)}" if files else ""


def counted(number: int, noun: str) -> str:
    """``1 file``, ``2 files``, ``3 entries``: a count and its noun, as a person writes them."""
    if number == 1:
        return f"1 {noun}"
    return f"{number} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"
