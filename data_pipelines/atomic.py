"""Atomic file writes: write to a temporary sibling, then os.replace, so readers never see half a file."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # the pid keeps two workers that race on one shard (a retried Ray task) from sharing a file
    tmp = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj) -> None:
    """Writes `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_tmp(root: str | os.PathLike) -> int:
    """Removes temporary files that a crashed run left under `root`; returns how many."""
    n = 0
    for p in Path(root).rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n
