"""Check the planned part of a graph before anything runs, and report every problem at once."""

from __future__ import annotations

import difflib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphrun.graph import Graph
from graphrun.host import Folders, RunnerHost
from graphrun.plan import Plan, id_order
from graphrun.plan import plan as make_plan
from graphrun.registry import Registry
from graphrun.spec import (
    ANY_TYPE,
    COMBO_TYPE,
    HOST_INPUT,
    InputSpec,
    NodeSpec,
    call_hook,
    hidden_inputs,
    node_spec,
)


@dataclass(frozen=True)
class ValidationError:
    """One problem, located as precisely as possible (ComfyUI's error ``type`` names where they exist)."""

    kind: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None

    def __str__(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"node {self.node_id} ({self.class_type})")
        if self.input_name is not None:
            where.append(f"input '{self.input_name}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class GraphValidationError(ValueError):
    """Raised with every :class:`ValidationError` of a graph."""

    def __init__(self, errors: list[ValidationError], source: str = "<dict>") -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.report())

    def report(self, most: int = 40) -> str:
        lines = [f"{self.source}: {len(self.errors)} error(s), nothing was run:"]
        lines += [f"  - {error}" for error in self.errors[:most]]
        if len(self.errors) > most:
            lines.append(f"  ... and {len(self.errors) - most} more (--json lists them all)")
        return "\n".join(lines)

    def to_comfy(self) -> dict[str, Any]:
        """The report shaped like ComfyUI's /prompt validation answer (``error`` + ``node_errors``)."""
        node_errors: dict[str, Any] = {}
        for error in self.errors:
            if error.node_id is None:
                continue
            entry = node_errors.setdefault(
                error.node_id, {"errors": [], "dependent_outputs": [], "class_type": error.class_type}
            )
            entry["errors"].append(
                {
                    "type": error.kind,
                    "message": error.message,
                    "details": error.input_name or "",
                    "extra_info": {"input_name": error.input_name} if error.input_name else {},
                }
            )
        graph_level = [str(e) for e in self.errors if e.node_id is None]
        return {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "; ".join(graph_level),
                "extra_info": {},
            },
            "node_errors": node_errors,
        }


def _constant_error(spec: InputSpec, value: Any) -> tuple[str, str] | None:
    """(kind, message) when a constant does not fit its declared input, else None."""
    if not spec.accepts_constant:
        return "invalid_input_type", f"takes {spec.type}, which must come from a link, got the constant {value!r:.200}"
    if spec.type == COMBO_TYPE:
        if not isinstance(value, (str, int, float, bool)) or value not in spec.choices:
            return "value_not_in_list", f"{value!r:.200} is not one of {list(spec.choices)}"
        return None
    type_ok = {
        "INT": isinstance(value, int) and not isinstance(value, bool),
        "FLOAT": isinstance(value, (int, float)) and not isinstance(value, bool),
        "STRING": isinstance(value, str),
        "BOOLEAN": isinstance(value, bool),
    }[spec.type]
    if not type_ok:
        return "invalid_input_type", f"expects {spec.type}, got {type(value).__name__} {value!r:.200}"
    if spec.type == "FLOAT" and not math.isfinite(value):
        return "invalid_input_type", f"{value!r} is not a finite number"
    low, high = spec.options.get("min"), spec.options.get("max")
    if low is not None and value < low:
        return "value_smaller_than_min", f"{value!r:.60} is below the minimum {low}"
    if high is not None and value > high:
        return "value_bigger_than_max", f"{value!r:.60} is above the maximum {high}"
    return None


def _custom_validation(spec: NodeSpec, constants: dict[str, Any], hidden: dict[str, Any]) -> str | None:
    """Run the class's ComfyUI ``VALIDATE_INPUTS`` on the constants its signature names."""
    check = getattr(spec.node_class, "VALIDATE_INPUTS", None)
    if check is None:
        return None
    try:
        outcome = call_hook(check, constants, hidden)
    except Exception as error:  # a hook that crashes on odd input still gets its node named
        return f"its VALIDATE_INPUTS failed: {type(error).__name__}: {error}"
    return None if outcome is True else str(outcome)


def _node_errors(graph: Graph, node_id: str, registry: Registry, hidden: dict[str, Any]) -> list[ValidationError]:
    data = graph.node(node_id)
    class_type = data["class_type"]
    node_class = registry.classes.get(class_type)

    def error(kind: str, message: str, input_name: str | None = None) -> ValidationError:
        return ValidationError(kind, message, node_id, class_type, input_name)

    if node_class is None:
        close = difflib.get_close_matches(class_type, registry.classes, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        where = "no node of that name is loaded here (ComfyUI's own nodes run only in ComfyUI)"
        return [error("invalid_class_type", f"unknown class_type {class_type!r:.100}: {where}{hint}")]
    spec = node_spec(node_class)
    errors: list[ValidationError] = []
    given = {**data["constants"], **data["links"]}

    for name in given:
        if name not in spec.inputs:
            close = difflib.get_close_matches(name, spec.inputs, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; inputs are {sorted(spec.inputs)}"
            errors.append(error("unknown_input", f"{class_type} has no input {name!r:.100}{hint}", name))
    for name, input_spec in spec.inputs.items():
        if input_spec.required and name not in given:
            errors.append(error("required_input_missing", f"required input of type {input_spec.type} is missing", name))

    for name, (source_id, index) in data["links"].items():
        if name not in spec.inputs:
            continue
        if source_id not in graph.dag:
            errors.append(
                error("bad_linked_input", f"links to node {source_id!r:.100}, which is not in the graph", name)
            )
            continue
        source_class = registry.classes.get(graph.node(source_id)["class_type"])
        if source_class is None:
            continue  # reported on the source node itself
        source_types = node_spec(source_class).return_types
        if not 0 <= index < len(source_types):
            errors.append(
                error(
                    "bad_linked_input",
                    f"links to output {index} of node {source_id}, which has outputs 0..{len(source_types) - 1}",
                    name,
                )
            )
            continue
        wanted, offered = spec.inputs[name].type, source_types[index]
        if ANY_TYPE not in (wanted, offered) and wanted != offered:
            errors.append(
                error(
                    "return_type_mismatch",
                    f"expects {wanted} but output {index} of node {source_id} is {offered}",
                    name,
                )
            )

    for name, value in data["constants"].items():
        if name in spec.inputs:
            problem = _constant_error(spec.inputs[name], value)
            if problem:
                errors.append(error(*problem, input_name=name))

    if not errors:
        message = _custom_validation(spec, data["constants"], hidden_inputs(spec, hidden))
        if message:
            errors.append(error("custom_validation_failed", message))
    return errors


def check_plan(
    graph: Graph,
    registry: Registry,
    plan: Plan,
    folders: Folders | None = None,
    device: str = "cpu",
    part_of: Callable[[str], object] = lambda node_id: None,
) -> list[ValidationError]:
    """Every problem of the planned part of the graph, in a stable order.

    A ``VALIDATE_INPUTS`` that names the hidden host input gets a host with ``folders`` and ``device``.
    ``part_of``: the part of a joined graph a node belongs to (a batch's item); output nodes are checked for
    replacing the same files within a part (the batch compares its items by their keys).
    """
    hidden = {HOST_INPUT: RunnerHost(device, folders or Folders(), threading.Event())}
    errors = [
        ValidationError("invalid_recompute", f"node {node_id!r:.100} to recompute is not in the graph")
        for node_id in plan.unknown_recompute
    ]
    errors += [
        ValidationError("prompt_no_outputs", f"requested output node {node_id!r:.100} is not in the graph")
        for node_id in plan.unknown_outputs
    ]
    if plan.requested == ():
        errors.append(ValidationError("prompt_no_outputs", "no node was requested (an empty --only or outputs list)"))
    elif (
        not plan.targets
        and not plan.unknown_outputs
        and all(graph.node(node_id)["class_type"] in registry.classes for node_id in graph.dag)
    ):  # an unknown node may be the output: its own error says enough
        errors.append(ValidationError("prompt_no_outputs", "the graph has no output node (e.g. a save node)"))
    for cycle in plan.cycles:
        shown = ", ".join(cycle[:12]) + (f" and {len(cycle) - 12} more" if len(cycle) > 12 else "")
        message = f"is on a cycle among nodes {shown}: a node cannot depend on its own result"
        errors += [
            ValidationError("dependency_cycle", message, node_id, graph.node(node_id)["class_type"])
            for node_id in cycle
        ]
    errors += _writing_the_same_files(graph, registry, plan, part_of, hidden)
    needed = plan.needed
    for node_id in sorted(graph.dag, key=id_order):
        if node_id in needed:
            errors += _node_errors(graph, node_id, registry, hidden)
        elif graph.node(node_id)["class_type"] not in registry.classes:  # it might have been meant as an output
            errors += _node_errors(graph, node_id, registry, {})
    return errors


def _writing_the_same_files(
    graph: Graph, registry: Registry, plan: Plan, part_of: Callable[[str], object], hidden: dict[str, Any]
) -> list[ValidationError]:
    """Output nodes that would replace the same files: the later one would overwrite the earlier one's, and every
    rerun would find them changed. A node class says what it replaces with a classmethod ``REPLACED_FILES`` (its
    constant inputs, and the host where it names ``context``, as VALIDATE_INPUTS; none where it numbers its files).
    Two nodes of one class with the same constants and links write the same thing, which is no conflict."""
    errors, claimed = [], dict[tuple[object, str], str]()
    for node_id in sorted(plan.targets, key=id_order):
        data = graph.node(node_id)
        node_class = registry.classes.get(data["class_type"])
        if node_class is None or not hasattr(node_class, "REPLACED_FILES"):
            continue
        spec = node_spec(node_class)
        defaults = {name: declared.default for name, declared in spec.inputs.items() if "default" in declared.options}
        try:
            replaced = call_hook(node_class.REPLACED_FILES, defaults | data["constants"], hidden_inputs(spec, hidden))
        except Exception:  # a name from a link, or an input its own checks refuse
            continue
        for name in replaced:
            first = claimed.setdefault((part_of(node_id), str(name)), node_id)
            if first != node_id and _written_from(graph.node(first)) != _written_from(data):
                message = f"would replace {name}, which node {first} writes: give one of them another file name"
                errors.append(ValidationError("custom_validation_failed", message, node_id, data["class_type"]))
                break
    return errors


def _written_from(data: dict[str, Any]) -> tuple[Any, ...]:
    """What a node's output depends on within the graph: its class, constants and links."""
    return data["class_type"], data["constants"], data["links"]


def validate(
    graph: Graph,
    registry: Registry,
    outputs: list[str] | None = None,
    recompute: list[str] | None = None,
    folders: Folders | None = None,
) -> list[ValidationError]:
    """Every problem of the graph (or of the part ``outputs`` needs), in a stable order."""
    return check_plan(graph, registry, make_plan(graph, registry, outputs, recompute), folders)
