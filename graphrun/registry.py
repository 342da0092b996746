"""Which class runs a ``class_type``: node packs found through a Python entry point group.

A node pack is anything exposing ComfyUI's ``NODE_CLASS_MAPPINGS`` (and optionally
``NODE_DISPLAY_NAME_MAPPINGS``, and ``VALUE_TYPES``: type name -> the annotation its values
fit, see graphrun/values.py): register it in pyproject.toml as
``[project.entry-points."nst_nodes.nodes"] my_pack = "my_pack"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

from graphrun.values import PRIMITIVES

ENTRY_POINT_GROUP = "nst_nodes.nodes"


@dataclass
class Registry:
    classes: dict[str, type] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)
    value_types: dict[str, Any] = field(default_factory=lambda: dict(PRIMITIVES))

    def add_pack(self, pack: ModuleType | Any) -> None:
        """Add every class of a pack (a module or object with ``NODE_CLASS_MAPPINGS``)."""
        self.classes.update(pack.NODE_CLASS_MAPPINGS)
        self.display_names.update(getattr(pack, "NODE_DISPLAY_NAME_MAPPINGS", {}))
        self.value_types.update(getattr(pack, "VALUE_TYPES", {}))

    def display_name(self, class_type: str) -> str:
        return self.display_names.get(class_type, class_type)


def default_registry() -> Registry:
    """The registry of every installed node pack."""
    registry = Registry()
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        registry.add_pack(entry_point.load())
    return registry
