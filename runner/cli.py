"""The ``nst`` command: run, validate and list nodes; inspect and clear the cache."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from runner.cache import Cache, default_cache_dir
from runner.context import DEVICES
from runner.execute import NodeExecutionError, RunInterrupted, SilentReporter, run
from runner.graph import GraphFormatError, load_graph, with_overrides
from runner.progress import ConsoleReporter
from runner.registry import Registry, default_registry
from runner.spec import node_spec
from runner.tuning import MODES, configure_process
from runner.validate import GraphValidationError, validate

EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 1, 2, 130


def _id_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nst", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run_command = commands.add_parser("run", help="validate and run a graph")
    run_command.add_argument("graph", type=Path)
    run_command.add_argument("--set", dest="overrides", action="append", default=[], metavar="ID.INPUT=VALUE",
                             help="replace a constant input (VALUE is parsed as JSON, else taken as a string)")
    run_command.add_argument("--device", choices=DEVICES, default="auto")
    run_command.add_argument("--only", type=_id_list, metavar="ID,...", help="run only what these nodes need")
    run_command.add_argument("--recompute", type=_id_list, default=[], metavar="ID,...",
                             help="ignore cached results of these nodes and their descendants")
    run_command.add_argument("--cache-dir", type=Path, default=None, help=f"default {default_cache_dir()}")
    run_command.add_argument("--no-cache", action="store_true", help="keep results in memory only")
    run_command.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run_command.add_argument("--json", action="store_true", help="validation errors as ComfyUI node_errors JSON")
    run_command.add_argument("--tuning", choices=MODES, default=None,
                             help="process settings: speed (default), memory (lower peak RSS, 30-40%% slower) "
                                  "or off; default NST_TUNING or speed (see runner/tuning.py)")

    validate_command = commands.add_parser("validate", help="check a graph without running it")
    validate_command.add_argument("graph", type=Path)
    validate_command.add_argument("--set", dest="overrides", action="append", default=[], metavar="ID.INPUT=VALUE")
    validate_command.add_argument("--only", type=_id_list, metavar="ID,...")
    validate_command.add_argument("--json", action="store_true")

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
        info[name] = {
            "input": node_class.INPUT_TYPES(),
            "output": list(spec.return_types),
            "output_name": list(spec.return_names),
            "output_is_list": [False] * len(spec.return_types),
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


def _run(args: argparse.Namespace) -> int:
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    interrupt = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupt.is_set():
            raise KeyboardInterrupt
        interrupt.set()
        print("\nstopping at the next progress report (Ctrl-C again to abort now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        results = run(
            load_graph(args.graph),
            device=args.device,
            outputs=args.only,
            overrides=args.overrides,
            cache=Cache(cache_dir),
            recompute=args.recompute,
            reporter=SilentReporter() if args.quiet else ConsoleReporter(),
            interrupt=interrupt,
        )
    except GraphValidationError as error:
        return _report_invalid(error, args.json)
    except RunInterrupted as error:
        print(f"stopped: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NodeExecutionError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
    if not args.quiet:
        for node_id, outputs in results.items():
            if outputs:
                print(f"output {node_id}: {', '.join(_describe(value) for value in outputs)}")
    return 0


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"tensor{list(shape)}" if shape is not None else repr(value)[:200]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        try:
            configure_process(args.tuning)
        except ValueError as error:  # a bad NST_TUNING; the flag itself is checked by argparse
            print(f"error: NST_TUNING: {error}", file=sys.stderr)
            return EXIT_INVALID
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "validate":
            graph = load_graph(args.graph)
            if args.overrides:
                graph = with_overrides(graph, args.overrides)
            errors = validate(graph, default_registry(), args.only)
            if errors:
                return _report_invalid(GraphValidationError(errors, graph.source), args.json)
            print(json.dumps({"error": None, "node_errors": {}}) if args.json else f"{graph.source}: valid")
            return 0
        if args.command == "nodes":
            registry = default_registry()
            if args.json:
                print(json.dumps(object_info(registry), indent=2))
            else:
                _print_nodes(registry)
            return 0
        cache = Cache(args.cache_dir or default_cache_dir())
        entries = cache.entries()
        if args.action == "clear":
            print(f"removed {cache.clear()} entries from {cache.directory}")
        else:
            size = sum(path.stat().st_size for path in entries)
            print(f"{cache.directory}: {len(entries)} entries, {size / 2**20:.1f} MiB")
        return 0
    except (GraphFormatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
