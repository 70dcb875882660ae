"""The train step's non-finite guard: a bad step changes nothing and is counted."""

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.config import MeshConfig, ModelConfig, TrainConfig
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from maxlm.optim import optimizer as optim
from maxlm.optim import update
from maxlm.tasks.lm import language_model

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=32)


def test_nonfinite_step_is_skipped_and_good_step_applies():
    tc = TrainConfig(steps=10, warmup_steps=0, learning_rate=1e-2)
    tx = optim.optimizer(tc)
    graphdef, _, _ = params_lib.abstract(CFG)
    params = params_lib.init(CFG, make_mesh(MeshConfig(data=1), jax.devices()[:1]), 0)
    opt_state = tx.init(params)
    b, t = 2, 16
    batch = {
        "tokens": jnp.asarray(np.random.default_rng(0).integers(0, 64, (b, t)), jnp.int32),
        "segment_ids": jnp.ones((b, t), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
        "loss_mask": jnp.ones((b, t), jnp.float32),
    }
    step = jax.jit(update.train_step(language_model(graphdef, 0.0), tx, tc))
    poisoned = jax.tree.map(lambda x: x, params)
    poisoned["final_norm"]["scale"] = poisoned["final_norm"]["scale"].at[0].set(jnp.inf)
    new_params, new_opt, m = step(poisoned, opt_state, batch)
    assert int(m["nonfinite"]) == 1
    for a, b_ in zip(jax.tree.leaves((new_params, new_opt)), jax.tree.leaves((poisoned, opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))
    new_params, _, m = step(params, opt_state, batch)
    assert int(m["nonfinite"]) == 0 and np.isfinite(float(m["loss"]))
    assert not np.allclose(np.asarray(new_params["embed"]), np.asarray(params["embed"]))
