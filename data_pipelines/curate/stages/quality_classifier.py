"""A trainable quality classifier (DCLM / FineWeb-Edu style): documents scoring below a threshold are dropped.

The model is fastText's supervised recipe (Joulin et al. 2017, "Bag of Tricks for Efficient Text
Classification": word unigrams and bigrams hashed into buckets, a linear model trained by SGD
with a linearly decaying learning rate) with a logistic output for the two classes, written in
numpy: no compiled dependency (fasttext-wheel 0.9.2's predict fails under numpy 2; fasttext
0.9.3 ships only a source archive). With `train:` set, `maxlm curate` trains it from files of
positive and negative examples before any document is read, and writes the model file; later
runs name only `model:`.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter, check_fraction
from data_pipelines.curate.stats import StageStats
from maxlm.config import ranged
from maxlm.errors import MaxlmError
from maxlm.files.atomic import write_bytes
from maxlm.files.readers import iter_records

MODEL_FORMAT = "maxlm-hashed-ngram-logreg/1"
_WORD = re.compile(r"\w+")
HOLDOUT_EVERY = 10  # every 10th example (after a seeded shuffle) is held out to measure the model


def features(text: str, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (bucket indices [k] int64, weights [k] float32, L2-normalised counts) of `text`'s hashed word 1- and 2-grams."""
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    if not grams:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    # crc32: a hash that is the same in every process and run (Python's hash() is salted)
    h_G = np.fromiter((zlib.crc32(g.encode("utf-8", "surrogatepass")) for g in grams), np.int64, len(grams)) % buckets
    idx_K, counts_K = np.unique(h_G, return_counts=True)
    return idx_K, (counts_K / np.sqrt((counts_K ** 2).sum())).astype(np.float32)


@dataclass
class TrainSpec:
    """Example files (paths or globs; jsonl, .json arrays, parquet, text) and how to train on them."""

    positive: list[str] = field(default_factory=list)  # text to keep: e.g. instructional or reference text
    negative: list[str] = field(default_factory=list)  # text to drop: e.g. spam, random web pages
    text_key: list[str] = field(default_factory=lambda: ["text"])  # first key present is the example's text
    epochs: int = ranged(10, gt=0)
    lr: float = ranged(0.5, gt=0)  # fastText's default for supervised training is 0.1; logistic SGD here takes more
    buckets: int = ranged(1 << 20, gt=0)  # hash buckets for word 1- and 2-grams
    seed: int = 0

    def __post_init__(self):
        for name in ("positive", "negative"):
            if not getattr(self, name):
                raise ValueError(f"{name}: list at least one file of {name} examples")
            for pattern in getattr(self, name):
                if not glob.glob(pattern, recursive=True):
                    raise ValueError(f"{name}: no file matches {pattern}")
        if not self.text_key:
            raise ValueError("text_key: name at least one field")


@dataclass
class QualityClassifierParams:
    """The model file (trained first when `train` is set) and the score below which documents go."""

    model: str = ""  # .npz model file: written by a run with `train`, read by every run
    train: TrainSpec | None = None
    threshold: float = 0.5  # drop documents whose probability of being positive is below this
    score_key: str = "quality_score"  # metadata field for the score

    def __post_init__(self):
        if not self.model:
            raise ValueError("model: give the model file (with `train:` set, it is trained and written there)")
        check_fraction("threshold", self.threshold)
        if self.train is None and not os.path.isfile(self.model):
            raise ValueError(f"model: {self.model} not found; train it first (set `train:` with positive and negative example files)")


def _examples(patterns: list[str], text_key: list[str]) -> list[str]:
    """Returns the texts of every record of the files matching `patterns`; a record without text is an error."""
    texts = []
    for path in sorted({p for pat in patterns for p in glob.glob(pat, recursive=True) if os.path.isfile(p)}):
        for line, rec in iter_records(path, strict=True, setting="the example file's format"):
            if isinstance(rec, str):  # a text file's document
                texts.append(rec)
                continue
            text = next((rec[k] for k in text_key if isinstance(rec, dict) and isinstance(rec.get(k), str)), None)
            if text is None:
                raise MaxlmError(f"{path}:{line}: example has none of the text fields {text_key}; set train.text_key")
            texts.append(text)
    return texts


def _spec_fingerprint(spec: TrainSpec) -> str:
    """Returns a hash of the training settings and of the example files' names and sizes."""
    files = sorted({p for pat in spec.positive + spec.negative for p in glob.glob(pat, recursive=True)})
    raw = {"spec": asdict(spec), "files": [[p, os.path.getsize(p)] for p in files]}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LinearModel:
    """Weights of the hashed n-gram logistic regression and what it was trained from."""

    w_F: np.ndarray  # [buckets] float32
    bias: float
    info: dict  # format, fingerprint, example counts, held-out accuracy

    def score(self, text: str) -> float:
        """Returns the probability that `text` is a positive example."""
        idx_K, val_K = features(text, self.w_F.shape[0])
        z = float(self.w_F[idx_K] @ val_K) + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str) -> None:
        """Writes the model to `path` atomically (a .npz holding the weights and a JSON info string)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, w_F=self.w_F, bias=np.float64(self.bias), info=np.array(json.dumps(self.info)))
        write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str) -> "LinearModel":
        """Returns the model saved at `path`; raises MaxlmError when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                model = cls(z["w_F"].astype(np.float32), float(z["bias"]), info)
        except (OSError, ValueError, KeyError) as e:
            raise MaxlmError(f"{path}: not a quality_classifier model file ({e})") from None
        if info.get("format") != MODEL_FORMAT:
            raise MaxlmError(f"{path}: model format {info.get('format')!r}, expected {MODEL_FORMAT}")
        return model


def train(spec: TrainSpec) -> LinearModel:
    """Returns the model trained on the spec's examples; classes are weighted to count equally."""
    pos, neg = _examples(spec.positive, spec.text_key), _examples(spec.negative, spec.text_key)
    if not pos or not neg:
        raise MaxlmError(f"quality_classifier train: {len(pos)} positive and {len(neg)} negative examples; both are needed")
    texts, y_N = pos + neg, np.array([1.0] * len(pos) + [0.0] * len(neg))
    weight_N = np.where(y_N == 1, len(texts) / (2 * len(pos)), len(texts) / (2 * len(neg)))
    feats = [features(t, spec.buckets) for t in texts]
    order = np.random.default_rng(spec.seed).permutation(len(texts))
    held, fit = order[::HOLDOUT_EVERY], np.delete(order, np.s_[::HOLDOUT_EVERY])
    w_F, bias = np.zeros(spec.buckets, np.float32), 0.0
    rng = np.random.default_rng(spec.seed + 1)
    steps, step = spec.epochs * len(fit), 0
    for _ in range(spec.epochs):
        for i in rng.permutation(fit):
            lr = spec.lr * (1.0 - step / steps)  # fastText's linear decay to 0
            step += 1
            idx_K, val_K = feats[i]
            p = 1.0 / (1.0 + np.exp(-(float(w_F[idx_K] @ val_K) + bias)))
            g = (p - y_N[i]) * weight_N[i]  # d(weighted log loss)/dz
            w_F[idx_K] -= lr * g * val_K
            bias -= lr * g
    model = LinearModel(w_F, bias, {})
    right = sum((model.score(texts[i]) >= 0.5) == (y_N[i] == 1) for i in held)
    model.info = {"format": MODEL_FORMAT, "fingerprint": _spec_fingerprint(spec), "positive": len(pos), "negative": len(neg),
                  "held_out": len(held), "held_out_accuracy": round(float(right) / max(len(held), 1), 4)}
    return model


class QualityClassifier(Filter):
    """Scores each document with the model; drops it below the threshold (the score goes into metadata)."""

    name = "quality_classifier"
    Params = QualityClassifierParams

    def setup(self) -> None:
        spec = self.p.train
        if spec is None:
            self.model = LinearModel.load(self.p.model)
            return
        if os.path.isfile(self.p.model):
            self.model = LinearModel.load(self.p.model)
            if self.model.info.get("fingerprint") != _spec_fingerprint(spec):
                raise MaxlmError(f"{self.p.model}: this model was trained from other examples or settings than `train:` "
                                 "gives; delete it to retrain, or drop `train:` to use it as it is")
            return
        self.model = train(spec)  # once, in the driver: stages are set up before any shard runs
        self.model.save(self.p.model)

    def process(self, doc: Document, stats: StageStats) -> str | None:
        score = self.model.score(doc.text)
        doc.meta[self.p.score_key] = round(score, 4)
        stats.value("quality_score", score)
        return "low_quality" if score < self.p.threshold else None
