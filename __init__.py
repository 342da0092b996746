"""ComfyUI entry point: clone this repository into ComfyUI/custom_nodes/ and the nodes load."""

from .nst_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
