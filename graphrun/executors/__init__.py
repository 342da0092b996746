"""Executors drive :class:`~graphrun.execute.Execution`'s step API: the local loop here, Dask on a cluster."""
