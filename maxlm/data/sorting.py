"""`builtin:sort[@eval]`: sort a short list of digits, a verifiable task made on the spot (no download).

Records `{"prompt": "Sort: 7 3 9 1", "response": "1 3 7 9", "answer": "1 3 7 9"}` serve
`task: sft` (prompt/response) and `task: grpo | ppo` (prompt/answer, checked by the `sort_exact`
verifier). A list holds MIN_LEN..MAX_LEN digits, repeats allowed. Every multiset of digits belongs
to one split by a hash of its sorted digits, so no eval list is a reordering of a train list and
no eval answer is a train answer. Train draws its multisets uniformly with replacement; eval
lists each of its multisets once (1,210), in a seeded shuffle so that any prefix of the eval file
is a fair sample; each record shows its digits in a seeded random order.
"""

from __future__ import annotations

import hashlib
import itertools
import random

from maxlm.files.cache import cached_jsonl

NAMES = {"builtin:sort": "train", "builtin:sort@eval": "eval"}
VERSION = 1
TRAIN_RECORDS = 20000
MIN_LEN, MAX_LEN = 3, 8
EVAL_EVERY = 40  # one multiset in 40 is held out: 1,210 eval lists


def split_of(digits: list[int]) -> str:
    """Returns "eval" or "train": the split of every list of these digits, in any order."""
    key = hashlib.sha256(("sort:" + " ".join(map(str, sorted(digits)))).encode()).digest()
    return "eval" if key[0] % EVAL_EVERY == 0 else "train"


def multisets(split: str) -> list[tuple[int, ...]]:
    """Returns the split's multisets of digits as sorted tuples, shortest first."""
    every = (m for n in range(MIN_LEN, MAX_LEN + 1) for m in itertools.combinations_with_replacement(range(10), n))
    return [m for m in every if split_of(list(m)) == split]


def record(digits: list[int]) -> dict:
    """Returns the sft/grpo record of one list of digits, in the order given."""
    answer = " ".join(map(str, sorted(digits)))
    return {"prompt": "Sort: " + " ".join(map(str, digits)), "response": answer, "answer": answer}


def records(split: str) -> list[dict]:
    """Returns the split's records, seeded: train draws its multisets with replacement, eval lists each once, shuffled."""
    rng = random.Random(0 if split == "train" else 1)
    chosen = multisets(split)
    if split == "train":
        chosen = [rng.choice(chosen) for _ in range(TRAIN_RECORDS)]
    else:
        rng.shuffle(chosen)
    out = []
    for m in chosen:
        digits = list(m)
        rng.shuffle(digits)
        out.append(record(digits))
    return out


def sort_path(name: str) -> str:
    """Returns the jsonl file of `builtin:sort[@eval]`, writing it on first use."""
    split = NAMES[name]
    return cached_jsonl(f"sort-v{VERSION}-{split}.jsonl", lambda: records(split))
