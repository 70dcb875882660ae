"""Training throughput: maxlm against transformers + torch on the same Llama, batch and length.

    python tools/bench/train_step.py                       # quickstart model, CPU
    python tools/bench/train_step.py --model configs/models/llama3_1b.yaml --seq-len 4096 \
        --batch 4 --dtype bfloat16 --remat dots_no_batch --peer none     # one GPU

Prints one JSON object (and writes it to --out): tokens/s of each side (median round), measured
in the same process in alternating rounds, with the same random token batches, AdamW and clipping.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np

from maxlm.config import MeshConfig, TrainConfig, load_config
from maxlm.models import params as params_lib
from maxlm.optim import optimizer as optim
from maxlm.optim.update import train_step
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks.lm import language_model
from maxlm.train import metrics
from report import emit, machine  # tools/bench/report.py (scripts: their folder is on sys.path)


def batches(vocab: int, batch: int, seq: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """Returns n random [batch, seq] int32 token arrays."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=(batch, seq), dtype=np.int32) for _ in range(n)]


def maxlm_runner(cfg, train_cfg: TrainConfig):
    """Returns (step(tokens) -> loss array, sync(loss) -> float) for maxlm's jitted train step."""
    mesh = make_mesh(MeshConfig())
    tx = optim.optimizer(train_cfg)
    graphdef, _, _ = params_lib.abstract(cfg)
    state = {"params": params_lib.init(cfg, mesh, 0)}
    state["opt"] = jax.jit(tx.init)(state["params"])
    objective = language_model(graphdef, train_cfg.z_loss, train_cfg.loss_chunks)
    step_fn = jax.jit(train_step(objective, tx, train_cfg), donate_argnums=(0, 1))

    def batch(tokens):
        b, t = tokens.shape
        return {"tokens": tokens, "segment_ids": np.ones((b, t), np.int32), "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)), "loss_mask": np.ones((b, t), np.float32)}

    def step(tokens):
        with jax.set_mesh(mesh):
            state["params"], state["opt"], m = step_fn(state["params"], state["opt"], batch(tokens))
        return m["loss"]

    def temp_mib(tokens) -> float:
        """Returns the compiled step's scratch memory (activations, logits, gradients in flight), MiB."""
        with jax.set_mesh(mesh):
            compiled = step_fn.lower(state["params"], state["opt"], batch(tokens)).compile()
        return compiled.memory_analysis().temp_size_in_bytes / 2**20

    step.temp_mib = temp_mib
    return step, lambda loss: float(jax.block_until_ready(loss))


def torch_runner(cfg, threads: int):
    """Returns (step(tokens) -> loss tensor, sync(loss) -> float) for transformers' LlamaForCausalLM + torch AdamW."""
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

    def step(tokens):
        x = torch.from_numpy(tokens).long()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, float


def interleaved(runners: dict, data: list[np.ndarray], warmup: int, rounds: int) -> dict:
    """Returns per-runner timings: after `warmup` steps each, `rounds` rounds that run every runner's share of `data` in turn.

    Interleaving puts each side under the same machine load: on a shared host the load drifts
    over a minute, more than the difference being measured.
    """
    b, t = data[0].shape
    out = {}
    for name, (step, sync) in runners.items():
        t0 = time.perf_counter()
        for tokens in data[:warmup]:
            loss = step(tokens)
        sync(loss)
        out[name] = {"compile_and_warmup_s": time.perf_counter() - t0, "round_seconds": []}
    per_round = (len(data) - warmup) // rounds
    for r in range(rounds):
        chunk = data[warmup + r * per_round: warmup + (r + 1) * per_round]
        for name, (step, sync) in runners.items():
            t0 = time.perf_counter()
            for tokens in chunk:
                loss = step(tokens)
            out[name]["final_loss"] = sync(loss)
            out[name]["round_seconds"].append(time.perf_counter() - t0)
    for res in out.values():
        per_step = float(np.median(res["round_seconds"])) / per_round
        res.update(seconds_per_step=per_step, tokens_per_second=b * t / per_step, best_tokens_per_second=b * t * per_round / min(res["round_seconds"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="configs/models/quickstart.yaml")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=24, help="timed steps per side, split over --rounds")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--remat", default="", help="override the model preset's remat policy")
    p.add_argument("--loss-chunks", type=int, default=TrainConfig.loss_chunks)
    p.add_argument("--peer", default="transformers", choices=["transformers", "none"])
    p.add_argument("--out", default="")
    a = p.parse_args()
    cfg = load_config(a.model).model
    cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size or a.vocab_size, dtype=a.dtype, remat=a.remat or cfg.remat, max_seq_len=max(cfg.max_seq_len, a.seq_len))
    data = batches(cfg.vocab_size, a.batch, a.seq_len, a.steps + a.warmup)
    result = {
        "benchmark": "train_step",
        "model": a.model, "params_millions": metrics.param_count(cfg) / 1e6, "batch": a.batch, "seq_len": a.seq_len, "dtype": a.dtype,
        "remat": cfg.remat, "loss_chunks": a.loss_chunks, "steps_timed": a.steps, "rounds": a.rounds,
        **machine(),
    }
    runners = {"maxlm": maxlm_runner(cfg, TrainConfig(steps=1000, warmup_steps=10, loss_chunks=a.loss_chunks))}
    if a.peer == "transformers":
        runners["transformers"] = torch_runner(cfg, os.cpu_count() or 1)
    result.update(interleaved(runners, data, a.warmup, a.rounds))
    result["maxlm"]["compiled_temp_mib"] = runners["maxlm"][0].temp_mib(data[0])
    peak = metrics.peak_flops_per_device()
    if peak:
        result["maxlm"]["mfu"] = result["maxlm"]["tokens_per_second"] * metrics.train_flops_per_token(cfg, a.seq_len) / (peak * jax.device_count())
    if a.peer == "transformers":
        import torch
        import transformers

        result["transformers"].update(torch=torch.__version__, transformers=transformers.__version__)
        result["speedup_vs_transformers"] = result["maxlm"]["tokens_per_second"] / result["transformers"]["tokens_per_second"]
    emit(result, a.out)


if __name__ == "__main__":
    main()
