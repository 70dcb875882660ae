"""Can we write there? Checked before any long work, so that a bad output path costs one line, not a run.

A probe file is created and removed in the nearest existing directory: permission bits do not
tell a read-only mount, a full disk or root's rights apart, a real write does.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from maxlm.errors import MaxlmError

PROBE_PREFIX = ".maxlm-write-test-"  # another process's probe may be there for a moment: it is no one's data

# Errors of the place, not of the program: reported as one line wherever they surface.
_PLACE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
}


def place_error(e: OSError) -> str | None:
    """Returns what is wrong with the place an OSError happened at (full disk, read-only, ...), or None for other errors."""
    return _PLACE_ERRORS.get(e.errno)


def place_error_line(e: OSError) -> str | None:
    """Returns the one `error:` line of an OSError that is the place's fault, or None (a bug: show its traceback)."""
    why = place_error(e)
    return None if why is None else f"error: {e.filename or 'writing'}: {why} ({e.strerror})"


def _nearest_existing(path: Path, setting: str, start: Path) -> Path:
    """Returns the deepest existing directory from `start` (`path` or its parent) up; a file on the way is an error."""
    for p in (start, *start.parents):
        if p.is_dir():
            return p
        if p.exists():
            what = "is a file, not a directory" if p == path else f"cannot be created: {p} is a file, not a directory"
            raise MaxlmError(f"{setting} {path}: {what}")
    raise MaxlmError(f"{setting} {path}: no existing directory above it")


def _probe(directory: Path, setting: str, path: Path) -> None:
    """Writes and removes one small file in `directory`; raises MaxlmError naming what stopped it."""
    try:
        fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=directory)
        try:
            os.write(fd, b"maxlm\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        why = place_error(e) or (e.strerror or str(e))
        where = "" if directory == path else f" (in {directory})"
        raise MaxlmError(f"{setting} {path}: cannot write there{where}: {why}") from None


def check_writable_dir(path: str | os.PathLike, setting: str) -> Path:
    """Returns `path` resolved after checking it is, or can be made, a directory this process writes into."""
    path = Path(path).expanduser().absolute()
    _probe(_nearest_existing(path, setting, path), setting, path)
    return path


def check_writable_file(path: str | os.PathLike, setting: str) -> Path:
    """Returns `path` resolved after checking a file can be written there (not a directory; its directory writable)."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise MaxlmError(f"{setting} {path}: is a directory, expected a file path")
    _probe(_nearest_existing(path, setting, path.parent), setting, path)
    return path
