"""A tiny node pack for testing the runner without any image code."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from graphrun import Registry


class Number:
    RETURN_TYPES = ("INT",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 1, "min": -100, "max": 100})}}

    def make(self, value: int) -> tuple[int]:
        return (value,)


class Add:
    RETURN_TYPES = ("INT",)
    FUNCTION = "add"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": ("INT", {"default": 0}), "b": ("INT", {"default": 0})}}

    def add(self, a: int, b: int) -> tuple[int]:
        return (a + b,)


class Vector:
    """Makes a tensor, so disk entries hold real tensors."""

    RETURN_TYPES = ("TENSOR", "STRING")
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "length": ("INT", {"default": 3, "min": 1, "max": 1000}),
                "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0}),
                "kind": (["ones", "arange"], {"default": "ones"}),
            }
        }

    def make(self, length: int, scale: float, kind: str) -> tuple[torch.Tensor, str]:
        values = torch.ones(length) if kind == "ones" else torch.arange(length, dtype=torch.float32)
        return values * scale, kind


class Total:
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "total"
    CATEGORY = "test"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"tensor": ("TENSOR",)}, "optional": {"offset": ("INT",)}}

    def total(self, tensor: torch.Tensor, offset: int = 0) -> dict[str, Any]:
        value = float(tensor.sum()) + offset
        return {"ui": {"total": [value]}, "result": (value,)}


class ReadText:
    RETURN_TYPES = ("STRING",)
    FUNCTION = "read"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"path": ("STRING", {"default": ""})}}

    @classmethod
    def IS_CHANGED(cls, path: str) -> str:
        return Path(path).read_text()

    def read(self, path: str) -> tuple[str]:
        return (Path(path).read_text(),)


class Show:
    RETURN_TYPES = ()
    FUNCTION = "show"
    CATEGORY = "test"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("*",)}}

    def show(self, value: Any) -> dict[str, Any]:
        return {"ui": {"text": [str(value)]}, "result": ()}


class Opaque:
    """Returns an object the disk cache must not store."""

    RETURN_TYPES = ("OBJECT",)
    FUNCTION = "make"
    CATEGORY = "test"
    DISK_CACHE = False

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"seed": ("INT", {"default": 0})}}

    def make(self, seed: int) -> tuple[object]:
        return (object(),)


class Countdown:
    """Counts ``steps`` steps, reporting each with a preview, and stops early when asked (returning the count
    so far)."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "count"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"start": ("INT",), "steps": ("INT", {"default": 5, "min": 1})},
            "hidden": {"context": "GRAPHRUN_HOST"},
        }

    def count(self, start: int, steps: int, context: Any = None) -> tuple[int]:
        done = 0
        for step in range(1, steps + 1):
            done = step
            context.progress(step, steps, preview=lambda step=step: f"picture at {step}", done=step)
            if step < steps and context.should_stop():
                break
        return (start + done,)


class Slow(Countdown):
    """A countdown that takes its time: 10 ms a step."""

    def count(self, start: int, steps: int, context: Any = None) -> tuple[int]:
        done = 0
        for step in range(1, steps + 1):
            time.sleep(0.01)
            done = step
            context.progress(step, steps, done=step)
            if step < steps and context.should_stop():
                break
        return (start + done,)


class Resumable(Countdown):
    """A countdown (1 ms a step) that keeps its count when stopped and goes on from a count a stopped run of it
    kept."""

    def count(self, start: int, steps: int, context: Any = None) -> tuple[int]:
        done = int((context.resume_state() or {"done": 0})["done"])
        for step in range(done + 1, steps + 1):
            time.sleep(0.001)
            done = step
            context.progress(step, steps)
            if step < steps and context.should_stop():
                context.keep_progress({"done": done, "tensor": torch.full((2,), float(done))}, done)
                break
        return (start + done,)


class Reciprocal:
    """Fails at run time (not at validation) for 0."""

    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "invert"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def invert(self, value: int) -> tuple[float]:
        return (1 / value,)


class Volatile:
    """IS_CHANGED says NaN: ComfyUI's "run me every time"."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 1})}}

    @classmethod
    def IS_CHANGED(cls, **_: Any) -> float:
        return float("nan")

    def make(self, value: int) -> tuple[int]:
        return (value,)


class WriteText:
    """An output node that writes a file into the output folder and reports it as ComfyUI does."""

    RETURN_TYPES = ()
    FUNCTION = "write"
    CATEGORY = "test"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"value": ("INT",), "name": ("STRING", {"default": "out.txt"})},
            "hidden": {"context": "GRAPHRUN_HOST"},
        }

    @classmethod
    def REPLACED_FILES(cls, name: str, context: Any) -> list[str]:
        return [] if name.startswith("numbered") else [str(context.output_folder / name)]

    def write(self, value: int, name: str, context: Any = None) -> dict[str, Any]:
        path = context.output_folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(value))
        return {"ui": {"images": [{"filename": path.name, "subfolder": "", "type": "output"}]}, "result": ()}


class Fail:
    RETURN_TYPES = ("INT",)
    FUNCTION = "fail"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT",)}}

    def fail(self, value: int) -> tuple[int]:
        raise RuntimeError("boom")


class Crashing:
    """Hooks that raise on odd input, as third-party hooks may."""

    RETURN_TYPES = ("INT",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"text": ("STRING", {"default": ""})}}

    @classmethod
    def VALIDATE_INPUTS(cls, text: str) -> bool:
        return int(text) >= 0

    @classmethod
    def IS_CHANGED(cls, text: str) -> str:
        raise OSError("no such thing")

    def make(self, text: str) -> tuple[int]:
        return (len(text),)


class Checked:
    RETURN_TYPES = ("INT",)
    FUNCTION = "make"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"even": ("INT",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, even: int) -> bool | str:
        return True if even % 2 == 0 else f"even: {even} is odd"

    def make(self, even: int) -> tuple[int]:
        return (even,)


NODE_CLASS_MAPPINGS = {
    cls.__name__: cls
    for cls in (
        Number,
        Add,
        Vector,
        Total,
        ReadText,
        Show,
        Opaque,
        Countdown,
        Slow,
        Resumable,
        Reciprocal,
        Fail,
        Checked,
        Volatile,
        WriteText,
        Crashing,
    )
}


VALUE_TYPES = {"TENSOR": torch.Tensor}


def registry() -> Registry:
    pack = Registry()
    pack.add_pack(sys.modules[__name__])
    return pack
