"""Post-training records turned into token examples, once, when the run starts.

Encoding every record up front (post-training sets are thousands, not billions, of records)
makes an over-long or empty example a `file:line` error, or a counted skip, before anything
compiles, and leaves the Grain pipeline only indexing and packing.

  sft       Chat -> {"ids": int32 [n], "mask": f32 [n]}: mask 1 on assistant tokens
  rm, dpo   Pair -> {"tokens", "segment_ids", "positions", "loss_mask": [2, T], "margin": f32,
            "pair_mask": f32}: chosen at index 0, rejected at 1, right-padded; loss_mask 1 on
            the completion's tokens (DPO's log-probs are summed there; RM reads the last token).
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

from maxlm.data import chat
from maxlm.data.records import Chat, Pair, read_records
from maxlm.data.tokenizers import Tokenizer
from maxlm.errors import BadRecordError, MaxlmError

log = logging.getLogger(__name__)


class Examples:
    """A random-access list of encoded examples (a Grain data source), with the counts of skipped and cut records.

    `cut`: pairs read with data.pair_truncation=left whose prompt lost its earliest text to fit
    ({"prompt": n, "replies": m}; "replies": the reply alone was too long and lost its end too).
    """

    def __init__(self, name: str, items: list, skipped: int, cut: dict[str, int] | None = None):
        self.name, self.items, self.skipped = name, items, skipped
        self.cut = cut or {"prompt": 0, "replies": 0}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def _sft_example(tokenizer: Tokenizer, template: str, record: Chat, seq_len: int) -> dict:
    ids, mask = chat.encode_chat(tokenizer, template, record.messages)
    if len(ids) > seq_len:
        raise ValueError(f"{len(ids)} tokens is longer than data.seq_len={seq_len}")
    if not any(mask):
        raise ValueError("no assistant tokens to train on")
    return {"ids": np.asarray(ids, np.int32), "mask": np.asarray(mask, np.float32)}


def _pair_example(tokenizer: Tokenizer, template: str, record: Pair, seq_len: int, pad_id: int, truncation: str) -> tuple[dict, str]:
    """Returns (example, cut): cut "" (as read), "prompt" (its earliest text removed) or "replies" (the replies cut too)."""
    prompt, cut = record.prompt, ""
    if truncation == "left":
        prompt, prompt_cut = chat.fit_prompt(tokenizer, template, prompt, (record.chosen, record.rejected), seq_len)
        cut = "prompt" if prompt_cut else ""
    rows = chat.encode_pair(tokenizer, template, prompt, record.chosen, record.rejected)
    out = {
        "tokens": np.full((2, seq_len), pad_id, np.int32),
        "segment_ids": np.zeros((2, seq_len), np.int32),
        "positions": np.zeros((2, seq_len), np.int32),
        "loss_mask": np.zeros((2, seq_len), np.float32),
    }
    for i, (ids, mask) in enumerate(rows):
        if len(ids) > seq_len and truncation == "left":
            # The reply alone is longer than what the prompt's cut could free: the last resort is its end.
            ids, mask, cut = ids[:seq_len], mask[:seq_len], "replies"
        if len(ids) > seq_len:
            raise ValueError(f"prompt + {'chosen' if i == 0 else 'rejected'} is {len(ids)} tokens, longer than data.seq_len={seq_len}")
        if not any(mask):
            raise ValueError(f"empty {'chosen' if i == 0 else 'rejected'} completion after tokenization")
        n = len(ids)
        out["tokens"][i, :n] = ids
        out["segment_ids"][i, :n] = 1
        out["positions"][i, :n] = np.arange(n)
        out["loss_mask"][i, :n] = mask
    if np.array_equal(out["tokens"][0], out["tokens"][1]):
        raise ValueError("chosen and rejected encode to the same tokens")
    out["margin"] = np.float32(record.margin or 0.0)
    out["pair_mask"] = np.float32(1.0)
    return out, cut


def record_texts(path: str, task: str, on_bad_record: str, rows: str = "") -> list[str]:
    """Returns every message and completion text of the records `path` names in `rows` (tokenizer training)."""
    texts = []
    for r in read_records(path, task, on_bad_record, rows=rows)[0]:
        if isinstance(r, Chat):
            texts += [m["content"] for m in r.messages]
        elif isinstance(r, Pair):
            texts += [m["content"] for m in r.prompt] + [r.chosen, r.rejected]
        else:
            texts += [m["content"] for m in r.prompt] + ([r.answer] if r.answer else [])
    return texts


def encode_file(
    path: str, task: str, tokenizer: Tokenizer, template: str, seq_len: int, on_bad_record: str, rows: str = "",
    pair_truncation: str = "skip",
) -> Examples:
    """Returns the encoded examples of every file `path` names (a file or glob) for `task`.

    `rows` ("start:stop") selects records by their place in the files, before any is dropped
    for length, so a train/held-out split does not move when data.seq_len changes.
    `pair_truncation` (data.pair_truncation): "skip" drops (or, on_bad_record=error, refuses) a
    pair longer than seq_len; "left" cuts its prompt from the left (`chat.fit_prompt`) instead.
    """
    items, first_bad = [], None
    cut = {"prompt": 0, "replies": 0}
    records, skipped = read_records(path, task, on_bad_record, rows=rows)
    for record in tqdm(records, desc=f"encode {path}", unit="rec", leave=False, mininterval=2.0, disable=len(records) < 5000):
        try:
            if isinstance(record, Chat):
                items.append(_sft_example(tokenizer, template, record, seq_len))
            else:
                item, how = _pair_example(tokenizer, template, record, seq_len, tokenizer.pad_id, pair_truncation)
                items.append(item)
                cut["prompt"] += how != ""  # "replies": the prompt was cut as far as it goes first
                cut["replies"] += how == "replies"
        except ValueError as e:
            message = f"{record.where}: {e}"
            if on_bad_record == "error":
                raise BadRecordError(message) from None
            first_bad = first_bad or message
            skipped += 1
    if first_bad:
        log.warning("skipped records that do not fit, first: %s", first_bad)
    if cut["prompt"]:
        log.info("%s: %d pairs had their prompt cut from the left to fit seq_len=%d (%d of them their replies too)",
                 path, cut["prompt"], seq_len, cut["replies"])
    if not items:
        raise MaxlmError(f"{path}: no usable {task} examples" + (f" ({skipped} skipped)" if skipped else ""))
    return Examples(path, items, skipped, cut)
