"""A stopped node's progress, kept in the cache for a rerun of the same node to continue from.

A node that can go on from where it stopped (an optimization at step 120 of 200, a clip at its
tenth frame) hands its state to :meth:`graphrun.host.RunnerHost.keep_progress` when it stops; a
later run of the same node (the same key: the same inputs, settings and code) gets it back from
:meth:`~graphrun.host.RunnerHost.resume_state`. The state is an entry like any result (tensors and
JSON-able values, read back with ``weights_only``) under :func:`~graphrun.cache.keys.progress_key`,
so it is bounded, listed and cleared with the cache. Progress that got further is never replaced
by progress that got less far; a run that completes the node drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphrun.cache import Cache, NodeResult, UnreadableEntry
from graphrun.cache.entry import is_storable


@dataclass
class KeptProgress:
    """One node's kept progress: ``key`` is its progress key; ``warn`` reports what could not be read or written."""

    cache: Cache
    key: str
    warn: Callable[[str], None]
    resumable: bool = True  # False: the node is forced to start over (its kept progress is still replaced)
    done: int | None = None  # how far the kept progress got, once read (-1: there is none)

    def load(self) -> dict[str, Any] | None:
        """The kept state, or None (none kept, unreadable, or the node was asked to start over)."""
        state = self._read()
        if state is None or not self.resumable:
            return None
        self.warn(
            "goes on from where a stopped run of it got to (recompute it, or run without the cache, to start over)"
        )
        return state

    def save(self, state: dict[str, Any], done: int) -> None:
        """Keep ``state`` unless what is kept got as far (``done``) or further."""
        if not isinstance(state, dict) or not is_storable(state):
            raise TypeError("a node's progress must be a dict of tensors and JSON-able values (str keys)")
        if self.done is None:
            self._read()
        if self.done is not None and self.done >= done:
            return
        try:
            self.cache.store(self.key, NodeResult((state,), {"done": done}), to_disk=True)
        except OSError as error:
            self.warn(self.cache.take_disk_problem() or f"could not keep its progress ({error})")
        self.done = done

    def _read(self) -> dict[str, Any] | None:
        self.done = -1
        try:
            result = self.cache.lookup(self.key)
        except UnreadableEntry as error:
            self.warn(f"{error}; starting over")
            return None
        if result is None or len(result.outputs) != 1 or not isinstance(result.outputs[0], dict):
            return None
        done = (result.ui or {}).get("done")
        if not isinstance(done, int):
            return None
        self.done = done
        return dict(result.outputs[0])
