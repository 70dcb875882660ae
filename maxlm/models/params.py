"""Parameters as plain pytrees: abstract shapes, mesh shardings, sharded init, model rebuild.

Training, checkpoints and HF interop all handle params as the pure nested dict that
`nnx.State.to_pure_dict()` gives; `bind` turns one back into a callable Decoder.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx
from jax.sharding import Mesh

from maxlm.config import LoraConfig, ModelConfig
from maxlm.models.llama import Decoder
from maxlm.parallel.rules import named_sharding


def abstract(cfg: ModelConfig, lora: LoraConfig | None = None) -> tuple[nnx.GraphDef, Any, Any]:
    """Returns (graphdef, params of ShapeDtypeStructs, logical axis names per param) without allocating; with `lora`, its adapters too."""
    box = {}

    def make():
        box["graphdef"], state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0), lora=lora))
        return state

    # jax.eval_shape, not nnx.eval_shape: the latter binds logical names to any active mesh.
    state = jax.eval_shape(make)
    graphdef = box["graphdef"]
    names = nnx.to_pure_dict(nnx.get_partition_spec(state))
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), nnx.to_pure_dict(state))
    return graphdef, shapes, names


def shardings(cfg: ModelConfig, mesh: Mesh, lora: LoraConfig | None = None) -> Any:
    """Returns the NamedSharding of every parameter on `mesh` from its logical axis names."""
    _, shapes, names = abstract(cfg, lora)
    return jax.tree.map(
        lambda s, n: named_sharding(mesh, tuple(n), s.shape), shapes, names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
    )


def init(cfg: ModelConfig, mesh: Mesh, seed: int, lora: LoraConfig | None = None, keep: Callable[[Any], Any] | None = None) -> Any:
    """Returns freshly initialized params, each created directly in its sharded layout; `keep(tree) -> subtree`:
    only that part (e.g. a LoRA run's adapters on a loaded base), the rest never computed."""
    keep = keep or (lambda tree: tree)

    def make():
        return keep(nnx.to_pure_dict(nnx.split(Decoder(cfg, rngs=nnx.Rngs(seed), lora=lora))[1]))

    out_shardings = keep(shardings(cfg, mesh, lora))
    with jax.set_mesh(mesh):
        return jax.jit(make, out_shardings=out_shardings)()


def bind(graphdef: nnx.GraphDef, params: Any) -> Decoder:
    """Returns a Decoder whose weights are `params` (works inside jit on traced params)."""
    return nnx.merge(graphdef, params)
