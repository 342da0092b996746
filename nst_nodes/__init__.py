"""Neural style transfer (Gatys, Ecker & Bethge 2015) as typed nodes; a ComfyUI custom-node pack."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .types import VALUE_TYPES

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "VALUE_TYPES"]
