"""Neural style transfer (Gatys, Ecker & Bethge 2015) as typed nodes; a ComfyUI custom-node pack.

The mappings are loaded on first access, so that ``nst`` can set up the process (nst_nodes/tuning.py)
before anything imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "VALUE_TYPES"]


def __getattr__(name: str) -> Any:
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        from . import nodes

        return getattr(nodes, name)
    if name == "VALUE_TYPES":
        from .types import VALUE_TYPES

        return VALUE_TYPES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
