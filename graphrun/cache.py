"""Node results keyed by what produced them, in memory and on disk.

The key of a node is the SHA-256 of a canonical JSON of its class, the class's code
version, its constants (plus what ``IS_CHANGED`` says, e.g. a file's content hash) and
the keys of its linked inputs. Disk entries hold only tensors and JSON-able values and
are read with ``torch.load(weights_only=True)``, never with a full unpickler. torch is
imported only when an entry is touched, so that importing the runner leaves process
tuning (graphrun.tuning) a chance to act before torch starts its thread pools.

Layout: ``DIR/<2 hex>/<64 hex>.entry``; each entry names its key inside, so a file moved to
another name is not served. *Leftovers* are the cache's own debris: the temporary file of a
writer that was killed (``<64 hex>.<12 hex>.tmp``) and whatever is not a regular file at an
entry's name. ``cache info`` counts them, ``cache clear`` removes them with the entries.
Nothing else is ever touched, so a mistyped ``--cache-dir`` cannot lose a user's files.
Entries honour the umask, so a cache can be shared between users.

Both sides are bounded: memory by a byte budget, least recently used first out (a long-lived
host such as ComfyUI does not grow without bound), disk by a byte budget, oldest entries out.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"NSTCACHE2\n"
SUFFIX = ".entry"
ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.entry")
TEMPORARY_NAME = re.compile(r"[0-9a-f]{64}\.[0-9a-f]{12}\.tmp")
SHARD_NAME = re.compile(r"[0-9a-f]{2}")
DEFAULT_MEMORY_BYTES = 2 << 30
DEFAULT_DISK_BYTES = 20 << 30


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nst-nodes"


def node_key(
    class_type: str,
    version: str,
    constants: dict[str, Any],
    changed: Any,
    linked: dict[str, tuple[str, int]],
) -> str:
    """SHA-256 of everything that determines a node's outputs; ``linked`` maps input -> (key, index)."""
    document = {
        "class_type": class_type,
        "version": version,
        "constants": constants,
        "changed": changed,
        "linked": {name: [key, index] for name, (key, index) in linked.items()},
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


def always_changes(changed: Any) -> bool:
    """ComfyUI's convention: an ``IS_CHANGED`` of NaN (or anything not comparable) means "rerun every time"."""
    try:
        json.dumps(changed, allow_nan=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        return True
    return isinstance(changed, float) and math.isnan(changed)


@dataclass(frozen=True)
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)  # output file (relative to the output folder) -> SHA-256


class UnreadableEntry(Exception):
    """A disk entry could not be read or failed its checksum; the lookup is a miss."""


def is_storable(value: Any) -> bool:
    """True for tensors and JSON-able values nested in dicts, lists and tuples."""
    import torch

    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor) or item is None or isinstance(item, (str, int, float, bool)):
            continue
        if isinstance(item, (list, tuple)):
            pending.extend(item)
        elif isinstance(item, dict) and all(isinstance(k, str) for k in item):
            pending.extend(item.values())
        else:
            return False
    return True


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


@dataclass
class Scan:
    """What a cache directory holds: entries, the cache's leftovers, and files that are not the cache's."""

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


class Cache:
    """Memory cache for this process (LRU within ``memory_bytes``) in front of an optional disk cache."""

    def __init__(self, directory: Path | str | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 disk_bytes: int = DEFAULT_DISK_BYTES) -> None:
        for name, value in (("memory_bytes", memory_bytes), ("disk_bytes", disk_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number of bytes >= 0, not {value!r}")
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"the cache directory must be a path, not {type(directory).__name__}")
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self._written_since_trim: int | None = None  # None: not trimmed yet in this process
        self.memory: OrderedDict[str, tuple[NodeResult, int]] = OrderedDict()
        self.disk_problem: str | None = None  # why the disk side is off, once it failed as a whole
        self.read_only: set[str] = set()  # keys whose entry exists but cannot be read: not written over
        self._problem_reported = False

    def __repr__(self) -> str:
        return f"Cache({str(self.directory) if self.directory else None!r}, memory_bytes={self.memory_bytes})"

    # --- memory --------------------------------------------------------------------------------

    @property
    def memory_held(self) -> int:
        return sum(size for _, size in self.memory.values())

    def _remember(self, key: str, result: NodeResult) -> None:
        self.memory.pop(key, None)
        size = approximate_bytes(result.outputs)
        if size > self.memory_bytes:
            return
        self.memory[key] = (result, size)
        held = self.memory_held
        while held > self.memory_bytes:
            _, (_, evicted) = self.memory.popitem(last=False)
            held -= evicted

    # --- disk ----------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}{SUFFIX}"

    def _disk_ready(self) -> bool:
        """False when there is no disk side or it failed as a whole (reported once, by the caller)."""
        if self.directory is None or self.disk_problem is not None:
            return False
        if self.directory.exists() and not self.directory.is_dir():
            self.disk_problem = f"cache directory {self.directory} is not a directory"
            return False
        return True

    def take_disk_problem(self) -> str | None:
        """The reason the disk side is off, the first time it is asked; then None."""
        if self.disk_problem is None or self._problem_reported:
            return None
        self._problem_reported = True
        return f"{self.disk_problem}; results are kept in memory only"

    def lookup(self, key: str) -> NodeResult | None:
        """The stored result or None; raises :class:`UnreadableEntry` for an entry that cannot be used."""
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key][0]
        if not self._disk_ready():
            return None
        path = self._path(key)
        try:
            blob = _read_regular_file(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:  # the cache directory's path runs through a file
            self.disk_problem = f"cache directory {self.directory} cannot be used (a part of its path is a file)"
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
        try:
            result = decode_result(blob, key)
        except Exception as error:
            self.discard(key)
            raise UnreadableEntry(f"cache entry {path} is damaged ({error}); discarded") from error
        self._remember(key, result)
        return result

    def discard(self, key: str) -> None:
        """Forget an entry, in memory and on disk."""
        self.memory.pop(key, None)
        if self.directory is not None:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError:
                pass

    def store(self, key: str, result: NodeResult, to_disk: bool) -> None:
        """Keep a result; raises OSError if the disk write fails (the result stays in memory)."""
        self._remember(key, result)
        if not to_disk or key in self.read_only or not self._disk_ready():
            return
        path = self._path(key)
        temporary = path.with_name(f"{key}.{secrets.token_hex(6)}.tmp")
        blob = encode_result(key, result)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Mode 0666 less the umask, as for any new file, so that a cache can be shared.
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(blob)
                os.replace(temporary, path)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        except OSError as error:  # a full disk, a read-only folder: the next write would fail the same way
            self.disk_problem = f"cannot write to cache directory {self.directory} ({error.strerror or error})"
            raise
        self._trim_if_due(len(blob))

    def _trim_if_due(self, written: int) -> None:
        """Keep the disk side within ``disk_bytes``: scan after the first write and then after every
        tenth of the budget written, removing the oldest entries first."""
        if self._written_since_trim is not None:
            self._written_since_trim += written
            if self._written_since_trim < self.disk_bytes // 10:
                return
        self._written_since_trim = 0
        stats = sorted(self.scan().entry_stats(), key=lambda stat: stat[2])
        total = sum(size for _, size, _ in stats)
        for path, size, _ in stats:
            if total <= self.disk_bytes:
                break
            try:
                path.unlink()
                total -= size
            except OSError:
                pass

    def scan(self) -> Scan:
        """Entries, leftovers and foreign files inside the two-letter folders (nothing else is looked at)."""
        found = Scan()
        if self.directory is None or not self.directory.is_dir():
            return found
        try:
            shards = [item for item in os.scandir(self.directory)
                      if SHARD_NAME.fullmatch(item.name) and item.is_dir(follow_symlinks=False)]
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

    def entries(self) -> list[Path]:
        return self.scan().entries

    def clear(self) -> tuple[int, int, list[str]]:
        """Delete every entry and leftover (memory too): (entries removed, leftovers removed, problems).

        Files that are not the cache's are left where they are.
        """
        self.memory.clear()
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


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file; never follows a link, never blocks on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    handle = os.open(path, flags)
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise OSError(f"{path} is not a regular file")
        return file.read()


def encode_result(key: str, result: NodeResult) -> bytes:
    """A result as a cache entry's bytes: tensors and JSON-able values, with a checksum and its key."""
    import torch

    buffer = io.BytesIO()
    torch.save({"key": key, "outputs": list(result.outputs), "ui": result.ui, "files": dict(result.files)}, buffer)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def decode_result(blob: bytes, key: str) -> NodeResult:
    """The result in an entry's bytes (``weights_only``: no arbitrary objects); ValueError if it is not ``key``'s."""
    header_length = len(MAGIC) + 65
    if not blob.startswith(MAGIC) or len(blob) < header_length:
        raise ValueError("bad header")
    digest, payload = blob[len(MAGIC) : header_length - 1], blob[header_length:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch (truncated or modified)")
    import torch

    stored = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    if not isinstance(stored, dict) or not isinstance(stored.get("outputs"), (list, tuple)):
        raise ValueError("not a node result")
    if stored.get("key") != key:
        raise ValueError("it holds the result of another node (moved or copied under this name)")
    ui, files = stored.get("ui"), stored.get("files") or {}
    if ui is not None and not isinstance(ui, dict) or not isinstance(files, dict):
        raise ValueError("not a node result")
    return NodeResult(outputs=tuple(stored["outputs"]), ui=ui, files=files)
