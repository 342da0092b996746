"""Which class runs a ``class_type``: node packs found through a Python entry point group.

A node pack is anything exposing ComfyUI's ``NODE_CLASS_MAPPINGS`` (and optionally
``NODE_DISPLAY_NAME_MAPPINGS``, and ``VALUE_TYPES``: type name -> the annotation its values
fit, see graphrun/value_types.py): register it in pyproject.toml as
``[project.entry-points."graphrun.nodes"] my_pack = "my_pack"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

from graphrun.spec import NodeClass, node_spec
from graphrun.value_types import PRIMITIVES, conforms

ENTRY_POINT_GROUP = "graphrun.nodes"


@dataclass
class Registry:
    classes: dict[str, NodeClass] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)
    value_types: dict[str, Any] = field(default_factory=lambda: dict(PRIMITIVES))

    def add_pack(self, pack: ModuleType | Any) -> None:
        """Add every class of a pack (a module or object with ``NODE_CLASS_MAPPINGS``)."""
        self.classes.update(pack.NODE_CLASS_MAPPINGS)
        self.display_names.update(getattr(pack, "NODE_DISPLAY_NAME_MAPPINGS", {}))
        self.value_types.update(getattr(pack, "VALUE_TYPES", {}))

    def display_name(self, class_type: str) -> str:
        return self.display_names.get(class_type, class_type)

    def fits(self, kinds: tuple[str, ...], values: tuple[Any, ...]) -> bool:
        """Do ``values`` (a cached result's outputs) fit the declared output ``kinds``?"""
        if len(values) != len(kinds):
            return False
        return all(
            conforms(value, self.value_types[kind])
            for value, kind in zip(values, kinds, strict=True)
            if kind in self.value_types
        )


def default_registry() -> Registry:
    """The registry of every installed node pack."""
    registry = Registry()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        registry.add_pack(entry_point.load())
    return registry


def object_info(registry: Registry) -> dict[str, Any]:
    """ComfyUI's /object_info shape: one entry per class with its declared metadata."""
    info = {}
    for name, node_class in sorted(registry.classes.items()):
        spec = node_spec(node_class)
        declared = spec.declared
        info[name] = {
            "input": declared,
            "input_order": {section: list(declared.get(section, {})) for section in ("required", "optional")},
            "output": list(spec.return_types),
            "output_name": list(spec.return_names),
            "output_is_list": [False] * len(spec.return_types),
            "output_tooltips": list(getattr(node_class, "OUTPUT_TOOLTIPS", ())),
            "name": name,
            "display_name": registry.display_name(name),
            "description": getattr(node_class, "DESCRIPTION", ""),
            "category": getattr(node_class, "CATEGORY", ""),
            "output_node": spec.output_node,
            "python_module": node_class.__module__,
        }
    described: dict[str, Any] = json.loads(json.dumps(info, default=str))
    return described
