"""What a node's cache key is made of: its class, the class's code version, its constants, what
``IS_CHANGED`` says and the keys of its linked inputs."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

KEY_FORMAT = 3
"""Part of every key: a change of the entry format or of what keys contain makes old entries misses."""


def node_key(
    class_type: str,
    version: str,
    constants: dict[str, Any],
    changed: Any,
    linked: dict[str, tuple[str, int]],
) -> str:
    """SHA-256 of everything that determines a node's outputs; ``linked`` maps input -> (key, index)."""
    document = {
        "format": KEY_FORMAT,
        "class_type": class_type,
        "version": version,
        "constants": constants,
        "changed": changed,
        "linked": {name: [key, index] for name, (key, index) in linked.items()},
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()


PROGRESS_KIND = ".progress"


def progress_key(key: str) -> str:
    """The key under which a stopped node keeps its progress: its result's ``key`` and a kind of its own, so that
    the stores tell the two apart (``cache info`` counts kept progress)."""
    return f"{key}{PROGRESS_KIND}"


def is_progress_key(key: str) -> bool:
    return key.endswith(PROGRESS_KIND)


def always_changes(changed: Any) -> bool:
    """ComfyUI's convention: an ``IS_CHANGED`` of NaN (or anything not comparable) means "rerun every time"."""
    try:
        json.dumps(changed, allow_nan=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        return True
    return isinstance(changed, float) and math.isnan(changed)


@cache
def _package_fingerprint(package: str) -> str:
    """Version and source digest of the package a node class lives in.

    Nodes are thin adapters over plain functions elsewhere in their package, so a class's own
    source is not enough: an edited function must invalidate the cached results of the node
    that calls it.
    """
    digest = hashlib.sha256()
    try:
        digest.update(metadata.version(package.replace("_", "-")).encode())
    except metadata.PackageNotFoundError:
        pass
    module = sys.modules.get(package)
    module_file = getattr(module, "__file__", None)
    if module_file:
        root = Path(module_file).parent
        files = sorted(root.rglob("*.py")) if root.name == package else [Path(module_file)]
        for path in files:
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@cache
def code_version(node_class: type) -> str:
    """A hash of the class's source and of its package's version and source files."""
    try:
        source = inspect.getsource(node_class)
    except (OSError, TypeError):
        source = node_class.__qualname__
    package = node_class.__module__.split(".")[0]
    text = f"{node_class.__module__}.{node_class.__qualname__}\n{source}\n{_package_fingerprint(package)}"
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None if it cannot be read (an output file checked before its node is served)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
