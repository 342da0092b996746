"""Small stand-ins for the ComfyUI modules the pack's adapter uses (ComfyUI is not on PyPI).

They keep ComfyUI's names and calling conventions (checked against ComfyUI 0.3.64) and record
what the pack does with them: progress bar updates with their previews, interruption checks.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any


class InterruptProcessingException(Exception):
    """ComfyUI's interruption exception (comfy.model_management)."""


class ComfyStandIns:
    def __init__(self, base: Path) -> None:
        self.input = base / "input"
        self.output = base / "output"
        self.input.mkdir(parents=True, exist_ok=True)
        self.output.mkdir(parents=True, exist_ok=True)
        self.updates: list[tuple[int, int, Any]] = []  # (value, total, preview) of every ProgressBar update
        self.interrupt_after: int | None = None  # set the interrupt flag once this many updates were made
        self.interrupted = False
        self.checks = 0
        self.modules = self._modules()

    def _modules(self) -> dict[str, types.ModuleType]:
        standins = self

        class ProgressBar:
            def __init__(self, total: int, node_id: str | None = None) -> None:
                self.total, self.current = total, 0

            def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
                standins.updates.append((value, total if total is not None else self.total, preview))
                if standins.interrupt_after is not None and len(standins.updates) >= standins.interrupt_after:
                    standins.interrupted = True

        def throw_exception_if_processing_interrupted() -> None:
            standins.checks += 1
            if standins.interrupted:
                standins.interrupted = False
                raise InterruptProcessingException()

        comfy = types.ModuleType("comfy")
        utils = types.ModuleType("comfy.utils")
        utils.ProgressBar = ProgressBar
        management = types.ModuleType("comfy.model_management")
        management.InterruptProcessingException = InterruptProcessingException
        management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        management.get_torch_device = lambda: "cpu"
        cli_args = types.ModuleType("comfy.cli_args")
        cli_args.args = types.SimpleNamespace(preview_size=512)
        comfy.utils, comfy.model_management, comfy.cli_args = utils, management, cli_args
        folder_paths = types.ModuleType("folder_paths")
        folder_paths.get_input_directory = lambda: str(self.input)
        folder_paths.get_output_directory = lambda: str(self.output)
        folder_paths.models_dir = str(self.output.parent / "models")
        folder_paths.folder_names_and_paths = {}
        folder_paths.get_folder_paths = lambda name: list(folder_paths.folder_names_and_paths[name][0])
        return {
            "comfy": comfy,
            "comfy.utils": utils,
            "comfy.model_management": management,
            "comfy.cli_args": cli_args,
            "folder_paths": folder_paths,
        }

    def install(self) -> None:
        sys.modules.update(self.modules)

    def remove(self) -> None:
        for name in self.modules:
            sys.modules.pop(name, None)
