"""The disk cache under hostile or broken conditions: every failure is a miss with one warning, never a crash."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

import fake_nodes
import pytest

from graphrun import Cache, run
from graphrun.cache.disk import DiskStore, EntryTooLarge
from nst_nodes.app import main

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
    assert reporter.warnings == [
        f"cache directory {not_a_directory} is not a directory; results are not cached on disk"
    ]
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


def make_leftovers(directory: Path) -> tuple[list[Path], list[Path]]:
    """The cache's own debris, and files in its folders that are not the cache's."""
    shard = next(p for p in directory.iterdir() if p.is_dir())
    key = shard.name + "e" * 62
    leftovers = [shard / f"{key}.0123456789ab.tmp", shard / f"{shard.name + 'f' * 62}.entry", shard / f"{key}.entry"]
    leftovers.append(shard / f"{key}.progress.0123456789ab.tmp")  # a killed writer of kept progress
    leftovers[-1].write_bytes(b"half of it")
    leftovers[0].write_bytes(b"half an entry")  # a killed writer's
    leftovers[1].mkdir()  # named like an entry, but a folder
    (leftovers[1] / "inside").write_text("x")
    leftovers[2].symlink_to(directory / "gone")  # named like an entry, a broken link
    foreign = [shard / "notes.txt", shard / "other-link"]
    foreign[0].write_text("?")
    foreign[1].symlink_to(directory / "gone")
    (directory / "ab").write_text("a file named like a folder of the cache")
    return leftovers, foreign + [directory / "ab"]


def test_info_counts_real_entries_and_clear_removes_leftovers_but_nothing_else(
    tmp_path: Path, reporter, capsys
) -> None:
    directory = tmp_path / "cache"
    entries = entries_after_one_run(directory, reporter)
    leftovers, foreign = make_leftovers(directory)
    (directory / "notes.txt").write_text("the user's own file")
    assert main(["cache", "info", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"{len(entries)} entries" in out and f"{len(leftovers)} leftovers" in out
    assert "not the cache's: 2 files" in out
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert f"removed {len(entries)} entries and {len(leftovers)} leftovers" in capsys.readouterr().out
    assert all(path.exists() or path.is_symlink() for path in foreign) and (directory / "notes.txt").exists()
    assert not any(path.exists() or path.is_symlink() for path in leftovers + entries)


def test_clear_on_the_wrong_folder_loses_nothing(tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos" / "2023"
    for month in ("01", "02", "12"):
        (photos / month).mkdir(parents=True)
        (photos / month / "beach.jpg").write_text("x")
    (photos / "ab").mkdir()  # an empty folder named like one of the cache's
    assert main(["cache", "clear", "--cache-dir", str(photos)]) == 0
    assert "removed 0 entries and 0 leftovers" in capsys.readouterr().out
    assert sorted(p.name for p in photos.iterdir()) == ["01", "02", "12", "ab"]
    assert all((photos / month / "beach.jpg").exists() for month in ("01", "02", "12"))


def test_an_entry_moved_to_another_key_is_not_served(tmp_path: Path, reporter) -> None:
    directory = tmp_path / "cache"
    first, second = entries_after_one_run(directory, reporter)
    first_bytes, second_bytes = first.read_bytes(), second.read_bytes()
    first.write_bytes(second_bytes)
    second.write_bytes(first_bytes)
    again = type(reporter)()
    assert run_graph(Cache(directory), again) == {"2": (6.0,)}
    assert sorted(again.ran) == ["1", "2"] and all("another node" in w for w in again.warnings)


def test_the_disk_side_keeps_within_its_budget_oldest_first(tmp_path: Path, reporter) -> None:
    graph = {
        str(i): {"class_type": "Vector", "inputs": {"length": 1000, "scale": float(i), "kind": "ones"}}
        for i in range(1, 7)
    }  # about 5 KB an entry
    cache = Cache(tmp_path / "cache")
    for node_id in graph:  # one node per run, so their ages differ
        run({node_id: graph[node_id]}, registry=REGISTRY, device="cpu", cache=cache, outputs=[node_id])
        if node_id == "1":
            cache.disk_bytes = int(3.5 * cache.scan().entry_bytes)  # room for three entries
    assert cache.scan().entry_bytes <= cache.disk_bytes and len(cache.entries()) == 3
    newest = Cache(tmp_path / "cache")  # a later process finds the three newest results on disk
    again = type(reporter)()
    run(graph, registry=REGISTRY, device="cpu", cache=newest, reporter=again, outputs=list(graph))
    assert again.cached == ["4", "5", "6"] and again.ran == ["1", "2", "3"]


def test_an_entry_larger_than_the_whole_budget_is_not_kept_and_removes_nothing(tmp_path: Path, reporter) -> None:
    cache = Cache(tmp_path / "cache")
    run_graph(cache, reporter)
    small = cache.entries()
    cache.disk_bytes = cache.scan().entry_bytes + 1000  # room for these, not for the entry below (about 5 KB)
    large = {"1": {"class_type": "Vector", "inputs": {"length": 1000, "scale": 1.0, "kind": "ones"}}}
    again = type(reporter)()
    run(large, registry=REGISTRY, device="cpu", cache=cache, reporter=again, outputs=["1"])
    assert cache.entries() == small  # trimming to make room for it would have removed the others, then it
    assert [warning.split(" (")[0] for warning in again.warnings] == ["node 1: could not write its cache entry"]
    assert "more than the disk cache's budget" in again.warnings[0]
    assert run(large, registry=REGISTRY, device="cpu", cache=Cache(tmp_path / "cache"), outputs=["1"])  # a miss


def test_an_entry_too_large_for_the_budget_leaves_the_one_it_would_replace(tmp_path: Path) -> None:
    """A kept progress grows (a clip's, frame by frame): the last one that fitted stays."""
    store = DiskStore(tmp_path / "cache", budget=1000)
    key = "ab" * 32 + ".progress"
    assert store.write(key, lambda file: file.write(b"x" * 500))
    with pytest.raises(EntryTooLarge):
        store.write(key, lambda file: file.write(b"y" * 2000))
    assert store.path(key).read_bytes() == b"x" * 500 and store.problem is None
    assert sorted(path.name for path in store.path(key).parent.iterdir()) == [f"{key}.entry"]  # no temporary file


def test_a_cache_path_through_a_file_warns_once(tmp_path: Path, reporter) -> None:
    (tmp_path / "afile").write_text("x")
    assert run_graph(Cache(tmp_path / "afile" / "sub"), reporter) == {"2": (6.0,)}
    assert len(reporter.warnings) == 1 and "a part of its path is a file" in reporter.warnings[0]


def test_cache_commands_on_a_missing_or_wrong_directory(tmp_path: Path, capsys) -> None:
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "0 entries" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_an_entry_this_user_may_not_read_warns_once_and_is_not_written_over(
    tmp_path: Path, reporter, monkeypatch
) -> None:
    directory = tmp_path / "cache"
    entries = entries_after_one_run(directory, reporter)
    before = {entry: entry.stat().st_mtime_ns for entry in entries}

    def not_yours(path: Path) -> BinaryIO:  # what another user's 0600 entry answers (root reads everything)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("graphrun.cache.disk.open_regular_file", not_yours)
    again = type(reporter)()
    assert run_graph(Cache(directory), again) == {"2": (6.0,)}
    assert len(again.warnings) == 2 and all("Permission denied" in w for w in again.warnings)
    assert {entry: entry.stat().st_mtime_ns for entry in entries} == before


def fail_entry_writes(monkeypatch, error: BaseException) -> None:
    """Entry files' writes raise ``error`` after a few hundred bytes (a disk that fills, a second Ctrl-C).
    torch.save turns what a write raises into its own RuntimeError: the cache still sees ``error``."""
    from graphrun.cache import entry

    class FailingFile:
        def __init__(self, file: BinaryIO) -> None:
            self.file = file

        def write(self, data: bytes) -> int:
            if self.file.tell() > 600:
                raise error
            return self.file.write(data)

        def flush(self) -> None:
            self.file.flush()

    real_init = entry._HashingWriter.__init__
    monkeypatch.setattr(entry._HashingWriter, "__init__", lambda self, file: real_init(self, FailingFile(file)))


def test_a_disk_that_fills_while_an_entry_streams_to_it_warns_once_and_leaves_no_file(
    tmp_path: Path, reporter, monkeypatch
) -> None:
    import errno

    fail_entry_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    directory = tmp_path / "cache"
    cache = Cache(directory)
    assert run_graph(cache, reporter) == {"2": (6.0,)}
    assert reporter.warnings == [
        f"cannot write to cache directory {directory} (No space left on device); results are not cached on disk"
    ]
    assert not [path for path in directory.rglob("*") if path.is_file()]
    again = type(reporter)()
    assert run_graph(cache, again) == {"2": (6.0,)} and again.cached == ["2"]  # memory still serves


def test_a_second_stop_while_an_entry_streams_to_disk_stops_at_once_and_leaves_no_file(
    tmp_path: Path, monkeypatch
) -> None:
    import torch

    from graphrun.cache import NodeResult

    fail_entry_writes(monkeypatch, KeyboardInterrupt())
    cache = Cache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        cache.store("ab" * 32, NodeResult((torch.ones(1000),)), to_disk=True)
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert cache.take_disk_problem() is None  # not a disk that failed


def test_an_entry_streams_through_a_file_and_through_bytes_alike(tmp_path: Path) -> None:
    import io

    import torch

    from graphrun.cache.entry import NodeResult, decode_result, encode_result, read_entry, write_entry

    result = NodeResult((torch.arange(100_000.0), {"a": [1, "b"]}), {"text": ["x"]}, {"out.png": "0" * 64})
    with open(tmp_path / "entry", "w+b") as file:
        file.write(b"before ")  # an entry may start anywhere in a file
        write_entry(file, "k", result)
        file.seek(len(b"before "))
        from_file = read_entry(file, "k")
    from_bytes = decode_result(encode_result("k", result), "k")
    for back in (from_file, from_bytes):
        assert torch.equal(back.outputs[0], result.outputs[0]) and back.outputs[1] == {"a": [1, "b"]}
        assert (back.ui, back.files) == (result.ui, result.files)
    blob = bytearray(encode_result("k", result))
    blob[-10] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        read_entry(io.BytesIO(blob), "k")


def test_trimming_removes_killed_writers_temporary_files_but_not_a_live_ones(tmp_path: Path, reporter) -> None:
    directory = tmp_path / "cache"
    (directory / "ab").mkdir(parents=True)
    stale, live = (directory / "ab" / f"{'ab' * 32}.{digit * 12}.tmp" for digit in "01")
    for leftover in (stale, live):
        leftover.write_bytes(b"half an entry")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))  # untouched for two hours
    run_graph(Cache(directory), reporter)  # its first write trims
    assert not stale.exists() and live.exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts this process's open files in /proc")
def test_opening_what_is_not_a_regular_file_leaks_no_handle(tmp_path: Path) -> None:
    from graphrun.cache.disk import open_regular_file

    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(OSError):
            open_regular_file(tmp_path)  # a directory at an entry's name
    assert len(os.listdir("/proc/self/fd")) == before
