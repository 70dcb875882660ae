"""Run a curation pipeline end to end: validate, plan phases, process shards, resolve dedup, report.

Resumable: a shard's phase is skipped when its marker exists, and a dedup resolve when its
marker exists, so rerunning the same command after a crash finishes only what is left.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from maxlm.files.atomic import remove_stale_tmp, write_json, write_text
from data_pipelines.curate.config import PipelineConfig
from data_pipelines.curate.run.resolve import resolve_group
from data_pipelines.curate.inputs import InputFile, list_inputs
from data_pipelines.curate.report import write_report
from data_pipelines.curate.run.workdir import Workdir, shard_name
from data_pipelines.curate.run.accounting import peak_rss_mb
from data_pipelines.curate.run.local import LocalExecutor
from data_pipelines.curate.run.plan import plan_phases
from data_pipelines.curate.run.ray import RayExecutor
from data_pipelines.curate.run.shard import ShardTask, run_shard, stages_for
from maxlm.errors import MaxlmError
from maxlm.files.outputs import check_output_dir
from maxlm.files.writable import place_error


def _check_manifest(workdir: Workdir, cfg: PipelineConfig, inputs: list[InputFile]) -> bool:
    """Returns True when resuming; raises if DIR holds a different run or unrelated files."""
    want = {
        "fingerprint": cfg.fingerprint(),
        "inputs": [[f.path, os.path.getsize(f.path)] for f in inputs],
    }
    if workdir.manifest.exists():
        have = json.loads(workdir.manifest.read_text())
        if have.get("fingerprint") != want["fingerprint"] or have.get("inputs") != want["inputs"]:
            raise MaxlmError(
                f"{workdir.root}: holds a run with a different pipeline or different input files; "
                "choose another --output or delete it"
            )
        return True
    check_output_dir(workdir.root, "--output", None, what=", and is not a curation run")
    write_json(workdir.manifest, {**want, "pipeline": cfg.path})
    return False


def _check_not_over_inputs(root: Path, inputs: list[InputFile]) -> None:
    """Raises MaxlmError when an input file lies in --output DIR: the run writes there and would replace or mix with it."""
    root = root.resolve()
    for f in inputs:
        if Path(f.path).resolve().is_relative_to(root):
            raise MaxlmError(f"--output {root}: holds the input file {f.path}, which curated shards would be written over "
                             "or beside; choose an output directory outside the inputs")


def curate(
    cfg: PipelineConfig,
    input_glob: str,
    output_dir: str | os.PathLike,
    executor: str | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Runs the pipeline over the files matching `input_glob` into `output_dir`; returns the report."""
    t0 = time.perf_counter()
    inputs = list_inputs(input_glob)
    executor = executor or cfg.executor
    n_workers = workers or cfg.workers or os.cpu_count() or 1
    stages = stages_for(cfg)  # builds and sets up every stage: config problems surface before work
    workdir = Workdir(Path(output_dir))
    _check_not_over_inputs(workdir.root, inputs)
    try:
        resumed = _check_manifest(workdir, cfg, inputs)
        remove_stale_tmp(workdir.root)
        return _run(cfg, inputs, workdir, executor, n_workers, stages, resumed, log, t0)
    except OSError as e:
        why = place_error(e)
        if why is None:
            raise  # not the disk's fault: a bug, keep its traceback
        remove_stale_tmp(workdir.root)  # writers drop their own; this catches what killed workers left
        where = f" ({e.filename})" if e.filename else ""
        raise MaxlmError(f"--output {workdir.root}: writing failed{where}: {why} ({e.strerror}); "
                         "free space or fix the directory and rerun the same command to resume") from None


def _run(cfg: PipelineConfig, inputs: list[InputFile], workdir: Workdir, executor: str, n_workers: int, stages: dict,
         resumed: bool, log: Callable[[str], None], t0: float) -> dict:
    """Runs every phase over the shards not done yet and writes the report; returns it."""
    if cfg.path and Path(cfg.path).is_file():
        write_text(workdir.root / "pipeline.yaml", Path(cfg.path).read_text())  # what produced this run
    phases = tuple(plan_phases(cfg.stages, {s.name: stages[s.label].kind for s in cfg.stages}))
    runner = RayExecutor(n_workers) if executor == "ray" else LocalExecutor(n_workers)
    shards = [shard_name(i) for i in range(len(inputs))]
    done_before, timing = 0, []
    try:
        for k, phase in enumerate(phases):
            todo = [ShardTask(cfg, str(workdir.root), phases, k, s, f) for s, f in zip(shards, inputs) if not workdir.shard_done(k, s).exists()]
            done_before += len(shards) - len(todo)
            t_phase, peak = time.perf_counter(), 0.0
            for i, marker in enumerate(runner.map(run_shard, todo), 1):
                peak = max(peak, marker["rss_mb"])
                log(f"phase {k + 1}/{len(phases)}: {marker['shard']} ({marker['input']}) done, {marker['kept']} kept [{i}/{len(todo)}]")
            timing.append({"phase": k + 1, "tasks": len(todo), "seconds": round(time.perf_counter() - t_phase, 3), "max_task_rss_mb": peak})
            if phase.group and not workdir.resolve_done(k).exists():
                counts = [json.loads(workdir.shard_done(k, s).read_text())["kept"] for s in shards]
                labels = [s.label for s in phase.group]
                resolve_group(workdir, k, shards, counts, [stages[x] for x in labels], labels, cfg.dedup_memory_mb << 20,
                              runner, n_workers, log)
                log(f"phase {k + 1}/{len(phases)}: dedup resolved over {sum(counts)} documents")
    finally:
        runner.close()
    report = write_report(
        workdir, cfg, inputs, phases, shards,
        run={"executor": executor, "workers": n_workers, "wall_seconds": time.perf_counter() - t0,
             "resumed": resumed, "shard_phases_skipped": done_before, "phases": timing,
             "driver_peak_rss_mb": peak_rss_mb()},
    )
    if not cfg.output.keep_work:
        _drop_intermediate(workdir)
    return report


def _drop_intermediate(workdir: Workdir) -> None:
    """Deletes the bulky _work files once the run is complete; markers stay for resume and report."""
    for pattern in ("p*/*.docs.jsonl.zst", "p*/*.ids.jsonl.zst", "p*/*.npy", "r*/*.removed.jsonl.zst",
                    "r*/s*/*.np[yz]", "r*/s*/*.i64", "r*/s*/cc*/*.i64", "r*/ids/*.jsonl.zst"):
        for p in workdir.work.glob(pattern):
            p.unlink()
