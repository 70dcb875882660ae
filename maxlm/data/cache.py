"""Where derived data files (builtin corpus, decompressed shards, seqio exports) live, and how
they appear: whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_dir(*parts: str) -> Path:
    """Returns (and creates) `$MAXLM_CACHE_DIR/parts...`, by default under ~/.cache/maxlm."""
    root = Path(os.environ.get("MAXLM_CACHE_DIR") or Path.home() / ".cache" / "maxlm")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Returns `path` after `write(f)` filled a temp file beside it that then replaced `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name: several processes (hosts on a shared disk) may build the same file;
    # each replace is atomic and their contents are identical, so any one of them may win.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a cache is read by every user and host
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
