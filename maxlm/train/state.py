"""Training state as data, and where it comes from: a fresh init, a resumed run, or `init_from`'s weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maxlm.ckpt.manager import Checkpoints, abstract_like
from maxlm.config import Config
from maxlm.errors import MaxlmError
from maxlm.models import params as params_lib

# Model keys that describe how to run, not what the weights are: the new run's config wins.
RUNTIME_MODEL_KEYS = ("dtype", "remat", "scan_layers", "attention", "scalar_head")


@dataclasses.dataclass
class TrainState:
    """Everything a step changes: completed steps, params, optimizer state."""

    step: int
    params: Any
    opt_state: Any


def source_config(path: str) -> Config:
    """Returns the config saved with the checkpoint at `path` (a maxlm run or checkpoint dir)."""
    p = Path(path)
    if (p / "config.json").exists() and not (p / "checkpoints").exists():
        raise MaxlmError(f"init_from {path}: this is a Hugging Face model dir; run `maxlm import-hf {path} OUT` and use OUT")
    if not p.exists():
        raise MaxlmError(f"init_from {path}: no such directory")
    return Checkpoints(p, read_only=True).config()


def _run_tokenizer(init_from: str, src: Config) -> str:
    """Returns the tokenizer the source run used: its configured path, else tokenizer.model in its run dir."""
    if src.tokenizer.path:
        return src.tokenizer.path
    # init_from may name the run dir, its checkpoints dir or one step dir.
    for d in (Path(init_from), *Path(init_from).resolve().parents[:2]):
        if (d / "tokenizer.model").is_file():
            return str(d / "tokenizer.model")
    raise MaxlmError(f"init_from {init_from}: its run trained its own tokenizer, but no tokenizer.model is beside it; set tokenizer.path")


def resolve_init_from(cfg: Config) -> Config:
    """Returns cfg with the model shape (and tokenizer, if unset) taken from the run or checkpoint `train.init_from` names."""
    if not cfg.train.init_from:
        return cfg
    src = source_config(cfg.train.init_from)
    model = dataclasses.replace(src.model, **{k: getattr(cfg.model, k) for k in RUNTIME_MODEL_KEYS})
    tok = cfg.tokenizer if cfg.tokenizer.path else dataclasses.replace(cfg.tokenizer, path=_run_tokenizer(cfg.train.init_from, src))
    return dataclasses.replace(cfg, model=model, tokenizer=tok)


def opt_shardings(tx: optax.GradientTransformation, shapes: Any, p_shard: Any, mesh: Mesh) -> Any:
    """Returns the optimizer state's shardings: each moment tree sharded like the params, counters replicated.

    Not what XLA picks for `jit(tx.init)`: zeros that depend on no input come out replicated,
    which puts a full copy of both AdamW moments on every chip (an 8B model's init then needs
    ~60 GiB per chip on a v5litepod-256).
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, shapes), p_shard, transform_non_params=lambda _: replicated)


def load_params(path: str, cfg: Config, mesh: Mesh) -> Any:
    """Returns the params of the latest checkpoint under `path`, sharded for `mesh`.

    A scalar head is added (zeros: every reward starts equal) when the config wants one that the
    checkpoint lacks, e.g. a reward model started from an SFT model, and dropped in the reverse case.
    """
    ckpts = Checkpoints(path, read_only=True)
    saved_model = dataclasses.replace(cfg.model, scalar_head=ckpts.config().model.scalar_head)
    _, shapes, _ = params_lib.abstract(saved_model)
    params = ckpts.restore(None, abstract_like(shapes, params_lib.shardings(saved_model, mesh)))["params"]
    if cfg.model.scalar_head and "score_head" not in params:
        sharding = params_lib.shardings(cfg.model, mesh)["score_head"]
        params["score_head"] = jax.device_put(jnp.zeros((cfg.model.hidden_size,), jnp.dtype(cfg.model.param_dtype)), sharding)
    if not cfg.model.scalar_head:
        params.pop("score_head", None)
    return params


def reference_params(cfg: Config, mesh: Mesh) -> Any:
    """Returns the frozen reference model: `train.init_from`'s weights, else the seed's init (ppo/grpo; dpo refuses to run without init_from)."""
    if cfg.train.init_from:
        return load_params(cfg.train.init_from, cfg, mesh)
    return params_lib.init(cfg.model, mesh, cfg.train.seed)


def restore_or_init(cfg: Config, mesh: Mesh, tx: optax.GradientTransformation, ckpts: Checkpoints) -> tuple[TrainState, dict | None, Any, Any]:
    """Returns (state, saved data-iterator state or None, param shardings, opt-state shardings)."""
    _, shapes, _ = params_lib.abstract(cfg.model)
    p_shard = params_lib.shardings(cfg.model, mesh)
    abstract_params = abstract_like(shapes, p_shard)
    with jax.set_mesh(mesh):
        o_shard = opt_shardings(tx, shapes, p_shard, mesh)
        step = ckpts.latest_step()
        if step is not None:
            abstract_opt = abstract_like(jax.eval_shape(tx.init, shapes), o_shard)
            restored = ckpts.restore_checked(step, abstract_params, abstract_opt, data_state=True)
            return TrainState(step, restored["params"], restored["opt_state"]), restored.get("data_state"), p_shard, o_shard
        if cfg.train.init_from:
            params = load_params(cfg.train.init_from, cfg, mesh)
        else:
            params = params_lib.init(cfg.model, mesh, cfg.train.seed)
        opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
    return TrainState(0, params, opt_state), None, p_shard, o_shard
