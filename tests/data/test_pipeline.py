"""The Grain pipeline end to end: batches, mixture weights, process shards, epochs, resume, eval."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from maxlm.config import Config, DataConfig, SourceConfig, TrainConfig
from maxlm.data.pipeline import make_eval_batches, make_train_iterator
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
    """Returns the whole documents in batches taken in order (rows of one stream are consecutive)."""
    stream = np.concatenate([b["tokens"].reshape(-1) for b in batches])
    starts = np.flatnonzero(stream == tokenizer.bos_id)
    return [tokenizer.decode(stream[a + 1 : b - 1]) for a, b in zip(starts[:-1], starts[1:])]


def _ids(docs: list[str], tag: str) -> list[int]:
    return [int(m.group(1)) for d in docs if (m := re.match(rf"{tag} (\d+) ", d))]


@pytest.fixture
def alpha_beta(tmp_path, write_jsonl) -> tuple[SourceConfig, SourceConfig]:
    a = write_jsonl(tmp_path / "alpha.jsonl", _texts("alpha", 200))
    b = write_jsonl(tmp_path / "beta.jsonl", _texts("beta", 50))
    return SourceConfig(path=str(a), weight=3.0), SourceConfig(path=str(b), weight=1.0)


def test_batch_layout(tokenizer, alpha_beta):
    it = make_train_iterator(_config(list(alpha_beta), batch=8), tokenizer, process_index=1, process_count=2)
    batch = next(it)
    assert sorted(batch) == ["loss_mask", "positions", "segment_ids", "tokens"]
    for key, dtype in [("tokens", np.int32), ("segment_ids", np.int32), ("positions", np.int32), ("loss_mask", np.float32)]:
        assert batch[key].shape == (4, 64) and batch[key].dtype == dtype, key  # 8 rows / 2 processes
    # An endless stream packs without padding; every document starts with BOS at position 0.
    assert np.all(batch["segment_ids"] > 0) and np.all(batch["loss_mask"] == 1.0)
    bos = batch["tokens"] == tokenizer.bos_id
    assert np.all(batch["positions"][bos] == 0)
    docs = _documents([next(it) for _ in range(5)], tokenizer)
    assert all(re.match(r"(alpha|beta) \d+ ", d) for d in docs)
    with pytest.raises(MaxlmError, match="must divide by the number of processes"):
        make_train_iterator(_config(list(alpha_beta), batch=6), tokenizer, process_index=0, process_count=4)


def test_bos_eos_switches(tokenizer, alpha_beta):
    cfg = _config(list(alpha_beta), add_bos=False, add_eos=False)
    tokens = np.concatenate([next(make_train_iterator(cfg, tokenizer, 0, 1))["tokens"]])
    assert not np.any(np.isin(tokens, [tokenizer.bos_id, tokenizer.eos_id]))


def test_mixture_follows_weights(tokenizer, alpha_beta):
    it = make_train_iterator(_config(list(alpha_beta), batch=8), tokenizer, 0, 1)
    docs = _documents([next(it) for _ in range(40)], tokenizer)
    alpha, beta = len(_ids(docs, "alpha")), len(_ids(docs, "beta"))
    assert alpha + beta == len(docs) > 300
    assert abs(alpha / len(docs) - 0.75) < 0.03


def test_processes_see_disjoint_documents(tokenizer, alpha_beta):
    seen = []
    for process in (0, 1):
        it = make_train_iterator(_config([alpha_beta[0]], batch=4), tokenizer, process, 2)
        seen.append(set(_ids(_documents([next(it) for _ in range(40)], tokenizer), "alpha")))
    # Each went through its whole half (more than one epoch of it) and nothing else.
    assert seen[0] == set(range(0, 200, 2)) and seen[1] == set(range(1, 200, 2))


def test_every_epoch_is_a_new_permutation(tokenizer, alpha_beta):
    it = make_train_iterator(_config([alpha_beta[1]], batch=4), tokenizer, 0, 1)
    ids = _ids(_documents([next(it) for _ in range(40)], tokenizer), "beta")
    first, second = ids[:50], ids[50:100]
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second and first != sorted(first)


@pytest.mark.parametrize("prefetch, workers", [(2, 0), (0, 0), (1, 1)])
def test_state_resumes_bit_identical(tokenizer, alpha_beta, prefetch, workers):
    cfg = _config(list(alpha_beta), prefetch=prefetch, worker_count=workers)
    it = make_train_iterator(cfg, tokenizer, 0, 1)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    expected = [next(it) for _ in range(4)]
    it.close()
    resumed = make_train_iterator(cfg, tokenizer, 0, 1)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(4)]
    resumed.close()
    for e, g in zip(expected, got):
        for key in e:
            np.testing.assert_array_equal(e[key], g[key])


def test_state_from_another_layout_is_refused(tokenizer, alpha_beta):
    state = make_train_iterator(_config(list(alpha_beta), seq_len=64), tokenizer, 0, 1).get_state()
    other = make_train_iterator(_config(list(alpha_beta), seq_len=32), tokenizer, 0, 1)
    with pytest.raises(MaxlmError, match="seq_len=64 but this run has 32"):
        other.set_state(state)


def test_bad_records_fail_before_iteration_or_are_counted(tokenizer, tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "mixed.jsonl", _texts("ok", 20))
    path.write_text(path.read_text() + "{oops\n" + '{"text": 1}\n')
    with pytest.raises(MaxlmError, match=r"mixed\.jsonl:21: invalid JSON"):
        make_train_iterator(_config([SourceConfig(path=str(path))]), tokenizer, 0, 1)
    it = make_train_iterator(_config([SourceConfig(path=str(path))], on_bad_record="skip"), tokenizer, 0, 1)
    assert it.skipped_records == 2
    next(it)


def test_eval_batches_are_deterministic_in_file_order(tokenizer, alpha_beta):
    cfg = _config([alpha_beta[1]], batch=2)
    batches = make_eval_batches(cfg, tokenizer, num_batches=100)
    again = make_eval_batches(cfg, tokenizer, num_batches=100)
    assert len(batches) == len(again) < 100  # the file ran out before 100 batches
    for b, c in zip(batches, again):
        for key in b:
            np.testing.assert_array_equal(b[key], c[key])
    stream = np.concatenate([b["tokens"][b["segment_ids"] != 0] for b in batches])
    starts = np.flatnonzero(stream == tokenizer.bos_id)
    docs = [tokenizer.decode(stream[a + 1 : b - 1]) for a, b in zip(starts, list(starts[1:]) + [len(stream)])]
    assert _ids(docs, "beta") == list(range(50))  # every document once, in order
    last = batches[-1]
    assert last["tokens"].shape == (2, 64) and np.all(last["loss_mask"] == (last["segment_ids"] != 0))


def test_eval_batches_split_over_processes(tokenizer, alpha_beta):
    cfg = _config([alpha_beta[1]], batch=4)
    shards = [make_eval_batches(cfg, tokenizer, num_batches=30, process_index=p, process_count=2) for p in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 30  # same step count on every process, padded
    tail = shards[0][-1]
    assert tail["tokens"].shape == (2, 64) and np.all(tail["segment_ids"] == 0) and np.all(tail["loss_mask"] == 0)
