"""The ``nst`` command: the engine's command line (graphrun) as this pack's application.

ComfyUI never loads this module (the pack's ``__init__`` does not import it). The engine is imported
when a command starts, not when this module is: a Ctrl-C while it loads then ends ``nst`` with a
word, not a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .files import cache_root
from .tuning import MODES, configure_process, openmp_environment

if TYPE_CHECKING:
    from graphrun import App


def application() -> App:
    from graphrun import App

    return App(
        prog="nst",
        description="Neural style transfer graphs: run, validate, batch, list nodes, inspect and clear the cache.",
        cache_dir=cache_root,
        process_modes=MODES,
        configure_process=configure_process,
        worker_environment=openmp_environment,  # OpenMP's wait policy measured on this machine (tuning.py)
        check_environment=check_limits,
    )


def check_limits() -> None:
    """The limits the nodes read from the environment as they run (limits.py), read once before anything runs."""
    from . import limits

    limits.max_image_pixels()
    limits.memory_limit()
    limits.memory_check_on()


def main(argv: list[str] | None = None) -> int:
    from graphrun.cli import main as engine_main

    return engine_main(argv, application())


def console() -> int:
    """The ``nst`` script (:func:`graphrun.cli.console`)."""
    try:
        from graphrun.cli import console as engine_console
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    return engine_console(application())


if __name__ == "__main__":
    sys.exit(console())
