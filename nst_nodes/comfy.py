"""ComfyUI's side of the host interface: the host nodes get in a ComfyUI process (see host.host_of).

This is the only module that imports ComfyUI, and only when ComfyUI calls it: progress bar
and previews through ``comfy.utils.ProgressBar`` (whose hook also raises ComfyUI's
interruption), stop through ``comfy.model_management``, folders through ``folder_paths``.
Under ComfyUI every path stays inside its folder: a server is often reachable on a network.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from .files import SAMPLES_FOLDER, SAMPLES_PREFIX

STYLIZERS = "nst_stylizers"  # ComfyUI's models/nst_stylizers/, registered with folder_paths
PREVIEW_SECONDS = 1.0  # at most one preview a second: encoding and sending one costs about a step at 128 px


class ComfyHost:
    """The host nodes get when ComfyUI runs them."""

    confined = True

    def __init__(self) -> None:
        self.last_preview = -math.inf

    @property
    def device(self) -> str:
        import comfy.model_management

        return str(comfy.model_management.get_torch_device())

    @property
    def input_folder(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_input_directory())

    @property
    def output_folder(self) -> Path:
        import folder_paths

        return Path(folder_paths.get_output_directory())

    @property
    def models_folder(self) -> Path:
        """models/nst_stylizers (or the first folder extra_model_paths.yaml gives ``nst_stylizers``)."""
        import folder_paths

        register_models_folder()
        return Path(folder_paths.get_folder_paths(STYLIZERS)[0])

    def progress(self, step: int, total: int, preview: Callable[[], Any] | None = None, **info: Any) -> None:
        """ComfyUI's progress bar on the node, with the current image as KSampler shows its previews."""
        import comfy.utils
        from comfy.cli_args import args

        image = None
        now = time.monotonic()
        if preview is not None and (step == 1 or step >= total or now - self.last_preview >= PREVIEW_SECONDS):
            self.last_preview = now
            image = ("JPEG", preview(), args.preview_size)
        comfy.utils.ProgressBar(total).update_absolute(step, total, image)

    def should_stop(self) -> bool:
        """Raises ComfyUI's interruption when the user pressed Cancel: an interrupted node returns nothing there."""
        import comfy.model_management

        comfy.model_management.throw_exception_if_processing_interrupted()
        return False

    def resume_state(self, fits: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """None: Cancel interrupts a node before it can keep anything (above)."""
        return None

    def keep_progress(self, state: dict[str, Any], done: int, running: bool = False) -> None:
        return None


VIDEO_SAMPLES = (".mp4",)


def copy_samples(input_folder: Path) -> None:
    """Put the pack's sample images into ComfyUI's input folder (``nst-samples/``), so the example
    workflows run as shipped and the picker shows them; a copy that differs from the pack's (an
    older version of the pack shipped it smaller) is replaced, other files are left alone. The sample
    clip also goes to the top of the folder (``nst-samples-carphone.mp4``): ComfyUI's own Load Video
    lists only the files there."""
    target = input_folder / SAMPLES_PREFIX
    try:
        target.mkdir(parents=True, exist_ok=True)
        for sample in sorted(SAMPLES_FOLDER.iterdir()):
            copies = [target / sample.name]
            if sample.suffix.lower() in VIDEO_SAMPLES:
                copies.append(input_folder / f"{SAMPLES_PREFIX}-{sample.name}")
            for copy in copies:
                if sample.is_file() and (not copy.exists() or copy.read_bytes() != sample.read_bytes()):
                    shutil.copyfile(sample, copy)
    except OSError as error:
        logging.warning(
            "nst-nodes: could not copy the sample images to %s (%s); "
            "the example workflows will find them in the pack anyway",
            target,
            error,
        )


@cache
def comfy_host() -> ComfyHost:
    """The process's one ComfyHost (it keeps the time of the last preview), made when a node first asks for a
    host, which is when ComfyUI first lists the nodes: the sample images are copied then, before Load Image
    lists the input folder."""
    host = ComfyHost()
    copy_samples(host.input_folder)
    return host


def register_models_folder() -> None:
    """Make models/nst_stylizers a model folder of ComfyUI's, unless its extra_model_paths.yaml did."""
    import folder_paths

    if STYLIZERS not in folder_paths.folder_names_and_paths:
        folder = str(Path(folder_paths.models_dir) / STYLIZERS)
        folder_paths.folder_names_and_paths[STYLIZERS] = ([folder], {".safetensors"})
