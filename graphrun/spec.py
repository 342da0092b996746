"""What the runner knows about a node class, read from its ComfyUI v1 metadata.

A node class is any class with ComfyUI's attributes (``INPUT_TYPES``, ``RETURN_TYPES``,
``FUNCTION``, ...). The runner also honours a few optional attributes that ComfyUI ignores:

- ``DISK_CACHE = False``: outputs are kept in memory only (they are not tensors and
  JSON-able values, or are cheaper to rebuild than to store).
- hidden input ``"GRAPHRUN_HOST"`` (:data:`HOST_INPUT`): the :class:`graphrun.host.RunnerHost`
  (device, folders, progress, stop). ComfyUI passes nothing for it, so nodes must accept ``None``.
- ``OUTPUT_TOOLTIPS`` (ComfyUI's): one tooltip per output.
- ComfyUI's own ``VALIDATE_INPUTS`` and ``IS_CHANGED`` class methods, with ComfyUI's meaning.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

HOST_INPUT = "GRAPHRUN_HOST"
"""The hidden input kind through which a node receives the engine's host."""
NodeClass = type
"""A class with ComfyUI's v1 attributes (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...): duck-typed, as ComfyUI reads it."""
ANY_TYPE = "*"
PRIMITIVE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
COMBO_TYPE = "COMBO"


@dataclass(frozen=True)
class InputSpec:
    """One declared input: its type (a type name, or ``COMBO`` with ``choices``) and options."""

    name: str
    type: str
    required: bool
    options: dict[str, Any]
    choices: tuple[Any, ...] = ()

    @property
    def default(self) -> Any:
        return self.options.get("default")

    @property
    def accepts_constant(self) -> bool:
        return self.type in PRIMITIVE_TYPES or self.type == COMBO_TYPE


@dataclass(frozen=True)
class NodeSpec:
    """The parsed metadata of one node class."""

    node_class: NodeClass
    inputs: dict[str, InputSpec]
    hidden: dict[str, str]
    return_types: tuple[str, ...]
    return_names: tuple[str, ...]
    output_node: bool
    disk_cache: bool
    declared: dict[str, Any]  # INPUT_TYPES() as the class returned it

    @property
    def function(self) -> str:
        metadata: Any = self.node_class  # duck-typed, as ComfyUI reads it
        return str(metadata.FUNCTION)


def _parse_input(name: str, declaration: Any, required: bool) -> InputSpec:
    kind = declaration[0] if isinstance(declaration, (tuple, list)) else declaration
    options = declaration[1] if isinstance(declaration, (tuple, list)) and len(declaration) > 1 else {}
    if isinstance(kind, (list, tuple)):
        return InputSpec(name, COMBO_TYPE, required, dict(options), tuple(kind))
    return InputSpec(name, str(kind), required, dict(options))


@cache
def node_spec(node_class: NodeClass) -> NodeSpec:
    metadata: Any = node_class  # duck-typed, as ComfyUI reads it
    declared = metadata.INPUT_TYPES()
    inputs: dict[str, InputSpec] = {}
    for section, required in (("required", True), ("optional", False)):
        for name, declaration in declared.get(section, {}).items():
            inputs[name] = _parse_input(name, declaration, required)
    return_types = tuple(metadata.RETURN_TYPES)
    return NodeSpec(
        node_class=node_class,
        inputs=inputs,
        hidden=dict(declared.get("hidden", {})),
        return_types=return_types,
        return_names=tuple(getattr(node_class, "RETURN_NAMES", None) or return_types),
        output_node=bool(getattr(node_class, "OUTPUT_NODE", False)),
        disk_cache=bool(getattr(node_class, "DISK_CACHE", True)),
        declared=declared,
    )


def hidden_inputs(spec: NodeSpec, by_kind: dict[str, Any]) -> dict[str, Any]:
    """The node's hidden input names with the values the host offers for their kinds (``PROMPT``, ...)."""
    return {name: by_kind[kind] for name, kind in spec.hidden.items() if kind in by_kind}


def call_hook(function: Any, constants: dict[str, Any], hidden: dict[str, Any] | None = None) -> Any:
    """Call a ComfyUI class hook (VALIDATE_INPUTS, IS_CHANGED) with the values its signature names.

    ``hidden`` maps hidden input names to values (e.g. ``context`` -> the host); a hook with
    ``**kwargs`` gets everything, as ComfyUI does.
    """
    parameters = inspect.signature(function).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    values = {**constants, **(hidden or {})}
    return function(**{k: v for k, v in values.items() if takes_all or k in parameters})
