"""Stand-ins for the declarations of ComfyUI's core video nodes (comfy_extras/nodes_video.py: names, inputs
and outputs only), so that the shipped video workflow converts and validates without ComfyUI."""

from __future__ import annotations

from typing import Any

from graphrun import Registry, default_registry


class LoadVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"file": (["nst-samples-carphone.mp4"], {"video_upload": True})}}


class GetVideoComponents:
    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"video": ("VIDEO",)}}


class CreateVideo:
    RETURN_TYPES = ("VIDEO",)
    FUNCTION = "create"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE",), "fps": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0})},
            "optional": {"audio": ("AUDIO",)},
        }


class SaveVideo:
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "video": ("VIDEO",),
                "filename_prefix": ("STRING", {"default": "video/ComfyUI"}),
                "format": (["auto", "mp4"],),
                "codec": (["auto", "h264"],),
            }
        }


def registry() -> Registry:
    """The installed packs and these stand-ins."""
    found = default_registry()
    found.classes.update({cls.__name__: cls for cls in (LoadVideo, GetVideoComponents, CreateVideo, SaveVideo)})
    return found
