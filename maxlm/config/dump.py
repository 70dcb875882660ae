"""A config written back out: plain dicts, and the resolved YAML a run directory keeps."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from maxlm.config.schema import Config


def to_dict(cfg: Any) -> dict:
    """Returns the config as plain nested dicts and lists (YAML / JSON ready)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config, path: str | os.PathLike) -> None:
    """Writes the resolved config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
