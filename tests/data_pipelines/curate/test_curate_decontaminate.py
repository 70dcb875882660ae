"""The decontaminate stage: gsm8k questions planted into clean text are found and exactly those
documents dropped, a 12-word near miss is kept, the report names every eval item hit; n-grams
equal lm-evaluation-harness's (its janitor module, the independent reference); config mistakes
name the key."""

from __future__ import annotations

import importlib.util
import json
import random
import string
from pathlib import Path

import pytest

from curate_outputs import read_output, read_removed
from data_pipelines.curate.cli import main as cli_main
from data_pipelines.curate.config import load_pipeline
from data_pipelines.curate.stages import STAGES
from data_pipelines.curate.stages.decontaminate import ngram_hashes, word_ngrams
from maxlm.errors import MaxlmError

N_EVAL = 300  # gsm8k items in the eval file


def _lm_eval_janitor():
    """Returns lm-eval's janitor module, loaded from its file: the package's __init__ imports the
    whole evaluator (torch, datasets, ...), the janitor itself only the standard library."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lm-eval not installed (pip install -e '.[test]')")
    path = Path(spec.submodule_search_locations[0]) / "decontamination" / "janitor.py"
    mod_spec = importlib.util.spec_from_file_location("lm_eval_janitor", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _reference_ngrams(janitor, text: str, n: int = 13) -> set[str]:
    """Returns lm-eval's n-grams of `text`: its normalize_string, then its word_ngrams."""
    return set(janitor.word_ngrams(janitor.Janitor(ngram_n=n).normalize_string(text), n))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean_docs(shared_data: Path, n: int) -> list[str]:
    """Returns `n` documents of Shakespeare: runs of 6 speeches of tinyshakespeare."""
    speeches = (shared_data / "pretrain" / "tinyshakespeare.txt").read_text().split("\n\n")
    return ["\n\n".join(speeches[6 * i: 6 * i + 6]) for i in range(n)]


def _plant(doc: str, text: str) -> str:
    """Returns `doc` with `text` put between two of its speeches."""
    parts = doc.split("\n\n")
    return "\n\n".join(parts[:3] + [text] + parts[3:])


def _shout(text: str) -> str:
    """Returns `text` upper-cased with its punctuation moved around: what normalisation must undo."""
    return " ".join(w.strip(string.punctuation).upper() + ("," if i % 4 == 0 else "") for i, w in enumerate(text.split()))


@pytest.fixture
def corpus(tmp_path, shared_data):
    """Writes the eval sets and the documents; returns (input glob, eval paths, planted {doc id: items})."""
    gsm = _jsonl(shared_data / "sft" / "gsm8k_train.jsonl")[:N_EVAL]
    evals = tmp_path / "evals"
    evals.mkdir()
    (evals / "gsm8k_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm))
    seeds = _jsonl(shared_data / "sft" / "alpaca_seed_tasks.jsonl")[:60]
    mmlu = [{"id": s["id"], "question": s["instruction"], "choices": [i["output"] for i in s["instances"]], "answer": 0} for s in seeds]
    (evals / "mmlu_style.json").write_text(json.dumps(mmlu, indent=1))  # a JSON array, one item per element
    long_choice = next(m for m in mmlu if len(m["choices"][0].split()) >= 20)

    docs = _clean_docs(shared_data, 120)
    planted = {
        5: (gsm[10]["question"], ["gsm8k:11"]),  # verbatim
        17: (_shout(gsm[42]["question"]), ["gsm8k:43"]),  # case and punctuation differ
        30: (gsm[7]["question"] + "\n\n" + " ".join(gsm[250]["answer"].split()[:13]), ["gsm8k:8", "gsm8k:251"]),  # 13 words of an answer
        80: (long_choice["choices"][0], [f"mmlu:{long_choice['id']}"]),  # a list field of an MMLU-style item
        90: (gsm[10]["question"], ["gsm8k:11"]),  # the same item a second time
    }
    words = gsm[99]["question"].split()
    assert len(words) >= 13
    near_12 = " ".join(words[:12])  # 12 shared words: below the 13-gram
    every_12th = " ".join("plum" if i % 12 == 11 else w for i, w in enumerate(gsm[123]["question"].split()))
    for k, (text, _) in planted.items():
        docs[k] = _plant(docs[k], text)
    docs[44] = _plant(docs[44], near_12)
    docs[60] = _plant(docs[60], every_12th)
    inp = tmp_path / "in"
    inp.mkdir()
    recs = [{"id": f"doc{i}", "text": t} for i, t in enumerate(docs)]
    (inp / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:70]))
    (inp / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[70:]))
    return str(inp / "*.jsonl"), recs, evals, {f"doc{k}": items for k, (_, items) in planted.items()}


def _pipeline(write_yaml, evals: Path, action: str = "drop") -> str:
    return str(write_yaml(f"""
stages:
  - decontaminate:
      action: {action}
      evals:
        - {{path: {evals / 'gsm8k_test.jsonl'}, fields: [question, answer], name: gsm8k}}
        - {{path: {evals / 'mmlu_style.json'}, fields: [question, choices], name: mmlu, id_key: id}}
"""))


def _reference_hits(janitor, recs: list[dict], evals: Path) -> dict[str, set[str]]:
    """Returns {doc id: eval items it shares a 13-gram with}, computed with lm-eval's n-grams alone."""
    items = []
    for line, r in enumerate(_jsonl(evals / "gsm8k_test.jsonl"), 1):
        items.append((f"gsm8k:{line}", _reference_ngrams(janitor, r["question"]) | _reference_ngrams(janitor, r["answer"])))
    for r in json.loads((evals / "mmlu_style.json").read_text()):
        grams = set().union(*(_reference_ngrams(janitor, t) for t in [r["question"], *r["choices"]]))
        items.append((f"mmlu:{r['id']}", grams))
    out = {}
    for rec in recs:
        grams = _reference_ngrams(janitor, rec["text"])
        hit = {name for name, g in items if g & grams}
        if hit:
            out[rec["id"]] = hit
    return out


def test_planted_eval_items_are_dropped_and_reported(tmp_path, write_yaml, corpus, capsys):
    pattern, recs, evals, planted = corpus
    out = tmp_path / "out"
    assert cli_main(["curate", _pipeline(write_yaml, evals), "--input", pattern, "--output", str(out), "-q", "--workers", "2"]) == 0
    kept = {r["id"] for r in read_output(out)}
    dropped = {r["id"] for r in read_removed(out) if r["stage"] == "decontaminate"}
    assert dropped == set(planted) and kept == {r["id"] for r in recs} - set(planted)
    assert "doc44" in kept and "doc60" in kept  # 12 shared words; a word changed in every 13
    assert {r["reason"] for r in read_removed(out)} == {"contaminated"}
    report = json.loads((out / "report.json").read_text())
    (stage,) = report["stages"]
    want = {"gsm8k:11": 2, "gsm8k:43": 1, "gsm8k:8": 1, "gsm8k:251": 1, next(iter(planted["doc80"])): 1}
    hits = {k.removeprefix("hit:"): v for k, v in stage["counters"].items() if k.startswith("hit:")}
    assert hits == want and stage["counters"]["documents_hit"] == 5 and stage["removed"] == {"contaminated": 5}
    md = (out / "report.md").read_text()
    assert "Eval items hit: 5" in md and "| `gsm8k:11` | 2 |" in md
    # the independent reference (lm-eval's own n-grams, compared item by item) finds the same
    ref = _reference_hits(_lm_eval_janitor(), recs, evals)
    assert ref == {d: set(items) for d, items in planted.items()}


def test_report_only_keeps_every_document_and_names_the_hits(tmp_path, write_yaml, corpus):
    pattern, recs, evals, planted = corpus
    out = tmp_path / "out"
    assert cli_main(["curate", _pipeline(write_yaml, evals, "report"), "--input", pattern, "--output", str(out), "-q", "--workers", "1"]) == 0
    got = read_output(out)
    assert len(got) == len(recs)
    # each planted document names its items, in eval-file order; no other document is marked
    assert {r["id"]: r["contaminated_by"] for r in got if "contaminated_by" in r} == planted
    stage = json.loads((out / "report.json").read_text())["stages"][0]
    assert stage["docs_out"] == len(recs) and stage["counters"]["documents_hit"] == 5


def test_ngrams_equal_lm_eval_on_real_text(shared_data):
    janitor = _lm_eval_janitor()
    rng = random.Random(0)
    texts = [r["question"] + "\n" + r["answer"] for r in _jsonl(shared_data / "sft" / "gsm8k_train.jsonl")[:200]]
    texts += [json.dumps(r) for r in _jsonl(shared_data / "sft" / "alpaca_seed_tasks.jsonl")]
    texts += [p["output"] for p in json.loads((shared_data / "sft" / "gpteacher_roleplay.json").read_text())[:200]]
    texts += _clean_docs(shared_data, 50)
    texts += ["Ünïcode CAPS stay: ÀÉÎ “quoted” — dash… don't 48/2=24 $5.00 e-mail@x.org " * 3, "  ,, ; !! ?? " * 20, "one two"]
    hash_of: dict[str, int] = {}
    for n in (13, 5, 1):
        for text in rng.sample(texts, 120) if n != 13 else texts:
            grams = list(word_ngrams(text, n))
            assert set(grams) == _reference_ngrams(janitor, text, n), text[:80]
            # the stage matches hashes of these n-grams: one hash per n-gram, in the same order
            hashes = ngram_hashes(text, n).tolist()
            assert len(hashes) == len(grams)
            for g, h in zip(grams, hashes):
                assert hash_of.setdefault(g, h) == h
    assert len(set(hash_of.values())) == len(hash_of) > 50_000  # no two n-grams of the corpus share a hash


@pytest.mark.parametrize("yaml, expected", [
    ("  - decontaminate: {evals: [{path: %(e)s, fields: [question]}], ngram_n: 13}\n", "stages[0].decontaminate.ngram_n; did you mean stages[0].decontaminate.ngram?"),
    ("  - decontaminate: {evals: [{path: %(e)s}]}\n", "stages[0].decontaminate.evals[0].fields: name at least one field"),
    ("  - decontaminate: {evals: [{path: /no/such.jsonl, fields: [q]}]}\n", "stages[0].decontaminate.evals[0].path: eval file /no/such.jsonl not found"),
    ("  - decontaminate: {evals: []}\n", "stages[0].decontaminate.evals: list at least one eval file"),
    ("  - decontaminate: {evals: [{path: %(e)s, fields: [question]}], ngram: 0}\n", "stages[0].decontaminate.ngram"),
    ("  - decontaminate: {evals: [{path: %(e)s, fields: [question]}], action: remove}\n", "action must be one of drop, report"),
    ("  - decontaminate: {evals: [{path: %(e)s, fields: [question], colour: red}]}\n", "stages[0].decontaminate.evals[0].colour"),
])
def test_config_mistakes_name_the_key(tmp_path, write_yaml, yaml, expected):
    e = tmp_path / "ev.jsonl"
    e.write_text(json.dumps({"question": "a b c"}) + "\n")
    p = write_yaml("stages:\n" + yaml % {"e": e})
    with pytest.raises(MaxlmError) as err:
        load_pipeline(p, STAGES)
    assert expected in str(err.value) and f"{p}:2" in str(err.value)


def test_eval_record_without_a_field_names_file_and_line(tmp_path, write_yaml, capsys):
    e = tmp_path / "ev.jsonl"
    e.write_text(json.dumps({"question": "a b c", "answer": "d"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    p = write_yaml(f"stages:\n  - decontaminate: {{evals: [{{path: {e}, fields: [question, answer]}}]}}\n")
    assert cli_main(["curate", str(p), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {e}:2: eval record has no field 'answer'") and len(err.splitlines()) == 1
