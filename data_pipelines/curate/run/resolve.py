"""Resolve a group of dedup stages over the whole corpus as parallel tasks on the executor.

Per stage: merge tasks (one per key range) emit duplicate edges; propagation rounds (one task
per shard) find each cluster's smallest index; decide tasks record what each shard removes and
prune the next stage's keys. Then every shard looks up the ids others point at and writes its
removal list. The driver holds only shard names and counts, so its memory does not grow with
the corpus; each step's marker lets a rerun skip what is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from data_pipelines.curate.run.buckets import range_count
from data_pipelines.curate.run.components import PropagateTask, run_propagate
from data_pipelines.curate.run.decide import DecideTask, run_decide
from data_pipelines.curate.run.duplicate_ids import (
    AnswerTask,
    RemovalsTask,
    run_answer,
    run_removals,
)
from data_pipelines.curate.run.group import Group
from data_pipelines.curate.run.merge import MergeTask, run_merge, stage_runs
from data_pipelines.curate.run.workdir import Workdir
from maxlm.files.atomic import write_json


def _step(runner, fn: Callable, tasks: list, marker, extra: Callable[[list], dict] = lambda rs: {}) -> dict:
    """Runs one step's tasks (unless its marker exists) and returns its summary: tasks, wall seconds, peak task memory."""
    if marker.exists():
        return json.loads(marker.read_text())
    t0 = time.perf_counter()
    results = list(runner.map(fn, tasks))
    summary = {
        "tasks": len(tasks),
        "seconds": round(time.perf_counter() - t0, 3),
        "max_task_rss_mb": max((r["rss_mb"] for r in results), default=0.0),
        **extra(results),
    }
    write_json(marker, summary)
    return summary


def _components(runner, group: Group, j: int, parts: int, log: Callable[[str], None]) -> tuple[int, dict]:
    """Runs propagation rounds until one sends nothing; returns that round and the step's summary."""
    wd, r, seconds, peak = group.workdir, 0, 0.0, 0.0
    while True:
        tasks = [PropagateTask(group, j, r, i, parts) for i in range(len(group.shards))]
        s = _step(runner, run_propagate, tasks, wd.step_done(group.phase, j, f"cc{r}"), lambda rs: {"sent": sum(x["sent"] for x in rs)})
        seconds, peak = seconds + s["seconds"], max(peak, s["max_task_rss_mb"])
        log(f"dedup stage {j + 1}: components round {r + 1}, {s['sent']} labels sent")
        if s["sent"] == 0:
            return r, {"tasks": len(tasks) * (r + 1), "rounds": r + 1, "seconds": round(seconds, 3), "max_task_rss_mb": peak}
        r += 1


def resolve_group(workdir: Workdir, phase: int, shards: list[str], counts: list[int], stages: list, labels: list[str],
                  memory_bytes: int, runner, workers: int, log: Callable[[str], None] = lambda s: None) -> dict:
    """Writes every shard's removal list and the resolve marker; returns per-stage stats.

    Stages run in order; each sees only the documents the earlier ones kept.
    """
    offsets = tuple(int(x) for x in np.concatenate(([0], np.cumsum(counts))))
    group = Group(str(workdir.root), phase, tuple(shards), offsets)
    S, report = len(shards), {}
    for j, (stage, label) in enumerate(zip(stages, labels)):
        parts = range_count(stage_runs(group, j), memory_bytes, workers)
        merge = _step(runner, run_merge, [MergeTask(group, j, stage.bands, p, parts) for p in range(parts)],
                      workdir.step_done(phase, j, "merge"), lambda rs: {"pairs": sum(x["pairs"] for x in rs)})
        log(f"dedup stage {j + 1}/{len(stages)} ({label}): {merge['pairs']} candidate pairs from {parts} key ranges")
        final, comps = _components(runner, group, j, parts, log)
        decide = _step(runner, run_decide, [DecideTask(group, j, final, i, j + 1 < len(stages)) for i in range(S)],
                       workdir.step_done(phase, j, "decide"), lambda rs: {"removed": sum(x["removed"] for x in rs)})
        report[label] = {"candidate_pairs": merge["pairs"], "removed": decide["removed"],
                         "steps": {"merge": merge, "components": comps, "decide": decide}}
    answer = _step(runner, run_answer, [AnswerTask(group, len(stages), i) for i in range(S)],
                   workdir.resolve_dir(phase) / "answer.done.json",
                   lambda rs: {"clusters": np.sum([x["clusters"] for x in rs], axis=0).tolist() if rs else [0] * len(stages)})
    removals = _step(runner, run_removals, [RemovalsTask(group, len(stages) - 1, i) for i in range(S)],
                     workdir.resolve_dir(phase) / "removals.done.json")
    for j, label in enumerate(labels):
        r = report[label]
        r["clusters"] = int(answer["clusters"][j])
        # the id steps serve every stage of the group at once: they are reported beside the stages, not split over them
        r["seconds"] = round(sum(s["seconds"] for s in r["steps"].values()), 3)
    write_json(workdir.resolve_done(phase), {"stages": report, "documents": offsets[-1], "ids": {"answer": answer, "removals": removals}})
    return report
