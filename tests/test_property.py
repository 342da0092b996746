"""Random graphs over the real node classes: validation always answers; valid random runs finish."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from graphrun import Folders, GraphFormatError, default_registry, load_graph, run, validate
from graphrun.validate import ValidationError
from nst_nodes import NODE_CLASS_MAPPINGS

REGISTRY = default_registry()
CLASSES = sorted(NODE_CLASS_MAPPINGS) + ["NoSuchNode"]
IDS = ["1", "2", "3", "4", "5", "17", "x", "²"]

constants = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["caffe", "max", "relu4_2", "lbfgs", "png", "../../x.png", "/etc/hostname", "nst-samples/tubingen.jpg"]
    ),
    st.lists(st.integers(), max_size=3),
)
links = st.lists(st.one_of(st.sampled_from(IDS), st.integers(0, 9)), min_size=2, max_size=2).map(
    lambda pair: [str(pair[0]), pair[1] if isinstance(pair[1], int) else 0]
)


@st.composite
def prompts(draw: Any) -> dict[str, Any]:
    prompt = {}
    for node_id in draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=6, unique=True)):
        class_type = draw(st.sampled_from(CLASSES))
        declared = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES() if class_type in NODE_CLASS_MAPPINGS else {}
        names = [*declared.get("required", {}), *declared.get("optional", {}), "bogus"]
        inputs = {name: draw(st.one_of(constants, links)) for name in names if draw(st.booleans())}
        prompt[node_id] = {"class_type": class_type, "inputs": inputs}
    return prompt


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts(), st.sampled_from([None, ["17"], ["1", "x"]]))
def test_validation_answers_every_random_graph_with_errors_never_an_exception(
    prompt: dict, outputs: list | None
) -> None:
    try:
        graph = load_graph(prompt, registry=REGISTRY)
    except GraphFormatError:
        return
    errors = validate(graph, REGISTRY, outputs)
    assert all(isinstance(error, ValidationError) and str(error) for error in errors)


@st.composite
def small_runs(draw: Any) -> dict[str, Any]:
    """Valid graphs by construction, with random sizes, layers, weights and optimizer settings."""
    layers = draw(
        st.lists(
            st.sampled_from(["relu1_1", "relu2_1", "conv3_1", "relu3_1", "pool2"]), min_size=1, max_size=3, unique=True
        )
    )
    return {
        "1": {
            "class_type": "NSTLoadImage",
            "inputs": {"image": draw(st.sampled_from(["nst-samples/tubingen.jpg", "nst-samples/starry_night.jpg"]))},
        },
        "2": {
            "class_type": "NSTResizeImage",
            "inputs": {"image": ["1", 0], "mode": "long_side", "size": draw(st.integers(8, 40))},
        },
        "3": {
            "class_type": "NSTVGG19",
            "inputs": {"weights": "caffe", "pooling": draw(st.sampled_from(["max", "avg"]))},
        },
        "4": {"class_type": "NSTNormalize", "inputs": {"image": ["2", 0], "model": ["3", 0]}},
        "5": {
            "class_type": "NSTFeatures",
            "inputs": {"model": ["3", 0], "tensor": ["4", 0], "layers": ",".join(layers)},
        },
        "6": {"class_type": "NSTStyleStatistics", "inputs": {"features": ["5", 0]}},
        "7": {"class_type": "NSTStyleLoss", "inputs": {"target": ["6", 0], "weight": draw(st.floats(0, 10))}},
        "8": {"class_type": "NSTTVLoss", "inputs": {"weight": draw(st.floats(0, 10))}},
        "9": {"class_type": "NSTCombineLosses", "inputs": {"loss_1": ["7", 0], "loss_2": ["8", 0]}},
        "10": {
            "class_type": "NSTOptimize",
            "inputs": {
                "model": ["3", 0],
                "objective": ["9", 0],
                "init": ["4", 0],
                "steps": draw(st.integers(1, 2)),
                "optimizer": draw(st.sampled_from(["lbfgs", "adam"])),
                "noise": draw(st.floats(0, 1)),
                "seed": draw(st.integers(0, 2**63 - 1)),
            },
        },
        "11": {"class_type": "NSTDenormalize", "inputs": {"tensor": ["10", 0]}},
        "12": {"class_type": "NSTPlotHistory", "inputs": {"history": ["10", 1], "width": 160, "height": 120}},
        "13": {
            "class_type": "NSTSaveImage",
            "inputs": {"image": ["11", 0], "filename_prefix": "r", "format": "png", "overwrite": False},
        },
    }


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_runs())
def test_tiny_random_runs_finish_and_save_their_result(prompt: dict) -> None:
    """Every drawn image reaches its deepest layer (8 px is enough for pool2), so any failure is a bug."""
    with tempfile.TemporaryDirectory() as folder:
        run(prompt, device="cpu", registry=REGISTRY, folders=Folders(output=Path(folder)))
        (saved,) = Path(folder).glob("r_*_.png")
        with Image.open(saved) as picture:
            assert max(picture.size) == prompt["2"]["inputs"]["size"]
