"""dpo.precompute_ref: the frozen reference's log-probs of every example, scored once up front.

Training then needs no reference model in memory, and each example's reference forward runs
once instead of once per epoch. The scores ride along with the examples as `ref_logps` [2]
(chosen, rejected), so batches, resume and eval see them like any other field.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from tqdm import tqdm

from maxlm.config import Config
from maxlm.data.examples import Examples
from maxlm.data.pipeline import padding_batch
from maxlm.train.objectives import completion_logps

PAIR_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


def scorer(graphdef, ref_params: Any, batch_shard: NamedSharding) -> Callable[[dict], np.ndarray]:
    """Returns score(batch) -> the reference's summed completion log-probs [B, 2] f32 of a whole pair batch.

    Every process passes the same whole batch (examples are encoded identically everywhere) and
    gets the whole result back.
    """
    fn = jax.jit(lambda p, b: completion_logps(graphdef, p, b)[0])

    def score(batch: dict) -> np.ndarray:
        arrays = {
            k: jax.make_array_from_callback(batch[k].shape, batch_shard, lambda idx, x=batch[k]: x[idx]) for k in PAIR_KEYS
        }
        with jax.set_mesh(batch_shard.mesh):
            out = fn(ref_params, arrays)
        return np.asarray(multihost_utils.process_allgather(out, tiled=True), np.float32)

    return score


def annotate(score: Callable[[dict], np.ndarray], examples: Examples, cfg: Config, pad_id: int) -> None:
    """Adds `ref_logps` [2] f32 to every example, scoring `train.global_batch_size` pairs at a time."""
    rows = cfg.train.global_batch_size
    template = padding_batch(cfg, rows, pad_id)
    items = examples.items
    for start in tqdm(range(0, len(items), rows), desc=f"reference log-probs {examples.name}", unit="batch", leave=False,
                      disable=jax.process_index() != 0):
        chunk = items[start:start + rows]
        batch = {k: np.concatenate([np.stack([x[k] for x in chunk]), template[k][len(chunk):]]) for k in PAIR_KEYS}
        for item, logps in zip(chunk, score(batch)):
            item["ref_logps"] = logps
