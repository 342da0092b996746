"""Which file a node reads or writes.

Names are resolved in the host's folders. Where the host confines paths (ComfyUI, or
``nst run --confine``), a name that leaves its folder (absolute, or ``..`` out) is refused;
the check is on the path as written, so links the owner placed inside a folder still work.
Only regular files are opened (a FIFO or a device would hang or never end), and files are
written whole or not at all.

The pack's sample images answer to ``nst-samples/<file>`` in every host: ComfyUI gets copies
in its input folder (comfy.py), and elsewhere a name that is not found there falls back to
the copies shipped in ``nst_nodes/samples``, so the shipped graphs run from any directory.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .host import Host

SAMPLES_FOLDER = Path(__file__).resolve().parent / "samples"
SAMPLES_PREFIX = "nst-samples"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MAX_LISTED = 10_000
NAME_BYTES = 240  # a file name may have 255 bytes; the counter and extension take up to 15


class FileRuleError(ValueError):
    """A file name that breaks a rule (outside its folder, not a regular file, ...); says which and why."""


def cache_root() -> Path:
    """The pack's one cache folder (node results, kernel choices): ``$XDG_CACHE_HOME/nst-nodes``, else
    ``~/.cache/nst-nodes``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "nst-nodes"


def machine_choices_file(name: str) -> Path:
    """Where a per-machine choice (kernels.json, openmp.json) is remembered: beside ``NST_KERNELS_FILE`` where
    it is set, else in :func:`cache_root`."""
    if os.environ.get("NST_KERNELS_FILE"):
        return Path(os.environ["NST_KERNELS_FILE"]).expanduser().with_name(name)
    return cache_root() / name


def _clean(name: object, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise FileRuleError(f"{what}: no file name given")
    if "\x00" in name:
        raise FileRuleError(f"{what}: {name!r} contains a NUL character")
    return name


def _inside(folder: Path, name: str, what: str, kind: str) -> Path:
    base = os.path.abspath(folder)
    candidate = os.path.abspath(os.path.join(base, name))
    if os.path.isabs(name) or os.path.commonpath([base, candidate]) != base:
        raise FileRuleError(f"{what}: {name!r} is outside the {kind} folder; name a file inside {base}")
    return Path(candidate)


def _in_folder(host: Host, folder: Path, name: str, what: str, kind: str) -> Path:
    if host.confined:
        return _inside(folder, name, what, kind)
    return folder / Path(name).expanduser()  # an absolute name stays as it is


def sample_path(name: str) -> Path | None:
    """The shipped sample ``nst-samples/<file>`` names, or None."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if len(parts) == 2 and parts[0] == SAMPLES_PREFIX and (SAMPLES_FOLDER / parts[1]).is_file():
        return SAMPLES_FOLDER / parts[1]
    return None


def input_path(host: Host, name: object, what: str = "image") -> Path:
    """The file an input name refers to (not yet opened: see :func:`open_regular`)."""
    name = _clean(name, what)
    path = _in_folder(host, host.input_folder, name, what, "input")
    if not path.exists():
        return sample_path(name) or path
    return path


def input_pictures(host: Host, pattern: object, what: str) -> list[Path]:
    """The pictures of a folder or a glob of the input folder, sorted by name; ``nst-samples/<glob>`` falls
    back to the pack's samples, like a single name."""
    pattern = _clean(pattern, what)
    pictures = _pictures(_in_folder(host, host.input_folder, pattern, what, "input"))
    parts = PurePosixPath(pattern.replace("\\", "/")).parts
    if not pictures and len(parts) == 2 and parts[0] == SAMPLES_PREFIX:
        pictures = _pictures(SAMPLES_FOLDER / parts[1])
    return pictures


def _pictures(source: Path) -> list[Path]:
    candidates = source.iterdir() if source.is_dir() else map(Path, glob.glob(str(source)))
    return sorted(path for path in candidates if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file())


def open_regular(path: Path, what: str = "image") -> BinaryIO:
    """Open a file for reading if it is a regular file; a clear :class:`FileRuleError` otherwise."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileRuleError(f"{what}: file not found: {path}") from None
    except OSError as error:
        raise FileRuleError(f"{what}: cannot open {path}: {error.strerror or error}") from None
    mode = os.fstat(handle).st_mode
    if not stat.S_ISREG(mode):
        os.close(handle)
        kind = "folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device or socket"
        raise FileRuleError(f"{what}: {path} is a {kind}, not a file")
    return os.fdopen(handle, "rb")


def file_sha256(path: Path, what: str = "file") -> str:
    """The content hash of a regular file, so cached results follow a file's bytes rather than its name."""
    digest = hashlib.sha256()
    with open_regular(path, what) as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_stem(host: Host, prefix: object) -> Path:
    """Folder and name stem for ``prefix`` (``nst/result`` -> <output folder>/nst/result)."""
    return _stem(host.output_folder, host, prefix, "output")


def models_stem(host: Host, prefix: object) -> Path:
    """The same in the models folder (``nst/starry`` -> <models folder>/nst/starry)."""
    return _stem(host.models_folder, host, prefix, "models")


def model_path(host: Host, name: object, what: str) -> Path:
    """A file of the models folder (not yet opened: see :func:`open_regular`)."""
    return _in_folder(host, host.models_folder, _clean(name, what), what, "models")


def _stem(folder: Path, host: Host, prefix: object, kind: str) -> Path:
    prefix = _clean(prefix, "filename_prefix")
    if prefix.endswith(("/", "\\")) or PurePosixPath(prefix.replace("\\", "/")).name in ("", ".", ".."):
        raise FileRuleError(f"filename_prefix: {prefix!r} must end in a file name, e.g. 'nst/result'")
    stem = _in_folder(host, folder, prefix, "filename_prefix", kind)
    if len(os.fsencode(stem.name)) > NAME_BYTES:
        raise FileRuleError(
            f"filename_prefix: the file name {stem.name[:40]!r}... is too long; "
            f"use at most {NAME_BYTES} bytes after the last '/'"
        )
    return stem


def check_writable(folder: Path, what: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written: the first part of its
    path that exists must be a folder where this process can create a file (tried, then removed)."""
    existing = folder
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise FileRuleError(f"{what}: {existing} is a file, so the folder {folder} cannot be made there")
    refused = f"{what}: the folder {existing} is not writable; choose another output folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FileRuleError(refused)
    probe = existing / f".nst-probe.{secrets.token_hex(6)}.writing"  # os.access says yes to root, even in /proc
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise FileRuleError(f"{refused} ({error.strerror or error})") from None
    probe.unlink(missing_ok=True)


def check_target(path: Path, what: str, folder: bool = False) -> None:
    """Refuse a name already taken by something a save cannot replace: a folder where a file goes, a file where
    a folder of frames goes, a device or a pipe (checked before any work)."""
    if not os.path.lexists(path) or (path.is_dir() if folder else path.is_file()):
        return
    found = "a folder" if path.is_dir() else "a file" if path.is_file() else "not a regular file"
    raise FileRuleError(
        f"{what}: {path} is {found}, where a {'folder of frames' if folder else 'file'} is to be written; "
        "remove it or choose another name"
    )


def output_paths(stem: Path, extension: str, overwrite: bool, count: int = 1) -> list[Path]:
    """Where a batch of ``count`` images goes.

    ``overwrite``: ``stem.ext`` (``stem_00.ext``, ``stem_01.ext``, ... for a batch), replaced each
    time. Otherwise ComfyUI's numbering: ``stem_00001_.ext`` and on, after the highest number there
    (:func:`write_atomically` moves on to the next number if another writer took one meanwhile).
    """
    if overwrite:
        names = (
            [f"{stem.name}.{extension}"] if count == 1 else [f"{stem.name}_{i:02d}.{extension}" for i in range(count)]
        )
        return [stem.with_name(name) for name in names]
    pattern = re.compile(re.escape(stem.name) + r"_(\d{5,})_\." + re.escape(extension))
    try:
        numbers = [int(m.group(1)) for entry in os.scandir(stem.parent) if (m := pattern.fullmatch(entry.name))]
    except (FileNotFoundError, NotADirectoryError):
        numbers = []
    first = max(numbers, default=0) + 1
    return [stem.with_name(f"{stem.name}_{first + i:05d}_.{extension}") for i in range(count)]


def write_atomically(path: Path, write: Callable[[BinaryIO], object], overwrite: bool = True) -> Path:
    """Create ``path``'s folder and write it through a temporary file, so it appears whole or not at all.

    Without ``overwrite`` the name is claimed exclusively: a numbered name (``x_00007_.png``) that
    another writer took meanwhile moves on to the next number. Returns the path written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.writing")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any file
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        if not overwrite:
            path = _claim(path)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _claim(path: Path) -> Path:
    """Create ``path`` empty if it does not exist yet, else the next free numbered name."""
    match = re.fullmatch(r"(.*)_(\d{5,})_(\.\w+)", path.name)
    number = int(match.group(2)) if match else 0
    while True:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            if match is None:
                raise
            number += 1
            path = path.with_name(f"{match.group(1)}_{number:05d}_{match.group(3)}")


def image_names(folder: Path) -> list[str]:
    """Image files under ``folder`` as ``sub/name.png`` names, sorted (what ComfyUI's picker offers)."""
    return file_names(folder, IMAGE_EXTENSIONS)


def file_names(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Files under ``folder`` with one of ``extensions``, as sorted ``sub/name.ext`` names (hidden ones left out)."""
    names: list[str] = []
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        relative = Path(root).relative_to(folder)
        names += [(relative / f).as_posix() for f in files if f.lower().endswith(extensions) and not f.startswith(".")]
        if len(names) >= MAX_LISTED:
            break
    return sorted(names)[:MAX_LISTED]
