"""Spill bucket keys to disk sorted per band, then merge all shards range by range.

Each shard writes, per band, its keys sorted with the matching local document indices. The
merge walks the 64-bit key space in P ranges; a binary search finds each range's slice in
each memory-mapped run, so only 1/P of all keys is ever in memory at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from maxlm.files.atomic import atomic_path

BYTES_PER_ENTRY = 16 * 4  # key + index, and the sort's temporary copies


@dataclass(frozen=True)
class Run:
    """One shard's spilled keys for one stage: keys [B, M] uint64 and local indices [B, M] uint32."""

    keys_path: str
    idx_path: str
    offset: int  # global index of the shard's first document


def run_paths(directory: str | os.PathLike, shard: str, stage: int) -> tuple[str, str]:
    """Returns the (keys, indices) file paths of one shard's run for group stage `stage`."""
    d = Path(directory)
    return str(d / f"{shard}.s{stage}.keys.npy"), str(d / f"{shard}.s{stage}.idx.npy")


def write_run(directory: str | os.PathLike, shard: str, stage: int, keys_NB: np.ndarray, valid_N: np.ndarray) -> None:
    """Writes one shard's keys sorted per band: only valid documents take part."""
    idx_M = np.flatnonzero(valid_N).astype(np.uint32)
    k_MB = keys_NB[valid_N]
    order_MB = np.argsort(k_MB, axis=0, kind="stable")
    keys_BM = np.ascontiguousarray(np.take_along_axis(k_MB, order_MB, axis=0).T)
    idx_BM = np.ascontiguousarray(idx_M[order_MB].T)
    kp, ip = run_paths(directory, shard, stage)
    for path, arr in ((kp, keys_BM), (ip, idx_BM)):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)


def candidate_pairs(runs: list[Run], bands: int, memory_bytes: int, skip_N: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (first [E], other [E]) global indices: `other` shares a band key with `first`,
    the smallest index in its bucket. Documents where skip_N is True take no part."""
    maps = [(np.load(r.keys_path, mmap_mode="r"), np.load(r.idx_path, mmap_mode="r"), r.offset) for r in runs]
    maps = [m for m in maps if m[0].shape[1] > 0]
    per_band = sum(m[0].shape[1] for m in maps)
    parts = max(1, math.ceil(per_band * BYTES_PER_ENTRY / memory_bytes))
    bounds = [np.uint64((i << 64) // parts) for i in range(parts)]
    for b in range(bands):
        for p in range(parts):
            ks, gs = [], []
            for keys_BM, idx_BM, offset in maps:
                lo = int(np.searchsorted(keys_BM[b], bounds[p], side="left"))
                hi = int(np.searchsorted(keys_BM[b], bounds[p + 1], side="left")) if p + 1 < parts else keys_BM.shape[1]
                if hi > lo:
                    ks.append(np.asarray(keys_BM[b, lo:hi]))
                    gs.append(np.asarray(idx_BM[b, lo:hi]).astype(np.int64) + offset)
            if not ks:
                continue
            k, g = np.concatenate(ks), np.concatenate(gs)
            if skip_N is not None:
                keep = ~skip_N[g]
                k, g = k[keep], g[keep]
            if len(k) < 2:
                continue
            order = np.lexsort((g, k))  # by key, then by index: a bucket's first entry is its smallest
            k, g = k[order], g[order]
            new = np.ones(len(k), dtype=bool)
            new[1:] = k[1:] != k[:-1]
            first = g[new][np.cumsum(new) - 1]
            dup = ~new
            if dup.any():
                yield first[dup], g[dup]
