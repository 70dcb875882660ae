"""Name each duplicate's kept document by its id: every shard looks up the ids of its own documents
that others point at, then writes its removal list from the answers it was sent."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from data_pipelines.curate.run.arrays import load_array, values_in
from data_pipelines.curate.run.decide import load_decisions
from data_pipelines.curate.run.accounting import usage
from data_pipelines.curate.run.group import Group
from maxlm.files.readers import iter_records
from maxlm.files.writers import JsonlZstWriter


@dataclass(frozen=True)
class AnswerTask:
    """Shard `index` of a group with `stages` stages: the owner whose ids are looked up."""

    group: Group
    stages: int
    index: int


def _ids_at(path, wanted: np.ndarray) -> dict[int, object]:
    """Returns {local index: id} for the sorted local indices `wanted`, reading the ids file only up to the last."""
    out: dict[int, object] = {}
    if not len(wanted):
        return out
    need, last = set(wanted.tolist()), int(wanted[-1])
    for li, (_, doc_id) in enumerate(iter_records(path, strict=True)):
        if li in need:
            out[li] = doc_id
        if li >= last:
            break
    return out


def run_answer(task: AnswerTask) -> dict:
    """Writes, for every shard that points at this one's documents, their ids; returns per-stage cluster counts, and usage."""
    t0 = time.perf_counter()
    g, wd = task.group, task.group.workdir
    owner = g.shards[task.index]
    lo, hi = g.span(task.index)
    asked: dict[str, np.ndarray] = {}
    per_stage: list[list[np.ndarray]] = [[] for _ in range(task.stages)]
    for asker in g.shards:
        mine = [values_in(load_array(wd.roots(g.phase, j, asker)), lo, hi) for j in range(task.stages)]
        for j, m in enumerate(mine):
            per_stage[j].append(m)
        wanted = np.unique(np.concatenate(mine))
        if len(wanted):
            asked[asker] = wanted
    every = np.unique(np.concatenate([np.zeros(0, np.int64)] + list(asked.values())))
    ids = _ids_at(wd.ids(g.phase, owner), every - lo)
    for asker, wanted in asked.items():
        with JsonlZstWriter(wd.answers(g.phase, owner, asker), 1) as w:
            for gi in wanted.tolist():
                w.write([gi, ids[gi - lo]])
    clusters = [len(np.unique(np.concatenate(p))) if p else 0 for p in per_stage]
    return {"clusters": clusters, **usage(t0)}


@dataclass(frozen=True)
class RemovalsTask:
    """Shard `index` after the group's last stage `last_stage`."""

    group: Group
    last_stage: int
    index: int


def run_removals(task: RemovalsTask) -> dict:
    """Writes the shard's removal list [local index, group stage, duplicate_of id]; returns usage."""
    t0 = time.perf_counter()
    g, wd = task.group, task.group.workdir
    shard = g.shards[task.index]
    removed_by, dup_of = load_decisions(g, task.last_stage, task.index)
    local = np.flatnonzero(removed_by >= 0)
    owners = np.searchsorted(np.asarray(g.offsets), dup_of[local], side="right") - 1
    id_of: dict[int, object] = {}
    for o in np.unique(owners).tolist():
        for _, (gi, doc_id) in iter_records(wd.answers(g.phase, g.shards[o], shard), strict=True):
            id_of[int(gi)] = doc_id
    with JsonlZstWriter(wd.removals(g.phase, shard), 1) as w:
        for li in local.tolist():
            w.write([li, int(removed_by[li]), id_of[int(dup_of[li])]])
    return usage(t0)
