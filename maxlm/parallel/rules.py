"""Logical axis names → mesh axes: the one table that decides how everything is sharded.

Model code names axes ("embed", "mlp", "heads", ...); only this module knows the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

# Parameters are sharded over fsdp on their model dimension and over tensor on the
# dimension that a Megatron split would cut; activations only ever on batch and tensor.
# An MoE's stacked experts split over `expert`, which also splits the batch, so attention and
# the rest of the model run data-parallel there instead of repeating the same rows.
RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp", "expert"),
    "expert": ("expert",),
    "router": (),
    "length": ("context",),  # activations' sequence dim (context parallelism); attention gathers K/V whole
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


# The axes a row-local computation may run apart on (per_data_shard): not expert, whose split the
# partitioner must still see inside (an MoE's experts), nor tensor, which splits features, not rows.
DATA_PARALLEL = ("data", "fsdp")


def per_data_shard(fn: Callable, n_split: int, *args: jax.Array) -> jax.Array:
    """Returns fn(*args), run apart on each data × fsdp shard when a mesh splits those axes: the first `n_split`
    args (and the result) split on dim 0, the others whole (gathered at the boundary, as fsdp does).

    For computations whose rows do not interact but which XLA cannot see to be row-local (an MoE's sort of the
    tokens by expert would otherwise gather the whole batch onto every device). Runs fn directly off a mesh or
    when dim 0 does not divide.
    """
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else tuple(a for a in DATA_PARALLEL if mesh.shape.get(a, 1) > 1)
    if not axes or args[0].shape[0] % math.prod(mesh.shape[a] for a in axes):
        return fn(*args)
    specs = tuple(PartitionSpec(axes) if i < n_split else PartitionSpec() for i in range(len(args)))
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(axes), axis_names=set(axes))(*args)


def axis_size(name: str) -> int:
    """Returns the size of mesh axis `name` in the current mesh (1 outside one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else dict(mesh.shape).get(name, 1)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Returns `x` with a sharding constraint from its logical names (no-op outside a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or math.prod(mesh.shape.values()) == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, dict(mesh.shape)))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Returns the sharding of every batch leaf: rows over the batch axes, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(RULES["batch"]))


def batch_rows(mesh: jax.sharding.Mesh, rows: int) -> list[int]:
    """Returns the rows of a [rows, ...] batch (`batch_sharding`) that this process's devices hold, sorted:
    the rows it must make, in the order `jax.make_array_from_process_local_data` takes them."""
    held = batch_sharding(mesh).addressable_devices_indices_map((rows,)).values()
    return sorted({r for (index,) in held for r in range(*index.indices(rows))})
