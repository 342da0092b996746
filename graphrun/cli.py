"""The ``nst`` command: run, validate and list nodes; inspect and clear the cache."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from graphrun.cache import DEFAULT_DISK_BYTES, DEFAULT_MEMORY_BYTES, Cache, default_cache_dir
from graphrun.execute import NodeExecutionError, RunInterrupted, run
from graphrun.graph import Graph, GraphFormatError, load_graph, with_overrides
from graphrun.host import DEVICES, Folders
from graphrun.progress import ConsoleBatchReporter, ConsoleReporter
from graphrun.registry import Registry, default_registry
from graphrun.spec import node_spec
from graphrun.tuning import MODES, configure_process
from graphrun.validate import GraphValidationError, validate

EXIT_FAILED, EXIT_INVALID = 1, 2
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


def _parser(extra: list[str] = ()) -> argparse.ArgumentParser:
    epilog = f"node packs add: {', '.join(extra)} (nst NAME --help)" if extra else None
    parser = argparse.ArgumentParser(prog="nst", description=__doc__, epilog=epilog)
    commands = parser.add_subparsers(dest="command", required=True)

    run_command = commands.add_parser("run", help="validate and run a graph")
    _add_graph_arguments(run_command)
    run_command.add_argument("--device", choices=DEVICES, default="auto")
    run_command.add_argument("--recompute", type=_id_list, default=[], metavar="ID,...",
                             help="ignore cached results of these nodes and their descendants")
    run_command.add_argument("--cache-dir", type=Path, default=None, help=f"default {default_cache_dir()}")
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
    run_command.add_argument("--tuning", choices=MODES, default=None,
                             help="process settings: speed (default), memory (lower peak RSS, 30-40%% slower) "
                                  "or off; default NST_TUNING or speed (see graphrun/tuning.py)")

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
                               help=f"the shared node cache (default {default_cache_dir()}); workers must see it")
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


def object_info(registry: Registry) -> dict[str, Any]:
    """ComfyUI's /object_info shape: one entry per class with its declared metadata."""
    info = {}
    for name, node_class in sorted(registry.classes.items()):
        spec = node_spec(node_class)
        declared = node_class.INPUT_TYPES()
        info[name] = {
            "input": declared,
            "input_order": {section: list(declared.get(section, {})) for section in ("required", "optional")},
            "output": list(spec.return_types),
            "output_name": list(spec.return_names),
            "output_is_list": [False] * len(spec.return_types),
            "output_tooltips": list(getattr(node_class, "OUTPUT_TOOLTIPS", ())),
            "name": name,
            "display_name": registry.display_name(name),
            "description": getattr(node_class, "DESCRIPTION", ""),
            "category": getattr(node_class, "CATEGORY", ""),
            "output_node": spec.output_node,
            "python_module": node_class.__module__,
        }
    return json.loads(json.dumps(info, default=str))


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
    """First Ctrl-C or SIGTERM: ask the run to stop after the current step. Second: abort at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
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
            raise KeyboardInterrupt
        self.signal = number
        self.event.set()
        print(f"\n{SIGNAL_NAMES[number]}: stopping after the current step; the result so far will be saved "
              "(press Ctrl-C again to abort at once)", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    reporter = ConsoleReporter(preview_path=args.preview, preview_seconds=args.preview_every, quiet=args.quiet)
    with _StopOnSignal() as stop:
        try:
            results = run(
                _load(args),
                device=args.device,
                outputs=args.only,
                cache=Cache(cache_dir, memory_bytes=args.memory_cache, disk_bytes=args.disk_cache),
                recompute=args.recompute,
                reporter=reporter,
                interrupt=stop.event,
                folders=_folders(args),
            )
        except GraphValidationError as error:
            return _report_invalid(error, args.json)
        except RunInterrupted as error:
            name = SIGNAL_NAMES.get(stop.signal or signal.SIGINT, "stop request")
            print(f"stopped by {name}: {error}; finished results stay cached", file=sys.stderr)
            return EXIT_CODES.get(stop.signal or signal.SIGINT, 130)
        except NodeExecutionError as error:
            if os.environ.get("NST_DEBUG"):
                traceback.print_exception(error.__cause__ or error)
            if args.json:
                print(json.dumps({"error": {"type": "execution_error", "message": str(error), "node_id": error.node_id,
                                            "node_type": error.class_type}, "node_errors": {}}, indent=2))
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print(f"aborted by {SIGNAL_NAMES.get(stop.signal or signal.SIGINT)}; finished results stay cached",
                  file=sys.stderr)
            return EXIT_CODES.get(stop.signal or signal.SIGINT, 130)
    if not args.quiet:
        for node_id, outputs in results.items():
            if outputs:
                print(f"output {node_id}: {', '.join(_describe(value) for value in outputs)}")
    return 0


def _batch(args: argparse.Namespace) -> int:
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
    with _StopOnSignal() as stop:
        try:
            result = run_batch(
                _load(args), overs, grid=args.grid, chain=chain, scheduler=args.scheduler, workers=args.workers,
                threads=args.threads, cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
                folders=_folders(args), device=args.device, reporter=reporter, stop=stop.event,
            )
        except BatchError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
        except KeyboardInterrupt:
            print("aborted; finished nodes stay cached", file=sys.stderr)
            return EXIT_CODES.get(stop.signal or signal.SIGINT, 130)
    print(result.summary(), file=sys.stderr)
    if stop.signal is not None:
        return EXIT_CODES[stop.signal]
    return EXIT_FAILED if result.failed else 0


def _validate(args: argparse.Namespace) -> int:
    graph = _load(args)
    errors = validate(graph, default_registry(), args.only, folders=_folders(args))
    if errors:
        return _report_invalid(GraphValidationError(errors, graph.source), args.json)
    print(json.dumps({"error": None, "node_errors": {}}) if args.json else f"{graph.source}: valid")
    return 0


def _cache(args: argparse.Namespace) -> int:
    cache = Cache(args.cache_dir or default_cache_dir())
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
            print(f"{len(found.leftovers)} leftovers (unfinished writes, broken entries); `nst cache clear` removes them")
    if found.foreign:
        print(f"{len(found.foreign)} files that are not the cache's (e.g. {found.foreign[0]}) were left alone")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return EXIT_FAILED if problems else 0


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"tensor{list(shape)}" if shape is not None else repr(value)[:200]


def pack_commands() -> dict[str, Any]:
    """Commands that node packs add to ``nst`` (entry point group ``nst_nodes.commands``: name -> ``main(argv) -> int``)."""
    from importlib import metadata

    return {entry.name: entry for entry in metadata.entry_points(group="nst_nodes.commands")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = pack_commands()
    if argv and argv[0] in extra:
        try:
            return extra[argv[0]].load()(argv[1:])
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
    args = _parser(sorted(extra)).parse_args(argv)
    try:
        if args.command == "run":
            try:
                configure_process(args.tuning)
            except ValueError as error:  # a bad NST_TUNING; the flag itself is checked by argparse
                print(f"error: NST_TUNING: {error}", file=sys.stderr)
                return EXIT_INVALID
            return _run(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "batch":
            configure_process()
            return _batch(args)
        if args.command == "nodes":
            registry = default_registry()
            if args.json:
                print(json.dumps(object_info(registry), indent=2))
            else:
                _print_nodes(registry)
            return 0
        return _cache(args)
    except GraphFormatError as error:
        return _report_format_error(error, getattr(args, "json", False))
    except BrokenPipeError:  # `nst nodes | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as error:  # the last line of defence: a message, never a traceback
        if os.environ.get("NST_DEBUG"):
            raise
        print(f"error: unexpected {type(error).__name__}: {error} (NST_DEBUG=1 shows where)", file=sys.stderr)
        return EXIT_FAILED
