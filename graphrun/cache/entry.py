"""The entry format, shared by the disk store and by executors that ship results between processes.

An entry holds only tensors and JSON-able values, written with ``torch.save`` and read with
``torch.load(weights_only=True)``: never an arbitrary pickle. It starts with a magic line and a
checksum and names its key inside, so a truncated file, or one moved to another name, is not served.
torch is imported only when an entry is touched, so that importing the engine leaves a process hook
the chance to configure torch before it starts its thread pools.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

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


def encode_result(key: str, result: NodeResult) -> bytes:
    """A result as an entry's bytes: tensors and JSON-able values, with a checksum and its key."""
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
    if (ui is not None and not isinstance(ui, dict)) or not isinstance(files, dict):
        raise ValueError("not a node result")
    return NodeResult(outputs=tuple(stored["outputs"]), ui=ui, files=files)
