"""The stage interface: per-document Filter, corpus-wide Dedup, and range checks for their parameters."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from data_pipelines.curate.document import Document
from data_pipelines.curate.stats import StageStats


class Filter(abc.ABC):
    """A per-document stage: `process` may edit the document and returns a removal reason or None."""

    name: ClassVar[str]
    Params: ClassVar[type]
    kind: ClassVar[str] = "filter"

    def __init__(self, params: Any):
        self.p = params

    def setup(self) -> None:
        """Loads heavy resources; called once per worker process before the first document."""

    def prepare(self, docs: list[Document]) -> None:
        """Sees each batch before `process` runs on its documents: model stages score the batch at once here."""

    @abc.abstractmethod
    def process(self, doc: Document, stats: StageStats) -> str | None:
        """Returns why `doc` is removed, or None to keep it (possibly edited)."""


def check_fraction(name: str, value: float | None) -> None:
    """Raises ValueError("name: ...") unless `value` is None or within [0, 1]."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be a fraction in [0, 1], got {value}")


def check_positive(name: str, value: float | None, allow_zero: bool = True) -> None:
    """Raises ValueError("name: ...") unless `value` is None or >= 0 (> 0 when not allow_zero)."""
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_order(lo_name: str, lo: float | None, hi_name: str, hi: float | None) -> None:
    """Raises ValueError when both bounds are set and lo > hi."""
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{lo_name}: must be <= {hi_name} ({hi}), got {lo}")


class Dedup(abc.ABC):
    """A corpus-wide stage: per document it emits `bands` bucket keys; documents sharing a key
    in any band are duplicates, and one per connected cluster is kept."""

    name: ClassVar[str]
    Params: ClassVar[type]
    kind: ClassVar[str] = "dedup"
    bands: int = 1

    def __init__(self, params: Any):
        self.p = params

    def setup(self) -> None:
        """Nothing to load; present so every stage is set up the same way."""

    def text_of(self, doc: Document) -> str:
        """Returns the text compared for duplicates: the configured fields joined by newlines."""
        parts = [doc.string(f) for f in self.p.fields]
        return "\n".join(p for p in parts if p)

    @abc.abstractmethod
    def keys(self, docs: list[Document]) -> tuple[Any, Any]:
        """Returns (keys [n, bands] uint64, valid [n] bool); invalid documents take no part."""
