"""Mesh sizing errors and the logical-axis rules."""

import jax
import pytest

from maxlm.config import MeshConfig
from maxlm.errors import MaxlmError
from maxlm.parallel.mesh import make_mesh, mesh_shape
from maxlm.parallel.rules import logical_to_spec


def test_fill_and_impossible_meshes():
    assert mesh_shape(MeshConfig(data=-1, fsdp=4, tensor=2), 8) == (1, 4, 1, 1, 2)
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 1, 1, 2)
    assert mesh_shape(MeshConfig(data=-1, expert=4), 8) == (2, 1, 4, 1, 1)
    assert mesh_shape(MeshConfig(data=-1, context=4), 8) == (2, 1, 1, 4, 1)
    with pytest.raises(MaxlmError, match=r"mesh data=3 fsdp=1 expert=1 tensor=1 needs 3 devices but 8 are present"):
        mesh_shape(MeshConfig(data=3, fsdp=1, tensor=1), 8)
    with pytest.raises(MaxlmError, match="does not fit 8 devices"):
        mesh_shape(MeshConfig(data=-1, fsdp=3, tensor=1), 8)


def test_make_mesh_uses_all_fake_devices():
    assert jax.device_count() == 8
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "expert": 1, "context": 1, "tensor": 2}


def test_rules_shard_and_drop_indivisible_axes():
    shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert tuple(logical_to_spec(("embed", "mlp"), (64, 128), shape)) == ("fsdp", "tensor")
    assert tuple(logical_to_spec(("batch", "length"), (8, 16), shape)) == (("data", "fsdp"), None)
    # one kv head cannot be split over tensor=2: replicate instead of failing
    assert tuple(logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), shape)) == ("fsdp", None, None)
    assert tuple(logical_to_spec(("layers", "embed"), (4, 64), {"data": 8, "fsdp": 1, "tensor": 1})) == (None, None)
    # Stacked experts split over expert; the batch over it too (data parallel outside the experts); the router never.
    moe = {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
    assert tuple(logical_to_spec(("layers", "expert", "embed", "mlp"), (2, 8, 64, 96), moe)) == (None, "expert", None, None)
    assert tuple(logical_to_spec(("batch", "length"), (8, 16), moe)) == (("data", "expert"), None)
    assert tuple(logical_to_spec(("embed", "router"), (64, 8), moe)) == (None, None)
