"""How a batch's items ended, and what it tells its caller while it runs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from graphrun.batch.items import Item
from graphrun.reporting import CACHED, PARTIAL, RAN, SilentReporter

DONE, FAILED, NOT_STARTED, UNFINISHED = "done", "failed", "not started", "unfinished"


@dataclass
class ItemResult:
    """How an item ended: ``done`` (something ran), ``cached``, ``partial`` (stopped: the best result so
    far was saved), ``failed``, ``not started`` or ``unfinished`` (not waited for after an abort: a node
    that was running may still have saved its result so far)."""

    item: Item
    outcome: str
    seconds: float = 0.0  # since the batch started, when the item finished
    files: list[Path] = field(default_factory=list)
    error: str | None = None
    kept: bool = False  # stopped part way, it kept its progress: the same batch again goes on from it


@dataclass
class NodeRun:
    """A node a worker ran (or served from its cache) for the batch."""

    node_id: str  # the joined graph's id, ``item/node``
    class_type: str
    outcome: str
    seconds: float
    files: list[str]
    text: list[str]


@dataclass
class BatchResult:
    items: list[ItemResult]
    nodes: list[NodeRun]  # every node run by a worker, once per task
    users: dict[str, int]  # joined id of a task's node -> how many items' nodes it stood for
    seconds: float

    @property
    def failed(self) -> list[ItemResult]:
        return [result for result in self.items if result.outcome in (FAILED, NOT_STARTED, UNFINISHED)]

    @property
    def shared_saving(self) -> float:
        """Seconds that running shared nodes once saved, against running them once per item."""
        return sum(run.seconds * (self.users.get(run.node_id, 1) - 1) for run in self.nodes if run.outcome == RAN)

    def summary(self) -> str:
        counts: dict[str, int] = defaultdict(int)
        for result in self.items:
            counts[result.outcome] += 1
        parts = ", ".join(
            f"{counts[o]} {o}" for o in (DONE, CACHED, PARTIAL, FAILED, NOT_STARTED, UNFINISHED) if counts[o]
        )
        ran = [run for run in self.nodes if run.outcome == RAN]
        busy = sum(run.seconds for run in ran)
        finished = [result for result in self.items if result.outcome == DONE]
        lines = [
            f"{len(self.items)} items: {parts} in {self.seconds:.1f} s",
            f"{len(ran)} node runs, {busy:.1f} s of work; shared nodes saved {self.shared_saving:.1f} s",
        ]
        if finished:
            lines.append(f"{len(finished) * 3600 / max(self.seconds, 1e-9):.1f} items per hour")
        if kept := sum(result.kept for result in self.items):
            lines.append(f"{kept} stopped item(s) kept their progress: the same batch again goes on from it")
        return "\n".join(lines)


class BatchReporter(SilentReporter):
    """A run's reporter (``progress`` gets the joined graph's ``item/node`` ids) that also hears of items."""

    def item_done(self, result: ItemResult) -> None:
        return None
