"""Local executor: shards in parallel over a process pool (one shard per task), or inline for one worker."""

from __future__ import annotations

import multiprocessing as mp
import sys
from typing import Callable, Iterator


class LocalExecutor:
    """Runs tasks over `workers` processes; results come back as shards finish."""

    def __init__(self, workers: int):
        self.workers = workers

    def map(self, fn: Callable, tasks: list) -> Iterator:
        """Yields fn(task) for every task, in completion order."""
        n = min(self.workers, len(tasks))
        if n <= 1:
            yield from map(fn, tasks)  # no pool: easier to debug, and no start-up cost
            return
        # fork shares the stage objects (e.g. the language model) already loaded in the parent
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(n, maxtasksperchild=None) as pool:
            yield from pool.imap_unordered(fn, tasks, chunksize=1)

    def close(self) -> None:
        """Nothing to release: each map's pool closes when the map ends."""
