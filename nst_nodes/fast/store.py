"""Stylizer files: safetensors only (tensors and a text header, so loading one runs no code, unlike a pickle).

The header's metadata says that the file is one of ours (``format``), its version, the network's shape and
how it was trained; :func:`read_stylizer` refuses any other file with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO, cast

from ..types import Stylizer, Training
from .network import build

EXTENSION = ".safetensors"
FORMAT = "nst-nodes-stylizer"
VERSION = "1"
MAX_HEADER_BYTES = 1 << 20  # a stylizer's header is a few kB; safetensors allows 100 MB


def stylizer_bytes(stylizer: Stylizer) -> bytes:
    from safetensors.torch import save

    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "width": str(stylizer["width"]),
        "blocks": str(stylizer["blocks"]),
        "training": json.dumps(stylizer["training"]),
    }
    weights = {name: value.detach().cpu().contiguous() for name, value in stylizer["weights"].items()}
    return save(weights, metadata=metadata)


def write_stylizer(file: BinaryIO, stylizer: Stylizer) -> None:
    file.write(stylizer_bytes(stylizer))


def _header(file: BinaryIO, path: Path) -> tuple[dict[str, str], int]:
    """The metadata of a safetensors file and the size its header declares for the whole file, read without its
    tensors; ValueError if it is no such file."""
    start = file.read(8)
    length = int.from_bytes(start, "little") if len(start) == 8 else 0
    if not 2 <= length <= MAX_HEADER_BYTES:
        raise ValueError(f"stylizer: {path} is not a safetensors file (a pickle or another format?)")
    try:
        header = json.loads(file.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"stylizer: {path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"stylizer: {path} is not a safetensors file (its header is not a JSON object)")
    metadata = header.get("__metadata__")
    ends = [
        offsets[1]
        for name, tensor in header.items()
        if name != "__metadata__" and isinstance(tensor, dict)
        for offsets in [tensor.get("data_offsets")]
        if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int)
    ]
    return (metadata if isinstance(metadata, dict) else {}), 8 + length + max(ends, default=0)


def read_stylizer(file: BinaryIO, path: Path) -> Stylizer:
    """A stylizer from an open file; ValueError naming the file and what is wrong with it."""
    metadata, declared = _header(file, path)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"stylizer: {path} is a safetensors file but not a stylizer saved by Save Stylizer")
    if metadata.get("version") != VERSION:
        raise ValueError(
            f"stylizer: {path} is of stylizer format version {metadata.get('version')}; this pack reads "
            f"version {VERSION}: update the pack, or train it again"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load

    size = file.seek(0, os.SEEK_END)
    file.seek(0)
    try:
        if size != declared:  # checked before the file is read into memory: it may be of any size
            raise ValueError(f"it holds {size} bytes where its header declares {declared}")
        weights = load(file.read())
        recorded = json.loads(metadata["training"])
        if not isinstance(recorded, dict) or not isinstance(recorded.get("steps"), int):
            raise ValueError("its training record is not one of ours")
        older = {"temporal": 0.0, "steps_asked": recorded["steps"], "network_precision": "fp32"}  # what they lack
        training = cast(Training, older | recorded)
        stylizer: Stylizer = {
            "width": int(metadata["width"]),
            "blocks": int(metadata["blocks"]),
            "weights": weights,
            "training": training,
        }
    except (SafetensorError, KeyError, ValueError) as error:
        raise ValueError(f"stylizer: {path} is damaged ({error}); save it again") from None
    try:
        build(stylizer)  # its tensors fit the network it names
    except ValueError as error:
        raise ValueError(f"stylizer: {path}: {str(error).removeprefix('stylizer: ')}") from None
    return stylizer
