"""Post-training examples: SFT rows keep whole conversations and mask all but the replies;
preference pairs are [2, T] rows whose mask covers exactly the completion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maxlm.config import Config, DataConfig, SourceConfig, TrainConfig
from maxlm.data import chat
from maxlm.data.examples import encode_file
from maxlm.data.pipeline import make_eval_batches, make_train_iterator
from maxlm.errors import MaxlmError


def write_records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


SFT = [{"prompt": f"Question {i}: what is {i} plus {i}?", "response": f"The answer is {2 * i}."} for i in range(40)]
PAIRS = [{"prompt": f"Say something kind about {i}.", "chosen": f"{i} is a fine number.", "rejected": f"{i} is awful, go away."} for i in range(40)]


def test_sft_rows_hold_whole_conversations_with_reply_masks(tokenizer, tmp_path):
    path = write_records(tmp_path / "sft.jsonl", SFT)
    examples = encode_file(path, "sft", tokenizer, "default", 64, "error")
    assert len(examples) == 40
    cfg = Config(task="sft", data=DataConfig(train_files=[SourceConfig(path=path)], seq_len=64, shuffle=False, prefetch=0), train=TrainConfig(global_batch_size=4))
    batch = next(make_train_iterator(cfg, tokenizer))
    seen = 0
    for row in range(4):
        seg = batch["segment_ids"][row]
        for s in range(1, seg.max() + 1):
            ids = batch["tokens"][row][seg == s].tolist()
            mask = batch["loss_mask"][row][seg == s].tolist()
            # Every segment is one whole example, never a piece: a conversation is not split across rows.
            want_ids, want_mask = chat.encode_chat(tokenizer, "default", [{"role": "user", "content": SFT[seen]["prompt"]}, {"role": "assistant", "content": SFT[seen]["response"]}])
            assert ids == want_ids and mask == want_mask
            assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == SFT[seen]["response"] + tokenizer.decode([tokenizer.eos_id])
            seen += 1
    assert seen >= 4


def test_too_long_examples_fail_with_file_line_or_are_counted(tokenizer, tmp_path):
    long = dict(SFT[0], response="word " * 200)
    path = write_records(tmp_path / "sft.jsonl", [SFT[0], long, SFT[1]])
    with pytest.raises(MaxlmError, match=r"sft\.jsonl:2: .* longer than data\.seq_len=64"):
        encode_file(path, "sft", tokenizer, "default", 64, "error")
    examples = encode_file(path, "sft", tokenizer, "default", 64, "skip")
    assert len(examples) == 2 and examples.skipped == 1


def test_pairs_are_two_right_padded_rows_masked_on_the_completion(tokenizer, tmp_path):
    path = write_records(tmp_path / "pairs.jsonl", PAIRS[:3])
    ex = encode_file(path, "dpo", tokenizer, "default", 96, "error")[1]
    assert ex["tokens"].shape == (2, 96) and ex["pair_mask"] == 1.0
    for i, text in enumerate([PAIRS[1]["chosen"], PAIRS[1]["rejected"]]):
        n = int(ex["segment_ids"][i].sum())
        assert (ex["segment_ids"][i, n:] == 0).all() and (ex["positions"][i, :n] == np.arange(n)).all()
        completion = [t for t, m in zip(ex["tokens"][i], ex["loss_mask"][i]) if m]
        assert tokenizer.decode(completion) == text + tokenizer.decode([tokenizer.eos_id])
        prompt = chat.encode_prompt(tokenizer, "default", PAIRS[1]["prompt"])
        assert ex["tokens"][i, : len(prompt)].tolist() == prompt


def test_rows_slice_records_before_length_filtering(tokenizer, tmp_path):
    records = [dict(PAIRS[0], chosen="long " * 300)] + PAIRS[1:10]
    path = write_records(tmp_path / "pairs.jsonl", records)
    assert len(encode_file(path, "rm", tokenizer, "default", 96, "skip", "0:5")) == 4  # record 0 dropped for length
    held = encode_file(path, "rm", tokenizer, "default", 96, "skip", "5:")
    assert len(held) == 5 and held.skipped == 0
    with pytest.raises(MaxlmError, match="rows"):
        encode_file(path, "rm", tokenizer, "default", 96, "skip", "5")


def test_left_truncation_keeps_long_pairs_with_whole_replies_and_counts_them(tokenizer, tmp_path):
    long_prompt = [{"role": "user", "content": "tell me of the king " * 40}, {"role": "assistant", "content": "He is dead."},
                   {"role": "user", "content": PAIRS[1]["prompt"]}]
    records = [PAIRS[0], dict(PAIRS[1], prompt=long_prompt), dict(PAIRS[2], chosen="long " * 300)]
    path = write_records(tmp_path / "pairs.jsonl", records)
    skipping = encode_file(path, "rm", tokenizer, "default", 96, "skip")
    assert len(skipping) == 1 and skipping.skipped == 2 and skipping.cut == {"prompt": 0, "replies": 0}
    ex = encode_file(path, "rm", tokenizer, "default", 96, "error", pair_truncation="left")
    assert len(ex) == 3 and ex.skipped == 0 and ex.cut == {"prompt": 2, "replies": 1}
    for k in ("tokens", "loss_mask", "segment_ids"):  # a pair that fits is encoded as before
        np.testing.assert_array_equal(ex[0][k], skipping[0][k])
    for i, reply in enumerate([PAIRS[1]["chosen"], PAIRS[1]["rejected"]]):
        n = int(ex[1]["segment_ids"][i].sum())
        ids, mask = ex[1]["tokens"][i, :n].tolist(), ex[1]["loss_mask"][i, :n].tolist()
        assert ids[0] == tokenizer.bos_id and n <= 96
        # Whole reply, after the latest user turn and the assistant header of the uncut prompt.
        assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == reply + tokenizer.decode([tokenizer.eos_id])
        tail = chat.encode_prompt(tokenizer, "default", long_prompt[2:])[1:]
        assert ids[: mask.index(1)][-len(tail):] == tail
    # A reply longer than the row: the prompt is as short as it gets and the reply loses its end.
    bare = len(chat.encode_prompt(tokenizer, "default", [{"role": "user", "content": ""}]))
    assert ex[2]["segment_ids"][0].sum() == 96 and ex[2]["loss_mask"][0].sum() == 96 - bare


def test_pair_batches_resume_and_eval_pads_with_empty_pairs(tokenizer, tmp_path):
    path = write_records(tmp_path / "pairs.jsonl", PAIRS)
    src = SourceConfig(path=path)
    cfg = Config(task="dpo", data=DataConfig(train_files=[src], eval_files=[SourceConfig(path=path, rows="0:6")], seq_len=96, prefetch=0), train=TrainConfig(global_batch_size=4))
    it = make_train_iterator(cfg, tokenizer)
    next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = next(it)
    again = make_train_iterator(cfg, tokenizer)
    again.set_state(state)
    got = next(again)
    assert want["tokens"].shape == (4, 2, 96)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    evals = make_eval_batches(cfg, tokenizer, 5)
    assert [b["pair_mask"].tolist() for b in evals] == [[1, 1, 1, 1], [1, 1, 0, 0]]
