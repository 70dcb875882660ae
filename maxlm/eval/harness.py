"""maxlm as an lm-evaluation-harness backend: `--model maxlm --model_args path=RUN_OR_CKPT_OR_HF_DIR`.

`MaxlmLM` answers lm-eval's three request kinds with maxlm's own parts: `loglikelihood` and
`loglikelihood_rolling` with the one scorer (`Scorer.loglikelihoods`, length-bucketed batches
under the model's mesh), `generate_until` with the one batched generation (its `until` strings
cut the decoded text). Text is read as lm-eval's `hf` model reads it: context and continuation
split as TemplateLM splits them, a context cut from the left to fit, rolling windows from lm-eval's
own window helper, BOS first when `add_bos_token` (default: the run's data.add_bos), so figures
match `--model hf` on the run's HF export with `add_bos_token=True` (tested).

Every process of a multi-process run answers every request (lm-eval sees one process): the
scorer and the sampler are collectives over the whole mesh, so all processes must make the same calls.

lm-eval's console script finds only its built-in models; `python -m maxlm.eval.harness ARGS`
registers this one and then runs lm-eval's own CLI with ARGS.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from maxlm.config import Config, HarnessConfig
from maxlm.data import chat
from maxlm.errors import MaxlmError
from maxlm.infer.pretrained import Pretrained, from_pretrained
from maxlm.infer.scoring import Scorer
from maxlm.train.loop import StepEval

try:
    import lm_eval
    import lm_eval.models  # (registers the built-in models: lm-eval does so itself only into an empty registry)
    from lm_eval import evaluator
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import model_registry
    from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:
    raise MaxlmError("lm-evaluation-harness is not installed: pip install 'maxlm[eval]'") from None

DEFAULT_MAX_GEN_TOKS = 256  # as lm-eval's hf model
log = logging.getLogger(__name__)


class MaxlmLM(TemplateLM):
    """An lm-eval LM over a maxlm model: `path` (a run, checkpoint or HF dir) or an already loaded `model`."""

    def __init__(self, path: str | None = None, pretrained: str | None = None, model: Pretrained | None = None,
                 batch_size: int | str = 16, batch_tokens: int = 16384, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 add_bos_token: bool | None = None, dtype: str | None = None, seed: int = 0, **ignored: Any):
        super().__init__()
        # lm-eval passes its own CLI's device and max_batch_size to every model; JAX places this one.
        unknown = sorted(set(ignored) - {"device", "max_batch_size"})
        if unknown:
            raise MaxlmError(f"--model maxlm: unknown model_args {', '.join(unknown)} (valid: path, batch_size, batch_tokens, "
                             "max_gen_toks, add_bos_token, dtype, seed)")
        if model is None:
            where = path or pretrained
            if not where:
                raise MaxlmError("--model maxlm needs --model_args path=RUN_OR_CKPT_OR_HF_DIR")
            model = from_pretrained(where, dtype=dtype)
        self.model = model
        self.scorer = Scorer(model, int(batch_tokens))
        self.rows = _rows(batch_size)
        self._max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        tok = model.tokenizer
        self.add_bos = (model.config.data.add_bos if add_bos_token is None else bool(add_bos_token)) and tok.bos_id >= 0
        self.chat = False  # lm-eval applies the chat template (set by its first apply_chat_template call)

    @property
    def eot_token_id(self) -> int:
        return self.model.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        # What an empty context and the first rolling window condition on: BOS, else EOS (as lm-eval's hf).
        tok = self.model.tokenizer
        return tok.bos_id if tok.bos_id >= 0 else tok.eos_id

    @property
    def max_length(self) -> int:
        return self.model.config.model.max_seq_len

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.model.tokenizer, "path", "") or self.model.name).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """Returns the Jinja form of the run's chat template (data.chat_template), for lm-eval's records."""
        if chat_template is False or chat_template is None:
            return None
        if self.model.template == "hf":
            return getattr(getattr(self.model.tokenizer, "_tok", None), "chat_template", None)
        return chat.jinja_template(self.model.template)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Returns the conversation rendered by the run's chat template (data.chat_template), BOS/EOS shown as text."""
        history, tail = list(chat_history), ""
        if not add_generation_prompt and history and history[-1]["role"] == "assistant":
            # lm-eval's answer prefix (gen_prefix): the reply is continued, not closed, as its hf model does
            history, tail = history[:-1], history[-1]["content"]
        self.chat = True
        return chat.render_chat(self.model.tokenizer, self.model.template, history, add_generation_prompt or bool(tail)) + tail

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Returns the ids of `string`, BOS first when add_special_tokens (None: add_bos_token) says so.

        With chat templates applied, the rendered BOS/EOS pieces become their ids and the text between
        them is encoded piece by piece, as an HF tokenizer reads its special tokens: a generation prompt
        gets the ids SFT trained on (`chat.encode_prompt`), and what follows it the hf model's ids.
        """
        tok = self.model.tokenizer
        if self.chat:
            return chat.encode_rendered(tok, string)
        bos = self.add_bos if add_special_tokens is None else add_special_tokens and tok.bos_id >= 0
        return ([tok.bos_id] if bos else []) + tok.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Returns (log p, greedy) of each ((context, continuation), context ids, continuation ids) request."""
        logp, greedy = self.scorer.loglikelihoods([r[1] for r in requests], [r[2] for r in requests])
        out = [(float(lp), bool(g)) for lp, g in zip(logp, greedy)]
        for (key, _, _), answer in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Returns each string's log-likelihood, scored in disjoint windows of max_length tokens (all windows in one batched call)."""
        windows, owner = [], []
        for i, (string,) in enumerate(r.args for r in requests):
            ids = self.tok_encode(string)
            for w in get_rolling_token_windows(ids, self.prefix_token_id, self.max_length, context_len=1):
                windows.append(make_disjoint_window(w))
                owner.append(i)
        logp, _ = self.scorer.loglikelihoods([c for c, _ in windows], [p for _, p in windows])
        totals = [0.0] * len(requests)
        for i, lp in zip(owner, logp):
            totals[i] += float(lp)
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Returns each request's generation, cut before the first of its `until` strings; one batched generation per distinct gen_kwargs."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        for members in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
            texts = self._generate([requests[i].args[0] for i in members], kwargs)
            for i, text in zip(members, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generate(self, contexts: Sequence[str], kwargs: dict) -> list[str]:
        """Returns the generations of `contexts` under one set of normalized gen_kwargs."""
        until = kwargs.pop("until") or []
        max_new = int(kwargs.pop("max_gen_toks"))
        room = self.max_length - max_new
        if room < 1:
            raise MaxlmError(f"max_gen_toks={max_new} leaves no room for a context in model.max_seq_len={self.max_length}")
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        top_k, top_p = int(kwargs.pop("top_k", 0) or 0), float(kwargs.pop("top_p", 1.0) or 1.0)
        if kwargs:
            log.warning("--model maxlm: ignoring generation kwargs it does not implement: %s", ", ".join(sorted(kwargs)))
        ids = [self.tok_encode(c)[-room:] or [self.prefix_token_id] for c in contexts]
        # One sampler shape for the whole group: prompts padded to a power of two, rows one too.
        pad_to = min(_pow2_ceil(max(map(len, ids))), room)
        rows = min(self.rows, _pow2_ceil(len(ids)))
        # A chat prompt's reply ends at the template's end-of-turn marker, as the sampler stops for SFT runs.
        eos = [self.eot_token_id] if self.eot_token_id >= 0 else []
        if self.chat:
            eos = chat.stop_ids(self.model.tokenizer, self.model.template)
        done = self.model.generate_batched(ids, max_new, stop_ids=eos, batch_size=rows, prompt_len=pad_to,
                                           temperature=temperature, top_k=top_k, top_p=top_p, seed=self.seed)
        return [postprocess_generated_text(t, until, None) for t in done.texts]


# By import path, not by class: run as `python -m`, this file is also `__main__`, and both copies register the same name.
model_registry.register("maxlm", target="maxlm.eval.harness:MaxlmLM")


def _rows(batch_size: int | str) -> int:
    """Returns the generation batch rows of lm-eval's batch_size ("auto" and "auto:N" mean the default, 16)."""
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        return 16
    try:
        rows = int(batch_size)
    except ValueError:
        raise MaxlmError(f"--batch-size must be a positive integer or auto, got {batch_size!r}") from None
    if rows < 1:
        raise MaxlmError(f"--batch-size must be a positive integer or auto, got {batch_size!r}")
    return rows


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


# ---------------------------------------------------------------- running tasks


def task_manager(tasks: Sequence[str], include_path: str = "", setting: str = "--include-path") -> TaskManager:
    """Returns a TaskManager that knows every name in `tasks`; MaxlmError naming the unknown ones (checked before any model loads)."""
    if include_path and not Path(include_path).is_dir():
        raise MaxlmError(f"{setting} {include_path}: not a directory (expected a dir of lm-eval task YAMLs)")
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):  # local tasks only: skip indexing lm-eval's ~15k built-in ones
            return local
    manager = TaskManager(include_path=include_path or None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        where = f" (built-in or in {include_path})" if include_path else f" (built-in; {setting} adds a dir of task YAMLs)"
        raise MaxlmError(f"lm-eval tasks not found{where}: {', '.join(unknown)}")
    return manager


def run_tasks(lm: MaxlmLM, tasks: Sequence[str], manager: TaskManager, limit: int = 0, num_fewshot: int | None = None,
              log_samples: bool = False, apply_chat_template: bool = False, fewshot_as_multiturn: bool = False) -> dict:
    """Returns lm-eval's results dict of `tasks` answered by `lm`."""
    if not tasks:
        raise MaxlmError("no lm-eval tasks given (--tasks a,b or train.eval_harness.tasks)")
    if fewshot_as_multiturn and not apply_chat_template:
        raise MaxlmError("fewshot_as_multiturn needs apply_chat_template (few-shot turns are chat turns)")
    return evaluator.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit or None, num_fewshot=num_fewshot,
        log_samples=log_samples, bootstrap_iters=0, verbosity="WARNING",
        apply_chat_template=apply_chat_template, fewshot_as_multiturn=fewshot_as_multiturn,
    )


def task_metrics(results: dict) -> dict[str, dict[str, float]]:
    """Returns {task: {metric: value}} of lm-eval results: `acc,none` becomes `acc`, another filter `metric_filter`, stderrs dropped."""
    out = {}
    for task, row in results["results"].items():
        metrics = {}
        for key, value in row.items():
            name, _, filt = key.partition(",")
            if filt and "_stderr" not in name and isinstance(value, (int, float)):
                metrics[name if filt == "none" else f"{name}_{filt}"] = float(value)
        out[task] = metrics | {"n": int(results.get("n-samples", {}).get(task, {}).get("effective", 0))}
    return out


def harness(path: str, tasks: Sequence[str], include_path: str = "", limit: int = 0, num_fewshot: int | None = None,
            batch_size: int = 16, apply_chat_template: bool = False, fewshot_as_multiturn: bool = False) -> dict:
    """Returns {"tasks": {task: {metric: value, "n"}}, "lm_eval": version, ...}: `maxlm eval harness`'s result."""
    manager = task_manager(tasks, include_path)
    lm = MaxlmLM(path=path, batch_size=batch_size)
    results = run_tasks(lm, tasks, manager, limit, num_fewshot, apply_chat_template=apply_chat_template,
                        fewshot_as_multiturn=fewshot_as_multiturn)
    return {"model": path, "limit": limit, "num_fewshot": num_fewshot, "apply_chat_template": apply_chat_template,
            "lm_eval": lm_eval.__version__, "tasks": task_metrics(results)}


def train_step_evals(cfg: Config) -> list[StepEval]:
    """Returns the step evaluation train.eval_harness asks for (none when it names no tasks)."""
    h = cfg.train.eval_harness
    return [StepEval(h.every, harness_step(h))] if h.tasks else []


def harness_step(cfg: HarnessConfig) -> Callable[[Pretrained], dict[str, float]]:
    """Returns the evaluation of a training run's live model on cfg's tasks: {"harness/<task>/<metric>": value}.

    The task names are checked now, before the run compiles anything; the LM is built at the first
    call and reused (with the new params) at later ones, so its scorer compiles once.
    """
    manager = task_manager(cfg.tasks, cfg.include_path, "train.eval_harness.include_path")
    held: dict[str, MaxlmLM] = {}

    def evaluate(model: Pretrained) -> dict[str, float]:
        if "lm" not in held:
            held["lm"] = MaxlmLM(model=model, batch_size=cfg.batch_size)
        lm = held["lm"]
        lm.model.params = model.params
        results = run_tasks(lm, cfg.tasks, manager, cfg.limit, cfg.num_fewshot or None, apply_chat_template=cfg.apply_chat_template,
                            fewshot_as_multiturn=cfg.fewshot_as_multiturn)
        return {f"harness/{task}/{name}": v for task, row in task_metrics(results).items() for name, v in row.items() if name != "n"}

    return evaluate


def main() -> None:
    """Runs lm-eval's own CLI (`lm_eval ARGS`) with `--model maxlm` registered."""
    try:
        cli_evaluate()
    except MaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
