"""Each node input declared once: ComfyUI's V1 INPUT_TYPES and VALIDATE_INPUTS come from the declarations."""

from __future__ import annotations

import inspect

from nst_nodes.nodes.base import Node
from nst_nodes.nodes.schema import Choice, Float, Int, Link, Text, Validation


def no_comma(text: str) -> None:
    if "," in text:
        raise ValueError(f"note: {text!r} has a comma")


class Example(Node):
    INPUTS = (
        Link("image", type="IMAGE", tooltip="A picture."),
        Float("strength", default=0.5, min=0.0, max=1.0, step=0.01, tooltip="How much."),
        Choice("mode", choices=("a", "b"), default="a", optional=True, tooltip="Which way."),
        Int("count", default=2, min=1, max=9, tooltip="How many."),
        Text("note", default="", parse=no_comma, tooltip="Free text."),
    )
    HIDDEN = {"context": "GRAPHRUN_HOST"}

    @classmethod
    def validate(cls, count: int | None, context: object | None) -> Validation:
        return True if count != 7 or context is not None else "count: 7 needs a host"


def test_input_types_are_comfyuis_v1_shape_required_then_optional_in_declaration_order() -> None:
    assert Example.INPUT_TYPES() == {
        "required": {
            "image": ("IMAGE", {"tooltip": "A picture."}),
            "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "How much."}),
            "count": ("INT", {"default": 2, "min": 1, "max": 9, "tooltip": "How many."}),
            "note": ("STRING", {"default": "", "tooltip": "Free text."}),
        },
        "optional": {"mode": (["a", "b"], {"default": "a", "tooltip": "Which way."})},
        "hidden": {"context": "GRAPHRUN_HOST"},
    }


def test_validate_inputs_names_exactly_the_inputs_it_checks_as_comfyui_reads_a_signature() -> None:
    """ComfyUI skips its own checks of the inputs the hook names, and blames a failed hook on every one of them:
    so it names only what ComfyUI would miss (a FLOAT's NaN, a text's format) and what the node's validate reads."""
    spec = inspect.getfullargspec(Example.VALIDATE_INPUTS)
    assert spec.args == ["cls", "strength", "note", "count", "context"] and spec.varkw is None


def test_validate_inputs_checks_ranges_choices_and_text_then_the_nodes_own_rule() -> None:
    assert Example.VALIDATE_INPUTS(strength=float("nan")) == "strength: nan is not a finite number between 0 and 1"
    assert Example.VALIDATE_INPUTS(mode="c") is True  # a choice ComfyUI (and graphrun's validation) check themselves
    assert Example.VALIDATE_INPUTS(count=10) == "count: 10 is outside 1..9"
    assert Example.VALIDATE_INPUTS(note="a,b") == "note: 'a,b' has a comma"
    assert Example.VALIDATE_INPUTS(count=7) == "count: 7 needs a host"
    assert Example.VALIDATE_INPUTS(strength=1.0, mode="b", count=7, note="x", context=object()) is True
    assert Example.VALIDATE_INPUTS() is True  # linked inputs are checked when the node runs


def test_a_node_with_nothing_to_check_has_no_validate_inputs() -> None:
    class Plain(Node):
        INPUTS = (Link("image", type="IMAGE", tooltip="A picture."),)

    assert not hasattr(Plain, "VALIDATE_INPUTS")
