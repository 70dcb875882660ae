"""Where derived data files (builtin corpus, decompressed shards, seqio exports) live; each
appears whole or not at all (`atomic.write_atomic`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
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


def cached_jsonl(name: str, make_records: Callable[[], list[dict]]) -> str:
    """Returns the path of `cache_dir("builtin")/name`, written once as jsonl from `make_records()` (a generated data set)."""
    path = cache_dir("builtin") / name
    if not path.exists():
        data = "".join(json.dumps(r) + "\n" for r in make_records()).encode()
        write_atomic(path, lambda f: f.write(data))
    return str(path)


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
