from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "nst_nodes" / "samples"
GRAPHS = ROOT / "graphs"
sys.path.insert(0, str(Path(__file__).parent))
# Kernel choices timed during the tests stay out of the user's cache (worker processes inherit this).
os.environ.setdefault("NST_KERNELS_FILE", str(Path(tempfile.mkdtemp(prefix="nst-kernels-")) / "kernels.json"))


DEVICES = ("cpu", "cuda")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the numerical tests (those that take the device fixture, marked on_device) run: cpu "
        "(default) or cuda; select them alone with -m on_device",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "on_device: the test runs on --device (it takes the device fixture)")
    if config.getoption("--device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise pytest.UsageError(f"--device cuda: torch {torch.__version__} ({build}) sees no CUDA device")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.on_device)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    """The device of ``--device``: the numerical tests take it and run there (cpu unless asked)."""
    import torch

    return torch.device(request.config.getoption("--device"))


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


def save_untrained_stylizer(models: Path) -> Path:
    """An untrained stylizer where graphs/fast.json saves its own (``nst/starry_night.safetensors`` in the
    models folder), for the graphs and workflows that load that one."""
    from nst_nodes.fast.network import StylizerNetwork
    from nst_nodes.fast.store import stylizer_bytes

    saved = models / "nst" / "starry_night.safetensors"
    saved.parent.mkdir(parents=True, exist_ok=True)
    training = {
        "model": "",
        "steps": 0,
        "best_step": 0,
        "loss": 0.0,
        "size": 32,
        "batch": 1,
        "precision": "fp32",
        "seconds": 0.0,
    }
    stylizer = {"width": 4, "blocks": 1, "weights": StylizerNetwork(4, 1).state_dict(), "training": training}
    saved.write_bytes(stylizer_bytes(stylizer))  # type: ignore[arg-type]
    return saved


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
