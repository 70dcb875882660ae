"""Array files of the dedup resolve: atomic writes, memory-mapped reads, slices of sorted rows."""

from __future__ import annotations

import os

import numpy as np

from maxlm.files.atomic import write_atomic


def save_array(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Writes `arr` as .npy atomically: a resumed run never reads half an array."""
    write_atomic(path, lambda f: np.save(f, arr))


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Returns the .npy at `path` memory-mapped: only the slices a task touches are read."""
    return np.load(path, mmap_mode="r")


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
