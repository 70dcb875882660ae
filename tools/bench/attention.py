"""Attention forward and forward + backward: maxlm's block-causal path, jax's XLA path and torch SDPA.

    python tools/bench/attention.py                      # the quickstart's shapes, CPU
    python tools/bench/attention.py --seq-len 1024 --batch 2

The three run on the same random inputs (packed as one causal segment a row) in alternating
rounds; the JSON holds each one's median milliseconds and its largest gradient difference from
jax.nn.dot_product_attention. The backward pass runs under remat `dots`, as in training.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.models.block_causal import block_causal_attention, block_count
from maxlm.models.llama import causal_segment_mask
from report import emit, machine  # tools/bench/report.py (scripts: their folder is on sys.path)


def timed(fn, args, calls: int) -> float:
    """Returns milliseconds a call of fn(*args), averaged over `calls` (results waited for)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / calls * 1000


def jax_side(attend, mask):
    """Returns (forward, forward+backward) jitted functions of (q, k, v) for one attention function."""
    fwd = jax.jit(lambda q, k, v: attend(q, k, v, mask))
    policy = jax.checkpoint_policies.checkpoint_dots
    loss = jax.checkpoint(lambda q, k, v: jnp.sum(attend(q, k, v, mask)), policy=policy)
    return fwd, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def torch_side(q, k, v, threads: int):
    """Returns (forward, forward+backward) closures over torch SDPA (causal, grouped kv heads)."""
    import torch

    torch.set_num_threads(threads)
    tq, tk, tv = (torch.from_numpy(np.array(x)).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fwd():
        with torch.no_grad():
            return sdpa(tq, tk, tv, is_causal=True, enable_gqa=True)

    def fwd_bwd():
        for t in (tq, tk, tv):  # fresh gradients each call, as jax's side returns them (no accumulation)
            t.grad = None
        sdpa(tq, tk, tv, is_causal=True, enable_gqa=True).sum().backward()
        return tq.grad

    return fwd, fwd_bwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--peer", default="torch", choices=["torch", "none"])
    p.add_argument("--out", default="")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((a.batch, a.seq_len, a.heads, a.head_dim), np.float32))
    k, v = (jnp.asarray(rng.standard_normal((a.batch, a.seq_len, a.kv_heads, a.head_dim), np.float32)) for _ in range(2))
    mask = causal_segment_mask(jnp.ones((a.batch, a.seq_len), jnp.int32))

    def xla(q, k, v, mask):
        return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")

    sides = {"maxlm_block_causal": jax_side(block_causal_attention, mask), "jax_xla": jax_side(xla, mask)}
    ref = sides["jax_xla"][1](q, k, v)
    result = {
        "benchmark": "attention", "batch": a.batch, "seq_len": a.seq_len, "heads": a.heads, "kv_heads": a.kv_heads,
        "head_dim": a.head_dim, "blocks": block_count(a.seq_len), **machine(),
        "max_grad_diff_vs_jax_xla": max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(sides["maxlm_block_causal"][1](q, k, v), ref)),
    }
    runs = {name: (lambda f=f: f(q, k, v), lambda g=g: g(q, k, v)) for name, (f, g) in sides.items()}
    if a.peer == "torch":
        import torch

        runs["torch_sdpa"] = torch_side(q, k, v, os.cpu_count() or 1)
        result["torch"] = torch.__version__
    times = {name: {"forward_ms": [], "forward_backward_ms": []} for name in runs}
    for fwd, fwd_bwd in runs.values():  # compile and warm up
        jax.block_until_ready(fwd_bwd())
        jax.block_until_ready(fwd())
    for _ in range(a.rounds):
        for name, (fwd, fwd_bwd) in runs.items():
            times[name]["forward_ms"].append(timed(fwd, (), a.calls))
            times[name]["forward_backward_ms"].append(timed(fwd_bwd, (), a.calls))
    for name, t in times.items():
        result[name] = {key: float(np.median(ms)) for key, ms in t.items()}
    emit(result, a.out)


if __name__ == "__main__":
    main()
