"""The disk cache under hostile or broken conditions: every failure is a miss with one warning, never a crash."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import fake_nodes
import pytest

from runner import Cache, run
from runner.cli import main

REGISTRY = fake_nodes.registry()
GRAPH = {
    "1": {"class_type": "Vector", "inputs": {"length": 3, "scale": 2.0, "kind": "ones"}},
    "2": {"class_type": "Total", "inputs": {"tensor": ["1", 0]}},
}


def run_graph(cache: Cache, reporter) -> dict:
    return run(GRAPH, registry=REGISTRY, device="cpu", cache=cache, reporter=reporter)


def entries_after_one_run(directory: Path, reporter) -> list[Path]:
    run_graph(Cache(directory), reporter)
    return Cache(directory).entries()


@pytest.mark.parametrize("breakage", ["directory", "symlink-loop", "fifo", "dangling-symlink"])
def test_an_entry_that_cannot_be_read_is_a_miss_with_one_warning(tmp_path: Path, reporter, breakage: str) -> None:
    directory = tmp_path / "cache"
    for entry in entries_after_one_run(directory, reporter):
        entry.unlink()
        if breakage == "directory":
            entry.mkdir()
        elif breakage == "symlink-loop":
            entry.symlink_to(entry)
        elif breakage == "fifo":
            os.mkfifo(entry)
        else:
            entry.symlink_to(tmp_path / "nowhere")
    again = type(reporter)()
    assert run_graph(Cache(directory), again) == {"2": (6.0,)}
    assert sorted(again.ran) == ["1", "2"]
    if breakage != "dangling-symlink":  # a dangling link reads as "no entry": nothing to warn about
        assert len(again.warnings) == 2 and all("cannot be read" in w for w in again.warnings)


def test_a_cache_directory_that_is_a_file_warns_once_and_keeps_results_in_memory(tmp_path: Path, reporter) -> None:
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("precious")
    cache = Cache(not_a_directory)
    assert run_graph(cache, reporter) == {"2": (6.0,)}
    assert reporter.warnings == [f"cache directory {not_a_directory} is not a directory; results are kept in memory only"]
    assert not_a_directory.read_text() == "precious"
    again = type(reporter)()
    run_graph(cache, again)
    assert again.cached == ["2"] and again.warnings == []


def test_entries_honour_the_umask_so_a_cache_can_be_shared(tmp_path: Path, reporter) -> None:
    previous = os.umask(0o002)
    try:
        entries = entries_after_one_run(tmp_path / "cache", reporter)
    finally:
        os.umask(previous)
    assert entries and all(stat.S_IMODE(entry.stat().st_mode) == 0o664 for entry in entries)


def make_leftovers(directory: Path) -> list[Path]:
    shard = next(p for p in directory.iterdir() if p.is_dir())
    leftovers = [shard / ("a" * 64 + ".1234abcd.tmp"), shard / "junk", shard / "broken-link", shard / (shard.name + "f" * 62 + ".entry")]
    leftovers[0].write_bytes(b"half an entry")
    leftovers[1].write_text("?")
    leftovers[2].symlink_to(directory / "gone")
    leftovers[3].mkdir()  # named like an entry, but a folder
    (leftovers[3] / "inside").write_text("x")
    (directory / "ab").write_text("a file named like a shard")
    return leftovers + [directory / "ab"]


def test_info_counts_real_entries_and_clear_removes_leftovers_but_nothing_else(tmp_path: Path, reporter, capsys) -> None:
    directory = tmp_path / "cache"
    entries = entries_after_one_run(directory, reporter)
    leftovers = make_leftovers(directory)
    (directory / "notes.txt").write_text("the user's own file")
    assert main(["cache", "info", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"{len(entries)} entries" in out and f"{len(leftovers)} leftovers" in out
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert f"removed {len(entries)} entries and {len(leftovers)} leftovers" in capsys.readouterr().out
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]


def test_cache_commands_on_a_missing_or_wrong_directory(tmp_path: Path, capsys) -> None:
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "0 entries" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_an_entry_this_user_may_not_read_warns_once_and_is_not_written_over(tmp_path: Path, reporter, monkeypatch) -> None:
    directory = tmp_path / "cache"
    entries = entries_after_one_run(directory, reporter)
    before = {entry: entry.stat().st_mtime_ns for entry in entries}

    def not_yours(path: Path) -> bytes:  # what another user's 0600 entry answers (root reads everything)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("runner.cache._read_regular_file", not_yours)
    again = type(reporter)()
    assert run_graph(Cache(directory), again) == {"2": (6.0,)}
    assert len(again.warnings) == 2 and all("Permission denied" in w for w in again.warnings)
    assert {entry: entry.stat().st_mtime_ns for entry in entries} == before
