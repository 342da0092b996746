"""How an application built on the engine presents itself: its command, its cache, its processes.

The engine names no application: a node pack that ships a command passes its own :class:`App` to
:func:`graphrun.cli.main`; ``python -m graphrun`` runs with the neutral defaults below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from graphrun.cache import user_cache_dir


@dataclass(frozen=True)
class App:
    """``prog``: the command's name in help and messages. ``cache_dir``: where results are cached by
    default. ``process_modes`` and ``configure_process(mode)``: settings a process needs before its
    first node runs (``--tuning``; each batch worker runs it with the default mode).
    ``worker_environment()``: variables set in local batch workers before they start (asked for once the
    process is configured, so that a bad setting it reads is reported as one). ``check_environment()``: raises
    ValueError for a bad setting that the nodes read only as they run, so that ``run``, ``batch`` and
    ``validate`` refuse it before anything runs (called once the packs are loaded)."""

    prog: str = "graphrun"
    description: str = "Run, validate and list the nodes of JSON node graphs; inspect and clear the cache."
    cache_dir: Callable[[], Path] = field(default=lambda: user_cache_dir("graphrun"), repr=False)
    process_modes: tuple[str, ...] = ()
    configure_process: Callable[[str | None], object] | None = None
    worker_environment: Callable[[], dict[str, str]] = field(default=dict, repr=False)
    check_environment: Callable[[], object] = field(default=lambda: None, repr=False)
