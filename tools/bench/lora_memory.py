"""Memory of LoRA against full fine-tuning: params, gradients and AdamW state by their byte sizes, and the
compiled train step's own accounting (XLA's memory_analysis: arguments and scratch), for one model shape.

    python tools/bench/lora_memory.py --nf4-block 32                   # configs/sft_lora_hh.yaml's model, compiled on CPU
    python tools/bench/lora_memory.py --model configs/models/llama3_8b.yaml --vocab 128256 --no-compile

Nothing is allocated: shapes come from the model's abstract params, the step is only compiled. Prints one
JSON object (and writes it to --out). Variants: full (every weight trains), lora (base in model.param_dtype),
lora_bf16 (base cast to bfloat16), qlora_int8 (projections int8 + per-channel scales), qlora_nf4 (projections
nf4 + an f32 absmax per --nf4-block inputs; the small model's mlp_dim 352 takes blocks of 32, not 64).
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.config import Inconsistent, LoraConfig, MeshConfig, TrainConfig, check_quantized_base, load_config
from maxlm.models import lora
from maxlm.models import params as params_lib
from maxlm.optim import optimizer as optim
from maxlm.optim.update import train_step
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks.lm import language_model
from report import emit, machine  # tools/bench/report.py (scripts: their folder is on sys.path)

VARIANTS = {"lora": "param_dtype", "lora_bf16": "bfloat16", "qlora_int8": "int8", "qlora_nf4": "nf4"}


def nbytes(tree) -> int:
    """Returns the bytes of a tree of arrays or ShapeDtypeStructs."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def shapes(model, lora_cfg: LoraConfig | None) -> tuple[dict, dict]:
    """Returns (trainable, frozen as held) ShapeDtypeStructs; full fine-tuning: (everything, {})."""
    _, params, _ = params_lib.abstract(model, lora_cfg)
    if lora_cfg is None:
        return params, {}
    trainable = lora.split(params)[0]
    float_frozen = lora.split(params_lib.abstract(model, dataclasses.replace(lora_cfg, base_dtype="param_dtype"))[1])[1]
    return trainable, jax.eval_shape(lambda f: lora.held_base(f, lora_cfg), float_frozen)


def compiled_bytes(model, lora_cfg: LoraConfig | None, tx, tcfg: TrainConfig, batch: int, seq: int) -> dict:
    """Returns the compiled train step's argument and scratch bytes (XLA memory_analysis)."""
    graphdef, _, _ = params_lib.abstract(model, lora_cfg)
    trainable, frozen = shapes(model, lora_cfg)
    params = lora.join(trainable, frozen)
    opt = jax.eval_shape(tx.init, trainable)
    tok = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    data = {"tokens": tok, "segment_ids": tok, "positions": tok, "loss_mask": jax.ShapeDtypeStruct((batch, seq), jnp.float32)}
    step = train_step(language_model(graphdef, tcfg.z_loss, tcfg.loss_chunks), tx, tcfg, frozen_base=lora_cfg is not None)
    with jax.set_mesh(make_mesh(MeshConfig(data=1, fsdp=1))):
        m = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt, data).compile().memory_analysis()
    return {"argument_bytes": int(m.argument_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/sft_lora_hh.yaml", help="a LoRA config: its model (unless --model), lora and batch")
    ap.add_argument("--model", default="configs/models/chat_small.yaml", help="a model preset (the config's base shape by default)")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="also compile each step for XLA's accounting")
    ap.add_argument("--batch", type=int, default=0, help="rows of the compiled step (default: the config's global batch)")
    ap.add_argument("--nf4-block", type=int, default=64, help="lora.nf4_block of the qlora_nf4 variant")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    cfg = load_config(args.config)
    model = dataclasses.replace(load_config(args.model).model, vocab_size=args.vocab, dtype=cfg.model.dtype)
    tx = optim.optimizer(cfg.train)
    lora_base = dataclasses.replace(cfg.lora, nf4_block=args.nf4_block)
    try:
        check_quantized_base(dataclasses.replace(cfg, model=model, lora=dataclasses.replace(lora_base, base_dtype="nf4")))
    except Inconsistent as e:
        ap.error(f"--nf4-block {args.nf4_block}: {e}")
    result = {"machine": machine(), "model": args.model, "vocab": args.vocab, "lora": dataclasses.asdict(lora_base), "variants": {}}
    for name, base_dtype in {"full": None, **VARIANTS}.items():
        lora_cfg = None if base_dtype is None else dataclasses.replace(lora_base, base_dtype=base_dtype)
        trainable, frozen = shapes(model, lora_cfg)
        row = {
            "trainable_params": lora.count(trainable), "frozen_params": lora.count(frozen),
            "base_bytes": nbytes(frozen) if frozen else nbytes(trainable), "trainable_bytes": nbytes(trainable),
            "grad_bytes": nbytes(trainable), "opt_state_bytes": nbytes(jax.eval_shape(tx.init, trainable)),
        }
        row["state_bytes"] = nbytes(frozen) + row["trainable_bytes"] + row["grad_bytes"] + row["opt_state_bytes"]
        if args.compile:
            row["compiled"] = compiled_bytes(model, lora_cfg, tx, cfg.train, args.batch or cfg.train.global_batch_size, cfg.data.seq_len)
        result["variants"][name] = row
    full = result["variants"]["full"]["state_bytes"]
    result["saved_vs_full"] = {k: round(1 - v["state_bytes"] / full, 4) for k, v in result["variants"].items() if k != "full"}
    emit(result, args.out)


if __name__ == "__main__":
    main()
