"""The Grain input pipeline: this process's packed [B, T] batches for training and eval.

Train order of operations, and why:
  each source: shard per process (disjoint documents) -> seeded shuffle -> repeat forever
      (shuffle before repeat: Grain reseeds every epoch; per source, so a small source with a
      large weight cycles through its own epochs without starving the others)
  -> weighted mixture of sources (`MapDataset.mix`: a fixed interleave, exact proportions)
  -> tokenize, add BOS/EOS
  -> concat-then-split packing (`packing.PackedRows`) -> batch of B rows
  -> Grain worker processes (`data.worker_count`) or a prefetch thread (`data.prefetch`).
Everything before packing is index-addressed, so the iterator state is a few integers and
restoring it reproduces the following batches bit for bit.

Post-training tasks read records instead of texts (`examples.py` encodes them once, with the
chat template): sft packs {"ids", "mask"} examples without splitting one across rows; rm and
dpo batch ready-made [2, T] pairs (see `maxlm.tasks.pairs` for their layout).

Batch: tokens int32 [B, T], segment_ids int32 [B, T] (0 = padding), positions int32 [B, T],
loss_mask f32 [B, T] (1 where a token may be a target). B = global_batch_size // process_count.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable

import grain
import numpy as np

from maxlm.config import Config, SourceConfig
from maxlm.data.examples import Examples, encode_file
from maxlm.data.packing import PackedRows
from maxlm.data.records import record_kind
from maxlm.data.sources import Documents, open_source, row_slice, train_sources
from maxlm.data.tokenizers import Tokenizer, encode_text
from maxlm.errors import MaxlmError

# Documents are read and tokenized inline (in the prefetch thread or worker process): the
# files are memory-mapped and sentencepiece holds the GIL, so Grain's read threads only add
# contention (measured 370k vs 280k tokens/s with 4 threads on 2 cores).
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
STATE_VERSION = 1


class Tokenize(grain.transforms.Map):
    """Text -> int32 [n] ids with BOS/EOS as configured."""

    def __init__(self, tokenizer: Tokenizer, add_bos: bool, add_eos: bool):
        self.tokenizer, self.add_bos, self.add_eos = tokenizer, add_bos, add_eos

    def map(self, text: str) -> np.ndarray:
        return np.array(encode_text(self.tokenizer, text, self.add_bos, self.add_eos), dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Annotation:
    """Per-example fields a task adds to its encoded examples before any is batched (dpo.precompute_ref's
    `ref_logps`): `add` writes them into every example, `fields` names each with its per-row shape (f32)."""

    add: Callable[[Examples], None]
    fields: dict[str, tuple[int, ...]]


class DataIterator:
    """This process's training batches, forever; `get_state`/`set_state` make it resumable."""

    def __init__(self, dataset: grain.IterDataset, sources: list[Documents], layout: dict):
        self.sources = sources
        self._layout = layout
        self._it = dataset.__iter__()

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    @property
    def skipped_records(self) -> int:
        """Bad records dropped from the training files (data.on_bad_record=skip)."""
        return sum(s.skipped for s in self.sources)

    def get_state(self) -> dict[str, Any]:
        """Returns a JSON-serializable position: the batches after it are the next ones produced."""
        return {"layout": self._layout, "grain": self._it.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves to a position from `get_state`; raises MaxlmError if it belongs to another layout."""
        saved = state.get("layout", {})
        for key, now in self._layout.items():
            if saved.get(key) != now:
                raise MaxlmError(
                    f"data iterator state was saved with {key}={saved.get(key)!r} but this run has {now!r}; "
                    "the saved position means nothing under another data layout"
                )
        self._it.set_state(state["grain"])

    def close(self) -> None:
        """Stops Grain's worker processes or prefetch thread."""
        close = getattr(self._it, "close", None)
        if close:
            close()


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return process_index, process_count


def rows_per_process(cfg: Config, process_count: int) -> int:
    """Returns B, this process's rows per batch; raises MaxlmError unless it divides evenly."""
    gbs = cfg.train.global_batch_size
    if gbs % process_count:
        raise MaxlmError(f"train.global_batch_size ({gbs}) must divide by the number of processes ({process_count})")
    return gbs // process_count


def _rows_of(docs, src: SourceConfig) -> grain.MapDataset:
    """Returns the source as a MapDataset, cut to `rows` when the config names a slice."""
    ds = grain.MapDataset.source(docs)
    if src.rows and isinstance(docs, Documents):  # examples were cut to `rows` before encoding
        ds = ds[row_slice(src.rows, len(docs), src.path)]
        if len(ds) == 0:
            raise MaxlmError(f"{src.path}: rows {src.rows!r} selects none of its {len(docs)} records")
    return ds


def _shard(docs: grain.MapDataset, process_index: int, process_count: int, name: str) -> grain.MapDataset:
    ds = docs[process_index::process_count]
    if len(ds) == 0:
        raise MaxlmError(f"{name}: {len(docs)} documents cannot give each of {process_count} processes one")
    return ds


def _seed(seed: int, source_index: int) -> int:
    # Independent streams per source; plain seed + i would make run seed 1's source 0 equal seed 0's source 1.
    return int(np.random.SeedSequence([seed, source_index]).generate_state(1)[0])


def make_train_iterator(
    cfg: Config, tokenizer: Tokenizer, process_index: int | None = None, process_count: int | None = None, annotation: Annotation | None = None
) -> DataIterator:
    """Returns the endless, checkpointable iterator of this process's training batches.

    `annotation` may add per-example fields to the encoded post-training examples of
    every source before any is batched (dpo.precompute_ref adds the reference's log-probs).
    """
    process_index, process_count = _process(process_index, process_count)
    rows = rows_per_process(cfg, process_count)
    d = cfg.data
    sources_cfg: list[SourceConfig] = train_sources(d)
    if not sources_cfg:
        raise MaxlmError("data.train_files is empty; give files, globs or builtin:stdlib-docs")
    sources = [_open(cfg, s, tokenizer) for s in sources_cfg]  # validates every record now
    for src in sources if annotation else ():
        annotation.add(src)
    parts = []
    for i, (docs, src) in enumerate(zip(sources, sources_cfg)):
        ds = _shard(_rows_of(docs, src), process_index, process_count, src.path)
        if d.shuffle:
            ds = ds.shuffle(seed=_seed(cfg.train.seed, i))
        parts.append(ds.repeat())
    mixture = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, [s.weight for s in sources_cfg])
    batches = _rows(cfg, mixture, tokenizer).batch(rows, drop_remainder=True)
    if d.worker_count > 0:
        _allow_unparsed_absl_flags()
        # Each worker packs its own slice of the mixture: deterministic for a given worker_count.
        batches = batches.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=d.worker_count, per_worker_buffer_size=max(1, d.prefetch))
        )
    elif d.prefetch > 0:
        batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=d.prefetch)
    # What gives the saved position its meaning; source paths are left out so data may move.
    layout = {
        "version": STATE_VERSION, "process_index": process_index, "process_count": process_count,
        "task": cfg.task, "rows": rows, "seq_len": d.seq_len, "worker_count": d.worker_count, "shuffle": d.shuffle,
        "source_weights": [s.weight for s in sources_cfg],
    }
    return DataIterator(batches, sources, layout)


def _open(cfg: Config, src: SourceConfig, tokenizer: Tokenizer):
    """Returns one source as a random-access list: texts (pretrain) or encoded examples."""
    if record_kind(cfg.task) == "text":
        return open_source(src, cfg.data.on_bad_record)
    if not src.path:
        raise MaxlmError(f"task {cfg.task}: a data source has an empty path; expected a jsonl/json/parquet file or glob")
    d = cfg.data
    return encode_file(src.path, cfg.task, tokenizer, d.chat_template, d.seq_len, d.on_bad_record, src.rows, d.pair_truncation)


def _rows(cfg: Config, ds: grain.MapDataset, tokenizer: Tokenizer) -> grain.IterDataset:
    """Returns the dataset of single rows (before batching) for cfg.task."""
    d = cfg.data
    kind = record_kind(cfg.task)
    if kind == "text":
        tokens = ds.map(Tokenize(tokenizer, d.add_bos, d.add_eos)).to_iter_dataset(READ_OPTIONS)
        return PackedRows(tokens, d.seq_len, tokenizer.pad_id)
    if kind == "chat":
        # The chat template already places BOS/EOS; data.add_bos/add_eos apply to pretraining text.
        return PackedRows(ds.to_iter_dataset(READ_OPTIONS), d.seq_len, tokenizer.pad_id, split=False)
    return ds.to_iter_dataset(READ_OPTIONS)


def _allow_unparsed_absl_flags() -> None:
    # Grain's worker start reads an absl flag, which fails unless absl parsed argv; maxlm's CLI
    # is argparse (google/grain#1355), so flags keep their defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_eval_batches(
    cfg: Config, tokenizer: Tokenizer, num_batches: int, process_index: int | None = None, process_count: int | None = None,
    annotation: Annotation | None = None,
) -> list[dict[str, np.ndarray]]:
    """Returns this process's eval batches from data.eval_files, in file order, the same every call.

    Documents are dealt to processes round-robin and packed like training data. One process
    gets at most `num_batches`, fewer if the files run out; several processes get exactly
    `num_batches` each, filled with all-padding batches (which count zero tokens), so that
    every process runs the same number of eval steps. `annotation` is make_train_iterator's.
    """
    process_index, process_count = _process(process_index, process_count)
    rows = rows_per_process(cfg, process_count)
    d = cfg.data
    if not d.eval_files or num_batches <= 0:
        return []
    docs = [_open(cfg, s, tokenizer) for s in d.eval_files]
    for src in docs if annotation else ():
        annotation.add(src)
    items = grain.MapDataset.concatenate([_rows_of(x, src) for x, src in zip(docs, d.eval_files)])[process_index::process_count]
    it = _rows(cfg, items, tokenizer).batch(rows, drop_remainder=False).__iter__()
    out = list(itertools.islice(it, num_batches))
    template = padding_batch(cfg, rows, tokenizer.pad_id, annotation)
    out = [_pad_rows(b, template) for b in out]
    if process_count > 1:
        out += [template for _ in range(num_batches - len(out))]
    return out


def batch_layout(cfg: Config, rows: int, fields: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Returns {key: (shape, dtype)} of a batch of `rows` as the pipeline makes it; `fields` are an Annotation's (f32)."""
    pairs = record_kind(cfg.task) == "pair"
    shape = (rows, 2, cfg.data.seq_len) if pairs else (rows, cfg.data.seq_len)
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    layout = {"tokens": (shape, i32), "segment_ids": (shape, i32), "positions": (shape, i32), "loss_mask": (shape, f32)}
    if pairs:
        layout |= {"margin": ((rows,), f32), "pair_mask": ((rows,), f32)}
    return layout | {name: ((rows, *row_shape), f32) for name, row_shape in (fields or {}).items()}


def padding_batch(cfg: Config, rows: int, pad_id: int, annotation: Annotation | None = None) -> dict[str, np.ndarray]:
    """Returns a batch of padding rows (pad id, segment 0, zero masks): it counts nothing in any objective."""
    layout = batch_layout(cfg, rows, annotation.fields if annotation else None)
    return {k: np.full(shape, pad_id if k == "tokens" else 0, dtype) for k, (shape, dtype) in layout.items()}


def _pad_rows(batch: dict, template: dict) -> dict[str, np.ndarray]:
    """Returns `batch` with rows of the all-padding `template` appended up to its row count."""
    have = len(batch["tokens"])
    if have == len(template["tokens"]):
        return batch
    return {k: np.concatenate([batch[k], template[k][have:]]) for k in template}
