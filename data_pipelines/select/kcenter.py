"""Greedy k-center (farthest-point) selection and the coverage it achieves.

Sener & Savarese (2018) pick a core set by greedy k-center: start from one point, then
repeatedly add the point farthest from everything picked so far. It is a 2-approximation of
the best covering radius (Gonzalez 1985). The greedy loop here is exact (Euclidean, f32)
and runs as one jitted `fori_loop`: each step is a [N, D] distance update, so memory is the
embeddings plus one [N] vector of distances (100k x 1024 f32 is 400 MB), never [N, N].
Letters: N pool points, D embedding dimension, K selected points, C a chunk of centers.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.select.io import Selection
from maxlm.errors import MaxlmError


def kcenter_greedy(x_NxD: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (picked indices [K] in pick order, each pick's distance to the points picked before it [K]; inf first).

    The first point is drawn with `seed`; later ties go to the lowest index, so a run is
    reproducible. Exact duplicates are picked only once all other points are covered.
    """
    n = len(x_NxD)
    if not 1 <= k <= n:
        raise MaxlmError(f"k-center: budget must be between 1 and the pool size {n}, got {k}")
    first = int(np.random.default_rng(seed).integers(n))
    order_K, radius_K = _greedy(jnp.asarray(x_NxD, jnp.float32), jnp.int32(first), k)
    return np.asarray(order_K, np.int64), np.asarray(radius_K, np.float64)


@partial(jax.jit, static_argnames="k")
def _greedy(x_NxD: jax.Array, first: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    def dist_to(i):
        return jnp.sqrt(jnp.sum(jnp.square(x_NxD - x_NxD[i]), axis=-1))

    def pick(dist_N, i):
        # A picked point is marked -1: below every distance, so it is never picked again.
        return jnp.minimum(dist_N, dist_to(i)).at[i].set(-1.0)

    def step(j, state):
        dist_N, order_K, radius_K = state
        i = jnp.argmax(dist_N).astype(jnp.int32)
        return pick(dist_N, i), order_K.at[j].set(i), radius_K.at[j].set(dist_N[i])

    order_K = jnp.zeros(k, jnp.int32).at[0].set(first)
    radius_K = jnp.full(k, jnp.inf, jnp.float32)
    dist_N = pick(jnp.full(x_NxD.shape[0], jnp.inf, jnp.float32), first)
    _, order_K, radius_K = jax.lax.fori_loop(1, k, step, (dist_N, order_K, radius_K))
    return order_K, radius_K


def nearest_distances(x_NxD: np.ndarray, picked_K: np.ndarray, chunk_elems: int = 1 << 24) -> np.ndarray:
    """Returns [N] f64: each point's Euclidean distance to its nearest picked point (chunked over picks)."""
    x = np.asarray(x_NxD, np.float64)
    centers_KxD = x[np.asarray(picked_K)]
    sq_N = np.einsum("nd,nd->n", x, x)
    best_N = np.full(len(x), np.inf)
    step = max(1, chunk_elems // max(len(x), 1))
    for s in range(0, len(centers_KxD), step):
        c_CxD = centers_KxD[s : s + step]
        d2_NxC = sq_N[:, None] - 2.0 * x @ c_CxD.T + np.einsum("cd,cd->c", c_CxD, c_CxD)[None, :]
        best_N = np.minimum(best_N, d2_NxC.min(axis=1))
    return np.sqrt(np.maximum(best_N, 0.0))


def coverage(x_NxD: np.ndarray, picked_K: np.ndarray) -> dict:
    """Returns {"max", "mean"}: the covering radius and the mean distance of the pool to the picked points."""
    d_N = nearest_distances(x_NxD, picked_K)
    return {"max": float(d_N.max()), "mean": float(d_N.mean())}


def select_kcenter(x_NxD: np.ndarray, k: int, seed: int = 0) -> Selection:
    """Returns the greedy k-center picks in pick order; each one's score is its distance at pick time."""
    order_K, radius_K = kcenter_greedy(x_NxD, k, seed)
    score_N = np.full(len(x_NxD), np.nan)
    score_N[order_K] = radius_K
    cov = coverage(x_NxD, order_K)
    summary = {"seed": seed, "dim": int(x_NxD.shape[1]), "covering_radius": cov["max"], "mean_distance": cov["mean"],
               "score_note": "score: distance to the nearest earlier pick when picked (the first pick has none: null)"}
    return Selection(order_K, {"score": score_N}, summary)
