from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "graphs" / "images"
sys.path.insert(0, str(Path(__file__).parent))


class RecordingReporter:
    """Counts what the runner did: ran / cached per node, progress and warnings."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.cached: list[str] = []
        self.steps: list[tuple[str, int, int]] = []
        self.warnings: list[str] = []

    def node_done(self, node_id: str, class_type: str, seconds: float, cached: bool, ui: dict | None) -> None:
        (self.cached if cached else self.ran).append(node_id)

    def progress(self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any]) -> None:
        self.steps.append((node_id, step, total))

    def warning(self, message: str) -> None:
        self.warnings.append(message)


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def images() -> Path:
    return IMAGES


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shipped graphs name their images relative to the project root, as the README runs them."""
    monkeypatch.chdir(ROOT)
