"""Execution and caching, proved by counting which nodes ran."""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from pathlib import Path

import fake_nodes
import pytest
import torch

from graphrun import Cache, Folders, NodeExecutionError, RunInterrupted, run
from graphrun.cache import NodeResult
from graphrun.cache.keys import code_version

REGISTRY = fake_nodes.registry()

CHAIN = {
    "1": {"class_type": "Vector", "inputs": {"length": 4, "scale": 2.0, "kind": "ones"}},
    "2": {"class_type": "Number", "inputs": {"value": 5}},
    "3": {"class_type": "Total", "inputs": {"tensor": ["1", 0], "offset": ["2", 0]}},
    "4": {"class_type": "Number", "inputs": {"value": 7}},
    "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}},
}


def run_chain(cache: Cache, reporter, **kwargs):
    return run(kwargs.pop("graph", CHAIN), registry=REGISTRY, device="cpu", cache=cache, reporter=reporter, **kwargs)


def later_process(tmp_path: Path) -> Cache:
    """A fresh cache on the same directory: what a new process sees."""
    return Cache(tmp_path / "cache")


def test_outputs_and_topological_order(tmp_path: Path, reporter) -> None:
    results = run_chain(later_process(tmp_path), reporter)
    assert results == {"3": (13.0,), "5": ()}
    assert reporter.ran.index("1") < reporter.ran.index("3") and reporter.ran.index("2") < reporter.ran.index("3")
    assert sorted(reporter.ran) == ["1", "2", "3", "4", "5"]


def test_second_run_does_no_node_work_even_in_a_new_process(tmp_path: Path, reporter) -> None:
    run_chain(later_process(tmp_path), reporter)
    again = type(reporter)()
    assert run_chain(later_process(tmp_path), again) == {"3": (13.0,), "5": ()}
    assert again.ran == []
    # Outputs that are cached are loaded without touching their inputs.
    assert sorted(again.cached) == ["3", "5"]


def test_changing_one_constant_reruns_exactly_that_node_and_descendants(tmp_path: Path, reporter) -> None:
    run_chain(later_process(tmp_path), reporter)
    again = type(reporter)()
    results = run_chain(later_process(tmp_path), again, overrides={"2.value": 6})
    assert results["3"] == (14.0,)
    assert sorted(again.ran) == ["2", "3"]


def test_tensors_survive_the_disk_round_trip(tmp_path: Path, reporter) -> None:
    graph = {**CHAIN, "1": {"class_type": "Vector", "inputs": {"length": 5, "scale": 1.5, "kind": "arange"}}}
    first = run_chain(later_process(tmp_path), reporter, graph=graph, outputs=["1"])
    second = run_chain(later_process(tmp_path), type(reporter)(), graph=graph, outputs=["1"])
    assert torch.equal(first["1"][0], second["1"][0]) and second["1"][1] == "arange"


def test_editing_an_input_file_invalidates(tmp_path: Path, reporter) -> None:
    text = tmp_path / "words.txt"
    text.write_text("one")
    graph = {
        "1": {"class_type": "ReadText", "inputs": {"path": str(text)}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
    }
    run_chain(later_process(tmp_path), reporter, graph=graph)
    unchanged = type(reporter)()
    run_chain(later_process(tmp_path), unchanged, graph=graph)
    assert unchanged.ran == []
    text.write_text("two")
    edited = type(reporter)()
    run_chain(later_process(tmp_path), edited, graph=graph)
    assert sorted(edited.ran) == ["1", "2"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_entry_is_reported_discarded_and_recomputed(tmp_path: Path, reporter, damage: str) -> None:
    run_chain(later_process(tmp_path), reporter)
    for entry in later_process(tmp_path).entries():
        blob = entry.read_bytes()
        if damage == "truncate":
            entry.write_bytes(blob[: len(blob) // 2])
        elif damage == "flip":
            entry.write_bytes(blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:])
        else:
            entry.write_bytes(b"not a cache entry")
    again = type(reporter)()
    assert run_chain(later_process(tmp_path), again) == {"3": (13.0,), "5": ()}
    assert sorted(again.ran) == ["1", "2", "3", "4", "5"]
    assert len(again.warnings) >= 2 and all("damaged" in w and "discarded" in w for w in again.warnings)
    healed = type(reporter)()
    run_chain(later_process(tmp_path), healed)
    assert healed.ran == [] and healed.warnings == []


def test_recompute_forces_a_node_and_its_descendants(tmp_path: Path, reporter) -> None:
    run_chain(later_process(tmp_path), reporter)
    again = type(reporter)()
    run_chain(later_process(tmp_path), again, recompute=["1"])
    assert sorted(again.ran) == ["1", "3"]


def test_only_runs_what_the_named_nodes_need(tmp_path: Path, reporter) -> None:
    results = run_chain(later_process(tmp_path), reporter, outputs=["2"])
    assert list(results) == ["2"] and reporter.ran == ["2"]


def test_memory_only_node_is_not_written_to_disk(tmp_path: Path, reporter) -> None:
    graph = {
        "1": {"class_type": "Opaque", "inputs": {"seed": 1}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
    }
    cache = later_process(tmp_path)
    run_chain(cache, reporter, graph=graph)
    assert len(cache.entries()) == 1  # only Show's result
    same_process = type(reporter)()
    run_chain(cache, same_process, graph=graph)
    assert same_process.ran == []


def test_no_cache_directory_keeps_everything_in_memory(tmp_path: Path, reporter) -> None:
    cache = Cache(None)
    run_chain(cache, reporter)
    again = type(reporter)()
    run_chain(cache, again)
    assert again.ran == [] and cache.entries() == []


def test_stop_request_lets_the_partial_result_reach_the_outputs_and_caches_none_of_it(tmp_path: Path, reporter) -> None:
    stop = threading.Event()
    reporter.stop_at = ("2", 3, stop)
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Countdown", "inputs": {"start": ["1", 0], "steps": 10}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["6", 0]}},
        "4": {"class_type": "Number", "inputs": {"value": 5}},
        "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}},  # not downstream of the stopped node
        "6": {"class_type": "Number", "inputs": {"value": 2}},  # a short branch the partial result's consumer needs
        "7": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    }
    with pytest.raises(RunInterrupted) as caught:
        run_chain(later_process(tmp_path), reporter, graph=graph, stop=stop)
    assert [step for node, step, _ in reporter.steps] == [1, 2, 3]  # stopped within one step
    assert reporter.ran == ["1", "6"] and reporter.partial == ["2", "3", "7"]  # 6: what 3 waits for, run after it
    assert caught.value.partial == ["2", "3", "7"] and caught.value.skipped == ["4", "5"]
    assert caught.value.outputs == {"7": ()}
    resumed = type(reporter)()
    run_chain(later_process(tmp_path), resumed, graph=graph)
    assert resumed.cached == ["1", "6"] and sorted(resumed.ran) == ["2", "3", "4", "5", "7"]  # nothing partial kept


RESUMABLE = {
    "1": {"class_type": "Number", "inputs": {"value": 1}},
    "2": {"class_type": "Resumable", "inputs": {"start": ["1", 0], "steps": 10}},
    "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
}


def run_resumable(tmp_path: Path, stop_at: int | None = None, **kwargs):
    """A run of RESUMABLE in a new process (a fresh cache on the same folder); ``stop_at``: a stop at node 2's step."""
    reporter = type(kwargs.pop("reporter"))()
    stop = threading.Event()
    if stop_at is not None:
        reporter.stop_at = ("2", stop_at, stop)
    try:
        outputs = run_chain(later_process(tmp_path), reporter, graph=RESUMABLE, stop=stop, **kwargs)
    except RunInterrupted as interrupted:
        outputs = interrupted.outputs
    return reporter, [step for node, step, _ in reporter.steps if node == "2"], outputs


def test_a_stopped_node_keeps_its_progress_and_the_next_run_goes_on_from_it(tmp_path: Path, reporter) -> None:
    _, steps, _ = run_resumable(tmp_path, 3, reporter=reporter)
    assert steps == [1, 2, 3]
    again, steps, outputs = run_resumable(tmp_path, reporter=reporter)
    assert steps == [4, 5, 6, 7, 8, 9, 10] and outputs == {"3": ()} and again.ran == ["2", "3"]
    assert any("node 2 (Resumable): goes on from where a stopped run of it got to" in w for w in again.warnings)
    assert run_resumable(tmp_path, reporter=reporter)[0].cached == ["3"]  # served whole; nothing partial cached
    # done: its progress is gone, so a forced rerun starts over
    forced, steps, _ = run_resumable(tmp_path, reporter=reporter, recompute=["2"])
    assert steps == list(range(1, 11)) and not forced.warnings


def test_a_node_asked_to_start_over_replaces_the_progress_kept(tmp_path: Path, reporter) -> None:
    assert run_resumable(tmp_path, 6, reporter=reporter)[1] == [1, 2, 3, 4, 5, 6]
    _, steps, _ = run_resumable(tmp_path, 2, reporter=reporter, recompute=["2"])  # forced: starts over
    assert steps == [1, 2]
    assert run_resumable(tmp_path, reporter=reporter)[1] == [3, 4, 5, 6, 7, 8, 9, 10]  # from its own 2


def test_kept_progress_is_replaced_only_by_progress_that_got_further_and_only_fitting_progress_is_resumed(
    tmp_path: Path,
) -> None:
    from graphrun.cache.progress import KeptProgress

    said: list[str] = []
    kept: list[int] = []

    def progress(**kwargs) -> KeptProgress:
        return KeptProgress(later_process(tmp_path), "ab" * 32, said.append, lambda: kept.append(1), **kwargs)

    progress().save({"done": 6, "values": torch.ones(3)}, 6)
    progress().save({"done": 2, "values": torch.zeros(3)}, 2)  # one that could not go on from 6
    assert progress().load()["done"] == 6 and len(kept) == 1 and said[-1].startswith("goes on from")
    refusing = progress()
    assert refusing.load(fits=lambda state: state["values"].sum() == 0) is None
    assert said[-1].startswith("the progress a stopped run of it kept does not fit this run")
    refusing.save({"done": 3, "values": torch.zeros(3)}, 3)  # what does not fit is replaced by what does
    assert progress().load()["done"] == 3
    with pytest.raises(TypeError, match="tensors and JSON-able values"):
        progress().save({"done": object()}, 9)
    unkept = KeptProgress(Cache(None, memory_bytes=0), "ab" * 32, said.append, lambda: kept.append(1))
    unkept.save({"done": 7}, 7)  # no store will hold it: not said to be kept
    assert len(kept) == 2
    small = Cache(tmp_path / "small", memory_bytes=0, disk_bytes=2000)
    too_large, before = KeptProgress(small, "cd" * 32, said.append, lambda: kept.append(1)), len(said)
    for step in (1, 2, 3):  # a long run under a small --disk-cache: one warning, not one every few minutes
        too_large.save({"done": step, "values": torch.ones(1000)}, step, running=step < 3)
    assert len(kept) == 2 and len(said) == before + 1 and said[-1].endswith("; not tried again in this run")


def test_progress_kept_while_a_node_runs_is_written_out_at_once_and_not_held_in_memory(tmp_path: Path) -> None:
    """The node goes on changing the state's tensors (L-BFGS's pairs): what is kept is what they were then."""
    from graphrun.cache.progress import KeptProgress

    said: list[str] = []
    kept: list[int] = []
    cache = later_process(tmp_path)
    live = torch.zeros(3)
    KeptProgress(cache, "ab" * 32, said.append, lambda: kept.append(1)).save({"values": live}, 1, running=True)
    live += 5  # the node goes on
    assert cache.memory.held == 0 and len(kept) == 1
    assert torch.equal(KeptProgress(cache, "ab" * 32, said.append).load()["values"], torch.zeros(3))
    memory_only = KeptProgress(Cache(None), "ab" * 32, said.append, lambda: kept.append(1))
    memory_only.save({"values": live}, 1, running=True)  # nowhere to write it out: not kept
    assert len(kept) == 1 and memory_only.load() is None


def test_a_stopped_run_names_the_nodes_that_kept_their_progress(tmp_path: Path, reporter) -> None:
    stop = threading.Event()
    reporter.stop_at = ("2", 3, stop)
    with pytest.raises(RunInterrupted) as caught:
        run_chain(later_process(tmp_path), reporter, graph=RESUMABLE, stop=stop)
    assert caught.value.kept == ["2"] and "node(s) 2 kept their progress: run again to go on" in str(caught.value)
    with pytest.raises(RunInterrupted) as without_cache:
        run_chain(Cache(None, memory_bytes=0), type(reporter)(), graph=RESUMABLE, stop=stop)
    assert without_cache.value.kept == [] and "kept their progress" not in str(without_cache.value)


def test_cache_info_counts_the_progress_stopped_runs_kept_until_a_run_completes(
    tmp_path: Path, reporter, capsys
) -> None:
    from nst_nodes.app import main

    def info() -> str:
        assert main(["cache", "info", "--cache-dir", str(tmp_path / "cache")]) == 0
        return capsys.readouterr().out

    stop = threading.Event()
    reporter.stop_at = ("2", 3, stop)
    with pytest.raises(RunInterrupted):
        run_chain(later_process(tmp_path), reporter, graph=RESUMABLE, stop=stop)
    assert "the progress of stopped runs: 1 entry" in info()
    run_chain(later_process(tmp_path), type(reporter)(), graph=RESUMABLE)  # goes on, completes, drops it
    assert "progress of stopped runs" not in info()


def test_a_node_that_ran_on_a_stopped_nodes_result_keeps_no_progress(tmp_path: Path, reporter) -> None:
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Countdown", "inputs": {"start": ["1", 0], "steps": 10}},
        "3": {"class_type": "Resumable", "inputs": {"start": ["2", 0], "steps": 5}},
        "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
    }
    stop = threading.Event()
    reporter.stop_at = ("2", 3, stop)
    with pytest.raises(RunInterrupted):
        run_chain(later_process(tmp_path), reporter, graph=graph, stop=stop)
    assert reporter.partial == ["2", "3", "4"] and ("3", 1, 5) in reporter.steps  # node 3 stopped at its first step
    again = type(reporter)()
    run_chain(later_process(tmp_path), again, graph=graph)
    assert [step for node, step, _ in again.steps if node == "3"] == [1, 2, 3, 4, 5] and not again.warnings


def test_stop_requested_before_anything_runs_runs_nothing(tmp_path: Path, reporter) -> None:
    flag = threading.Event()
    flag.set()
    with pytest.raises(RunInterrupted) as caught:
        run_chain(later_process(tmp_path), reporter, stop=flag)
    assert reporter.ran == [] and caught.value.partial == [] and len(caught.value.skipped) == 5


def test_failing_node_names_itself_and_keeps_finished_work(tmp_path: Path, reporter) -> None:
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Fail", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
    }
    with pytest.raises(NodeExecutionError, match=r"node 2 \(Fail\) failed: RuntimeError: boom"):
        run_chain(later_process(tmp_path), reporter, graph=graph)
    again = type(reporter)()
    with pytest.raises(NodeExecutionError):
        run_chain(later_process(tmp_path), again, graph=graph)
    assert again.cached == ["1"]


def test_code_version_follows_the_node_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "edited_pack.py"
    source = Path(fake_nodes.__file__).read_text()
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    first = code_version(importlib.import_module("edited_pack").Add)
    module.write_text(source.replace("return (a + b,)", "return (a + b + 1,)"))
    del sys.modules["edited_pack"]
    second = code_version(importlib.import_module("edited_pack").Add)
    assert first != second
    assert code_version(fake_nodes.Number) == code_version(fake_nodes.Number)


def test_a_failed_cache_write_warns_once_and_keeps_the_results(
    tmp_path: Path, reporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def full_disk(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr("graphrun.cache.disk.os.open", full_disk)
    cache = later_process(tmp_path)
    assert run_chain(cache, reporter) == {"3": (13.0,), "5": ()}
    assert len(reporter.warnings) == 1 and "No space left on device" in reporter.warnings[0]
    again = type(reporter)()
    run_chain(cache, again)
    assert again.ran == []  # kept in memory


def test_a_chain_of_thousands_of_nodes_runs_without_recursion(tmp_path: Path, reporter) -> None:
    graph = {"0": {"class_type": "Number", "inputs": {"value": 0}}}
    for index in range(1, 3000):
        graph[str(index)] = {"class_type": "Add", "inputs": {"a": [str(index - 1), 0], "b": 1}}
    graph["end"] = {"class_type": "Show", "inputs": {"value": ["2999", 0]}}
    run_chain(Cache(None), reporter, graph=graph)
    assert len(reporter.ran) == 3001


def test_a_cycle_outside_the_requested_outputs_does_not_matter(tmp_path: Path, reporter) -> None:
    graph = {
        **CHAIN,
        "8": {"class_type": "Add", "inputs": {"a": ["9", 0], "b": 1}},
        "9": {"class_type": "Add", "inputs": {"a": ["8", 0], "b": 1}},
    }
    assert run_chain(Cache(None), reporter, graph=graph, outputs=["3"]) == {"3": (13.0,)}


def test_an_is_changed_of_nan_reruns_the_node_and_its_descendants_every_time(tmp_path: Path, reporter) -> None:
    graph = {
        "1": {"class_type": "Volatile", "inputs": {"value": 4}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "Number", "inputs": {"value": 2}},
        "4": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["3", 0]}},
        "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}},
    }
    cache = later_process(tmp_path)
    run_chain(cache, reporter, graph=graph)
    again = type(reporter)()
    run_chain(later_process(tmp_path), again, graph=graph)
    assert sorted(again.ran) == ["1", "2", "4", "5"] and again.cached == ["3"]
    assert len(cache.entries()) == 1  # only the steady node 3 was stored


def test_a_failing_is_changed_warns_and_reruns(tmp_path: Path, reporter) -> None:
    graph = {
        "1": {"class_type": "Crashing", "inputs": {"text": "12"}},
        "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
    }
    run_chain(later_process(tmp_path), reporter, graph=graph)
    again = type(reporter)()
    run_chain(later_process(tmp_path), again, graph=graph)
    assert again.ran == ["1", "2"] and "IS_CHANGED failed (OSError: no such thing)" in again.warnings[0]


def test_an_output_node_reruns_when_its_file_is_missing_or_changed(tmp_path: Path, reporter) -> None:
    folders = Folders(output=tmp_path / "out")
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 7}},
        "2": {"class_type": "WriteText", "inputs": {"value": ["1", 0], "name": "seven.txt"}},
    }
    run_chain(later_process(tmp_path), reporter, graph=graph, folders=folders)
    written = tmp_path / "out" / "seven.txt"
    assert written.read_text() == "7" and reporter.files["2"] == [written]
    unchanged = type(reporter)()
    run_chain(later_process(tmp_path), unchanged, graph=graph, folders=folders)
    assert unchanged.cached == ["2"] and unchanged.files["2"] == [written]
    for damage in (written.unlink, lambda: written.write_text("8")):
        damage()
        again = type(reporter)()
        run_chain(later_process(tmp_path), again, graph=graph, folders=folders)
        assert again.ran == ["2"] and again.cached == ["1"] and written.read_text() == "7"
        assert "seven.txt is missing or changed" in again.warnings[0]


@pytest.mark.parametrize("stored", [(1, 2), ("not a tensor", "ones")])
def test_an_entry_that_does_not_fit_the_declared_outputs_is_discarded(tmp_path: Path, reporter, stored) -> None:
    graph = {
        "1": {"class_type": "Vector", "inputs": {"length": 2, "scale": 1.0, "kind": "ones"}},
        "2": {"class_type": "Total", "inputs": {"tensor": ["1", 0]}},
    }
    run_chain(later_process(tmp_path), reporter, graph=graph)
    cache = later_process(tmp_path)
    execution_key = next(p.name[:-6] for p in cache.entries() if cache.lookup(p.name[:-6]).outputs[1:] == ("ones",))
    cache.store(execution_key, NodeResult(stored), to_disk=True)  # well-formed, wrong shape
    again = type(reporter)()
    assert run_chain(later_process(tmp_path), again, graph=graph, recompute=["2"]) == {"2": (2.0,)}
    assert again.ran == ["1", "2"] and "does not fit the outputs ('TENSOR', 'STRING')" in again.warnings[0]
    healed = type(reporter)()
    run_chain(later_process(tmp_path), healed, graph=graph, recompute=["2"])
    assert healed.cached == ["1"] and healed.warnings == []


def test_the_memory_cache_keeps_within_its_byte_budget_least_recently_used_first(tmp_path: Path, reporter) -> None:
    graph = {
        str(i): {"class_type": "Vector", "inputs": {"length": 1000, "scale": float(i), "kind": "ones"}}
        for i in range(1, 6)
    }  # 4000 bytes of tensor each
    cache = Cache(None, memory_bytes=12_000)
    run_chain(cache, reporter, graph=graph, outputs=list(graph))
    assert 8_000 < cache.memory_held <= 12_000
    again = type(reporter)()
    run_chain(cache, again, graph=graph, outputs=list(graph))
    assert again.ran == ["1", "2", "3"] and again.cached == ["4", "5"]  # the oldest went first


def test_the_python_api_checks_its_arguments(tmp_path: Path, reporter, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        TypeError, match=r"outputs must be a list of node ids, not the string '3'; did you mean \['3'\]"
    ):
        run_chain(Cache(None), reporter, outputs="3")
    with pytest.raises(TypeError, match="recompute must be a list of node ids, not the string '15'"):
        run_chain(Cache(None), reporter, recompute="15")
    assert run_chain(Cache(None), reporter, outputs=[3]) == {"3": (13.0,)}  # ids may be ints
    with pytest.raises(TypeError, match="cache must be a graphrun.cache.Cache, not str"):
        run_chain("cache-dir", reporter)
    for wrong in ({"device": None}, {"stop": True}, {"folders": "/tmp"}):
        with pytest.raises(TypeError, match=f"{next(iter(wrong))} must be a "):
            run(CHAIN, registry=REGISTRY, **wrong)
    with pytest.raises(TypeError, match="reporter must have the methods"):
        run(CHAIN, registry=REGISTRY, device="cpu", reporter=object())
    with pytest.raises(TypeError, match="a graph is a file path or a dict, not int"):
        run(5, registry=REGISTRY, device="cpu")
    assert run({3: {"class_type": "Number", "inputs": {"value": 2}}}, registry=REGISTRY, device="cpu", outputs=[3]) == {
        "3": (2,)
    }
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Cache("~/.cache/nst-nodes").directory == tmp_path / ".cache" / "nst-nodes"
    with pytest.raises(ValueError, match="memory_bytes"):
        Cache(None, memory_bytes=-1)


def test_a_stop_request_at_the_last_step_keeps_the_whole_result(tmp_path: Path, reporter) -> None:
    stop = threading.Event()
    reporter.stop_at = ("2", 10, stop)
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Countdown", "inputs": {"start": ["1", 0], "steps": 10}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
    }
    with pytest.raises(RunInterrupted) as caught:
        run_chain(later_process(tmp_path), reporter, graph=graph, stop=stop)
    assert reporter.partial == [] and sorted(reporter.ran) == ["1", "2"] and caught.value.skipped == ["3"]
    again = type(reporter)()
    run_chain(later_process(tmp_path), again, graph=graph)
    assert again.cached == ["2"] and again.ran == ["3"]  # the finished count was kept


def test_an_executor_drives_the_step_api(tmp_path: Path) -> None:
    """ready -> complete, by hand: a node is ready once, after all its inputs completed; values that no
    later node reads are released; a completion may carry a handle instead of a result."""
    from graphrun import Execution, load_graph, plan
    from graphrun.reporting import SilentReporter

    graph = load_graph(
        {
            "1": {"class_type": "Number", "inputs": {"value": 2}},
            "2": {"class_type": "Number", "inputs": {"value": 3}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
        },
        registry=REGISTRY,
    )
    execution = Execution(
        graph,
        REGISTRY,
        plan(graph, REGISTRY),
        Cache(None),
        "cpu",
        Folders(output=tmp_path),
        threading.Event(),
        SilentReporter(),
    )
    execution.prepare()
    assert execution.ready() == ["1", "2"] and execution.ready() == []
    execution.complete("1", execution.compute("1"))
    assert execution.ready() == []  # 3 still waits for 2
    execution.complete("2", execution.compute("2"))
    assert execution.next_ready() == "3" and execution.next_ready() is None
    execution.complete("3", execution.compute("3"))
    assert "1" not in execution.values and "2" not in execution.values  # released once 3 read them
    assert execution.ready() == ["4"]
    execution.complete("4", execution.compute("4"))
    assert execution.outputs() == {"4": ()}


def test_the_console_tells_a_stopped_node_from_one_that_ran_every_step_on_a_stopped_nodes_result() -> None:
    import io

    from graphrun.console import ConsoleReporter

    stream = io.StringIO()
    console = ConsoleReporter(stream=stream)
    for node_id, step in (("1", 3), ("2", 10)):
        console.progress(node_id, "Work", step, 10, {}, None)
        console.node_done(node_id, "Work", 1.0, "partial", [], [])
    lines = re.findall(r"\[\d\] Work: (?:stopped|ran) [^\n]*", stream.getvalue())
    assert lines == [
        "[1] Work: stopped early at step 3 of 10 after 1.00 s (partial result, not cached)",
        "[2] Work: ran in 1.00 s on a partial result (not cached)",
    ]
