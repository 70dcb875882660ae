"""Spill bucket keys to disk sorted per band, then merge all shards range by range.

Each shard writes, per band, its keys sorted with the matching local document indices. The
merge cuts the 64-bit key space into P ranges, one task each; a binary search finds a range's
slice in each memory-mapped run, so a task holds 1/P of one band's keys at a time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.curate.run.arrays import save_npy

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
    save_npy(kp, keys_BM)
    save_npy(ip, idx_BM)


def range_count(runs: list[Run], memory_bytes: int, at_least: int) -> int:
    """Returns how many key ranges the merge uses: enough that one range of one band fits `memory_bytes`."""
    per_band = sum(np.load(r.keys_path, mmap_mode="r").shape[1] for r in runs)  # reads only the headers
    return max(at_least, math.ceil(per_band * BYTES_PER_ENTRY / memory_bytes), 1)


def range_edges(runs: list[Run], bands: int, part: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns the distinct (first [E], other [E]) global index pairs of key range `part` of `parts`:
    `other` shares a band key in the range with `first`, the smallest index in its bucket."""
    lo = np.uint64((part << 64) // parts)
    hi = np.uint64(((part + 1) << 64) // parts) if part + 1 < parts else None  # None: up to the run's end
    maps = [(np.load(r.keys_path, mmap_mode="r"), np.load(r.idx_path, mmap_mode="r"), r.offset) for r in runs]
    maps = [m for m in maps if m[0].shape[1] > 0]
    firsts, others = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for b in range(bands):
        ks, gs = [], []
        for keys_BM, idx_BM, offset in maps:
            a = int(np.searchsorted(keys_BM[b], lo, side="left"))
            z = keys_BM.shape[1] if hi is None else int(np.searchsorted(keys_BM[b], hi, side="left"))
            if z > a:
                ks.append(np.asarray(keys_BM[b, a:z]))
                gs.append(np.asarray(idx_BM[b, a:z]).astype(np.int64) + offset)
        if not ks:
            continue
        k, g = np.concatenate(ks), np.concatenate(gs)
        order = np.lexsort((g, k))  # by key, then by index: a bucket's first entry is its smallest
        k, g = k[order], g[order]
        new = np.ones(len(k), dtype=bool)
        new[1:] = k[1:] != k[:-1]
        first = g[new][np.cumsum(new) - 1]
        firsts.append(first[~new])
        others.append(g[~new])
    pairs = np.unique(np.stack([np.concatenate(firsts), np.concatenate(others)]), axis=1)  # one pair found in several bands
    return pairs[0], pairs[1]
