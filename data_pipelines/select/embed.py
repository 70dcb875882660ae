"""Embeddings of pool records: a hashed TF-IDF default that needs no model, or a maxlm model's hidden states.

`hashed` (the default) is latent semantic analysis (Deerwester et al. 1990) of TF-IDF over
lowercased word unigrams and bigrams: n-grams are hashed into 2^20 features (feature hashing,
Weinberger et al. 2009); each record's TF-IDF row (sublinear 1 + log tf, smoothed idf of the
pool log((1 + N) / (1 + df)) + 1, unit norm) is sketched to `SKETCH` dimensions by a fixed
sparse random projection (each feature adds ±1 to `NONZEROS` hashed coordinates; Achlioptas
2003, Li et al. 2006), and the sketch's top `dim` singular directions give the embedding
(the sketch keeps the Gram matrix of the rows, so its SVD approximates the TF-IDF matrix's,
as in Halko et al. 2011), L2-normalized. LSA rather than the raw projection: raw TF-IDF
vectors of different texts are almost orthogonal, so every distance is near sqrt(2); the top
singular directions keep the topical structure that coverage should be measured in.
It needs only numpy and gives the same vectors for the same pool on every run. Why not a
library: sentence-transformers installs here, but every one of its models needs a download,
and scikit-learn (which has these pieces) is not installed.

`maxlm` mean-pools a model's final hidden states over the record rendered with its chat
template (`maxlm.infer.scoring.Scorer.embed`), L2-normalized.
Letters: N records, D embedding dimension.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np

from maxlm.errors import MaxlmError

N_FEATURES = 1 << 20
SKETCH = 512  # random-projection width before the SVD (eigh of S x S: 0.2 s at 512, 3 s at 1024)
NONZEROS = 4  # coordinates each hashed feature touches in the projection
_WORD = re.compile(r"\w+")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def record_text(messages: Sequence[dict]) -> str:
    """Returns the text the hashed embedder reads: every message's content, one a paragraph."""
    return "\n\n".join(m["content"] for m in messages)


def hashed_lsa(texts: Sequence[str], dim: int = 128, seed: int = 0, chunk: int = 4096) -> np.ndarray:
    """Returns f32 [N, dim] unit-norm LSA embeddings of `texts` (zero rows for texts without words)."""
    if not 1 <= dim <= SKETCH:
        raise MaxlmError(f"embedding dim must be between 1 and {SKETCH}, got {dim}")
    y_NxS = _sketch(texts, seed, chunk)
    # The top right singular vectors of the sketch, from its S x S Gram matrix: cheap for any N.
    gram_SxS = y_NxS.T.astype(np.float64) @ y_NxS.astype(np.float64)
    _, vecs_SxS = np.linalg.eigh(gram_SxS)  # ascending eigenvalues
    x_NxD = (y_NxS @ vecs_SxS[:, ::-1][:, :dim].astype(np.float32)).astype(np.float32)
    return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=1, keepdims=True), 1e-12)


def _sketch(texts: Sequence[str], seed: int, chunk: int) -> np.ndarray:
    """Returns f32 [N, SKETCH]: each text's unit TF-IDF row under the fixed sparse random projection."""
    cache: dict[str, int] = {}
    df = np.zeros(N_FEATURES, np.int64)
    for text in texts:  # pass 1: document frequencies; features are recomputed in pass 2 to bound memory
        df[_features(text, cache)[0]] += 1
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    y_NxS = np.zeros((len(texts), SKETCH), np.float32)
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        rows, feats, weights = [], [], []
        for r, text in enumerate(part):
            f, counts = _features(text, cache)
            w = (1.0 + np.log(counts)) * idf[f]
            rows.append(np.full(len(f), r, np.int64))
            feats.append(f)
            weights.append(w / max(np.linalg.norm(w), 1e-12))
        rows_F, feats_F, w_F = np.concatenate(rows), np.concatenate(feats).astype(np.uint64), np.concatenate(weights)
        block = np.zeros(len(part) * SKETCH, np.float64)
        for j in range(NONZEROS):
            with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
                h = _mix(feats_F * np.uint64(NONZEROS) + np.uint64(j) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
            col = (h % np.uint64(SKETCH)).astype(np.int64)
            sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
            block += np.bincount(rows_F * SKETCH + col, weights=sign * w_F, minlength=block.size)
        y_NxS[start : start + chunk] = block.reshape(-1, SKETCH) / np.sqrt(NONZEROS)
    return y_NxS


def model_embeddings(scorer, tokenizer, template: str, conversations: Sequence[Sequence[dict]]) -> np.ndarray:
    """Returns f32 [N, D] unit-norm mean-pooled hidden states of each conversation rendered with `template`."""
    from maxlm.data.chat import encode_chat

    ids = [encode_chat(tokenizer, template, list(c))[0][: scorer.max_len] for c in conversations]
    return scorer.embed(ids, normalize=True)


def _features(text: str, cache: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Returns (hashed unigram + bigram feature ids, their counts) of one text."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # crc32 is stable across processes (Python's hash() is salted); cached: word frequencies are Zipfian.
    h = np.fromiter((cache.get(w) or cache.setdefault(w, zlib.crc32(w.encode()) | 1) for w in words), np.uint64, len(words))
    with np.errstate(over="ignore"):  # uint64 products wrap by design
        grams = np.concatenate([_mix(h), _mix((h[:-1] * np.uint64(0x100000001B3)) ^ h[1:])])
    ids, counts = np.unique((grams % np.uint64(N_FEATURES)).astype(np.int64), return_counts=True)
    return ids, counts


def _mix(x: np.ndarray) -> np.ndarray:
    """Returns splitmix64's finalizer of uint64 `x`: every input bit spreads to every output bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))
