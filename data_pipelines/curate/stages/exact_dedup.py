"""Exact deduplication: one 64-bit hash of the whitespace- and case-normalized text."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Dedup


def normalized_hash(text: str) -> int:
    """Returns a 64-bit BLAKE2b hash of `text` lowercased with whitespace runs collapsed."""
    norm = " ".join(text.lower().split())
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass
class ExactDedupParams:
    """Which fields make the compared text; several are joined (e.g. instruction + input)."""

    fields: list[str] = field(default_factory=lambda: ["text"])
    lowercase_and_collapse_whitespace: bool = True

    def __post_init__(self):
        if not self.fields:
            raise ValueError("fields: must name at least one field")


class ExactDedup(Dedup):
    """Keeps the first document of each group whose normalized compared text is identical."""

    name = "exact_dedup"
    Params = ExactDedupParams
    bands = 1

    def keys(self, docs: list[Document]) -> tuple[np.ndarray, np.ndarray]:
        keys = np.zeros((len(docs), 1), dtype=np.uint64)
        valid = np.zeros(len(docs), dtype=bool)
        for i, doc in enumerate(docs):
            text = self.text_of(doc)
            if not text.strip():
                continue  # nothing to compare: empty documents are not duplicates of each other
            if self.p.lowercase_and_collapse_whitespace:
                keys[i, 0] = normalized_hash(text)
            else:
                keys[i, 0] = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
            valid[i] = True
        return keys, valid
