"""Language modelling: pretrain (plain documents, packed) and sft (chat records whose loss_mask keeps only replies).

Rows are [B, T]; the objective is the next-token loss through the fused LM head.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from maxlm.config import Config, TrainConfig
from maxlm.losses.head import chunk_count, fused_next_token_loss
from maxlm.losses.logprobs import next_targets, next_token_weights
from maxlm.models.llama import causal_segment_mask
from maxlm.models.params import bind
from maxlm.optim.update import Objective
from maxlm.tasks.task import Task, file_data, gradient_step, with_router_losses


def language_model(graphdef: nnx.GraphDef, z_loss: float, loss_chunks: int = TrainConfig.loss_chunks,
                   router_aux: float = 0.0, router_z: float = 0.0) -> Objective:
    """Returns the next-token objective (pretrain, and SFT whose loss_mask keeps only responses); an MoE model's
    router losses are added with weights `router_aux` / `router_z` and reported as router_aux_loss / router_z_loss."""

    def objective(params, batch, ref_params=None):
        tokens, seg = batch["tokens"], batch["segment_ids"]
        model = bind(graphdef, params)
        hidden, _, router = model.forward(tokens, batch["positions"], causal_segment_mask(seg), valid_BxT=seg > 0,
                                          dropout_key=batch.get("dropout_key"))
        w = next_token_weights(seg, batch["loss_mask"])
        loss, (nll, z) = fused_next_token_loss(hidden, model.head(), next_targets(tokens), w, z_loss,
                                               chunk_count(tokens.shape[1], loss_chunks), model.final_softcap)
        processed = jnp.sum(seg > 0).astype(jnp.float32)  # for throughput; count = trained
        count = jnp.sum(w)
        sums = {"loss_sum": nll, "z_loss_sum": z, "count": count, "tokens": processed}
        return with_router_losses(loss, sums, router, router_aux, router_z)

    return objective


def objective(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns the run's next-token objective (train.z_loss, train.loss_chunks, model.router_aux_coef / router_z_coef)."""
    return language_model(graphdef, cfg.train.z_loss, cfg.train.loss_chunks, cfg.model.router_aux_coef, cfg.model.router_z_coef)


def _data(cfg, tokenizer, graphdef, services):
    return file_data(cfg, tokenizer, services.mesh)


def _no_reference(cfg: Config) -> bool:
    return False


PRETRAIN = Task(
    name="pretrain", chat=False, scalar_head=None, data=_data, objective=objective, step=gradient_step,
    needs_reference=_no_reference, logs_tokens_trained=True, tokenizer_texts=lambda cfg: None,
)
SFT = Task(
    name="sft", chat=True, scalar_head=None, data=_data, objective=objective, step=gradient_step,
    needs_reference=_no_reference, logs_tokens_trained=True,
)
