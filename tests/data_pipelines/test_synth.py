"""`synth self-instruct` and `synth constitutional`: prompts, parsing, filters and outputs checked
with scripted completion functions (text standing in for a model's), ROUGE-L against
rouge-score itself, and both commands run end to end on a tiny random-init maxlm model."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

from data_pipelines.synth import cli as synth_cli  # noqa: E402
from data_pipelines.synth.constitutional import (  # noqa: E402
    constitutional, load_principles, pick_principle, prompt_id, read_prompts,
)
from data_pipelines.synth.generate import Completion, ModelCompleter, cut_at_stops  # noqa: E402
from data_pipelines.synth.outputs import progress_path  # noqa: E402
from data_pipelines.synth.rouge import RougePool  # noqa: E402
from data_pipelines.synth.self_instruct import (  # noqa: E402
    PREAMBLE, SelfInstructConfig, Task, build_prompt, format_reason, format_task, load_seeds, parse_tasks,
    sample_examples, self_instruct,
)
from maxlm.data.records import read_records  # noqa: E402
from maxlm.errors import MaxlmError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PRINCIPLES = REPO / "configs" / "synth" / "principles.yaml"
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(a: str, b: str) -> float:
    return SCORER.score(a, b)["rougeL"].fmeasure


@pytest.fixture(scope="module")
def seeds(shared_data) -> list[Task]:
    return load_seeds(shared_data / "sft" / "alpaca_seed_tasks.jsonl")


# A continuation as a model writes it after the prompt's open "7. Instruction:" header.
MODEL_OUTPUT = """ Suggest a name for a bakery that sells only gluten-free bread.
7. Input:
<noinput>
7. Output:
Crumb & Clover
###
8. Instruction: Classify the sentiment of the restaurant review as positive or negative.
8. Input:
The soup was cold and the waiter ignored us for an hour.
8. Output:
Negative
###
9. Instruction: Rewrite the sentence in the passive voice.
9. Input:
The committee approved the new budget.
9. Output:
The new budget was approved by the committee.
###
10. Instruction: Explain why the sky looks blue.
10. Input:
<noinput>
10. Output:
###
11. Instruction: Give three"""

PARSED = [
    Task("Suggest a name for a bakery that sells only gluten-free bread.", "", "Crumb & Clover"),
    Task("Classify the sentiment of the restaurant review as positive or negative.",
         "The soup was cold and the waiter ignored us for an hour.", "Negative"),
    Task("Rewrite the sentence in the passive voice.", "The committee approved the new budget.",
         "The new budget was approved by the committee."),
]


# ---------------------------------------------------------------- self-instruct: seeds, prompt, parse


def test_real_seed_file_parses(seeds):
    assert len(seeds) == 175
    assert seeds[1] == Task("What is the relation between the given pairs?", "Night : Day :: Right : Left",
                            "The relation between the given pairs is that they are opposites.")
    # The prompt layout round-trips: every seed task formatted and parsed back is itself.
    text = "".join(format_task(i, t) for i, t in enumerate(seeds, 1))
    assert parse_tasks(text, 1) == seeds


def test_prompt_lists_sampled_seeds_numbered(seeds):
    cfg = SelfInstructConfig(num_tasks=10, prompt_seeds=4, prompt_machine=2)
    machine = [Task("Name a mammal that lays eggs.", "", "The platypus."), Task("Spell the word backwards.", "stone", "enots")]
    shown = sample_examples(np.random.default_rng(0), seeds, machine, cfg)
    assert len(shown) == 6 and set(shown[4:]) == set(machine) and all(t in seeds for t in shown[:4])
    prompt = build_prompt(shown, 20)
    assert prompt.startswith(PREAMBLE.format(total=20, no_input="<noinput>"))
    for i, t in enumerate(shown, 1):
        assert f"{i}. Instruction: {t.instruction}\n{i}. Input:\n{t.input or '<noinput>'}\n{i}. Output:\n{t.output}\n###\n" in prompt
    assert prompt.endswith("###\n7. Instruction:")
    # Too few machine tasks yet: seeds only.
    assert len(sample_examples(np.random.default_rng(0), seeds, machine[:1], cfg)) == 4


def test_parse_numbered_model_output():
    # Task 10 has an empty output; 11 never got its fields.
    assert parse_tasks(MODEL_OUTPUT, 7) == PARSED + [None, None]
    # A chat model's reply starts with a header of its own, which is not doubled.
    assert parse_tasks("8. Instruction:" + MODEL_OUTPUT.split("8. Instruction:", 1)[1], 99) == PARSED[1:] + [None, None]
    # A field given twice makes the block unreadable.
    assert parse_tasks(" Do it.\n1. Output:\nA\n1. Output:\nB\n", 1) == [None]


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize("instruction, reason", [
    ("Sum numbers.", "too_short"),
    (" ".join(["word"] * 151), "too_long"),
    ("Draw a cat sitting on a mat.", "blocked_word"),
    ("Describe the picture in one sentence.", "blocked_word"),
    ("Open the attached file and count the lines.", "blocked_word"),
    ("Plot the sales numbers for the last year.", "blocked_word"),
    ("Go to the store and buy some milk.", "blocked_word"),
    ("- List three fruits that are red.", "punctuation_start"),
    ('"Translate this sentence into German," he said.', "punctuation_start"),
    ("¿Cuál es la capital de Francia hoy?", "non_english_start"),
    ("Écris une phrase sur la mer.", "non_english_start"),
    ("Summarize the user's profile in two sentences.", None),  # "file" inside a word is no file
    ("Explain the mapping between keys and values in a dictionary.", None),
])
def test_format_filters(instruction, reason):
    assert format_reason(Task(instruction, "", "x")) == reason


def test_rouge_l_matches_rouge_score(seeds):
    pool = RougePool(t.instruction for t in seeds)
    rng = np.random.default_rng(0)
    words = "the a list of give write three sentence following people each one for name".split()
    queries = [" ".join(rng.choice(words, rng.integers(0, 14))) for _ in range(20)] + [t.instruction for t in seeds[:5]]
    for q in queries:
        want = np.array([rouge_l(t.instruction, q) for t in seeds])
        np.testing.assert_allclose(pool.scores(q), want, rtol=0, atol=1e-12)


def test_missing_rouge_score_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # as if not installed
    with pytest.raises(MaxlmError, match=re.escape("pip install 'maxlm[synth]'")):
        RougePool(["a task"])


def test_rouge_filter_drops_paraphrase_keeps_novel(seeds, tmp_path):
    seed = "Generate a one-sentence description for each of the following people."
    assert seed in [t.instruction for t in seeds]
    paraphrase = "Generate a one-sentence description for each of these famous people."
    novel = "Rewrite the sentence in the passive voice."
    best = lambda q: max(rouge_l(t.instruction, q) for t in seeds)  # noqa: E731
    assert best(paraphrase) >= 0.7 > best(novel)
    pool = RougePool(t.instruction for t in seeds)
    assert pool.best(paraphrase) == (pytest.approx(best(paraphrase), abs=1e-12), [t.instruction for t in seeds].index(seed))

    reply = "".join(format_task(i, Task(text, "", "Done.")) for i, text in enumerate(
        [paraphrase, novel, novel.upper(), "Draw a map of your town.", "Name three primary colors."], 7))
    out = tmp_path / "tasks.jsonl"
    summary = self_instruct(seeds, lambda prompts: [reply] + [""] * (len(prompts) - 1), out,
                            SelfInstructConfig(num_tasks=2, prompts_per_batch=2), log=lambda _: None)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in records] == [novel, "Name three primary colors."]
    assert records[0]["rouge_l"] == pytest.approx(best(novel), abs=1e-4)
    assert summary == {"generated": 5, "kept": 2, "batches": 1,
                       "removed": {"similar": 1, "duplicate": 1, "blocked_word": 1}}
    # Written records are sft records as maxlm train reads them (the Alpaca adapter).
    chats, _ = read_records(str(out), "sft")
    assert chats[0].messages[-1] == {"role": "assistant", "content": "Done."}


# ---------------------------------------------------------------- self-instruct: the run


NOVEL = ["Write a haiku about autumn leaves.", "Explain to a child how the gears of a bicycle work.",
         "Suggest three names for a pet turtle.", "Convert the temperature from Celsius to Fahrenheit.",
         "Recommend a board game for four players who like strategy.", "Tell me a fun fact about octopuses."]


def scripted_tasks(start: int):
    """Returns a completion function writing one new task twice per prompt, and its call log."""
    calls = []
    novel = iter(NOVEL[start:])

    def complete(prompts):
        calls.append(list(prompts))
        tasks = [Task(next(novel), "", "An answer.") for _ in prompts]
        return [format_task(7, t) + format_task(8, t) for t in tasks]

    return complete, calls


def test_self_instruct_resumes_where_it_stopped(seeds, tmp_path):
    out = tmp_path / "tasks.jsonl"
    complete, calls = scripted_tasks(0)
    cfg = SelfInstructConfig(num_tasks=3, prompts_per_batch=2)
    first = self_instruct(seeds, complete, out, cfg, log=lambda _: None)
    # Per prompt one task twice: one kept, one duplicate; the target stops within the second batch.
    assert first == {"generated": 5, "kept": 3, "batches": 2, "removed": {"duplicate": 2}}
    assert len(calls) == 2 and all(len(c) == 2 for c in calls)
    # A crash mid-write leaves a torn line; the rerun cuts it and goes on to the new target.
    with open(out, "a") as f:
        f.write('{"instruction": "half a rec')
    logs = []
    complete, calls = scripted_tasks(3)
    second = self_instruct(seeds, complete, out, SelfInstructConfig(num_tasks=5, prompts_per_batch=2), log=logs.append)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in records] == NOVEL[:5]
    assert [r["id"] for r in records] == [f"self_instruct_{i:06d}" for i in range(5)]
    assert second == {"generated": 5 + 3, "kept": 5, "batches": 3, "removed": {"duplicate": 3}}
    assert any("incomplete last line" in m for m in logs)
    # The kept machine tasks are shown in later prompts.
    assert any(t in p for t in NOVEL[:3] for p in calls[0])
    assert json.loads(progress_path(out).read_text())["batches"] == 3


def test_self_instruct_gives_up_on_a_model_that_cannot(seeds, tmp_path):
    logs = []
    summary = self_instruct(seeds, lambda ps: ["lorem ipsum"] * len(ps), tmp_path / "o.jsonl",
                            SelfInstructConfig(num_tasks=5, prompts_per_batch=3, patience=2), log=logs.append)
    assert summary == {"generated": 6, "kept": 0, "batches": 2, "removed": {"malformed": 6}}
    assert "stopping: 2 batches in a row" in logs[-1]


def test_truncated_completion_drops_its_last_task(seeds, tmp_path):
    text = Completion(MODEL_OUTPUT.rsplit("10. Instruction:", 1)[0], truncated=True)  # ends after task 9's output
    summary = self_instruct(seeds, lambda ps: [text] * len(ps), tmp_path / "o.jsonl",
                            SelfInstructConfig(num_tasks=5, prompts_per_batch=1, patience=1), log=lambda _: None)
    # Tasks 7 and 8 kept, 9 dropped; the second batch repeats them (duplicates) and the run stops.
    assert summary == {"generated": 6, "kept": 2, "batches": 2, "removed": {"truncated": 2, "duplicate": 2}}


def test_unreadable_earlier_output_names_file_and_line(seeds, tmp_path):
    out = tmp_path / "tasks.jsonl"
    out.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": \n')
    with pytest.raises(MaxlmError, match=re.escape(f"{out}:2: invalid JSON")):
        self_instruct(seeds, lambda ps: [], out, SelfInstructConfig(num_tasks=5), log=lambda _: None)


def test_bad_seed_line_names_file_and_line(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "seeds.jsonl"
    good = json.dumps({"instruction": "Name a color.", "instances": [{"input": "", "output": "Red."}]})
    bad.write_text(good + "\n\n" + '{"instruction": "Name a fruit.", "instances": [}\n')
    with pytest.raises(MaxlmError, match=re.escape(f"{bad}:3: invalid JSON")):
        load_seeds(bad)
    bad.write_text(good + "\n" + json.dumps({"name": "x", "instances": [{"input": "", "output": "y"}]}) + "\n")
    with pytest.raises(MaxlmError, match=re.escape(f"{bad}:2: expected a non-empty string 'instruction'")):
        load_seeds(bad)
    # Through `maxlm synth`: one line, exit 2, no traceback, before any model is loaded.
    from maxlm.cli import main

    monkeypatch.setenv("MAXLM_COMPILATION_CACHE", "off")
    code = main(["synth", "self-instruct", "--seeds", str(bad), "--model", str(tmp_path / "nowhere"),
                 "--num-tasks", "3", "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {bad}:2:") and "Traceback" not in err


# ---------------------------------------------------------------- constitutional


def test_principles_file_loads_and_errors_name_the_key(tmp_path):
    principles = load_principles(PRINCIPLES)
    assert len(principles) >= 4 and all(p.critique and p.revision for p in principles)
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"principles": [{"name": "a", "critique": "c", "revision": "r"}, {"name": "b", "critique": "c"}]}))
    with pytest.raises(MaxlmError, match=r"principles\[1\]\.revision: expected a non-empty string"):
        load_principles(bad)


def scripted_assistant(principles, empty=(), unchanged=(), truncated=(), no_critique=()):
    """Returns a completion function answering, critiquing and revising by rule, and its call log."""
    critiques = {p.critique: p.name for p in principles}
    revisions = {p.revision for p in principles}
    calls = []

    def complete(convs):
        calls.append(convs)
        out = []
        for conv in convs:
            question, last = conv[0]["content"], conv[-1]["content"]
            if last in critiques:
                out.append("" if question in no_critique else f"Critique under {critiques[last]}: too vague.")
            elif last in revisions:
                original = conv[-4]["content"]
                text = original if question in unchanged else f"A clearer answer to: {question}"
                out.append(Completion(text, truncated=question in truncated))
            else:
                out.append("" if question in empty else f"An answer to: {question}")
        return out

    return complete, calls


def test_constitutional_writes_sft_records_and_pairs(tmp_path):
    principles = load_principles(PRINCIPLES)
    questions = ["How do I boil an egg?", "What is a prime number?", "Why is the sea salty?", "How do magnets work?",
                 "What is rain made of?", "Where do bees live?"]
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in questions + questions[:1]))
    prompts = read_prompts(str(prompts_file))
    complete, calls = scripted_assistant(principles, empty={questions[2]}, unchanged={questions[3]}, truncated={questions[4]},
                                         no_critique={questions[5]})
    sft, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    summary = constitutional(prompts, principles, complete, sft, pairs, batch_size=4, seed=1, log=lambda _: None)
    assert summary == {"generated": 6, "kept": 2,
                       "removed": {"empty_answer": 1, "empty_critique": 1, "truncated": 1, "unchanged": 1}}
    sft_rows = [json.loads(line) for line in sft.read_text().splitlines()]
    pair_rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert [r["prompt"] for r in sft_rows] == questions[:2]
    for r, p in zip(sft_rows, pair_rows):
        assert set(r) == {"id", "prompt", "response", "original", "critique", "principle"}
        assert set(p) == {"id", "prompt", "chosen", "rejected", "principle"}
        principle = pick_principle(principles, prompt_id([{"role": "user", "content": r["prompt"]}]), 1)
        assert r["principle"] == p["principle"] == principle.name
        assert r["response"] == p["chosen"] == f"A clearer answer to: {r['prompt']}"
        assert r["original"] == p["rejected"] == f"An answer to: {r['prompt']}"
        assert r["critique"] == f"Critique under {principle.name}: too vague."
        assert r["id"] == p["id"]
    # The critique is asked after the answer, the revision after the critique, in one conversation.
    revise = next(c for c in calls[2] if c[0]["content"] == questions[0])
    p0 = pick_principle(principles, sft_rows[0]["id"], 1)
    assert [m["role"] for m in revise] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in revise[2:]] == [p0.critique, sft_rows[0]["critique"], p0.revision]
    # Both files are what maxlm train reads for sft and dpo.
    assert len(read_records(str(sft), "sft")[0]) == 2 and len(read_records(str(pairs), "dpo")[0]) == 2


def test_constitutional_resumes_and_rebuilds_lost_pairs(tmp_path):
    principles = load_principles(PRINCIPLES)
    sft, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    prompts = [[{"role": "user", "content": q}] for q in ("One?", "Two?", "Three?")]
    complete, _ = scripted_assistant(principles, empty={"Three?"})
    constitutional(prompts, principles, complete, sft, pairs, batch_size=2, log=lambda _: None)
    pairs.write_text(pairs.read_text().splitlines(keepends=True)[0])  # as if killed between the two appends
    complete, calls = scripted_assistant(principles)
    more = prompts + [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Four?"}]]
    summary = constitutional(more, principles, complete, sft, pairs, batch_size=2, log=lambda _: None)
    # Only the new prompt is sampled (Three? was removed before); the lost pair comes back from its sft record.
    assert [c[0]["content"] for c in calls[0]] == ["Be brief."]
    assert summary == {"generated": 4, "kept": 3, "removed": {"empty_answer": 1}}
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert Counter(r["id"] for r in rows) == Counter(json.loads(line)["id"] for line in sft.read_text().splitlines())
    assert rows[-1]["prompt"] == more[-1]  # a conversation prompt stays a message list


# ---------------------------------------------------------------- end to end on a real tiny model

TASKS = [Task("Name a fruit that is yellow.", "", "A banana."), Task("Add the two numbers.", "2 and 3", "5"),
         Task("Give the opposite of the word.", "hot", "cold")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Returns a maxlm run dir holding a tiny random-init Llama and a sentencepiece tokenizer."""
    import jax

    from maxlm.ckpt.manager import Checkpoints
    from maxlm.config import Config, MeshConfig, ModelConfig, TokenizerConfig
    from maxlm.data.tokenizers import train_sentencepiece
    from maxlm.models import params as params_lib
    from maxlm.parallel.mesh import make_mesh

    root = tmp_path_factory.mktemp("synth_model")
    # The prompt's own text in the vocabulary keeps the prompts short.
    texts = ["".join(format_task(i, t) for i, t in enumerate(TASKS, 1)), PREAMBLE, PRINCIPLES.read_text()] * 4
    tok = train_sentencepiece(texts, root / "sp.model", vocab_size=400, max_sentences=5000, character_coverage=1.0)
    m = ModelConfig(vocab_size=400, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=96,
                    max_seq_len=1024, dtype="float32")
    cfg = Config(run_dir=str(root / "run"), model=m, tokenizer=TokenizerConfig(path=str(tok)))
    ckpts = Checkpoints(cfg.run_dir, async_save=False)
    ckpts.save(0, params_lib.init(m, make_mesh(MeshConfig(), devices=jax.devices()[:1]), seed=0), cfg)
    ckpts.close()
    return Path(cfg.run_dir)


@pytest.mark.slow
def test_self_instruct_end_to_end_on_a_model(tiny_run, tmp_path, capsys):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t.instruction, "instances": [{"input": t.input, "output": t.output}]}) + "\n"
                             for t in TASKS))
    out = tmp_path / "tasks.jsonl"
    args = ["self-instruct", "--seeds", str(seeds), "--model", str(tiny_run), "--num-tasks", "1", "--output", str(out),
            "--prompt-seeds", "2", "--batch-size", "2", "--max-new-tokens", "32", "--temperature", "0", "--patience", "1"]
    assert synth_cli.main(args) == 0
    std = capsys.readouterr()
    # Whatever the model wrote went through the parser and the filters, and the counts add up;
    # random weights write no Instruction/Input/Output fields, so here that is "malformed".
    progress = json.loads(progress_path(out).read_text())
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    assert progress["batches"] == 1 and progress["kept"] == len(records)
    assert progress["generated"] >= 2 and progress["generated"] == progress["kept"] + sum(progress["removed"].values())
    assert f"{progress['generated']} generated -> {len(records)} kept" in std.out and "batch 1:" in std.err
    for r in records:
        assert set(r) == {"id", "instruction", "input", "output", "most_similar", "rouge_l"} and r["rouge_l"] < 0.7

    # The adapter's greedy text is the model's own greedy continuation (Pretrained.generate_text).
    import maxlm

    model = maxlm.from_pretrained(tiny_run)
    rng = np.random.default_rng([0, 0])  # the CLI's first batch: same prompts, same shapes, no new compile
    prompts = [build_prompt(sample_examples(rng, TASKS, [], SelfInstructConfig(1, prompt_seeds=2)), 20) for _ in range(2)]
    got = ModelCompleter(model, max_new_tokens=32, temperature=0.0, batch_size=2)(prompts)
    assert got == [t[len(p):] for t, p in zip(model.generate_text(prompts, 32, temperature=0.0), prompts)]


@pytest.mark.slow
def test_constitutional_end_to_end_on_a_model(tiny_run, tmp_path, capsys, monkeypatch):
    from maxlm.cli import main

    monkeypatch.setenv("MAXLM_COMPILATION_CACHE", "off")  # keep the tests' own compilation cache
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Name a fruit.", "Add 2 and 3.", "Say hello.", "Count to three.")))
    sft, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"
    # Random weights almost never sample EOS: a stop string ends their turns, as turn markers do for a base model.
    args = ["synth", "constitutional", "--prompts", str(prompts), "--model", str(tiny_run), "--principles", str(PRINCIPLES),
            "--sft-output", str(sft), "--pairs-output", str(pairs), "--batch-size", "4", "--max-new-tokens", "16",
            "--temperature", "1.0", "--seed", "3", "--stop", " "]
    assert main(args) == 0
    progress = json.loads(progress_path(sft).read_text())
    assert progress["generated"] == 4 and progress["kept"] + sum(progress["removed"].values()) == 4
    sft_rows = [json.loads(line) for line in sft.read_text().splitlines()] if sft.exists() else []
    pair_rows = [json.loads(line) for line in pairs.read_text().splitlines()] if pairs.exists() else []
    assert len(sft_rows) == len(pair_rows) == progress["kept"] >= 1
    names = {p.name for p in load_principles(PRINCIPLES)}
    for r, p in zip(sft_rows, pair_rows):
        assert set(r) == {"id", "prompt", "response", "original", "critique", "principle"}
        assert r["response"] == p["chosen"] and r["original"] == p["rejected"] and r["response"] != r["original"]
        assert r["principle"] == p["principle"] in names and " " not in r["response"] and r["response"] and r["critique"]
    assert len(read_records(str(sft), "sft")[0]) == len(read_records(str(pairs), "dpo")[0]) == len(sft_rows)
    # A rerun finds everything done, samples nothing and loads no model.
    capsys.readouterr()
    monkeypatch.setattr("maxlm.infer.pretrained.from_pretrained", lambda *a, **k: pytest.fail("loaded a model with nothing to do"))
    assert main(args) == 0
    assert "resuming: 4 of 4 prompts already done" in capsys.readouterr().err
    assert len(sft.read_text().splitlines()) == len(sft_rows)


def test_cut_at_stops():
    assert cut_at_stops("abc###def\n\nHuman: x", ["\n\nHuman:", "###"]) == ("abc", True)
    assert cut_at_stops("abc", ["", "zz"]) == ("abc", False)


def test_outputs_that_would_mix_or_replace_records_are_refused(tmp_path, capsys):
    # Refused before any model loads: --model names nothing.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
    one = tmp_path / "out.jsonl"
    base = ["constitutional", "--prompts", str(prompts), "--model", str(tmp_path / "no-model"), "-q"]
    assert synth_cli.main(base + ["--sft-output", str(one), "--pairs-output", str(one)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pairs-output and --sft-output are one file") and not one.exists()
    assert synth_cli.main(base + ["--sft-output", str(prompts), "--pairs-output", str(one)]) == 2
    assert "is also the input (--prompts)" in capsys.readouterr().err
    assert prompts.read_text() == json.dumps({"prompt": "Say hi."}) + "\n"
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "Name a color.", "instances": [{"input": "", "output": "Red."}]}) + "\n")
    before = seeds.read_bytes()
    args = ["self-instruct", "--seeds", str(seeds), "--model", str(tmp_path / "no-model"), "--num-tasks", "2", "--output", str(seeds), "-q"]
    assert synth_cli.main(args) == 2 and "is also the input (--seeds)" in capsys.readouterr().err
    assert seeds.read_bytes() == before
