"""Merge task: the duplicate edges of one key range, over every shard's run and every band."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from data_pipelines.curate.run.arrays import save_array
from data_pipelines.curate.run.buckets import Run, range_edges, run_paths
from data_pipelines.curate.run.accounting import usage
from data_pipelines.curate.run.group import Group


@dataclass(frozen=True)
class MergeTask:
    """Key range `part` of `parts` of group stage `stage` (which has `bands` bands)."""

    group: Group
    stage: int
    bands: int
    part: int
    parts: int


def stage_runs(group: Group, stage: int) -> list[Run]:
    """Returns every shard's key run of group stage `stage`, with its global offset."""
    d = group.run_dir(stage)
    return [Run(*run_paths(d, s, stage), group.offsets[i]) for i, s in enumerate(group.shards)]


def run_merge(task: MergeTask) -> dict:
    """Writes the range's edges in both directions, sorted by source; returns its pair count and usage."""
    t0 = time.perf_counter()
    first, other = range_edges(stage_runs(task.group, task.stage), task.bands, task.part, task.parts)
    src, dst = np.concatenate([first, other]), np.concatenate([other, first])
    order = np.argsort(src, kind="stable")
    save_array(task.group.workdir.edges(task.group.phase, task.stage, task.part), np.stack([src[order], dst[order]]))
    return {"pairs": len(first), **usage(t0)}
