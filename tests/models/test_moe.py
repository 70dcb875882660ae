"""Mixture of experts: dropless routing against a dense per-token reference, the router losses in the objective,
and the same train step on 1 device and on meshes that split the experts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from maxlm.config import MeshConfig, ModelConfig, TrainConfig
from maxlm.models import params as params_lib
from maxlm.models.moe import MoE
from maxlm.optim import optimizer as optim
from maxlm.optim import update
from maxlm.parallel.mesh import make_mesh
from maxlm.parallel.rules import RULES
from maxlm.tasks.lm import language_model

# 4 experts of width 24 (not mlp_dim), top-2, not renormalized: Qwen3-MoE's switches.
CFG = ModelConfig(family="qwen3_moe", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, qk_norm=True,
                  dtype="float32", max_seq_len=32, num_experts=4, experts_per_token=2, moe_mlp_dim=24, router_renormalize=False,
                  router_aux_coef=0.01, router_z_coef=0.001)


@pytest.mark.parametrize("renormalize", [False, True])
def test_dropless_experts_equal_a_per_token_loop(renormalize):
    moe = MoE(dataclasses.replace(CFG, router_renormalize=renormalize), rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 7, 32)))
    out, stats = moe(jnp.asarray(x), jnp.ones((2, 7), bool))
    router, gate, up, down = (np.asarray(p[...], np.float64) for p in (moe.router, moe.gate, moe.up, moe.down))
    want = np.zeros_like(x, np.float64)
    hits = np.zeros(4)
    for b, t in np.ndindex(2, 7):
        logits = x[b, t] @ router
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:2]
        w = p[top] / (p[top].sum() if renormalize else 1.0)
        for e, we in zip(top, w):
            g, u = x[b, t] @ gate[e], x[b, t] @ up[e]
            want[b, t] += we * ((g / (1 + np.exp(-g)) * u) @ down[e])
            hits[e] += 1
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(stats["hits"]), hits)
    assert float(stats["tokens"]) == 14


def _batch(b=8, t=16):
    tokens = np.random.default_rng(0).integers(1, 64, (b, t))
    seg = np.ones((b, t), np.int32)
    seg[1, 10:] = 0  # padding: the router statistics skip it
    return {
        "tokens": jnp.asarray(tokens, jnp.int32), "segment_ids": jnp.asarray(seg),
        "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)), "loss_mask": jnp.ones((b, t), jnp.float32),
    }


MESHES = {"1 device": MeshConfig(data=1), "data2 x fsdp2 x expert2": MeshConfig(data=2, fsdp=2, expert=2),
          "data2 x expert4": MeshConfig(data=2, expert=4)}


def test_same_losses_on_1_device_and_expert_meshes():
    """Loss, router losses and grad norm of 3 AdamW steps agree across meshes (<= 1e-4 relative), the experts split over `expert`."""
    tc = TrainConfig(steps=10, warmup_steps=0, learning_rate=1e-2)
    tx = optim.optimizer(tc)
    graphdef, _, _ = params_lib.abstract(CFG)
    params0 = params_lib.init(CFG, make_mesh(MeshConfig(data=1), jax.devices()[:1]), 0)
    step = update.train_step(language_model(graphdef, 0.0, router_aux=CFG.router_aux_coef, router_z=CFG.router_z_coef), tx, tc)
    got = {}
    for name, mc in MESHES.items():
        mesh = make_mesh(mc, jax.devices()[:1] if name == "1 device" else None)
        params = jax.device_put(params0, params_lib.shardings(CFG, mesh))
        if mc.expert > 1:
            assert params["layers"]["moe"]["gate"].sharding.spec[1] == "expert"
        batch = jax.device_put(_batch(), NamedSharding(mesh, PartitionSpec(RULES["batch"])))
        with jax.set_mesh(mesh):
            jitted, opt_state, rows = jax.jit(step), tx.init(params), []
            for _ in range(3):
                params, opt_state, m = jitted(params, opt_state, batch)
                rows.append([float(m[k]) for k in ("loss", "router_aux_loss", "router_z_loss", "grad_norm")])
        got[name] = np.asarray(rows)
    ref = got["1 device"]
    assert 1.0 < ref[0, 1] < 4.0 and ref[0, 2] > 0  # top-2 of 4: the load-balancing loss is 2 when balanced
    assert ref[2, 0] < ref[0, 0]
    for name, rows in got.items():
        np.testing.assert_allclose(rows, ref, rtol=1e-4, err_msg=name)


def test_router_losses_are_added_with_their_coefficients():
    graphdef, _, _ = params_lib.abstract(CFG)
    params = params_lib.init(CFG, make_mesh(MeshConfig(data=1), jax.devices()[:1]), 0)
    both = jax.jit(lambda p, b: (language_model(graphdef, 0.0)(p, b), language_model(graphdef, 0.0, router_aux=0.5, router_z=0.25)(p, b)))
    (plain, sums), (weighted, _) = both(params, _batch())
    want = float(plain) + 0.5 * float(sums["router_aux_loss_sum"]) + 0.25 * float(sums["router_z_loss_sum"])
    assert float(weighted) == pytest.approx(want, rel=1e-6) and float(weighted) > float(plain)
    dense = dataclasses.replace(CFG, family="qwen3", num_experts=0)
    dense_graphdef, dense_shapes, _ = params_lib.abstract(dense)
    _, dense_sums = jax.eval_shape(language_model(dense_graphdef, 0.0), dense_shapes, _batch())
    assert sorted(dense_sums) == ["count", "loss_sum", "tokens", "z_loss_sum"]


def _pair_batch(b=4, t=16):
    rows = _batch(2 * b, t)
    out = {k: v.reshape(b, 2, t) for k, v in rows.items()}
    return out | {"pair_mask": jnp.ones((b,), jnp.float32)}


def _rollout_batch(r=8, t=16):
    rows = _batch(r, t)
    w = np.asarray(rows["loss_mask"]) * (np.arange(t) >= 6)  # the completion: the last 10 positions
    rng = np.random.default_rng(1)
    return rows | {"loss_mask": jnp.asarray(w, jnp.float32), "loss_weights": jnp.asarray(w, jnp.float32),
                   "advantages": jnp.asarray(rng.standard_normal((r, t)) * w, jnp.float32),
                   "old_logp": jnp.full((r, t), -4.0, jnp.float32), "sample_logp": jnp.full((r, t), -4.0, jnp.float32)}


@pytest.mark.parametrize("task", ["rm", "dpo", "grpo"])
def test_every_task_adds_the_router_losses_with_their_coefficients(task):
    from maxlm.config import Config
    from maxlm.tasks import TASKS

    def objective(aux, z):
        model = dataclasses.replace(CFG, router_aux_coef=aux, router_z_coef=z, scalar_head=task == "rm")
        graphdef, _, _ = params_lib.abstract(model)
        return TASKS[task].objective(graphdef, Config(task=task, model=model))

    model = dataclasses.replace(CFG, scalar_head=task == "rm")
    params = params_lib.init(model, make_mesh(MeshConfig(data=1), jax.devices()[:1]), 0)
    batch = _rollout_batch() if task == "grpo" else _pair_batch()
    ref = params if task == "dpo" else None  # the reference's own router statistics are not trained
    both = jax.jit(lambda p, b: (objective(0.0, 0.0)(p, b, ref), objective(0.5, 0.25)(p, b, ref)))
    (plain, sums), (weighted, wsums) = both(params, batch)
    assert float(sums["router_aux_loss_sum"]) / float(sums["count"]) > 1.0  # top-2 of 4: 2 when balanced
    want = float(plain) + 0.5 * float(sums["router_aux_loss_sum"]) + 0.25 * float(sums["router_z_loss_sum"])
    assert float(weighted) == pytest.approx(want, rel=1e-6) and float(weighted) > float(plain)
    assert float(wsums["loss_sum"]) == pytest.approx(float(sums["loss_sum"]), rel=1e-6)  # the task's own loss, reported apart
    # the router's gradient comes from the load-balancing term too
    g0, g1 = (jax.grad(lambda p, c=c: objective(c, 0.0)(p, batch, ref)[0])(params)["layers"]["moe"]["router"] for c in (0.0, 0.5))
    assert float(jnp.max(jnp.abs(g1 - g0))) > 0
