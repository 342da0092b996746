"""Console reporting: one line per node, and a tqdm bar for nodes that report progress."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm


class ConsoleReporter:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def node_done(
        self, node_id: str, class_type: str, seconds: float, cached: bool, ui: dict[str, Any] | None
    ) -> None:
        self._close_bar()
        how = "cached" if cached else f"ran in {seconds:.2f} s"
        files = [str(Path(i.get("subfolder", "")) / i["filename"]) for i in (ui or {}).get("images", [])]
        print(f"[{node_id}] {class_type}: {how}{' -> ' + ', '.join(files) if files else ''}", file=self.stream)

    def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any]) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"[{node_id}] {class_type}", file=self.stream, leave=False)
        self.bar.n = step
        if info:
            self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in info.items()}, refresh=False)
        self.bar.refresh()

    def warning(self, message: str) -> None:
        self._close_bar()
        print(f"warning: {message}", file=self.stream)
