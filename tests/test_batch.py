"""Batches, sweeps and chains of a graph on Dask (graphrun/batch.py), at tiny sizes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphrun import Folders, run
from graphrun.batch import BatchError, Over, batch_items, joined_prompt, parse_chain, parse_over, run_batch

distributed = pytest.importorskip("distributed", reason="the cluster extra: pip install -e '.[cluster]'")

ROOT = Path(__file__).resolve().parent.parent
NST = str(Path(sys.executable).with_name("nst"))
DASK = str(Path(sys.executable).with_name("dask"))


def tiny_gatys(tmp_path: Path) -> Path:
    """gatys.json at 48 px with 2 steps, every output named after the item."""
    graph = json.loads((ROOT / "graphs" / "gatys.json").read_text())
    graph["3"]["inputs"]["size"] = 48
    graph["4"]["inputs"]["size"] = 48 * 36
    graph["15"]["inputs"]["steps"] = 2
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


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of two worker processes, one task at a time each."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local.scheduler_address


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def single_run(graph: Path, output: Path, **overrides: object) -> None:
    run(graph, device="cpu", overrides=overrides, folders=Folders(output=output))


# --- items, values and templates ---------------------------------------------------------------

def test_values_are_globs_ranges_or_lists(photos: Path) -> None:
    assert parse_over("1.image=frame_*.png", photos).values == ("frame_0.png", "frame_1.png", "frame_2.png")
    assert parse_over("12.weight=1:3", photos).values == (1, 2, 3)
    assert parse_over("12.weight=0:1:0.25").values == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_over("12.weight=1e-3,0.01,abc").values == (0.001, 0.01, "abc")
    with pytest.raises(BatchError, match="matches no files"):
        parse_over("1.image=nothing_*.png", photos)
    with pytest.raises(BatchError, match="never reaches"):
        parse_over("12.weight=3:1")
    with pytest.raises(BatchError, match="ID.INPUT"):
        parse_over("12=1,2")


def test_items_zip_or_form_a_grid_and_fill_templates() -> None:
    weights, seeds = Over("12", "weight", (1, 2)), Over("15", "seed", (7, 8, 9))
    assert len(batch_items([weights, seeds], grid=True)) == 6
    with pytest.raises(BatchError, match="same length"):
        batch_items([weights, seeds])
    items = batch_items([Over("1", "image", ("a/x.png", "b/y.png"), files=True), Over("12", "weight", (5,))])
    prompt = {"1": {"class_type": "L", "inputs": {"image": "p.png"}},
              "12": {"class_type": "S", "inputs": {"weight": 1, "source": ["1", 0], "name": "{stem}_{weight}_{index}_{x}"}}}
    joined = joined_prompt(prompt, items)
    assert joined["1/12"]["inputs"] == {"weight": 5, "source": ["1/1", 0], "name": "y_5_1_{x}"}
    assert joined["0/1"]["inputs"]["image"] == "a/x.png"
    chained = joined_prompt(prompt, items, parse_chain("12.source=12:1"))
    assert chained["0/12"]["inputs"]["source"] == ["0/1", 0] and chained["1/12"]["inputs"]["source"] == ["0/12", 1]


def test_bad_sweeps_are_refused_up_front_with_one_clear_error(tmp_path: Path, photos: Path) -> None:
    (photos / "frame_10.png").write_bytes((photos / "frame_2.png").read_bytes())
    try:
        assert parse_over("1.image=frame_*.png", photos).values[-1] == "frame_10.png"  # natural order
    finally:
        (photos / "frame_10.png").unlink()
    assert parse_over("3.size=[48,64]").values == (48, 64)
    with pytest.raises(BatchError, match="given twice"):
        batch_items([Over("12", "weight", (1, 2)), Over("12", "weight", (3, 4))], grid=True)
    with pytest.raises(BatchError, match="at most 100,000"):
        batch_items([Over("12", "weight", tuple(range(1000))), Over("13", "weight", tuple(range(1000)))], grid=True)
    graph = tiny_gatys(tmp_path)
    with pytest.raises(BatchError, match=r"node 12 \(NSTStyleLoss\) has no input 'wieght'; its inputs: target, weight"):
        run_batch(graph, [parse_over("12.wieght=1,2")], device="cpu", folders=Folders(output=tmp_path / "out"))
    with pytest.raises(BatchError, match="no node 99"):
        run_batch(graph, chain=parse_chain("99.init=15"), device="cpu", folders=Folders(output=tmp_path / "out"))


def test_items_that_would_write_the_same_files_are_refused(tmp_path: Path, photos: Path, cluster: str) -> None:
    graph = tiny_gatys(tmp_path)
    with pytest.raises(BatchError, match=r"write the same files with node 19 \(NSTSaveImage\).*--set 19.filename_prefix"):
        run_batch(graph, [parse_over("1.image=frame_*.png", photos)], overrides=["19.filename_prefix=history"],
                  scheduler=cluster, folders=Folders(photos, tmp_path / "out"), device="cpu")


# --- on a cluster ------------------------------------------------------------------------------

def test_a_batch_over_three_photos_matches_single_runs(tmp_path: Path, photos: Path, cluster: str) -> None:
    graph = tiny_gatys(tmp_path)
    result = run_batch(graph, [parse_over("1.image=frame_*.png", photos)], scheduler=cluster, threads=1,
                       cache_dir=tmp_path / "cache", folders=Folders(photos, tmp_path / "batch"), device="cpu")
    assert [item.outcome for item in result.items] == ["done"] * 3
    assert {path.name for item in result.items for path in item.files} == {
        f"{kind}_frame_{i}{i}.png" for kind in ("result", "history") for i in range(3)}
    ran = Counter(node.class_type for node in result.nodes if node.outcome == "ran")
    assert ran["NSTOptimize"] == 3 and ran["NSTStyleStatistics"] == 1  # the style's statistics: once for all
    assert 1 <= ran["NSTVGG19"] <= 2  # once per worker, never shipped
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers ran
    try:
        for index in range(3):
            single_run(graph, tmp_path / "single", **{"1.image": str(photos / f"frame_{index}.png"),
                                                      "17.filename_prefix": f"result_frame_{index}{index}"})
    finally:
        torch.set_num_threads(threads)
    for index in range(3):
        name = f"result_frame_{index}{index}.png"
        assert np.array_equal(pixels(tmp_path / "batch" / name), pixels(tmp_path / "single" / name))
        with Image.open(tmp_path / "batch" / name) as saved:  # the item's own graph, under its own ids
            assert json.loads(saved.info["prompt"])["1"]["inputs"]["image"] == f"frame_{index}.png"


def test_a_sweep_runs_shared_nodes_once(tmp_path: Path, cluster: str) -> None:
    graph = tiny_gatys(tmp_path)
    overs = [parse_over("12.weight=1e5,1e7"), parse_over("13.weight=0,0.01")]
    overrides = ["17.filename_prefix=sweep_{12.weight}_{13.weight}", "19.filename_prefix=history_{index}"]
    result = run_batch(graph, overs, grid=True, overrides=overrides, scheduler=cluster, threads=1,
                       cache_dir=tmp_path / "cache", folders=Folders(output=tmp_path / "out"), device="cpu")
    assert [item.outcome for item in result.items] == ["done"] * 4
    ran = Counter(node.class_type for node in result.nodes if node.outcome == "ran")
    assert ran["NSTOptimize"] == 4 and ran["NSTStyleStatistics"] == 1 and ran["NSTFeatures"] == 2
    assert ran["NSTLoadImage"] == 2 and 1 <= ran["NSTContentLoss"] <= 2  # a loss is built on each worker using it
    assert result.shared_saving > 0
    names = {path.name for path in (tmp_path / "out").glob("sweep_*.png")}
    assert names == {"sweep_100000.0_0.png", "sweep_100000.0_0.01.png", "sweep_10000000.0_0.png",
                     "sweep_10000000.0_0.01.png"}
    again = run_batch(graph, overs, grid=True, overrides=overrides, scheduler=cluster, threads=1,
                      cache_dir=tmp_path / "cache", folders=Folders(output=tmp_path / "out"), device="cpu")
    assert [item.outcome for item in again.items] == ["cached"] * 4 and not again.nodes


def test_a_bad_item_fails_alone(tmp_path: Path, photos: Path, cluster: str) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("frame_0.png", "frame_2.png"):
        (frames / name).write_bytes((photos / name).read_bytes())
    whole = (photos / "frame_1.png").read_bytes()
    (frames / "frame_1.png").write_bytes(whole[: len(whole) // 3])  # a truncated file: its header is fine
    result = run_batch(tiny_gatys(tmp_path), [parse_over("1.image=frame_*.png", frames)], scheduler=cluster,
                       threads=1, cache_dir=tmp_path / "cache", folders=Folders(frames, tmp_path / "out"),
                       device="cpu")
    assert [item.outcome for item in result.items] == ["done", "failed", "done"]
    assert "node 1 (NSTLoadImage) failed" in result.items[1].error
    assert len(result.failed) == 1
    missing = run_batch(tiny_gatys(tmp_path), [parse_over("1.image=frame_0.png,nope.png", frames)],
                        scheduler=cluster, threads=1, cache_dir=tmp_path / "cache",
                        folders=Folders(frames, tmp_path / "out"), device="cpu")
    assert [item.outcome for item in missing.items] == ["done", "failed"]
    assert "node 1 (NSTLoadImage): image: file not found" in missing.items[1].error


def test_frames_chain_each_optimization_to_the_last(tmp_path: Path, photos: Path, cluster: str) -> None:
    graph = tiny_gatys(tmp_path)
    over = [parse_over("1.image=frame_*.png", photos)]
    chained = run_batch(graph, over, chain=parse_chain("15.init=15"), scheduler=cluster, threads=1,
                        cache_dir=tmp_path / "cache", folders=Folders(photos, tmp_path / "chain"), device="cpu")
    assert [item.outcome for item in chained.items] == ["done"] * 3
    fan = run_batch(graph, over, scheduler=cluster, threads=1, cache_dir=tmp_path / "cache",
                    folders=Folders(photos, tmp_path / "fan"), device="cpu")
    first, second = "result_frame_00.png", "result_frame_11.png"
    assert np.array_equal(pixels(tmp_path / "chain" / first), pixels(tmp_path / "fan" / first))
    assert not np.array_equal(pixels(tmp_path / "chain" / second), pixels(tmp_path / "fan" / second))


def test_a_killed_batch_resumes_without_recomputing(tmp_path: Path, photos: Path) -> None:
    graph = tiny_gatys(tmp_path)
    graph_data = json.loads(graph.read_text())
    graph_data["15"]["inputs"]["steps"] = 6
    graph.write_text(json.dumps(graph_data))
    command = [NST, "batch", str(graph), "--over", "1.image=frame_*.png", "--workers", "1", "--threads", "1",
               "--input-dir", str(photos), "--output-dir", str(tmp_path / "out"), "--cache-dir",
               str(tmp_path / "cache"), "--device", "cpu"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    def finished() -> set[str]:  # items with both of their files written
        names = {path.name for path in (tmp_path / "out").glob("*.png")}
        return {name.removeprefix("result_")[:-4] for name in names
                if name.startswith("result_") and "history_" + name.removeprefix("result_") in names}

    deadline = time.monotonic() + 240
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = finished()
    assert done_before, process.stdout.read().decode()
    result = run_batch(graph, [parse_over("1.image=frame_*.png", photos)], workers=1, threads=1,
                       cache_dir=tmp_path / "cache", folders=Folders(photos, tmp_path / "out"), device="cpu")
    resumed = {f"{item.item.stem}{item.item.index}": item.outcome for item in result.items}
    assert all(resumed[name] == "cached" for name in done_before) and len(done_before) < 3
    optimized = [node for node in result.nodes if node.class_type == "NSTOptimize" and node.outcome == "ran"]
    assert len(optimized) <= 3 - len(done_before)
    assert len(list((tmp_path / "out").glob("result_*.png"))) == 3


def test_a_batch_through_dask_scheduler_and_workers(tmp_path: Path, photos: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    environment = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    started = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(scheduler_file)], env=environment,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            started.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--no-dashboard",
                                             "--host", "127.0.0.1"], env=environment, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True))
        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        done = subprocess.run([NST, "batch", str(tiny_gatys(tmp_path)), "--over", "1.image=frame_*.png",
                               "--scheduler", address, "--threads", "1", "--input-dir", str(photos),
                               "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                               "--device", "cpu"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "3 items: 3 done" in done.stderr
        assert len(list((tmp_path / "out").glob("result_*.png"))) == 3
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
