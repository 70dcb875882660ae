"""Perplexity under a maxlm language model: drop documents the model finds too surprising or too bland.

CCNet (Wenzek et al. 2020) buckets web text by the perplexity of a language model trained on
Wikipedia and keeps the low-perplexity head. Very high perplexity marks gibberish, lists and
boilerplate; very low perplexity often marks repeated, templated text. Here any maxlm run,
checkpoint or HF model dir scores the document: BOS (when the run adds one) + the first
`max_tokens` tokens, every token after the first scored. The score is per byte by default,
exp(total NLL / UTF-8 bytes of the scored text): per-token perplexity rewards text that
shatters into many short, individually common tokens, so shuffled characters can score
*lower* than the prose they came from (measured with a tiny model after 25 steps on
tinyshakespeare: 70-100 per token against 85-115 for the prose, yet 38-40 per byte against
17-30), and a per-byte score means the same across tokenizers. `unit: token` gives the classic per-token value
(CCNet's, with its fixed tokenizer). The score goes into the metadata (`score_key`);
documents outside the bounds are removed as `low_perplexity` / `high_perplexity`; a document
with no token to score is kept and counted (`unscored`). There is no published default
threshold: perplexity depends on the model, so every bound is off unless set.

Bounds are absolute (`min_perplexity`, `max_perplexity`) or quantiles (`low_quantile`,
`high_quantile`). A stage sees one batch at a time (the pipeline's `batch_size` documents of
one shard), so quantiles are those of each batch: with the default 1,000 documents a batch
they track the corpus closely, but a small last batch of a shard loses its tails like any
other. For one corpus-wide cut, run once, read the perplexity histogram in the report, and
set absolute bounds.

The model is loaded lazily, once per worker process, at the first batch: never in the
parent that forks the workers (a process that has started JAX must not fork), and never per document. Each
worker holds its own copy, so on one GPU run this stage with `workers: 1` (JAX preallocates
most of the GPU's memory in every process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter, check_fraction, check_order, check_positive
from data_pipelines.curate.stats import StageStats
from maxlm.errors import MaxlmError


@dataclass
class PerplexityParams:
    """The model, how much of each document it reads, and the bounds (all off by default)."""

    model: str = ""  # maxlm run / checkpoint dir or Hugging Face model dir; required
    field: str = "text"  # the document field scored ("text": the document text)
    unit: Literal["byte", "token"] = "byte"  # perplexity per UTF-8 byte of the scored text, or per token
    max_tokens: int = 512  # tokens scored per document (BOS included); at most the model's max_seq_len
    batch_tokens: int = 16384  # tokens per model call
    min_perplexity: float | None = None
    max_perplexity: float | None = None
    low_quantile: float | None = None  # remove below this quantile of the batch, e.g. 0.05
    high_quantile: float | None = None  # remove above this quantile of the batch, e.g. 0.95
    score_key: str = "perplexity"  # metadata field for the score

    def __post_init__(self):
        if not self.model:
            raise ValueError("model: required: a maxlm run, checkpoint or Hugging Face model dir")
        check_positive("max_tokens", self.max_tokens, allow_zero=False)
        check_positive("batch_tokens", self.batch_tokens, allow_zero=False)
        check_positive("min_perplexity", self.min_perplexity)
        check_positive("max_perplexity", self.max_perplexity)
        check_order("min_perplexity", self.min_perplexity, "max_perplexity", self.max_perplexity)
        check_fraction("low_quantile", self.low_quantile)
        check_fraction("high_quantile", self.high_quantile)
        check_order("low_quantile", self.low_quantile, "high_quantile", self.high_quantile)


class Perplexity(Filter):
    """Scores each document's perplexity with a maxlm model; removes those outside the bounds."""

    name = "perplexity"
    Params = PerplexityParams

    def setup(self) -> None:
        # Only a cheap check here: setup runs in the parent process, which must not start JAX before forking.
        if not Path(self.p.model).exists():
            raise MaxlmError(f"stage perplexity: model {self.p.model} not found (a maxlm run, checkpoint or HF model dir)")
        self._pid = None
        self._scores: dict[int, float] = {}
        self._bounds = (-np.inf, np.inf, -np.inf, np.inf)

    def prepare(self, docs: list[Document]) -> None:
        """Scores the whole batch in a few model calls and fixes the batch's quantile bounds."""
        from maxlm.infer.scoring import perplexity  # jax loads only when this stage runs, not with the registry

        self._load()
        ids = [self._encode(d.string(self.p.field) or "") for d in docs]
        total, count = self._scorer.logprobs(ids)
        if self.p.unit == "byte":  # the bytes of exactly the scored tokens: all but the first
            count = np.asarray([len(self._model.tokenizer.decode(x[1:]).encode("utf-8")) for x in ids], np.float64)
        ppl_N = perplexity(total, count)
        self._scores = {id(d): float(v) for d, v in zip(docs, ppl_N)}
        scored = ppl_N[np.isfinite(ppl_N)]
        p = self.p
        lo_q = np.quantile(scored, p.low_quantile) if p.low_quantile is not None and scored.size else -np.inf
        hi_q = np.quantile(scored, p.high_quantile) if p.high_quantile is not None and scored.size else np.inf
        lo = p.min_perplexity if p.min_perplexity is not None else -np.inf
        hi = p.max_perplexity if p.max_perplexity is not None else np.inf
        self._bounds = (lo, hi, lo_q, hi_q)

    def process(self, doc: Document, stats: StageStats) -> str | None:
        if id(doc) not in self._scores:  # called without its batch (a caller that does not prepare)
            self.prepare([doc])
        ppl = self._scores.pop(id(doc))
        if not np.isfinite(ppl):
            stats.count("unscored")
            return None
        doc.meta[self.p.score_key] = round(ppl, 3)
        stats.value("perplexity", ppl)
        lo, hi, lo_q, hi_q = self._bounds
        if ppl < lo or ppl < lo_q:
            return "low_perplexity"
        if ppl > hi or ppl > hi_q:
            return "high_perplexity"
        return None

    def _load(self) -> None:
        """Loads the model and tokenizer in this process, once (a forked worker loads its own)."""
        if self._pid == os.getpid():
            return
        from maxlm.infer.pretrained import from_pretrained
        from maxlm.infer.scoring import Scorer

        self._model = from_pretrained(self.p.model)
        self._model.tokenizer  # no tokenizer files: the one error, before any document is read
        self._scorer = Scorer(self._model, self.p.batch_tokens)
        self._max_tokens = min(self.p.max_tokens, self._scorer.max_len)
        self._pid = os.getpid()

    def _encode(self, text: str) -> list[int]:
        # Cut the text first: a long document need not be tokenized whole to score its start.
        return self._model.encode_text(text[: 32 * self._max_tokens])[: self._max_tokens]

