"""One run at a time in a run dir: an flock'ed lock file that names its owner.

Two `maxlm train` on one run_dir would rewrite each other's checkpoints and interleave
metrics.jsonl. Each process of a run locks its own file (`.lock` for process 0, `.lock.<i>`
for the others), and the processes agree: when any one finds its file held, all of them stop, not only
that one while the others wait at a collective. The kernel drops an flock when its process dies, so the lock of a
killed run is free at once: its file is taken over, whatever pid it still names.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from maxlm.errors import MaxlmError
from maxlm.files.writable import check_writable_dir


def lock_path(run_dir: str | os.PathLike, process: int = 0) -> Path:
    """Returns the lock file of `process` in `run_dir`."""
    return Path(run_dir) / (".lock" if process == 0 else f".lock.{process}")


def _owner(fd: int) -> dict:
    """Returns what the lock file at `fd` says about its owner ({} while it is being written)."""
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _refusal(run_dir: Path, owner: dict) -> str:
    """Returns the message for a run_dir whose lock another live process holds."""
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        return f"run_dir {run_dir} is already in use by this process (does a train.init_from config train into the same run_dir?)"
    who = f"pid {owner['pid']} on host {owner.get('host', '?')}, since {owner.get('started', '?')}" if "pid" in owner else "another process"
    return f"run_dir {run_dir} is in use by a running maxlm train ({who}); wait for it to finish or use another run_dir"


def _refuse_together(refusal: str | None, run_dir: Path) -> None:
    """Raises MaxlmError on every process of the run when any of them could not take its lock.

    A process that went on alone would wait forever at the run's first collective.
    """
    refused = [refusal is not None]
    if jax.process_count() > 1:
        refused = [bool(x) for x in np.asarray(multihost_utils.process_allgather(np.int32(refusal is not None))).reshape(-1)]
    if refusal is not None:
        raise MaxlmError(refusal)
    if any(refused):
        first = refused.index(True)
        raise MaxlmError(f"run_dir {run_dir}: process {first} of this run found its lock file held by another run; every process stops")


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike, process: int = 0) -> Iterator[Path]:
    """Yields the run dir (created if needed) while this process holds its lock; raises MaxlmError if another does."""
    path = check_writable_dir(run_dir, "run_dir")
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(path, process), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            refusal = None
        except BlockingIOError:
            refusal = _refusal(path, _owner(fd))
        _refuse_together(refusal, path)
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode() + b"\n", 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # a finished run names no owner
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
