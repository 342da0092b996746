"""Node results keyed by what produced them, in memory and on disk.

The key of a node is the SHA-256 of a canonical JSON of its class, the class's code
version, its constants (plus what ``IS_CHANGED`` says, e.g. a file's content hash) and
the keys of its linked inputs. Disk entries hold only tensors and JSON-able values and
are read with ``torch.load(weights_only=True)``, never with a full unpickler. torch is
imported only when an entry is touched, so that importing the runner leaves process
tuning (runner.tuning) a chance to act before torch starts its thread pools.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"NSTCACHE1\n"
SUFFIX = ".entry"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nst-nodes"


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


@dataclass(frozen=True)
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


class CorruptCacheEntry(Exception):
    """A disk entry failed its checksum or could not be read; it has been deleted."""


def is_storable(value: Any) -> bool:
    """True for tensors and JSON-able values nested in dicts, lists and tuples."""
    import torch

    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_storable(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_storable(v) for k, v in value.items())
    return False


class Cache:
    """Memory cache for this process in front of an optional disk cache shared by processes."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.memory: dict[str, NodeResult] = {}

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}{SUFFIX}"

    def lookup(self, key: str) -> NodeResult | None:
        """The stored result, or None; raises :class:`CorruptCacheEntry` for a damaged disk entry."""
        if key in self.memory:
            return self.memory[key]
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            result = _decode(blob)
        except Exception as error:
            path.unlink(missing_ok=True)
            raise CorruptCacheEntry(f"cache entry {path} is damaged ({error}); discarded") from error
        self.memory[key] = result
        return result

    def store(self, key: str, result: NodeResult, to_disk: bool) -> None:
        self.memory[key] = result
        if self.directory is None or not to_disk:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(_encode(result))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def entries(self) -> list[Path]:
        if self.directory is None or not self.directory.exists():
            return []
        return sorted(self.directory.glob(f"*/*{SUFFIX}"))

    def clear(self) -> int:
        """Delete every entry (memory and disk); returns how many disk entries went."""
        self.memory.clear()
        removed = self.entries()
        for path in removed:
            path.unlink(missing_ok=True)
        return len(removed)


def _encode(result: NodeResult) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"outputs": list(result.outputs), "ui": result.ui}, buffer)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def _decode(blob: bytes) -> NodeResult:
    header_length = len(MAGIC) + 65
    if not blob.startswith(MAGIC) or len(blob) < header_length:
        raise ValueError("bad header")
    digest, payload = blob[len(MAGIC) : header_length - 1], blob[header_length:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("checksum mismatch (truncated or modified)")
    import torch

    stored = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
    return NodeResult(outputs=tuple(stored["outputs"]), ui=stored["ui"])
