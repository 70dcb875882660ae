"""The selection pool in, the selected records and a summary out.

A pool is one file of SFT records read as `maxlm train` reads sft data (jsonl, .gz/.zst, a
JSON array, parquet): `prompt/response`, `messages`, or a public format the records adapter
knows (Alpaca / GPTeacher `instruction/input/output`, gsm8k `question/answer`). Every input
field is kept. A record without an `id` gets its 0-based index among the file's records
(the line index of a jsonl without blank lines), and the summary says how many got one.
Output: the selected records as jsonl, best first, each with a `select` object (method,
rank, score and the method's own numbers), and `<output stem>.summary.json` beside it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maxlm.files.atomic import write_json
from maxlm.files.writers import write_jsonl
from maxlm.data import records as records_lib
from maxlm.files.formats import BadRecord, as_record
from maxlm.errors import MaxlmError

Message = dict[str, str]


@dataclass
class PoolRecord:
    """One input record: every field (with `id`), its conversation, and where it is."""

    raw: dict
    messages: list[Message]  # normalized; the last message is the reply being scored
    where: str  # "file:line"

    @property
    def prompt(self) -> list[Message]:
        """Returns the messages before the reply."""
        return self.messages[:-1]

    @property
    def response(self) -> str:
        """Returns the reply's text."""
        return self.messages[-1]["content"]


@dataclass
class Pool:
    """The records of one input file, in file order."""

    path: str
    records: list[PoolRecord] = field(default_factory=list)
    ids_assigned: int = 0  # records that had no `id` and got their index

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class Selection:
    """A method's choice: pool indices best first, and per-record numbers to write under `select`."""

    order: np.ndarray  # int [K] pool indices, rank 0 first
    fields: dict[str, np.ndarray]  # name -> [N] (or [N, M]) per pool record; "score" is required
    summary: dict = field(default_factory=dict)  # the method's own summary entries


def read_pool(path: str | os.PathLike) -> Pool:
    """Returns the validated pool of `path`; a bad record fails naming file:line and what is wrong."""
    path = str(path)
    if not Path(path).is_file():
        raise MaxlmError(f"{path}: input file not found")
    pool = Pool(path)
    # The records module's reader: the same formats, line numbers and checks as `maxlm train`.
    for index, (lineno, raw) in enumerate(records_lib.raw_records(path)):
        where = f"{path}:{lineno}"
        try:
            record = as_record(raw)
        except BadRecord as e:
            raise MaxlmError(f"{where}: {e}") from None
        chats = records_lib.normalize("sft", record, where)
        if len(chats) != 1:
            raise MaxlmError(f"{where}: a record holding {len(chats)} conversations (seed-task instances) cannot be selected on its own")
        record = dict(record)
        if record.get("id") is None:
            record["id"] = index
            pool.ids_assigned += 1
        pool.records.append(PoolRecord(record, chats[0].messages, where))
    if not pool.records:
        raise MaxlmError(f"{path}: no records to select from (the file is empty)")
    return pool


def budget_for(pool: Pool, budget: int | None, fraction: float | None) -> int:
    """Returns how many records to select: `budget`, or `fraction` of the pool rounded up."""
    n = len(pool)
    if (budget is None) == (fraction is None):
        raise MaxlmError("give exactly one of --budget N and --fraction F")
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise MaxlmError(f"--fraction must be in (0, 1], got {fraction}")
        return max(1, math.ceil(fraction * n))
    if budget < 1:
        raise MaxlmError(f"--budget must be >= 1, got {budget}")
    if budget > n:
        raise MaxlmError(f"{pool.path}: --budget {budget} is larger than the pool, which holds {n} records")
    return budget


def top_n(score_N: np.ndarray, n: int, highest: bool, eligible_N: np.ndarray | None = None) -> np.ndarray:
    """Returns the indices of the n best eligible scores, best first (ties: lower index first; NaN never)."""
    score_N = np.asarray(score_N, np.float64)
    ok_N = ~np.isnan(score_N) if eligible_N is None else (~np.isnan(score_N) & eligible_N)
    idx = np.flatnonzero(ok_N)
    key = -score_N[idx] if highest else score_N[idx]
    return idx[np.argsort(key, kind="stable")][:n]


def summary_path(output: str | os.PathLike) -> Path:
    """Returns where the summary of `output` goes: `sel.jsonl` -> `sel.summary.json`."""
    out = Path(output)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".summary.json")


def write_selection(output: str | os.PathLike, pool: Pool, method: str, sel: Selection, summary: dict) -> dict:
    """Writes the selected records (best first) and the summary JSON; returns the summary."""

    def selected():
        for rank, i in enumerate(sel.order):
            # An earlier selection's `select` is replaced: the record carries the latest one.
            extra = {k: _json(v[i]) for k, v in sel.fields.items()}
            yield {**pool.records[i].raw, "select": {"method": method, "rank": rank, **extra}}

    write_jsonl(output, selected())
    picked = np.asarray(sel.fields["score"], np.float64)[sel.order]
    everything = np.asarray(sel.fields["score"], np.float64)
    full = {
        "method": method,
        "input": pool.path,
        "output": str(output),
        "pool": len(pool),
        "selected": int(len(sel.order)),
        "ids_assigned": pool.ids_assigned,
        "ids_note": "records without an `id` got their 0-based index in the input file" if pool.ids_assigned else "",
        "score_pool": _stats(everything),
        "score_selected": _stats(picked),
        **sel.summary,
        **summary,
    }
    write_json(summary_path(output), full)
    return full


def _stats(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)] if x.ndim == 1 else x[:0]
    if not x.size:
        return {}
    return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max()), "n": int(x.size)}


def _json(v):
    """Returns a JSON-ready copy of one per-record value: floats rounded, NaN/inf as null."""
    if isinstance(v, np.ndarray):
        return [_json(x) for x in v]
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None
