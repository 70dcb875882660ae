"""Every SFT format `maxlm train` reads passes `maxlm curate configs/curation/instructions.yaml`
(real data: gsm8k as `messages` and as itself, hh-rlhf pairs): sft_format reads records with
training's own adapters, so a set that trains is a set that curates."""

from __future__ import annotations

import gzip
import json

import pytest

from curate_outputs import REPO, read_output, read_removed
from maxlm.cli import main as maxlm_main
from maxlm.data.records import read_records


def _sets(shared_data, tmp_path) -> dict[str, str]:
    gsm = [json.loads(line) for line in (shared_data / "sft" / "gsm8k_train.jsonl").read_text().splitlines()[:150]]
    messages = tmp_path / "messages.jsonl"
    messages.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Solve it."},
                                                          {"role": "user", "content": r["question"]},
                                                          {"role": "assistant", "content": r["answer"]}]}) + "\n" for r in gsm))
    hh_src = shared_data / "preference" / "hh_rlhf_harmless_part1.jsonl.gz"
    if not hh_src.is_file():
        pytest.skip(f"{hh_src} is missing from the shared data")
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh_src, "rt", encoding="utf-8") as f:
        hh.write_bytes(gzip.compress("".join(next(f) for _ in range(150)).encode("utf-8")))
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text("".join(json.dumps(r) + "\n" for r in gsm))
    return {"messages": str(messages), "hh_rlhf": str(hh), "gsm8k": str(gsm8k)}


@pytest.mark.parametrize("name", ["messages", "hh_rlhf", "gsm8k"])
def test_a_set_that_trains_passes_the_instructions_pipeline(shared_data, tmp_path, capsys, name):
    path = _sets(shared_data, tmp_path)[name]
    # Trains fine: every record is an sft conversation but a few real hh-rlhf pairs with an empty reply.
    records, skipped = read_records(path, "sft", on_bad_record="skip")
    assert len(records) + skipped == 150 and skipped <= 3
    out = tmp_path / "out"
    assert maxlm_main(["curate", str(REPO / "configs" / "curation" / "instructions.yaml"), "--input", path,
                       "--output", str(out), "-q"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["bad_records"] == 0
    removed = read_removed(out)
    by_format = [r for r in removed if r["stage"] == "sft_format"]
    assert not [r for r in by_format if r["reason"].startswith(("missing_", "not_a_string", "malformed"))], by_format[:3]
    assert len([r for r in by_format if r["reason"] == "response_too_short"]) >= skipped  # what training skips, curation removes
    kept = read_output(out)
    assert len(kept) + len(removed) == 150 and len(kept) >= 140
    if name == "messages":  # a messages list is written back whole, the user turn's text in place
        original = {json.dumps(json.loads(line)) for line in open(path, encoding="utf-8")}
        assert all(r["messages"][0]["role"] == "system" and isinstance(r["messages"], list) for r in kept)
        assert sum(json.dumps({"messages": r["messages"]}) in original for r in kept) >= len(kept) - 5
