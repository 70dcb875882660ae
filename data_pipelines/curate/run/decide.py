"""Decide task: a shard's dedup decisions after one group stage, and the next stage's runs without its removals."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from data_pipelines.curate.run.arrays import load_array, save_array, save_npy
from data_pipelines.curate.run.buckets import run_paths
from data_pipelines.curate.run.accounting import usage
from data_pipelines.curate.run.group import Group
from maxlm.files.atomic import write_atomic


@dataclass(frozen=True)
class DecideTask:
    """Shard `index` after group stage `stage`, whose labels are final in round `final_round`;
    `prune_next` when a later stage of the group must not see what this one removed."""

    group: Group
    stage: int
    final_round: int
    index: int
    prune_next: bool


def load_decisions(group: Group, stage: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (removed_by [N] int16: group stage or -1, dup_of [N] int64: global index or -1) through `stage`."""
    lo, hi = group.span(index)
    if stage < 0:
        return np.full(hi - lo, -1, np.int16), np.full(hi - lo, -1, np.int64)
    with np.load(group.workdir.decisions(group.phase, stage, group.shards[index])) as z:
        return z["removed_by"], z["dup_of"]


def run_decide(task: DecideTask) -> dict:
    """Writes the shard's decisions and the roots its new duplicates point at; returns how many it removed, and usage."""
    t0 = time.perf_counter()
    g, wd, j = task.group, task.group.workdir, task.stage
    shard = g.shards[task.index]
    lo, hi = g.span(task.index)
    labels = load_array(wd.labels(g.phase, j, task.final_round, shard))
    removed_by, dup_of = load_decisions(g, j - 1, task.index)
    # documents removed earlier took no part in this stage, so they are their own labels
    newly = labels != np.arange(lo, hi)
    removed_by[newly], dup_of[newly] = j, labels[newly]
    save_array(wd.roots(g.phase, j, shard), np.unique(labels[newly]))
    if task.prune_next:
        _prune_run(g, j + 1, shard, removed_by >= 0)
    write_atomic(wd.decisions(g.phase, j, shard), lambda f: np.savez(f, removed_by=removed_by, dup_of=dup_of))
    return {"removed": int(newly.sum()), **usage(t0)}


def _prune_run(group: Group, stage: int, shard: str, removed_N: np.ndarray) -> None:
    """Writes the shard's key run of `stage` without the removed documents (every band holds the same documents)."""
    keys_BM, idx_BM = (np.load(p) for p in run_paths(group.workdir.phase_dir(group.phase), shard, stage))
    keep_BM = ~removed_N[idx_BM]
    bands = keys_BM.shape[0]
    kp, ip = run_paths(group.run_dir(stage), shard, stage)
    save_npy(kp, keys_BM[keep_BM].reshape(bands, -1))
    save_npy(ip, idx_BM[keep_BM].reshape(bands, -1))
