"""The command line: run, validate and batch graphs, list nodes, inspect and clear the cache.

An application passes its :class:`~graphrun.app.App` to :func:`main` (its name, cache folder and
process settings); pack commands come from the entry point group ``graphrun.commands``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import traceback
from functools import partial
from pathlib import Path
from typing import Any

from graphrun.app import App
from graphrun.cache import DEFAULT_DISK_BYTES, DEFAULT_MEMORY_BYTES, Cache
from graphrun.execute import NodeExecutionError, RunInterrupted
from graphrun.executors.local import run
from graphrun.graph import Graph, GraphFormatError, load_graph, with_overrides
from graphrun.host import DEVICES, Folders
from graphrun.console import ConsoleBatchReporter, ConsoleReporter
from graphrun.registry import Registry, default_registry, object_info
from graphrun.spec import node_spec
from graphrun.validate import GraphValidationError, validate

EXIT_FAILED, EXIT_INVALID = 1, 2
COMMAND_GROUP = "graphrun.commands"
DEBUG_VARIABLE = "GRAPHRUN_DEBUG"
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


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


def _preview_path(text: str) -> Path:
    path = Path(text).expanduser()
    if path.suffix.lower() not in PREVIEW_FORMATS or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not an image file name (end it in one of {', '.join(PREVIEW_FORMATS)})")
    return path


def _add_graph_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("graph", type=Path, help="an API prompt or an editor workflow (JSON)")
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="ID.INPUT=VALUE",
                         help="replace a constant input (VALUE is parsed as JSON, else taken as a string)")
    command.add_argument("--only", type=_id_list, metavar="ID,...", help="run only what these nodes need")
    command.add_argument("--json", action="store_true", help="errors as JSON on stdout (validation: ComfyUI's node_errors)")
    command.add_argument("--input-dir", type=Path, default=Path("."),
                         help="where relative image names are read from (default: the current directory)")
    command.add_argument("--output-dir", type=Path, default=Path("output"),
                         help="where file name prefixes are written (default: ./output)")
    command.add_argument("--confine", action="store_true",
                         help="refuse paths outside --input-dir / --output-dir, as ComfyUI does")


def _parser(app: App, extra: list[str]) -> argparse.ArgumentParser:
    epilog = f"node packs add: {', '.join(extra)} ({app.prog} NAME --help)" if extra else None
    parser = argparse.ArgumentParser(prog=app.prog, description=app.description, epilog=epilog)
    commands = parser.add_subparsers(dest="command", required=True)

    run_command = commands.add_parser("run", help="validate and run a graph")
    _add_graph_arguments(run_command)
    run_command.add_argument("--device", choices=DEVICES, default="auto")
    run_command.add_argument("--recompute", type=_id_list, default=[], metavar="ID,...",
                             help="ignore cached results of these nodes and their descendants")
    run_command.add_argument("--cache-dir", type=Path, default=None, help=f"default {app.cache_dir()}")
    run_command.add_argument("--no-cache", action="store_true", help="keep results in memory only")
    run_command.add_argument("--memory-cache", type=_byte_size, default=DEFAULT_MEMORY_BYTES, metavar="SIZE",
                             help="results kept in memory across the run, least recently used out first (default 2GiB)")
    run_command.add_argument("--disk-cache", type=_byte_size, default=DEFAULT_DISK_BYTES, metavar="SIZE",
                             help="size of the disk cache, oldest entries out first (default 20GiB)")
    run_command.add_argument("--preview", type=_preview_path, default=None, metavar="PATH",
                             help="write the running optimizer's current image here (e.g. preview.png)")
    run_command.add_argument("--preview-every", type=float, default=1.0, metavar="SECONDS",
                             help="at most one preview per this many seconds (default 1)")
    run_command.add_argument("--quiet", action="store_true", help="print nothing but errors (--preview still writes)")
    if app.process_modes:
        run_command.add_argument("--tuning", choices=app.process_modes, default=None,
                                 help=f"process settings, one of {', '.join(app.process_modes)} (see the docs)")

    batch_command = commands.add_parser(
        "batch", help="run a graph over many inputs (a batch, a sweep, video frames) on Dask",
        description="Items are the graph with swept inputs replaced; nodes identical across items run once. "
                    "Text inputs may name {index}, {stem} (a swept file's name) or a swept input "
                    "({ID.INPUT} or {INPUT}), e.g. --set 18.filename_prefix=out/{stem}.")
    _add_graph_arguments(batch_command)
    batch_command.add_argument("--over", action="append", default=[], metavar="ID.INPUT=VALUES",
                               help="sweep an input over a glob of files, START:STOP[:STEP] (inclusive) or a comma list")
    batch_command.add_argument("--grid", action="store_true",
                               help="every combination of the --over lists (default: zip them)")
    batch_command.add_argument("--chain", metavar="ID.INPUT=SOURCE_ID[:INDEX]",
                               help="item i's input reads item i-1's output (video: start each frame from the last)")
    batch_command.add_argument("--scheduler", metavar="ADDRESS",
                               help="join this Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of starting workers")
    batch_command.add_argument("--workers", type=int, default=1,
                               help="local worker processes (default 1); each runs one node at a time")
    batch_command.add_argument("--threads", type=int, default=None,
                               help="torch threads per running node (default: the cores shared between the workers)")
    batch_command.add_argument("--device", choices=DEVICES, default="auto")
    batch_command.add_argument("--cache-dir", type=Path, default=None,
                               help=f"the shared node cache (default {app.cache_dir()}); workers must see it")
    batch_command.add_argument("--no-cache", action="store_true", help="no disk cache (a stopped batch starts over)")
    batch_command.add_argument("--quiet", action="store_true", help="print nothing but errors and the summary")

    validate_command = commands.add_parser("validate", help="check a graph without running it")
    _add_graph_arguments(validate_command)

    nodes_command = commands.add_parser("nodes", help="list node classes, their inputs and outputs")
    nodes_command.add_argument("--json", action="store_true", help="a ComfyUI /object_info document")

    cache_command = commands.add_parser("cache", help="show or empty the disk cache")
    cache_command.add_argument("action", choices=("info", "clear"))
    cache_command.add_argument("--cache-dir", type=Path, default=None)
    return parser


def _print_nodes(registry: Registry) -> None:
    for name, node_class in sorted(registry.classes.items()):
        spec = node_spec(node_class)
        print(f"{name}  [{getattr(node_class, 'CATEGORY', '')}]{'  (output node)' if spec.output_node else ''}")
        description = getattr(node_class, "DESCRIPTION", "")
        if description:
            print(f"    {description}")
        for input_spec in spec.inputs.values():
            kind = f"one of {list(input_spec.choices)}" if input_spec.choices else input_spec.type
            options = {k: v for k, v in input_spec.options.items() if k in ("default", "min", "max")}
            optional = "" if input_spec.required else " (optional)"
            print(f"    in  {input_spec.name}: {kind}{optional}{' ' + str(options) if options else ''}")
        for index, (kind, label) in enumerate(zip(spec.return_types, spec.return_names)):
            print(f"    out {index} {label}: {kind}")


def _report_invalid(error: GraphValidationError, as_json: bool) -> int:
    print(json.dumps(error.to_comfy(), indent=2) if as_json else error.report(), file=sys.stdout if as_json else sys.stderr)
    return EXIT_INVALID


def _report_format_error(error: GraphFormatError, as_json: bool) -> int:
    if as_json:
        report = {"error": {"type": "invalid_prompt", "message": str(error), "details": "", "extra_info": {}},
                  "node_errors": {}}
        print(json.dumps(report, indent=2))
    else:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_INVALID


def _folders(args: argparse.Namespace) -> Folders:
    return Folders(args.input_dir, args.output_dir, args.confine)


def _load(args: argparse.Namespace) -> Graph:
    graph = load_graph(args.graph)
    return with_overrides(graph, args.overrides) if args.overrides else graph


class _StopOnSignal:
    """First Ctrl-C or SIGTERM: ask the run to stop after the current step (the one stop path). Second:
    set ``abort`` if one is given (a batch stops waiting and reports), else abort at once."""

    def __init__(self, abort: threading.Event | None = None) -> None:
        self.event = threading.Event()
        self.abort = abort
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        for number in EXIT_CODES:
            self.previous[number] = signal.signal(number, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def handle(self, number: int, frame: Any) -> None:
        if self.event.is_set():
            if self.abort is None:
                raise KeyboardInterrupt
            self.abort.set()
            print(f"\n{SIGNAL_NAMES[number]} again: not waiting for running nodes; finished results stay cached",
                  file=sys.stderr)
            return
        self.signal = number
        self.event.set()
        print(f"\n{SIGNAL_NAMES[number]}: stopping after the current step; the result so far will be saved "
              "(press Ctrl-C again to abort at once)", file=sys.stderr)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal or signal.SIGINT, 130)


def _cache_dir(args: argparse.Namespace, app: App) -> Path | None:
    return None if args.no_cache else (args.cache_dir or app.cache_dir())


def _run(args: argparse.Namespace, app: App) -> int:
    reporter = ConsoleReporter(preview_path=args.preview, preview_seconds=args.preview_every, quiet=args.quiet)
    with _StopOnSignal() as stop:
        try:
            results = run(
                _load(args),
                device=args.device,
                outputs=args.only,
                cache=Cache(_cache_dir(args, app), memory_bytes=args.memory_cache, disk_bytes=args.disk_cache),
                recompute=args.recompute,
                reporter=reporter,
                stop=stop.event,
                folders=_folders(args),
            )
        except GraphValidationError as error:
            return _report_invalid(error, args.json)
        except RunInterrupted as error:
            name = SIGNAL_NAMES.get(stop.signal or signal.SIGINT, "stop request")
            print(f"stopped by {name}: {error}; finished results stay cached", file=sys.stderr)
            return stop.exit_code
        except NodeExecutionError as error:
            if os.environ.get(DEBUG_VARIABLE):
                traceback.print_exception(error.__cause__ or error)
            if args.json:
                print(json.dumps({"error": {"type": "execution_error", "message": str(error), "node_id": error.node_id,
                                            "node_type": error.class_type}, "node_errors": {}}, indent=2))
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print(f"aborted by {SIGNAL_NAMES.get(stop.signal or signal.SIGINT)}; finished results stay cached",
                  file=sys.stderr)
            return stop.exit_code
    if not args.quiet:
        for node_id, outputs in results.items():
            if outputs:
                print(f"output {node_id}: {', '.join(_describe(value) for value in outputs)}")
    return 0


def _batch(args: argparse.Namespace, app: App) -> int:
    from graphrun.batch import BatchError, batch_items, parse_chain, parse_over, run_batch

    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        print("error: --workers and --threads must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    try:
        overs = [parse_over(text, args.input_dir) for text in args.over]
        chain = parse_chain(args.chain) if args.chain else None
        total = len(batch_items(overs, args.grid))
    except BatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    reporter = ConsoleBatchReporter(total, quiet=args.quiet)
    abort = threading.Event()
    hook = partial(app.configure_process, None) if app.configure_process is not None else None
    with _StopOnSignal(abort) as stop:
        try:
            result = run_batch(
                _load(args), overs, grid=args.grid, chain=chain, scheduler=args.scheduler, workers=args.workers,
                threads=args.threads, cache_dir=_cache_dir(args, app), folders=_folders(args), device=args.device,
                reporter=reporter, stop=stop.event, abort=abort, worker_hook=hook,
                worker_environment=app.worker_environment,
            )
        except BatchError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
    print(result.summary(), file=sys.stderr)
    if stop.signal is not None:
        return stop.exit_code
    return EXIT_FAILED if result.failed else 0


def _validate(args: argparse.Namespace) -> int:
    graph = _load(args)
    errors = validate(graph, default_registry(), args.only, folders=_folders(args))
    if errors:
        return _report_invalid(GraphValidationError(errors, graph.source), args.json)
    print(json.dumps({"error": None, "node_errors": {}}) if args.json else f"{graph.source}: valid")
    return 0


def _cache(args: argparse.Namespace, app: App) -> int:
    cache = Cache(args.cache_dir or app.cache_dir())
    if cache.directory is not None and cache.directory.exists() and not cache.directory.is_dir():
        print(f"error: {cache.directory} is not a directory", file=sys.stderr)
        return EXIT_INVALID
    found = cache.scan()
    if args.action == "clear":
        entries, leftovers, problems = cache.clear()
        print(f"removed {entries} entries and {leftovers} leftovers from {cache.directory}")
    else:
        problems = found.problems
        print(f"{cache.directory}: {len(found.entries)} entries, {found.entry_bytes / 2**20:.1f} MiB "
              f"(kept within {cache.disk_bytes / 2**30:.0f} GiB, oldest out first)")
        if found.leftovers:
            print(f"{len(found.leftovers)} leftovers (unfinished writes, broken entries); `cache clear` removes them")
    if found.foreign:
        print(f"{len(found.foreign)} files that are not the cache's (e.g. {found.foreign[0]}) were left alone")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else 0


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"tensor{list(shape)}" if shape is not None else repr(value)[:200]


def pack_commands() -> dict[str, Any]:
    """Commands that node packs add (entry point group ``graphrun.commands``: name -> ``main(argv) -> int``)."""
    from importlib import metadata

    return {entry.name: entry for entry in metadata.entry_points(group=COMMAND_GROUP)}


def main(argv: list[str] | None = None, app: App | None = None) -> int:
    app = app or App()
    argv = sys.argv[1:] if argv is None else argv
    extra = pack_commands()
    if argv and argv[0] in extra:
        try:
            return int(extra[argv[0]].load()(argv[1:]))
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
    args = _parser(app, sorted(extra)).parse_args(argv)
    try:
        if args.command in ("run", "batch") and app.configure_process is not None:
            try:
                app.configure_process(getattr(args, "tuning", None))
            except ValueError as error:  # a bad setting in the environment; the flag itself is checked by argparse
                print(f"error: {error}", file=sys.stderr)
                return EXIT_INVALID
        if args.command == "run":
            return _run(args, app)
        if args.command == "validate":
            return _validate(args)
        if args.command == "batch":
            return _batch(args, app)
        if args.command == "nodes":
            registry = default_registry()
            if args.json:
                print(json.dumps(object_info(registry), indent=2))
            else:
                _print_nodes(registry)
            return 0
        return _cache(args, app)
    except GraphFormatError as error:
        return _report_format_error(error, getattr(args, "json", False))
    except BrokenPipeError:  # `... nodes | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence: a message, never a traceback
        if os.environ.get(DEBUG_VARIABLE):
            raise
        print(f"error: unexpected {type(error).__name__}: {error} ({DEBUG_VARIABLE}=1 shows where)", file=sys.stderr)
        return EXIT_FAILED
