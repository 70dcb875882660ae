"""`maxlm compile`: a run's train step compiled ahead of time for a TPU slice that is not here.

The step is the one `maxlm train` jits (train/step.py), on the mesh `maxlm train` would build over
the slice's devices, with the params, both AdamW moments, the step counter and the task's batch as
sharded ShapeDtypeStructs: nothing is read or allocated. libtpu's compiler gives per-chip memory
(does it fit?) and its cost model's FLOPs and step time.

`cost_analysis()` counts a loop body once, and the layer scan, the chunked LM head and gradient
accumulation are loops; so the cost comes from two more compiles, of the model unrolled with 1
and with 2 layers, one loss chunk and one microbatch, extrapolated linearly to L layers (exact for
identical layers) and times the microbatches. Where libtpu's cost model returns no step time
(v5e: a negative one), a roofline bound stands in: max(FLOPs / peak, HBM bytes / bandwidth),
communication left out.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

import jax

from maxlm.ckpt.manager import abstract_like
from maxlm.config import Config, head_dim
from maxlm.errors import MaxlmError
from maxlm.models import lora, splash
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from maxlm.parallel.topology import Slice, abstract_devices, parse_slice
from maxlm.tasks import TASKS
from maxlm.train import metrics as metrics_lib
from maxlm.train import state as state_lib
from maxlm.train import step as step_lib
from maxlm.train.setup import check_fits, with_task_head

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Cost:
    """One compile's cost model, per device: FLOPs, HBM bytes accessed, XLA's step time (<= 0: none)."""

    flops: float
    bytes_accessed: float
    seconds: float

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.flops - other.flops, self.bytes_accessed - other.bytes_accessed, self.seconds - other.seconds)

    def scaled(self, k: float) -> Cost:
        """Returns this cost times `k`."""
        return Cost(self.flops * k, self.bytes_accessed * k, self.seconds * k)

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes_accessed + other.bytes_accessed, self.seconds + other.seconds)


def prepare(cfg: Config) -> Config:
    """Returns cfg as `maxlm train` would run it (init_from's shape, the task's head), checked for a compile."""
    task = TASKS[cfg.task]
    cfg = with_task_head(state_lib.resolve_init_from(cfg))
    if cfg.model.vocab_size == 0:
        raise MaxlmError("model.vocab_size is 0 (taken from the tokenizer at train time): set it for a compile, "
                         "e.g. model.vocab_size=128256, or start from a model preset that sets it")
    task.check(cfg)
    return cfg


def lower(cfg: Config, mesh) -> jax.stages.Lowered:
    """Returns the run's train step lowered on abstract, sharded inputs: params, opt state, batch, reference, step args."""
    task = TASKS[cfg.task]
    check_fits(cfg, task, mesh)
    # A LoRA run: the base as lora.base_dtype holds it, optimizer state for the adapters only, the base as reference.
    lora_cfg = cfg.lora if cfg.lora.rank else None
    part = lora.trainable if lora_cfg else (lambda tree: tree)
    graphdef, shapes, _ = params_lib.abstract(cfg.model, lora_cfg)
    if lora_cfg and lora_cfg.base_dtype == "bfloat16":  # int8 / nf4 projections are in the abstract tree already
        trained, frozen = lora.split(shapes)
        shapes = lora.join(trained, jax.eval_shape(lambda f: lora.held_base(f, lora_cfg), frozen))
    p_shard = params_lib.shardings(cfg.model, mesh, lora_cfg)
    tx = step_lib.run_optimizer(cfg, task)
    # Outside the mesh: eval_shape runs the init's constants eagerly, and these devices run nothing.
    o_shard = state_lib.opt_shardings(tx, part(shapes), part(p_shard), mesh)
    params = abstract_like(shapes, p_shard)
    opt_state = abstract_like(jax.eval_shape(tx.init, part(shapes)), o_shard)
    batch, args = step_lib.abstract_batch(task, cfg, mesh)
    ref = params if task.needs_reference(cfg) and not lora_cfg else None
    step_fn, _ = step_lib.jitted_step(cfg, task, graphdef, tx, mesh, p_shard, o_shard, ref is not None)
    with jax.set_mesh(mesh):
        return step_fn.lower(params, opt_state, batch, ref, args)


def memory_bytes(compiled) -> int:
    """Returns the step's per-device memory: arguments + outputs + temporaries - what outputs alias (donated state)."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes


def _cost(compiled) -> Cost:
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list) else c
    return Cost(float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0)), float(c.get("optimal_seconds", -1.0)))


def _unrolled(cfg: Config, layers: int) -> Config:
    """Returns cfg with `layers` unrolled layers, one loss chunk and one microbatch: every loop of the step counted in full."""
    t = cfg.train
    rows = t.global_batch_size if TASKS[cfg.task].rollout_split else t.global_batch_size // t.grad_accum_steps
    model = dataclasses.replace(cfg.model, num_layers=layers, scan_layers=False)
    train = dataclasses.replace(t, loss_chunks=1, grad_accum_steps=1 if not TASKS[cfg.task].rollout_split else t.grad_accum_steps,
                                global_batch_size=rows)
    return dataclasses.replace(cfg, model=model, train=train)


def step_cost(cfg: Config, mesh) -> Cost:
    """Returns the whole step's per-device cost: the 1- and 2-layer unrolled compiles extrapolated to model.num_layers."""
    costs = []
    for n in (1, 2):
        try:
            costs.append(_cost(lower(_unrolled(cfg, n), mesh).compile()))
        except Exception as e:  # XlaRuntimeError
            if _exhausted(e) is None:
                raise
            # One loss chunk holds a row's whole [T, V] logits: a 16 GiB chip may fit the step but not this.
            raise MaxlmError(f"the step fits, but its {n}-layer cost compile (unrolled, one loss chunk, one microbatch) "
                             "runs out of HBM on this chip; pass --memory-only for the memory figures alone") from None
    one, two = costs
    per_layer = two - one
    micro = 1 if TASKS[cfg.task].rollout_split else cfg.train.grad_accum_steps
    return (one + per_layer.scaled(cfg.model.num_layers - 1)).scaled(micro)


_SIZE = r"([\d.]+)([KMGT])?"
# libtpu words it two ways: "Used 358.17G of 15.75G hbm." and "the total memory required for HLO
# temporaries (50.65G) exceeds available HBM (15.75G)" (then the arguments come on top).
_OUT_OF_HBM = (re.compile(rf"Used {_SIZE} of {_SIZE} hbm"), re.compile(rf"temporaries \({_SIZE}\) exceeds available HBM \({_SIZE}\)"))


def _exhausted(e: Exception) -> tuple[float, str] | None:
    """Returns (bytes needed, what they count) from libtpu's out-of-HBM compile error, or None for another error."""
    unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, None: 1}
    for pattern, what in zip(_OUT_OF_HBM, ("", " in temporaries alone")):
        m = pattern.search(str(e))
        if m:
            return float(m.group(1)) * unit[m.group(2)], what
    return None


def knobs(cfg: Config) -> list[str]:
    """Returns the overrides that lower the step's memory per chip, for the message of a step that does not fit."""
    out = []
    if cfg.model.remat != "full":
        out.append("model.remat=full" if cfg.model.remat != "none" else "model.remat=dots_no_batch (or full)")
    t = cfg.train
    if t.global_batch_size % (2 * t.grad_accum_steps) == 0:
        out.append(f"train.grad_accum_steps={2 * t.grad_accum_steps}")
    if not TASKS[cfg.task].rollout_split and cfg.data.seq_len % (2 * t.loss_chunks) == 0:
        out.append(f"train.loss_chunks={2 * t.loss_chunks}")
    if cfg.model.param_dtype == "float32":
        out.append("model.param_dtype=bfloat16")
    return out + ["a larger slice"]


def _not_fitting(cfg: Config, s: Slice, used: float, what: str = "") -> MaxlmError:
    hbm = s.generation.hbm_gib * GIB
    return MaxlmError(f"the step needs {used / GIB:.1f} GiB per chip{what} on {s.name} ({s.generation.hbm_gib:g} GiB HBM): "
                      f"{(used - hbm) / GIB:.1f} GiB short; try {', '.join(knobs(cfg))}")


def compile_step(cfg: Config, topology: str, slices: int = 1, cost: bool = True, log=lambda line: None) -> dict[str, Any]:
    """Returns the report of the run's step compiled for `slices` x the slice `topology` (see the module docstring);
    MaxlmError when it does not fit, naming how much is missing and which knobs would help."""
    s = parse_slice(topology)
    cfg = prepare(cfg)
    devices = abstract_devices(s, slices)
    mesh = make_mesh(cfg.mesh, devices)
    t0 = time.perf_counter()
    try:
        compiled = lower(cfg, mesh).compile()
    except Exception as e:  # XlaRuntimeError; only libtpu's out-of-memory becomes a one-liner
        exhausted = _exhausted(e)
        if exhausted is None:
            raise
        raise _not_fitting(cfg, s, *exhausted) from None
    used = memory_bytes(compiled)
    log(f"{s.name}: the step compiled in {time.perf_counter() - t0:.0f} s, {used / GIB:.2f} GiB per chip")
    report = {
        "topology": s.name + (f" x{slices}" if slices > 1 else ""), "libtpu_topology": s.topology, "devices": len(devices),
        "device_kind": devices[0].device_kind, "mesh": dict(mesh.shape), "memory_gib": round(used / GIB, 2),
        "hbm_gib": s.generation.hbm_gib, "fits": used <= s.generation.hbm_gib * GIB,
    }
    if not report["fits"]:
        raise _not_fitting(cfg, s, used)
    if cost:
        log("estimating its cost from 1- and 2-layer unrolled compiles ...")
        report |= estimate(cfg, s, mesh)
    return report | {"compile_seconds": round(time.perf_counter() - t0, 1)}


def kernel_flops(cfg: Config, shape: tuple[int, ...]) -> float:
    """Returns the FLOPs of the step's splash kernels over the slice, which XLA's cost model cannot see into.

    Per row and layer, 2·T·S·N·H a pass over the keys a query sees (S: (T + 1) / 2 causal, at most the
    window on sliding layers): 2 passes forward, 5 backward (scores again, dP, dV, dQ, dK), 2 more when
    remat recomputes the forward.
    """
    m = cfg.model
    length, rows = shape[-1], math.prod(shape[:-1])
    if m.attention != "splash" or not splash.supported(length):
        return 0.0
    causal = (length + 1) / 2
    local = m.num_layers - m.num_layers // m.global_every if m.sliding_window and m.global_every else (m.num_layers if m.sliding_window else 0)
    keys = (m.num_layers - local) * causal + local * min(causal, m.sliding_window)
    passes = 7 + (2 if m.remat != "none" else 0)
    return passes * 2.0 * length * keys * m.num_heads * head_dim(m) * rows


def estimate(cfg: Config, s: Slice, mesh) -> dict[str, Any]:
    """Returns the step's FLOPs, estimated seconds and MFU (model FLOPs: metrics.train_flops_per_token x tokens)."""
    c = step_cost(cfg, mesh)
    chips = math.prod(mesh.shape.values())
    peak = metrics_lib.peak_flops(s.generation.device_kind)
    roofline = max(c.flops / peak, c.bytes_accessed / s.generation.hbm_bytes_per_second)
    seconds, source = (c.seconds, "xla optimal_seconds") if c.seconds > 0 else (roofline, "roofline: max(flops/peak, HBM bytes/bandwidth), no communication")
    shape, _ = TASKS[cfg.task].batch_layout(cfg)["tokens"]
    model_flops = metrics_lib.train_flops_per_token(cfg.model, shape[-1]) * math.prod(shape)
    kernels = kernel_flops(cfg, shape)
    if kernels:  # at the chip's peak: a lower bound on their time, so the MFU below is an upper bound
        seconds += kernels / chips / peak
        source += " + splash kernels' FLOPs at the bf16 peak (opaque to XLA's cost model)"
    return {
        "flops_per_step": c.flops * chips + kernels,  # XLA's count over the slice (rematerialized work included)
        "model_flops_per_step": model_flops,
        "estimated_step_seconds": float(f"{seconds:.4g}"), "estimate": source,
        "estimated_mfu": round(model_flops / (chips * peak * seconds), 3),
        "mfu_peak": f"{s.generation.device_kind}: {peak / 1e12:g} TFLOP/s bf16 per chip",
    }


# --search: remat policies from the least recomputation to the most, and loss chunkings from the fewest;
# the first pair that fits a mesh split is taken as that split's fastest.
REMAT_ORDER = ("none", "dots", "dots_no_batch", "full")


def _set(cfg: Config, key: str, value) -> Config:
    """Returns cfg with the dotted `key` (e.g. "mesh.tensor") set to `value`."""
    section, name = key.split(".")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})


def search_space(cfg: Config, chips: int, slices: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Returns (mesh splits: data over the slices, tensor up to 8 dividing the heads, fsdp the rest;
    memory settings in the order tried: remat policies x loss chunkings that divide the length)."""
    tensors = [t for t in (1, 2, 4, 8) if chips % (t * slices) == 0 and cfg.model.num_heads % t == 0]
    meshes = [{"mesh.data": slices, "mesh.fsdp": -1, "mesh.tensor": t} for t in tensors]
    c = cfg.train.loss_chunks
    lm = not TASKS[cfg.task].rollout_split
    chunks = sorted({n for n in (c, 4 * c, 16 * c) if cfg.data.seq_len % n == 0}) if lm else [c]
    return meshes, [{"model.remat": r, "train.loss_chunks": n} for r in REMAT_ORDER for n in chunks]


def search(cfg: Config, topology: str, slices: int = 1, log=print) -> list[dict[str, Any]]:
    """Returns the fitting candidates' reports, fastest first, each with its `overrides` (["k=v", ...]); MaxlmError when none fits."""
    s = parse_slice(topology)
    meshes, memory = search_space(prepare(cfg), s.chips * slices, slices)
    found = []
    for split in meshes:
        for setting in memory:
            keys = split | setting
            trial = cfg
            for k, v in keys.items():
                trial = _set(trial, k, v)
            overrides = [f"{k}={v}" for k, v in keys.items()]
            try:
                report = compile_step(trial, topology, slices)
            except MaxlmError as e:
                log(f"{' '.join(overrides)}: {e}")
                continue
            log(f"{' '.join(overrides)}: {report['memory_gib']} GiB, {report['estimated_step_seconds']} s, mfu {report['estimated_mfu']}")
            found.append(report | {"overrides": overrides})
            break
    if not found:
        raise MaxlmError(f"no mesh split, remat policy or loss chunking tried fits {topology}; try "
                         + ", ".join(k for k in knobs(cfg) if not k.startswith(("model.remat", "train.loss_chunks"))))
    return sorted(found, key=lambda r: r["estimated_step_seconds"])
