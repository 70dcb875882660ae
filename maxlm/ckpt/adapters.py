"""A LoRA run's checkpoints: the adapters (and a scalar head) only, plus a record of the frozen base they go on.

The record (`base` item of each step): {"init_from": the base run's checkpoints dir or "",
"step": its step, "seed": the seed whose init is the base when there is no init_from,
"fingerprint": {leaf: [shape, dtype, sum, sum of squares]} of the base as loaded, before
lora.base_dtype casts or quantizes it}. Restoring reloads the base from it and checks the
fingerprint, so adapters never land silently on a base that changed since.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from maxlm.ckpt.manager import Checkpoints, abstract_like
from maxlm.ckpt.step import StoredStep
from maxlm.config import Config, ModelConfig
from maxlm.errors import MaxlmError
from maxlm.models import lora, quant
from maxlm.models import params as params_lib

# Relative tolerance of the fingerprint's sums: another mesh sums in another order.
SUM_RTOL = 1e-4


def fingerprint(frozen: Any) -> dict[str, list]:
    """Returns {leaf path: [shape, dtype, sum, sum of squares]} of the frozen base (f32 sums, on device)."""
    def sums(x):
        x = x.astype(jnp.float32)
        return jnp.stack([jnp.sum(x), jnp.sum(x * x)])

    leaves = jax.tree_util.tree_flatten_with_path(frozen)[0]
    stats = jax.device_get(jax.jit(lambda xs: [sums(x) for x in xs])([x for _, x in leaves]))
    return {"/".join(str(k.key) for k in path): [list(x.shape), str(x.dtype), float(st[0]), float(st[1])]
            for (path, x), st in zip(leaves, stats)}


def check_fingerprint(saved: dict, now: dict, where: str) -> None:
    """Raises MaxlmError when the base reloaded now is not the one the adapters at `where` were trained on."""
    if set(saved) != set(now):
        raise MaxlmError(f"{where}: the LoRA base changed: its weights are now {sorted(now)}, the adapters were trained on {sorted(saved)}")
    for name, (shape, dtype, s, q) in saved.items():
        shape2, dtype2, s2, q2 = now[name]
        # A sum near zero has no relative precision: its rounding error is bounded by eps · sum |x| <= eps · sqrt(n · sum x²).
        slack = SUM_RTOL * math.sqrt(max(math.prod(shape), 1) * max(q, 0.0))
        same = list(shape) == list(shape2) and dtype == dtype2 and math.isclose(q, q2, rel_tol=SUM_RTOL) and abs(s - s2) <= slack
        if not same:
            raise MaxlmError(f"{where}: the LoRA base changed since these adapters were trained: {name} was {shape} {dtype} "
                             f"(sum {s:.6g}), is now {shape2} {dtype2} (sum {s2:.6g}); restore the base run it names, or start a new run_dir")


def base_record(init_from: str, seed: int) -> dict:
    """Returns the record (without fingerprint) of a new LoRA run's base: init_from's latest step, else the seed's init."""
    if not init_from:
        return {"init_from": "", "step": 0, "seed": seed}
    stored = StoredStep(init_from)
    return {"init_from": str(stored.checkpoints.directory), "step": stored.step, "seed": seed}


def base_params(record: dict, cfg: Config, mesh: Mesh) -> Any:
    """Returns the whole plain base model (a scalar head kept if it has one) that `record` names, sharded for `mesh`."""
    if not record["init_from"]:
        # The seed's init of the adapted model (adapters draw from the same stream), in float.
        float_lora = dataclasses.replace(cfg.lora, base_dtype="param_dtype")
        return lora.merged(params_lib.init(cfg.model, mesh, record["seed"], float_lora), float_lora)
    stored = _stored_base(record)
    # Every process restores together (training), not StoredStep's process-local reader.
    ckpts = Checkpoints(stored.checkpoints.directory, read_only=True)
    # The base's own head, which may differ from the run's (an RM's LoRA on an SFT base).
    return restore_plain(ckpts, stored.step, dataclasses.replace(cfg.model, scalar_head=stored.config.model.scalar_head), mesh)


def restore_plain(ckpts: Checkpoints, step: int, model: ModelConfig, mesh: Mesh) -> Any:
    """Returns the params of `step` as a plain `model` (rank-0 shapes): a LoRA run's base reloaded
    from its record and checked, its adapters merged in."""
    cfg = ckpts.config(step)
    if cfg.lora.rank == 0:
        return ckpts.restore(step, abstract_like(params_lib.abstract(model)[1], params_lib.shardings(model, mesh)))["params"]
    frozen, adapters = restore_lora(ckpts, step, cfg, model, mesh)
    return jax.jit(lambda p: lora.merged(p, cfg.lora, jnp.dtype(model.param_dtype)))(lora.join(adapters, frozen))


def reload_base(ckpts: Checkpoints, step: int, cfg: Config, mesh: Mesh) -> tuple[Any, dict]:
    """Returns (frozen base, its record) of a LoRA run's `step`: the base reloaded from the record, its fingerprint checked."""
    record = ckpts.base(step)
    where = f"{ckpts.directory / str(step)}"
    if record is None:
        raise MaxlmError(f"{where}: a LoRA run's step (lora.rank {cfg.lora.rank}) without its base record; it cannot be restored")
    _, frozen = lora.split(base_params(record, cfg, mesh))
    check_fingerprint(record["fingerprint"], fingerprint(frozen), where)
    return jax.jit(lambda f: lora.held_base(f, cfg.lora))(frozen), record


def restore_lora(ckpts: Checkpoints, step: int, cfg: Config, model: ModelConfig, mesh: Mesh) -> tuple[Any, Any]:
    """Returns (frozen base, trainable part) of a LoRA run's `step` (`model`: its shape, scalar head included)."""
    frozen, _ = reload_base(ckpts, step, cfg, mesh)
    _, shapes, _ = params_lib.abstract(model, cfg.lora)
    abstract = lora.trainable(abstract_like(shapes, params_lib.shardings(model, mesh, cfg.lora)))
    return frozen, ckpts.restore(step, abstract)["params"]


def base_step(stored: StoredStep) -> StoredStep:
    """Returns the stored step of the base a LoRA run's step was trained on (MaxlmError when it has none on disk)."""
    record = stored.checkpoints.base(stored.step)
    if record is None:
        raise MaxlmError(f"{stored.params_dir.parent}: a LoRA run's step without its base record")
    if not record["init_from"]:
        raise MaxlmError(f"{stored.run_dir}: a LoRA run on a seed's random init (no train.init_from) has no stored base to export onto")
    return _stored_base(record)


def _stored_base(record: dict) -> StoredStep:
    """Returns the stored step a base record names (MaxlmError when it is gone)."""
    path = Path(record["init_from"]) / str(record["step"])
    if not path.is_dir():
        raise MaxlmError(f"the LoRA base {path} is gone (step {record['step']} of {record['init_from']}); restore it to use these adapters")
    return StoredStep(path)


class MergedStep:
    """A LoRA run's stored step read as a plain one (export --merge): the base's leaves (a quantized base's projections
    dequantized), each target projection with its adapter's a @ b merged in, one layer at a time like StoredStep.read.

    The base may itself be a LoRA run (merged in turn); its fingerprint is checked on opening,
    reading it one layer slice at a time.
    """

    def __init__(self, stored: StoredStep):
        self.adapters = stored
        self.config, self.step, self.run_dir, self.params_dir = stored.config, stored.step, stored.run_dir, stored.params_dir
        base = base_step(stored)
        self.base = MergedStep(base) if base.config.lora.rank else base
        own = {k: v for k, v in stored.leaves.items() if not any(lora.is_adapter(p) for p in k.split("/"))}
        # The run's own scalar head (trained with the adapters) replaces the base's.
        self.leaves = {k: v for k, v in self.base.leaves.items() if k not in lora.TRAINED_HEADS} | own
        self.scale = self.config.lora.alpha / self.config.lora.rank
        # leaf -> (its stacked dims after L, its input dims), for the projections the run held quantized
        self.quantized = ({f"layers/{block}/{name}": dims for (block, name), dims in lora.HELD.items()}
                          if self.config.lora.base_dtype in quant.QUANTIZED else {})
        check_fingerprint(stored.checkpoints.base(stored.step)["fingerprint"], self._base_fingerprint(), str(self.params_dir.parent))

    def _base_fingerprint(self) -> dict[str, list]:
        out = {}
        for leaf in self.base.leaves:
            if leaf in lora.TRAINED_HEADS:
                continue
            shape = self.base.shape(leaf)
            rows = range(shape[0]) if leaf.startswith("layers/") else [None]
            s = q = 0.0
            for i in rows:
                x = self.base.read(leaf, i).astype(np.float64)
                s, q = s + float(x.sum()), q + float((x * x).sum())
            out[leaf] = [list(shape), self.base.dtype(leaf).name, s, q]
        return out

    def _source(self, leaf: str):
        return self.adapters if leaf in self.adapters.leaves else self.base

    def shape(self, leaf: str) -> tuple[int, ...]:
        """Returns the shape of `leaf` (a "/"-joined path)."""
        return self._source(leaf).shape(leaf)

    def dtype(self, leaf: str) -> np.dtype:
        """Returns the stored dtype of `leaf`."""
        return self._source(leaf).dtype(leaf)

    def read(self, leaf: str, layer: int | tuple[int, ...] | None = None) -> np.ndarray:
        """Returns `leaf` (or its row `layer`) with its adapter's update merged in, in the leaf's dtype; with lora.base_dtype
        int8 / nf4, a projection's update goes onto its dequantized base, the weights the adapters were trained with."""
        w = self._source(leaf).read(leaf, layer)
        # what `layer` picked (a layer, or a (layer, expert)) is no longer a stacked dim of w
        picked = 0 if layer is None else len(layer) if isinstance(layer, tuple) else 1
        if leaf in self.quantized:
            lead, n_in = self.quantized[leaf]
            w = np.asarray(lora.as_held(w, 1 + lead - picked, n_in, self.config.lora)).astype(w.dtype)
        if f"{leaf}{lora.SUFFIX}/a" not in self.adapters.leaves:
            return w
        a = self.adapters.read(f"{leaf}{lora.SUFFIX}/a", layer).astype(np.float32)
        b = self.adapters.read(f"{leaf}{lora.SUFFIX}/b", layer).astype(np.float32)
        stacked = 1 + lora.HELD[tuple(leaf.split("/")[1:])][0] - picked
        return (w.astype(np.float32) + np.asarray(lora.delta(a, b, self.scale, stacked))).astype(w.dtype)

    def tokenizer_path(self) -> Path | None:
        """Returns the run's tokenizer, else its base's."""
        return self.adapters.tokenizer_path() or self.base.tokenizer_path()
