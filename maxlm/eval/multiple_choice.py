"""Multiple choice by log-likelihood (MMLU format): the model's pick is the choice it finds most likely.

Each choice is scored as a completion of the question: for chat runs the question is a user
message and the choice the assistant's reply (with its end-of-turn marker, as sft trains it);
for pretrain runs the prompt is `Question: {question}\\nAnswer:` and the continuation
` {choice}`. `acc` picks the highest summed log-prob; `acc_norm` the highest log-prob per
UTF-8 byte of the choice text, as lm-eval-harness's acc_norm does, which stops long choices
losing only for being long.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from maxlm.data import chat, formats, records as records_lib
from maxlm.data.formats import BadRecord
from maxlm.data.sources import expand, row_slice
from maxlm.data.tokenizers import Tokenizer, load_tokenizer
from maxlm.errors import MaxlmError
from maxlm.infer.scoring import Scorer
from maxlm.pretrained import Pretrained
from maxlm.tasks import TASKS

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Question:
    """One multiple-choice item: the index of the right choice in `answer`."""

    question: str
    choices: list[str]
    answer: int
    subject: str = ""
    where: str = ""


def parse_question(record: object) -> Question:
    """Returns the Question of an MMLU-style record; BadRecord says what is wrong."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    question, choices, answer = record.get("question"), record.get("choices"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise BadRecord("'question' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise BadRecord(f"'choices' must be a list of at least 2 non-empty strings, got {choices!r}"[:200])
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in LETTERS:
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    else:
        raise BadRecord(f"'answer' must be a choice index or a letter A-{LETTERS[len(choices) - 1]}, got {answer!r}")
    if not 0 <= index < len(choices):
        raise BadRecord(f"'answer' {answer!r} is out of range for {len(choices)} choices")
    subject = record.get("subject") or ""
    if not isinstance(subject, str):
        raise BadRecord(f"'subject' must be a string, got {type(subject).__name__}")
    return Question(question, choices, index, subject)


def read_questions(path: str, on_bad_record: str = "error") -> tuple[list[Question], int]:
    """Returns (the questions of a file or glob (jsonl, json, parquet), how many bad records were skipped).

    A bad record is an error naming file:line, or with on_bad_record="skip" is dropped and counted.
    """
    if on_bad_record not in ("error", "skip"):
        raise MaxlmError(f"on_bad_record must be error or skip, got {on_bad_record!r}")
    out, bad = [], 0
    for f in expand(path):
        # The post-training reader's raw records: the same formats, BOM handling and line numbers.
        for lineno, raw in records_lib.raw_records(f):
            try:
                record = formats.json_value(raw) if isinstance(raw, bytes) else raw
                q = parse_question(record)
            except BadRecord as e:
                if on_bad_record == "error":
                    raise MaxlmError(f"{f}:{lineno}: {e}") from None
                bad += 1
                continue
            out.append(Question(q.question, q.choices, q.answer, q.subject, f"{f}:{lineno}"))
    if not out:
        raise MaxlmError(f"{path}: no multiple-choice records" + (f" ({bad} bad records skipped)" if bad else ""))
    return out, bad


def encode_choice(model: Pretrained, tokenizer: Tokenizer, question: str, choice: str) -> tuple[list[int], list[int], int]:
    """Returns (ids, mask 1 on the choice's tokens, the choice text's UTF-8 bytes) for one question and choice."""
    if not TASKS[model.config.task].chat:
        bos = [tokenizer.bos_id] if model.config.data.add_bos and tokenizer.bos_id >= 0 else []
        context = bos + tokenizer.encode(f"Question: {question}\nAnswer:")
        # Encoded apart so the mask falls on whole tokens; the space belongs to the continuation.
        continuation = tokenizer.encode(" " + choice)
        return context + continuation, [0] * len(context) + [1] * len(continuation), len((" " + choice).encode())
    ids, mask = chat.encode_completion(tokenizer, model.config.data.chat_template, question, choice)
    return ids, mask, len(choice.encode())


def multiple_choice(model: Pretrained, path: str, rows: str = "", batch_tokens: int = 16384, on_bad_record: str = "error") -> dict:
    """Returns {"acc", "acc_norm", "n", "skipped", "bad_records", "subjects"} of the model on the questions in `path`.

    `subjects` maps each record `subject` to its own {"acc", "acc_norm", "n"} (empty without
    subjects). Questions with a choice longer than model.max_seq_len are skipped and counted.
    """
    if not model.tokenizer:
        raise MaxlmError("eval mc: this model has no tokenizer files")
    tokenizer = load_tokenizer(model.tokenizer)
    questions, bad = read_questions(path, on_bad_record)
    questions = questions[row_slice(rows, len(questions), path)]
    if not questions:
        raise MaxlmError(f"{path}: rows {rows!r} selects none of its records")
    kept, ids, masks, nbytes = [], [], [], []
    for q in questions:
        encoded = [encode_choice(model, tokenizer, q.question, c) for c in q.choices]
        if max(len(x) for x, _, _ in encoded) > model.config.model.max_seq_len:
            continue
        kept.append(q)
        for x, m, b in encoded:
            ids.append(x)
            masks.append(m)
            nbytes.append(b)
    if not kept:
        raise MaxlmError(f"{path}: every question is longer than model.max_seq_len={model.config.model.max_seq_len}")
    logp, _ = Scorer(model, batch_tokens).logprobs(ids, masks)  # every choice of every question in one pass
    right, right_norm = [], []
    start = 0
    for q in kept:
        n = len(q.choices)
        scores = logp[start : start + n]
        right.append(int(np.argmax(scores)) == q.answer)
        right_norm.append(int(np.argmax(scores / np.asarray(nbytes[start : start + n]))) == q.answer)
        start += n
    result = {"acc": float(np.mean(right)), "acc_norm": float(np.mean(right_norm)), "n": len(kept),
              "skipped": len(questions) - len(kept), "bad_records": bad}
    groups = defaultdict(list)
    for q, a, b in zip(kept, right, right_norm):
        if q.subject:
            groups[q.subject].append((a, b))
    result["subjects"] = {s: {"acc": float(np.mean([a for a, _ in g])), "acc_norm": float(np.mean([b for _, b in g])), "n": len(g)}
                          for s, g in sorted(groups.items())}
    return result
