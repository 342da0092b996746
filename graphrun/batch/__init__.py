"""Many runs of one graph on Dask: batches (``--over``), sweeps (``--grid``), chains.

Every item is the graph with some constants replaced. The items are joined into one graph
(item ``i``'s node ``N`` becomes ``i/N``), validated at once and keyed by the cache's node keys,
so nodes that are identical across items (a model, a shared input's statistics) have one key,
become one Dask task and run once. Per-item problems fail that item only; the rest run. With a
disk cache that every worker sees (one machine, or a shared file system), a finished node is
never recomputed: a stopped batch resumes where it stopped.

items.py: what the items are (pure); prepare.py: join, validate, key; report.py: outcomes;
client.py: the cluster, through the Dask executor (graphrun/executors/dask.py). ``run_batch`` is loaded
from there on first use, so that importing the rest (the command line does, at every start) does not load
Dask (half a second).
"""

from typing import Any

from graphrun.batch.items import BatchError, Chain, Item, Over, batch_items, joined_prompt, parse_chain, parse_over
from graphrun.batch.report import BatchReporter, BatchResult, ItemResult, NodeRun

__all__ = [
    "BatchError",
    "BatchReporter",
    "BatchResult",
    "Chain",
    "Item",
    "ItemResult",
    "NodeRun",
    "Over",
    "batch_items",
    "joined_prompt",
    "parse_chain",
    "parse_over",
    "run_batch",
]


def __getattr__(name: str) -> Any:
    if name == "run_batch":
        from graphrun.batch.client import run_batch

        return run_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
