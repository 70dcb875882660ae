"""Benchmark: how exact + MinHash dedup grows from 1x to 10x and 50x of one corpus, per phase,
on local processes and on a local Ray, beside datatrove's MinHash dedup on the same files.

    python tools/bench/dedup_scale.py [--scales 1,10,50] [--docs-per-file 1000] [--base-docs 2000]
                                      [--workers 2] [--out dedup_scale.json] [--no-ray] [--no-datatrove]

The 1x corpus is real text (gsm8k questions and answers, GPTeacher replies from ../shared/data);
copy c of it renames every id and rewrites 40% of each document's words (seeded), so copies are
not near duplicates of each other; each copy then plants 5% exact and 5% near duplicates (one
word changed) of its own documents, so the duplicate rate is the same at every scale. Files hold
`--docs-per-file` documents each: a shard task's memory stays the same, only their number grows.

Each run is its own process (`python -m data_pipelines curate`), and its report gives every
phase's wall time and the peak memory of its tasks and of the driver. datatrove (a peer, never
a dependency: `pip install datatrove`) runs its four MinHash steps with the same 5-grams and
14 x 8 bands, each step in a fresh process whose peak memory is read from getrusage. Scales
run in order; nothing else may run on the machine meanwhile. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MAXLM_SHARED_DATA", REPO.parent / "shared" / "data"))
PIPELINE = "stages:\n  - exact_dedup: {}\n  - minhash_dedup: {}\noutput: {write_removed: false}\n"


def base_texts(n: int) -> list[str]:
    """Returns n real documents: gsm8k problems with their solutions, then GPTeacher replies."""
    out = []
    with open(SHARED / "sft" / "gsm8k_train.jsonl") as f:
        for line in f:
            r = json.loads(line)
            out.append(r["question"] + "\n\n" + r["answer"])
    out += [r["output"] for r in json.loads((SHARED / "sft" / "gpteacher_roleplay.json").read_text()) if len(r["output"].split()) >= 20]
    if len(out) < n:
        raise SystemExit(f"--base-docs {n}: only {len(out)} base documents in {SHARED}")
    return out[:n]


def rewrite(text: str, rng: random.Random, vocab: list[str], frac: float) -> str:
    """Returns `text` with `frac` of its words replaced by random corpus words."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), int(len(words) * frac)):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def write_corpus(base: list[str], scale: int, docs_per_file: int, out: Path) -> dict:
    """Writes `scale` renamed, rewritten copies of `base` with planted duplicates; returns counts."""
    vocab = sorted({w for t in base for w in t.split()})
    out.mkdir(parents=True)
    docs, planted = [], {"exact": 0, "near": 0}
    for c in range(scale):
        rng = random.Random(c)
        gen = [t if c == 0 else rewrite(t, rng, vocab, 0.4) for t in base]
        docs += [{"id": f"c{c}-d{i}", "text": t} for i, t in enumerate(gen)]
        for i in rng.sample(range(len(gen)), len(gen) // 10):
            kind = "exact" if planted["exact"] <= planted["near"] else "near"
            text = gen[i] if kind == "exact" else rewrite(gen[i], rng, vocab, 1 / max(1, len(gen[i].split())))
            docs.append({"id": f"c{c}-{kind}{i}", "text": text})
            planted[kind] += 1
    random.Random(scale).shuffle(docs)
    for k in range(0, len(docs), docs_per_file):
        with open(out / f"part-{k // docs_per_file:05d}.jsonl", "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs[k:k + docs_per_file])
    return {"documents": len(docs), "files": -(-len(docs) // docs_per_file), "planted": planted}


def run_maxlm(in_dir: Path, out_dir: Path, cfg: Path, executor: str, workers: int) -> dict:
    """Returns the per-phase figures of one `maxlm curate` run in a fresh process."""
    cmd = [sys.executable, "-m", "data_pipelines", "curate", str(cfg), "--input", str(in_dir / "*.jsonl"),
           "--output", str(out_dir), "--executor", executor, "--workers", str(workers), "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    wall = time.perf_counter() - t0
    rep = json.loads((out_dir / "report.json").read_text())
    resolve = json.loads((out_dir / "_work" / "r0" / "done.json").read_text())
    phases = {"shard_pass": rep["run"]["phases"][0], "filter_pass": rep["run"]["phases"][1]}
    for label, st in resolve["stages"].items():
        for step, fig in st["steps"].items():
            phases[f"{label}.{step}"] = fig
    phases.update({f"ids.{k}": v for k, v in resolve["ids"].items()})
    removed = {s["label"]: s["docs_removed"] for s in rep["stages"]}
    return {"wall_seconds": round(wall, 2), "driver_peak_rss_mb": rep["run"]["driver_peak_rss_mb"],
            "max_task_rss_mb": max(p["max_task_rss_mb"] for p in phases.values()), "phases": phases,
            "docs_out": rep["totals"]["docs_out"], "removed": removed}


DATATROVE_STEP = r"""
import json, resource, sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
step, src, work, files, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cfg = MinhashConfig(hash_config=HashConfig(precision=64), n_grams=5, num_buckets=14, hashes_per_bucket=8)
read = JsonlReader(src, glob_pattern="*.jsonl", text_key="text", id_key="id")
steps = {
    "signatures": ([read, MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)], files),
    "buckets": ([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)], cfg.num_buckets),
    "cluster": ([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg)], 1),
    "filter": ([read, MinhashDedupFilter(input_folder=f"{work}/remove_ids"), JsonlWriter(f"{work}/out")], files),
}
pipeline, tasks = steps[step]
t0 = time.perf_counter()
LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=f"{work}/logs/{step}").run()
# this program's own high-water mark (getrusage's would count the bench process it was forked from);
# its pool workers are forked from it, so their getrusage maxima are theirs
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"tasks": tasks, "seconds": round(time.perf_counter() - t0, 3), "driver_rss_mb": round(own, 1),
                  "max_task_rss_mb": round(max(own, kids), 1)}))
"""


def run_datatrove(in_dir: Path, work: Path, files: int, workers: int) -> dict:
    """Returns the per-step figures of datatrove's MinHash dedup, each step in a fresh process."""
    phases, t0 = {}, time.perf_counter()
    for step in ("signatures", "buckets", "cluster", "filter"):
        proc = subprocess.run([sys.executable, "-c", DATATROVE_STEP, step, str(in_dir), str(work), str(files), str(workers)],
                              check=True, capture_output=True, text=True)
        phases[step] = json.loads(proc.stdout.strip().splitlines()[-1])
    kept = sum(1 for p in (work / "out").glob("*.jsonl*") for _ in _lines(p))
    return {"wall_seconds": round(time.perf_counter() - t0, 2), "max_task_rss_mb": max(p["max_task_rss_mb"] for p in phases.values()),
            "driver_peak_rss_mb": max(p["driver_rss_mb"] for p in phases.values()), "phases": phases, "docs_out": kept}


def _lines(path: Path):
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        yield from f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", default="1,10,50")
    ap.add_argument("--base-docs", type=int, default=2000)
    ap.add_argument("--docs-per-file", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="dedup_scale.json")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-datatrove", action="store_true")
    args = ap.parse_args()
    base = base_texts(args.base_docs)
    runs = ["local"] + ([] if args.no_ray else ["ray"]) + ([] if args.no_datatrove else ["datatrove"])
    result = {"command": " ".join(sys.argv), "base_docs": args.base_docs, "docs_per_file": args.docs_per_file,
              "workers": args.workers, "cpus": os.cpu_count(), "scales": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "dedup.yaml"
        cfg.write_text(PIPELINE)
        for scale in (int(s) for s in args.scales.split(",")):
            corpus = Path(tmp) / f"x{scale}"
            row = {"scale": scale, **write_corpus(base, scale, args.docs_per_file, corpus)}
            for name in runs:
                work = Path(tmp) / f"x{scale}-{name}"
                if name == "datatrove":
                    row[name] = run_datatrove(corpus, work, row["files"], args.workers)
                else:
                    row[name] = run_maxlm(corpus, work, cfg, name, args.workers)
                shutil.rmtree(work)
                print(f"x{scale} {name}: {row[name]['wall_seconds']} s, driver {row[name]['driver_peak_rss_mb']} MiB, "
                      f"tasks <= {row[name]['max_task_rss_mb']} MiB, {row[name]['docs_out']} kept", file=sys.stderr)
            shutil.rmtree(corpus)
            result["scales"].append(row)
    text = json.dumps(result, indent=1)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
