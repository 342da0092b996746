"""What a batch's items are: swept values (``--over``), their zip or grid, chains, templates, and the
joined prompt that holds every item's copy of the graph (item ``i``'s node ``N`` is ``i/N``).
Pure functions: no cluster needed."""

from __future__ import annotations

import glob
import itertools
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphrun.graph import is_link

GLOB_CHARACTERS = re.compile(r"[*?\[]")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
RANGE = re.compile(rf"({NUMBER}):({NUMBER})(?::({NUMBER}))?")
FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
MAX_ITEMS = 100_000


class BatchError(ValueError):
    """The batch itself cannot start (a bad ``--over``, ``--chain`` or template)."""


@dataclass(frozen=True)
class Over:
    """One swept input: ``node_id.input_name`` takes each of ``values`` in turn."""

    node_id: str
    input_name: str
    values: tuple[Any, ...]
    files: bool = False  # every value names a file: ``{stem}`` is its name without the suffix

    @property
    def name(self) -> str:
        return f"{self.node_id}.{self.input_name}"


def _numeric_range(match: re.Match[str]) -> list[int | float]:
    start, stop = float(match.group(1)), float(match.group(2))
    step = float(match.group(3)) if match.group(3) else 1.0
    if step == 0 or (stop - start) / step < 0:
        raise BatchError(f"range {match.group(0)} never reaches its end (start:stop:step)")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > MAX_ITEMS:
        raise BatchError(f"range {match.group(0)} has {count:,} values; at most {MAX_ITEMS:,}")
    whole = all(part is None or re.fullmatch(r"[-+]?\d+", part) for part in match.groups())
    values = [start + i * step for i in range(count)]
    return [int(value) for value in values] if whole else [round(value, 12) for value in values]


def natural_key(text: str) -> list[int | str]:
    """Sort key that puts frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _name_files(values: list[Any], base: Path) -> bool:
    """Do all the values name existing files (relative to ``base`` or absolute)?"""

    def is_file(value: Any) -> bool:
        if not isinstance(value, str) or not value:
            return False
        path = Path(value).expanduser()
        return (path if path.is_absolute() else base / path).is_file()

    return all(is_file(value) for value in values)


def parse_over(text: str, input_folder: Path = Path(".")) -> Over:
    """``ID.INPUT=VALUES``: a JSON list, ``START:STOP[:STEP]`` (inclusive), one existing file (its name
    taken as it is), a glob of files (relative to ``input_folder``, in natural order: frame_2 before
    frame_10), or a comma list whose entries read as JSON where they parse (else as text)."""
    target, separator, raw = text.partition("=")
    node_id, dot, input_name = target.rpartition(".")
    if not separator or not dot or not node_id or not input_name:
        raise BatchError(f"--over {text!r:.80} is not of the form ID.INPUT=VALUES")
    base = Path(input_folder).expanduser()
    try:
        listed = json.loads(raw)
    except ValueError:
        listed = None
    if isinstance(listed, list):
        if not listed:
            raise BatchError(f"--over {target}: the list is empty")
        return Over(node_id, input_name, tuple(listed), _name_files(listed, base))
    if listed is None and not RANGE.fullmatch(raw.strip()) and _name_files([raw], base):
        return Over(node_id, input_name, (raw,), files=True)  # one file: its name may hold a comma or brackets
    if GLOB_CHARACTERS.search(raw):
        pattern = Path(raw).expanduser()
        matches = glob.glob(str(pattern if pattern.is_absolute() else base / raw))
        found = sorted(
            (
                path if pattern.is_absolute() else str(Path(path).relative_to(base))
                for path in matches
                if Path(path).is_file()
            ),
            key=natural_key,
        )
        if not found:
            where = "" if pattern.is_absolute() else f" in {base}"
            raise BatchError(
                f"--over {target}: {raw!r} matches no files{where} (a name with * ? [ in it: give it as a JSON list)"
            )
        return Over(node_id, input_name, tuple(found), files=True)
    match = RANGE.fullmatch(raw.strip())
    if match:
        return Over(node_id, input_name, tuple(_numeric_range(match)))
    values = []
    for part in raw.split(","):
        try:
            values.append(json.loads(part))
        except ValueError:
            values.append(part.strip())
    return Over(node_id, input_name, tuple(values), _name_files(values, base))


@dataclass(frozen=True)
class Chain:
    """Item ``i``'s ``node_id.input_name`` reads item ``i-1``'s output ``index`` of ``source_id``
    (a video: each frame starts from the previous frame's result). Item 0 keeps its own input."""

    node_id: str
    input_name: str
    source_id: str
    index: int = 0


def parse_chain(text: str) -> Chain:
    """``ID.INPUT=SOURCE_ID`` or ``ID.INPUT=SOURCE_ID:INDEX``."""
    target, _, source = text.partition("=")
    node_id, dot, input_name = target.rpartition(".")
    source_id, colon, index = source.partition(":")
    if not dot or not node_id or not input_name or not source_id or (colon and not index.isdecimal()):
        raise BatchError(f"--chain {text!r:.80} is not of the form ID.INPUT=SOURCE_ID[:OUTPUT_INDEX]")
    return Chain(node_id, input_name, source_id, int(index) if colon else 0)


@dataclass(frozen=True)
class Item:
    """One run of the batch: its position and the values it gives the swept inputs."""

    index: int
    values: dict[str, Any]
    stem: str | None = None

    @property
    def fields(self) -> dict[str, str]:
        """What ``{...}`` in a text input can name: ``index``, ``stem``, ``ID.INPUT`` and ``INPUT``."""
        found = {"index": str(self.index)}
        if self.stem is not None:
            found["stem"] = self.stem
        short = defaultdict(list)
        for name, value in self.values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            found[name] = text
            short[name.rpartition(".")[2]].append(text)
        found.update({name: texts[0] for name, texts in short.items() if len(texts) == 1 and name not in found})
        return found

    @property
    def label(self) -> str:
        shown = ", ".join(f"{name}={value}" for name, value in self.values.items())
        return f"item {self.index}" + (f" ({shown})" if shown else "")


def batch_items(overs: list[Over], grid: bool = False) -> list[Item]:
    """The items: the ``overs`` zipped (a list of one value goes with every item), or with ``grid``
    their cartesian product. No ``overs``: one item, the graph as it is."""
    if not overs:
        return [Item(0, {})]
    names = [over.name for over in overs]
    for name in names:
        if names.count(name) > 1:
            raise BatchError(f"--over {name} is given twice; put all its values in one --over")
    if grid and math.prod(len(over.values) for over in overs) > MAX_ITEMS:
        raise BatchError(f"--grid makes {math.prod(len(over.values) for over in overs):,} items; at most {MAX_ITEMS:,}")
    if grid:
        rows = list(itertools.product(*(over.values for over in overs)))
    else:
        lengths = {len(over.values) for over in overs if len(over.values) != 1}
        if len(lengths) > 1:
            described = ", ".join(f"{over.name} has {len(over.values)}" for over in overs)
            raise BatchError(
                f"--over lists zip together and must have the same length ({described}); "
                "add --grid for every combination"
            )
        count = lengths.pop() if lengths else 1
        rows = [tuple(over.values[i if len(over.values) > 1 else 0] for over in overs) for i in range(count)]
    items = []
    for index, row in enumerate(rows):
        stem = next((Path(value).stem for over, value in zip(overs, row, strict=True) if over.files), None)
        items.append(Item(index, {over.name: value for over, value in zip(overs, row, strict=True)}, stem))
    return items


def fill_template(text: str, fields: dict[str, str]) -> str:
    """``{name}`` replaced by the field ``name``; ``{{`` and ``}}`` are literal braces. A name that is
    no field (a typo, a format spec, an attribute) is a :class:`BatchError` listing the fields."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is None:
            return match.group(0)[0]
        name = match.group(1)
        if name not in fields:
            raise BatchError(
                f"{text!r:.80} names {{{name}}}, which is not a field of the batch; the fields are "
                f"{', '.join('{' + field + '}' for field in fields)} (write {{{{ and }}}} for braces)"
            )
        return fields[name]

    return FIELD.sub(replace, text)


def item_id(index: int, node_id: str) -> str:
    return f"{index}/{node_id}"


def split_item_id(node_id: str) -> tuple[int, str]:
    index, _, inner = node_id.partition("/")
    return int(index), inner


def joined_prompt(prompt: dict[str, Any], items: list[Item], chain: Chain | None = None) -> dict[str, Any]:
    """One prompt holding every item's copy of ``prompt``, its values and templates filled in (the
    swept and chained inputs are checked beforehand, by ``prepare.check_inputs``)."""
    joined: dict[str, Any] = {}
    for item in items:
        fields = item.fields
        for node_id, entry in prompt.items():
            inputs = {}
            for name, value in entry.get("inputs", {}).items():
                if is_link(value):
                    value = [item_id(item.index, str(value[0])), value[1]]
                elif isinstance(value, str):
                    value = fill_template(value, fields)
                inputs[name] = value
            for over_name, value in item.values.items():
                over_node, _, over_input = over_name.rpartition(".")
                if over_node == node_id:
                    inputs[over_input] = {"__value__": value} if isinstance(value, list) else value
            if chain is not None and item.index > 0 and node_id == chain.node_id:
                inputs[chain.input_name] = [item_id(item.index - 1, chain.source_id), chain.index]
            joined[item_id(item.index, node_id)] = {**entry, "inputs": inputs}
    return joined


def item_prompt(joined: dict[str, Any], index: int) -> dict[str, Any]:
    """Item ``index``'s graph under its own ids (what its nodes see as ``PROMPT``, e.g. in a saved file's metadata)."""
    prefix = f"{index}/"
    found = {}
    for node_id, entry in joined.items():
        if node_id.startswith(prefix):
            inputs = {
                name: [value[0].removeprefix(prefix), value[1]] if is_link(value) else value
                for name, value in entry.get("inputs", {}).items()
            }
            found[node_id.removeprefix(prefix)] = {**entry, "inputs": inputs}
    return found
