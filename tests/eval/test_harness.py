"""`--model maxlm` in lm-evaluation-harness against lm-eval's own `--model hf` on the run's HF export, on local tasks."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import yaml

pytest.importorskip("lm_eval")
pytest.importorskip("torch")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lm_eval import evaluator

import maxlm
from maxlm.ckpt.hf import export_hf
from maxlm.ckpt.manager import Checkpoints
from maxlm.eval.harness import task_manager

QUESTIONS = [
    ("Which function wraps a paragraph?", ["wrap", "the fill function", "dedent"], 0),
    ("What does dedent remove?", ["common leading whitespace", "nothing", "every newline", "the last word"], 2),
    ("Which word is a verb?", ["fill", "paragraph", "width"], 1),
    ("What is a template?", ["a string with placeholders", "a number"], 0),
]
PROMPTS = ["The text", "def wrap(", "Return a", "import string", "class Template", "width of the"]
TASKS = ["mx_mc", "mx_ppl", "mx_gen"]


@pytest.fixture(scope="module")
def run(runs, sp_model, tmp_path_factory):
    """Returns the random pretrain run with its head's columns of byte, unknown and BOS pieces zeroed (EOS kept).

    Random weights otherwise pick byte pieces that form invalid UTF-8, which sentencepiece decodes
    byte by byte and HF's ByteFallback decoder as one replacement character per byte: the same ids, other text.
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    odd = [i for i in range(sp.get_piece_size()) if sp.IsByte(i) or sp.IsUnknown(i) or (sp.IsControl(i) and i != sp.eos_id())]
    model = maxlm.from_pretrained(runs["pretrain"])
    params = jax.tree.map(np.asarray, model.params)
    params["lm_head"] = params["lm_head"].copy()
    params["lm_head"][:, odd] = 0.0  # logit 0: below the largest random logit of every position
    cfg = dataclasses.replace(model.config, run_dir=str(tmp_path_factory.mktemp("harness") / "run"))
    ckpts = Checkpoints(cfg.run_dir, async_save=False)
    ckpts.save(1, params, cfg)
    ckpts.close()
    return cfg.run_dir


def write_task(root, name: str, records: list[dict], **config) -> None:
    """Writes task `name`: its records as root/name.jsonl and its lm-eval YAML (dataset_path: json) as root/name.yaml."""
    (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(root / f"{name}.jsonl")}},
           "test_split": "test", **config}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))


def write_tasks(root, answers: list[str]) -> None:
    """Writes the multiple-choice, rolling-perplexity and generate_until (exact match) tasks."""
    write_task(root, "mx_mc", [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
               output_type="multiple_choice", doc_to_text="Question: {{question}}\nAnswer:", doc_to_choice="{{choices}}",
               doc_to_target="{{answer}}", metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])
    docs = [os.path.__doc__ or "", json.__doc__ or "", "Short text."]  # two docs longer than the 64-token context: several windows
    write_task(root, "mx_ppl", [{"text": d[:1200]} for d in docs], output_type="loglikelihood_rolling", doc_to_text="",
               doc_to_target="{{text}}", metric_list=[{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")])
    write_task(root, "mx_gen", [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, answers)], output_type="generate_until",
               doc_to_text="{{prompt}}", doc_to_target="{{answer}}",
               generation_kwargs={"until": ["\n", "."], "max_gen_toks": 12, "do_sample": False},
               metric_list=[{"metric": "exact_match"}])


def evaluate(model: str, model_args: dict, root, tasks=TASKS, chat: bool = False) -> dict:
    """Returns lm-eval's results (samples logged) of `tasks` in root, prompts rendered by the chat template when `chat`."""
    manager = task_manager(tasks, str(root))
    return evaluator.simple_evaluate(model=model, model_args=model_args, tasks=tasks, task_manager=manager, log_samples=True,
                                     bootstrap_iters=0, verbosity="WARNING", apply_chat_template=chat)


def responses(results: dict, task: str) -> list:
    """Returns the filtered responses of a task's samples, by doc id."""
    return [s["filtered_resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_maxlm_backend_matches_lm_evals_hf_model_on_the_export(run, tmp_path):
    hf_dir = export_hf(run, tmp_path / "hf")
    hf_args = {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu", "add_bos_token": True, "batch_size": 4}
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    # The gold answers: what the hf model generates for every other prompt, so that exact match is neither 0 nor 1.
    write_tasks(tasks, ["?"] * len(PROMPTS))
    greedy = [r[0] for r in responses(evaluate("hf", hf_args, tasks, ["mx_gen"]), "mx_gen")]
    assert len(set(greedy)) > 2, greedy  # random weights still give varied completions
    write_tasks(tasks, [g if i % 2 == 0 else g + "x" for i, g in enumerate(greedy)])

    ours = evaluate("maxlm", {"path": str(run), "batch_size": 4}, tasks)
    hf = evaluate("hf", hf_args, tasks)
    assert_same_figures(ours, hf, TASKS)
    # rolling sums (hundreds of f32 token log-probs, down to -6000) within 1e-6 relative
    np.testing.assert_allclose(np.ravel(responses(ours, "mx_ppl")), np.ravel(responses(hf, "mx_ppl")), rtol=1e-6)


def assert_same_figures(ours: dict, hf: dict, tasks: list[str]) -> None:
    """Asserts equal metrics, exact match 0.5, multiple-choice log-likelihoods within 1e-4 with the same greedy flags,
    and the same generated strings."""
    for task in tasks:
        for metric, value in hf["results"][task].items():
            if metric != "alias":
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, metric)
    assert ours["results"]["mx_gen"]["exact_match,none"] == 0.5
    for a, b in zip(responses(ours, "mx_mc"), responses(hf, "mx_mc")):
        np.testing.assert_allclose([ll for ll, _ in a], [ll for ll, _ in b], atol=1e-4)
        assert [g for _, g in a] == [g for _, g in b]
    assert responses(ours, "mx_gen") == responses(hf, "mx_gen")



@pytest.fixture(scope="module")
def chat_run(run, tmp_path_factory):
    """Returns the same weights saved as an SFT run: its export carries the run's chat template (default)."""
    model = maxlm.from_pretrained(run)
    cfg = dataclasses.replace(model.config, task="sft", run_dir=str(tmp_path_factory.mktemp("chat") / "run"))
    ckpts = Checkpoints(cfg.run_dir, async_save=False)
    ckpts.save(1, jax.tree.map(np.asarray, model.params), cfg)
    ckpts.close()
    return cfg.run_dir


def test_apply_chat_template_matches_lm_evals_hf_model_on_the_export(chat_run, tmp_path):
    hf_dir = export_hf(chat_run, tmp_path / "hf")
    hf_args = {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu", "batch_size": 4}
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    chat_tasks = ["mx_mc", "mx_gen"]
    write_tasks(tasks, ["?"] * len(PROMPTS))
    greedy = [r[0] for r in responses(evaluate("hf", hf_args, tasks, ["mx_gen"], chat=True), "mx_gen")]
    write_tasks(tasks, [g if i % 2 == 0 else g + "x" for i, g in enumerate(greedy)])

    ours = evaluate("maxlm", {"path": str(chat_run), "batch_size": 4}, tasks, chat_tasks, chat=True)
    hf = evaluate("hf", hf_args, tasks, chat_tasks, chat=True)
    # the same rendered prompts: the export's tokenizer renders the run's template as maxlm does
    for task in chat_tasks:
        ours_args = [s["arguments"] for s in sorted(ours["samples"][task], key=lambda s: s["doc_id"])]
        hf_args_seen = [s["arguments"] for s in sorted(hf["samples"][task], key=lambda s: s["doc_id"])]
        assert ours_args == hf_args_seen, task
        assert all("<|user|>" in str(a) for a in ours_args)
    assert_same_figures(ours, hf, chat_tasks)
