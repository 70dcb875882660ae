"""The one config loader: YAML files (with `base_config:` chains), `a.b=v` overrides, typed values.

Used for `maxlm train` configs and for curation pipeline configs (data_pipelines/curate/config.py).
Every key is checked against a dataclass field: its type, its `Literal` choices and its
stated range. An error names where the value came from: `file:line` of the key in its YAML
file, or the override text.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from maxlm.config.ranges import out_of_range
from maxlm.config.schema import REPLACED_KEYS, Config, Inconsistent, choices, task_defaults, validate
from maxlm.errors import MaxlmError

CONFIGS_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


# ---------------------------------------------------------------- where each value came from


class Where:
    """Names the origin of a dotted key's value: `file:line` from a YAML file, or an override."""

    def __init__(self, default: str, origins: dict[tuple, str] | None = None):
        self.default, self.origins = default, dict(origins or {})

    def __call__(self, dotted: str = "") -> str:
        keys = key_path(dotted)
        for n in range(len(keys), -1, -1):
            if keys[:n] in self.origins:
                return self.origins[keys[:n]]
        return self.default

    def replaced(self, dotted: str, origin: str) -> Where:
        """Returns a copy where `dotted` and everything under it came from `origin`."""
        keys = key_path(dotted)
        kept = {k: v for k, v in self.origins.items() if k[: len(keys)] != keys}
        return Where(self.default, {**kept, keys: origin})


def key_path(dotted: str) -> tuple:
    """Returns the key path of a dotted key: "data.train_files[0].path" -> ("data", "train_files", 0, "path")."""
    if not dotted:
        return ()
    parts = dotted.replace("[", ".").replace("]", "").split(".")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _origins(node: yaml.Node, shown: str, path: tuple = (), table: dict | None = None) -> dict[tuple, str]:
    """Returns {key path: "file:line"} for every mapping key and sequence item under `node`."""
    table = {} if table is None else table
    table.setdefault(path, f"{shown}:{node.start_mark.line + 1}")
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = str(k.value)
            table[path + (key,)] = f"{shown}:{k.start_mark.line + 1}"
            _origins(v, shown, path + (key,), table)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            table[path + (i,)] = f"{shown}:{v.start_mark.line + 1}"
            _origins(v, shown, path + (i,), table)
    return table


def read_yaml(path: Path, shown: str, what: str = "config") -> tuple[Any, Where]:
    """Returns (the parsed YAML document, where each key of it is) of one file; `shown` names it in errors."""
    if not path.is_file():
        raise MaxlmError(f"{shown}: {what} file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise MaxlmError(f"{shown}: cannot read the {what} file: {getattr(e, 'strerror', None) or e}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MaxlmError(f"{shown}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    finally:
        loader.dispose()
    return data, Where(shown, _origins(node, shown) if node is not None else {})


# ---------------------------------------------------------------- typed values


def suggest(value: str, valid: list[str] | tuple[str, ...]) -> str:
    """Returns "; did you mean 'x'?" for the nearest of `valid`, or "; valid: ..." when none is near."""
    near = difflib.get_close_matches(value, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(valid)}"


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for name in _fields(cls):
        keys.append(prefix + name)
        if dataclasses.is_dataclass(hints[name]):
            keys += _all_keys(hints[name], prefix + name + ".")
    return keys


def _unknown_key(key: str, cls: type, prefix: str, where: str) -> MaxlmError:
    if prefix + key in REPLACED_KEYS:
        new = REPLACED_KEYS[prefix + key]
        return MaxlmError(f"{where}: {prefix + key} is no longer a key; it is replaced by {' and '.join(new.by)} ({new.hint})")
    near = difflib.get_close_matches(key, _all_keys(cls), n=1, cutoff=0.5)
    hint = f"; did you mean {prefix + near[0]}?" if near else f"; valid: {', '.join(_fields(cls))}"
    return MaxlmError(f"{where}: unknown key {prefix + key}{hint}")


def coerce(value: Any, t: Any, key: str, where: str | Where) -> Any:
    """Returns `value` checked and converted to type `t`, or raises MaxlmError naming `key` and where it came from."""
    where = where if isinstance(where, Where) else Where(where)
    origin = typing.get_origin(t)
    if dataclasses.is_dataclass(t):
        first = dataclasses.fields(t)[0]
        if isinstance(value, str) and first.type in ("str", str):
            value = {first.name: value}  # "path" shorthand for {path: ...}
        if not isinstance(value, dict):
            raise MaxlmError(f"{where(key)}: {key} must be a mapping, got {value!r}")
        return build(t, value, key + ".", where)
    if origin is Literal:
        valid = choices(t)
        if isinstance(value, (list, dict, bool)) or value is None or str(value) not in valid:
            raise MaxlmError(f"{where(key)}: {key} must be one of {', '.join(valid)}; got {value!r}{suggest(str(value), valid)}")
        return str(value)
    if origin is list:
        (item_t,) = typing.get_args(t)
        if value is None:
            return []
        if not isinstance(value, list):
            value = [value]
        return [coerce(v, item_t, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        kt, vt = typing.get_args(t)
        if not isinstance(value, dict):
            raise MaxlmError(f"{where(key)}: {key} must be a mapping, got {value!r}")
        return {coerce(k, kt, f"{key} key", where): coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return None if value is None else coerce(value, args[0], key, where)
    return _scalar(value, t, key, where(key))


def _scalar(value: Any, t: Any, key: str, where: str) -> Any:
    """Returns a bool, int, float or str value converted to `t`, or raises naming `key`."""
    if t is bool:
        if isinstance(value, bool):
            return value
        raise MaxlmError(f"{where}: {key} must be true or false, got {value!r}")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise MaxlmError(f"{where}: {key} must be an integer, got {value!r}")
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 3e-4 (no dot) as a string
            except ValueError:
                pass
        raise MaxlmError(f"{where}: {key} must be a number, got {value!r}")
    if t is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise MaxlmError(f"{where}: {key} must be a string, got {value!r}")
    return value


def build(cls: type, raw: dict, prefix: str, where: Where) -> Any:
    """Returns dataclass `cls` built from `raw`, each value typed and range-checked; `prefix` is "" or ends in "."."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    kwargs = {}
    for k, v in raw.items():
        k, dotted = str(k), prefix + str(k)
        if k not in fields:
            raise _unknown_key(k, cls, prefix, where(dotted))
        kwargs[k] = coerce(v, hints[k], dotted, where)
        bad = out_of_range(dotted, kwargs[k], fields[k].metadata.get("range"))
        if bad:
            raise MaxlmError(f"{where(dotted)}: {bad}")
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ check (curation stage parameters): "key: what is expected"
        bad = prefix + str(e).split(":", 1)[0]
        raise MaxlmError(f"{where(bad)}: {prefix}{e}") from None


# ---------------------------------------------------------------- maxlm configs


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _replaced_by(keys: tuple, top: dict) -> bool:
    """Returns whether `top` sets a non-mapping value above `keys`, hiding what a base file said there."""
    node: Any = top
    for part in keys[:-1]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, dict):
            return True
    return False


def _read_chain(path: Path, shown: str, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[tuple, str]]:
    """Returns (the raw mapping, {key path: origin}) of a YAML file with its `base_config:` chain merged under it."""
    if path in seen:
        raise MaxlmError(f"{shown}: base_config cycle: {' -> '.join(map(str, seen + (path,)))}")
    raw, where = read_yaml(path, shown)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise MaxlmError(f"{shown}: expected a mapping of config keys at the top level")
    bases = raw.pop("base_config", None) or []
    merged: dict = {}
    origins: dict[tuple, str] = {}
    for b in [bases] if isinstance(bases, str) else bases:
        bpath = ((path.parent / b) if (path.parent / b).exists() else CONFIGS_DIR / b).resolve()
        if not bpath.is_file():
            raise MaxlmError(f"{where('base_config')}: base_config: {bpath}: config file not found")
        braw, borigins = _read_chain(bpath, str(bpath), seen + (path,))
        origins = {k: v for k, v in origins.items() if not _replaced_by(k, braw)} | borigins
        merged = _merge(merged, braw)
    origins = {k: v for k, v in origins.items() if not _replaced_by(k, raw)} | where.origins
    return _merge(merged, raw), origins


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise MaxlmError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def _with_task_defaults(raw: dict) -> dict:
    """Returns a copy of `raw` with the per-task default (schema.per_task) of each key its task's config leaves unset."""
    out = dict(raw)
    for dotted, value in task_defaults(str(raw.get("task", Config.task))).items():
        *sections, name = dotted.split(".")
        node = out
        for part in sections:
            if not isinstance(node.get(part, {}), dict):
                break  # a non-mapping section: build() reports it
            node[part] = node = dict(node.get(part, {}))  # copied: the caller's mapping stays as it was
        else:
            node.setdefault(name, value)
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Returns (dotted key, YAML-parsed value) of a `key.sub=value` command-line override."""
    if "=" not in text:
        raise MaxlmError(f"override {text!r}: expected key.sub=value")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _check_key(dotted: str, where: str) -> None:
    cls: Any = Config
    prefix = ""
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls):
            raise MaxlmError(f"{where}: {prefix.rstrip('.')} has no sub-keys")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(part, cls, prefix, where)
        cls = hints[part]
        prefix += part + "."


def _moved_to_successors(raw: dict) -> dict:
    """Returns a copy of the nested dicts `raw` with each REPLACED_KEYS value under the keys that replaced it."""
    raw = copy.deepcopy(raw)
    for old, new in REPLACED_KEYS.items():
        *path, name = old.split(".")
        section = raw
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and name in section:
            value = section.pop(name)
            for key in new.by:
                section.setdefault(key.rsplit(".", 1)[-1], value)
    return raw


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Returns the validated Config from a YAML file (or defaults) plus `a.b=v` overrides."""
    raw, origins = _read_chain(Path(path).resolve(), str(path)) if path else ({}, {})
    where = Where(str(path) if path else "defaults", origins)
    for text in overrides:
        key, value = parse_override(text)
        _check_key(key, f"override {text!r}")
        _set_dotted(raw, key, value)
        where = where.replaced(key, f"override {text!r}")
    cfg = build(Config, _with_task_defaults(raw), "", where)
    try:
        validate(cfg)
    except Inconsistent as e:
        origin = next((where.origins[key_path(k)] for k in e.keys if key_path(k) in where.origins), None)
        if origin is None:
            raise
        raise MaxlmError(f"{origin}: {e}") from None
    return cfg


def from_dict(raw: dict, where: str = "config") -> Config:
    """Returns a validated Config from plain nested dicts (e.g. a checkpoint's saved config), replaced keys moved to their
    successors and each key the config leaves unset at its task's default."""
    cfg = build(Config, _with_task_defaults(_moved_to_successors(raw)), "", Where(where))
    validate(cfg)
    return cfg
