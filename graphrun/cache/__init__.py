"""Node results keyed by what produced them: a memory store in front of an optional disk store.

As in Hamilton's cache, the parts are apart: keys.py says what a key is made of (with code
versions), entry.py the format an entry is written in (torch's, read with ``weights_only``),
memory.py and disk.py the two stores. Both stores are bounded: memory by a byte budget, least
recently used out first; disk by a byte budget, oldest entries out first.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from graphrun.cache.disk import DiskStore, Scan, UnreadableEntry
from graphrun.cache.entry import NodeResult, read_entry, write_entry
from graphrun.cache.memory import MemoryStore

DEFAULT_MEMORY_BYTES = 2 << 30
DEFAULT_DISK_BYTES = 20 << 30

__all__ = [
    "DEFAULT_DISK_BYTES",
    "DEFAULT_MEMORY_BYTES",
    "Cache",
    "NodeResult",
    "Scan",
    "UnreadableEntry",
    "user_cache_dir",
]


def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/name`` (default ``~/.cache/name``): where an application keeps its cache."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / name


class Cache:
    """Memory store for this process (LRU within ``memory_bytes``) in front of an optional disk store."""

    def __init__(
        self,
        directory: Path | str | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        disk_bytes: int = DEFAULT_DISK_BYTES,
    ) -> None:
        for name, value in (("memory_bytes", memory_bytes), ("disk_bytes", disk_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of bytes >= 0, not {value!r}")
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"the cache directory must be a path, not {type(directory).__name__}")
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.memory = MemoryStore(memory_bytes)
        self.disk = DiskStore(self.directory, disk_bytes) if self.directory is not None else None
        self._problem_reported = False

    def __repr__(self) -> str:
        return f"Cache({str(self.directory) if self.directory else None!r}, memory_bytes={self.memory.budget})"

    @property
    def memory_bytes(self) -> int:
        return self.memory.budget

    @property
    def disk_bytes(self) -> int:
        return self.disk.budget if self.disk is not None else 0

    @disk_bytes.setter
    def disk_bytes(self, value: int) -> None:
        if self.disk is not None:
            self.disk.budget = value

    @property
    def memory_held(self) -> int:
        return self.memory.held

    def take_disk_problem(self) -> str | None:
        """The reason the disk side is off, the first time it is asked; then None."""
        if self.disk is None or self.disk.problem is None or self._problem_reported:
            return None
        self._problem_reported = True
        return f"{self.disk.problem}; results are not cached on disk"

    def lookup(self, key: str) -> NodeResult | None:
        """The stored result or None; raises :class:`UnreadableEntry` for an entry that cannot be used."""
        found = self.memory.get(key)
        if found is not None or self.disk is None or not self.disk.ready():
            return found
        file = self.disk.open(key)
        if file is None:
            return None
        try:
            with file:
                result = read_entry(file, key)
        except Exception as error:
            self.discard(key)
            raise UnreadableEntry(f"cache entry {self.disk.path(key)} is damaged ({error}); discarded") from error
        self.memory.put(key, result)
        return result

    def discard(self, key: str) -> None:
        """Forget an entry, in memory and on disk."""
        self.memory.discard(key)
        if self.disk is not None:
            self.disk.discard(key)

    def store(self, key: str, result: NodeResult, to_disk: bool, in_memory: bool = True) -> bool:
        """Keep a result; whether it was kept anywhere. Raises OSError if the disk write fails (the result
        stays in memory). Not ``in_memory``: on disk only (the memory store forgets what it held of ``key``)."""
        if in_memory:
            kept = self.memory.put(key, result)
        else:
            self.memory.discard(key)
            kept = False
        if to_disk and self.disk is not None and self.disk.ready():
            kept = self.disk.write(key, partial(write_entry, key=key, result=result)) or kept
        return kept

    def scan(self) -> Scan:
        return self.disk.scan() if self.disk is not None else Scan()

    def entries(self) -> list[Path]:
        return self.scan().entries

    def clear(self) -> tuple[int, int, list[str]]:
        """Delete every entry and leftover (memory too): (entries removed, leftovers removed, problems).

        Files that are not the cache's are left where they are.
        """
        self.memory.clear()
        return self.disk.clear() if self.disk is not None else (0, 0, [])
