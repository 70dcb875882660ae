"""Resolve a group of dedup stages over the whole corpus: merge spilled keys, find clusters,
keep each cluster's first document, and write per-shard removal lists naming `duplicate_of`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from maxlm.files.atomic import write_json
from data_pipelines.curate.run.buckets import Run, candidate_pairs, run_paths
from data_pipelines.curate.run.components import UnionFind
from data_pipelines.curate.run.workdir import Workdir
from maxlm.files.readers import iter_records
from maxlm.files.writers import JsonlZstWriter


def resolve_group(
    workdir: Workdir,
    phase: int,
    shards: list[str],
    counts: list[int],
    stages: list,
    labels: list[str],
    memory_bytes: int,
) -> dict:
    """Writes every shard's removal list and the resolve marker; returns per-stage stats.

    Stages run in order; each sees only the documents the earlier ones kept.
    """
    phase_dir = workdir.phase_dir(phase)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    n = int(offsets[-1])
    removed_by = np.full(n, -1, dtype=np.int16)  # group stage that removed the document
    dup_of = np.full(n, -1, dtype=np.int64)  # global index of the kept document it duplicates
    report: dict[str, dict] = {}
    for j, (stage, label) in enumerate(zip(stages, labels)):
        t0 = time.perf_counter()
        runs = [Run(*run_paths(phase_dir, s, j), int(offsets[i])) for i, s in enumerate(shards)]
        uf = UnionFind(n)
        pairs = 0
        for first, other in candidate_pairs(runs, stage.bands, memory_bytes, removed_by >= 0):
            pairs += len(first)
            uf.union(first, other)
        root = uf.roots()
        newly = (root != np.arange(n)) & (removed_by < 0)
        removed_by[newly] = j
        dup_of[newly] = root[newly]
        report[label] = {
            "seconds": time.perf_counter() - t0,
            "candidate_pairs": pairs,
            "clusters": int(len(np.unique(root[newly]))),
            "removed": int(newly.sum()),
        }
    id_of = _ids_of([workdir.ids(phase, s) for s in shards], offsets, np.unique(dup_of[dup_of >= 0]))
    for i, shard in enumerate(shards):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        local = np.flatnonzero(removed_by[lo:hi] >= 0)
        with JsonlZstWriter(workdir.removals(phase, shard), 1) as w:
            for li in local.tolist():
                w.write([li, int(removed_by[lo + li]), id_of[int(dup_of[lo + li])]])
    write_json(workdir.resolve_done(phase), {"stages": report, "documents": n})
    return report


def _ids_of(id_files: list[Path], offsets: np.ndarray, wanted: np.ndarray) -> dict[int, object]:
    """Returns {global index: document id} for the `wanted` (sorted) global indices."""
    out: dict[int, object] = {}
    for i, path in enumerate(id_files):
        lo, hi = offsets[i], offsets[i + 1]
        need = wanted[(wanted >= lo) & (wanted < hi)] - lo
        if not len(need):
            continue
        need_set = set(need.tolist())
        last = int(need.max())
        for li, (_, doc_id) in enumerate(iter_records(path, strict=True)):
            if li in need_set:
                out[int(lo) + li] = doc_id
            if li >= last:
                break
    return out
