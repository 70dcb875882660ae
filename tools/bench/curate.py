"""Benchmark: maxlm's english_web curation vs datatrove on one labelled corpus, side by side.

    python tools/bench/curate.py [--scale 1.0] [--shards 8] [--workers 2] [--out bench_curate.json]

Both runs see the same input shards and the same filter thresholds and MinHash parameters:
py3langid (en, score >= 0.65, first 2,000 chars; datatrove's own LanguageFilter needs a
fastText download, so it gets the same py3langid call through a LambdaFilter), Gopher
quality, C4 (no terminal-punctuation line rule), FineWeb, Gopher repetition, PII, then
MinHash (5-grams, 14 bands x 8 rows). Our pipeline also runs exact dedup first; datatrove
relies on MinHash alone for exact copies (one stage less for it). Datatrove's PII formatter
covers emails and IPs only. Datatrove is a peer here, never a dependency:
    pip install datatrove spacy orjson zstandard regex tokenizers "xxhash<4"
Quality comes from the corpus labels (tests/data_pipelines/curate/labelled_corpus.py); wall time
includes process start-up for both. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from data_pipelines.curate.config import load_pipeline  # noqa: E402
from data_pipelines.curate.stages import STAGES  # noqa: E402
from data_pipelines.curate.pipeline import curate  # noqa: E402
from maxlm.files.readers import iter_records  # noqa: E402

PIPELINE = REPO / "configs" / "curation" / "english_web.yaml"


def _corpus_module():
    path = REPO / "tests" / "data_pipelines" / "curate" / "labelled_corpus.py"
    spec = importlib.util.spec_from_file_location("labelled_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_ours(in_dir: Path, out_dir: Path, workers: int) -> tuple[float, list[dict], dict]:
    """Returns (wall seconds, kept records, report) of our english_web pipeline."""
    t0 = time.perf_counter()
    cfg = load_pipeline(PIPELINE, STAGES)
    report = curate(cfg, str(in_dir / "*.jsonl"), out_dir, "local", workers)
    wall = time.perf_counter() - t0
    kept = [r for p in sorted(glob.glob(str(out_dir / "*.jsonl.zst"))) for _, r in iter_records(p, strict=True)]
    return wall, kept, report


# ---------------------------------------------------------------- datatrove, configured to match


def _langid_filter(doc, keep: tuple, min_score: float, max_chars: int) -> bool:
    """py3langid with our parameters, as a datatrove LambdaFilter (its LanguageFilter needs a download)."""
    from data_pipelines.curate.stages.langid import identifier

    lang, score = identifier().classify(doc.text[:max_chars])
    doc.metadata["lang"], doc.metadata["lang_score"] = lang, float(score)
    return lang in keep and score >= min_score


def run_datatrove(in_dir: Path, work: Path, workers: int, shards: int, params) -> tuple[float, list[dict], dict]:
    """Returns (wall seconds, kept records, seconds per datatrove stage) of the matching datatrove pipeline."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LambdaFilter)
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    lid = params["langid"]
    gq, c4, fw, rep, mh = params["gopher_quality"], params["c4"], params["fineweb"], params["gopher_repetition"], params["minhash_dedup"]
    cfg = MinhashConfig(n_grams=mh.ngram, num_buckets=mh.bands, hashes_per_bucket=mh.rows, seed=mh.seed)
    steps = {
        "filter+signatures": (
            [
                JsonlReader(str(in_dir), glob_pattern="*.jsonl"),
                LambdaFilter(functools.partial(_langid_filter, keep=tuple(lid.keep), min_score=lid.min_score, max_chars=lid.max_chars)),
                GopherQualityFilter(
                    min_doc_words=gq.min_words, max_doc_words=gq.max_words,
                    min_avg_word_length=gq.min_mean_word_length, max_avg_word_length=gq.max_mean_word_length,
                    max_symbol_word_ratio=gq.max_symbol_word_ratio, max_bullet_lines_ratio=gq.max_bullet_lines_ratio,
                    max_ellipsis_lines_ratio=gq.max_ellipsis_lines_ratio, max_non_alpha_words_ratio=gq.min_alpha_words_ratio,
                    min_stop_words=gq.min_stop_words, stop_words=gq.stop_words),
                C4QualityFilter(filter_no_terminal_punct=c4.filter_no_terminal_punct, min_num_sentences=c4.min_sentences,
                                min_words_per_line=c4.min_words_per_line, max_word_length=c4.max_word_length),
                FineWebQualityFilter(line_punct_thr=fw.min_line_punct_ratio, short_line_thr=fw.max_short_line_ratio,
                                     short_line_length=fw.short_line_length, char_duplicates_ratio=fw.max_dup_line_char_ratio,
                                     new_line_ratio=fw.max_newline_word_ratio),
                GopherRepetitionFilter(
                    dup_line_frac=rep.max_dup_line_frac, dup_para_frac=rep.max_dup_para_frac,
                    dup_line_char_frac=rep.max_dup_line_char_frac, dup_para_char_frac=rep.max_dup_para_char_frac,
                    top_n_grams=tuple(sorted(rep.max_top_ngram_char_frac.items())),
                    dup_n_grams=tuple(sorted(rep.max_dup_ngram_char_frac.items()))),
                PIIFormatter(),
                JsonlWriter(str(work / "filtered"), compression="zstd"),
                MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg),
            ],
            shards,
        ),
        "buckets": ([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)], cfg.num_buckets),
        "cluster": ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"), config=cfg)], 1),
        "filter_dups": (
            [
                JsonlReader(str(work / "filtered"), glob_pattern="*.jsonl.zst"),
                MinhashDedupFilter(input_folder=str(work / "remove_ids")),
                JsonlWriter(str(work / "out"), compression="zstd"),
            ],
            shards,
        ),
    }
    times = {}
    t0 = time.perf_counter()
    for name, (pipeline, tasks) in steps.items():
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers, logging_dir=str(work / "logs" / name),
                              start_method="fork").run()
        times[name] = round(time.perf_counter() - t, 3)
    wall = time.perf_counter() - t0
    kept = [json.loads(line) for p in sorted(glob.glob(str(work / "out" / "*.jsonl.zst")))
            for line in _zstd_lines(p)]
    return wall, kept, times


def _zstd_lines(path: str):
    import io

    import zstandard

    with open(path, "rb") as fh:
        yield from io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="corpus size: 1.0 is ~9k documents (the clean pool allows ~1.3)")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="bench_curate.json")
    ap.add_argument("--skip-datatrove", action="store_true")
    args = ap.parse_args(argv)

    corpus = _corpus_module()
    data = corpus.shared_data_dir()
    if data is None:
        print("shared data not found: set MAXLM_SHARED_DATA", file=sys.stderr)
        return 2
    s = args.scale
    recs = corpus.build_corpus(data, n_clean=int(3000 * s), n_groups=int(400 * s), n_foreign=int(600 * s),
                               n_spam=int(900 * s), n_pii=int(500 * s), seed=1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_curate_"))
    try:
        corpus.write_shards(recs, tmp / "in", args.shards)
        in_bytes = sum(p.stat().st_size for p in (tmp / "in").iterdir())
        result = {
            "corpus": {"documents": len(recs), "bytes": in_bytes, "shards": args.shards,
                       "labels": {k: sum(r["label"] == k for r in recs) for k in sorted({r["label"] for r in recs})}},
            "workers": args.workers,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # other work skews timings
        }
        wall, kept, report = run_ours(tmp / "in", tmp / "ours", args.workers)
        result["ours"] = {"wall_seconds": round(wall, 3), "docs_per_second": round(len(recs) / wall, 1),
                          "kept": len(kept), "quality": corpus.score(recs, kept),
                          "stage_seconds": {st["label"]: st["seconds"] for st in report["stages"]}}
        if not args.skip_datatrove:
            params = {sp.name: sp.params for sp in load_pipeline(PIPELINE, STAGES).stages}
            wall, kept, times = run_datatrove(tmp / "in", tmp / "datatrove", args.workers, args.shards, params)
            result["datatrove"] = {"wall_seconds": round(wall, 3), "docs_per_second": round(len(recs) / wall, 1),
                                   "kept": len(kept), "quality": corpus.score(recs, kept), "step_seconds": times}
            result["speedup"] = round(result["datatrove"]["wall_seconds"] / result["ours"]["wall_seconds"], 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=1)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
