"""Decode throughput: maxlm's KV-cache sampler against transformers' `generate` on the same Llama.

    python tools/bench/decode.py                                  # quickstart shapes, CPU
    python tools/bench/decode.py --model configs/models/llama3_1b.yaml --batch 16 --dtype bfloat16   # one GPU

Both sides get the same random f32 weights (maxlm's, exported through `maxlm.ckpt.hf`), the same
prompts, greedy decoding and a fixed number of new tokens (no stop token); the JSON reports
new tokens per second for each, measured in one process one after the other, and whether the
two produced the same tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import jax
import numpy as np

from maxlm.config import Config, MeshConfig, load_config
from maxlm.infer.sampler import generate
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from report import emit, machine  # tools/bench/report.py (scripts: their folder is on sys.path)


def bench_maxlm(cfg, params, graphdef, prompts, new_tokens: int, repeats: int) -> tuple[dict, np.ndarray]:
    """Returns (timing, generated tokens) of the jitted sampler; the first call (compile) is excluded."""
    out = generate(graphdef, cfg, params, prompts, new_tokens)  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = generate(graphdef, cfg, params, prompts, new_tokens)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"new_tokens_per_second": len(prompts) * new_tokens / best, "seconds": best}, out[:, -new_tokens:]


def bench_transformers(hf_dir: str, prompts: np.ndarray, new_tokens: int, repeats: int, dtype: str) -> tuple[dict, np.ndarray]:
    """Returns (timing, generated tokens) of transformers' generate with its KV cache, greedy."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
    model.eval()
    x = torch.from_numpy(prompts).long()
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(x, **kw)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(x, **kw)
            times.append(time.perf_counter() - t0)
    best = min(times)
    return {"new_tokens_per_second": len(prompts) * new_tokens / best, "seconds": best, "transformers": transformers.__version__,
            "torch": torch.__version__}, out[:, -new_tokens:].numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="configs/models/quickstart.yaml")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--peer", default="transformers", choices=["transformers", "none"])
    p.add_argument("--out", default="")
    a = p.parse_args()
    cfg = load_config(a.model).model
    cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size or a.vocab_size, dtype=a.dtype, max_seq_len=max(cfg.max_seq_len, a.prompt_len + a.new_tokens))
    mesh = make_mesh(MeshConfig())
    graphdef, _, _ = params_lib.abstract(cfg)
    params = params_lib.init(cfg, mesh, 0)
    prompts = np.random.default_rng(0).integers(1, cfg.vocab_size, (a.batch, a.prompt_len)).astype(np.int32)
    result = {
        "benchmark": "decode", "model": a.model, "batch": a.batch, "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "dtype": a.dtype,
        **machine(),
    }
    with jax.set_mesh(mesh):
        result["maxlm"], ours = bench_maxlm(cfg, params, graphdef, prompts, a.new_tokens, a.repeats)
    if a.peer == "transformers":
        from maxlm.ckpt.manager import Checkpoints

        with tempfile.TemporaryDirectory() as tmp:
            ckpts = Checkpoints(f"{tmp}/run", keep=1, async_save=False)
            ckpts.save(0, params, Config(model=cfg))
            ckpts.close()
            from maxlm.ckpt.hf import export_hf

            hf_dir = export_hf(f"{tmp}/run", f"{tmp}/hf")
            result["transformers"], theirs = bench_transformers(str(hf_dir), prompts, a.new_tokens, a.repeats, a.dtype)
        result["speedup_vs_transformers"] = result["maxlm"]["new_tokens_per_second"] / result["transformers"]["new_tokens_per_second"]
        result["same_tokens_fraction"] = float(np.mean(ours == theirs))
    emit(result, a.out)


if __name__ == "__main__":
    main()
