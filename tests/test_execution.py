"""Execution and caching, proved by counting which nodes ran."""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

import fake_nodes
import pytest
import torch

from runner import Cache, NodeExecutionError, RunInterrupted, run
from runner.spec import code_version

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
    graph = {"1": {"class_type": "ReadText", "inputs": {"path": str(text)}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
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
    assert len(again.warnings) >= 2 and all("damaged" in w for w in again.warnings)
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
    graph = {"1": {"class_type": "Opaque", "inputs": {"seed": 1}}, "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
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


def test_interrupt_stops_keeps_finished_results_and_caches_no_partial_result(tmp_path: Path, reporter) -> None:
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Countdown", "inputs": {"start": ["1", 0], "steps": 10, "interrupt_at": 3}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
    }
    with pytest.raises(RunInterrupted) as caught:
        run_chain(later_process(tmp_path), reporter, graph=graph)
    assert caught.value.kept == ["1"]
    assert [step for node, step, _ in reporter.steps] == [1, 2, 3]
    resumed = type(reporter)()
    graph["2"]["inputs"]["interrupt_at"] = 0
    run_chain(later_process(tmp_path), resumed, graph=graph)
    assert resumed.cached == ["1"] and sorted(resumed.ran) == ["2", "3"]


def test_interrupt_requested_before_a_node_starts(tmp_path: Path, reporter) -> None:
    flag = threading.Event()
    flag.set()
    with pytest.raises(RunInterrupted):
        run_chain(later_process(tmp_path), reporter, interrupt=flag)
    assert reporter.ran == []


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


def test_a_failed_cache_write_warns_and_keeps_the_result(tmp_path: Path, reporter, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("runner.cache.tempfile.mkstemp", full_disk)
    cache = later_process(tmp_path)
    assert run_chain(cache, reporter) == {"3": (13.0,), "5": ()}
    assert reporter.warnings and all("could not write" in w for w in reporter.warnings)
    again = type(reporter)()
    run_chain(cache, again)
    assert again.ran == []  # kept in memory
