from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "nst_nodes" / "samples"
GRAPHS = ROOT / "graphs"
sys.path.insert(0, str(Path(__file__).parent))
# Kernel choices timed during the tests stay out of the user's cache (worker processes inherit this).
os.environ.setdefault("NST_KERNELS_FILE", str(Path(tempfile.mkdtemp(prefix="nst-kernels-")) / "kernels.json"))


def small_overrides(name: str = "gatys", shrink: int = 6, steps: int = 3) -> dict[str, int]:
    """Overrides (``"node.input": value``) that make a shipped graph quick to run: every long side ``shrink``
    times smaller, every pixel count ``shrink``² times, ``steps`` optimizer steps. The defaults make
    graphs/gatys.json 64x48 px and 3 steps."""
    overrides = {}
    for node_id, node in json.loads((GRAPHS / f"{name}.json").read_text()).items():
        inputs = node["inputs"]
        if node["class_type"] == "NSTResizeImage":
            overrides[f"{node_id}.size"] = inputs["size"] // (shrink**2 if inputs["mode"] == "pixels" else shrink)
        elif node["class_type"] == "NSTOptimize":
            overrides[f"{node_id}.steps"] = steps
    return overrides


def small_graph(name: str = "gatys", shrink: int = 6, steps: int = 3) -> dict[str, Any]:
    """The prompt of a shipped graph with :func:`small_overrides` applied, for hosts that take no overrides."""
    prompt = json.loads((GRAPHS / f"{name}.json").read_text())
    for key, value in small_overrides(name, shrink, steps).items():
        node_id, input_name = key.split(".")
        prompt[node_id]["inputs"][input_name] = value
    return prompt


class RecordingReporter:
    """Counts what the runner did: ran / cached / partial per node, progress, previews and warnings.

    ``stop_at = (node_id, step, event)`` sets the run's stop event when that node reports that step,
    as a Ctrl-C arriving mid-run would.
    """

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.cached: list[str] = []
        self.partial: list[str] = []
        self.files: dict[str, list[Path]] = {}
        self.text: dict[str, list[str]] = {}
        self.steps: list[tuple[str, int, int]] = []
        self.previews: list[Any] = []
        self.warnings: list[str] = []
        self.stop_at: tuple[str, int, threading.Event] | None = None

    def node_done(
        self, node_id: str, class_type: str, seconds: float, outcome: str, files: list[Path], text: list[str]
    ) -> None:
        {"ran": self.ran, "cached": self.cached, "partial": self.partial}[outcome].append(node_id)
        self.files[node_id] = files
        self.text[node_id] = text

    def progress(
        self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any], preview: Any
    ) -> None:
        self.steps.append((node_id, step, total))
        if preview is not None:
            self.previews.append(preview)
        if self.stop_at is not None and self.stop_at[:2] == (node_id, step):
            self.stop_at[2].set()

    def warning(self, message: str) -> None:
        self.warnings.append(message)


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture(autouse=True)
def _run_from_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README runs the graphs from the project root; the tests do the same."""
    monkeypatch.chdir(ROOT)
