"""Process one shard in one phase: read, drop the previous dedup's duplicates, filter, write.

Everything a shard writes lands atomically, and its `.done.json` marker is written last, so a
crashed run redoes only shards without a marker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np

from maxlm.files.atomic import write_json
from data_pipelines.curate.config import PipelineConfig
from data_pipelines.curate.run.buckets import write_run
from data_pipelines.curate.document import Document, utf8_size
from maxlm.files.formats import BadRecord, StreamCut
from data_pipelines.curate.inputs import InputFile, read_documents
from data_pipelines.curate.run.accounting import peak_rss_mb
from data_pipelines.curate.run.workdir import Workdir
from data_pipelines.curate.run.plan import Phase
from data_pipelines.curate.stages import build_stage
from data_pipelines.curate.stats import StageStats
from maxlm.files.readers import iter_records
from maxlm.files.writers import JsonlZstWriter, open_writer

MAX_BAD_EXAMPLES = 100  # per shard, in the marker; every bad record is in removed/
INTERMEDIATE_LEVEL = 1  # zstd level for _work files: written once, read once, deleted

_STAGE_CACHE: dict[str, dict] = {}  # fingerprint -> {label: stage}; one build per worker process


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to process one shard in one phase (picklable for processes and Ray)."""

    cfg: PipelineConfig
    root: str
    phases: tuple[Phase, ...]
    phase: int
    shard: str
    source: InputFile


def stages_for(cfg: PipelineConfig) -> dict:
    """Returns {label: stage} for `cfg`, built and set up once per process."""
    key = cfg.fingerprint()
    if key not in _STAGE_CACHE:
        _STAGE_CACHE[key] = {s.label: build_stage(s.name, s.params) for s in cfg.stages}
    return _STAGE_CACHE[key]


def _batches(it: Iterator, n: int) -> Iterator[list]:
    while batch := list(islice(it, n)):
        yield batch


def _intermediate(path: Path, removals: dict[int, tuple[int, object]]) -> Iterator[tuple[Document, tuple | None]]:
    """Yields (document, (group stage, duplicate_of) or None) from a previous phase's shard."""
    for i, (_, (doc_id, where, text_key, text, meta, turn)) in enumerate(iter_records(path, strict=True)):
        yield Document(doc_id, text, meta, text_key, where, turn), removals.get(i)


class _Removed:
    """The shard's removed-docs file (or nothing when output.write_removed is off)."""

    def __init__(self, path: Path, enabled: bool):
        self.w = JsonlZstWriter(path, INTERMEDIATE_LEVEL) if enabled else None

    def write(self, rec: dict) -> None:
        """Appends one removed-document record."""
        if self.w is not None:
            self.w.write(rec)

    def close(self, ok: bool) -> None:
        """Finishes the file (discarded when the shard failed)."""
        if self.w is not None:
            self.w.close(ok)


def run_shard(task: ShardTask) -> dict:
    """Processes one shard in one phase and returns its marker (also written to disk)."""
    t_start = time.perf_counter()
    cfg, workdir, phase = task.cfg, Workdir(Path(task.root)), task.phases[task.phase]
    stages = stages_for(cfg)
    labels = [s.label for s in phase.after + phase.filters + phase.group]
    stats = {label: StageStats() for label in labels}
    bad = {"count": 0, "examples": [], "cut": None}  # cut: where the input's stream broke off, if it did
    read = {"docs": 0, "bytes": 0}
    removed = _Removed(workdir.removed(task.phase, task.shard), cfg.output.write_removed)
    if phase.group:
        out = JsonlZstWriter(workdir.docs(task.phase, task.shard), INTERMEDIATE_LEVEL)
        ids = JsonlZstWriter(workdir.ids(task.phase, task.shard), INTERMEDIATE_LEVEL)
    else:
        out = open_writer(workdir.output(task.shard, cfg.output.format), cfg.output.format, cfg.output.compression_level)
        ids = None
    keys: dict[int, list] = {j: [] for j in range(len(phase.group))}
    ok = False
    try:
        if task.phase == 0:
            source = ((item, None) for item in read_documents(task.source, cfg.input))
        else:
            source = _intermediate(workdir.docs(task.phase - 1, task.shard), _load_removals(workdir.removals(task.phase - 1, task.shard)))
        for batch in _batches(source, cfg.batch_size):
            docs = _admit(batch, phase, stats, bad, read, removed, task.source.path)
            for spec in phase.filters:
                docs = _apply(stages[spec.label], spec.label, docs, stats[spec.label], removed)
            if phase.group:
                for j, spec in enumerate(phase.group):
                    t0 = time.perf_counter()
                    keys[j].append(stages[spec.label].keys(docs))
                    stats[spec.label].seconds += time.perf_counter() - t0
                for d in docs:
                    out.write([d.id, d.where, d.text_key, d.text, d.meta, d.turn])
                    ids.write(d.id)
            else:
                for d in docs:
                    out.write(d.to_record())
        for j, spec in enumerate(phase.group):
            t0 = time.perf_counter()
            n_bands = stages[spec.label].bands
            k_NB = np.concatenate([k for k, _ in keys[j]]) if keys[j] else np.zeros((0, n_bands), np.uint64)
            v_N = np.concatenate([v for _, v in keys[j]]) if keys[j] else np.zeros(0, bool)
            write_run(workdir.phase_dir(task.phase), task.shard, j, k_NB, v_N)
            stats[spec.label].seconds += time.perf_counter() - t0
        ok = True
    finally:
        _close_all([out, ids, removed], ok)
    marker = {
        "shard": task.shard,
        "input": task.source.label,
        "phase": task.phase,
        "kept": out.count,
        "read": read,
        "bad": bad,
        "stages": {k: v.to_dict() for k, v in stats.items()},
        "seconds": time.perf_counter() - t_start,
        "rss_mb": peak_rss_mb(),
    }
    write_json(workdir.shard_done(task.phase, task.shard), marker)
    return marker


def _close_all(writers: list, ok: bool) -> None:
    """Closes every writer; after one fails to finish (a full disk), the rest are discarded and its error re-raised."""
    error = None
    for w in writers:
        if w is None:
            continue
        try:
            w.close(ok and error is None)
        except OSError as e:
            error = error or e
    if error is not None:
        raise error


def _admit(batch: list, phase: Phase, stats: dict, bad: dict, read: dict, removed: _Removed, task_path: str) -> list[Document]:
    """Returns the batch's documents that survive bad-record checks and the previous dedup."""
    docs = []
    for item, decision in batch:
        if isinstance(item, StreamCut):  # not a record: the end of what can be read
            bad["cut"] = {"path": task_path, "where": item.where, "problem": item.problem, "records_before": read["docs"] + bad["count"]}
            removed.write({"id": None, "where": item.where, "stage": "input", "reason": item.problem})
            continue
        if isinstance(item, BadRecord):
            bad["count"] += 1
            if len(bad["examples"]) < MAX_BAD_EXAMPLES:
                bad["examples"].append(f"{item.where}: {item.problem}")
            removed.write({"id": None, "where": item.where, "stage": "input", "reason": item.problem})
            continue
        size = utf8_size(item.text)
        read["docs"] += 1
        read["bytes"] += size
        # the previous group's stages in order: each sees what the ones before it kept
        for j, spec in enumerate(phase.after):
            st = stats[spec.label]
            st.docs_in += 1
            st.bytes_in += size
            if decision is not None and decision[0] == j:
                st.remove("duplicate", item.id, item.where, item.text, duplicate_of=decision[1])
                removed.write({"id": item.id, "where": item.where, "stage": spec.label, "reason": "duplicate", "duplicate_of": decision[1]})
                break
            st.docs_out += 1
            st.bytes_out += size
        else:
            docs.append(item)
    return docs


def _apply(stage, label: str, docs: list[Document], st: StageStats, removed: _Removed) -> list[Document]:
    """Returns the documents `stage` keeps, recording counts, bytes, time and removals in `st`."""
    t0 = time.perf_counter()
    stage.prepare(docs)
    kept = []
    for d in docs:
        size = utf8_size(d.text)
        st.docs_in += 1
        st.bytes_in += size
        try:
            reason = stage.process(d, st)
        except Exception as e:  # noqa: BLE001 - one odd document must not end a long run
            reason = f"error:{type(e).__name__}"
            st.count("errors")
        if reason is None:
            kept.append(d)
            st.docs_out += 1
            st.bytes_out += utf8_size(d.text)
        else:
            st.remove(reason, d.id, d.where, d.text)
            removed.write({"id": d.id, "where": d.where, "stage": label, "reason": reason})
    st.seconds += time.perf_counter() - t0
    return kept


def _load_removals(path: Path) -> dict[int, tuple[int, object]]:
    """Returns {local index: (group stage, duplicate_of id)} written by the dedup resolve."""
    return {int(i): (int(j), dup) for _, (i, j, dup) in iter_records(path, strict=True)} if path.exists() else {}
