"""The shipped instructions pipeline on real SFT data (GPTeacher, alpaca seeds) with planted faults."""

from __future__ import annotations

import json
import random

from curate_outputs import REPO, read_output, read_removed
from data_pipelines.curate.config import load_pipeline
from data_pipelines.curate.stages import STAGES
from data_pipelines.curate.pipeline import curate


def test_instructions_pipeline(shared_data, tmp_path):
    rng = random.Random(0)
    gpt = json.loads((shared_data / "sft" / "gpteacher_roleplay.json").read_text())[:400]
    seeds = [json.loads(line) for line in (shared_data / "sft" / "alpaca_seed_tasks.jsonl").read_text().splitlines()]
    clean = [dict(r, id=f"g{i}") for i, r in enumerate(gpt)]
    # the other schema: {"prompt","response"} from the alpaca seed tasks
    clean += [{"id": f"s{i}", "prompt": s["instruction"] + ("\n\n" + s["instances"][0]["input"] if s["instances"][0]["input"] else ""),
               "response": s["instances"][0]["output"]} for i, s in enumerate(seeds)]
    planted, groups = [], []
    for i, r in enumerate(rng.sample(gpt[:300], 30)):
        ref = next(c for c in clean if c.get("instruction") == r["instruction"])
        if i % 2:  # same instruction, another answer: one task, kept once
            dup = {"id": f"exact{i}", "instruction": r["instruction"], "input": r["input"], "output": "A different answer."}
        else:  # the instruction with one word changed
            words = r["instruction"].split()
            words[rng.randrange(len(words))] = "remarkable"
            dup = {"id": f"near{i}", "instruction": " ".join(words), "input": r["input"], "output": r["output"]}
        planted.append(dup)
        groups.append({ref["id"], dup["id"]})
    broken = [
        {"id": "b1", "instruction": "Say hello.", "input": ""},  # no output
        {"id": "b2", "prompt": "Count to three.", "response": ""},  # empty response
        {"id": "b3", "prompt": "Name a colour.", "response": ["red"]},  # not a string
        {"id": "b4", "prompt": "Tell me a joke.", "response": "As an AI language model, I cannot tell jokes."},
        {"id": "b5", "prompt": "Repeat after me: hi", "response": "Repeat after me: hi"},
    ]
    recs = clean + planted + broken
    rng.shuffle(recs)
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = load_pipeline(REPO / "configs" / "curation" / "instructions.yaml", STAGES)
    report = curate(cfg, str(tmp_path / "sft.jsonl"), tmp_path / "out", workers=1)
    out = {r["id"]: r for r in read_output(tmp_path / "out")}
    by_id = {r["id"]: r for r in recs}
    redacted = 0
    for rid, r in out.items():  # records keep exactly their own fields: no "text" is added
        if r != by_id[rid]:  # only PII placeholders may differ
            assert r.keys() == by_id[rid].keys() and any(t in json.dumps(r) for t in ("<EMAIL>", "<PHONE>"))
            redacted += 1
    assert 0 < redacted < 10
    assert not any(b["id"] in out for b in broken)
    assert all(len(g & set(out)) == 1 for g in groups), [g for g in groups if len(g & set(out)) != 1]
    kept_clean = sum(c["id"] in out for c in clean) / len(clean)
    assert kept_clean >= 0.95, kept_clean
    removed = {r["id"]: r for r in read_removed(tmp_path / "out")}
    for g in groups:
        (gone,) = g - set(out)
        assert removed[gone]["duplicate_of"] in g
    assert report["totals"]["bad_records"] == 0
