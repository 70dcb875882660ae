"""`synth self-instruct ...` and `synth constitutional ...`: synthetic sft and preference data
sampled from a maxlm run, checkpoint or HF model dir. Wired as `maxlm synth ...`; holds no
logic of its own. Rerun the same command to resume.
"""

from __future__ import annotations

import argparse

from data_pipelines.cli import run_command
from maxlm.config import SampleConfig, flag_type


def _sampling(p: argparse.ArgumentParser, temperature: float, max_new_tokens: int, template: str | None) -> None:
    p.add_argument("--model", required=True, help="maxlm run dir, checkpoint dir or Hugging Face model dir")
    p.add_argument("--batch-size", type=int, default=8, help="prompts sampled together")
    p.add_argument("--max-new-tokens", type=flag_type(SampleConfig, "max_new_tokens"), default=max_new_tokens)
    p.add_argument("--temperature", type=flag_type(SampleConfig, "temperature"), default=temperature)
    p.add_argument("--top-k", type=flag_type(SampleConfig, "top_k"), default=0)
    p.add_argument("--top-p", type=flag_type(SampleConfig, "top_p"), default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-template", default=template,
                   help="render prompts with this chat template (default, llama3, chatml, hf)"
                   + ("" if template else "; without one the prompt is raw text to continue (a base model)"))
    p.add_argument("--stop", action="append", default=[], help="cut completions at this text (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synth", description="Generate synthetic sft and preference data with a model.")
    sub = p.add_subparsers(dest="method", required=True)
    s = sub.add_parser("self-instruct", help="new instruction tasks from sampled seed tasks (Self-Instruct / Alpaca)")
    s.add_argument("--seeds", required=True, help="JSONL seed tasks, e.g. Alpaca's seed_tasks.jsonl")
    s.add_argument("--num-tasks", type=int, required=True, help="stop when the output holds this many tasks")
    s.add_argument("--output", required=True, help="JSONL output (appended; a progress file is kept beside it)")
    s.add_argument("--rouge-threshold", type=float, default=0.7, help="drop tasks whose ROUGE-L to any pool task reaches this")
    s.add_argument("--prompt-seeds", type=int, default=6, help="seed tasks shown per prompt")
    s.add_argument("--prompt-machine", type=int, default=2, help="machine tasks shown per prompt, once there are that many")
    s.add_argument("--patience", type=int, default=10, help="stop after this many batches in a row keep nothing")
    _sampling(s, temperature=1.0, max_new_tokens=1024, template=None)
    c = sub.add_parser("constitutional", help="critique and revise answers against principles (Constitutional AI)")
    c.add_argument("--prompts", required=True, help="prompt records: {'prompt'}, gsm8k, Alpaca or hh-rlhf (jsonl, json, parquet)")
    c.add_argument("--principles", default="configs/synth/principles.yaml")
    c.add_argument("--sft-output", required=True, help="JSONL sft records (revised answers)")
    c.add_argument("--pairs-output", required=True, help="JSONL preference pairs (revised chosen over original)")
    _sampling(c, temperature=0.7, max_new_tokens=512, template="default")
    return p


def _completer(args):
    """Returns a completion function that loads the model on its first call (a finished run loads nothing)."""
    from data_pipelines.synth.generate import ModelCompleter
    from maxlm.pretrained import from_pretrained

    loaded = []

    def complete(prompts):
        if not loaded:
            loaded.append(ModelCompleter(
                from_pretrained(args.model), template=args.chat_template, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, batch_size=args.batch_size,
                seed=args.seed, stop=args.stop,
            ))
        return loaded[0](prompts)

    return complete


def _self_instruct(args, log) -> dict:
    from data_pipelines.synth.rouge import rouge_tokenizer
    from data_pipelines.synth.self_instruct import SelfInstructConfig, load_seeds, self_instruct

    cfg = SelfInstructConfig(
        num_tasks=args.num_tasks, prompts_per_batch=args.batch_size, seed=args.seed, rouge_threshold=args.rouge_threshold,
        prompt_seeds=args.prompt_seeds, prompt_machine=args.prompt_machine, patience=args.patience,
    )
    seeds = load_seeds(args.seeds)
    rouge_tokenizer()  # a missing extra is reported before the model loads
    return self_instruct(seeds, _completer(args), args.output, cfg, log)


def _constitutional(args, log) -> dict:
    from data_pipelines.synth.constitutional import constitutional, load_principles, read_prompts

    principles = load_principles(args.principles)
    prompts = read_prompts(args.prompts)
    return constitutional(prompts, principles, _completer(args), args.sft_output, args.pairs_output,
                          batch_size=args.batch_size, seed=args.seed, log=log)


def _run(args: argparse.Namespace, log) -> str:
    """Returns the summary line of a synth command."""
    summary = (_self_instruct if args.method == "self-instruct" else _constitutional)(args, log)
    removed = ", ".join(f"{k} {v}" for k, v in summary["removed"].items()) or "none"
    return f"{args.method}: {summary['generated']} generated -> {summary['kept']} kept; removed: {removed}"


def main(argv: list[str]) -> int:
    """Runs a synth command; returns the process exit code (0 ok, 2 bad input)."""
    return run_command("synth", argv, _parser(), _run)
