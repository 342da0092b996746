"""Batches on Dask (graphrun/batch/, graphrun/executors/dask.py): the semantics with the fake nodes on an
in-process cluster (fast), then the real network end to end, through the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fake_nodes
import numpy as np
import pytest
from PIL import Image

from graphrun import Folders, run
from graphrun.batch import BatchError, BatchReporter, parse_chain, parse_over
from graphrun.batch.client import run_batch

distributed = pytest.importorskip("distributed", reason="the cluster extra: pip install -e '.[cluster]'")

ROOT = Path(__file__).resolve().parent.parent
NST = str(Path(sys.executable).with_name("nst"))
DASK = str(Path(sys.executable).with_name("dask"))
REGISTRY = fake_nodes.registry()

SHARED_AND_OWN = {
    "1": {"class_type": "Number", "inputs": {"value": 1}},  # swept
    "5": {"class_type": "Number", "inputs": {"value": 7}},
    "6": {"class_type": "Countdown", "inputs": {"start": ["5", 0], "steps": 3}},  # the same in every item
    "7": {"class_type": "Add", "inputs": {"a": ["6", 0], "b": ["1", 0]}},
    "8": {"class_type": "WriteText", "inputs": {"value": ["7", 0], "name": "out_{index}.txt"}},
}


@pytest.fixture(scope="module")
def cluster():
    """Two in-process workers, one task at a time each: the fake nodes need no process of their own."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as local:
        yield local.scheduler_address


def batch(graph: dict[str, Any], overs: list[str], tmp_path: Path, cluster: str, **options: Any):
    return run_batch(
        graph,
        [parse_over(text) for text in overs],
        scheduler=cluster,
        registry=REGISTRY,
        cache_dir=tmp_path / "cache",
        folders=Folders(output=tmp_path / "out"),
        device="cpu",
        **options,
    )


def test_shared_nodes_run_once_and_a_rerun_is_all_cached(tmp_path: Path, cluster: str) -> None:
    result = batch(SHARED_AND_OWN, ["1.value=1,2,3"], tmp_path, cluster)
    assert [item.outcome for item in result.items] == ["done"] * 3
    ran = Counter(node.class_type for node in result.nodes if node.outcome == "ran")
    assert ran == {"Number": 4, "Countdown": 1, "Add": 3, "WriteText": 3}
    assert [(tmp_path / "out" / f"out_{i}.txt").read_text() for i in range(3)] == ["11", "12", "13"]
    assert {path.name for item in result.items for path in item.files} == {"out_0.txt", "out_1.txt", "out_2.txt"}
    assert "3 items: 3 done" in result.summary()
    again = batch(SHARED_AND_OWN, ["1.value=1,2,3"], tmp_path, cluster)
    assert [item.outcome for item in again.items] == ["cached"] * 3 and not again.nodes
    (tmp_path / "out" / "out_1.txt").unlink()  # an output file gone: that item's save runs again
    third = batch(SHARED_AND_OWN, ["1.value=1,2,3"], tmp_path, cluster)
    assert [item.outcome for item in third.items] == ["cached", "done", "cached"]
    assert [node.class_type for node in third.nodes if node.outcome == "ran"] == ["WriteText"]
    forced = batch(SHARED_AND_OWN, ["1.value=1,2,3"], tmp_path, cluster, recompute=["8"])  # as nst run's, per item
    assert Counter(node.class_type for node in forced.nodes if node.outcome == "ran") == {"WriteText": 3}
    with pytest.raises(BatchError, match="node '9' to recompute is not in the graph"):
        batch(SHARED_AND_OWN, ["1.value=1,2,3"], tmp_path, cluster, recompute=["9"])


def test_a_bad_item_fails_alone(tmp_path: Path, cluster: str) -> None:
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Reciprocal", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Checked", "inputs": {"even": 2}},
        "5": {"class_type": "Show", "inputs": {"value": ["4", 0]}},
    }
    result = batch(graph, ["1.value=1,0,2", "4.even=2,2,3"], tmp_path, cluster)
    assert [item.outcome for item in result.items] == ["done", "failed", "failed"]
    assert "node 2 (Reciprocal) failed: ZeroDivisionError" in result.items[1].error  # at run time, the node named
    assert "node 4 (Checked): even: 3 is odd" in result.items[2].error  # at validation, nothing of it ran
    assert len(result.failed) == 2


def test_a_chain_starts_each_item_from_the_last(tmp_path: Path, cluster: str) -> None:
    graph = {
        "1": {"class_type": "Number", "inputs": {"value": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
        "3": {"class_type": "WriteText", "inputs": {"value": ["2", 0], "name": "chain_{index}.txt"}},
    }
    result = batch(graph, ["1.value=1,2,3"], tmp_path, cluster, chain=parse_chain("2.a=2"))
    assert [item.outcome for item in result.items] == ["done"] * 3
    assert [(tmp_path / "out" / f"chain_{i}.txt").read_text() for i in range(3)] == ["2", "4", "7"]


class StopOnFirstProgress(BatchReporter):
    def __init__(self, *events: threading.Event) -> None:
        self.events = events
        self.items: list[str] = []

    def progress(
        self, node_id: str, class_type: str, step: int, total: int, info: dict[str, Any], preview: Any
    ) -> None:
        for event in self.events:
            event.set()

    def item_done(self, result: Any) -> None:
        self.items.append(result.outcome)


SLOW = {
    "1": {"class_type": "Number", "inputs": {"value": 1}},
    "2": {"class_type": "Slow", "inputs": {"start": ["1", 0], "steps": 3000}},
    "3": {"class_type": "WriteText", "inputs": {"value": ["2", 0], "name": "slow_{index}.txt"}},
}


def test_a_stop_saves_the_best_so_far_and_starts_nothing_new(tmp_path: Path) -> None:
    stop = threading.Event()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as one:
        started = time.monotonic()
        result = batch(
            SLOW, ["1.value=1,2,3"], tmp_path, one.scheduler_address, stop=stop, reporter=StopOnFirstProgress(stop)
        )
    assert time.monotonic() - started < 20  # 3 x 30 s if the stop went unheard
    assert [item.outcome for item in result.items] == ["partial", "not started", "not started"]
    written = int((tmp_path / "out" / "slow_0.txt").read_text())
    assert 1 < written < 3001  # the count so far, saved
    assert not (tmp_path / "out" / "slow_1.txt").exists()
    assert "1 partial, 2 not started" in result.summary()


def test_a_stopped_batch_says_which_items_kept_their_progress_and_the_same_batch_goes_on_from_it(
    tmp_path: Path,
) -> None:
    graph = {**SLOW, "2": {"class_type": "Resumable", "inputs": {"start": ["1", 0], "steps": 3000}}}
    stop = threading.Event()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as one:
        result = batch(
            graph, ["1.value=1,2"], tmp_path, one.scheduler_address, stop=stop, reporter=StopOnFirstProgress(stop)
        )
        assert [(item.outcome, item.kept) for item in result.items] == [("partial", True), ("not started", False)]
        assert "1 stopped item(s) kept their progress: the same batch again goes on from it" in result.summary()
        stopped_at = int((tmp_path / "out" / "slow_0.txt").read_text()) - 1
        again = Recording()
        rerun = batch(graph, ["1.value=1,2"], tmp_path, one.scheduler_address, reporter=again)
    assert [(item.outcome, item.kept) for item in rerun.items] == [("done", False), ("done", False)]
    assert "kept their progress" not in rerun.summary()
    assert [(tmp_path / "out" / f"slow_{i}.txt").read_text() for i in range(2)] == ["3001", "3002"]
    assert any("0/2 (Resumable): goes on from where a stopped run of it got to" in w for w in again.warnings)
    assert 1 <= stopped_at < 3000


class Recording(BatchReporter):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def test_an_abort_stops_waiting_and_reports_every_item(tmp_path: Path) -> None:
    stop, abort = threading.Event(), threading.Event()
    reporter = StopOnFirstProgress(stop, abort)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as one:
        result = batch(
            SLOW, ["1.value=1,2"], tmp_path, one.scheduler_address, stop=stop, abort=abort, reporter=reporter
        )
    assert [item.outcome for item in result.items] == ["unfinished", "unfinished"]  # a worker may still save
    assert sorted(reporter.items) == ["unfinished", "unfinished"]  # every item reported once


def test_more_local_workers_than_cores_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match=rf"--workers 1000: this machine has {os.cpu_count()} cores"):
        run_batch(
            SHARED_AND_OWN,
            [parse_over("1.value=1,2")],
            workers=1000,
            registry=REGISTRY,
            device="cpu",
            folders=Folders(output=tmp_path),
        )


# --- the real network, end to end --------------------------------------------------------------


def tiny_gatys(tmp_path: Path, steps: int = 2) -> Path:
    """gatys.json at 48 px with ``steps`` steps, every output named after the item."""
    graph = json.loads((ROOT / "graphs" / "gatys.json").read_text())
    graph["3"]["inputs"]["size"] = 48
    graph["4"]["inputs"]["size"] = 48 * 36
    graph["15"]["inputs"]["steps"] = steps
    graph["17"]["inputs"]["filename_prefix"] = "result_{stem}{index}"
    graph["19"]["inputs"]["filename_prefix"] = "history_{stem}{index}"
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(graph))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small photos: crops of the sample photo."""
    folder = tmp_path_factory.mktemp("photos")
    photo = Image.open(ROOT / "nst_nodes" / "samples" / "tubingen.jpg").convert("RGB").resize((192, 144))
    for index, left in enumerate((0, 48, 96)):
        photo.crop((left, 0, left + 96, 72)).save(folder / f"frame_{index}.png")
    return folder


def batch_on_one_worker(graph: Path, photos: Path, output: Path, *options: str) -> list[str]:
    """The `nst batch` command over the three photos, on one worker with one thread."""
    return [
        NST,
        "batch",
        str(graph),
        "--over",
        "1.image=frame_*.png",
        "--workers",
        "1",
        "--threads",
        "1",
        "--input-dir",
        str(photos),
        "--output-dir",
        str(output),
        "--device",
        "cpu",
        *options,
    ]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_nst_batch_on_a_dask_scheduler_matches_single_runs(tmp_path: Path, photos: Path) -> None:
    """`dask scheduler` + 2 `dask worker` processes, `nst batch --scheduler`: the same pixels as `nst run`."""
    scheduler_file = tmp_path / "scheduler.json"
    environment = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    started = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            started.append(
                subprocess.Popen(
                    [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                    env=environment,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        graph = tiny_gatys(tmp_path)
        done = subprocess.run(
            [
                NST,
                "batch",
                str(graph),
                "--over",
                "1.image=frame_*.png",
                "--scheduler",
                address,
                "--threads",
                "1",
                "--input-dir",
                str(photos),
                "--output-dir",
                str(tmp_path / "batch"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--device",
                "cpu",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "3 items: 3 done" in done.stderr
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers ran
    try:
        for index in range(3):
            run(
                graph,
                device="cpu",
                folders=Folders(output=tmp_path / "single"),
                overrides={
                    "1.image": str(photos / f"frame_{index}.png"),
                    "17.filename_prefix": f"result_frame_{index}{index}",
                },
            )
    finally:
        torch.set_num_threads(threads)
    for index in range(3):
        name = f"result_frame_{index}{index}.png"
        assert np.array_equal(pixels(tmp_path / "batch" / name), pixels(tmp_path / "single" / name))
        with Image.open(tmp_path / "batch" / name) as saved:  # the item's own graph, under its own ids
            assert json.loads(saved.info["prompt"])["1"]["inputs"]["image"] == f"frame_{index}.png"


def test_a_killed_batch_resumes_without_recomputing(tmp_path: Path, photos: Path) -> None:
    graph = tiny_gatys(tmp_path, steps=20)  # the other items still run when the kill comes, on a fast machine too
    command = batch_on_one_worker(graph, photos, tmp_path / "out", "--cache-dir", str(tmp_path / "cache"))
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finished() -> set[str]:  # items with both of their files written
        names = {path.name for path in (tmp_path / "out").glob("*.png")}
        return {
            name.removeprefix("result_")[:-4]
            for name in names
            if name.startswith("result_") and "history_" + name.removeprefix("result_") in names
        }

    deadline = time.monotonic() + 240
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = finished()
    assert done_before, process.stdout.read().decode()
    result = run_batch(
        graph,
        [parse_over("1.image=frame_*.png", photos)],
        workers=1,
        threads=1,
        cache_dir=tmp_path / "cache",
        folders=Folders(photos, tmp_path / "out"),
        device="cpu",
    )
    names = {str(item.item.index): f"{item.item.stem}{item.item.index}" for item in result.items}
    ran = {(names[node.node_id.split("/")[0]], node.class_type) for node in result.nodes if node.outcome == "ran"}
    # A kill between a save's file and its cache entry leaves that save to run again, never the optimization.
    assert not {(name, kind) for name, kind in ran if name in done_before and kind != "NSTSaveImage"}, ran
    assert len(done_before) < 3 and len({name for name, kind in ran if kind == "NSTOptimize"}) <= 3 - len(done_before)
    assert len(list((tmp_path / "out").glob("result_*.png"))) == 3


def test_nst_batch_stopped_by_two_signals_reports_every_item_without_a_traceback(tmp_path: Path, photos: Path) -> None:
    graph = tiny_gatys(tmp_path, steps=2000)
    process = subprocess.Popen(
        batch_on_one_worker(graph, photos, tmp_path / "out", "--no-cache"),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or ()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while not any("running:" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.2)  # until a worker reports the first optimization's progress (its 2000 steps take minutes)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "3 items:" in stderr and ("not started" in stderr or "unfinished" in stderr), stderr


def test_the_dask_executor_drives_an_execution_on_its_own(tmp_path: Path, cluster: str) -> None:
    """No batch: one execution's nodes as Dask tasks, a shared value shipped as a cache entry."""
    from graphrun import Cache, Execution, load_graph, plan
    from graphrun.cache.entry import decode_result
    from graphrun.executors.dask import DaskExecutor, TaskSettings, WorkerSetup
    from graphrun.reporting import SilentReporter

    graph = load_graph(
        {
            "1": {"class_type": "Number", "inputs": {"value": 2}},
            "2": {"class_type": "Opaque", "inputs": {"seed": 0}},  # never shipped: computed where it is read
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
            "4": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
            "5": {"class_type": "Show", "inputs": {"value": ["3", 0]}},
        },
        registry=REGISTRY,
    )
    execution = Execution(
        graph,
        REGISTRY,
        plan(graph, REGISTRY, ["3", "4"]),
        Cache(None),
        "cpu",
        Folders(output=tmp_path),
        threading.Event(),
        SilentReporter(),
    )
    settings = TaskSettings(
        cache=None,
        memory=1 << 20,
        device="cpu",
        input=".",
        output=str(tmp_path),
        confined=False,
        models=str(tmp_path),
        threads=None,
        run_id="test",
    )
    with distributed.Client(cluster) as client:
        client.register_plugin(WorkerSetup(REGISTRY))
        submission = DaskExecutor(client, settings).submit(execution)
        assert set(submission.futures) == {"3", "4"}
        entry = submission.futures["3"].result()
        assert decode_result(entry["entry"], execution.keys["3"]).outputs == (4,)
        assert entry["ran"] and not entry["partial"]
        assert submission.futures["4"].result()["ran"]


@pytest.mark.parametrize("option", ["--workers", "--threads"])
def test_nst_batch_refuses_no_workers_or_threads(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from nst_nodes.app import main

    with pytest.raises(SystemExit) as refused:
        main(["batch", str(tiny_gatys(tmp_path)), "--over", "1.image=frame_*.png", option, "0"])
    assert refused.value.code == 2
    assert f"{option}: '0' is not a whole number of at least 1" in capsys.readouterr().err
