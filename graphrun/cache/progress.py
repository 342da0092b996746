"""A stopped node's progress, kept in the cache for a rerun of the same node to continue from.

A node that can go on from where it stopped (an optimization at step 120 of 200, a clip at its
tenth frame) hands its state to :meth:`graphrun.host.RunnerHost.keep_progress` when it stops (and,
if it likes, now and then while it runs, so that a killed process goes on too); a later run of the
same node (the same key: the same inputs, settings and code) gets it back from
:meth:`~graphrun.host.RunnerHost.resume_state`. The state is an entry like any result (tensors and
JSON-able values, read back with ``weights_only``) under :func:`~graphrun.cache.keys.progress_key`,
so it is bounded, listed and cleared with the cache. Progress that got further is never replaced
by progress that got less far, but by the progress of a run asked to start over; a run that
completes the node drops it. Two runs of one node at once (two terminals on one cache) each go
on from what was kept when they started, and the last to stop is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphrun.cache import Cache, NodeResult, UnreadableEntry
from graphrun.cache.disk import EntryTooLarge
from graphrun.cache.entry import is_storable


@dataclass
class KeptProgress:
    """One node's kept progress: ``key`` is its progress key; ``warn`` says what happened to it;
    ``on_kept`` is called whenever progress is kept."""

    cache: Cache
    key: str
    warn: Callable[[str], None]
    on_kept: Callable[[], None] = lambda: None
    resumable: bool = True  # False: the node was asked to start over; its progress then replaces what is kept
    done: int | None = None  # how far the kept progress got, once read (-1: none, or it is to be replaced)
    too_large: bool = False  # a state was larger than the disk budget: the later ones, no smaller, are not written

    def load(self, fits: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The kept state, or None: none kept, unreadable, the node was asked to start over, or ``fits``
        (the node's check) refuses it."""
        if not self.resumable:
            self.done = -1
            return None
        state = self._read()
        if state is None:
            return None
        if fits is not None and not fits(state):
            self.warn("the progress a stopped run of it kept does not fit this run (another machine?); starting over")
            self.done = -1  # this run's own progress replaces it
            return None
        self.warn(
            "goes on from where a stopped run of it got to (recomputing it, or running without the cache, "
            "starts it over)"
        )
        return state

    def save(self, state: dict[str, Any], done: int, running: bool = False) -> None:
        """Keep ``state`` unless what is kept got as far (``done``) or further. ``running``: the node goes on
        changing the state's tensors, so it is written to disk at once and not held in memory."""
        if not isinstance(state, dict) or not is_storable(state):
            raise TypeError("a node's progress must be a dict of tensors and JSON-able values (str keys)")
        if self.done is None:
            self._read()
        if self.too_large or (self.done is not None and self.done >= done):
            return
        try:
            kept = self.cache.store(self.key, NodeResult((state,), {"done": done}), to_disk=True, in_memory=not running)
        except EntryTooLarge as error:
            self.too_large = True
            self.warn(f"could not keep its progress ({error}); not tried again in this run")
            return
        except OSError as error:
            self.warn(self.cache.take_disk_problem() or f"could not keep its progress ({error})")
            return
        self.done = done
        if kept:
            self.on_kept()

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
        # The node may take over its tensors (L-BFGS's pairs: GBs) and change them: no later reader gets them from
        # memory (the disk's copy stays as it was).
        self.cache.memory.discard(self.key)
        return dict(result.outputs[0])
