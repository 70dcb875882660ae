"""The `maxlm` command: parses arguments and dispatches; the work lives in the library modules each command imports."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from maxlm.config import HarnessConfig, SampleConfig, TokenizerConfig, flag_type


def _enable_compilation_cache() -> None:
    # Restarts (resume after preemption, repeated quickstarts) skip recompiling the step.
    import jax

    cache = os.environ.get("MAXLM_COMPILATION_CACHE", str(Path.home() / ".cache" / "maxlm" / "xla"))
    if cache and cache != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def cmd_train(args) -> int:
    from maxlm.config import load_config
    from maxlm.train.run import train

    cfg = load_config(args.config, args.overrides)
    _enable_compilation_cache()
    result = train(cfg, step_evals=_step_evals)
    import jax

    if jax.process_index() == 0:
        names = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "loss.png", "samples.txt")
        wrote = [n + ("/" if (result.run_dir / n).is_dir() else "") for n in names if (result.run_dir / n).exists()]
        print(f"run dir: {result.run_dir}  ({', '.join(wrote)})")
    return 0


def _step_evals(cfg) -> list:
    """Returns the step evaluations of cfg (train.eval_harness); lm-eval is imported only when a config asks for it."""
    if not cfg.train.eval_harness.tasks:
        return []
    from maxlm.eval.harness import train_step_evals

    return train_step_evals(cfg)


def cmd_compile(args) -> int:
    import json

    # The compile targets abstract TPU devices; jax itself needs no accelerator (with libtpu installed
    # and no TPU here, jax would otherwise probe for one).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    from maxlm.config import load_config
    from maxlm.train.aot import compile_step, search

    cfg = load_config(args.config, args.overrides)
    log = lambda line: print(line, file=sys.stderr, flush=True)
    if args.search:
        ranked = search(cfg, args.topology, args.slices, log=log)
        print(json.dumps(ranked[0]))
        print(" ".join(ranked[0]["overrides"]))
    else:
        print(json.dumps(compile_step(cfg, args.topology, args.slices, cost=not args.memory_only, log=log)))
    return 0


def cmd_tokenizer_train(args) -> int:
    from maxlm.config import SourceConfig
    from maxlm.data.sources import iter_texts
    from maxlm.data.tokenizers import train_sentencepiece
    from maxlm.files.writable import check_writable_file

    check_writable_file(args.output, "--output")
    sources = [SourceConfig(path=p) for p in args.input]
    out = train_sentencepiece(
        iter_texts(sources), args.output, vocab_size=args.vocab_size, model_type=args.model_type,
        max_sentences=args.max_sentences, character_coverage=0.9995, vocab_setting="--vocab-size",
    )
    print(f"tokenizer: {out}")
    return 0


def cmd_import_hf(args) -> int:
    from maxlm.ckpt.hf import import_hf

    print(f"imported: {import_hf(args.hf_dir, args.out, dtype=args.dtype)}")
    return 0


def cmd_export_hf(args) -> int:
    from maxlm.ckpt.hf import export_hf

    print(f"exported: {export_hf(args.path, args.out, overwrite=args.overwrite, merge=args.merge)}")
    return 0


def cmd_generate(args) -> int:
    from maxlm.infer.pretrained import from_pretrained

    _enable_compilation_cache()
    model = from_pretrained(args.path)
    for text in model.generate_text(
        args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    ):
        print(text)
    return 0


def cmd_eval_rm(args) -> int:
    from maxlm.eval.reward import rm_accuracy
    from maxlm.infer.pretrained import from_pretrained

    _enable_compilation_cache()
    result = rm_accuracy(from_pretrained(args.path), args.data, args.rows, args.batch_size, args.seq_len)
    return _eval_result(result, args.output, f"reward-model accuracy: {args.path} on {args.data}")


def _eval_result(result: dict, output: str | None, title: str) -> int:
    """Prints an eval result as one JSON line; with --output also writes results.json and results.md."""
    import json

    from maxlm.eval.report import write_report

    if output:
        write_report(result, output, title)
    print(json.dumps(result, ensure_ascii=False))
    return 0


def cmd_eval_perplexity(args) -> int:
    from maxlm.eval.perplexity import eval_perplexity
    from maxlm.infer.pretrained import from_pretrained

    _enable_compilation_cache()
    result = eval_perplexity(from_pretrained(args.path), args.data, args.task, args.rows, args.batch_tokens, args.on_bad_record)
    return _eval_result(result, args.output, f"perplexity: {args.path} on {', '.join(args.data)}")


def cmd_eval_exact_match(args) -> int:
    from maxlm.eval.generation import answer_check, exact_match
    from maxlm.infer.pretrained import from_pretrained

    answer_check(args.verifier)  # a typo is reported before the model loads
    _enable_compilation_cache()
    result = exact_match(
        from_pretrained(args.path), args.data, args.verifier, args.max_new_tokens, args.rows, args.batch_size, args.on_bad_record
    )
    return _eval_result(result, args.output, f"exact match ({args.verifier}): {args.path} on {args.data}")


def cmd_eval_mc(args) -> int:
    from maxlm.eval.multiple_choice import multiple_choice
    from maxlm.infer.pretrained import from_pretrained

    _enable_compilation_cache()
    result = multiple_choice(from_pretrained(args.path), args.data, args.rows, args.batch_tokens, args.on_bad_record)
    return _eval_result(result, args.output, f"multiple choice: {args.path} on {args.data}")


def cmd_eval_harness(args) -> int:
    from maxlm.eval.harness import harness

    _enable_compilation_cache()
    tasks = [t for t in args.tasks.split(",") if t]
    result = harness(args.path, tasks, args.include_path, args.limit, args.num_fewshot, args.batch_size,
                     args.apply_chat_template, args.fewshot_as_multiturn)
    return _eval_result(result, args.output, f"lm-evaluation-harness: {args.path} on {', '.join(tasks)}")


def cmd_eval_win_rate(args) -> int:
    from maxlm.eval.win_rate import win_rate
    from maxlm.infer.pretrained import from_pretrained

    _enable_compilation_cache()
    loaded = {}  # one load per distinct path (A against itself answers once)

    def load(path: str):
        key = Path(path).resolve()
        if key not in loaded:
            loaded[key] = from_pretrained(path)
        return loaded[key]

    result = win_rate(
        load(args.rm), load(args.a), load(args.b), args.prompts, args.max_new_tokens, args.rows, args.batch_size, args.on_bad_record
    )
    return _eval_result(result, args.output, f"win rate: {args.a} against {args.b}, judged by {args.rm}")


def cmd_curate(args, rest: list[str]) -> int:
    from data_pipelines.curate.cli import main as curate_main

    return curate_main(["curate", *rest])


def cmd_select(args, rest: list[str]) -> int:
    from data_pipelines.select.cli import main as select_main

    _enable_compilation_cache()
    return select_main(rest)


def cmd_synth(args, rest: list[str]) -> int:
    from data_pipelines.synth.cli import main as synth_main

    _enable_compilation_cache()
    return synth_main(rest)


def parser() -> argparse.ArgumentParser:
    """Returns the argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="maxlm", description="Curate, train, align, evaluate and export Llama-family models in JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_compile, _add_tokenizer, _add_hf, _add_generate, _add_eval, _add_data_tools):
        add(sub)
    return p


def _add_train(sub) -> None:
    """Adds `maxlm train`."""
    t = sub.add_parser("train", help="train or resume a run from a YAML config (task: pretrain | sft | rm | dpo | ppo | grpo)")
    t.add_argument("config", help="YAML config file, e.g. configs/quickstart.yaml")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=100 mesh.tensor=2")
    t.set_defaults(fn=cmd_train)


def _add_compile(sub) -> None:
    """Adds `maxlm compile`."""
    c = sub.add_parser("compile", help="compile a run's train step for a TPU slice without one (needs the [aot] extra): "
                                       "prints memory per chip, fit, FLOPs, estimated step time and MFU as one JSON line")
    c.add_argument("config", help="YAML config file, e.g. configs/models/llama3_8b.yaml")
    c.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.seq_len=8192 mesh.fsdp=-1")
    c.add_argument("--topology", required=True, help="a Cloud TPU accelerator type as gcloud names it: v4-128, v5litepod-256, v5p-1024, v6e-256")
    c.add_argument("--slices", type=int, default=1, help="number of such slices (multislice over DCN)")
    c.add_argument("--memory-only", action="store_true", help="skip the two unrolled compiles that estimate FLOPs, step time and MFU")
    c.add_argument("--search", action="store_true",
                   help="try mesh splits, remat policies and train.loss_chunks; rank the fitting ones by estimated step time; print the best as k=v overrides")
    c.set_defaults(fn=cmd_compile)


def _add_tokenizer(sub) -> None:
    """Adds `maxlm tokenizer train`."""
    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tok_command", required=True)
    tt = tok.add_parser("train", help="train a sentencepiece tokenizer on text files")
    tt.add_argument("--input", nargs="+", required=True, help="files or globs (jsonl/parquet/txt/builtin:stdlib-docs)")
    tt.add_argument("--output", required=True, help="where to write the .model file")
    tt.add_argument("--vocab-size", type=flag_type(TokenizerConfig, "vocab_size"), default=4096)
    tt.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    tt.add_argument("--max-sentences", type=flag_type(TokenizerConfig, "max_sentences"), default=200000)
    tt.set_defaults(fn=cmd_tokenizer_train)


def _add_hf(sub) -> None:
    """Adds `maxlm import-hf` and `maxlm export-hf`."""
    i = sub.add_parser("import-hf", help="convert a Hugging Face Llama/Qwen2/Qwen3/Mistral/Gemma2/Gemma3 model dir into a maxlm run dir")
    i.add_argument("hf_dir")
    i.add_argument("out")
    i.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    i.set_defaults(fn=cmd_import_hf)

    e = sub.add_parser("export-hf", help="write a maxlm run or checkpoint as a Hugging Face model dir")
    e.add_argument("path", help="run dir, its checkpoints/ dir, or one step dir")
    e.add_argument("out")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT (replaces only the files an export writes)")
    e.add_argument("--merge", action="store_true", help="a LoRA run: a plain model with the adapters merged into its base "
                                                         "(default: a PEFT adapter dir)")
    e.set_defaults(fn=cmd_export_hf)


def _add_generate(sub) -> None:
    """Adds `maxlm generate`."""
    g = sub.add_parser("generate", help="sample text from a run, checkpoint or HF dir")
    g.add_argument("path")
    g.add_argument("--prompt", action="append", required=True, help="repeat for a batch of prompts")
    g.add_argument("--max-new-tokens", type=flag_type(SampleConfig, "max_new_tokens"), default=64)
    g.add_argument("--temperature", type=flag_type(SampleConfig, "temperature"), default=0.0)
    g.add_argument("--top-k", type=flag_type(SampleConfig, "top_k"), default=0)
    g.add_argument("--top-p", type=flag_type(SampleConfig, "top_p"), default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=cmd_generate)


def _add_eval(sub) -> None:
    """Adds `maxlm eval rm | perplexity | exact-match | mc | harness | win-rate`."""
    ev = sub.add_parser("eval", help="evaluate a trained model").add_subparsers(dest="eval_command", required=True)
    # Options every eval command shares (reports) or every record-reading one shares (bad records).
    report = argparse.ArgumentParser(add_help=False)
    report.add_argument("--output", help="also write DIR/results.json and DIR/results.md")
    records = argparse.ArgumentParser(add_help=False)
    records.add_argument("--on-bad-record", choices=["error", "skip"], default="error", help="skip: drop malformed records and count them")
    er = ev.add_parser("rm", parents=[report], help="reward-model accuracy on preference pairs: prints {\"accuracy\", \"n\", ...}")
    er.add_argument("path", help="run dir, checkpoint, or step dir of a task: rm run")
    er.add_argument("--data", required=True, help="pairs file or glob (prompt/chosen/rejected, ranked lists, or hh-rlhf dialogues)")
    er.add_argument("--rows", default="", help="a slice of the records, e.g. 1200: (held-out part)")
    er.add_argument("--batch-size", type=int, default=16)
    er.add_argument("--seq-len", type=int, default=None, help="default: the run's data.seq_len; a longer pair has its prompt cut from the left (replies whole), counted in \"truncated\"")
    er.set_defaults(fn=cmd_eval_rm)

    ep = ev.add_parser("perplexity", parents=[records, report], help="token-level perplexity on held-out text: prints {\"perplexity\", \"nll\", \"tokens\", ...}")
    ep.add_argument("path", help="run dir, checkpoint, step dir or HF dir")
    ep.add_argument("--data", nargs="+", required=True, help="files or globs: pretraining text (jsonl/parquet/txt/ArrayRecord), or chat records with --task sft")
    ep.add_argument("--task", choices=["pretrain", "sft"], default="pretrain", help="sft: perplexity of the assistant replies only")
    ep.add_argument("--rows", default="", help="a slice of the documents / records, e.g. 90%%: (held-out part)")
    ep.add_argument("--batch-tokens", type=int, default=16384, help="tokens per scoring batch")
    ep.set_defaults(fn=cmd_eval_perplexity)

    em = ev.add_parser("exact-match", parents=[records, report], help="greedy answers to prompt records checked by a verifier: prints {\"accuracy\", \"n\", ...}")
    em.add_argument("path", help="run dir, checkpoint, step dir or HF dir")
    em.add_argument("--data", required=True, help="{\"prompt\", \"answer\"} or gsm8k {\"question\", \"answer\"} records (jsonl/json/parquet)")
    em.add_argument("--verifier", default="gsm8k_exact", help="exact (string equality), gsm8k_exact, arithmetic_exact, sort_exact or format")
    em.add_argument("--max-new-tokens", type=flag_type(SampleConfig, "max_new_tokens"), default=256)
    em.add_argument("--rows", default="", help="a slice of the records, e.g. 0:200")
    em.add_argument("--batch-size", type=int, default=16)
    em.set_defaults(fn=cmd_eval_exact_match)

    emc = ev.add_parser("mc", parents=[records, report], help="multiple choice by log-likelihood (MMLU format): prints {\"acc\", \"acc_norm\", \"n\", ...}")
    emc.add_argument("path", help="run dir, checkpoint, step dir or HF dir")
    emc.add_argument("--data", required=True, help="{\"question\", \"choices\", \"answer\": index or letter, \"subject\"?} records (jsonl/json/parquet)")
    emc.add_argument("--rows", default="", help="a slice of the records")
    emc.add_argument("--batch-tokens", type=int, default=16384, help="tokens per scoring batch")
    emc.set_defaults(fn=cmd_eval_mc)

    eh = ev.add_parser("harness", parents=[report], help="lm-evaluation-harness tasks (the [eval] extra): prints {\"tasks\": {task: {metric: value}}, ...}")
    eh.add_argument("path", help="run dir, checkpoint, step dir or HF dir")
    eh.add_argument("--tasks", required=True, help="comma-separated lm-eval task names or globs")
    eh.add_argument("--include-path", default="", help="a dir of extra task YAMLs")
    eh.add_argument("--limit", type=flag_type(HarnessConfig, "limit"), default=0, help="examples per task (0: all)")
    eh.add_argument("--num-fewshot", type=flag_type(HarnessConfig, "num_fewshot"), default=None)
    eh.add_argument("--batch-size", type=flag_type(HarnessConfig, "batch_size"), default=16, help="generation rows (scoring batches by tokens)")
    eh.add_argument("--apply-chat-template", action="store_true", help="render prompts with the run's data.chat_template")
    eh.add_argument("--fewshot-as-multiturn", action="store_true", help="few-shot examples as earlier chat turns")
    eh.set_defaults(fn=cmd_eval_harness)

    ew = ev.add_parser("win-rate", parents=[records, report], help="A against B, both greedy, judged by a reward model: prints {\"win_rate\", \"n\", ...}")
    ew.add_argument("--rm", required=True, help="reward model (a task: rm run)")
    ew.add_argument("--a", required=True, help="policy A (run, checkpoint, step or HF dir)")
    ew.add_argument("--b", required=True, help="policy B")
    ew.add_argument("--prompts", required=True, help="prompt records: {\"prompt\"}, gsm8k, Alpaca or hh-rlhf (jsonl/json/parquet)")
    ew.add_argument("--max-new-tokens", type=flag_type(SampleConfig, "max_new_tokens"), default=256)
    ew.add_argument("--rows", default="", help="a slice of the records")
    ew.add_argument("--batch-size", type=int, default=16)
    ew.set_defaults(fn=cmd_eval_win_rate)


def _add_data_tools(sub) -> None:
    """Adds `maxlm curate`, `select` and `synth`, whose own parsers live in data_pipelines."""
    c = sub.add_parser("curate", help="run a curation pipeline (see data_pipelines)", add_help=False)
    c.set_defaults(fn=cmd_curate)

    sl = sub.add_parser("select", help="select a subset of sft records: kcenter | perplexity | ifd | disagreement | rm_filter | folds", add_help=False)
    sl.set_defaults(fn=cmd_select)

    s = sub.add_parser("synth", help="synthetic data: self-instruct | constitutional (see data_pipelines.synth)", add_help=False)
    s.set_defaults(fn=cmd_synth)


def _skip_absent_tpu() -> None:
    """Keeps jax off the TPU backend when libtpu is installed (the [aot] extra) but no TPU is attached.

    Else every command probes for a TPU first: a screen of libtpu warnings, and /tmp/libtpu_lockfile
    taken, which fails the next process that wants libtpu (`maxlm compile` beside a training run).
    A GPU build of jax is left to choose for itself.
    """
    import glob
    import importlib.util

    if os.environ.get("JAX_PLATFORMS") or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return
    if importlib.util.find_spec("libtpu") is None or importlib.util.find_spec("jax_cuda12_plugin") is not None:
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI and returns the process exit code; bad input prints one line, no traceback."""
    _skip_absent_tpu()
    from maxlm.errors import BadRecordError, MaxlmError
    from maxlm.files.writable import check_writable_dir, place_error_line

    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    if argv[:1] in (["curate"], ["synth"], ["select"]):
        args, rest = p.parse_known_args(argv[:1])[0], argv[1:]
        call = lambda: args.fn(args, rest)
    else:
        args = p.parse_args(argv)
        call = lambda: args.fn(args)
    try:
        if args.command == "eval" and args.output:
            check_writable_dir(args.output, "--output")  # before the evaluation, not after it
        return call()
    except MaxlmError as e:
        if isinstance(e, BadRecordError) and hasattr(args, "on_bad_record"):
            e = e.hinting("pass --on-bad-record skip")
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        line = place_error_line(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
