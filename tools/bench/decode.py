"""Decode throughput: maxlm's KV-cache sampler against transformers' `generate`, and continuous batching on a mixed-length set.

    python tools/bench/decode.py --out decode.json                  # the issue's figures: both shapes, batches 1/8/32, 3 rounds, the mix
    python tools/bench/decode.py --rounds 1 --batches 1 --new-tokens 8 --mix-prompts 8   # a smoke run (seconds, no figures)
    python tools/bench/decode.py --model configs/models/llama3_1b.yaml --batches 16 --dtype bfloat16 --no-mix   # one GPU

Grid: for each shape (`quickstart`: configs/models/quickstart.yaml, vocab 4,096, prompt 32;
`llama3.9m`: a 3.9M-parameter Llama, hidden 256 = 8 heads x 32, 8 kv heads, 4 layers, MLP
576, vocab 2,048, prompt 64) and each batch, greedy decoding of `--new-tokens` (128) new
tokens with no stop. `--model PATH` replaces the two shapes with that config (`--prompt-len`,
`--vocab-size` when it sets none). transformers runs as its users run it: `generate` with
the attention mask, `use_cache=True`, `do_sample=False`, pad token set, torch threads = cores,
on the same random weights (maxlm's, exported through `maxlm.ckpt.hf`) and prompts. Rounds
interleave: each round times every case, maxlm then transformers (the other order in odd
rounds), so a drifting host load hits both alike; per case the JSON gives the median and best
round of each side, the speedups, `same_tokens_fraction`, and the first (compile / warm-up)
call apart.

Mix (`--mix-prompts` P, 64; `--mix-batch` rows, 8; on the first shape): prompts of random
lengths (half the prompt length to all of it) whose greedy answers end at stop ids picked after
one untimed run: per prompt, the id whose first occurrence is nearest a length drawn from
1..N (the JSON gives the ids and the length distribution). It times `generate_batched(..., batch_size=rows)`
(continuous batching, `maxlm.infer.slots`) against the one-batch-at-a-time path
(`maxlm.infer.sampler.sample` per `rows` prompts, which waits for each batch's longest answer),
checks that both give the same tokens (the command fails after printing the JSON if not), and
times transformers' `generate` in batches of `rows` with `eos_token_id` set as the peer.
Useful new tokens: each answer's tokens up to and including its stop.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from report import emit, machine  # tools/bench/report.py (beside this script)

from maxlm.ckpt.hf import export_hf
from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config, MeshConfig, ModelConfig, head_dim, load_config
from maxlm.infer import sampler
from maxlm.infer.generate import generate_batched, until_stop
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh

QUICKSTART = "configs/models/quickstart.yaml"
# The second shape: ~3.9M parameters (untied embeddings) at hidden 256 = 8 heads of 32.
LLAMA_3_9M = {"vocab_size": 2048, "hidden_size": 256, "num_layers": 4, "num_heads": 8, "num_kv_heads": 8, "head_dim": 32, "mlp_dim": 576}


@dataclasses.dataclass
class Shape:
    """One model of the grid: its config, prompt length, weights and transformers copy."""

    name: str
    cfg: ModelConfig
    prompt_len: int
    graphdef: object = None
    params: object = None
    hf: object = None


class Ids:
    """A stand-in tokenizer for `generate_batched`: pad id 0, ids decode as numbers (the bench never reads the text)."""

    pad_id = 0

    def decode(self, ids) -> str:
        """Returns the ids as space-separated numbers."""
        return " ".join(str(int(t)) for t in ids)


def shapes(a) -> list[Shape]:
    """Returns the grid's shapes: the two of the issue, or the one `--model` names."""
    fit = lambda cfg, t: dataclasses.replace(cfg, dtype=a.dtype, max_seq_len=max(cfg.max_seq_len, t + a.new_tokens))
    if a.model:
        cfg = load_config(a.model).model
        return [Shape(a.model, fit(dataclasses.replace(cfg, vocab_size=cfg.vocab_size or a.vocab_size), a.prompt_len), a.prompt_len)]
    quick = load_config(QUICKSTART).model
    return [Shape("quickstart", fit(dataclasses.replace(quick, vocab_size=quick.vocab_size or 4096), 32), 32),
            Shape("llama3.9m", fit(dataclasses.replace(quick, **LLAMA_3_9M), 64), 64)]


def load_transformers(cfg: ModelConfig, params, tmp: str, dtype: str):
    """Returns transformers' model of maxlm's `params`, exported to an HF dir under `tmp`."""
    import torch
    import transformers

    ckpts = Checkpoints(f"{tmp}/run", keep=1, async_save=False)
    base = Config()
    ckpts.save(0, params, Config(model=cfg, data=dataclasses.replace(base.data, seq_len=min(base.data.seq_len, cfg.max_seq_len))))
    ckpts.close()
    hf_dir = export_hf(f"{tmp}/run", f"{tmp}/hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
    return model.eval()


def hf_generate(model, prompts: list[list[int]], new_tokens: int, eos: list[int] | None) -> np.ndarray:
    """Returns int [B, new_tokens] from transformers' `generate`: left-padded prompts with their attention mask, greedy, KV cache."""
    import torch

    tokens, valid = sampler.left_pad(prompts, 0)
    out = model.generate(torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(valid).long(), max_new_tokens=new_tokens,
                         do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=eos)
    new = out[:, tokens.shape[1]:].numpy()
    # Stopped early (all rows at eos): the rest is padding, as maxlm fills it with the stop id.
    return np.pad(new, ((0, 0), (0, new_tokens - new.shape[1])), constant_values=eos[0] if eos else 0)


def timed(fn) -> tuple[float, object]:
    """Returns (seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def summary(seconds: list[float], tokens: int) -> dict:
    """Returns the median and best round of one side: seconds and new tokens per second."""
    med, best = statistics.median(seconds), min(seconds)
    return {"median_seconds": med, "best_seconds": best, "median_new_tokens_per_second": tokens / med,
            "best_new_tokens_per_second": tokens / best, "rounds_seconds": seconds}


def grid(shape_list: list[Shape], batches: list[int], a) -> list[dict]:
    """Returns one entry per (shape, batch): both sides' rounds, interleaved, with the first calls apart."""
    cases = []
    for s in shape_list:
        for b in batches:
            prompts = np.random.default_rng(b).integers(1, s.cfg.vocab_size, (b, s.prompt_len)).astype(np.int32)
            ours = lambda s=s, p=prompts: sampler.generate(s.graphdef, s.cfg, s.params, p, a.new_tokens)[:, -a.new_tokens:]
            theirs = (lambda s=s, p=prompts: hf_generate(s.hf, p.tolist(), a.new_tokens, None)) if s.hf is not None else None
            first_ours, tok_ours = timed(ours)
            case = {"shape": s.name, "batch": b, "prompt_len": s.prompt_len, "new_tokens": a.new_tokens,
                    "maxlm_first_call_seconds": first_ours, "_run": (ours, theirs), "_times": ([], [])}
            if theirs:
                case["transformers_first_call_seconds"], tok_theirs = timed(theirs)
                case["same_tokens_fraction"] = float(np.mean(tok_ours == tok_theirs))
            cases.append(case)
    for r in range(a.rounds):
        for case in cases:
            sides = [0, 1] if r % 2 == 0 else [1, 0]
            for i in sides:
                if case["_run"][i]:
                    case["_times"][i].append(timed(case["_run"][i])[0])
    for case in cases:
        run, (t_ours, t_theirs) = case.pop("_run"), case.pop("_times")
        n = case["batch"] * a.new_tokens
        case["maxlm"] = summary(t_ours, n)
        if run[1]:
            case["transformers"] = summary(t_theirs, n)
            case["speedup_median"] = statistics.median(t_theirs) / statistics.median(t_ours)
            case["speedup_best"] = min(t_theirs) / min(t_ours)
    return cases


def answer_lengths(new_PxN: np.ndarray, stops: list[int]) -> np.ndarray:
    """Returns each row's answer length: its tokens up to and including its first stop id (all of them when none occurs)."""
    hit = np.isin(new_PxN, stops)
    return np.where(hit.any(1), hit.argmax(1) + 1, new_PxN.shape[1])


def pick_stops(new_PxN: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Returns stop ids that end the rows at spread lengths: per row, the id whose first occurrence is nearest a length drawn from 1..N.

    A random model's greedy rows loop on tokens of their own, so no single id ends many rows;
    an id chosen for one row can still end another earlier (the lengths are measured after).
    """
    stops = []
    for row, target in zip(new_PxN, rng.integers(1, new_PxN.shape[1] + 1, len(new_PxN))):
        ids, first = np.unique(row, return_index=True)
        ok = ids != 0  # the pad id: transformers fills finished rows with it
        if ok.any():
            stops.append(int(ids[ok][np.argmin(np.abs(first[ok] + 1 - target))]))
    return sorted(set(stops))


def one_batch_at_a_time(s: Shape, prompts: list[list[int]], new_tokens: int, stops: list[int], rows: int, t: int) -> np.ndarray:
    """Returns int32 [P, new_tokens]: `sample` on `rows` prompts at a time (a short last batch filled), as generate_batched did."""
    parts = []
    for start in range(0, len(prompts), rows):
        part = prompts[start : start + rows]
        out, _ = sampler.sample(s.graphdef, s.cfg, s.params, part + [part[-1]] * (rows - len(part)), new_tokens,
                                stop_ids=stops, pad_id=0, pad_to=t)
        parts.append(out[: len(part), t:])
    return np.concatenate(parts)


def mix(s: Shape, a) -> dict:
    """Returns the continuous-batching section: answer lengths, the three sides' rounds, token identity and the gains."""
    rng = np.random.default_rng(1)
    t, rows, n = s.prompt_len, a.mix_batch, a.new_tokens
    prompts = [rng.integers(1, s.cfg.vocab_size, rng.integers(max(t // 2, 1), t + 1)).tolist() for _ in range(a.mix_prompts)]
    choose_seconds, free = timed(lambda: one_batch_at_a_time(s, prompts, n, [-1], rows, t))  # untimed: no stop, to choose them
    stops = pick_stops(free, rng)
    lengths = answer_lengths(free, stops)
    runs = {
        "maxlm_continuous": lambda: generate_batched(s.graphdef, s.cfg, s.params, Ids(), prompts, n, stop_ids=stops, batch_size=rows,
                                                     prompt_len=t).rows_NxTM[:, t:],
        "maxlm_one_batch_at_a_time": lambda: one_batch_at_a_time(s, prompts, n, stops, rows, t),
    }
    if s.hf is not None:
        runs["transformers"] = lambda: np.concatenate([hf_generate(s.hf, prompts[i : i + rows], n, stops) for i in range(0, len(prompts), rows)])
    first = {k: timed(f) for k, f in runs.items()}
    times = {k: [] for k in runs}
    for r in range(a.rounds):
        names = list(runs)[r % len(runs):] + list(runs)[: r % len(runs)]  # each side leads in turn
        for k in names:
            times[k].append(timed(runs[k])[0])
    useful = int(lengths.sum())
    ids = {k: [until_stop(row, stops) for row in out] for k, (_, out) in first.items()}
    batch_steps = sum(int(lengths[i : i + rows].max()) for i in range(0, len(prompts), rows))
    result = {
        "shape": s.name, "prompts": len(prompts), "batch_size": rows, "prompt_lens": [min(map(len, prompts)), t], "max_new_tokens": n,
        "stop_ids": stops, "answer_lengths": {"min": int(lengths.min()), "median": float(np.median(lengths)), "mean": float(lengths.mean()),
                                            "max": int(lengths.max()), "all": lengths.tolist()},
        "useful_new_tokens": useful, "one_batch_decode_steps": batch_steps, "ideal_gain": batch_steps * rows / useful,
        "identical_tokens": bool(np.array_equal(first["maxlm_continuous"][1], first["maxlm_one_batch_at_a_time"][1])),
        "first_call_seconds": {k: v[0] for k, v in first.items()},
        "stop_choice_run_seconds": choose_seconds,  # includes the one-batch path's compile
    }
    for k in runs:
        result[k] = summary(times[k], useful)
    result["gain_median"] = statistics.median(times["maxlm_one_batch_at_a_time"]) / statistics.median(times["maxlm_continuous"])
    result["gain_best"] = min(times["maxlm_one_batch_at_a_time"]) / min(times["maxlm_continuous"])
    if "transformers" in runs:
        result["same_answers_as_transformers_fraction"] = float(np.mean([x == y for x, y in zip(ids["maxlm_continuous"], ids["transformers"])]))
        result["speedup_vs_transformers_median"] = statistics.median(times["transformers"]) / statistics.median(times["maxlm_continuous"])
    return result


def parse() -> argparse.Namespace:
    """Returns the command line's options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="one model config instead of the two shapes")
    p.add_argument("--vocab-size", type=int, default=4096, help="with --model, when its config sets none")
    p.add_argument("--prompt-len", type=int, default=32, help="with --model")
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--batch", type=int, default=0, help="one batch size (overrides --batches)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--peer", default="transformers", choices=["transformers", "none"])
    p.add_argument("--mix-prompts", type=int, default=64)
    p.add_argument("--mix-batch", type=int, default=8)
    p.add_argument("--no-mix", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args()
    a.batches = [a.batch] if a.batch else [int(b) for b in a.batches.split(",")]
    if a.rounds < 1 or a.new_tokens < 1 or min(a.batches) < 1:
        p.error("--rounds, --new-tokens and every batch size must be >= 1")
    if not a.no_mix and a.mix_prompts <= a.mix_batch:
        p.error(f"--mix-prompts ({a.mix_prompts}) must exceed --mix-batch ({a.mix_batch}): only then does generate_batched stream")
    return a


def main() -> None:
    a = parse()
    shape_list = shapes(a)
    mesh = make_mesh(MeshConfig())
    result = {"benchmark": "decode", "dtype": a.dtype, "rounds": a.rounds, **machine()}
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(shape_list):
            s.graphdef, _, _ = params_lib.abstract(s.cfg)
            s.params = params_lib.init(s.cfg, mesh, 0)
            if a.peer == "transformers":
                s.hf = load_transformers(s.cfg, s.params, f"{tmp}/{i}", a.dtype)
    result["shapes"] = [{"name": s.name, **{k: getattr(s.cfg, k) for k in LLAMA_3_9M}, "head_dim": head_dim(s.cfg), "prompt_len": s.prompt_len,
                         "parameters": int(sum(x.size for x in jax.tree.leaves(s.params)))} for s in shape_list]
    if a.peer == "transformers":
        import torch
        import transformers

        torch.set_num_threads(os.cpu_count() or 1)
        result |= {"transformers": transformers.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    with jax.set_mesh(mesh):
        result["cases"] = grid(shape_list, a.batches, a)
        if not a.no_mix:
            result["mix"] = mix(shape_list[0], a)
    emit(result, a.out)
    if "mix" in result and not result["mix"]["identical_tokens"]:
        raise SystemExit("continuous batching and the one-batch-at-a-time path gave different tokens")


if __name__ == "__main__":
    main()
