"""The disk store: entries' bytes under a directory, within a byte budget, oldest entries out first.

Layout: ``DIR/<2 hex>/<key>.entry``, a key being 64 hex digits and, for an entry that is not a node's result,
its kind (``.progress``: :func:`graphrun.cache.keys.progress_key`). *Leftovers* are the store's own debris: the
temporary file of a writer that was killed (``<key>.<12 hex>.tmp``) and whatever is not a regular file at
an entry's name. ``scan`` counts them, ``clear`` removes them with the entries, and trimming
removes temporary files untouched for :data:`STALE_SECONDS`. Nothing else is
ever touched, so a mistyped cache directory cannot lose a user's files. Entries honour the umask,
so a cache can be shared between users.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

SUFFIX = ".entry"
KEY = r"[0-9a-f]{64}(?:\.[a-z]+)?"
ENTRY_NAME = re.compile(rf"{KEY}\.entry")
TEMPORARY_NAME = re.compile(rf"{KEY}\.[0-9a-f]{{12}}\.tmp")
SHARD_NAME = re.compile(r"[0-9a-f]{2}")
STALE_SECONDS = 3600.0
"""A temporary file untouched this long is a killed writer's (a live one writes on): trimming removes it."""


def entry_key(entry: Path) -> str:
    """The key an entry's file is named by."""
    return entry.name.removesuffix(SUFFIX)


class UnreadableEntry(Exception):
    """An entry could not be read or failed its checksum; the lookup is a miss."""


class EntryTooLarge(OSError):
    """An entry larger than the store's whole budget: not kept (keeping it would remove every other entry, then
    itself); the store stays on."""


@dataclass
class Scan:
    """What a cache directory holds: entries, the store's leftovers, and files that are not the store's."""

    entries: list[Path] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def entry_bytes(self) -> int:
        return sum(size for _, size, _ in self.entry_stats())

    def entry_stats(self) -> list[tuple[Path, int, float]]:
        """(path, size, modification time) of every entry still there."""
        stats = []
        for path in self.entries:
            try:
                info = path.lstat()
            except OSError:
                continue
            stats.append((path, info.st_size, info.st_mtime))
        return stats


def open_regular_file(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; never follows a link, never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    handle = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise OSError(f"{path} is not a regular file")
        return os.fdopen(handle, "rb")
    except BaseException:
        os.close(handle)
        raise


class DiskStore:
    def __init__(self, directory: Path, budget: int) -> None:
        self.directory = directory
        self.budget = budget
        self.problem: str | None = None  # why the store is off, once it failed as a whole
        self.read_only: set[str] = set()  # keys whose entry exists but cannot be read: not written over
        self._written_since_trim: int | None = None  # None: not trimmed yet in this process

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}{SUFFIX}"

    def ready(self) -> bool:
        """False once the store failed as a whole (the caller reports ``problem`` once)."""
        if self.problem is not None:
            return False
        if self.directory.exists() and not self.directory.is_dir():
            self.problem = f"cache directory {self.directory} is not a directory"
            return False
        return True

    def open(self, key: str) -> BinaryIO | None:
        """The entry opened for reading, None if there is none; raises :class:`UnreadableEntry` for one that cannot
        be opened."""
        path = self.path(key)
        try:
            return open_regular_file(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:  # the directory's path runs through a file
            self.problem = f"cache directory {self.directory} cannot be used (a part of its path is a file)"
            return None
        except OSError as error:
            # Not a file (a folder, a FIFO, a link) at our entry's name: remove it so the result can be
            # stored again. A file we may not read (another user's) is left alone, and not written over.
            try:
                if not stat.S_ISREG(path.lstat().st_mode):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                else:
                    self.read_only.add(key)
            except OSError:
                self.read_only.add(key)
            raise UnreadableEntry(f"cache entry {path} cannot be read ({error.strerror or error})") from error

    def discard(self, key: str) -> None:
        try:
            self.path(key).unlink(missing_ok=True)
        except OSError:
            pass

    def write(self, key: str, fill: Callable[[BinaryIO], None]) -> bool:
        """Write the entry ``fill`` writes to the file it is given, atomically (False: the store is off, or the
        entry there is another user's); raises OSError if the disk fails (and the store is off from then on), and
        :class:`EntryTooLarge` for an entry larger than the whole budget."""
        if key in self.read_only or not self.ready():
            return False
        path = self.path(key)
        temporary = path.with_name(f"{key}.{secrets.token_hex(6)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Mode 0666 less the umask, as for any new file, so that a cache can be shared.
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(handle, "wb") as file:
                    fill(file)
                    size = file.tell()
                if size > self.budget:  # the entry it would replace (a smaller progress of the same node) stays
                    raise EntryTooLarge(
                        f"its {size / 2**20:.1f} MiB are more than the disk cache's budget of "
                        f"{self.budget / 2**20:.1f} MiB (--disk-cache)"
                    )
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        except EntryTooLarge:
            raise
        except OSError as error:  # a full disk, a read-only folder: the next write would fail the same way
            self.problem = f"cannot write to cache directory {self.directory} ({error.strerror or error})"
            raise
        self._trim_if_due(size)
        return True

    def _trim_if_due(self, written: int) -> None:
        """Keep within ``budget``: scan after the first write and then after every tenth of the budget
        written, removing the oldest entries first (and killed writers' temporary files)."""
        if self._written_since_trim is not None:
            self._written_since_trim += written
            if self._written_since_trim < self.budget // 10:
                return
        self._written_since_trim = 0
        found = self.scan()
        for path in found.leftovers:
            try:
                if TEMPORARY_NAME.fullmatch(path.name) and time.time() - path.lstat().st_mtime > STALE_SECONDS:
                    path.unlink()
            except OSError:
                pass
        stats = sorted(found.entry_stats(), key=lambda stat: stat[2])
        total = sum(size for _, size, _ in stats)
        for path, size, _ in stats:
            if total <= self.budget:
                break
            try:
                path.unlink()
                total -= size
            except OSError:
                pass

    def scan(self) -> Scan:
        """Entries, leftovers and foreign files inside the two-letter folders (nothing else is looked at)."""
        found = Scan()
        if not self.directory.is_dir():
            return found
        try:
            shards = [
                item
                for item in os.scandir(self.directory)
                if SHARD_NAME.fullmatch(item.name) and item.is_dir(follow_symlinks=False)
            ]
        except OSError as error:
            found.problems.append(f"{self.directory}: {error.strerror or error}")
            return found
        for shard in sorted(shards, key=lambda item: item.name):
            try:
                items = sorted(os.scandir(shard.path), key=lambda item: item.name)
            except OSError as error:
                found.problems.append(f"{shard.path}: {error.strerror or error}")
                continue
            for item in items:
                ours = item.name.startswith(shard.name)
                if ours and ENTRY_NAME.fullmatch(item.name):
                    regular = item.is_file(follow_symlinks=False)
                    (found.entries if regular else found.leftovers).append(Path(item.path))
                elif ours and TEMPORARY_NAME.fullmatch(item.name):
                    found.leftovers.append(Path(item.path))
                else:
                    found.foreign.append(Path(item.path))
        return found

    def clear(self) -> tuple[int, int, list[str]]:
        """Delete every entry and leftover: (entries removed, leftovers removed, problems)."""
        found = self.scan()
        problems = list(found.problems)
        removed = {"entries": 0, "leftovers": 0}
        emptied: set[Path] = set()
        for kind, paths in (("entries", found.entries), ("leftovers", found.leftovers)):
            for path in paths:
                try:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
                    removed[kind] += 1
                    emptied.add(path.parent)
                except OSError as error:
                    problems.append(f"{path}: {error.strerror or error}")
        for shard in emptied:
            try:
                shard.rmdir()
            except OSError:
                pass  # something else is still in it
        return removed["entries"], removed["leftovers"], problems
