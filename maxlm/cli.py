"""The `maxlm` command: parses arguments and dispatches; the work lives in the task modules."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _enable_compilation_cache() -> None:
    # Restarts (resume after preemption, repeated quickstarts) skip recompiling the step.
    import jax

    cache = os.environ.get("MAXLM_COMPILATION_CACHE", str(Path.home() / ".cache" / "maxlm" / "xla"))
    if cache and cache != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def cmd_train(args) -> int:
    from maxlm.config import load_config
    from maxlm.train.loop import train

    cfg = load_config(args.config, args.overrides)
    _enable_compilation_cache()
    result = train(cfg)
    where = result.run_dir
    print(f"run dir: {where}  (config.yaml, metrics.jsonl, tensorboard/, checkpoints/, loss.png, samples.txt)")
    return 0


def cmd_tokenizer_train(args) -> int:
    from maxlm.config import SourceConfig
    from maxlm.data.sources import iter_texts
    from maxlm.data.tokenizers import train_sentencepiece

    sources = [SourceConfig(path=p) for p in args.input]
    out = train_sentencepiece(
        iter_texts(sources), args.output, vocab_size=args.vocab_size, model_type=args.model_type,
        max_sentences=args.max_sentences, character_coverage=0.9995,
    )
    print(f"tokenizer: {out}")
    return 0


def cmd_import_hf(args) -> int:
    from maxlm.ckpt.hf import import_hf

    print(f"imported: {import_hf(args.hf_dir, args.out, dtype=args.dtype)}")
    return 0


def cmd_export_hf(args) -> int:
    from maxlm.ckpt.hf import export_hf

    print(f"exported: {export_hf(args.path, args.out)}")
    return 0


def cmd_generate(args) -> int:
    from maxlm.pretrained import from_pretrained

    _enable_compilation_cache()
    model = from_pretrained(args.path)
    for text in model.generate_text(
        args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    ):
        print(text)
    return 0


def cmd_eval_rm(args) -> int:
    import json

    from maxlm.eval.reward import rm_accuracy
    from maxlm.pretrained import from_pretrained

    _enable_compilation_cache()
    result = rm_accuracy(from_pretrained(args.path), args.data, args.rows, args.batch_size, args.seq_len)
    print(json.dumps(result))
    return 0


def cmd_curate(args, rest: list[str]) -> int:
    from data_pipelines.cli import main as curate_main

    return curate_main(["curate", *rest])


def cmd_synth(args, rest: list[str]) -> int:
    from data_pipelines.synth.cli import main as synth_main

    _enable_compilation_cache()
    return synth_main(rest)


def parser() -> argparse.ArgumentParser:
    """Returns the argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="maxlm", description="Curate, train, align, evaluate and export Llama-family models in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train from a YAML config (task: pretrain)")
    t.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=100 mesh.tensor=2")
    t.set_defaults(fn=cmd_train)

    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tok_command", required=True)
    tt = tok.add_parser("train", help="train a sentencepiece tokenizer on text files")
    tt.add_argument("--input", nargs="+", required=True, help="files or globs (jsonl/parquet/txt/builtin:stdlib-docs)")
    tt.add_argument("--output", required=True, help="where to write the .model file")
    tt.add_argument("--vocab-size", type=int, default=4096)
    tt.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    tt.add_argument("--max-sentences", type=int, default=200000)
    tt.set_defaults(fn=cmd_tokenizer_train)

    i = sub.add_parser("import-hf", help="convert a Hugging Face Llama/Qwen2 model dir into a maxlm run dir")
    i.add_argument("hf_dir")
    i.add_argument("out")
    i.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    i.set_defaults(fn=cmd_import_hf)

    e = sub.add_parser("export-hf", help="write a maxlm run or checkpoint as a Hugging Face model dir")
    e.add_argument("path", help="run dir, its checkpoints/ dir, or one step dir")
    e.add_argument("out")
    e.set_defaults(fn=cmd_export_hf)

    g = sub.add_parser("generate", help="sample text from a run, checkpoint or HF dir")
    g.add_argument("path")
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=cmd_generate)

    ev = sub.add_parser("eval", help="evaluate a trained model").add_subparsers(dest="eval_command", required=True)
    er = ev.add_parser("rm", help="reward-model accuracy on preference pairs: prints {\"accuracy\", \"n\", ...}")
    er.add_argument("path", help="run dir, checkpoint, or step dir of a task: rm run")
    er.add_argument("--data", required=True, help="pairs file or glob (prompt/chosen/rejected, ranked lists, or hh-rlhf dialogues)")
    er.add_argument("--rows", default="", help="a slice of the records, e.g. 1200: (held-out part)")
    er.add_argument("--batch-size", type=int, default=16)
    er.add_argument("--seq-len", type=int, default=None, help="default: the run's data.seq_len; longer pairs are skipped and counted")
    er.set_defaults(fn=cmd_eval_rm)

    c = sub.add_parser("curate", help="run a curation pipeline (see data_pipelines)", add_help=False)
    c.set_defaults(fn=cmd_curate)

    s = sub.add_parser("synth", help="synthetic data: self-instruct | constitutional (see data_pipelines.synth)", add_help=False)
    s.set_defaults(fn=cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns the process exit code; bad input prints one line, no traceback."""
    from maxlm.errors import MaxlmError

    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    if argv[:1] in (["curate"], ["synth"]):
        args, rest = p.parse_known_args(argv[:1])[0], argv[1:]
        call = lambda: args.fn(args, rest)
    else:
        args = p.parse_args(argv)
        call = lambda: args.fn(args)
    try:
        return call()
    except MaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
