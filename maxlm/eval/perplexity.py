"""Held-out perplexity: exp of the mean next-token NLL, over pretraining text or chat responses.

Text documents are tokenized as training tokenizes them (BOS / EOS per data.add_bos /
add_eos) and cut into windows of model.max_seq_len tokens that overlap by one, so every
token after a document's first is predicted exactly once, from the tokens of its own window.
Chat records (`task="sft"`) are rendered with the run's chat template and only the assistant
tokens (with their end-of-turn markers, as sft trains them) are scored; records longer than
model.max_seq_len are skipped and counted. Malformed records stop the evaluation with
`file:line: what is wrong`, or with on_bad_record="skip" are dropped and counted (`bad_records`).
"""

from __future__ import annotations

import numpy as np

from maxlm.config import SourceConfig
from maxlm.data import chat
from maxlm.data.records import read_records
from maxlm.data.sources import open_source, row_slice
from maxlm.data.tokenizers import Tokenizer, load_tokenizer
from maxlm.errors import MaxlmError
from maxlm.infer.scoring import Scorer, perplexity
from maxlm.pretrained import Pretrained
from maxlm.tasks import TASKS as TASK_TABLE

TASKS = ("pretrain", "sft")  # the language-modelling tasks: plain documents, or chat records' replies


def windows(ids: list[int], length: int) -> list[list[int]]:
    """Returns `ids` cut into windows of at most `length` tokens, each starting on the previous one's last token."""
    if length < 2:
        raise MaxlmError(f"model.max_seq_len must be >= 2 to score a token in context, got {length}")
    # The shared token is context only (a window's first token is never scored): no token twice.
    return [ids[s : s + length] for s in range(0, max(len(ids) - 1, 1), length - 1)]


def eval_perplexity(
    model: Pretrained, paths: list[str], task: str = "pretrain", rows: str = "", batch_tokens: int = 16384, on_bad_record: str = "error"
) -> dict:
    """Returns {"perplexity", "nll", "tokens", ...} of the model on the documents (or sft replies) in `paths`.

    `nll` is the mean negative log-likelihood per scored token (nats); `rows` ("start:stop")
    selects documents or records by their place across all the files.
    """
    if task not in TASKS:
        raise MaxlmError(f"eval perplexity: --task must be one of {', '.join(TASKS)}, got {task!r}")
    if not model.tokenizer:
        raise MaxlmError("eval perplexity: this model has no tokenizer files")
    tokenizer = load_tokenizer(model.tokenizer)
    if not TASK_TABLE[task].chat:
        ids, masks, counts = _text_windows(model, tokenizer, paths, rows, on_bad_record)
    else:
        ids, masks, counts = _reply_sequences(model, tokenizer, paths, rows, on_bad_record)
    logp, scored = Scorer(model, batch_tokens).logprobs(ids, masks)
    total, n = float(np.sum(logp)), float(np.sum(scored))
    if n == 0:
        raise MaxlmError(f"{', '.join(paths)}: no tokens to score (every document is shorter than 2 tokens)")
    return {"perplexity": float(perplexity(total, n)), "nll": -total / n, "tokens": int(n), "task": task, **counts}


def _text_windows(model: Pretrained, tokenizer: Tokenizer, paths: list[str], rows: str, on_bad_record: str) -> tuple[list, None, dict]:
    """Returns (the windows of every selected document, no masks, {"documents", "windows", "bad_records"})."""
    sources = [open_source(SourceConfig(path=p), on_bad_record) for p in paths]  # every file validated before any is scored
    docs = [(s, i) for s in sources for i in range(len(s))]
    docs = docs[row_slice(rows, len(docs), ", ".join(paths))]
    if not docs:
        raise MaxlmError(f"{', '.join(paths)}: rows {rows!r} selects none of its documents")
    d = model.config.data
    prefix = [tokenizer.bos_id] if d.add_bos and tokenizer.bos_id >= 0 else []
    suffix = [tokenizer.eos_id] if d.add_eos and tokenizer.eos_id >= 0 else []
    length = model.config.model.max_seq_len
    out = [w for s, i in docs for w in windows(prefix + tokenizer.encode(s[i]) + suffix, length)]
    return out, None, {"documents": len(docs), "windows": len(out), "bad_records": sum(s.skipped for s in sources)}


def _reply_sequences(model: Pretrained, tokenizer: Tokenizer, paths: list[str], rows: str, on_bad_record: str) -> tuple[list, list, dict]:
    """Returns (ids, reply masks, {"records", "skipped", "bad_records"}) of the chat records that fit model.max_seq_len."""
    read = [read_records(p, "sft", on_bad_record) for p in paths]
    records = [r for rs, _ in read for r in rs]
    records = records[row_slice(rows, len(records), ", ".join(paths))]
    if not records:
        raise MaxlmError(f"{', '.join(paths)}: rows {rows!r} selects none of its records")
    ids, masks, skipped = [], [], 0
    for r in records:
        x, m = chat.encode_chat(tokenizer, model.config.data.chat_template, r.messages)
        if len(x) > model.config.model.max_seq_len:
            skipped += 1  # as eval rm does: a held-out set is not rejected for one long record
            continue
        ids.append(x)
        masks.append(m)
    if not ids:
        raise MaxlmError(f"{', '.join(paths)}: every record is longer than model.max_seq_len={model.config.model.max_seq_len}")
    return ids, masks, {"records": len(ids), "skipped": skipped, "bad_records": sum(bad for _, bad in read)}
