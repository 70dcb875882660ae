"""Concat-then-split packing: documents laid end to end and cut into rows of T tokens.

No padding except after the last document of a finite stream. A document that does not
fit in the rest of a row continues at the start of the next one (so documents longer
than T become T-sized pieces); each piece is its own segment and its positions restart at
0, since attention never crosses segments and positions beyond T would exceed what the
model was built for. Rows carry:
  tokens       int32 [T]  token ids, pad_id after the stream ends
  segment_ids  int32 [T]  1, 2, 3, ... per piece within the row, 0 = padding
  positions    int32 [T]  0 .. n-1 within each piece, 0 on padding
  loss_mask    f32   [T]  1.0 where the token may be a prediction target, 0.0 on padding
                          (SFT documents bring their own mask: 1 on the assistant's tokens)

With `split=False` (SFT: a conversation cut in two would train its second half without
its prompt) a document that does not fit in the rest of a row starts the next row instead,
and the rest of the row is padding; such documents must be at most T tokens long.

The iterator's state is (parent state before the current document, tokens of it already
emitted), so restoring is one parent `set_state` and one `next`, never a replay.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np


class PackedRows(grain.IterDataset):
    """Rows of T tokens packed from a parent dataset of int32 [n] token arrays (or {"ids", "mask"} dicts)."""

    def __init__(self, parent: grain.IterDataset, seq_len: int, pad_id: int = 0, split: bool = True):
        super().__init__(parent)
        self._seq_len = seq_len
        self._pad_id = pad_id
        self._split = split

    def __iter__(self) -> grain.DatasetIterator:
        return _PackedRowsIterator(self._parent.__iter__(), self._seq_len, self._pad_id, self._split)

    def __str__(self) -> str:
        return f"PackedRows(seq_len={self._seq_len})"


class _PackedRowsIterator(grain.DatasetIterator):
    """Emits packed rows; see the module docstring for the state it keeps."""

    def __init__(self, parent: grain.DatasetIterator, seq_len: int, pad_id: int, split: bool = True):
        super().__init__(parent)
        self._seq_len = seq_len
        self._pad_id = pad_id
        self._split = split
        self._arange_T = np.arange(seq_len, dtype=np.int32)
        self._doc_state = parent.get_state()  # parent state from which self._doc is drawn
        self._doc: np.ndarray | None = None  # int32 [n], the document being packed
        self._mask: np.ndarray | None = None  # f32 [n], its loss mask when it brought one
        self._offset = 0  # tokens of self._doc already emitted

    def _next_doc(self) -> bool:
        self._doc_state = self._parent.get_state()
        try:
            item = next(self._parent)
        except StopIteration:
            self._doc = None
            return False
        if isinstance(item, dict):
            self._doc, self._mask = np.asarray(item["ids"], np.int32), np.asarray(item["mask"], np.float32)
        else:
            self._doc, self._mask = np.asarray(item, dtype=np.int32), None
        self._offset = 0
        return True

    def __next__(self) -> dict[str, np.ndarray]:
        T = self._seq_len
        tokens_T = np.full(T, self._pad_id, np.int32)
        segment_ids_T = np.zeros(T, np.int32)
        positions_T = np.zeros(T, np.int32)
        loss_mask_T = np.zeros(T, np.float32)
        filled = segment = 0
        while filled < T:
            if self._doc is None or self._offset >= len(self._doc):
                if not self._next_doc():
                    break
                continue  # also skips empty documents
            n = min(T - filled, len(self._doc) - self._offset)
            if not self._split and n < len(self._doc) - self._offset:
                if filled == 0:
                    raise ValueError(f"a document of {len(self._doc)} tokens does not fit in a row of {T} and may not be split")
                break  # the document starts the next row
            segment += 1
            tokens_T[filled : filled + n] = self._doc[self._offset : self._offset + n]
            segment_ids_T[filled : filled + n] = segment
            positions_T[filled : filled + n] = self._arange_T[:n]
            loss_mask_T[filled : filled + n] = 1.0 if self._mask is None else self._mask[self._offset : self._offset + n]
            filled += n
            self._offset += n
        if filled == 0:
            raise StopIteration
        return {"tokens": tokens_T, "segment_ids": segment_ids_T, "positions": positions_T, "loss_mask": loss_mask_T}

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._doc_state, "offset": self._offset}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        if self._next_doc():
            self._offset = state["offset"]
        self._doc_state = state["parent"]
