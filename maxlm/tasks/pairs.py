"""Pairs: rm (a scalar-head reward model, Bradley-Terry) and dpo (the DPO family: DPO, cDPO, IPO, hinge, SimPO, ORPO).

Batches are [B, 2, T] with the chosen completion at index 0 and the rejected one at 1
(segment_ids 1 on real tokens, 0 on right padding; loss_mask 1 on the completion's tokens), plus
`pair_mask` [B] (0 on padding pairs) and, for RM, `margin` [B]; dpo.precompute_ref adds the
reference's `ref_logps` [B, 2]. Objectives count pairs.
Letters: B batch (pairs), T length.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from maxlm.config import Config
from maxlm.data.examples import Examples
from maxlm.data.pipeline import Annotation, batch_layout, padding_batch
from maxlm.errors import MaxlmError
from maxlm.losses.logprobs import next_targets, next_token_weights, sequence_logps, token_logprobs
from maxlm.losses.preference import REFERENCE_KINDS, pool_scores, preference_loss, reward_loss
from maxlm.models.llama import causal_segment_mask
from maxlm.models.params import bind
from maxlm.optim.update import Objective
from maxlm.parallel.rules import RULES
from maxlm.tasks.task import Task, file_data, gradient_step, with_router_losses


def _flat_pairs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    # [B, 2, T] -> [2B, T]: merging the leading dims keeps each device's rows on that device.
    b, _, t = batch["tokens"].shape
    return tuple(batch[k].reshape(2 * b, t) for k in ("tokens", "segment_ids", "positions", "loss_mask"))


def pair_rewards(graphdef: nnx.GraphDef, params, batch: dict, pooling: str = "last") -> jax.Array:
    """Returns the scalar head's reward of each completion (`rm.pooling` over its tokens), [B, 2] f32."""
    return _rewards_and_router(graphdef, params, batch, pooling)[0]


def _rewards_and_router(graphdef: nnx.GraphDef, params, batch: dict, pooling: str) -> tuple[jax.Array, dict]:
    tokens, seg, pos, mask = _flat_pairs(batch)
    model = bind(graphdef, params)
    hidden, _, router = model.forward(tokens, pos, causal_segment_mask(seg), valid_BxT=seg > 0, dropout_key=batch.get("dropout_key"))
    return pool_scores(model.scores(hidden), seg, mask, pooling).reshape(-1, 2), router


def _pair_sums(batch: dict, loss_B, chosen_B, rejected_B, **extra) -> dict:
    """Returns the sums every pair objective reports: loss, accuracy, margin and both rewards over the real pairs."""
    valid = batch["pair_mask"].astype(jnp.float32)
    margin = chosen_B - rejected_B
    return {
        "loss_sum": jnp.sum(loss_B * valid),
        "accuracy_sum": jnp.sum((margin > 0) * valid),
        "margin_sum": jnp.sum(margin * valid),
        "chosen_reward_sum": jnp.sum(chosen_B * valid),
        "rejected_reward_sum": jnp.sum(rejected_B * valid),
        **{k: jnp.sum(v * valid) for k, v in extra.items()},
        "count": jnp.sum(valid),
        "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
    }


def reward_model(graphdef: nnx.GraphDef, center_coef: float, pooling: str = "last", router_aux: float = 0.0,
                 router_z: float = 0.0) -> Objective:
    """Returns the Bradley-Terry objective of a scalar-head reward model on pairs (an MoE's router losses added)."""

    def objective(params, batch, ref_params=None):
        r, router = _rewards_and_router(graphdef, params, batch, pooling)
        loss = reward_loss(r[:, 0], r[:, 1], batch.get("margin"), center_coef)
        sums = _pair_sums(batch, loss, r[:, 0], r[:, 1])
        return with_router_losses(sums["loss_sum"], sums, router, router_aux, router_z)

    return objective


def completion_logps(graphdef: nnx.GraphDef, params, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Returns (summed log-probs of each completion [B, 2], its token count [B, 2]), f32."""
    return _logps_and_router(graphdef, params, batch)[:2]


def _logps_and_router(graphdef: nnx.GraphDef, params, batch: dict) -> tuple[jax.Array, jax.Array, dict]:
    tokens, seg, pos, mask = _flat_pairs(batch)
    model = bind(graphdef, params)
    hidden, _, router = model.forward(tokens, pos, causal_segment_mask(seg), valid_BxT=seg > 0, dropout_key=batch.get("dropout_key"))
    logp, _ = token_logprobs(model.logits(hidden), next_targets(tokens))
    total, count = sequence_logps(logp, next_token_weights(seg, mask))
    return total.reshape(-1, 2), count.reshape(-1, 2), router


def preference(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns the DPO-family objective (`dpo.kind`); sigmoid/ipo/hinge compare with `ref_params`,
    or with the batch's `ref_logps` [B, 2] when the reference was scored up front (dpo.precompute_ref)."""
    d = cfg.dpo

    def objective(params, batch, ref_params=None):
        logps, counts, router = _logps_and_router(graphdef, params, batch)
        ref = None
        if "ref_logps" in batch:  # dpo.precompute_ref: scored once when the run started
            ref = batch["ref_logps"]
        elif ref_params is not None:
            ref = jax.lax.stop_gradient(completion_logps(graphdef, ref_params, batch)[0])
        # ORPO's NLL on the chosen completion, token-averaged as in its paper.
        nll = -logps[:, 0] / jnp.maximum(counts[:, 0], 1.0) if d.kind == "orpo" else None
        out = preference_loss(
            logps[:, 0], logps[:, 1], None if ref is None else ref[:, 0], None if ref is None else ref[:, 1],
            kind=d.kind, beta=d.beta, label_smoothing=d.label_smoothing, gamma=d.gamma,
            chosen_count=counts[:, 0], rejected_count=counts[:, 1], chosen_nll=nll,
        )
        sums = _pair_sums(batch, out.loss_B, out.chosen_rewards_B, out.rejected_rewards_B,
                          chosen_logp=logps[:, 0], rejected_logp=logps[:, 1])
        return with_router_losses(sums["loss_sum"], sums, router, cfg.model.router_aux_coef, cfg.model.router_z_coef)

    return objective


# ---- dpo.precompute_ref: the frozen reference's log-probs of every example, scored once up front ----
# Training then needs no reference model in memory, and each example's reference forward runs once
# instead of once per epoch. The scores ride along with the examples as `ref_logps` [2] (chosen,
# rejected), so batches, resume and eval see them like any other field.

PAIR_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")
REF_LOGPS_FIELDS = {"ref_logps": (2,)}  # per pair: chosen, rejected


def reference_scorer(graphdef, ref_params: Any, batch_shard: NamedSharding) -> Callable[[dict], np.ndarray]:
    """Returns score(batch) -> the reference's summed completion log-probs [B, 2] f32 of a whole pair batch

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


def annotate_reference(score: Callable[[dict], np.ndarray], examples: Examples, cfg: Config, pad_id: int) -> None:
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


def reference_annotation(graphdef, ref_params: Any, mesh, cfg: Config, pad_id: int) -> Annotation:
    """Returns the Annotation that adds the reference's `ref_logps` [2] to every example of the run's sources."""
    score = reference_scorer(graphdef, ref_params, NamedSharding(mesh, PartitionSpec(RULES["batch"])))
    return Annotation(lambda examples: annotate_reference(score, examples, cfg, pad_id), REF_LOGPS_FIELDS)


def dpo_needs_reference(cfg: Config) -> bool:
    """Returns whether `dpo.kind` compares with a frozen reference (sigmoid, ipo, hinge)."""
    return cfg.dpo.kind in REFERENCE_KINDS


def precomputed_reference(cfg: Config) -> bool:
    """Returns whether the reference's log-probs are scored once up front instead of every step."""
    return cfg.dpo.precompute_ref and dpo_needs_reference(cfg)


def check_dpo(cfg: Config) -> None:
    """Raises MaxlmError for a reference-based dpo.kind without train.init_from: its reference would be a random init."""
    if dpo_needs_reference(cfg) and not cfg.train.init_from:
        raise MaxlmError(
            f"dpo.kind={cfg.dpo.kind} compares the policy with a frozen reference, which is train.init_from's model; "
            "set train.init_from (an SFT run, checkpoint or config), or use a reference-free dpo.kind (simpo, orpo)"
        )


def _rm_data(cfg, tokenizer, graphdef, services):
    return file_data(cfg, tokenizer, services.mesh)


def _dpo_data(cfg, tokenizer, graphdef, services):
    if not precomputed_reference(cfg):
        return file_data(cfg, tokenizer, services.mesh)
    services.log("dpo.precompute_ref: scoring every example under the reference once ...")
    # The reference's params live only while this call runs: training holds its scores instead.
    return file_data(cfg, tokenizer, services.mesh, reference_annotation(graphdef, services.reference(), services.mesh, cfg, tokenizer.pad_id))


def _dpo_layout(cfg: Config) -> dict:
    return batch_layout(cfg, cfg.train.global_batch_size, REF_LOGPS_FIELDS if precomputed_reference(cfg) else None)


def _rm_objective(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    return reward_model(graphdef, cfg.rm.center_coef, cfg.rm.pooling, cfg.model.router_aux_coef, cfg.model.router_z_coef)


RM = Task(
    name="rm", chat=True, scalar_head="reward", data=_rm_data, objective=_rm_objective, step=gradient_step,
    needs_reference=lambda cfg: False, samples=False,
)
DPO = Task(
    name="dpo", chat=True, scalar_head=None, data=_dpo_data, objective=preference, step=gradient_step,
    # A precomputed reference rides in the batches: the step needs no reference model.
    needs_reference=lambda cfg: dpo_needs_reference(cfg) and not precomputed_reference(cfg), check=check_dpo,
    batch_layout=_dpo_layout,
)
