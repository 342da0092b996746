"""Each node input declared once (type, default, range or choices, tooltip); ComfyUI's V1 attributes derived.

One object per input, as ComfyUI V3's ``io.Schema`` declares them (``io.Float.Input("weight", default=...,
min=..., max=..., tooltip=...)``), so that moving to V3 is mechanical. From a node's inputs come its
``INPUT_TYPES`` (required, then optional, in declaration order: editor workflows store widget values in that
order) and its ``VALIDATE_INPUTS``. That hook checks ranges and choices itself because ComfyUI skips its own
checks of every input the hook names, and lets NaN through a FLOAT's range.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any

from ..files import file_names, image_names
from ..host import host_of

Validation = bool | str
"""ComfyUI's VALIDATE_INPUTS convention: True, or the error message."""


@dataclass(frozen=True)
class Input:
    """An input of a node; ``optional`` ones may be left out (or unlinked)."""

    name: str
    _: KW_ONLY
    tooltip: str
    optional: bool = False

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def problem(self, value: Any) -> str | None:
        """What is wrong with a constant value (None: nothing, or not checked here)."""
        return None

    @property
    def checked(self) -> bool:
        """Whether VALIDATE_INPUTS must check it: what ComfyUI's own checks miss (NaN, a text's format). ComfyUI
        checks INT ranges and choices itself, unless the hook names the input (a node's ``validate`` does)."""
        return False


@dataclass(frozen=True, kw_only=True)
class Link(Input):
    """An input that takes another node's output of ``type`` (an image, features, a loss...)."""

    type: str

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        return self.type, {"tooltip": self.tooltip}


@dataclass(frozen=True, kw_only=True)
class Float(Input):
    default: float
    min: float
    max: float
    step: float  # the editor also rounds the value to this step's decimals

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        return "FLOAT", {
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "step": self.step,
            "tooltip": self.tooltip,
        }

    def problem(self, value: float | None) -> str | None:
        if value is None or (math.isfinite(value) and self.min <= value <= self.max):
            return None
        return f"{self.name}: {value} is not a finite number between {self.min:g} and {self.max:g}"

    @property
    def checked(self) -> bool:
        return True


@dataclass(frozen=True, kw_only=True)
class Int(Input):
    default: int
    min: int
    max: int
    control_after_generate: bool | None = None  # False: the editor keeps the value (e.g. a seed) between runs

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        options: dict[str, Any] = {"default": self.default, "min": self.min, "max": self.max}
        if self.control_after_generate is not None:
            options["control_after_generate"] = self.control_after_generate
        return "INT", {**options, "tooltip": self.tooltip}

    def problem(self, value: int | None) -> str | None:
        if value is None or self.min <= value <= self.max:
            return None
        return f"{self.name}: {value} is outside {self.min}..{self.max}"


@dataclass(frozen=True, kw_only=True)
class Choice(Input):
    """A list widget (ComfyUI's COMBO)."""

    choices: tuple[str, ...]
    default: str

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        return list(self.choices), {"default": self.default, "tooltip": self.tooltip}

    def problem(self, value: str | None) -> str | None:
        if value is None or value in self.choices:
            return None
        return f"{self.name}: {value!r} is not one of {list(self.choices)}"


@dataclass(frozen=True, kw_only=True)
class Text(Input):
    """A text widget; ``parse`` (raising ValueError with the message) checks it, when given."""

    default: str = ""
    parse: Callable[[str], Any] | None = None

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        return "STRING", {"default": self.default, "tooltip": self.tooltip}

    def problem(self, value: str | None) -> str | None:
        if value is None or self.parse is None:
            return None
        try:
            self.parse(value)
        except ValueError as error:
            return str(error)
        return None

    @property
    def checked(self) -> bool:
        return self.parse is not None


@dataclass(frozen=True, kw_only=True)
class Boolean(Input):
    default: bool

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        return "BOOLEAN", {"default": self.default, "tooltip": self.tooltip}


@dataclass(frozen=True, kw_only=True)
class ImageFile(Input):
    """An image file of the input folder: under a server (a confined host) the list of its images with an upload
    button, as ComfyUI's own Load Image offers; elsewhere a path. The node checks the file itself."""

    default: str
    path_tooltip: str  # the tooltip where it is a path

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        host = host_of(None)
        kind: Any = image_names(host.input_folder) if host.confined else "STRING"
        tooltip = self.tooltip if host.confined else self.path_tooltip
        return kind, {"default": self.default, "image_upload": True, "tooltip": tooltip}


@dataclass(frozen=True, kw_only=True)
class ModelFile(Input):
    """A file of the models folder with ``extension``: under a server the list of those there; elsewhere a path.
    The node checks the file itself."""

    extension: str
    path_tooltip: str  # the tooltip where it is a path

    def declaration(self) -> tuple[Any, dict[str, Any]]:
        host = host_of(None)
        if host.confined:
            return file_names(host.models_folder, (self.extension,)), {"tooltip": self.tooltip}
        return "STRING", {"default": "", "tooltip": self.path_tooltip}


def input_types(inputs: tuple[Input, ...], hidden: dict[str, str]) -> dict[str, Any]:
    """ComfyUI's V1 INPUT_TYPES: required, then optional inputs, in declaration order; then the hidden ones."""
    sections: dict[str, Any] = {}
    for section, optional in (("required", False), ("optional", True)):
        declared = {item.name: item.declaration() for item in inputs if item.optional == optional}
        if declared:
            sections[section] = declared
    if hidden:
        sections["hidden"] = dict(hidden)
    return sections


def validate_inputs(inputs: tuple[Input, ...], more: Callable[..., Validation] | None) -> classmethod | None:
    """ComfyUI's VALIDATE_INPUTS for ``inputs``: each checked input's range or choices, then ``more`` (checks of
    files, or of inputs that depend on each other) with the inputs its signature names; None: nothing to check.

    ComfyUI and the runner pass a hook the values its signature names, so the hook's signature lists exactly
    the checked inputs and those of ``more`` (a ``**kwargs`` would make ComfyUI skip its checks of links too)."""
    more_names = [] if more is None else list(inspect.signature(more).parameters)
    names = list(dict.fromkeys([item.name for item in inputs if item.checked] + more_names))
    if not names:
        return None
    declared = {item.name: item for item in inputs}

    def VALIDATE_INPUTS(cls: type, /, **values: Any) -> Validation:
        for name in names:  # ComfyUI skips its own checks of these: each one's range or choices first
            problem = declared[name].problem(values.get(name)) if name in declared else None
            if problem is not None:
                return problem
        return True if more is None else more(**{name: values.get(name) for name in more_names})

    parameter = inspect.Parameter.POSITIONAL_OR_KEYWORD
    VALIDATE_INPUTS.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # read by inspect
        [inspect.Parameter("cls", parameter)] + [inspect.Parameter(name, parameter, default=None) for name in names]
    )
    return classmethod(VALIDATE_INPUTS)
