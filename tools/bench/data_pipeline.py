"""Throughput of the training input pipeline on the builtin corpus; prints one JSON object.

    python tools/bench/data_pipeline.py [--seq-len 512] [--batch 32] [--worker-count 0] [--prefetch 4]

batches/s and tokens/s are measured after warm-up, with the consumer doing nothing, so they
bound what the pipeline can feed; compare them with the train step's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from maxlm.config import Config, DataConfig, SourceConfig, TrainConfig  # noqa: E402
from maxlm.files.cache import cache_dir  # noqa: E402
from maxlm.data.pipeline import make_train_iterator  # noqa: E402
from maxlm.data.sources import iter_texts  # noqa: E402
from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=32, help="global batch size (one process)")
    p.add_argument("--steps", type=int, default=100, help="batches timed after warm-up")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--worker-count", type=int, default=0)
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--tokenizer", default="", help=".model file or HF dir; default: trained once on the corpus")
    a = p.parse_args()

    source = SourceConfig(path="builtin:stdlib-docs")
    tok_path = a.tokenizer or str(cache_dir("bench") / f"stdlib-docs-bpe{a.vocab_size}.model")
    if not os.path.exists(tok_path):
        train_sentencepiece(iter_texts([source]), tok_path, vocab_size=a.vocab_size)
    tokenizer = load_tokenizer(tok_path)
    cfg = Config(
        data=DataConfig(train_files=[source], seq_len=a.seq_len, prefetch=a.prefetch, worker_count=a.worker_count),
        train=TrainConfig(global_batch_size=a.batch),
    )

    t0 = time.perf_counter()
    it = make_train_iterator(cfg, tokenizer)
    t_open = time.perf_counter() - t0
    for _ in range(a.warmup):
        next(it)
    t_first = time.perf_counter() - t0
    real = 0
    t1 = time.perf_counter()
    for _ in range(a.steps):
        batch = next(it)
        real += int((batch["segment_ids"] != 0).sum())
    dt = time.perf_counter() - t1
    state_bytes = len(json.dumps(it.get_state()))
    it.close()
    print(json.dumps({
        "seq_len": a.seq_len, "batch": a.batch, "worker_count": a.worker_count, "prefetch": a.prefetch,
        "vocab_size": tokenizer.vocab_size, "cpus": os.cpu_count(),
        "open_s": round(t_open, 3), "open_plus_warmup_s": round(t_first, 3),
        "batches_per_s": round(a.steps / dt, 2),
        "tokens_per_s": round(a.steps * a.batch * a.seq_len / dt),
        "non_padding_fraction": round(real / (a.steps * a.batch * a.seq_len), 4),
        "ms_per_batch": round(1000 * dt / a.steps, 2),
        "state_json_bytes": state_bytes,
    }))


if __name__ == "__main__":
    main()
