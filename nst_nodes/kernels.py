"""Which kernel runs each 3x3 convolution: chosen by timing the candidates on this machine, remembered.

The fastest way to run a VGG convolution on a CPU depends on the machine (AVX2 or AVX-512,
native bf16 or not), the layer's shape and even the direction: NNPACK's Winograd kernels beat
oneDNN's direct ones by 1.3-2x on a 2-core AVX2 EPYC and lose by 40% on an AVX-512 Zen 5 at
256². So nothing is hard-coded: the first time a shape is met, each candidate is timed on it,
once for the forward pass and once for the input gradient (the weights are frozen, so the
backward pass is itself a 3x3 convolution, of the output gradient with the flipped, transposed
kernel, and gets its own choice). The winners are kept per machine (CPU model and flags,
threads, torch version) in ``kernels.json`` next to the node cache, like
``torch.backends.cudnn.benchmark`` but across processes. ``nst calibrate`` redoes it;
``NST_CONV=winograd|winograd_f4|direct|channels_last`` forces one path. Under
``NST_TUNING=memory`` the paths that keep several times the weights prepared are left out, and
the choices are kept apart from the other modes' (the machine's description names its paths).

The file follows the node cache's rules: what cannot be used (unreadable, over 1 MiB, not JSON,
an entry of the wrong type) is a miss, reported in one warning line and rewritten; it is
written whole through a temporary file, and keeps the choices of the newest few machines. A file
that ``NST_KERNELS_FILE`` names and that is not a choices file (another program's, a typo's) is
never rewritten: the choices are then kept in memory.

Only float32 on the CPU is calibrated; CUDA has cuDNN's own benchmark, and under bf16
autocast oneDNN's direct kernels are the only ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import tuning, winograd
from .autograd_ops import FunctionContext
from .files import FileRuleError, cache_root, machine_choices_file, open_regular, write_atomically

try:
    import fcntl
except ImportError:  # Windows: no lock; the merge still keeps most of what others wrote
    fcntl = None  # type: ignore[assignment]  # no such module there: every use checks for None

PATHS = ("winograd", "winograd_f4", "direct", "channels_last")
CHOICES = ("auto", *PATHS)
MEMORY_HUNGRY = ("winograd_f4",)
"""Paths whose prepared weights are several times the weights (F(4x4): each kernel as a 6x6 tile, 4x per
direction, 395 MiB to relu5_1): not chosen under ``NST_TUNING=memory``."""
MAX_CALIBRATION_PIXELS = 256 * 256
"""Shapes are timed on at most this many pixels (the same channels): time grows linearly with the
pixels from well below this size, so a 1024² layer needs no 1024² calibration."""
MAX_FILE_BYTES = 1 << 20
"""The kernel choices file is read up to this size (a machine's choices take a few KB); a larger one is rewritten."""
MACHINES_KEPT = 8
"""The file keeps the choices of this many machines, the most recently saved."""


logger = logging.getLogger(__name__)

Shape = tuple[int, int, int, int]
"""A convolution: (input channels, output channels, height, width)."""


def input_gradient(shape: Shape) -> Shape:
    """The convolution that computes the input gradient of ``shape``'s: its channels swapped."""
    channels_in, channels_out, height, width = shape
    return channels_out, channels_in, height, width


def packing_available() -> bool:
    """True where oneDNN can take a convolution's weights reordered once (the ops ``torch.compile``'s
    freezing uses), rather than reorder the frozen weights again at every call."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    )


def _packed(weight: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``weight`` in oneDNN's own layout for inputs of ``size`` (kept as is where packing is not built in)."""
    if not packing_available():
        return weight
    return torch.ops.mkldnn._reorder_convolution_weight(weight, [1, 1], [1, 1], [1, 1], 1, list(size))


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's direct convolution; the result contiguous, as every path's (mixed layouts slow every
    element-wise step after it: a ReLU's gradient took 3x as long)."""
    if not weight.is_mkldnn:
        return F.conv2d(x, weight, bias, padding=1).contiguous()
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "none", [], ""
    ).contiguous()


def _channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if not weight.is_mkldnn:
        weight = weight.contiguous(memory_format=torch.channels_last)
    return _onednn(x.contiguous(memory_format=torch.channels_last), weight, bias)


def _unchanged(weight: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return weight


def _in_bfloat16(weight: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return weight.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def _reduced(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.conv2d(x.contiguous(memory_format=torch.channels_last), weight, bias, padding=1)


@dataclass(frozen=True)
class Kernel:
    """One way to run a 3x3 convolution: ``prepare`` makes the frozen weight into what ``run`` takes,
    once per weight and input size (:func:`prepared_weight`); ``run(x, prepared, bias)`` convolves."""

    prepare: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


KERNELS: dict[str, Kernel] = {
    "winograd": Kernel(_unchanged, winograd.convolve),
    "winograd_f4": Kernel(lambda weight, size: winograd.transform_weight(weight), winograd.convolve_pretransformed),
    # oneDNN on NCHW takes the weights as they are: weights reordered once make it write a channels-last result,
    # and its copy back to NCHW made a 1024² step take twice as long, with 1.2 GiB more (docs/performance.md#memory).
    "direct": Kernel(_unchanged, _onednn),
    "channels_last": Kernel(_packed, _channels_last),
    # Not timed per layer: the bf16 pass's (a pass plan), oneDNN channels-last on weights cast once
    # rather than at every pass, as autocast does for frozen weights.
    "bf16": Kernel(_in_bfloat16, _reduced),
}


def conv_setting() -> str:
    """``NST_CONV`` as set, ``auto`` when unset or blank (:func:`forced_path` checks it)."""
    return os.environ.get("NST_CONV", "auto").strip() or "auto"


def usable_paths() -> tuple[str, ...]:
    """The paths this process chooses from: all of them, less :data:`MEMORY_HUNGRY` under ``NST_TUNING=memory``
    (unless ``NST_CONV`` names one: what a user forces runs)."""
    if tuning.mode() != "memory":
        return PATHS
    forced = conv_setting()
    return tuple(path for path in PATHS if path not in MEMORY_HUNGRY or path == forced)


def candidates(x: torch.Tensor) -> tuple[str, ...]:
    """The paths that can run a float32 CPU convolution of ``x`` here (NNPACK's Winograd: not tiny)."""
    return tuple(path for path in usable_paths() if path != "winograd" or winograd.available(x))


def candidates_for(shape: Shape) -> tuple[str, ...]:
    """The paths for a float32 CPU convolution of ``shape``."""
    return candidates(torch.empty(1).expand(1, shape[0], shape[2], shape[3]))  # a view: no memory


def machine() -> dict[str, str]:
    """What decides which kernel wins: the CPU, its vector extensions, the threads, torch, and the paths to
    choose from where they are not all of them (``NST_TUNING=memory``)."""
    description = {**tuning.processor(), "threads": str(torch.get_num_threads()), "torch": torch.__version__}
    return {**description, **paths_described()}


def paths_described() -> dict[str, str]:
    """The machine description's entry for the paths: none where all are usable (the keys of before)."""
    usable = usable_paths()
    return {} if usable == PATHS else {"paths": " ".join(usable)}


def machine_key(description: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


def calibration_file() -> Path:
    """``NST_KERNELS_FILE``, or ``kernels.json`` in the pack's cache folder."""
    if os.environ.get("NST_KERNELS_FILE"):
        return Path(os.environ["NST_KERNELS_FILE"]).expanduser()
    return machine_choices_file("kernels.json")


_every_layer: ContextVar[str | None] = ContextVar("nst_every_layer", default=None)


@contextmanager
def every_layer(path: str | None) -> Iterator[None]:
    """Within the block, every convolution runs on ``path`` where it can (None: each layer's own choice)."""
    token = _every_layer.set(path)
    try:
        yield
    finally:
        _every_layer.reset(token)


def forced_path() -> str | None:
    """The path ``NST_CONV`` forces, else the one :func:`every_layer` sets, else None (each layer's
    choice); a ValueError names the choices."""
    value = conv_setting()
    if value not in CHOICES:
        raise ValueError(f"NST_CONV={value!r}: choose one of {', '.join(CHOICES)}")
    return _every_layer.get() if value == "auto" else value


def timed_shape(shape: Shape) -> Shape:
    """The shape a convolution is timed (and remembered) at: at most ``MAX_CALIBRATION_PIXELS``, the
    same channels. Larger images share the choice of their capped shape instead of re-timing it."""
    channels_in, channels_out, height, width = shape
    if height * width > MAX_CALIBRATION_PIXELS:
        height = min(height, int(MAX_CALIBRATION_PIXELS**0.5))
        width = min(width, MAX_CALIBRATION_PIXELS // height)
    return channels_in, channels_out, height, width


def shape_key(shape: Shape) -> str:
    return "{}>{}@{}x{}".format(*timed_shape(shape))


def time_paths(shape: Shape, paths: tuple[str, ...], rounds: int = 3, budget: float = 0.15) -> dict[str, float]:
    """Each path's fastest run on random data of :func:`timed_shape`, after a warm-up. The paths take
    turns, round after round (at least ``rounds``, up to 20 while under ``budget`` seconds), so a
    burst of other work on the machine slows them alike instead of deciding the choice."""
    channels_in, channels_out, height, width = timed_shape(shape)
    x = torch.randn(1, channels_in, height, width)
    weight = torch.randn(channels_out, channels_in, 3, 3) * 0.01
    best = {path: float("inf") for path in paths}
    with torch.no_grad():
        prepared = {path: KERNELS[path].prepare(weight, tuple(x.shape)) for path in paths}  # once per use, not timed
        for path in paths:
            KERNELS[path].run(x, prepared[path], None)
        spent, done = 0.0, 0
        while done < rounds or (spent < budget and done < 20):
            for path in paths:
                started = time.perf_counter()
                KERNELS[path].run(x, prepared[path], None)
                seconds = time.perf_counter() - started
                best[path] = min(best[path], seconds)
                spent += seconds
            done += 1
    return best


@dataclass
class Choice:
    path: str
    seconds: dict[str, float]  # what each candidate took when it was chosen ({} when forced)


def parse_choice(entry: object) -> Choice | None:
    """A stored choice, or None for an entry of the wrong shape (a damaged file must not fail a run). The
    winner is a kernel path for a convolution, a plan name (``bf16``, ``fp32 winograd``...) for a pass plan:
    it must be one of the candidates timed."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return None
    seconds = entry.get("seconds", {})
    if not isinstance(seconds, dict) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in seconds.values()
    ):
        return None
    if seconds and entry["path"] not in seconds:
        return None
    return Choice(entry["path"], dict(seconds))


def newest_machines(document: dict[str, Any]) -> dict[str, Any]:
    """The entries of the ``MACHINES_KEPT`` most recently saved machines, so the file cannot grow without bound."""

    def saved(item: tuple[str, Any]) -> float:
        value = item[1].get("saved") if isinstance(item[1], dict) else None
        return value if isinstance(value, (int, float)) else 0.0

    return dict(sorted(document.items(), key=saved, reverse=True)[:MACHINES_KEPT])


def is_choices_document(document: object) -> bool:
    """Whether a JSON document is a kernel choices file's: machine entries, one at least holding choices (the
    others may be damaged: they are repaired)."""
    return isinstance(document, dict) and any(
        isinstance(entry, dict) and "choices" in entry for entry in document.values()
    )


class KernelChooser:
    """Winners per convolution shape for this machine, timed on first use and kept in a JSON file.
    ``owned``: the file is the pack's own (a damaged one is rewritten); otherwise one that is not a choices
    file is left as it is."""

    def __init__(self, file: Path | None = None, owned: bool = True) -> None:
        self.file = file
        self.owned = owned
        self.description = machine()
        self.key = machine_key(self.description)
        self.choices: dict[str, Choice] = {}
        self.lock = threading.RLock()  # timing a pass chooses kernels inside a choice
        self.loaded = False
        self.forgotten = False  # the next save drops what the file holds for this machine
        self.warned = False

    def _warn(self, problem: str) -> None:
        """One warning line per chooser about its file."""
        if not self.warned:
            self.warned = True
            logger.warning("nst-nodes: kernel choices file %s %s", self.file, problem)

    def _unusable(self, problem: str) -> None:
        """Warn that the file cannot be used, and what follows."""
        if self.owned:
            self._warn(f"{problem}; kernels are timed again and the file rewritten")
        else:
            self._warn(f"{problem}; it is left as it is and the kernel choices are kept in memory")

    def _read(self) -> dict[str, Any] | None:
        """The file's document; {} when there is none, None (warned) when it cannot be used."""
        assert self.file is not None
        if not os.path.lexists(self.file):
            return {}
        try:
            with open_regular(self.file, "kernel choices") as file:
                text = file.read(MAX_FILE_BYTES + 1)
        except (FileRuleError, OSError) as error:
            self._warn(f"cannot be read ({error}); kernels are timed again")
            return None
        if len(text) > MAX_FILE_BYTES:
            self._unusable(f"is over {MAX_FILE_BYTES >> 20} MiB")
            return None
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
            document = None
        if not isinstance(document, dict) or not (self.owned or is_choices_document(document)):
            self._unusable("is not a kernel choices file (a JSON object of machines' choices)")
            return None
        return document

    def _stored(self, document: dict[str, Any]) -> dict[str, Choice]:
        """This machine's choices in the file's document; a damaged entry is a miss (warned)."""
        mine = document.get(self.key, {})
        stored = mine.get("choices", {}) if isinstance(mine, dict) else None
        if not isinstance(stored, dict):
            stored = {"": None}  # all of it damaged
        choices = {shape: choice for shape, entry in stored.items() if (choice := parse_choice(entry)) is not None}
        if len(choices) < len(stored):
            self._warn("has damaged entries; those kernels are timed again and the file rewritten")
        return choices

    def _load(self) -> None:
        self.loaded = True
        if self.file is not None:
            self.choices.update(self._stored(self._read() or {}))

    def _save(self) -> None:
        """Merge this machine's choices into the file: under a lock, re-read, add ours, replace
        atomically (worker processes of a batch calibrate side by side). Where another process
        stored a choice first, its choice wins and is adopted here, so that every process runs the
        same kernels and gives the same pixels (two workers timing one shape at the same time can
        disagree). A place that cannot be written keeps the choices in memory."""
        if self.file is None or not (self.owned or self._read() is not None):
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.file.with_name(self.file.name + ".lock"), "a") as lock:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                everything = self._read()
                if everything is None:
                    if not self.owned:
                        return
                    everything = {}
                stored = {} if self.forgotten else self._stored(everything)
                self.forgotten = False
                for shape, choice in self.choices.items():
                    if shape in stored:
                        self.choices[shape] = stored[shape]
                    else:
                        stored[shape] = choice
                everything[self.key] = {
                    "machine": self.description,
                    "saved": time.time(),
                    "choices": {
                        shape: {"path": choice.path, "seconds": choice.seconds} for shape, choice in stored.items()
                    },
                }
                text = json.dumps(newest_machines(everything), indent=1, sort_keys=True).encode()
                write_atomically(self.file, lambda file: file.write(text))
        except OSError as error:
            self._warn(f"cannot be written ({error.strerror or error}); kernel choices are kept in memory only")

    def choose(self, shape: Shape, paths: tuple[str, ...]) -> str:
        """The path among ``paths`` for a convolution of ``shape``: forced, remembered, or timed now."""
        forced = forced_path()
        if forced is not None:
            return forced if forced in paths else "direct"
        return self.measured(shape_key(shape), paths, lambda: time_paths(shape, paths))

    def measured(self, key: str, candidates: tuple[str, ...], time_them: Callable[[], dict[str, float]]) -> str:
        """The remembered winner for ``key`` among ``candidates``, or the fastest by ``time_them()``
        (seconds per candidate), remembered from now on."""
        with self.lock:
            if not self.loaded:
                self._load()
            choice = self.choices.get(key)
            if choice is None or choice.path not in candidates:
                seconds = time_them()
                choice = Choice(min(seconds, key=seconds.__getitem__), seconds)
                self.choices[key] = choice
                self._save()  # may adopt another process's choice, stored meanwhile
                if self.choices[key].path in candidates:
                    choice = self.choices[key]
                else:
                    self.choices[key] = choice
            return choice.path

    def forget(self) -> None:
        """Drop this machine's choices (``nst calibrate`` times everything again)."""
        with self.lock:
            self.loaded = True
            self.choices.clear()
            self.forgotten = True
            self._save()


_chooser: KernelChooser | None = None


def chooser() -> KernelChooser:
    """The process's chooser, on :func:`calibration_file`."""
    global _chooser
    if (
        _chooser is None
        or _chooser.file != calibration_file()
        or _chooser.description["threads"] != str(torch.get_num_threads())
        or _chooser.description.get("paths") != paths_described().get("paths")
    ):
        _chooser = KernelChooser(calibration_file(), owned=calibration_file() == cache_root() / "kernels.json")
    return _chooser


class _ConvContext(FunctionContext, Protocol):
    backward: tuple[str, torch.Tensor]


class _FrozenConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: _ConvContext,
        x: torch.Tensor,
        forward: tuple[str, torch.Tensor],
        backward: tuple[str, torch.Tensor],
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.backward = backward
        path, weight = forward
        return KERNELS[path].run(x, weight, bias)

    @staticmethod
    def backward(ctx: _ConvContext, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        path, transposed = ctx.backward
        return KERNELS[path].run(grad, transposed, None), None, None, None


_prepared: weakref.WeakKeyDictionary[nn.Conv2d, dict[tuple[str, bool], tuple[tuple[object, ...], torch.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def forget_prepared_weights() -> None:
    """Drop every prepared weight: after timing the pass plans, which prepare each candidate's, the
    passes that follow prepare only what their plan runs (up to 8x the weights otherwise stay alive)."""
    _prepared.clear()


def prepared_weight(conv: nn.Conv2d, path: str, gradient: bool, size: tuple[int, ...]) -> torch.Tensor:
    """``conv``'s weight as ``path`` runs it for inputs of ``size`` (``gradient``: the flipped, transposed
    kernel of the input gradient), made once and kept while the weight and the size stay the same: the
    weights are frozen, so reordering or transposing them at every pass (up to 9 MB a layer) is waste."""
    weight = conv.weight
    key = (path, gradient)
    identity = (weight.data_ptr(), weight._version, tuple(size))
    entries = _prepared.setdefault(conv, {})
    if key not in entries or entries[key][0] != identity:
        frozen = weight.detach()
        if gradient:
            frozen = frozen.transpose(0, 1).flip(2, 3)
        entries[key] = (identity, KERNELS[path].prepare(frozen.contiguous(), tuple(size)))
    return entries[key][1]


def frozen_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a frozen 3x3/stride 1/pad 1 convolution, differentiable in ``x`` only.

    float32 on the CPU: each direction on the path :func:`chooser` picked for it. bfloat16 (a
    reduced-precision pass): oneDNN, channels-last, weights cast once. Elsewhere: ``conv(x)``."""
    if x.dtype == torch.bfloat16 and not torch.is_autocast_enabled(x.device.type):
        bias = None if conv.bias is None else conv.bias.detach().to(x.dtype)
        return KERNELS["bf16"].run(x, prepared_weight(conv, "bf16", False, tuple(x.shape)), bias)
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return conv(x)
    bias = None if conv.bias is None else conv.bias.detach()
    picker, paths = chooser(), candidates(x)
    shape = (conv.weight.shape[1], conv.weight.shape[0], x.shape[-2], x.shape[-1])
    forward_path = picker.choose(shape, paths)
    forward = prepared_weight(conv, forward_path, False, tuple(x.shape))
    if not x.requires_grad:
        return KERNELS[forward_path].run(x, forward, bias)
    backward_path = picker.choose(input_gradient(shape), paths)
    output_size = (x.shape[0], conv.weight.shape[0], *x.shape[2:])
    backward = prepared_weight(conv, backward_path, True, output_size)
    return _FrozenConv3x3.apply(x, (forward_path, forward), (backward_path, backward), bias)
