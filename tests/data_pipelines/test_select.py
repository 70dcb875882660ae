"""`maxlm select`: k-center covers the real GPTeacher set better than random picks; perplexity,
IFD, disagreement and reward filtering select by scores recomputed here from the model's own
logits; records keep every field and get ids; folds partition the pool; bad input is one line."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.select import embed
from data_pipelines.select.disagreement import select_disagreement
from data_pipelines.select.io import read_pool
from data_pipelines.select.kcenter import coverage, kcenter_greedy
from maxlm.infer.replies import load_scoring_model
from data_pipelines.select.rm_filter import select_rm
from data_pipelines.select.uncertainty import select_ifd, select_perplexity
from maxlm.ckpt.manager import Checkpoints
from maxlm.cli import main as maxlm_main
from maxlm.config import MeshConfig, load_config
from maxlm.data import chat
from maxlm.data.records import read_records
from maxlm.errors import MaxlmError
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 256


@pytest.fixture(scope="module")
def gpteacher(shared_data) -> Path:
    return shared_data / "sft" / "gpteacher_roleplay.json"


@pytest.fixture(scope="module")
def small_pool(gpteacher, tmp_path_factory) -> Path:
    """Eight GPTeacher records, most too long for MAX_LEN, two with their own id, and a short prompt/response one."""
    recs = json.loads(gpteacher.read_text())[:8] + [{"prompt": "Greet the king.", "response": "Hail, good king of England!"}]
    recs[3]["id"], recs[6]["id"] = "mine-3", "mine-6"
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Two language models and a reward model: tiny shapes, random weights, saved as maxlm runs."""
    from maxlm.config import SourceConfig
    from maxlm.data.sources import iter_texts
    from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece

    root = tmp_path_factory.mktemp("runs")
    texts = iter_texts([SourceConfig(path=str(shared_data / "pretrain" / "tinyshakespeare.txt"))])
    tok = train_sentencepiece(texts, root / "tok.model", vocab_size=400, max_sentences=4000, character_coverage=1.0)
    vocab = load_tokenizer(tok).vocab_size
    out = {}
    for name, seed, task in (("lm_a", 0, "sft"), ("lm_b", 1, "sft"), ("rm", 2, "rm")):
        cfg = load_config(REPO / "configs" / "models" / "tiny.yaml", [
            f"model.vocab_size={vocab}", f"model.max_seq_len={MAX_LEN}", f"data.seq_len={MAX_LEN}",
            f"tokenizer.path={tok}", f"run_dir={root / name}", f"task={task}"])
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scalar_head=task == "rm"))
        _, shapes, _ = params_lib.abstract(cfg.model)
        rng = np.random.default_rng(seed)
        params = jax.tree.map(lambda s: jnp.asarray(
            (1.0 if len(s.shape) == 1 else 0.0) + 0.3 * rng.standard_normal(s.shape), s.dtype), shapes)
        ckpt = Checkpoints(root / name, async_save=False)
        ckpt.save(1, params, cfg)
        ckpt.close()
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def one_device():
    return make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])


def reference_reply_logps(lm, prompt, reply, keep: int | None = None) -> tuple[float, int]:
    """Returns (summed log p, count) of the first `keep` reply tokens that fit, from the model's logits in numpy."""
    ids, mask = chat.encode_completion(lm.tokenizer, lm.template, prompt, reply)
    ids, mask = ids[:MAX_LEN], mask[:MAX_LEN]
    logits = np.asarray(lm.scorer.model(np.asarray([ids + [0] * (MAX_LEN - len(ids))])), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    scored = [t for t in range(1, len(ids)) if mask[t]][:keep]
    return sum(logp[t - 1, ids[t]] for t in scored), len(scored)


# ---------------------------------------------------------------- k-center on the real set


def test_kcenter_covers_gpteacher_better_than_random(gpteacher):
    pool = read_pool(gpteacher)
    assert len(pool) == 3146 and pool.ids_assigned == 3146
    x = embed.hashed_lsa([embed.record_text(r.messages) for r in pool.records])
    budget = 100
    picked, radius = kcenter_greedy(x, budget, seed=0)
    assert len(set(picked.tolist())) == budget and np.all(np.diff(radius[1:]) <= 1e-6)  # radii never grow
    ours = coverage(x, picked)
    rand = [coverage(x, np.random.default_rng(s).choice(len(x), budget, replace=False)) for s in range(5)]
    assert ours["max"] < min(r["max"] for r in rand), (ours, rand)
    assert ours["max"] <= radius[-1] + 1e-6  # the last pick was the farthest point before it was picked
    np.testing.assert_array_equal(picked, kcenter_greedy(x, budget, seed=0)[0])  # deterministic


def test_kcenter_greedy_is_exact_farthest_point():
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    x[7] = x[3]  # a duplicate is picked only after every other point
    picked, _ = kcenter_greedy(x, 200, seed=1)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    ref = [picked[0]]
    for _ in range(29):
        near = d[:, ref].min(1)
        near[ref] = -1
        ref.append(int(np.argmax(near)))
    assert picked[:30].tolist() == ref
    assert sorted(picked.tolist()) == list(range(200)) and picked[-1] in (3, 7)


def test_select_cli_keeps_fields_assigns_ids_and_writes_a_summary(small_pool, tmp_path, capsys):
    out = tmp_path / "sel.jsonl"
    assert maxlm_main(["select", "kcenter", "--input", str(small_pool), "--budget", "5", "--output", str(out), "-q"]) == 0
    assert "7 records got their index as id" in capsys.readouterr().out
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    src = [json.loads(l) for l in small_pool.read_text().splitlines()]
    assert len(rows) == 5 and [r["select"]["rank"] for r in rows] == list(range(5))
    for r in rows:
        i = r["id"] if isinstance(r["id"], int) else int(r["id"].split("-")[1])
        assert {k: v for k, v in r.items() if k != "select"} == {**src[i], "id": r["id"]}
        assert r["select"]["method"] == "kcenter"
    assert rows[0]["select"]["score"] is None and all(r["select"]["score"] > 0 for r in rows[1:])
    summary = json.loads((tmp_path / "sel.summary.json").read_text())
    assert summary["pool"] == 9 and summary["selected"] == 5 and summary["ids_assigned"] == 7
    assert summary["embedder"] == "hashed" and summary["covering_radius"] > 0


# ---------------------------------------------------------------- model-based methods


def test_perplexity_and_ifd_scores_come_from_the_models_logits(runs, small_pool, one_device):
    pool = read_pool(small_pool)
    lm = load_scoring_model(str(runs["lm_a"]), mesh=one_device)
    sel = select_perplexity(pool, lm, 3)
    assert sel.summary["truncated"] >= 1  # long replies are scored on what fits
    for i in (0, 8):
        total, count = reference_reply_logps(lm, pool.records[i].prompt, pool.records[i].response)
        assert sel.fields["score"][i] == pytest.approx(np.exp(-total / count), rel=1e-4)
    ppl = sel.fields["score"]
    assert sel.order.tolist() == np.argsort(-ppl, kind="stable")[:3].tolist()
    assert select_perplexity(pool, lm, 3, highest=False).order.tolist() == np.argsort(ppl, kind="stable")[:3].tolist()

    ifd = select_ifd(pool, lm, 9)
    f = ifd.fields
    for i in (5, 8):  # 5: the prompt pushes the reply past MAX_LEN; 8: all of it fits
        r = pool.records[i]
        c_sum, c_n = reference_reply_logps(lm, r.prompt, r.response)
        a_sum, a_n = reference_reply_logps(lm, [], r.response, keep=c_n)  # the same reply tokens, no instruction
        assert c_n == a_n and f["truncated"][i] == (i == 5)
        assert f["score"][i] == pytest.approx(np.exp(-c_sum / c_n) / np.exp(-a_sum / a_n), rel=1e-4)
    np.testing.assert_allclose(f["score"], f["ppl_conditioned"] / f["ppl_alone"])
    below = np.flatnonzero(f["score"] < 1)
    assert sorted(ifd.order.tolist()) == sorted(below.tolist())  # IFD >= 1 is dropped, as in the paper
    assert len(select_ifd(pool, lm, 9, drop_ifd_over_1=False).order) == 9


def test_disagreement_is_the_spread_of_the_models_mean_logprobs(runs, small_pool, one_device):
    pool = read_pool(small_pool)
    a, b = (load_scoring_model(str(runs[k]), mesh=one_device) for k in ("lm_a", "lm_b"))
    sel = select_disagreement(pool, [a, b], 4)
    mean_a = -np.log(select_perplexity(pool, a, 1).fields["score"])
    mean_b = -np.log(select_perplexity(pool, b, 1).fields["score"])
    np.testing.assert_allclose(sel.fields["score"], np.abs(mean_a - mean_b) / 2, rtol=1e-6, atol=1e-9)
    assert sel.order.tolist() == np.argsort(-sel.fields["score"], kind="stable")[:4].tolist()
    assert np.all(select_disagreement(pool, [a, a], 4).fields["score"] == 0)
    with pytest.raises(MaxlmError, match="at least 2 models"):
        select_disagreement(pool, [a], 4)


def test_rm_filter_keeps_the_highest_rewards(runs, small_pool, one_device):
    pool = read_pool(small_pool)
    rm = load_scoring_model(str(runs["rm"]), mesh=one_device)
    sel = select_rm(pool, rm, 2)
    fits = [i for i, r in enumerate(pool.records) if len(rm.encode_reply(r.prompt, r.response)[0]) <= MAX_LEN]
    # Too long: the prompt is cut from the left (scored), or the reply alone does not fit (not scored).
    alone = [len(rm.encode_reply([{"role": "user", "content": ""}], r.response)[0]) <= MAX_LEN for r in pool.records]
    assert sel.summary["truncated"] == len(pool) - len(fits) > 0
    assert sel.summary["too_long"] == alone.count(False) > 0
    scored = np.isfinite(sel.fields["score"])
    assert scored.tolist() == alone
    ids = [rm.encode_reply(pool.records[i].prompt, pool.records[i].response)[0] for i in fits]
    reward = rm.scorer.rewards(ids)
    np.testing.assert_allclose(sel.fields["score"][fits], reward, rtol=1e-6)  # those that fit: as before
    best = np.argsort(-np.where(scored, sel.fields["score"], -np.inf), kind="stable")[:2]
    assert sel.order.tolist() == best.tolist()
    with pytest.raises(MaxlmError, match="not a reward model"):
        select_rm(pool, load_scoring_model(str(runs["lm_a"]), mesh=one_device), 2)


def test_model_method_through_the_cli(runs, small_pool, tmp_path, capsys):
    out = tmp_path / "ifd.jsonl"
    args = ["select", "ifd", "--input", str(small_pool), "--fraction", "0.2", "--output", str(out),
            "--model", str(runs["lm_a"]), "--keep-ifd-over-1", "-q"]
    assert maxlm_main(args) == 0, capsys.readouterr().err
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 2 and {"ppl_conditioned", "ppl_alone", "ifd_over_1", "score"} <= set(rows[0]["select"])
    assert rows[0]["select"]["score"] >= rows[1]["select"]["score"]
    summary = json.loads((tmp_path / "ifd.summary.json").read_text())
    assert summary["model"] == str(runs["lm_a"]) and summary["ifd_over_1_dropped"] is False


# ---------------------------------------------------------------- folds and errors


def test_folds_partition_the_pool_and_train_files_load(small_pool, tmp_path):
    assert maxlm_main(["select", "folds", "--input", str(small_pool), "--k", "3", "--output-dir", str(tmp_path)]) == 0
    held = [[json.loads(l)["id"] for l in (tmp_path / f"heldout_{i}.jsonl").read_text().splitlines()] for i in range(3)]
    train = [[json.loads(l)["id"] for l in (tmp_path / f"train_{i}.jsonl").read_text().splitlines()] for i in range(3)]
    everything = sorted(map(str, sum(held, [])))
    assert len(everything) == 9 and len(set(everything)) == 9
    for h, t in zip(held, train):
        assert sorted(map(str, h + t)) == everything and not set(map(str, h)) & set(map(str, t))
    records, skipped = read_records(str(tmp_path / "train_0.jsonl"), "sft")  # what `maxlm train` reads
    assert len(records) == len(train[0]) and skipped == 0


@pytest.mark.parametrize("content, extra, message", [
    ("", ["--budget", "1"], "no records to select from"),
    ('{"prompt": "a", "response": "b"}\n', ["--budget", "2"], "--budget 2 is larger than the pool, which holds 1 records"),
    ('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n', ["--budget", "1"], "pool.jsonl:2: expected 'messages', or 'prompt' and 'response'"),
    ('{"prompt": "a", "response": "b"}\n{not json\n', ["--budget", "1"], "pool.jsonl:2: invalid JSON"),
    ('{"prompt": "a", "response": "b"}\n', ["--budget", "1", "--model", "x"], "--model is only read with --embedder maxlm"),
    ('{"prompt": "a", "response": "b"}\n', ["--fraction", "1.5"], "--fraction must be in (0, 1]"),
])
def test_bad_input_is_one_line_naming_the_place(tmp_path, capsys, content, extra, message):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(content)
    assert maxlm_main(["select", "kcenter", "--input", str(pool), "--output", str(tmp_path / "o.jsonl"), "-q", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_model_errors_are_one_line(runs, small_pool, tmp_path, capsys):
    base = ["select", "perplexity", "--input", str(small_pool), "--budget", "1", "--output", str(tmp_path / "o.jsonl")]
    assert maxlm_main(base) == 2 and "needs exactly 1 --model, got 0" in capsys.readouterr().err
    assert maxlm_main(base + ["--model", str(tmp_path / "nope")]) == 2 and "no such maxlm run" in capsys.readouterr().err


def test_output_equal_to_input_is_refused_unless_overwrite(small_pool, tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_bytes(small_pool.read_bytes())
    base = ["select", "kcenter", "--input", str(pool), "--budget", "2", "-q"]
    assert maxlm_main(base + ["--output", str(pool)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "is also the input (--input)" in err and "--overwrite" in err
    assert pool.read_bytes() == small_pool.read_bytes()
    # The same file by another name is the same file.
    assert maxlm_main(base + ["--output", str(tmp_path / "." / "pool.jsonl")]) == 2
    assert maxlm_main(base + ["--output", str(pool), "--overwrite"]) == 0
    assert len(pool.read_text().splitlines()) == 2


def test_folds_refuse_a_foreign_non_empty_dir_and_the_input(small_pool, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    base = ["select", "folds", "--input", str(small_pool), "--k", "2", "--output-dir", str(tmp_path)]
    assert maxlm_main(base) == 2 and "exists and is not empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    assert maxlm_main(base + ["--overwrite"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert maxlm_main(base) == 0  # its own earlier folds are rewritten without --overwrite
    inside = tmp_path / "train_0.jsonl"
    assert maxlm_main(["select", "folds", "--input", str(inside), "--k", "2", "--output-dir", str(tmp_path)]) == 2
    assert "is also the input" in capsys.readouterr().err
