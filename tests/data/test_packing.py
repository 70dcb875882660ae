"""Packing, checked against a plain-Python re-derivation of concat-then-split."""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest

from maxlm.data.packing import PackedRows

T = 16


def _docs(seed: int = 0) -> list[np.ndarray]:
    """Returns documents whose token k of document d is 1000 * (d + 1) + k, so ids name their owner."""
    rng = np.random.default_rng(seed)
    lengths = list(rng.integers(1, 2 * T, size=40)) + [0, 3 * T + 5, T, 1]  # empty, very long, exact
    return [np.arange(n, dtype=np.int32) + 1000 * (d + 1) for d, n in enumerate(lengths)]


def _rows(docs: list[np.ndarray], pad_id: int = 0) -> list[dict]:
    ds = PackedRows(grain.MapDataset.source(docs).to_iter_dataset(), T, pad_id)
    return list(ds)


def _expected_rows(docs: list[np.ndarray], pad_id: int) -> list[dict]:
    """Plain Python: one stream of (doc, k) pairs cut every T; pieces are segments."""
    stream = [(d, k) for d, doc in enumerate(docs) for k in range(len(doc))]
    rows = []
    for start in range(0, len(stream), T):
        chunk = stream[start : start + T]
        tokens, segs, pos = [], [], []
        for i, (d, k) in enumerate(chunk):
            new_piece = i == 0 or chunk[i - 1][0] != d
            segs.append((segs[-1] if segs else 0) + new_piece)
            pos.append(0 if new_piece else pos[-1] + 1)
            tokens.append(int(docs[d][k]))
        pad = T - len(chunk)
        rows.append({"tokens": tokens + [pad_id] * pad, "segment_ids": segs + [0] * pad, "positions": pos + [0] * pad})
    return rows


def test_rows_match_plain_python_rederivation():
    docs = _docs()
    rows = _rows(docs, pad_id=7)
    expected = _expected_rows(docs, pad_id=7)
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected):
        for key in ("tokens", "segment_ids", "positions"):
            assert got[key].dtype == np.int32 and got[key].shape == (T,)
            assert got[key].tolist() == want[key], key
        assert got["loss_mask"].dtype == np.float32
        assert got["loss_mask"].tolist() == [float(s != 0) for s in want["segment_ids"]]


def test_packing_invariants():
    docs = _docs(1)
    rows = _rows(docs)
    tokens = np.stack([r["tokens"] for r in rows])
    segs = np.stack([r["segment_ids"] for r in rows])
    pos = np.stack([r["positions"] for r in rows])
    # Every document's tokens appear in order, contiguous, exactly once.
    flat = tokens[segs != 0]
    assert flat.tolist() == np.concatenate(docs).tolist()
    for row_tokens, row_segs, row_pos in zip(tokens, segs, pos):
        for s in np.unique(row_segs[row_segs != 0]):
            piece = row_tokens[row_segs == s]
            where = np.flatnonzero(row_segs == s)
            assert np.all(np.diff(where) == 1)  # contiguous
            assert row_pos[where].tolist() == list(range(len(piece)))  # positions restart at 0
            assert len(set(piece // 1000)) == 1  # a segment holds one document
            assert np.all(np.diff(piece) == 1)  # in order, nothing dropped inside a piece
        # Segment ids count up from 1; padding (0) only at the end.
        nonzero = row_segs[row_segs != 0]
        assert nonzero[0] == 1 and np.all(np.diff(nonzero) >= 0) and np.all(np.diff(nonzero) <= 1)
        assert np.all(row_segs[len(nonzero):] == 0)
    # The consumer's target rule never pairs tokens of two documents.
    same = (segs[:, 1:] == segs[:, :-1]) & (segs[:, 1:] != 0)
    assert np.all((tokens[:, 1:] // 1000 == tokens[:, :-1] // 1000)[same])
    assert np.all((tokens[:, 1:] - tokens[:, :-1] == 1)[same])
    # Only the final row of a finite stream has padding.
    assert np.all(segs[:-1] != 0)


@pytest.mark.parametrize("stop", [0, 1, 4, 9])
def test_state_restores_mid_document(stop):
    docs = _docs(2)
    ds = PackedRows(grain.MapDataset.source(docs).to_iter_dataset(), T)
    it = iter(ds)
    for _ in range(stop):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    rest = [r["tokens"].tolist() for r in it]
    again = iter(ds)
    again.set_state(state)
    assert [r["tokens"].tolist() for r in again] == rest
