"""Training throughput: maxlm against transformers + torch on the same Llama, batch and length.

    python tools/bench/train_step.py                       # quickstart model, CPU
    python tools/bench/train_step.py --model configs/models/llama3_1b.yaml --seq-len 4096 \
        --batch 4 --dtype bfloat16 --remat dots_no_batch --peer none     # one GPU

Prints one JSON object (and writes it to --out): tokens/s of each side, measured in the same
process one after the other, with the same random token batches, AdamW and clipping.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import numpy as np

from maxlm.config import MeshConfig, TrainConfig, load_config
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from maxlm.train import metrics, objectives, optim, steps


def batches(vocab: int, batch: int, seq: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Returns n random [batch, seq] int32 token arrays."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=(batch, seq), dtype=np.int32) for _ in range(n)]


def bench_maxlm(cfg, data, warmup: int) -> dict:
    """Returns timing of maxlm's jitted train step over `data`."""
    mesh = make_mesh(MeshConfig())
    tcfg = TrainConfig(steps=1000, warmup_steps=10)
    tx = optim.optimizer(tcfg)
    graphdef, _, _ = params_lib.abstract(cfg)
    params = params_lib.init(cfg, mesh, 0)
    opt_state = jax.jit(tx.init)(params)
    step = jax.jit(steps.train_step(objectives.language_model(graphdef, 0.0), tx, tcfg), donate_argnums=(0, 1))
    b, t = data[0].shape
    extra = {"segment_ids": np.ones((b, t), np.int32), "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)), "loss_mask": np.ones((b, t), np.float32)}
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        for i, tokens in enumerate(data):
            if i == warmup:
                jax.block_until_ready(params)
                t0 = time.perf_counter()
                compile_and_warmup = t0 - start if warmup else 0.0
            if i == 0:
                start = time.perf_counter()
            params, opt_state, m = step(params, opt_state, {"tokens": tokens, **extra})
        jax.block_until_ready(m["loss"])
    dt = time.perf_counter() - t0
    n = len(data) - warmup
    return {"tokens_per_second": n * b * t / dt, "seconds_per_step": dt / n, "final_loss": float(m["loss"]), "compile_and_warmup_s": compile_and_warmup}


def bench_torch(cfg, data, warmup: int, threads: int) -> dict:
    """Returns timing of transformers' LlamaForCausalLM + torch AdamW on `data`."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa",
    )
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    model = transformers.LlamaForCausalLM(hf_cfg).to(dtype)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    b, t = data[0].shape
    for i, tokens in enumerate(data):
        if i == warmup:
            t0 = time.perf_counter()
        x = torch.from_numpy(tokens).long()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    n = len(data) - warmup
    return {"tokens_per_second": n * b * t / dt, "seconds_per_step": dt / n, "final_loss": float(loss), "torch": torch.__version__, "transformers": transformers.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="configs/models/quickstart.yaml")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--remat", default="none")
    p.add_argument("--peer", default="transformers", choices=["transformers", "none"])
    p.add_argument("--out", default="")
    a = p.parse_args()
    cfg = load_config(a.model).model
    cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size or a.vocab_size, dtype=a.dtype, remat=a.remat, max_seq_len=max(cfg.max_seq_len, a.seq_len))
    data = batches(cfg.vocab_size, a.batch, a.seq_len, a.steps + a.warmup)
    result = {
        "benchmark": "train_step",
        "model": a.model, "params_millions": metrics.param_count(cfg) / 1e6, "batch": a.batch, "seq_len": a.seq_len, "dtype": a.dtype,
        "steps_timed": a.steps, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "host": f"{platform.machine()} {os.cpu_count()} cores", "jax": jax.__version__,
        "maxlm": bench_maxlm(cfg, data, a.warmup),
    }
    peak = metrics.peak_flops_per_device()
    if peak:
        result["maxlm"]["mfu"] = result["maxlm"]["tokens_per_second"] * metrics.train_flops_per_token(cfg, a.seq_len) / (peak * jax.device_count())
    if a.peer == "transformers":
        result["transformers"] = bench_torch(cfg, data, a.warmup, os.cpu_count() or 1)
        result["speedup_vs_transformers"] = result["maxlm"]["tokens_per_second"] / result["transformers"]["tokens_per_second"]
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
