"""A LoRA run exported as a PEFT adapter dir: `adapter_config.json` + `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained(base, OUT)` puts onto the base's Hugging Face model.

PEFT names a layer's adapter `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
[r, in] and `...lora_B.weight` [out, r] and scales their product by lora_alpha / r, as maxlm does:
maxlm's a [in..., r] is lora_A transposed, its b [r, out...] lora_B transposed.

An MoE's experts are parameters, not modules, in transformers 5 (`mlp.experts.gate_up_proj` [E, 2F, D], gate
rows then up, and `mlp.experts.down_proj` [E, D, F]); PEFT adapts them through `target_parameters`, one
lora_A [E·R, in] (expert e's rows e·R..e·R+R-1) and lora_B [out, R·E] (expert e's columns e, E+e, ...) per
parameter. A fused gate_up_proj takes R = n·r for the n of gate, up targeted: A stacks their a's, B is
block-diagonal, and rank_pattern / alpha_pattern keep its scale alpha / r.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from maxlm.ckpt.adapters import base_step
from maxlm.ckpt.hf_tokenizer import write_hf_tokenizer
from maxlm.ckpt.hf_weights import Entry, hf_shape, layer_name, layer_tensors, per_expert, to_hf, write_safetensors
from maxlm.ckpt.step import StoredStep
from maxlm.errors import MaxlmError
from maxlm.files import atomic
from maxlm.files.outputs import check_output_dir
from maxlm.models.lora import SUFFIX

ADAPTER_FILE = "adapter_model.safetensors"
# Which run wrote a PEFT export (PEFT's own config refuses keys it does not know).
RUN_FILE = "maxlm_export.json"


def _read(stored: StoredStep, leaf: str, i: int, layout) -> np.ndarray:
    return to_hf(stored.read(leaf, i), layout)


def _entry(stored: StoredStep, leaf: str, i: int, name: str, layout) -> Entry:
    """Returns the entry of HF tensor `name`: layer `i` of the stored adapter `leaf` in HF's layout."""
    shape = hf_shape(stored.shape(leaf)[1:], layout)
    return name, shape, stored.dtype(leaf).name, functools.partial(_read, stored, leaf, i, layout)


def adapter_entries(stored: StoredStep) -> tuple[list[Entry], list[str]]:
    """Returns (the PEFT tensors of a LoRA run's adapters, layer by layer, the HF module names they target)."""
    m, targets = stored.config.model, []
    entries = []
    for i in range(m.num_layers):
        for sub, (name, layout) in layer_tensors(m.family).items():
            a_leaf = f"layers/{sub}{SUFFIX}/a"
            if a_leaf not in stored.leaves or per_expert(name):
                continue
            module = name.removesuffix(".weight")
            prefix = f"base_model.model.{layer_name(i, module)}"
            entries.append(_entry(stored, a_leaf, i, f"{prefix}.lora_A.weight", layout))
            entries.append(_entry(stored, f"layers/{sub}{SUFFIX}/b", i, f"{prefix}.lora_B.weight", 1))
            if i == 0:
                targets.append(module.split(".")[-1])
        entries += expert_entries(stored, i)
    return entries, targets


# transformers 5's expert parameters: name -> the maxlm experts it stacks along its output rows
EXPERT_PARAMS = {"gate_up_proj": ("gate", "up"), "down_proj": ("down",)}


def expert_params(stored: StoredStep) -> dict[str, tuple[str, ...]]:
    """Returns {HF expert parameter: the maxlm experts of it the run adapted}, for those it adapted."""
    adapted = {n for n in ("gate", "up", "down") if f"layers/moe/{n}{SUFFIX}/a" in stored.leaves}
    return {p: tuple(n for n in subs if n in adapted) for p, subs in EXPERT_PARAMS.items() if adapted & set(subs)}


def _expert_lora(stored: StoredStep, i: int, param: str, which: str) -> np.ndarray:
    """Returns layer i's PEFT lora_A [E·R, in] or lora_B [out, R·E] (`which`) of expert parameter `param`."""
    adapted = expert_params(stored)[param]
    r = stored.config.lora.rank
    if which == "A":  # a [E, in, r] each: A[e] = the a_e's transposed, stacked
        a = np.concatenate([stored.read(f"layers/moe/{n}{SUFFIX}/a", i).transpose(0, 2, 1) for n in adapted], axis=1)
        return np.ascontiguousarray(a.reshape(-1, a.shape[-1]))
    blocks = [stored.read(f"layers/moe/{n}{SUFFIX}/b", i) for n in EXPERT_PARAMS[param] if n in adapted]  # b [E, r, out] each
    e, out = blocks[0].shape[0], blocks[0].shape[-1]
    b = np.zeros((e, out * len(EXPERT_PARAMS[param]), r * len(adapted)), blocks[0].dtype)
    for t, n in enumerate(adapted):
        row = EXPERT_PARAMS[param].index(n) * out
        b[:, row:row + out, t * r:(t + 1) * r] = blocks[t].transpose(0, 2, 1)
    return np.ascontiguousarray(b.transpose(1, 2, 0).reshape(b.shape[1], -1))


def expert_entries(stored: StoredStep, i: int) -> list[Entry]:
    """Returns layer i's PEFT tensors of its experts' adapters (none when the run adapted no expert)."""
    params = expert_params(stored)
    entries = []
    for param, adapted in params.items():
        a_shape = stored.shape(f"layers/moe/{adapted[0]}{SUFFIX}/a")[1:]  # [E, in, r]
        out = stored.shape(f"layers/moe/{adapted[0]}{SUFFIX}/b")[-1] * len(EXPERT_PARAMS[param])
        rows = a_shape[0] * a_shape[2] * len(adapted)  # E·R
        # PEFT wraps a module's second target parameter around its first: gate_up_proj's adapter is then the inner one
        module = layer_name(i, "mlp.experts" + (".base_layer" if param == "gate_up_proj" and len(params) == 2 else ""))
        dtype = stored.dtype(f"layers/moe/{adapted[0]}{SUFFIX}/a").name
        entries.append((f"base_model.model.{module}.lora_A.weight", (rows, a_shape[1]), dtype,
                        functools.partial(_expert_lora, stored, i, param, "A")))
        entries.append((f"base_model.model.{module}.lora_B.weight", (out, rows), dtype,
                        functools.partial(_expert_lora, stored, i, param, "B")))
    return entries


def export_peft(stored: StoredStep, out_dir: Path, overwrite: bool) -> Path:
    """Returns `out_dir`, a PEFT LoRA adapter dir (plus the run's tokenizer) written from a LoRA run's stored step."""
    cfg = stored.config
    if cfg.model.scalar_head:
        raise MaxlmError(f"{stored.run_dir}: a LoRA run with a scalar head (task {cfg.task}) trains the head too, which a PEFT "
                         "LoRA adapter does not hold; export it with --merge")
    check_output_dir(out_dir, "export-hf OUT", overwrite)
    base = base_step(stored)
    entries, targets = adapter_entries(stored)
    fused = {f"experts.{p}": len(adapted) for p, adapted in expert_params(stored).items()}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
        "target_modules": sorted(targets), "target_parameters": sorted(fused),
        "rank_pattern": {p: n * cfg.lora.rank for p, n in fused.items() if n > 1},
        "alpha_pattern": {p: n * cfg.lora.alpha for p, n in fused.items() if n > 1},
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
        # The base as maxlm knows it: its run (export that with `maxlm export-hf` for transformers).
        "base_model_name_or_path": str(base.run_dir),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        write_safetensors(tmp / ADAPTER_FILE, entries)
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / RUN_FILE).write_text(json.dumps({"maxlm_run": str(stored.run_dir.resolve()), "base_run": str(base.run_dir)}) + "\n")
        tok = stored.tokenizer_path() or base.tokenizer_path()
        if tok:
            write_hf_tokenizer(tok, tmp)
        atomic.replace_dir(tmp, out_dir, stale=())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
