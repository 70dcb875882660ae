"""`builtin:arithmetic[@eval]`: a verifiable task made on the spot (no download) for RL and SFT.

Records `{"prompt": "What is 37 + 58?", "response": "95", "answer": "95"}` serve `task: sft`
(prompt/response) and `task: grpo | ppo` (prompt/answer, checked by the `arithmetic_exact`
verifier). Every sum a + b with 0 <= a, b < 100 belongs to one split by a hash of (a, b), so the
eval split (`@eval`, one pair in ten) holds no sum the train split does.
"""

from __future__ import annotations

import hashlib
import random

from maxlm.files.cache import cached_jsonl

NAMES = {"builtin:arithmetic": "train", "builtin:arithmetic@eval": "eval"}
VERSION = 1
TRAIN_RECORDS = 20000


def _split(a: int, b: int) -> str:
    return "eval" if hashlib.sha256(f"{a}+{b}".encode()).digest()[0] % 10 == 0 else "train"


def records(split: str) -> list[dict]:
    """Returns the split's records: train samples its sums with replacement (seeded), eval lists each once."""
    pairs = [(a, b) for a in range(100) for b in range(100) if _split(a, b) == split]
    if split == "train":
        rng = random.Random(0)
        pairs = [rng.choice(pairs) for _ in range(TRAIN_RECORDS)]
    return [{"prompt": f"What is {a} + {b}?", "response": str(a + b), "answer": str(a + b)} for a, b in pairs]


def arithmetic_path(name: str) -> str:
    """Returns the jsonl file of `builtin:arithmetic[@eval]`, writing it on first use."""
    split = NAMES[name]
    return cached_jsonl(f"arithmetic-v{VERSION}-{split}.jsonl", lambda: records(split))
