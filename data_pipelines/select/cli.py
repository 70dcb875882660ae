"""`select METHOD --input FILE (--budget N | --fraction F) --output FILE [--model PATH ...]` and
`select folds --input FILE --k K --output-dir DIR`.

Wired as `maxlm select ...`; holds no logic of its own.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from data_pipelines.command import run_command
from maxlm.errors import MaxlmError
from maxlm.files.outputs import check_output, check_output_dir

METHODS = ("kcenter", "perplexity", "ifd", "disagreement", "rm_filter")


def _common(p: argparse.ArgumentParser, models: str) -> None:
    p.add_argument("--input", required=True, help="SFT records: prompt/response, messages, or instruction/input/output (jsonl, json, parquet)")
    p.add_argument("--output", required=True, help="selected records (jsonl, best first); a .summary.json is written beside it")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--budget", type=int, help="how many records to select")
    size.add_argument("--fraction", type=float, help="or which fraction of the pool (rounded up)")
    p.add_argument("--model", action="append", default=[], help=models)
    p.add_argument("--chat-template", help="render records with this template (default: each model's run's data.chat_template)")
    p.add_argument("--batch-tokens", type=int, default=16384, help="tokens per scoring batch")
    p.add_argument("--overwrite", action="store_true", help="allow --output to be the --input file (replaced by the selection)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def _ranked(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lowest", action="store_true", help="select the lowest scores instead of the highest")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="select", description="Select a subset of SFT records by coverage, uncertainty or reward.")
    sub = p.add_subparsers(dest="method", required=True)
    k = sub.add_parser("kcenter", help="greedy k-center on embeddings: the most diverse subset")
    _common(k, "maxlm model for --embedder maxlm")
    k.add_argument("--embedder", choices=("hashed", "maxlm"), default="hashed",
                   help="hashed: TF-IDF LSA, no model (default); maxlm: mean-pooled hidden states of --model")
    k.add_argument("--dim", type=int, default=128, help="hashed embedder: dimensions")
    k.add_argument("--seed", type=int, default=0, help="draws the first center")
    for name, text in (("perplexity", "perplexity of the reply given the prompt"),
                       ("ifd", "instruction-following difficulty, ppl(reply | prompt) / ppl(reply)")):
        m = sub.add_parser(name, help=text)
        _common(m, "maxlm run / checkpoint or HF model dir (one)")
        _ranked(m)
    sub.choices["ifd"].add_argument("--keep-ifd-over-1", action="store_true", help="keep records with IFD >= 1 (dropped by default, as in the paper)")
    d = sub.add_parser("disagreement", help="spread of several models' reply log-probs (e.g. trained on folds)")
    _common(d, "a model; repeat for each (at least 2)")
    _ranked(d)
    r = sub.add_parser("rm_filter", aliases=["rm-filter"], help="reward of a reward model (scalar head)")
    _common(r, "reward model run / checkpoint (one)")
    _ranked(r)
    f = sub.add_parser("folds", help="write K cross-validation folds (train_i / heldout_i jsonl) to train committee models")
    f.add_argument("--input", required=True)
    f.add_argument("--k", type=int, required=True)
    f.add_argument("--output-dir", required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--overwrite", action="store_true", help="write into a non-empty --output-dir (replaces only fold files)")
    f.add_argument("-q", "--quiet", action="store_true")
    return p


def _models(args, want: int | None, log, reward: bool = False) -> list:
    from maxlm.infer.replies import load_scoring_model

    if want is not None and len(args.model) != want:
        raise MaxlmError(f"select {args.method} needs exactly {want} --model, got {len(args.model)}")
    if args.batch_tokens < 1:
        raise MaxlmError(f"--batch-tokens must be >= 1, got {args.batch_tokens}")
    out = []
    for path in args.model:
        log(f"loading {path}")
        out.append(load_scoring_model(path, args.chat_template, args.batch_tokens, reward=reward))
    return out


def _select(args, log) -> dict:
    from data_pipelines.select.io import budget_for, read_pool, summary_path, write_selection

    check_output({"--output": args.output, "the summary file": summary_path(args.output)}, {"--input": args.input}, args.overwrite)
    t0 = time.perf_counter()
    pool = read_pool(args.input)
    n = budget_for(pool, args.budget, args.fraction)
    log(f"{args.input}: {len(pool)} records; selecting {n} by {args.method}")
    method = "rm_filter" if args.method == "rm-filter" else args.method
    extra = {}
    if method == "kcenter":
        from data_pipelines.select import embed
        from data_pipelines.select.kcenter import select_kcenter

        if args.embedder == "maxlm":
            (lm,) = _models(args, 1, log)
            x = embed.model_embeddings(lm.scorer, lm.tokenizer, lm.template, [r.messages for r in pool.records])
            extra = {"embedder": "maxlm", "model": lm.name, "chat_template": lm.template}
        else:
            if args.model:
                raise MaxlmError("--model is only read with --embedder maxlm")
            x = embed.hashed_lsa([embed.record_text(r.messages) for r in pool.records], dim=args.dim)
            extra = {"embedder": "hashed"}
        sel = select_kcenter(x, n, args.seed)
    elif method in ("perplexity", "ifd"):
        from data_pipelines.select.uncertainty import select_ifd, select_perplexity

        (lm,) = _models(args, 1, log)
        if method == "ifd":
            sel = select_ifd(pool, lm, n, not args.lowest, not args.keep_ifd_over_1)
        else:
            sel = select_perplexity(pool, lm, n, not args.lowest)
    elif method == "disagreement":
        from data_pipelines.select.disagreement import select_disagreement

        sel = select_disagreement(pool, _models(args, None, log), n, not args.lowest)
    else:
        from data_pipelines.select.rm_filter import select_rm

        (rm,) = _models(args, 1, log, reward=True)
        sel = select_rm(pool, rm, n, not args.lowest)
    if len(sel.order) < n:
        log(f"only {len(sel.order)} records could be selected (the rest are unscored or excluded; see the summary)")
    extra["seconds"] = round(time.perf_counter() - t0, 2)
    return write_selection(args.output, pool, method, sel, extra)


def _run(args: argparse.Namespace, log) -> str:
    """Returns the summary line of a select command."""
    if args.method == "folds":
        from data_pipelines.select.disagreement import write_folds
        from data_pipelines.select.io import read_pool

        _check_folds_output(args)
        s = write_folds(read_pool(args.input), args.k, args.output_dir, args.seed)
        return f"folds: {s['k']} folds of {s['pool']} records -> {args.output_dir}/train_i.jsonl, heldout_i.jsonl"
    s = _select(args, log)
    note = f"; {s['ids_assigned']} records got their index as id" if s["ids_assigned"] else ""
    return f"{s['method']}: selected {s['selected']} of {s['pool']} in {s['seconds']:.1f} s -> {args.output}{note}"


def _check_folds_output(args) -> None:
    """Raises MaxlmError when the folds would land in a foreign non-empty directory or on the input."""
    out = Path(args.output_dir)
    check_output_dir(out, "--output-dir", args.overwrite, ours=(out / "folds.json").is_file())
    names = ["folds.json"] + [f"{kind}_{i}.jsonl" for i in range(max(args.k, 0)) for kind in ("train", "heldout")]
    check_output({f"--output-dir file {n}": out / n for n in names}, {"--input": args.input}, args.overwrite)


def main(argv: list[str]) -> int:
    """Runs a select command; returns the process exit code (0 ok, 2 bad input)."""
    return run_command("select", argv, _parser(), _run)
