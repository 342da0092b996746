"""The entry format, shared by the disk store and by executors that ship results between processes.

An entry holds only tensors and JSON-able values, written with ``torch.save`` and read with
``torch.load(weights_only=True)``: never an arbitrary pickle. It starts with a magic line and a
checksum and names its key inside, so a truncated file, or one moved to another name, is not served.
Entries stream to and from files (hashed on the way), so that one of gigabytes (a node's kept progress)
costs no copy of itself in memory.
torch is imported only when an entry is touched, so that importing the engine leaves a process hook
the chance to configure torch before it starts its thread pools.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, cast

MAGIC = b"GRAPHRUN1\n"


@dataclass(frozen=True)
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)  # output file (relative to the output folder) -> SHA-256


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


def result_is_storable(result: NodeResult) -> bool:
    return is_storable(list(result.outputs)) and is_storable(result.ui)


HEADER_LENGTH = len(MAGIC) + 65  # the magic line, then the payload's SHA-256 in hex and a newline
READ_BLOCK = 1 << 20


class _HashingWriter:
    """A file's ``write`` that hashes what passes through it: torch.save streams an entry's payload into it
    (as memoryviews of the tensors' storage, so nothing is copied)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.digest = file, hashlib.sha256()
        # torch.save turns whatever a write raises into its own RuntimeError: a full disk (OSError), a second
        # Ctrl-C (KeyboardInterrupt) are raised as themselves instead
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            self.digest.update(data)
            return self.file.write(data)
        except BaseException as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def write_entry(file: BinaryIO, key: str, result: NodeResult) -> None:
    """Write a result as an entry to a seekable ``file``: tensors and JSON-able values, with a checksum and its
    key. The payload streams to the file as it is hashed, so a result of gigabytes costs no copy of itself."""
    import torch

    start = file.tell()
    file.write(MAGIC + b"0" * 64 + b"\n")
    writer = _HashingWriter(file)
    stored = {"key": key, "outputs": list(result.outputs), "ui": result.ui, "files": dict(result.files)}
    try:
        torch.save(stored, cast(IO[bytes], writer))
    except RuntimeError:
        if writer.error is not None:
            raise writer.error from None
        raise
    end = file.tell()
    file.seek(start + len(MAGIC))
    file.write(writer.digest.hexdigest().encode())
    file.seek(end)


def read_entry(file: BinaryIO, key: str) -> NodeResult:
    """The result in the entry a seekable ``file`` holds (``weights_only``: no arbitrary objects); ValueError if
    it is damaged or not ``key``'s. The payload is hashed in blocks, then loaded straight into the tensors."""
    header = file.read(HEADER_LENGTH)
    if len(header) < HEADER_LENGTH or not header.startswith(MAGIC) or not header.endswith(b"\n"):
        raise ValueError("bad header")
    payload = file.tell()
    digest, block = hashlib.sha256(), bytearray(READ_BLOCK)
    while count := file.readinto(block):  # type: ignore[attr-defined]
        digest.update(memoryview(block)[:count])
    if digest.hexdigest().encode() != header[len(MAGIC) : -1]:
        raise ValueError("checksum mismatch (truncated or modified)")
    file.seek(payload)
    import torch

    stored = torch.load(file, weights_only=True, map_location="cpu")
    if not isinstance(stored, dict) or not isinstance(stored.get("outputs"), (list, tuple)):
        raise ValueError("not a node result")
    if stored.get("key") != key:
        raise ValueError("it holds the result of another node (moved or copied under this name)")
    ui, files = stored.get("ui"), stored.get("files") or {}
    if (ui is not None and not isinstance(ui, dict)) or not isinstance(files, dict):
        raise ValueError("not a node result")
    return NodeResult(outputs=tuple(stored["outputs"]), ui=ui, files=files)


def encode_result(key: str, result: NodeResult) -> bytes:
    """A result as an entry's bytes, for an executor that ships it to another process."""
    buffer = io.BytesIO()
    write_entry(buffer, key, result)
    return buffer.getvalue()


def decode_result(blob: bytes, key: str) -> NodeResult:
    """The result in an entry's bytes (:func:`read_entry`; the bytes are read in place, not copied)."""
    return read_entry(io.BytesIO(blob), key)
