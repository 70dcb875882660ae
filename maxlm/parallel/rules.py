"""Logical axis names → mesh axes: the one table that decides how everything is sharded.

Model code names axes ("embed", "mlp", "heads", ...); only this module knows the mesh.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

# Parameters are sharded over fsdp on their model dimension and over tensor on the
# dimension that a Megatron split would cut; activations only ever on batch and tensor.
RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "length": (),
    "layers": (),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "lora_rank": (),  # an adapter's rank is small: replicated
    "act_embed": (),
    "act_mlp": ("tensor",),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_vocab": ("tensor",),
}


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None, mesh_shape: dict[str, int]) -> PartitionSpec:
    """Returns the PartitionSpec for logical `names`; a mesh axis that does not divide its dim is dropped."""
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        axes = []
        size = 1
        for ax in RULES.get(name, ()) if name else ():
            n = mesh_shape.get(ax, 1)
            if n == 1 or ax in used:
                continue
            # Replicate rather than fail when a tiny dim (e.g. 2 kv heads) does not divide.
            if shape is not None and shape[i] % (size * n):
                continue
            axes.append(ax)
            size *= n
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def named_sharding(mesh: jax.sharding.Mesh, names: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    """Returns the NamedSharding of an array with logical axis `names` on `mesh`."""
    return NamedSharding(mesh, logical_to_spec(names, shape, dict(mesh.shape)))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Returns `x` with a sharding constraint from its logical names (no-op outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, dict(mesh.shape)))
