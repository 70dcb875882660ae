"""Array files of the dedup resolve: raw int64 rows, written atomically, read memory-mapped.

Raw, not .npy: every shard reads a small file from every other shard in the exchange steps,
and parsing an .npy header costs ~10x the read of a few hundred values.
"""

from __future__ import annotations

import os

import numpy as np

from maxlm.files.atomic import write_atomic

SMALL_BYTES = 1 << 16  # below this a plain read beats setting up a memory map


def save_array(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Writes the int64 array `arr` ([N] or [R, N], row-major) raw, atomically: a resumed run never reads half of it."""
    if arr.dtype != np.int64:
        raise TypeError(f"{path}: resolve arrays are int64, got {arr.dtype}")
    write_atomic(path, lambda f: f.write(np.ascontiguousarray(arr).tobytes()))


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Writes `arr` as .npy atomically (the key runs: read once per task, any dtype)."""
    write_atomic(path, lambda f: np.save(f, arr))


def load_array(path: str | os.PathLike, rows: int = 0) -> np.ndarray:
    """Returns the int64 array at `path`: [N] when rows is 0, else [rows, N]; large files memory-mapped."""
    size = os.path.getsize(path)
    if size == 0:
        arr = np.zeros(0, np.int64)
    elif size < SMALL_BYTES:
        arr = np.fromfile(path, dtype=np.int64)
    else:
        arr = np.memmap(path, dtype=np.int64, mode="r")
    return arr.reshape(rows, -1) if rows else arr


def columns_in(arr_2E: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Returns the columns of `arr_2E` (row 0 sorted) whose row-0 value lies in [lo, hi), as an in-memory copy."""
    a = int(np.searchsorted(arr_2E[0], lo, side="left"))
    b = int(np.searchsorted(arr_2E[0], hi, side="left"))
    return np.array(arr_2E[:, a:b])


def values_in(arr_N: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Returns the values of the sorted `arr_N` that lie in [lo, hi), as an in-memory copy."""
    a = int(np.searchsorted(arr_N, lo, side="left"))
    b = int(np.searchsorted(arr_N, hi, side="left"))
    return np.array(arr_N[a:b])
