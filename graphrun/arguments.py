"""The command line's arguments: one parser per command, and the types of their values."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from graphrun.app import App
from graphrun.cache import DEFAULT_DISK_BYTES
from graphrun.host import DEVICE_HELP, DEVICES


def _id_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _byte_size(text: str) -> int:
    """``2GiB``, ``512MB``, ``1e9`` or ``0`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    try:
        number = float(match.group(1)) if match else -1.0
    except ValueError:
        number = -1.0
    if not match or not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2GiB, 512MB or 0")
    power = "kmgt".find(match.group(2).lower()) + 1
    return int(number * (1024 if match.group(3) or power == 0 else 1000) ** power)


PREVIEW_FORMATS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def at_least_one(text: str) -> int:
    """An argparse type: a whole number of at least 1 (workers, threads, frames)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def _preview_path(text: str) -> Path:
    path = Path(text).expanduser()
    if path.suffix.lower() not in PREVIEW_FORMATS or path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a picture file name (end it in one of {', '.join(PREVIEW_FORMATS)})"
        )
    return path


def _add_json_errors(command: argparse.ArgumentParser) -> None:
    """For one graph's run or validation (a batch reports its items in its summary)."""
    command.add_argument(
        "--json", action="store_true", help="errors as JSON on stdout (validation: ComfyUI's node_errors)"
    )


def _add_graph_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("graph", type=Path, help="an API prompt or an editor workflow (JSON)")
    command.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="ID.INPUT=VALUE",
        help="replace a constant input (VALUE is parsed as JSON, else taken as a string)",
    )
    command.add_argument("--only", type=_id_list, metavar="ID,...", help="run only what these nodes need")
    command.add_argument(
        "--input-dir",
        type=Path,
        default=Path("."),
        help="where relative input file names are read from (default: the current directory)",
    )
    command.add_argument(
        "--output-dir",
        type=Path,
        default=Path("output"),
        help="where file name prefixes are written (default: ./output)",
    )
    command.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="where trained models are saved and loaded (default: ./models)",
    )
    command.add_argument(
        "--confine",
        action="store_true",
        help="refuse paths outside --input-dir / --output-dir / --models-dir, as ComfyUI does",
    )


def _add_recompute(command: argparse.ArgumentParser, where: str = "") -> None:
    command.add_argument(
        "--recompute",
        type=_id_list,
        default=[],
        metavar="ID,...",
        help=f"ignore cached results of these nodes and their descendants{where}",
    )


def parser(app: App, extra: list[str]) -> argparse.ArgumentParser:
    epilog = f"node packs add: {', '.join(extra)} ({app.prog} NAME --help)" if extra else None
    parser = argparse.ArgumentParser(prog=app.prog, description=app.description, epilog=epilog)
    commands = parser.add_subparsers(dest="command", required=True)

    run_command = commands.add_parser("run", help="validate and run a graph")
    _add_graph_arguments(run_command)
    _add_json_errors(run_command)
    run_command.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    _add_recompute(run_command)
    run_command.add_argument("--cache-dir", type=Path, default=None, help=f"default {app.cache_dir()}")
    run_command.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the disk cache (a result lives while the run needs it)",
    )
    run_command.add_argument(
        "--disk-cache",
        type=_byte_size,
        default=DEFAULT_DISK_BYTES,
        metavar="SIZE",
        help="size of the disk cache, oldest entries out first (default 20GiB)",
    )
    run_command.add_argument(
        "--preview",
        type=_preview_path,
        default=None,
        metavar="PATH",
        help="write the running node's preview here (e.g. preview.png)",
    )
    run_command.add_argument(
        "--preview-every",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="at most one preview per this many seconds (default 1)",
    )
    run_command.add_argument("--quiet", action="store_true", help="print nothing but errors (--preview still writes)")
    if app.process_modes:
        run_command.add_argument(
            "--tuning",
            choices=app.process_modes,
            default=None,
            help=f"process settings, one of {', '.join(app.process_modes)} (see the docs)",
        )

    batch_command = commands.add_parser(
        "batch",
        help="run a graph over many inputs (a batch, a sweep, video frames) on Dask",
        description="Items are the graph with swept inputs replaced; nodes identical across items run once. "
        "Text inputs may name {index}, {stem} (a swept file's name) or a swept input "
        "({ID.INPUT} or {INPUT}), e.g. --set 18.filename_prefix=out/{stem}.",
    )
    _add_graph_arguments(batch_command)
    batch_command.add_argument(
        "--over",
        action="append",
        default=[],
        metavar="ID.INPUT=VALUES",
        help="sweep an input over a glob of files, START:STOP[:STEP] (inclusive) or a comma list",
    )
    batch_command.add_argument(
        "--grid", action="store_true", help="every combination of the --over lists (default: zip them)"
    )
    batch_command.add_argument(
        "--chain",
        metavar="ID.INPUT=SOURCE_ID[:INDEX]",
        help="item i's input reads item i-1's output (video: start each frame from the last)",
    )
    where = batch_command.add_mutually_exclusive_group()  # workers started here, or a cluster's
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="join this Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of starting workers",
    )
    where.add_argument(
        "--workers",
        type=at_least_one,
        default=1,
        help="local worker processes (default 1); each runs one node at a time",
    )
    batch_command.add_argument(
        "--threads",
        type=at_least_one,
        default=None,
        help="torch threads per running node (default: the cores shared between the workers)",
    )
    batch_command.add_argument("--device", choices=DEVICES, default="auto", help=DEVICE_HELP)
    _add_recompute(batch_command, " (in every item)")
    batch_command.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"the shared node cache (default {app.cache_dir()}); workers must see it",
    )
    batch_command.add_argument("--no-cache", action="store_true", help="no disk cache (a stopped batch starts over)")
    batch_command.add_argument("--quiet", action="store_true", help="print nothing but errors and the summary")

    validate_command = commands.add_parser("validate", help="check a graph without running it")
    _add_graph_arguments(validate_command)
    _add_json_errors(validate_command)

    nodes_command = commands.add_parser("nodes", help="list node classes, their inputs and outputs")
    nodes_command.add_argument("--json", action="store_true", help="a ComfyUI /object_info document")

    cache_command = commands.add_parser("cache", help="show or empty the disk cache")
    cache_command.add_argument(
        "action", choices=("info", "clear"), help="info: what it holds; clear: remove its entries (nothing else)"
    )
    cache_command.add_argument("--cache-dir", type=Path, default=None, help=f"default {app.cache_dir()}")
    return parser
