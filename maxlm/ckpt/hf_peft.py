"""A LoRA run exported as a PEFT adapter dir: `adapter_config.json` + `adapter_model.safetensors`, which
`peft.PeftModel.from_pretrained(base, OUT)` puts onto the base's Hugging Face model.

PEFT names a layer's adapter `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`
[r, in] and `...lora_B.weight` [out, r] and scales their product by lora_alpha / r, as maxlm does:
maxlm's a [in..., r] is lora_A transposed, its b [r, out...] lora_B transposed.
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
from maxlm.ckpt.hf_weights import Entry, hf_shape, layer_name, layer_tensors, to_hf, write_safetensors
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
            if a_leaf not in stored.leaves:
                continue
            module = name.removesuffix(".weight")
            prefix = f"base_model.model.{layer_name(i, module)}"
            entries.append(_entry(stored, a_leaf, i, f"{prefix}.lora_A.weight", layout))
            entries.append(_entry(stored, f"layers/{sub}{SUFFIX}/b", i, f"{prefix}.lora_B.weight", 1))
            if i == 0:
                targets.append(module.split(".")[-1])
    return entries, targets


def export_peft(stored: StoredStep, out_dir: Path, overwrite: bool) -> Path:
    """Returns `out_dir`, a PEFT LoRA adapter dir (plus the run's tokenizer) written from a LoRA run's stored step."""
    cfg = stored.config
    if cfg.model.scalar_head:
        raise MaxlmError(f"{stored.run_dir}: a LoRA run with a scalar head (task {cfg.task}) trains the head too, which a PEFT "
                         "LoRA adapter does not hold; export it with --merge")
    check_output_dir(out_dir, "export-hf OUT", overwrite)
    base = base_step(stored)
    entries, targets = adapter_entries(stored)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
        "target_modules": sorted(targets), "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
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
