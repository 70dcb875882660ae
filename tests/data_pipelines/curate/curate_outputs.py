"""Reading what a curation run wrote: output shards and removed-docs records (for the curate tests)."""

from __future__ import annotations

import glob
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def read_output(out_dir: Path) -> list[dict]:
    """Returns every record of a run's output shards (jsonl.zst or parquet), in shard order."""
    from maxlm.files.readers import iter_records

    recs = []
    for p in sorted(glob.glob(str(out_dir / "shard-*"))):
        if p.endswith(".parquet"):
            import pyarrow.parquet as pq

            recs += pq.read_table(p).to_pylist()
        else:
            recs += [r for _, r in iter_records(p, strict=True)]
    return recs


def read_removed(out_dir: Path) -> list[dict]:
    """Returns every removed-document record of a run."""
    from maxlm.files.readers import iter_records

    return [r for p in sorted(glob.glob(str(out_dir / "removed" / "*.jsonl.zst"))) for _, r in iter_records(p, strict=True)]
