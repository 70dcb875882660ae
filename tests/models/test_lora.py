"""LoRA adapters in the decoder: the adapted forward equals the merged weights' forward, adapters off is the base, rank 0
adds nothing, a bfloat16 / int8 / nf4 base stays near the f32 one in less memory (nf4 sharded too), dropout is unbiased and only in training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maxlm.config import LoraConfig, MeshConfig, ModelConfig
from maxlm.models import lora, quant
from maxlm.models import params as params_lib
from maxlm.models.layers import Adapter
from maxlm.parallel.mesh import make_mesh

MODEL = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=48, dtype="float32")
ALL = LoraConfig(rank=4, alpha=8.0, targets=["q", "k", "v", "o", "gate", "up", "down"])


@pytest.fixture(scope="module")
def adapted():
    """Returns params of MODEL with every adapter's a and b random (a fresh b is zero, which would hide mistakes)."""
    mesh = make_mesh(MeshConfig(data=-1, fsdp=1))
    trainable, frozen = lora.split(params_lib.init(MODEL, mesh, 0, ALL))
    keys = iter(jax.random.split(jax.random.key(1), 64))
    trainable = jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), trainable)
    return lora.join(trainable, frozen)


def logits(params, lora_cfg=None) -> np.ndarray:
    graphdef, _, _ = params_lib.abstract(MODEL, lora_cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)))
    return np.asarray(jax.jit(lambda p, t: params_lib.bind(graphdef, p)(t))(params, tokens))


def test_adapted_forward_equals_merged_weights(adapted):
    ours = logits(adapted, ALL)
    merged = logits(lora.merged(adapted, ALL))
    base = logits(lora.split(adapted)[1])
    assert np.abs(ours - merged).max() < 1e-5
    assert np.abs(ours - base).max() > 0.1  # the adapters do change the output


def test_adapters_off_is_the_base(adapted):
    np.testing.assert_array_equal(logits(lora.adapters_off(adapted), ALL), logits(lora.split(adapted)[1]))


def test_adapters_only_on_targets_and_rank_zero_adds_nothing():
    _, shapes, names = params_lib.abstract(MODEL, LoraConfig(rank=2, targets=["q", "down"]))
    leaves = {"/".join(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(lora.trainable(shapes))[0]}
    assert leaves == {"layers/attn/q_lora/a", "layers/attn/q_lora/b", "layers/mlp/down_lora/a", "layers/mlp/down_lora/b"}
    assert shapes["layers"]["attn"]["q_lora"]["b"].shape == (2, 2, 4, 8)  # [L, r, N, H], stacked like the layer
    assert tuple(names["layers"]["attn"]["q_lora"]["a"]) == ("layers", "embed", "lora_rank")
    plain = params_lib.abstract(MODEL)
    zero = params_lib.abstract(MODEL, LoraConfig(rank=0))
    assert jax.tree.structure(plain[1]) == jax.tree.structure(zero[1]) and plain[0] == zero[0]


# (base_dtype, max and rms |logits - the f32 base's| allowed, in logit stds). Measured: bfloat16 0.033 / 0.007, int8
# 0.053 / 0.012, nf4 2.02 / 0.29: nf4's weights are 8% off in rms (int8's 0.5%), and this random 2-layer model
# amplifies a weight error 2.5-3.5x into its logits (rms).
@pytest.mark.parametrize("base_dtype, max_tol, rms_tol", [("bfloat16", 0.05, 0.01), ("int8", 0.08, 0.02), ("nf4", 2.5, 0.4)])
def test_held_base_stays_near_the_float_base_in_less_memory(adapted, base_dtype, max_tol, rms_tol):
    held_cfg = dataclasses.replace(ALL, base_dtype=base_dtype, nf4_block=16)  # MODEL's inputs: 32 and 48
    trainable, frozen = lora.split(adapted)
    held = lora.held_base(frozen, held_cfg)
    projections = lambda tree: sum(x.nbytes for k, x in jax.tree_util.tree_flatten_with_path(tree["layers"])[0]
                                   if k[-1].key.removesuffix(quant.SCALE) in lora.PROJECTIONS)
    full = logits(adapted, ALL)
    diff = np.abs(logits(lora.join(trainable, held), held_cfg) - full) / full.std()
    ratio = projections(held) / projections(frozen)
    print(f"{base_dtype} base: |logits - f32 base's| max {diff.max():.3f}, rms {np.sqrt(np.mean(diff**2)):.4f} logit stds "
          f"(std {full.std():.3f}); projection bytes x{ratio:.3f}")
    assert diff.max() <= max_tol and np.sqrt(np.mean(diff**2)) <= rms_tol
    # int8: a byte a weight + an f32 scale per output channel; nf4: half a byte + an f32 absmax per 16 inputs
    assert ratio <= {"bfloat16": 0.5, "int8": 0.25 + 1 / 32, "nf4": 1 / 8 + 1 / 16}[base_dtype]
    if base_dtype == "int8":
        assert held["layers"]["mlp"]["down"].dtype == jnp.int8 and held["layers"]["attn"]["o_scale"].shape == (2, 1, 1, 32)
    if base_dtype == "nf4":  # o [L, N, H, D] = [2, 4, 8, 32]: codes [L, N, H / 2, D], an absmax per 16 of the N · H inputs
        assert held["layers"]["attn"]["o"].shape == (2, 4, 4, 32) and held["layers"]["attn"]["o_scale"].shape == (2, 2, 32)
    if base_dtype in quant.QUANTIZED:
        # The adapted forward on the quantized base is the merged (dequantized) weights' forward.
        merged = logits(lora.merged(lora.join(trainable, held), held_cfg))
        assert np.abs(merged - logits(lora.join(trainable, held), held_cfg)).max() < 1e-5


def test_adapter_dropout_is_unbiased_and_only_with_a_key():
    cfg = dataclasses.replace(ALL, dropout=0.3)
    adapter = Adapter(MODEL, cfg, nnx.Rngs(0), (32,), ("embed",), (48,), ("mlp",))
    adapter.b.value = jax.random.normal(jax.random.key(2), adapter.b.value.shape)
    x = jax.random.normal(jax.random.key(3), (4, 32))
    plain = adapter(x)
    np.testing.assert_array_equal(np.asarray(adapter(x, None)), np.asarray(plain))  # eval, sampling: no key, no dropout
    dropped = jax.vmap(lambda k: adapter(x, k))(jax.random.split(jax.random.key(4), 4000))
    assert np.abs(np.asarray(dropped[0] - plain)).max() > 0.1
    # The adapter is linear in its input: inverted dropout leaves its mean update unchanged.
    spread = np.asarray(jnp.std(dropped, axis=0)) / np.sqrt(len(dropped))
    assert np.all(np.abs(np.asarray(jnp.mean(dropped, axis=0) - plain)) <= 5 * spread + 1e-6)


def test_an_nf4_base_sharded_over_fsdp_and_tensor_gives_the_one_device_logits(adapted):
    cfg = dataclasses.replace(ALL, base_dtype="nf4", nf4_block=16)
    trainable, frozen = lora.split(adapted)
    params = lora.join(trainable, lora.held_base(frozen, cfg))
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    sharded = jax.device_put(params, params_lib.shardings(MODEL, mesh, cfg))
    assert tuple(sharded["layers"]["attn"]["q"].sharding.spec)[1:3] == ("fsdp", "tensor")  # codes [L, D / 2, N, H]: embed, heads
    with jax.set_mesh(mesh):
        got = logits(sharded, cfg)
    np.testing.assert_allclose(got, logits(params, cfg), rtol=0, atol=1e-5)


MOE = dataclasses.replace(MODEL, family="mixtral", num_experts=4, experts_per_token=2, router_renormalize=True)


def test_an_moe_experts_adapters_give_the_merged_forward_and_train():
    graphdef, shapes, names = params_lib.abstract(MOE, ALL)
    moe = shapes["layers"]["moe"]
    assert moe["gate_lora"]["a"].shape == (2, 4, 32, 4) and moe["down_lora"]["b"].shape == (2, 4, 4, 32)  # [L, E, in, r], [L, E, r, out]
    assert tuple(names["layers"]["moe"]["up_lora"]["a"]) == ("layers", "expert", "embed", "lora_rank")
    trainable, frozen = lora.split(params_lib.init(MOE, make_mesh(MeshConfig(data=-1, fsdp=1)), 0, ALL))
    keys = iter(jax.random.split(jax.random.key(1), 64))
    trainable = jax.tree.map(lambda x: 0.2 * jax.random.normal(next(keys), x.shape), trainable)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)))
    run = lambda p, g: np.asarray(jax.jit(lambda p, t: params_lib.bind(g, p)(t))(p, tokens))
    plain = params_lib.abstract(MOE)[0]
    got = run(lora.join(trainable, frozen), graphdef)
    np.testing.assert_allclose(got, run(lora.merged(lora.join(trainable, frozen), ALL), plain), rtol=0, atol=1e-5)
    assert np.abs(got - run(frozen, plain)).max() > 0.1
    # each expert's adapter gets its own gradient (experts no token reaches would get none; with 24 tokens, k=2, all are reached)
    loss = lambda t: jnp.mean(params_lib.bind(graphdef, lora.join(t, frozen))(tokens) ** 2)
    grads = jax.jit(jax.grad(loss))(trainable)["layers"]["moe"]
    for name in ("gate", "up", "down"):
        per_expert = np.abs(np.asarray(grads[f"{name}_lora"]["b"])).sum(axis=(0, 2, 3))
        assert (per_expert > 0).all(), (name, per_expert)


@pytest.mark.parametrize("base_dtype", ["int8", "nf4"])
def test_an_moe_base_holds_its_experts_quantized_and_gives_the_merged_logits_on_1_and_8_devices(base_dtype):
    cfg = LoraConfig(rank=4, alpha=8.0, targets=["q", "o", "gate", "down"], base_dtype=base_dtype, nf4_block=16)
    graphdef, _, _ = params_lib.abstract(MOE, cfg)
    trainable, frozen = lora.split(params_lib.init(MOE, make_mesh(MeshConfig(data=-1, fsdp=1)), 0, dataclasses.replace(cfg, base_dtype="param_dtype")))
    trainable = jax.tree.map(lambda x: 0.2 * jax.random.normal(jax.random.key(1), x.shape), trainable)
    held = lora.held_base(frozen, cfg)
    moe = held["layers"]["moe"]
    # gate [L, E, D, F] = [2, 4, 32, 48]: int8 [2, 4, 32, 48] + a scale per expert output; nf4 codes [2, 4, 16, 48], an absmax per 16 inputs
    assert moe["gate"].shape == {"int8": (2, 4, 32, 48), "nf4": (2, 4, 16, 48)}[base_dtype]
    assert moe["down_scale"].shape == {"int8": (2, 4, 1, 32), "nf4": (2, 4, 3, 32)}[base_dtype]
    assert moe["router"].dtype == jnp.float32 and "router_scale" not in moe  # routing stays float
    params = lora.join(trainable, held)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)))
    run = lambda p, c, g=graphdef: np.asarray(jax.jit(lambda p, t: params_lib.bind(g, p)(t))(p, tokens))
    got = run(params, cfg)
    plain_graphdef = params_lib.abstract(MOE)[0]
    # The adapted forward on the quantized experts is the merged (dequantized) weights' forward...
    np.testing.assert_allclose(got, run(lora.merged(params, cfg), None, plain_graphdef), rtol=0, atol=1e-5)
    # ... near the float base's (int8 0.5% rms weight error, nf4 8%) ...
    full = run(lora.merged(lora.join(trainable, frozen), cfg), None, plain_graphdef)
    diff = np.abs(got - full) / full.std()
    print(f"MoE {base_dtype} base: |logits - f32 base's| max {diff.max():.3f}, rms {np.sqrt(np.mean(diff**2)):.4f} logit stds")
    assert np.sqrt(np.mean(diff**2)) <= {"int8": 0.02, "nf4": 0.4}[base_dtype]
    if base_dtype == "int8":
        return
    # ... and the same when the experts are split over the mesh's expert axis and the codes over fsdp.
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, expert=2))
    sharded = jax.device_put(params, params_lib.shardings(MOE, mesh, cfg))
    assert tuple(sharded["layers"]["moe"]["gate"].sharding.spec)[1:3] == ("expert", "fsdp")
    assert tuple(sharded["layers"]["moe"]["gate_lora"]["a"].sharding.spec)[1:3] == ("expert", "fsdp")
    with jax.set_mesh(mesh):
        np.testing.assert_allclose(run(sharded, cfg), got, rtol=0, atol=1e-5)
