"""The ``nst`` command: the engine's command line (graphrun) as this pack's application.

Imports the engine, so ComfyUI never loads this module (the pack's ``__init__`` does not import it).
"""

from __future__ import annotations

import sys

from graphrun import App
from graphrun.cli import console as engine_console
from graphrun.cli import main as engine_main

from .files import cache_root
from .tuning import MODES, configure_process

APP = App(
    prog="nst",
    description="Neural style transfer graphs: run, validate, batch, list nodes, inspect and clear the cache.",
    cache_dir=cache_root,
    process_modes=MODES,
    configure_process=configure_process,
    # OpenMP workers sleep between parallel regions instead of spinning against NNPACK's threads (tuning.py).
    worker_environment={"OMP_WAIT_POLICY": "PASSIVE"},
)


def main(argv: list[str] | None = None) -> int:
    return engine_main(argv, APP)


def console() -> int:
    """The ``nst`` script (:func:`graphrun.cli.console`)."""
    return engine_console(APP)


if __name__ == "__main__":
    sys.exit(console())
