"""The nodes as ComfyUI meets them, through stand-ins for its modules (comfy_standins.py).

ComfyUI calls a node's function with its inputs by keyword plus the hidden PROMPT, EXTRA_PNGINFO
and UNIQUE_ID it knows (never GRAPHRUN_HOST), under torch.inference_mode(); it calls IS_CHANGED
with every input as a keyword (links as None), and VALIDATE_INPUTS with the constants its
signature names, skipping its own range and list checks for those.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import networkx as nx
import pytest
import torch
from comfy_standins import ComfyStandIns, InterruptProcessingException
from conftest import small_graph
from PIL import Image

from graphrun.graph import is_link
from nst_nodes import NODE_CLASS_MAPPINGS
from nst_nodes.comfy import comfy_host
from nst_nodes.files import SAMPLES_FOLDER, FileRuleError
from nst_nodes.host import LocalHost, host_of

HIDDEN_KINDS = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID")


@pytest.fixture
def comfy(tmp_path: Path) -> ComfyStandIns:
    standins = ComfyStandIns(tmp_path)
    standins.install()
    comfy_host.cache_clear()  # every test is a fresh ComfyUI process, with folders of its own
    yield standins
    standins.remove()
    comfy_host.cache_clear()


@pytest.fixture
def users_custom_node(comfy: ComfyStandIns, tmp_path: Path) -> ModuleType:
    """A custom node of a user's own that exposes the pip-installed pack (not through this repository's root
    __init__.py), loaded as ComfyUI loads custom nodes: by file, with ComfyUI's modules already imported."""
    path = tmp_path / "custom_nodes" / "my_nodes" / "__init__.py"
    path.parent.mkdir(parents=True)
    path.write_text("from nst_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS\n")
    spec = importlib.util.spec_from_file_location("my_nodes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hidden_values(node_class: type, node_id: str, prompt: dict, extra: dict | None) -> dict[str, Any]:
    values = {"PROMPT": prompt, "EXTRA_PNGINFO": extra, "UNIQUE_ID": node_id}
    return {name: values[kind] for name, kind in node_class.INPUT_TYPES().get("hidden", {}).items() if kind in values}


def call_hook(node_class: type, hook: str, inputs: dict, hidden: dict) -> Any:
    """A class hook called the way ComfyUI 0.3.64 calls it."""
    function = getattr(node_class, hook)
    every = {name: None if is_link(value) else value for name, value in inputs.items()} | hidden
    if hook == "IS_CHANGED":
        return function(**every)
    spec = inspect.getfullargspec(function)
    return function(**{k: v for k, v in every.items() if spec.varkw or k in spec.args})


def comfy_execute(
    prompt: dict, extra: dict | None = None, mappings: dict[str, type] = NODE_CLASS_MAPPINGS
) -> dict[str, Any]:
    """Validate, then run every node in dependency order, as ComfyUI does; returns each node's ui."""
    dag = nx.DiGraph()
    for node_id, node in prompt.items():
        dag.add_node(node_id)
        dag.add_edges_from((value[0], node_id) for value in node["inputs"].values() if is_link(value))
    outputs: dict[str, tuple] = {}
    uis: dict[str, Any] = {}
    with torch.inference_mode():
        for node_id in nx.topological_sort(dag):
            node = prompt[node_id]
            node_class = mappings[node["class_type"]]
            hidden = hidden_values(node_class, node_id, prompt, extra)
            if hasattr(node_class, "VALIDATE_INPUTS"):
                assert call_hook(node_class, "VALIDATE_INPUTS", node["inputs"], hidden) is True, node_id
            if hasattr(node_class, "IS_CHANGED"):
                changed = call_hook(node_class, "IS_CHANGED", node["inputs"], hidden)
                assert not (isinstance(changed, float) and math.isnan(changed)), node_id
            inputs = {
                name: outputs[value[0]][value[1]] if is_link(value) else value for name, value in node["inputs"].items()
            }
            returned = getattr(node_class(), node_class.FUNCTION)(**inputs, **hidden)
            outputs[node_id] = tuple(returned.get("result", ())) if isinstance(returned, dict) else returned
            uis[node_id] = returned.get("ui") if isinstance(returned, dict) else None
    return uis


def test_the_pack_loads_as_comfyui_loads_it_without_the_command_lines_engine() -> None:
    """ComfyUI imports the repository's folder as a package, where graphrun (the command line's engine) need not be
    installed: a node module importing it failed to load in a real ComfyUI (IMPORT FAILED), and every test passed."""
    root = Path(__file__).resolve().parent.parent
    code = (
        "import importlib.util, sys\n"
        "sys.modules['graphrun'] = None  # not installed\n"
        f"spec = importlib.util.spec_from_file_location('nst_pack', {str(root / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(root)!r}])\n"
        "pack = importlib.util.module_from_spec(spec)\n"
        "sys.modules['nst_pack'] = pack\n"
        "spec.loader.exec_module(pack)\n"
        "print(len(pack.NODE_CLASS_MAPPINGS), sorted({m for m in sys.modules if m.startswith('graphrun')}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split(" ", 1) == [str(len(NODE_CLASS_MAPPINGS)), "['graphrun']\n"]


def test_samples_from_an_older_pack_are_replaced_and_the_users_files_kept(comfy: ComfyStandIns) -> None:
    from nst_nodes.comfy import copy_samples

    samples = comfy.input / "nst-samples"
    samples.mkdir()
    (samples / "tubingen.jpg").write_bytes(b"an older, smaller copy")
    (samples / "my_own.png").write_bytes(b"mine")
    copy_samples(comfy.input)
    assert (samples / "tubingen.jpg").read_bytes() == (SAMPLES_FOLDER / "tubingen.jpg").read_bytes()
    assert (samples / "my_own.png").read_bytes() == b"mine"


def test_listing_the_nodes_in_comfyui_points_them_at_its_folders_and_brings_the_samples(comfy: ComfyStandIns) -> None:
    (comfy.input / "mine.png").write_bytes(b"")
    choices, options = NODE_CLASS_MAPPINGS["NSTLoadImage"].INPUT_TYPES()["required"]["image"]
    samples = sorted(p.name for p in SAMPLES_FOLDER.iterdir())
    assert sorted(p.name for p in (comfy.input / "nst-samples").iterdir()) == samples != []
    assert (comfy.input / "nst-samples-carphone.mp4").is_file()  # where ComfyUI's own Load Video looks
    assert choices == [
        "mine.png",
        *[f"nst-samples/{path.name}" for path in sorted(SAMPLES_FOLDER.glob("photo_*.jpg"))],
        "nst-samples/shipwreck.jpg",
        "nst-samples/starry_night.jpg",
        "nst-samples/tubingen.jpg",
        "nst-samples/tubingen_sky.png",
    ]
    assert options["image_upload"] is True and options["default"] in choices


def test_the_shipped_graph_runs_as_comfyui_runs_it_with_progress_previews_and_viewable_results(
    comfy: ComfyStandIns,
) -> None:
    workflow = {"nodes": [], "links": [], "version": 0.4}
    uis = comfy_execute(small_graph(), extra={"workflow": workflow})
    assert [(value, total) for value, total, _ in comfy.updates] == [(1, 3), (2, 3), (3, 3)]
    first, last = comfy.updates[0][2], comfy.updates[-1][2]
    for preview in (first, last):
        kind, picture, size = preview
        assert (kind, size) == ("JPEG", 512) and isinstance(picture, Image.Image) and picture.size == (64, 48)
    assert comfy.checks == 2  # the interruption was checked after every step but the last
    assert uis["17"] == {"images": [{"filename": "gatys.png", "subfolder": "", "type": "output"}]}
    assert uis["19"] == {"images": [{"filename": "gatys_history.png", "subfolder": "", "type": "output"}]}
    with Image.open(comfy.output / "gatys.png") as saved:  # where ComfyUI's /view looks for it
        assert json.loads(saved.text["workflow"]) == workflow and json.loads(saved.text["prompt"])["17"]
    with (
        Image.open(comfy.output / "gatys.png") as saved,
        Image.open(comfy.input / "nst-samples" / "tubingen.jpg") as photo,
    ):
        assert saved.size == (64, 48) and photo.size == (1024, 768)


def test_cancel_in_comfyui_stops_the_optimizer_within_one_step(comfy: ComfyStandIns) -> None:
    comfy.interrupt_after = 2
    with pytest.raises(InterruptProcessingException):
        comfy_execute(small_graph(steps=300))
    assert [value for value, _, _ in comfy.updates] == [1, 2]
    assert not (comfy.output / "gatys.png").exists()


def test_outside_comfyui_a_node_gets_a_local_host_on_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    host = host_of(None)
    assert isinstance(host, LocalHost) and not host.confined
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert host.device == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert host.device == "cpu"


def test_a_users_own_custom_node_gets_comfyuis_progress_bar(comfy: ComfyStandIns, users_custom_node) -> None:
    comfy_execute(small_graph(), mappings=users_custom_node.NODE_CLASS_MAPPINGS)
    assert [(value, total) for value, total, _ in comfy.updates] == [(1, 3), (2, 3), (3, 3)]
    assert (comfy.output / "gatys.png").is_file()


def test_a_users_own_custom_node_stops_at_comfyuis_cancel(comfy: ComfyStandIns, users_custom_node) -> None:
    comfy.interrupt_after = 2
    with pytest.raises(InterruptProcessingException):
        comfy_execute(small_graph(steps=300), mappings=users_custom_node.NODE_CLASS_MAPPINGS)
    assert [value for value, _, _ in comfy.updates] == [1, 2]


def test_a_users_own_custom_node_keeps_files_inside_comfyuis_output_folder(
    comfy: ComfyStandIns, users_custom_node, tmp_path: Path
) -> None:
    save = users_custom_node.NODE_CLASS_MAPPINGS["NSTSaveImage"]
    outcome = call_hook(save, "VALIDATE_INPUTS", {"filename_prefix": "../../x"}, {})
    assert isinstance(outcome, str) and "is outside the output folder" in outcome
    with pytest.raises(FileRuleError, match="is outside the output folder"):
        save().save(torch.zeros(1, 8, 8, 3), "../../x", overwrite=True)
    assert not list(tmp_path.parent.glob("x*.png")) and not list(comfy.output.glob("**/*.png"))


@pytest.mark.parametrize(
    ("class_type", "inputs", "message"),
    [
        ("NSTLoadImage", {"image": "../../../etc/hostname"}, "is outside the input folder"),
        ("NSTLoadImage", {"image": "/etc/hostname"}, "is outside the input folder"),
        ("NSTLoadImage", {"image": "pipe.png"}, "is a FIFO, not a file"),
        ("NSTVGG19", {"weights": "/etc/hostname", "pooling": "max"}, "is outside the input folder"),
        (
            "NSTSaveImage",
            {"image": ["16", 0], "filename_prefix": "../../x", "format": "png", "overwrite": True},
            "is outside the output folder",
        ),
        (
            "NSTSaveImage",
            {"image": ["16", 0], "filename_prefix": "/tmp/x", "format": "png", "overwrite": True},
            "is outside the output folder",
        ),
        (
            "NSTResizeImage",
            {"image": ["1", 0], "mode": "long_side", "size": 100000},
            "size: 100000 is outside 8..16384",
        ),
        ("NSTResizeImage", {"image": ["1", 0], "mode": "sideways", "size": 64}, "mode: 'sideways' is not one of"),
        (
            "NSTVGG19",
            {"weights": "caffe", "pooling": "max", "preprocessing": "odd"},
            "preprocessing: 'odd' is not one of",
        ),
        ("NSTStyleLoss", {"target": ["10", 0], "weight": float("nan")}, "weight: nan is not a finite number"),
        ("NSTTVLoss", {"weight": -1.0}, "weight: -1.0 is not a finite number between 0 and 1e+12"),
    ],
)
def test_comfyui_validation_refuses_paths_outside_the_folders_and_values_it_would_not_check(
    comfy: ComfyStandIns, class_type: str, inputs: dict, message: str
) -> None:
    os.mkfifo(comfy.input / "pipe.png")
    node_class = NODE_CLASS_MAPPINGS[class_type]
    outcome = call_hook(node_class, "VALIDATE_INPUTS", inputs, hidden_values(node_class, "1", {}, None))
    assert isinstance(outcome, str) and message in outcome


def test_every_is_changed_accepts_the_way_comfyui_calls_it_and_is_stable(comfy: ComfyStandIns) -> None:
    for node_id, node in small_graph().items():
        node_class = NODE_CLASS_MAPPINGS[node["class_type"]]
        if hasattr(node_class, "IS_CHANGED"):
            hidden = hidden_values(node_class, node_id, {}, None)
            first = call_hook(node_class, "IS_CHANGED", node["inputs"], hidden)
            assert first == call_hook(node_class, "IS_CHANGED", node["inputs"], hidden), node_id


def editor_value(value: float, options: dict) -> float:
    """What ComfyUI's editor (frontend 1.27) turns a FLOAT widget value into: rounded to its step's decimals."""
    precision = max(0, -math.floor(math.log10(options.get("step", 0.5))))
    step = options["round"] if options.get("round") else 10.0**-precision if precision else None
    return value if step is None else round(round(value / step) * step, precision)


def float_inputs() -> list[tuple[str, str, dict]]:
    found = []
    for class_type, node_class in NODE_CLASS_MAPPINGS.items():
        declared = node_class.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, declaration in declared.get(section, {}).items():
                if declaration[0] == "FLOAT":
                    found.append((class_type, name, declaration[1]))
    return found


def test_every_float_default_and_every_shipped_value_survives_the_editors_rounding() -> None:
    for class_type, name, options in float_inputs():
        assert editor_value(options["default"], options) == options["default"], (class_type, name)
    graphs = Path(__file__).resolve().parent.parent / "graphs"
    for path in graphs.glob("*.json"):
        for node in json.loads(path.read_text()).values():
            for name, value in node["inputs"].items():
                options = dict(float_inputs_of(node["class_type"]).get(name, {}))
                if options and not isinstance(value, list):  # a list is a link (Save Video's fps), no widget
                    assert editor_value(value, options) == value, (path.name, node["class_type"], name, value)


def float_inputs_of(class_type: str) -> dict[str, dict]:
    return {name: options for owner, name, options in float_inputs() if owner == class_type}


def test_weights_down_to_a_hundred_thousandth_survive_the_editor() -> None:
    options = float_inputs_of("NSTStyleLoss")["weight"]
    for weight in (1e-5, 3e-4, 0.001, 0.0125, 1.0, 10.0, 12345.6789):
        assert editor_value(weight, options) == weight


def test_seeds_stay_fixed_and_every_input_and_output_explains_itself() -> None:
    for class_type, node_class in NODE_CLASS_MAPPINGS.items():
        declared = node_class.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, declaration in declared.get(section, {}).items():
                options = declaration[1] if len(declaration) > 1 else {}
                assert options.get("tooltip"), (class_type, name)
                if declaration[0] == "INT" and name in ("seed", "noise_seed"):
                    assert options.get("control_after_generate") is False, (class_type, name)
        tooltips = getattr(node_class, "OUTPUT_TOOLTIPS", ())
        assert len(tooltips) == len(node_class.RETURN_TYPES) and all(tooltips), class_type
        assert node_class.DESCRIPTION, class_type
