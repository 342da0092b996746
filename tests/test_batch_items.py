"""A batch's items, values, templates and up-front checks (graphrun/batch/items.py, prepare.py): no cluster."""

from __future__ import annotations

from pathlib import Path

import fake_nodes
import pytest

from graphrun import load_graph
from graphrun.batch import BatchError, Over, batch_items, joined_prompt, parse_chain, parse_over
from graphrun.batch.prepare import check_inputs, check_size

REGISTRY = fake_nodes.registry()


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    for index in (0, 1, 2, 10):
        (tmp_path / f"frame_{index}.png").write_bytes(b"not really a picture")
    return tmp_path


def test_values_are_globs_ranges_or_lists(frames: Path) -> None:
    assert parse_over("1.image=frame_*.png", frames).values == (
        "frame_0.png",
        "frame_1.png",
        "frame_2.png",
        "frame_10.png",
    )  # natural order
    assert parse_over("12.weight=1:3").values == (1, 2, 3)
    assert parse_over("12.weight=0:1:0.25").values == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parse_over("12.weight=1e-3,0.01,abc").values == (0.001, 0.01, "abc")
    assert parse_over("3.size=[48,64]").values == (48, 64)
    with pytest.raises(BatchError, match="matches no files"):
        parse_over("1.image=nothing_*.png", frames)
    with pytest.raises(BatchError, match="never reaches"):
        parse_over("12.weight=3:1")
    with pytest.raises(BatchError, match="ID.INPUT"):
        parse_over("12=1,2")
    with pytest.raises(BatchError, match="the list is empty"):
        parse_over("12.weight=[]")


def test_an_existing_file_is_taken_as_it_is_named(frames: Path) -> None:
    """Not split at its comma, nor read as a glob for its brackets; a glob that matches nothing says how to quote."""
    for name in ("a,b.png", "photo[1].png"):
        (frames / name).write_bytes(b"")
        assert parse_over(f"1.image={name}", frames) == Over("1", "image", (name,), files=True)
        assert parse_over(f"1.image={frames / name}").values == (str(frames / name),)
    (frames / "7").write_bytes(b"")
    (frames / "1:2").write_bytes(b"")
    assert parse_over("15.seed=7", frames).values == (7,) and parse_over("15.seed=1:2", frames).values == (1, 2)
    with pytest.raises(BatchError, match=r"matches no files \(a name with \* \? \[ in it: give it as a JSON list\)"):
        parse_over(f"1.image={frames}/photo[2].png")


def test_items_zip_or_form_a_grid() -> None:
    weights, seeds = Over("12", "weight", (1, 2)), Over("15", "seed", (7, 8, 9))
    assert len(batch_items([weights, seeds], grid=True)) == 6
    assert [item.values for item in batch_items([weights, Over("15", "seed", (7,))])] == [
        {"12.weight": 1, "15.seed": 7},
        {"12.weight": 2, "15.seed": 7},
    ]
    with pytest.raises(BatchError, match="same length"):
        batch_items([weights, seeds])
    with pytest.raises(BatchError, match="given twice"):
        batch_items([Over("12", "weight", (1, 2)), Over("12", "weight", (3, 4))], grid=True)
    with pytest.raises(BatchError, match="at most 100,000"):
        batch_items([Over("12", "weight", tuple(range(1000))), Over("13", "weight", tuple(range(1000)))], grid=True)


def test_templates_fill_fields_and_refuse_unknown_ones() -> None:
    items = batch_items([Over("1", "image", ("a/x.png", "b/y.png"), files=True), Over("12", "weight", (5,))])
    prompt = {
        "1": {"class_type": "L", "inputs": {"image": "p.png"}},
        "12": {
            "class_type": "S",
            "inputs": {"weight": 1, "source": ["1", 0], "name": "{stem}_{weight}_{index}"},
        },
    }
    joined = joined_prompt(prompt, items)
    assert joined["1/12"]["inputs"] == {"weight": 5, "source": ["1/1", 0], "name": "y_5_1"}
    assert joined["0/1"]["inputs"]["image"] == "a/x.png"
    chained = joined_prompt(prompt, items, parse_chain("12.source=12:1"))
    assert chained["0/12"]["inputs"]["source"] == ["0/1", 0] and chained["1/12"]["inputs"]["source"] == ["0/12", 1]
    braces = {"12": {"class_type": "S", "inputs": {"name": "{{literal}}_{index}"}}}
    assert joined_prompt(braces, items)["0/12"]["inputs"]["name"] == "{literal}_0"
    for field in ("{unknown}", "{index:>5}", "{index.__class__}"):
        bad = {"12": {"class_type": "S", "inputs": {"name": f"out_{field}"}}}
        with pytest.raises(BatchError, match=r"not a field of the batch; the fields are \{index\}, \{stem\}"):
            joined_prompt(bad, items)


def test_every_file_value_has_a_stem(frames: Path) -> None:
    listed = parse_over("1.image=frame_0.png,frame_1.png", frames)
    assert listed.files and [item.stem for item in batch_items([listed])] == ["frame_0", "frame_1"]
    json_listed = parse_over('1.image=["frame_2.png", "frame_10.png"]', frames)
    assert [item.stem for item in batch_items([json_listed])] == ["frame_2", "frame_10"]
    assert not parse_over("1.image=frame_0.png,missing.png", frames).files  # not all files: no stem
    with pytest.raises(BatchError, match="fields are {index}, {12.weight}"):
        joined_prompt(
            {"12": {"class_type": "S", "inputs": {"name": "{stem}"}}}, batch_items([parse_over("12.weight=1,2")])
        )


CHAIN_GRAPH = {
    "1": {"class_type": "Number", "inputs": {"value": 1}},
    "2": {"class_type": "Countdown", "inputs": {"start": ["1", 0], "steps": 3}},
    "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
    "4": {"class_type": "ReadText", "inputs": {"path": "x.txt"}},
}


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ("2.start=2:5", r"node 2 \(Countdown\) has outputs 0..0, not 5"),
        ("2.start=17", "no node 17 in the graph"),
        ("2.start=3", r"node 3 \(Show\) has no outputs to chain"),
        ("2.start=4", r"input 2.start takes INT, but output 0 of node 4 \(ReadText\) is STRING"),
        ("2.begin=2", "node 2 .Countdown. has no input 'begin'; its inputs: start, steps"),
    ],
)
def test_a_bad_chain_is_refused_before_anything_runs(chain: str, message: str) -> None:
    graph = load_graph(CHAIN_GRAPH, registry=REGISTRY)
    items = batch_items([parse_over("1.value=1,2,3")])
    with pytest.raises(BatchError, match=message):
        check_inputs(graph, items, parse_chain(chain), REGISTRY)
    check_inputs(graph, items, parse_chain("2.start=2"), REGISTRY)  # a good chain passes


def test_a_batch_the_client_cannot_hold_is_refused_with_the_estimate() -> None:
    graph = load_graph(
        {str(i): {"class_type": "Number", "inputs": {"value": 1}} for i in range(19)}, registry=REGISTRY
    )  # the size of gatys.json
    check_size(graph, batch_items([parse_over("1.value=0:9999")]))
    with pytest.raises(
        BatchError,
        match=r"100,000 items of a 19-node graph would take about 9.1 GiB in the client; "
        r"at most 22,075 items fit",
    ):
        check_size(graph, batch_items([parse_over("1.value=0:99999")]))


def test_the_batch_console_says_a_warning_once_and_sums_up_a_long_list_of_files() -> None:
    """A client and a worker may both find one output file gone; a segment of a clip writes a file a frame."""
    import io

    from graphrun.batch.items import Item
    from graphrun.batch.report import ItemResult
    from graphrun.console import ConsoleBatchReporter

    stream = io.StringIO()
    console = ConsoleBatchReporter(2, stream)
    console.warning("node 0/3: out/a.png is missing or changed; writing it again")
    console.warning("node 0/3: out/a.png is missing or changed; writing it again")
    frames = [Path(f"out/frame_{index:05}.png") for index in range(250)]
    console.item_done(ItemResult(Item(0, {}), "done", 1.0, frames))
    console.item_done(ItemResult(Item(1, {}), "done", 2.0, frames[:2]))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("warning: node 0/3") and len(lines) == 3
    assert lines[1].endswith("-> out/frame_00000.png and 249 more")
    assert lines[2].endswith("-> out/frame_00000.png, out/frame_00001.png")
