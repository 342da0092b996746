"""The command line: run, validate and batch graphs, list nodes, inspect and clear the cache.

An application passes its :class:`~graphrun.app.App` to :func:`main` (its name, cache folder and
process settings); pack commands come from the entry point group ``graphrun.commands``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

from graphrun.app import App
from graphrun.arguments import parser
from graphrun.cache import Cache
from graphrun.cache.disk import entry_key
from graphrun.cache.keys import is_progress_key
from graphrun.console import ConsoleBatchReporter, ConsoleReporter, counted
from graphrun.execute import NodeExecutionError, RunInterrupted
from graphrun.executors.local import run
from graphrun.graph import Graph, GraphFormatError, load_graph, with_overrides
from graphrun.host import Folders
from graphrun.registry import Registry, default_registry, object_info
from graphrun.spec import node_spec
from graphrun.validate import GraphValidationError, validate

EXIT_FAILED, EXIT_INVALID = 1, 2
COMMAND_GROUP = "graphrun.commands"
DEBUG_VARIABLE = "GRAPHRUN_DEBUG"
EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}
SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
SAME_SIGNAL_SECONDS = 0.1
"""A second signal this soon after the first is the same one delivered twice, not a second key press."""


def _print_nodes(registry: Registry) -> None:
    for name, node_class in sorted(registry.classes.items()):
        spec = node_spec(node_class)
        marks = ["output node"] * spec.output_node + ["deprecated: kept for old graphs"] * bool(
            getattr(node_class, "DEPRECATED", False)
        )
        print(f"{name}  [{getattr(node_class, 'CATEGORY', '')}]{''.join(f'  ({mark})' for mark in marks)}")
        description = getattr(node_class, "DESCRIPTION", "")
        if description:
            print(f"    {description}")
        for input_spec in spec.inputs.values():
            kind = f"one of {list(input_spec.choices)}" if input_spec.choices else input_spec.type
            options = {k: v for k, v in input_spec.options.items() if k in ("default", "min", "max")}
            optional = "" if input_spec.required else " (optional)"
            print(f"    in  {input_spec.name}: {kind}{optional}{' ' + str(options) if options else ''}")
        for index, (kind, label) in enumerate(zip(spec.return_types, spec.return_names, strict=False)):
            print(f"    out {index} {label}: {kind}")


def _report_invalid(error: GraphValidationError, as_json: bool) -> int:
    print(
        json.dumps(error.to_comfy(), indent=2) if as_json else error.report(),
        file=sys.stdout if as_json else sys.stderr,
    )
    return EXIT_INVALID


def _report_format_error(error: GraphFormatError, as_json: bool) -> int:
    if as_json:
        report = {
            "error": {"type": "invalid_prompt", "message": str(error), "details": "", "extra_info": {}},
            "node_errors": {},
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_INVALID


def _folders(args: argparse.Namespace) -> Folders:
    return Folders(args.input_dir, args.output_dir, args.confine, args.models_dir)


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
        self.since = 0.0
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
            if number == self.signal and time.monotonic() - self.since < SAME_SIGNAL_SECONDS:
                return  # one stop delivered twice: to the process and to its group (``timeout -s INT`` does)
            if self.abort is None:
                raise KeyboardInterrupt
            self.abort.set()
            print(
                f"\n{SIGNAL_NAMES[number]} again: not waiting for running nodes; finished results stay cached",
                file=sys.stderr,
            )
            return
        self.signal = number
        self.since = time.monotonic()
        self.event.set()
        print(
            f"\n{SIGNAL_NAMES[number]}: stopping after the current step; the result so far will be saved "
            "(press Ctrl-C again to abort at once)",
            file=sys.stderr,
        )

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal or signal.SIGINT, 130)


def _cache_dir(args: argparse.Namespace, app: App) -> Path | None:
    return None if args.no_cache else (args.cache_dir or app.cache_dir())


def _kept(args: argparse.Namespace) -> str:
    return "" if args.no_cache else "; finished results stay cached"


def _run(args: argparse.Namespace, app: App) -> int:
    reporter = ConsoleReporter(preview_path=args.preview, preview_seconds=args.preview_every, quiet=args.quiet)
    # One run per process, and a run reads the cache before its first node: results kept in memory would serve no
    # one, and would sit beside the nodes still to run (2 GiB of them at 2048 px).
    cache = Cache(_cache_dir(args, app), memory_bytes=0, disk_bytes=args.disk_cache)
    with _StopOnSignal() as stop:
        try:
            results = run(
                _load(args),
                device=args.device,
                outputs=args.only,
                cache=cache,
                recompute=args.recompute,
                reporter=reporter,
                stop=stop.event,
                folders=_folders(args),
            )
        except GraphValidationError as error:
            return _report_invalid(error, args.json)
        except RunInterrupted as error:
            name = SIGNAL_NAMES.get(stop.signal or signal.SIGINT, "stop request")
            print(f"stopped by {name}: {error}{_kept(args)}", file=sys.stderr)
            return stop.exit_code
        except NodeExecutionError as error:
            if os.environ.get(DEBUG_VARIABLE):
                traceback.print_exception(error.__cause__ or error)
            if args.json:
                print(
                    json.dumps(
                        {
                            "error": {
                                "type": "execution_error",
                                "message": str(error),
                                "node_id": error.node_id,
                                "node_type": error.class_type,
                            },
                            "node_errors": {},
                        },
                        indent=2,
                    )
                )
            print(f"error: {error}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print(
                f"aborted by {SIGNAL_NAMES.get(stop.signal or signal.SIGINT)}{_kept(args)}",
                file=sys.stderr,
            )
            return stop.exit_code
    if not args.quiet:
        for node_id, outputs in results.items():
            if outputs:
                print(f"output {node_id}: {', '.join(_describe(value) for value in outputs)}")
    # A stop that came as the run finished (its nodes all cached) leaves it complete, but a script's loop
    # around nst must still end on it.
    return 0 if stop.signal is None else stop.exit_code


def _batch(args: argparse.Namespace, app: App) -> int:
    from graphrun.batch import BatchError, batch_items, parse_chain, parse_over
    from graphrun.batch.client import run_batch

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
                _load(args),
                overs,
                grid=args.grid,
                chain=chain,
                scheduler=args.scheduler,
                workers=args.workers,
                threads=args.threads,
                cache_dir=_cache_dir(args, app),
                folders=_folders(args),
                device=args.device,
                reporter=reporter,
                stop=stop.event,
                abort=abort,
                worker_hook=hook,
                worker_environment=app.worker_environment(),
                recompute=args.recompute,
            )
        except BatchError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
        print(result.summary(), file=sys.stderr)  # still under the handler: a last Ctrl-C cannot cut it short
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
        print(f"removed {counted(entries, 'entry')} and {counted(leftovers, 'leftover')} from {cache.directory}")
    else:
        problems = found.problems
        stats = found.entry_stats()  # one lstat per entry, for both lines
        print(
            f"{cache.directory}: {counted(len(found.entries), 'entry')}, "
            f"{sum(size for _, size, _ in stats) / 2**20:.1f} MiB (runs keep it within {cache.disk_bytes / 2**30:.0f} "
            "GiB unless --disk-cache says otherwise, the oldest out first)"
        )
        progress = [size for path, size, _ in stats if is_progress_key(entry_key(path))]
        if progress:
            print(
                f"the progress of stopped runs: {counted(len(progress), 'entry')}, {sum(progress) / 2**20:.1f} MiB "
                "(the same run again goes on from it)"
            )
        if found.leftovers:
            print(
                f"unfinished writes and broken entries: {counted(len(found.leftovers), 'leftover')} "
                "(`cache clear` removes them)"
            )
    if found.foreign:
        print(f"left alone, not the cache's: {counted(len(found.foreign), 'file')} (e.g. {found.foreign[0]})")
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


def console(app: App | None = None) -> int:
    """The console script: :func:`main`, then a Ctrl-C or SIGTERM while the process winds up (the
    interpreter's exit runs finalizers, torch's among them) ends it at once with the signal's exit
    code, where Python would print a traceback. After the last exit handler the signals are ignored:
    the interpreter's own teardown resets Python's handlers to the default, which would end the process
    by the signal instead of with the command's exit code."""
    # Registered before the command's own exit handlers (dask and torch load inside main, and must keep
    # doing so), it runs after them.
    atexit.register(_ignore_stop_signals)
    winding_up = threading.Event()
    for number in EXIT_CODES:  # what a run's own stop handling hands the signals back to as it ends
        signal.signal(number, partial(_stop_outside_a_run, winding_up))
    try:
        code = main(app=app)
    except KeyboardInterrupt:  # a Ctrl-C as main returned
        code = EXIT_CODES[signal.SIGINT]
    finally:
        winding_up.set()
    for stream in (sys.stdout, sys.stderr):  # None where the console was closed before the start
        with suppress(OSError, ValueError):  # a reader that left, a closed stream: nothing more to say
            if stream is not None:
                stream.flush()
    return code


def _stop_outside_a_run(winding_up: threading.Event, number: int, frame: Any) -> None:
    """A stop signal outside a run's own handling: Python's default while the command runs (Ctrl-C raises
    KeyboardInterrupt, which ends the command with a word), the exit at once once it has returned."""
    if number == signal.SIGINT and not winding_up.is_set():
        raise KeyboardInterrupt
    os._exit(EXIT_CODES[number])


def _ignore_stop_signals() -> None:
    for number in EXIT_CODES:
        signal.signal(number, signal.SIG_IGN)


def _configured(app: App, mode: str | None) -> bool:
    """The process settings applied (before a command loads its modules); False, said, for a bad setting in the
    environment (a bad ``--tuning`` is argparse's)."""
    if app.configure_process is None:
        return True
    try:
        app.configure_process(mode)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    return True


@contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM noted, not raised, while the packs' modules load: a KeyboardInterrupt inside a
    library's import was swallowed by it (the command then ran on and exited 0) or left a module half
    loaded (numpy: "cannot load module more than once per process")."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield held
        return

    def hold(number: int, frame: Any) -> None:
        if held:  # pressed again: the load may hang (a network drive); nothing is running yet to save
            os._exit(EXIT_CODES[number])
        held.append(number)
        print(f"\n{SIGNAL_NAMES[number]}: stopping once the node packs have loaded (again: at once)", file=sys.stderr)

    previous = {number: signal.signal(number, hold) for number in EXIT_CODES}
    try:
        yield held
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _aborted(number: int) -> int:
    print("aborted", file=sys.stderr)
    return EXIT_CODES[number]


def main(argv: list[str] | None = None, app: App | None = None) -> int:
    app = app or App()
    argv = sys.argv[1:] if argv is None else argv
    extra = pack_commands()
    args: argparse.Namespace | None = None
    try:
        if argv and argv[0] in extra:  # a pack's own command (``nst video``): its errors end as ours do
            if not _configured(app, None):
                return EXIT_INVALID
            with _signals_held() as held:
                command = extra[argv[0]].load()
                default_registry()
            return _aborted(held[0]) if held else int(command(argv[1:]))
        args = parser(app, sorted(extra)).parse_args(argv)
        if args.command in ("run", "batch") and not _configured(app, getattr(args, "tuning", None)):
            return EXIT_INVALID
        if args.command != "cache":
            with _signals_held() as held:
                default_registry()  # the packs' modules load here, torch's among them
            if held:
                return _aborted(held[0])
        if args.command in ("run", "batch", "validate"):
            app.check_environment()
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
