"""The Grain pipeline end to end: batches, mixture weights, lanes, epochs, resume (with another process split), eval."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from maxlm.config import Config, DataConfig, SourceConfig, TrainConfig
from maxlm.data.pipeline import make_eval_batches, make_train_iterator, merge_states
from maxlm.errors import MaxlmError

WORDS = "the king hath sent for thee my lord and we shall speak anon of all these things".split()


def _texts(tag: str, n: int) -> list[str]:
    rng = np.random.default_rng(len(tag) * 1000 + n)
    return [f"{tag} {i} " + " ".join(rng.choice(WORDS, size=rng.integers(3, 30))) for i in range(n)]


def _config(sources: list[SourceConfig], *, seq_len=64, batch=4, **data) -> Config:
    return Config(
        data=DataConfig(train_files=sources, eval_files=sources, seq_len=seq_len, prefetch=data.pop("prefetch", 0), **data),
        train=TrainConfig(global_batch_size=batch, seed=3),
    )


def _documents(batches: list[dict], tokenizer) -> list[str]:
    """Returns the whole documents in batches taken in order, lane by lane (row r of successive batches is one stream)."""
    docs = []
    for r in range(len(batches[0]["tokens"])):
        stream = np.concatenate([b["tokens"][r] for b in batches])
        starts = np.flatnonzero(stream == tokenizer.bos_id)
        docs += [tokenizer.decode(stream[a + 1 : b - 1]) for a, b in itertools.pairwise(starts)]
    return docs


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=key)


def _stacked(batches: list[dict]) -> dict:
    """Returns the rows of several processes' batches as one batch (their rows in order)."""
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _ids(docs: list[str], tag: str) -> list[int]:
    return [int(m.group(1)) for d in docs if (m := re.match(rf"{tag} (\d+) ", d))]


@pytest.fixture
def alpha_beta(tmp_path, write_jsonl) -> tuple[SourceConfig, SourceConfig]:
    a = write_jsonl(tmp_path / "alpha.jsonl", _texts("alpha", 200))
    b = write_jsonl(tmp_path / "beta.jsonl", _texts("beta", 50))
    return SourceConfig(path=str(a), weight=3.0), SourceConfig(path=str(b), weight=1.0)


def test_batch_layout(tokenizer, alpha_beta):
    it = make_train_iterator(_config(list(alpha_beta), batch=8), tokenizer, rows=range(4, 8))
    batch = next(it)
    assert sorted(batch) == ["loss_mask", "positions", "segment_ids", "tokens"]
    for key, dtype in [("tokens", np.int32), ("segment_ids", np.int32), ("positions", np.int32), ("loss_mask", np.float32)]:
        assert batch[key].shape == (4, 64) and batch[key].dtype == dtype, key  # rows 4..7 of 8
    # An endless stream packs without padding; every document starts with BOS at position 0.
    assert np.all(batch["segment_ids"] > 0) and np.all(batch["loss_mask"] == 1.0)
    bos = batch["tokens"] == tokenizer.bos_id
    assert np.all(batch["positions"][bos] == 0)
    docs = _documents([next(it) for _ in range(5)], tokenizer)
    assert all(re.match(r"(alpha|beta) \d+ ", d) for d in docs)
    with pytest.raises(MaxlmError, match=r"expected distinct rows of train.global_batch_size \(6\)"):
        make_train_iterator(_config(list(alpha_beta), batch=6), tokenizer, rows=[5, 6])


def test_bos_eos_switches(tokenizer, alpha_beta):
    cfg = _config(list(alpha_beta), add_bos=False, add_eos=False)
    tokens = np.concatenate([next(make_train_iterator(cfg, tokenizer))["tokens"]])
    assert not np.any(np.isin(tokens, [tokenizer.bos_id, tokenizer.eos_id]))


def test_mixture_follows_weights(tokenizer, alpha_beta):
    it = make_train_iterator(_config(list(alpha_beta), batch=8), tokenizer)
    docs = _documents([next(it) for _ in range(40)], tokenizer)
    alpha, beta = len(_ids(docs, "alpha")), len(_ids(docs, "beta"))
    assert alpha + beta == len(docs) > 300
    assert abs(alpha / len(docs) - 0.75) < 0.03


def test_lanes_together_go_through_every_document(tokenizer, alpha_beta):
    it = make_train_iterator(_config([alpha_beta[0]], batch=4), tokenizer)
    # More than one epoch of the 200 documents, dealt over 4 lanes: each lane its own, all of them together.
    lanes = [set(_ids(_documents([{"tokens": b["tokens"][r : r + 1]} for b in batches], tokenizer), "alpha"))
             for batches in [[next(it) for _ in range(40)]] for r in range(4)]
    assert set().union(*lanes) == set(range(200))
    assert all(ids <= set(range(200)) and len(ids) > 40 for ids in lanes)


def test_every_epoch_is_a_new_permutation(tokenizer, alpha_beta):
    it = make_train_iterator(_config([alpha_beta[1]], batch=1), tokenizer)  # one lane: the whole mixture in order
    ids = _ids(_documents([next(it) for _ in range(160)], tokenizer), "beta")
    first, second = ids[:50], ids[50:100]
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second and first != sorted(first)


@pytest.mark.parametrize("prefetch, workers", [(0, 0), (2, 0), (1, 1)])
def test_batches_and_resume_do_not_depend_on_the_process_split(tokenizer, alpha_beta, prefetch, workers):
    cfg = _config(list(alpha_beta), batch=8, prefetch=prefetch, worker_count=workers)
    whole = make_train_iterator(cfg, tokenizer)
    want = [next(whole) for _ in range(6)]
    whole.close()
    # Two "processes" of 4 rows each make exactly the rows of the one process's batches.
    halves = [make_train_iterator(cfg, tokenizer, rows=range(4 * p, 4 * p + 4)) for p in (0, 1)]
    for s in range(3):
        _assert_same(_stacked([next(h) for h in halves]), want[s])
    state = json.loads(json.dumps(merge_states([h.local_state() for h in halves])))  # what the checkpoint stores
    for h in halves:
        h.close()
    # Resumed by four processes of 2 rows, and by one process's scattered rows: the same batches follow.
    quarters = [make_train_iterator(cfg, tokenizer, rows=range(2 * p, 2 * p + 2)) for p in range(4)]
    scattered = make_train_iterator(cfg, tokenizer, rows=[1, 6])
    for it in [*quarters, scattered]:
        it.set_state(state)
    for s in range(3, 6):
        _assert_same(_stacked([next(q) for q in quarters]), want[s])
        _assert_same(next(scattered), {k: v[[1, 6]] for k, v in want[s].items()})
    for it in [*quarters, scattered]:
        it.close()


def test_state_from_another_layout_is_refused(tokenizer, alpha_beta):
    state = make_train_iterator(_config(list(alpha_beta), seq_len=64), tokenizer).get_state()
    other = make_train_iterator(_config(list(alpha_beta), seq_len=32), tokenizer)
    with pytest.raises(MaxlmError, match="seq_len=64 but this run has 32"):
        other.set_state(state)


def test_bad_records_fail_before_iteration_or_are_counted(tokenizer, tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "mixed.jsonl", _texts("ok", 20))
    path.write_text(path.read_text() + "{oops\n" + '{"text": 1}\n')
    with pytest.raises(MaxlmError, match=r"mixed\.jsonl:21: invalid JSON"):
        make_train_iterator(_config([SourceConfig(path=str(path))]), tokenizer)
    it = make_train_iterator(_config([SourceConfig(path=str(path))], on_bad_record="skip"), tokenizer)
    assert it.skipped_records == 2
    next(it)


def test_eval_batches_are_deterministic_in_file_order(tokenizer, alpha_beta):
    cfg = _config([alpha_beta[1]], batch=2)
    batches = make_eval_batches(cfg, tokenizer, num_batches=100)
    again = make_eval_batches(cfg, tokenizer, num_batches=100)
    assert len(batches) == len(again) < 100  # the file ran out before 100 batches
    for b, c in zip(batches, again):
        _assert_same(b, c)
    for r in range(2):  # lane r: documents r, r + 2, r + 4, ... once each, in file order
        stream = np.concatenate([b["tokens"][r][b["segment_ids"][r] != 0] for b in batches])
        starts = np.flatnonzero(stream == tokenizer.bos_id)
        docs = [tokenizer.decode(stream[a + 1 : b - 1]) for a, b in zip(starts, list(starts[1:]) + [len(stream)])]
        assert _ids(docs, "beta") == list(range(r, 50, 2))
    last = batches[-1]
    assert last["tokens"].shape == (2, 64) and np.all(last["loss_mask"] == (last["segment_ids"] != 0))


def test_eval_batches_do_not_depend_on_the_process_split(tokenizer, alpha_beta):
    cfg = _config([alpha_beta[1]], batch=4)
    whole = make_eval_batches(cfg, tokenizer, num_batches=30)
    shards = [make_eval_batches(cfg, tokenizer, num_batches=30, rows=range(2 * p, 2 * p + 2)) for p in (0, 1)]
    assert len(whole) < len(shards[0]) == len(shards[1]) == 30  # same step count on every process, padded
    for s, want in enumerate(whole):
        _assert_same(_stacked([shards[0][s], shards[1][s]]), want)
    tail = shards[0][-1]
    assert tail["tokens"].shape == (2, 64) and np.all(tail["segment_ids"] == 0) and np.all(tail["loss_mask"] == 0)
