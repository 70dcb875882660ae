"""Train state on a sharded mesh: the optimizer moments live where their params live."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from maxlm.ckpt.manager import Checkpoints
from maxlm.config import load
from maxlm.optim.optimizer import optimizer
from maxlm.parallel.mesh import make_mesh
from maxlm.train.state import restore_or_init

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mesh", [("mesh.fsdp=8", "mesh.data=1"), ("mesh.fsdp=4", "mesh.tensor=2", "mesh.data=1")])
def test_adamw_moments_are_sharded_like_params(tmp_path, mesh):
    cfg = load.load_config(str(REPO / "configs" / "models" / "tiny.yaml"), ["model.vocab_size=512", *mesh])
    m = make_mesh(cfg.mesh)
    state, _, _, _ = restore_or_init(cfg, m, optimizer(cfg.train), Checkpoints(tmp_path / "run"))
    adam = state.opt_state[-1]
    params = jax.tree_util.tree_leaves_with_path(state.params)
    assert len(params) == len(jax.tree.leaves(adam.mu)) == len(jax.tree.leaves(adam.nu))
    for moments in (adam.mu, adam.nu):
        for (path, p), m_leaf in zip(params, jax.tree.leaves(moments)):
            assert m_leaf.shape == p.shape
            # The arrays as allocated, not only the declared shardings.
            assert m_leaf.sharding.spec == p.sharding.spec, jax.tree_util.keystr(path)
    assert adam.count.sharding.spec == jax.sharding.PartitionSpec()
    # The check above is vacuous if nothing is sharded: the embedding must be split over fsdp.
    assert "fsdp" in str(state.params["embed"].sharding.spec)
    per_device = {d: 0 for d in m.devices.flat}
    for leaf in jax.tree.leaves(adam.mu):
        for shard in leaf.addressable_shards:
            per_device[shard.device] += shard.data.size
    total = sum(leaf.size for leaf in jax.tree.leaves(adam.mu))
    # Replicated moments would put `total` on every device.
    assert max(per_device.values()) < 0.5 * total
