"""Training state as data, and where it comes from: a fresh init, a resumed run, or `init_from`'s weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from maxlm.ckpt import adapters
from maxlm.ckpt.manager import Checkpoints, abstract_like
from maxlm.config import Config, Inconsistent, check_quantized_base
from maxlm.errors import MaxlmError
from maxlm.models import lora
from maxlm.models import params as params_lib

# Model keys that describe how to run, not what the weights are: the new run's config wins.
RUNTIME_MODEL_KEYS = ("dtype", "remat", "scan_layers", "attention", "scalar_head")


@dataclasses.dataclass
class TrainState:
    """Everything a step changes: completed steps, params, optimizer state; a LoRA run's `base` record (ckpt/adapters.py)."""

    step: int
    params: Any
    opt_state: Any  # a LoRA run's: of the trainable part alone
    base: dict | None = None

    def saved_params(self) -> Any:
        """Returns what a checkpoint holds of the params: all of them, or a LoRA run's trainable part."""
        return self.params if self.base is None else lora.trainable(self.params)


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
    resolved = dataclasses.replace(cfg, model=model, tokenizer=tok)
    try:
        check_quantized_base(resolved)  # the loader checked the config's own model, which init_from's replaces
    except Inconsistent as e:
        raise MaxlmError(f"train.init_from {cfg.train.init_from}: its model cannot be held as lora.base_dtype {cfg.lora.base_dtype}: {e}") from None
    return resolved


def opt_shardings(tx: optax.GradientTransformation, shapes: Any, p_shard: Any, mesh: Mesh) -> Any:
    """Returns the optimizer state's shardings: each moment tree sharded like the params, counters replicated.

    Not what XLA picks for `jit(tx.init)`: zeros that depend on no input come out replicated,
    which puts a full copy of both AdamW moments on every chip (an 8B model's init then needs
    ~60 GiB per chip on a v5litepod-256).
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, shapes), p_shard, transform_non_params=lambda _: replicated)


def load_params(path: str, cfg: Config, mesh: Mesh) -> Any:
    """Returns the params of the latest checkpoint under `path` as a plain model (a LoRA run's adapters merged), sharded for `mesh`.

    A scalar head is added (zeros: every reward starts equal) when the config wants one that the
    checkpoint lacks, e.g. a reward model started from an SFT model, and dropped in the reverse case.
    """
    ckpts = Checkpoints(path, read_only=True)
    step = ckpts.latest_step()
    saved_model = dataclasses.replace(cfg.model, scalar_head=ckpts.config(step).model.scalar_head)
    return fit_head(adapters.restore_plain(ckpts, step, saved_model, mesh), cfg, mesh)


def fit_head(params: Any, cfg: Config, mesh: Mesh) -> Any:
    """Returns params with a zero scalar head added when cfg.model wants one they lack, or theirs dropped when it wants none."""
    if cfg.model.scalar_head and "score_head" not in params:
        sharding = params_lib.shardings(cfg.model, mesh)["score_head"]
        params["score_head"] = jax.device_put(jnp.zeros((cfg.model.hidden_size,), jnp.dtype(cfg.model.param_dtype)), sharding)
    if not cfg.model.scalar_head:
        params.pop("score_head", None)
    return params


def lora_start(cfg: Config, mesh: Mesh) -> tuple[Any, dict]:
    """Returns (a new LoRA run's params: the base with fresh adapters (b = 0: the base's forward), its base record with fingerprint)."""
    record = adapters.base_record(cfg.train.init_from, cfg.train.seed)
    head, frozen = lora.split(fit_head(adapters.base_params(record, cfg, mesh), cfg, mesh))
    fresh = params_lib.init(cfg.model, mesh, cfg.train.seed, cfg.lora, keep=lambda t: lora.split(t, heads=False)[0])
    record |= {"fingerprint": adapters.fingerprint(frozen)}
    held = jax.jit(lambda f: lora.held_base(f, cfg.lora))(frozen)  # the fingerprint is the loaded base's, before any cast
    return lora.join(lora.join(fresh, head), held), record


def reference_params(cfg: Config, mesh: Mesh) -> Any:
    """Returns the frozen reference model: `train.init_from`'s weights, else the seed's init (ppo/grpo; dpo refuses to run without init_from);
    a LoRA run's: its base, in the run's params layout with the adapters off."""
    if cfg.lora.rank:
        return lora.adapters_off(lora_start(cfg, mesh)[0])
    if cfg.train.init_from:
        return load_params(cfg.train.init_from, cfg, mesh)
    return params_lib.init(cfg.model, mesh, cfg.train.seed)


def restore_or_init(cfg: Config, mesh: Mesh, tx: optax.GradientTransformation, ckpts: Checkpoints) -> tuple[TrainState, dict | None, Any, Any]:
    """Returns (state, saved data-iterator state or None, param shardings, opt-state shardings).

    A LoRA run (lora.rank > 0) checkpoints and optimizes only `lora.trainable(params)`; its base is
    reloaded from the run's base record on resume (ckpt/adapters.py).
    """
    lora_cfg = cfg.lora if cfg.lora.rank else None
    part = lora.trainable if lora_cfg else (lambda tree: tree)
    _, shapes, _ = params_lib.abstract(cfg.model, lora_cfg)
    p_shard = params_lib.shardings(cfg.model, mesh, lora_cfg)
    abstract_params = abstract_like(shapes, p_shard)
    with jax.set_mesh(mesh):
        o_shard = opt_shardings(tx, part(shapes), part(p_shard), mesh)
        step = ckpts.latest_step()
        if step is not None:
            frozen, record = adapters.reload_base(ckpts, step, cfg, mesh) if lora_cfg else (None, None)
            abstract_opt = abstract_like(jax.eval_shape(tx.init, part(shapes)), o_shard)
            restored = ckpts.restore_checked(step, part(abstract_params), abstract_opt, data_state=True)
            params = lora.join(restored["params"], frozen) if lora_cfg else restored["params"]
            return TrainState(step, params, restored["opt_state"], record), restored.get("data_state"), p_shard, o_shard
        record = None
        if lora_cfg:
            params, record = lora_start(cfg, mesh)
        elif cfg.train.init_from:
            params = load_params(cfg.train.init_from, cfg, mesh)
        else:
            params = params_lib.init(cfg.model, mesh, cfg.train.seed)
        opt_state = jax.jit(tx.init, out_shardings=o_shard)(part(params))
    return TrainState(0, params, opt_state, record), None, p_shard, o_shard
