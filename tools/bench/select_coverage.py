"""Benchmark: how well greedy k-center covers an SFT pool's embedding space, against random picks.

    python tools/bench/select_coverage.py [--input FILE] [--budgets 50,100,200,400] [--seeds 5]
        [--embedder hashed|maxlm --model PATH] [--out bench_select_coverage.json]

For each budget: the max (covering radius) and mean Euclidean distance from every pool record
to its nearest selected record, for k-center (seed 0) and for uniform random picks (one per
seed, mean and range reported). The default pool is the shared GPTeacher role-play set
(3,146 records) with the model-free hashed LSA embedder of `maxlm select kcenter`. Prints a
table and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from data_pipelines.select import embed  # noqa: E402
from data_pipelines.select.io import read_pool  # noqa: E402
from data_pipelines.select.kcenter import coverage, kcenter_greedy  # noqa: E402

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "sft" / "gpteacher_roleplay.json"


def embeddings(pool, embedder: str, model: str, dim: int) -> np.ndarray:
    """Returns [N, D] unit-norm embeddings of the pool's records."""
    if embedder == "hashed":
        return embed.hashed_lsa([embed.record_text(r.messages) for r in pool.records], dim=dim)
    from maxlm.infer.replies import load_scoring_model

    lm = load_scoring_model(model)
    return embed.model_embeddings(lm.scorer, lm.tokenizer, lm.template, [r.messages for r in pool.records])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=str(DEFAULT_INPUT))
    p.add_argument("--budgets", default="50,100,200,400")
    p.add_argument("--seeds", type=int, default=5, help="random baselines per budget")
    p.add_argument("--embedder", choices=("hashed", "maxlm"), default="hashed")
    p.add_argument("--model", default="", help="maxlm run for --embedder maxlm")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--out", default="bench_select_coverage.json")
    args = p.parse_args(argv)

    pool = read_pool(args.input)
    t0 = time.perf_counter()
    x = embeddings(pool, args.embedder, args.model, args.dim)
    embed_s = time.perf_counter() - t0
    rows = []
    for budget in (int(b) for b in args.budgets.split(",")):
        t0 = time.perf_counter()
        picked, _ = kcenter_greedy(x, budget, seed=0)
        kc_s = time.perf_counter() - t0
        kc = coverage(x, picked)
        rand = [coverage(x, np.random.default_rng(s).choice(len(x), budget, replace=False)) for s in range(args.seeds)]
        rows.append({
            "budget": budget,
            "kcenter": {**kc, "seconds": round(kc_s, 3)},
            "random": {
                "max_mean": float(np.mean([r["max"] for r in rand])), "max_min": min(r["max"] for r in rand),
                "max_max": max(r["max"] for r in rand), "mean_mean": float(np.mean([r["mean"] for r in rand])),
                "seeds": args.seeds,
            },
        })
    result = {"input": args.input, "pool": len(pool), "embedder": args.embedder, "dim": int(x.shape[1]),
              "embed_seconds": round(embed_s, 2), "distance": "euclidean on unit-norm embeddings", "budgets": rows}
    print(f"{len(pool)} records, {args.embedder} embeddings [{x.shape[1]}] in {embed_s:.1f} s; random: {args.seeds} seeds")
    print("| budget | k-center max | random max (mean, range) | k-center mean | random mean |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        k, q = r["kcenter"], r["random"]
        print(f"| {r['budget']} | {k['max']:.3f} | {q['max_mean']:.3f} ({q['max_min']:.3f}-{q['max_max']:.3f}) "
              f"| {k['mean']:.3f} | {q['mean_mean']:.3f} |")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
