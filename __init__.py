"""ComfyUI loads the pack through this file: clone the repository into ComfyUI/custom_nodes/."""

from .nst_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nst_nodes.comfy import install

install()

WEB_DIRECTORY = "./nst_nodes/web"  # the editor extension that shows the metrics on their node

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
