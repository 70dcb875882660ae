"""Curation pipeline config: a YAML file of input/output settings and a list of stages.

Every key is a dataclass field (stage parameters are each stage's `Params`), read by maxlm's
one config loader (maxlm/config/load.py): unknown or mistyped keys, choices and ranges fail at
load time naming file:line, the key and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maxlm.config import Where, build, ranged, read_yaml, suggest
from maxlm.errors import MaxlmError


@dataclass
class InputConfig:
    """How input files become documents."""

    format: Literal["auto", "jsonl", "parquet", "text", "warc"] = "auto"  # auto: from the file extension (.warc, .warc.gz: warc)
    text_key: list[str] = field(default_factory=lambda: ["text"])  # first key present is the text
    id_key: str = "id"  # absent ids become "file:line"
    # CPU seconds trafilatura may spend on one WARC page before the page is a bad record (datatrove's
    # Trafilatura `timeout`, 1 s too, counts wall-clock seconds); at most a day (a timer cannot hold .inf)
    warc_timeout_s: float = ranged(1.0, gt=0, le=86400)


@dataclass
class OutputConfig:
    """How curated shards are written."""

    format: Literal["jsonl.zst", "parquet", "arrayrecord"] = "jsonl.zst"  # arrayrecord: random access for maxlm train
    compression_level: int = ranged(3, le=22)  # zstd level for jsonl.zst output (22: zstd's highest)
    write_removed: bool = True  # DIR/removed/*.jsonl.zst: id, stage, reason, duplicate_of
    keep_work: bool = False  # keep DIR/_work intermediate shards after a successful run


@dataclass
class StageSpec:
    """One configured stage: its registered name, a unique label for reports, its parameters."""

    name: str
    label: str
    params: Any
    where: str  # "file:line" of the stage in the YAML


@dataclass
class PipelineConfig:
    """A whole curation run as read from PIPELINE.yaml."""

    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    executor: Literal["local", "ray"] = "local"
    workers: int = ranged(0, ge=0)  # 0: all cores
    batch_size: int = ranged(1000, gt=0)  # documents per stage call; bounds worker memory
    dedup_memory_mb: int = ranged(1024, gt=0)  # memory for merging spilled dedup buckets
    stages: list[StageSpec] = field(default_factory=list, metadata={"yaml": False})
    path: str = field(default="", metadata={"yaml": False})  # the YAML file this came from

    def fingerprint(self) -> str:
        """Returns a hash of everything that changes the output (not executor or workers)."""
        raw = {
            "input": dataclasses.asdict(self.input),
            "output": {k: v for k, v in dataclasses.asdict(self.output).items() if k != "keep_work"},
            "stages": [(s.name, dataclasses.asdict(s.params)) for s in self.stages],
        }
        return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- loading


def _stage(item: Any, i: int, where: Where, stages: dict[str, type]) -> tuple[str, Any]:
    """Returns (name, Params) of one `stages:` entry: `name`, or `{name: {param: value}}`."""
    if isinstance(item, str):
        name, raw = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, raw = next(iter(item.items()))
        raw = raw or {}
    else:
        raise MaxlmError(f"{where(f'stages[{i}]')}: stages[{i}] must be a stage name or {{name: {{params}}}}, got {item!r}")
    if name not in stages:
        raise MaxlmError(f"{where(f'stages[{i}]')}: stages[{i}]: unknown stage {name!r}{suggest(str(name), sorted(stages))}")
    prefix = f"stages[{i}].{name}"  # the YAML path itself, so that errors find their line
    if not isinstance(raw, dict):
        raise MaxlmError(f"{where(prefix)}: {prefix} must be a mapping of parameters, got {raw!r}")
    return name, build(stages[name].Params, raw, prefix + ".", where)


def load_pipeline(path: str | Path, stages: dict[str, type]) -> PipelineConfig:
    """Returns the validated PipelineConfig of a curation YAML file; `stages` is the stage table (curate.stages.STAGES)."""
    raw, where = read_yaml(Path(path), str(path), what="pipeline")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise MaxlmError(f"{path}: expected a mapping with a `stages:` list at the top level")
    stages_raw = raw.pop("stages", None)
    if not isinstance(stages_raw, list) or not stages_raw:
        raise MaxlmError(f"{where('stages')}: `stages:` must be a non-empty list of stages")
    cfg = build(PipelineConfig, raw, "", where)
    seen: dict[str, int] = {}
    for i, item in enumerate(stages_raw):
        name, params = _stage(item, i, where, stages)
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        cfg.stages.append(StageSpec(name, label, params, where(f"stages[{i}]")))
    cfg.path = str(path)
    if not cfg.input.text_key:
        raise MaxlmError(f"{where('input.text_key')}: input.text_key must name at least one field")
    return cfg
