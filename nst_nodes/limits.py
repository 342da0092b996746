"""Resource limits, checked before the expensive work they protect.

- Decoded pixels per image (``NST_MAX_IMAGE_PIXELS``, default 64 megapixels: a 48 MP phone
  photo loads, a 17 KB PNG whose header claims 144 MP does not), checked from the header
  before anything is decoded, and again for what a resize would produce.
- Working memory: the network pass and the optimization at a given size are estimated from
  VGG19's layer shapes and refused, with the estimate, when they cannot fit in the memory the
  device has available, or in what ``NST_MEMORY_LIMIT_MIB`` leaves beside what the process holds
  already, where that is less (``NST_MEMORY_CHECK=0`` turns the check off). An optimization that
  would not fit with the heap keeping its large blocks first gets an allocator that hands them
  back (:func:`fitting_allocator`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import kernels, tuning
from .losses import DIRECTIONS_AT_ONCE, PROJECTIONS, SLICED_BYTES, SLICED_GRADIENT_BYTES
from .vgg import LAYER_INDEX, LAYER_NAMES, layer_shape, layer_stride

if TYPE_CHECKING:
    from .optimize import OptimizerSettings
    from .types import Objective

DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
MAX_SIDE = 16384
"""The longest side an image may be resized (or kernels calibrated) to."""
ALIVE_PER_ACTIVATION = 2.0
"""Bytes alive per activation element and float byte, forward and backward together: the lean CPU path
holds about twice the conv outputs (measured where freed tensors go back to the OS: NST_TUNING=memory)."""
POOLED_PER_ACTIVATION = 3.0
"""The same for tensors an allocator keeps pooled after use: glibc's heap below its mmap threshold (its
fragmentation), CUDA's caching allocator (docs/performance.md#memory)."""


def environment_int(name: str, default: int, minimum: int = 1, example: int | None = None) -> int:
    """The whole number an environment variable sets (``default`` when unset); a ValueError names the
    variable and shows a valid setting, so a typo is refused instead of silently ignored. (graphrun.graph has
    its own, for the graph limits: the nodes load in ComfyUI, where graphrun, the command line's engine, is not
    installed.)"""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(
            f"{name}={text!r} must be a whole number of at least {minimum}, e.g. {name}={example or default}"
        )
    return value


def max_image_pixels() -> int:
    return environment_int("NST_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} megapixels"


def check_pixels(width: int, height: int, what: str) -> None:
    limit = max_image_pixels()
    if width * height > limit:
        raise ValueError(
            f"{what}: {width}x{height} is {megapixels(width * height)}, more than the limit of {megapixels(limit)}; "
            "use a smaller image (or raise NST_MAX_IMAGE_PIXELS)"
        )


def _layer_shapes(height: int, width: int, deepest: str) -> list[tuple[int, int, int]]:
    """(channels, height, width) of every conv output up to ``deepest``."""
    convs = [name for name in LAYER_NAMES[: LAYER_INDEX[deepest] + 1] if name.startswith("conv")]
    return [layer_shape(name, height, width) for name in convs]


def smallest_side(deepest: str) -> int:
    """Pixels an image needs on each side so that ``deepest`` has at least one row and column."""
    return layer_stride(deepest)


TUNED = -1
"""``mapped_from``'s default: the process's mmap threshold now (:func:`tuning.mmap_threshold`)."""


def network_bytes(
    height: int, width: int, deepest: str, with_gradient: bool, device: str = "cpu", mapped_from: int | None = TUNED
) -> int:
    """Estimated memory of one fp32 network pass to ``deepest`` (and back, ``with_gradient``) on ``device``, where
    the CPU's allocator gives blocks of ``mapped_from`` bytes and more a mapping of their own (None: none)."""
    sizes = [c * h * w * 4 for c, h, w in _layer_shapes(height, width, deepest)]
    if not with_gradient:
        return 2 * max(sizes, default=0) + sum(sizes) // 4
    if device != "cpu":
        mapped_from = None
    elif mapped_from == TUNED:
        mapped_from = tuning.mmap_threshold()
    return int(
        sum(
            size * (ALIVE_PER_ACTIVATION if mapped_from is not None and size >= mapped_from else POOLED_PER_ACTIVATION)
            for size in sizes
        )
    )


def objective_bytes(objective: Objective, height: int, width: int) -> int:
    """What an objective's terms keep for the backward pass beyond the network pass's estimate, at ``height`` x
    ``width``: a sliced style loss's sorted projections, at each of its layers (the other terms keep little)."""
    return sum(
        rows * columns * PROJECTIONS * SLICED_GRADIENT_BYTES
        for term in objective["terms"]
        if term["kind"] == "style" and term["statistic"] == "sliced"
        for _, rows, columns in (layer_shape(name, height, width) for name in term["targets"])
    )


def measuring_bytes(height: int, width: int, layers: tuple[str, ...], device: str = "cpu") -> int:
    """Estimated memory of measuring an image's quality (metrics.quality): a pass without gradient to the deepest of
    ``layers`` (its estimate counts the features it keeps), then one group of the sliced distance's sorted projections
    at the largest of them on top (docs/performance.md#memory)."""
    positions = max(rows * columns for _, rows, columns in (layer_shape(name, height, width) for name in layers))
    deepest = max(layers, key=LAYER_INDEX.__getitem__)
    return network_bytes(height, width, deepest, False, device) + positions * DIRECTIONS_AT_ONCE * SLICED_BYTES


class Available(NamedTuple):
    """Memory an estimate may count on, and why no more: the device's free memory, or ``NST_MEMORY_LIMIT_MIB`` less
    what this process holds already (``limited``: the limit is the lesser; ``held``: what was taken off it)."""

    bytes: int
    limited: bool = False
    held: int = 0

    def described(self) -> str:
        """'12.9 GiB' with the limit named where it is the bound, for the messages."""
        if not self.limited:
            return amount(self.bytes)
        return f"{amount(self.bytes)} (NST_MEMORY_LIMIT_MIB less the {amount(self.held)} this process holds)"


def available(device: str) -> Available | None:
    """What the device can still give, at most ``NST_MEMORY_LIMIT_MIB`` (a share of a machine that other work uses
    too) less what this process holds already: the values it keeps beside the work being checked count against the
    limit too. None where it cannot be told and no limit is set. On the CPU the heap's free space goes back to the
    OS first, so that neither figure counts it (the work being checked would mostly not reuse it)."""
    if not device.startswith("cuda"):
        tuning.release_free_heap()
    free, limit = free_bytes(device), memory_limit()
    if limit is None:
        return None if free is None else Available(free)
    held = held_bytes(device)
    room = max(0, limit - held)
    return Available(free) if free is not None and free < room else Available(room, True, held)


def memory_limit() -> int | None:
    """``NST_MEMORY_LIMIT_MIB`` in bytes; None where it is not set."""
    return environment_int("NST_MEMORY_LIMIT_MIB", 0, example=15259) * 2**20 or None


def held_bytes(device: str) -> int:
    """What this process holds on ``device``: on a GPU its allocated tensors; on the CPU its resident memory (where
    the heap's free space was handed back first, :func:`available`, what its values take). 0 where it cannot be
    told."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.memory_allocated(torch.device(device)))
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def free_bytes(device: str) -> int | None:
    """What the device can still give: CUDA's free memory and its cache's unused part, Linux's MemAvailable."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_check_on() -> bool:
    """``NST_MEMORY_CHECK``: 1 (the default) or 0; a ValueError for anything else."""
    switch = os.environ.get("NST_MEMORY_CHECK", "1")
    if switch not in ("0", "1"):
        raise ValueError(f"NST_MEMORY_CHECK={switch!r} must be 0 (off) or 1 (on), e.g. NST_MEMORY_CHECK=0")
    return switch == "1"


SMALLEST_SUGGESTED = 16
"""Below this side a size is not worth suggesting: the refusal says that nothing fits instead."""
OPTIMIZED_DEEPEST = "relu5_1"
"""Where an optimization after a network pass usually reaches (Gatys' style layers; the content pass stops earlier)."""
VECTORS_PER_STEP = 12
"""Image-sized float32 vectors the optimizer holds besides its history (iterate, gradients, direction, best...)."""


def optimization_bytes(
    height: int,
    width: int,
    deepest: str,
    device: str,
    settings: OptimizerSettings | None = None,
    mapped_from: int | None = TUNED,
) -> int:
    """Optimizing a ``height`` x ``width`` image (``settings``: Optimize Image's defaults; ``mapped_from``: as in
    :func:`network_bytes`): the network pass with its gradient, the L-BFGS history and the optimizer's image-sized
    vectors."""
    from .optimize import DTYPES, OptimizerSettings

    settings = settings or OptimizerSettings()
    image = 3 * height * width
    history = 2 * settings.history_size * image * DTYPES[settings.history_precision].itemsize
    network = network_bytes(height, width, deepest, True, device, mapped_from) + prepared_weight_bytes(deepest, device)
    return network + history + VECTORS_PER_STEP * image * 4


PREPARED_PER_WEIGHT = 12
"""Bytes of prepared weights (kernels.prepared_weight) per byte of a convolution's weights, at most: while the
pass plans are timed, every candidate plan's are alive at once: the per-layer plan's (Winograd F(4x4) keeps each
kernel as a 6x6 tile, 4x per direction), the NNPACK plan's transposed gradient kernel (1x), the oneDNN plan's
reordered kernels (1x per direction) and a bf16 plan's cast (0.5x)."""
PREPARED_PER_WEIGHT_WITHOUT_F4 = 6
"""The same where F(4x4) is left out (``NST_TUNING=memory``): the per-layer plan's kernels are copies (1x per
direction)."""


SHORT_OF_MEMORY_THRESHOLDS = (256 << 20, 32 << 20, 128 << 10)
"""The allocator's mmap thresholds an optimization that does not fit tries, largest first: each hands more of
its blocks back to the OS after use, for less memory and more time (at 2048², 256 MiB: 2.8 GiB less at the peak,
12-21% more time per step; docs/performance.md#memory). 128 KiB is NST_TUNING=memory's."""


@contextmanager
def fitting_allocator(needed: Callable[[int], int], device: str, what: str) -> Iterator[None]:
    """Runs the block with the CPU allocator handing large blocks back to the OS where ``needed(mmap threshold)``,
    an estimate, does not fit in what is available with the process's own threshold: the largest of
    :data:`SHORT_OF_MEMORY_THRESHOLDS` at which it fits, with a warning naming ``what``, or where none does, the
    smallest (check_memory then refuses, unless NST_MEMORY_CHECK=0 asks to try anyway). Nothing changes where it
    fits, on a GPU, or where the threshold is not ours to change (:func:`tuning.adjustable`)."""
    tuned = tuning.mmap_threshold()
    room = available(device) if device == "cpu" and tuning.adjustable() else None
    lower = {threshold: needed(threshold) for threshold in SHORT_OF_MEMORY_THRESHOLDS if threshold < (tuned or 0)}
    if room is None or tuned is None or not lower or (before := needed(tuned)) <= room.bytes:
        yield
        return
    threshold = next((threshold for threshold, estimate in lower.items() if estimate <= room.bytes), min(lower))
    if lower[threshold] <= room.bytes:
        logging.getLogger(__name__).warning(
            "nst-nodes: %s needs about %s as this process's allocator is tuned, %s available: blocks of %s and "
            "more go back to the system after use (about %s; slower per step); a smaller size or history_size "
            "keeps the speed",
            what,
            amount(before),
            room.described(),
            amount(threshold),
            amount(lower[threshold]),
        )
    with tuning.blocks_mapped_from(threshold):
        yield


def amount(size: float) -> str:
    """Bytes as a person reads them: 15.1 GiB, 700 MiB, 128 KiB."""
    if size >= 2**30:
        return f"{size / 2**30:.1f} GiB"
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def prepared_weight_bytes(deepest: str, device: str) -> int:
    """The most memory the CPU's kernels keep for the weights of the layers up to ``deepest`` (0 on CUDA)."""
    if device.startswith("cuda"):
        return 0
    channels = [3] + [out for out, _, _ in _layer_shapes(1, 1, deepest)]  # each conv's input, then output
    weights = sum(inputs * outputs * 9 * 4 for inputs, outputs in itertools.pairwise(channels))
    lean = not set(kernels.MEMORY_HUNGRY) & set(kernels.usable_paths())
    return weights * (PREPARED_PER_WEIGHT_WITHOUT_F4 if lean else PREPARED_PER_WEIGHT)


def fitting_scale(bytes_at: Callable[[int, int], int], height: int, width: int, available: int) -> float:
    """The largest scale (found by bisection: the weights and buffers do not scale with the image) at which
    ``bytes_at(height·scale, width·scale)`` fits in ``available``."""
    low, high = 0.0, 1.0
    for _ in range(20):
        middle = (low + high) / 2
        fits = bytes_at(int(height * middle), int(width * middle)) <= available
        low, high = (middle, high) if fits else (low, middle)
    return low


def check_memory(
    what: str, description: str, needed: int, device: str, height: int, width: int, deepest: str | None = None
) -> None:
    """Refuse work that cannot fit, naming the input, the estimate, what is available and a size that fits.

    With ``deepest`` (a network pass's), the size suggested is one that can also be optimized to
    :data:`OPTIMIZED_DEEPEST` or ``deepest`` with Optimize Image's defaults, the pass's usual next step."""
    if not memory_check_on():
        return
    room = available(device)
    if room is None or needed <= room.bytes:
        return
    scale, purpose = math.sqrt(room.bytes / needed), ""
    if deepest is not None:  # the image is usually optimized next, which needs more
        reached = max(deepest, OPTIMIZED_DEEPEST, key=LAYER_INDEX.__getitem__)
        scale = fitting_scale(lambda h, w: optimization_bytes(h, w, reached, device), height, width, room.bytes)
        purpose = ", also for optimizing it"
    fitting = int(width * scale), int(height * scale)
    if min(fitting) >= SMALLEST_SUGGESTED:
        smaller = f"use a smaller size (about {fitting[0]}x{fitting[1]} would fit{purpose})"
    else:
        smaller = "no size would fit beside what is held already"
    raise_limit = ", raise NST_MEMORY_LIMIT_MIB if the machine has more" if room.limited else ""
    raise MemoryError(
        f"{what}: {description} at {width}x{height} needs about {amount(needed)} but {device} has "
        f"{room.described()} available; {smaller}{raise_limit}, or set NST_MEMORY_CHECK=0 to try anyway"
    )
