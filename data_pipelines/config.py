"""Curation pipeline config: a YAML file of input/output settings and a list of stages.

Every key is a dataclass field (stage parameters are each stage's `Params`); unknown or
mistyped keys fail at load time naming file:line, the key and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from maxlm.config import coerce
from maxlm.errors import MaxlmError


@dataclass
class InputConfig:
    """How input files become documents."""

    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"  # auto: from the file extension
    text_key: list[str] = field(default_factory=lambda: ["text"])  # first key present is the text
    id_key: str = "id"  # absent ids become "file:line"


@dataclass
class OutputConfig:
    """How curated shards are written."""

    format: Literal["jsonl.zst", "parquet", "arrayrecord"] = "jsonl.zst"  # arrayrecord: random access for maxlm train
    compression_level: int = 3  # zstd level for jsonl.zst output
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
    workers: int = 0  # 0: all cores
    batch_size: int = 1000  # documents per stage call; bounds worker memory
    dedup_memory_mb: int = 1024  # memory for merging spilled dedup buckets
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


# ---------------------------------------------------------------- YAML with line numbers


def _line_table(node: yaml.Node, path: tuple = (), table: dict | None = None) -> dict[tuple, int]:
    """Returns {key path: 1-based line} for every mapping key and sequence item under `node`."""
    table = {} if table is None else table
    table.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            table[path + (str(key),)] = k.start_mark.line + 1
            _line_table(v, path + (str(key),), table)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            table[path + (i,)] = v.start_mark.line + 1
            _line_table(v, path + (i,), table)
    return table


class _Where:
    """Names file:line of a key path for error messages."""

    def __init__(self, path: str, lines: dict[tuple, int]):
        self.path, self.lines = path, lines

    def __call__(self, *keys) -> str:
        for n in range(len(keys), -1, -1):
            if keys[:n] in self.lines:
                return f"{self.path}:{self.lines[keys[:n]]}"
        return self.path


# ---------------------------------------------------------------- typed coercion


def _suggest(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(valid)}"


def _value(value: Any, t: Any, key: str, where: str) -> Any:
    """Returns `value` checked and converted to type `t`, or raises MaxlmError naming `key`.

    Literal and dict fields are checked here (maxlm's own schema has neither); every other
    type goes through `maxlm.config.coerce`, the one set of value checks for all configs.
    """
    origin = typing.get_origin(t)
    if origin is Literal:
        choices = [str(c) for c in typing.get_args(t)]
        if str(value) not in choices:
            raise MaxlmError(f"{where}: {key} must be one of {', '.join(choices)}; got {value!r}{_suggest(str(value), choices)}")
        return str(value)
    if origin is dict:
        kt, vt = typing.get_args(t)
        if not isinstance(value, dict):
            raise MaxlmError(f"{where}: {key} must be a mapping, got {value!r}")
        return {_value(k, kt, f"{key} key", where): _value(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    return coerce(value, t, key, where)


def build(cls: type, raw: dict, prefix: str, where: _Where | Any) -> Any:
    """Returns dataclass `cls` built from `raw`; unknown keys fail with the nearest valid one."""
    types_ = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]
    kwargs = {}
    for k, v in raw.items():
        k = str(k)
        dotted = f"{prefix}.{k}" if prefix else k
        if k not in fields:
            raise MaxlmError(f"{where(*_keys(dotted))}: unknown key {dotted}{_suggest(k, fields)}")
        if dataclasses.is_dataclass(types_[k]) and isinstance(v, dict):
            kwargs[k] = build(types_[k], v, dotted, where)  # nested section keeps its own lines
        else:
            kwargs[k] = _value(v, types_[k], dotted, where(*_keys(dotted)))
    try:
        return cls(**kwargs)
    except ValueError as e:  # a Params.__post_init__ range check: "key: what is expected"
        bad = str(e).split(":", 1)[0]
        loc = where(*_keys(f"{prefix}.{bad}" if prefix else bad))
        raise MaxlmError(f"{loc}: {prefix + '.' if prefix else ''}{e}") from None


def _keys(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.replace("[", ".").replace("]", "").split("."))


# ---------------------------------------------------------------- loading


def _stage(item: Any, i: int, where: _Where, registry: dict[str, type]) -> tuple[str, Any]:
    """Returns (name, Params) of one `stages:` entry: `name`, or `{name: {param: value}}`."""
    names = sorted(registry)
    if isinstance(item, str):
        name, raw = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, raw = next(iter(item.items()))
        raw = raw or {}
    else:
        raise MaxlmError(f"{where('stages', i)}: stages[{i}] must be a stage name or {{name: {{params}}}}, got {item!r}")
    if name not in registry:
        raise MaxlmError(f"{where('stages', i)}: stages[{i}]: unknown stage {name!r}{_suggest(str(name), names)}")
    if not isinstance(raw, dict):
        raise MaxlmError(f"{where('stages', i, name)}: stages[{i}].{name} must be a mapping of parameters, got {raw!r}")
    params_cls = registry[name].Params
    prefix = f"stages[{i}].{name}"
    return name, build(params_cls, raw, prefix, where)  # the prefix is the YAML path itself


def load_pipeline(path: str | Path, stages: dict[str, type]) -> PipelineConfig:
    """Returns the validated PipelineConfig of a curation YAML file; `stages` is the stage table (curate.stages.STAGES)."""

    path = Path(path)
    if not path.is_file():
        raise MaxlmError(f"{path}: pipeline file not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MaxlmError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise MaxlmError(f"{path}: expected a mapping with a `stages:` list at the top level")
    where = _Where(str(path), _line_table(node) if node is not None else {})
    stages_raw = raw.pop("stages", None)
    if not isinstance(stages_raw, list) or not stages_raw:
        raise MaxlmError(f"{where('stages')}: `stages:` must be a non-empty list of stages")
    cfg = build(PipelineConfig, raw, "", where)
    seen: dict[str, int] = {}
    for i, item in enumerate(stages_raw):
        name, params = _stage(item, i, where, stages)
        seen[name] = seen.get(name, 0) + 1
        label = name if seen[name] == 1 else f"{name}#{seen[name]}"
        cfg.stages.append(StageSpec(name, label, params, where("stages", i)))
    cfg.path = str(path)
    if cfg.workers < 0:
        raise MaxlmError(f"{where('workers')}: workers must be >= 0 (0: all cores), got {cfg.workers}")
    if cfg.batch_size <= 0 or cfg.dedup_memory_mb <= 0:
        raise MaxlmError(f"{where('batch_size')}: batch_size and dedup_memory_mb must be > 0")
    if not cfg.input.text_key:
        raise MaxlmError(f"{where('input', 'text_key')}: input.text_key must name at least one field")
    return cfg
