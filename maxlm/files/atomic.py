"""The one atomic write: a file is filled under a temporary name beside it, then renamed over its
final name, so a reader (or a run resumed after a crash) sees the whole file or none of it.

Temporary names are `<name>.tmp-<random>`: unique, so several processes (Ray workers retrying
one shard, hosts on a shared disk building one cache file) never share one, and
`remove_stale_tmp` finds what a killed process left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp-"


def temp_beside(path: str | os.PathLike) -> Path:
    """Returns a new, empty temporary file in `path`'s directory (created, with its parents)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{final.name}{TMP_MARK}", dir=final.parent)
    os.close(fd)
    # mkstemp makes it owner-only; outputs and caches are read by every user and host
    os.chmod(tmp, 0o644)
    return Path(tmp)


def finish_temp(tmp: Path, path: str | os.PathLike, ok: bool) -> None:
    """Moves a filled temp file of `temp_beside` onto `path` when ok, else removes it (a streaming writer's close)."""
    try:
        if ok:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    tmp = temp_beside(path)
    ok = False
    try:
        yield tmp
        ok = True
    finally:
        finish_temp(tmp, path, ok)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Returns `path` after `write(f)` filled a temp file beside it that then replaced `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Returns `path` after writing `data` to it atomically."""
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Returns `path` after writing `text` (UTF-8) to it atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, indent: int = 1, ensure_ascii: bool = True) -> Path:
    """Returns `path` after writing `obj` as indented JSON (non-JSON values as str) to it atomically."""
    return write_text(path, json.dumps(obj, indent=indent, default=str, ensure_ascii=ensure_ascii) + "\n")


def replace_dir(tmp: str | os.PathLike, out_dir: str | os.PathLike, stale: tuple[str, ...] = ()) -> None:
    """Moves the files of the finished directory `tmp` into `out_dir`.

    A missing or empty `out_dir` becomes `tmp` in one rename. Otherwise each file replaces its
    namesake in `out_dir` and `stale` names (files an earlier run of the same writer made that
    this one did not) are removed: every other file there stays, since this writer did not write it.
    """
    tmp, out_dir = Path(tmp), Path(out_dir)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    names = {p.name for p in tmp.iterdir()}
    for name in sorted(names):
        os.replace(tmp / name, out_dir / name)
    for name in stale:
        if name not in names and Path(name).name == name:
            (out_dir / name).unlink(missing_ok=True)
    tmp.rmdir()


_TEMP_NAME = re.compile(rf".+{re.escape(TMP_MARK)}[a-z0-9_]{{8}}")  # what temp_beside's mkstemp names look like


def remove_stale_tmp(root: str | os.PathLike) -> int:
    """Removes temporary files that a crashed run (of `temp_beside`) left under `root`; returns how many."""
    n = 0
    for p in Path(root).rglob(f"*{TMP_MARK}*"):
        if p.is_file() and _TEMP_NAME.fullmatch(p.name):
            p.unlink()
            n += 1
    return n
