"""End to end: outputs, metadata, ids, bad input, report, removed-docs file, formats, resume, CLI, Ray."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys

import pytest

from curate_outputs import REPO, read_output, read_removed
from data_pipelines.curate.cli import main as cli_main
from data_pipelines.curate.config import load_pipeline
from data_pipelines.curate.stages import STAGES
from data_pipelines.curate import pipeline as pipeline_mod
from data_pipelines.curate.pipeline import curate
from maxlm.errors import MaxlmError

SENTENCES = [
    "The river rose quickly after three days of heavy rain in the valley.",
    "Farmers moved their animals to higher ground before the water reached the fields.",
    "A small bakery on the corner sells bread that is still warm in the morning.",
    "Most of the children in the village walk to school along the old stone bridge.",
    "The museum opened a new room that shows tools used by the first settlers.",
    "Scientists measured the temperature of the lake every week for ten years.",
    "They found that the water is now warmer than it was at the start of the study.",
    "The library asked readers to return their books before the summer holiday.",
    "Our neighbour grows tomatoes, beans and potatoes in a garden behind the house.",
    "On clear nights you can see the lights of the harbour from the top of the hill.",
    "The council will decide next month whether to build a new swimming pool.",
    "Many people believe that the old mill should be turned into a music school.",
    "The train to the coast leaves every hour and takes about forty minutes.",
    "When the snow melts in spring, the paths through the forest become muddy.",
    "A group of volunteers cleaned the beach and collected more than fifty bags of rubbish.",
    "The teacher explained that the moon has no light of its own and reflects the sun.",
    "Tickets for the concert sold out within an hour of going on sale.",
    "The doctor advised him to walk for half an hour every day and to sleep more.",
    "Everyone agreed that the new bus timetable is easier to read than the old one.",
    "The fishermen returned late in the evening with a boat full of herring.",
]
GERMAN = ("Die Stadt hat beschlossen, im nächsten Jahr mehr Radwege zu bauen und den Busverkehr auszuweiten. "
          "Viele Bürgerinnen und Bürger begrüßen diese Entscheidung, weil sie weniger Lärm und sauberere Luft erwarten. "
          "Einige Geschäftsleute befürchten jedoch, dass ihre Kunden künftig keinen Parkplatz mehr finden werden.")

PIPELINE = """
output: {format: %(fmt)s}
stages:
  - langid: {keep: [en]}
  - gopher_quality: {min_words: 40}
  - pii: {}
  - exact_dedup: {}
  - minhash_dedup: {}
"""


def english_doc(rng: random.Random) -> str:
    return " ".join(rng.sample(SENTENCES, 8))


def make_input(tmp_path, n_docs: int = 24, seed: int = 0):
    """Writes two input files (one gzipped) with planted dups, PII, German, bad lines; returns the glob."""
    rng = random.Random(seed)
    d = tmp_path / "in"
    d.mkdir()
    docs = [english_doc(rng) for _ in range(n_docs)]
    recs = [{"id": f"doc{i}", "text": t, "meta": {"source": "synthetic", "n": i}, "url": f"http://e/{i}"} for i, t in enumerate(docs)]
    recs.append({"text": docs[0], "note": "exact copy of doc0, no id"})
    words = docs[1].split()
    words[5] = "purple"
    recs.append({"id": "near1", "text": " ".join(words)})
    recs.append({"id": "german", "text": GERMAN})
    recs.append({"id": "pii", "text": english_doc(rng) + " Write to jane.doe@example.com or call 415-555-2671."})
    half = len(recs) // 2
    lines_a = [json.dumps(r) for r in recs[:half]] + ['{"text": "broken json', '{"no_text": 1}']
    lines_b = [json.dumps(r) for r in recs[half:]]
    (d / "a.jsonl").write_text("\n".join(lines_a) + "\n")
    (d / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines_b) + "\n").encode()))
    return str(d / "*"), recs


def run(tmp_path, write_yaml, fmt="jsonl.zst", out="out", workers=1, executor="local", **kw):
    cfg = load_pipeline(write_yaml(PIPELINE % {"fmt": fmt}), STAGES)
    return curate(cfg, kw.pop("glob"), tmp_path / out, executor, workers, **kw)


def test_end_to_end(tmp_path, write_yaml):
    pattern, recs = make_input(tmp_path)
    report = run(tmp_path, write_yaml, glob=pattern, workers=2)
    out = read_output(tmp_path / "out")
    by_id = {r["id"]: r for r in out}
    # metadata is carried through untouched; langid adds its two fields
    assert by_id["doc3"]["meta"] == {"source": "synthetic", "n": 3} and by_id["doc3"]["url"] == "http://e/3"
    assert by_id["doc3"]["lang"] == "en" and 0.65 <= by_id["doc3"]["lang_score"] <= 1
    assert set(by_id["doc3"]) == {"id", "text", "meta", "url", "lang", "lang_score"}
    # exactly one of each duplicate pair survives; the German text and bad lines do not
    assert "doc0" in by_id and "doc1" in by_id and "near1" not in by_id and "german" not in by_id
    assert not any(r.get("note") for r in out)
    assert "<EMAIL>" in by_id["pii"]["text"] and "<PHONE>" in by_id["pii"]["text"] and "jane.doe" not in by_id["pii"]["text"]
    removed = {(r["stage"], r["id"]): r for r in read_removed(tmp_path / "out")}
    assert removed[("exact_dedup", "b.jsonl.gz:11")]["duplicate_of"] == "doc0"  # the id-less copy: file:line
    assert removed[("minhash_dedup", "near1")]["duplicate_of"] == "doc1"
    assert removed[("langid", "german")]["reason"] == "language"
    # the report: counts chain from stage to stage, bad input is listed with file:line
    t = report["totals"]
    assert t["bad_records"] == 2 and t["docs_in"] == len(recs) + 2 and t["docs_out"] == len(out)
    assert {e.split(": ")[0] for e in report["bad_records"]["examples"]} == {"a.jsonl:15", "a.jsonl:16"}
    stages = report["stages"]
    for a, b in zip(stages, stages[1:]):
        assert a["docs_out"] == b["docs_in"] and a["bytes_out"] == b["bytes_in"]
    assert stages[0]["docs_in"] == len(recs) and stages[-1]["docs_out"] == len(out)
    pii = next(s for s in stages if s["stage"] == "pii")
    assert pii["counters"]["EMAIL"] == 1 and pii["counters"]["PHONE"] == 1
    assert stages[0]["removed"] == {"language": 1} and stages[0]["examples"]["language"][0]["id"] == "german"
    assert all(s["docs_per_second"] for s in stages)
    # the id steps both dedup stages share are reported once, beside them, not split into their seconds
    (ids,) = report["dedup_ids"]
    assert ids["stages"] == ["exact_dedup", "minhash_dedup"] and ids["answer"]["tasks"] == ids["removals"]["tasks"] >= 2
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["totals"] == t
    md = (tmp_path / "out" / "report.md").read_text()
    assert "a.jsonl:15" in md and "| minhash_dedup |" in md and "Duplicate ids for exact_dedup, minhash_dedup: answer" in md
    pngs = list((tmp_path / "out" / "report").glob("*.png"))
    assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert not [p for p in (tmp_path / "out" / "_work").rglob("*") if p.suffix in (".npy", ".npz", ".i64")]  # intermediate files are cleaned up


def test_parquet_output_matches_jsonl(tmp_path, write_yaml):
    pattern, _ = make_input(tmp_path)
    run(tmp_path, write_yaml, glob=pattern, out="j")
    run(tmp_path, write_yaml, fmt="parquet", glob=pattern, out="p")
    assert sorted(r["id"] for r in read_output(tmp_path / "p")) == sorted(r["id"] for r in read_output(tmp_path / "j"))
    assert list((tmp_path / "p").glob("shard-*.parquet"))


def test_arrayrecord_output_is_what_maxlm_train_reads(tmp_path, write_yaml):
    from array_record.python.array_record_module import ArrayRecordReader

    from maxlm.config import SourceConfig
    from maxlm.data.sources import open_source

    pattern, _ = make_input(tmp_path)
    run(tmp_path, write_yaml, glob=pattern, out="j")
    run(tmp_path, write_yaml, fmt="arrayrecord", glob=pattern, out="a")
    shards = sorted((tmp_path / "a").glob("shard-*"))
    assert shards and all(p.name.endswith(".arrayrecord") for p in shards)  # no temp file left behind
    ref = read_output(tmp_path / "j")
    records = []
    for p in shards:  # one JSON object a record, metadata included
        reader = ArrayRecordReader(str(p))
        records += [json.loads(r) for r in reader.read_all()]
        reader.close()
    assert records == ref
    docs = open_source(SourceConfig(path=str(tmp_path / "a" / "shard-*.arrayrecord")))  # the training reader
    assert [docs[i] for i in range(len(docs))] == [r["text"] for r in ref]


def test_arrayrecord_writer_is_atomic(tmp_path):
    from maxlm.files.writers import open_writer

    with pytest.raises(RuntimeError):
        with open_writer(tmp_path / "s.arrayrecord", "arrayrecord") as w:
            w.write({"text": "half"})
            assert not (tmp_path / "s.arrayrecord").exists()  # readers never see a partial shard
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []  # the partial file is removed


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, write_yaml, monkeypatch):
    pattern, _ = make_input(tmp_path)
    run(tmp_path, write_yaml, glob=pattern, out="ref")
    real = pipeline_mod.run_shard
    calls = []

    def crashing(task):
        calls.append((task.phase, task.shard))
        if task.phase == 1 and task.shard == "shard-00001":
            raise KeyboardInterrupt("simulated crash")
        return real(task)

    monkeypatch.setattr(pipeline_mod, "run_shard", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, write_yaml, glob=pattern, out="resumed")
    assert calls == [(0, "shard-00000"), (0, "shard-00001"), (1, "shard-00000"), (1, "shard-00001")]
    calls.clear()
    monkeypatch.setattr(pipeline_mod, "run_shard", lambda task: (calls.append((task.phase, task.shard)), real(task))[1])
    report = run(tmp_path, write_yaml, glob=pattern, out="resumed")
    assert calls == [(1, "shard-00001")]  # finished shards are not redone
    assert report["run"]["resumed"] and report["run"]["shard_phases_skipped"] == 3
    ref, got = read_output(tmp_path / "ref"), read_output(tmp_path / "resumed")
    assert got == ref
    strip = lambda rs: sorted(json.dumps(r, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(read_removed(tmp_path / "resumed")) == strip(read_removed(tmp_path / "ref"))
    assert not list((tmp_path / "resumed").rglob("*.tmp-*"))


def test_output_dir_guards(tmp_path, write_yaml):
    pattern, _ = make_input(tmp_path)
    run(tmp_path, write_yaml, glob=pattern)
    other = load_pipeline(write_yaml("stages: [pii]\n", "other.yaml"), STAGES)
    with pytest.raises(MaxlmError, match="different pipeline"):
        curate(other, pattern, tmp_path / "out", workers=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(MaxlmError, match="not empty"):
        curate(other, pattern, tmp_path / "busy", workers=1)


def test_python_m_cli(tmp_path, write_yaml):
    pattern, _ = make_input(tmp_path)
    yaml_path = write_yaml(PIPELINE % {"fmt": "jsonl.zst"})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "data_pipelines", "curate", str(yaml_path), "--input", pattern,
           "--output", str(tmp_path / "cli"), "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kept" in proc.stdout and (tmp_path / "cli" / "report.md").exists()
    bad = subprocess.run(cmd[:5] + ["--input", str(tmp_path / "none*"), "--output", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "no files match" in bad.stderr and "Traceback" not in bad.stderr


def test_ray_executor_missing_gives_clear_error(tmp_path, write_yaml, monkeypatch):
    pattern, _ = make_input(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MaxlmError, match="pip install"):
        run(tmp_path, write_yaml, glob=pattern, executor="ray")


@pytest.mark.slow
def test_ray_executor_matches_local(tmp_path, write_yaml):
    pytest.importorskip("ray")
    import ray

    pattern, _ = make_input(tmp_path)
    run(tmp_path, write_yaml, glob=pattern, out="local")
    try:
        report = run(tmp_path, write_yaml, glob=pattern, out="ray", executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert report["run"]["executor"] == "ray"
    assert read_output(tmp_path / "ray") == read_output(tmp_path / "local")


def test_shards_that_end_up_empty(tmp_path, write_yaml):
    d = tmp_path / "in"
    d.mkdir()
    rng = random.Random(1)
    (d / "a.jsonl").write_text("".join(json.dumps({"text": english_doc(rng)}) + "\n" for _ in range(5)))
    (d / "b.jsonl").write_text(json.dumps({"text": GERMAN}) + "\n")  # everything filtered
    (d / "c.jsonl").write_text("not json\n{}\n")  # only bad records
    report = run(tmp_path, write_yaml, glob=str(d / "*.jsonl"))
    assert report["totals"]["docs_out"] == 5 and report["totals"]["bad_records"] == 2
    assert len(read_output(tmp_path / "out")) == 5


def test_cli_output_onto_a_dir_with_unrelated_files_is_refused_and_keeps_them(tmp_path, write_yaml, capsys):
    pattern, _ = make_input(tmp_path)
    yaml_path = write_yaml(PIPELINE % {"fmt": "jsonl.zst"})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("years of work")
    (busy / "draft.tmp-1").write_text("a file whose name looks like a temporary one")
    assert cli_main(["curate", str(yaml_path), "--input", pattern, "--output", str(busy), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "is not empty" in err
    assert sorted(os.listdir(busy)) == ["draft.tmp-1", "thesis.tex"]
