"""ComfyUI loads the pack through this file: clone the repository into ComfyUI/custom_nodes/.

Nothing happens on import: a node finds ComfyUI's host when it needs one (nst_nodes/host.py), so the pack
works the same when a custom node of one's own imports the pip-installed nst_nodes instead."""

if __package__:  # ComfyUI imports the repository's folder as a package
    from .nst_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # a test runner may import this file alone (a folder name that is no identifier): the installed pack
    from nst_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./nst_nodes/web"  # the editor extension that shows the metrics on their node

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
