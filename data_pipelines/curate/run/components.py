"""Connected components with a vectorized union-find whose roots are each component's smallest index."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets over 0..N-1; every link points a larger root at a smaller one."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: np.ndarray) -> np.ndarray:
        """Returns the roots of the elements x [E] (compressing the paths it walked)."""
        x = np.asarray(x, dtype=np.int64)
        r = self.parent[x]
        while True:
            rr = self.parent[r]
            if np.array_equal(rr, r):
                break
            r = rr
        self.parent[x] = r
        return r

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merges the sets of each pair (a[i], b[i])."""
        while len(a):
            ra, rb = self.find(a), self.find(b)
            differ = ra != rb
            if not differ.any():
                return
            ra, rb = ra[differ], rb[differ]
            hi, lo = np.maximum(ra, rb), np.minimum(ra, rb)
            # several pairs may name one root: the smallest target wins, the rest retry next round
            np.minimum.at(self.parent, hi, lo)
            a, b = ra, rb

    def roots(self) -> np.ndarray:
        """Returns the root of every element [N]: the smallest index of its component."""
        p = self.parent
        while True:
            pp = p[p]
            if np.array_equal(pp, p):
                self.parent = p
                return p
            p = pp
