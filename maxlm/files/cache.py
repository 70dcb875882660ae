"""Where derived data files (builtin corpus, decompressed shards, seqio exports) live; each
appears whole or not at all (`atomic.write_atomic`)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from maxlm.errors import MaxlmError
from maxlm.files.atomic import write_atomic
from maxlm.files.formats import open_binary


def cache_dir(*parts: str) -> Path:
    """Returns (and creates) `$MAXLM_CACHE_DIR/parts...`, by default under ~/.cache/maxlm."""
    root = Path(os.environ.get("MAXLM_CACHE_DIR") or Path.home() / ".cache" / "maxlm")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def decompressed(path: str, compression: str) -> str:
    """Returns the path of the cached decompressed copy of `path`, creating it on first use."""
    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir("decompressed") / f"{key}-{Path(path).name[: -len(compression)]}"
    if out.exists():
        return str(out)

    def write(f):
        with open_binary(path) as src:
            shutil.copyfileobj(src, f, 1 << 22)

    try:
        write_atomic(out, write)
    except (OSError, EOFError, ValueError) as e:
        raise MaxlmError(f"{path}: cannot decompress {compression} file: {e}") from None
    except Exception as e:  # zstandard.ZstdError
        if type(e).__module__.startswith("zstandard"):
            raise MaxlmError(f"{path}: cannot decompress {compression} file: {e}") from None
        raise
    return str(out)
