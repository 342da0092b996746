"""The memory store: results of this process, least recently used out first within a byte budget
(a long-lived host such as ComfyUI does not grow without bound)."""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

from graphrun.cache.entry import NodeResult


def approximate_bytes(value: Any) -> int:
    """Memory a result holds: its tensors' storage (each counted once) plus a little per object."""
    torch = sys.modules.get("torch")  # no torch imported: no tensors to count
    seen_objects: set[int] = set()
    seen_storages: set[int] = set()
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if id(item) in seen_objects:
            continue
        seen_objects.add(id(item))
        total += 64
        if torch is not None and isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in seen_storages:
                seen_storages.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)
        elif isinstance(item, (str, bytes)):
            total += len(item)
        elif hasattr(item, "__dict__"):
            pending.extend(vars(item).values())
    return total


class MemoryStore:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[str, tuple[NodeResult, int]] = OrderedDict()

    @property
    def held(self) -> int:
        return sum(size for _, size in self.entries.values())

    def get(self, key: str) -> NodeResult | None:
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key][0]

    def put(self, key: str, result: NodeResult) -> bool:
        """Keep ``result`` (False: it is larger than the whole budget)."""
        self.entries.pop(key, None)
        size = approximate_bytes(result.outputs)
        if size > self.budget:
            return False
        self.entries[key] = (result, size)
        held = self.held
        while held > self.budget:
            _, (_, evicted) = self.entries.popitem(last=False)
            held -= evicted
        return True

    def discard(self, key: str) -> None:
        self.entries.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()
