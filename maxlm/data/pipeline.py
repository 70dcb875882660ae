"""The Grain input pipeline: this process's rows of each step's packed global batch, for training and eval.

Train order of operations, and why:
  each source: seeded shuffle -> repeat forever
      (shuffle before repeat: Grain reseeds every epoch; per source, so a small source with a
      large weight cycles through its own epochs without starving the others)
  -> weighted mixture of sources (`MapDataset.mix`: a fixed interleave, exact proportions)
  -> dealt to G = train.global_batch_size lanes: lane r takes documents r, r + G, r + 2G, ...
  -> per lane: tokenize, add BOS/EOS, concat-then-split packing (`packing.PackedRows`)
  -> `Lanes`: batch s stacks row s of each lane this process makes (its devices' rows of the batch)
  -> Grain worker processes (`data.worker_count`) or a prefetch thread (`data.prefetch`).
Row r of step s is thus a function of the config and s alone, whichever process makes it, so
1 process x 8 devices and 4 x 2 train on the same global batches. Everything before packing is
index-addressed, so a lane's position is a few integers; the saved position is every lane's
(`DataIterator.get_state` gathers them from all processes), so a run resumes bit for bit with
any number of processes.

Post-training tasks read records instead of texts (`examples.py` encodes them once, with the
chat template): sft packs {"ids", "mask"} examples without splitting one across rows; rm and
dpo batch ready-made [2, T] pairs (see `maxlm.tasks.pairs` for their layout).

Batch: tokens int32 [B, T], segment_ids int32 [B, T] (0 = padding), positions int32 [B, T],
loss_mask f32 [B, T] (1 where a token may be a target). B = the rows this process makes
(global_batch_size // process_count when the batch is split evenly over processes).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
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
STATE_VERSION = 2  # 2: one global position of every lane (1 was one process's Grain state)


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


class Lanes(grain.IterDataset):
    """Batches of a global batch's rows, one lane per row: batch s stacks row s of every lane given.

    `lanes` maps a global row index to the dataset of that row's successive rows. Lanes are endless
    in training; a finite one (eval) that runs out gives `pad` rows until every lane has run out.
    """

    def __init__(self, lanes: dict[int, grain.IterDataset], pad: dict[str, np.ndarray] | None = None):
        super().__init__(list(lanes.values()))
        self._ids = list(lanes)
        self._pad = pad

    def __iter__(self) -> grain.DatasetIterator:
        return _LanesIterator([p.__iter__() for p in self.parents], self._ids, self._pad)

    def __str__(self) -> str:
        return f"Lanes({len(self._ids)} rows)"


class _LanesIterator(grain.DatasetIterator):
    """Stacks one row of each lane; its state is {"lanes": {row: that lane's state}}."""

    def __init__(self, parents: list[grain.DatasetIterator], ids: list[int], pad: dict[str, np.ndarray] | None):
        super().__init__(parents)
        self._lanes = dict(zip(ids, parents))
        self._pad = pad
        self._done: set[int] = set()  # finite lanes that ran out

    def __next__(self) -> dict[str, np.ndarray]:
        rows = []
        for r, it in self._lanes.items():
            try:
                rows.append(self._pad if r in self._done else next(it))
            except StopIteration:
                if self._pad is None:
                    raise
                self._done.add(r)
                rows.append(self._pad)
        if len(self._done) == len(self._lanes):
            raise StopIteration
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def get_state(self) -> dict[str, Any]:
        return {"lanes": {str(r): it.get_state() for r, it in self._lanes.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        for r, it in self._lanes.items():
            it.set_state(state["lanes"][str(r)])
        self._done = set()


def merge_states(states: list[Any]) -> Any:
    """Returns one position from the positions of several processes: the union of their lanes.

    Everything outside "lanes" (layout, worker cycle, prefetch counters) must be equal in all of
    them; raises MaxlmError when it is not, since the processes would then not share one global batch.
    """
    first = states[0]
    if isinstance(first, dict) and all(isinstance(s, dict) and s.keys() == first.keys() for s in states):
        return {k: {r: v for s in states for r, v in s[k].items()} if k == "lanes" else merge_states([s[k] for s in states]) for k in first}
    if isinstance(first, list) and all(isinstance(s, list) and len(s) == len(first) for s in states):
        return [merge_states(list(parts)) for parts in zip(*states)]
    if any(s != first for s in states[1:]):
        raise MaxlmError(f"the processes' data positions disagree ({first!r} vs {next(s for s in states if s != first)!r}); "
                         "every process must run the same config")
    return first


def _all_processes(state: dict) -> list[dict]:
    """Returns `state` of every JAX process, in process order (a collective: every process calls it)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return [state]
    raw = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([len(raw)], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(raw)] = raw
    every = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(every[p, : sizes[p]].tobytes()) for p in range(len(sizes))]


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

    def local_state(self) -> dict[str, Any]:
        """Returns this process's position: its own lanes only."""
        return {"layout": self._layout, "grain": self._it.get_state()}

    def get_state(self) -> dict[str, Any]:
        """Returns the JSON-serializable global position (every process's lanes): the batches after it are the next ones.

        A collective in a multi-process run: every process calls it at the same step.
        """
        return merge_states(_all_processes(self.local_state()))

    def set_state(self, state: dict[str, Any]) -> None:
        """Moves to a position from `get_state` (saved with any process count); raises MaxlmError if it belongs to another layout."""
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


def process_rows(cfg: Config, rows: Sequence[int] | None = None) -> list[int]:
    """Returns the global batch rows this process makes, sorted: `rows` checked, or by default this JAX
    process's even block of train.global_batch_size (all of them in a single process).

    Raises MaxlmError unless the default block divides evenly or `rows` are distinct rows of the batch.
    """
    gbs = cfg.train.global_batch_size
    if rows is None:
        import jax

        index, count = jax.process_index(), jax.process_count()
        if gbs % count:
            raise MaxlmError(f"train.global_batch_size ({gbs}) must divide by the number of processes ({count})")
        return list(range(index * gbs // count, (index + 1) * gbs // count))
    out = sorted(int(r) for r in rows)
    if not out or len(set(out)) != len(out) or out[0] < 0 or out[-1] >= gbs:
        raise MaxlmError(f"rows {list(rows)[:8]}...: expected distinct rows of train.global_batch_size ({gbs})")
    return out


def _rows_of(docs, src: SourceConfig) -> grain.MapDataset:
    """Returns the source as a MapDataset, cut to `rows` when the config names a slice."""
    ds = grain.MapDataset.source(docs)
    if src.rows and isinstance(docs, Documents):  # examples were cut to `rows` before encoding
        ds = ds[row_slice(src.rows, len(docs), src.path)]
        if len(ds) == 0:
            raise MaxlmError(f"{src.path}: rows {src.rows!r} selects none of its {len(docs)} records")
    return ds


def _seed(seed: int, source_index: int) -> int:
    # Independent streams per source; plain seed + i would make run seed 1's source 0 equal seed 0's source 1.
    return int(np.random.SeedSequence([seed, source_index]).generate_state(1)[0])


def make_train_iterator(
    cfg: Config, tokenizer: Tokenizer, rows: Sequence[int] | None = None, annotation: Annotation | None = None
) -> DataIterator:
    """Returns the endless, checkpointable iterator of this process's rows of the training batches.

    `rows`: the global batch rows this process makes (`process_rows`; the run passes its devices' rows).
    `annotation` may add per-example fields to the encoded post-training examples of
    every source before any is batched (dpo.precompute_ref adds the reference's log-probs).
    """
    rows = process_rows(cfg, rows)
    gbs = cfg.train.global_batch_size
    d = cfg.data
    sources_cfg: list[SourceConfig] = train_sources(d)
    if not sources_cfg:
        raise MaxlmError("data.train_files is empty; give files, globs or builtin:stdlib-docs")
    sources = [_open(cfg, s, tokenizer) for s in sources_cfg]  # validates every record now
    for src in sources if annotation else ():
        annotation.add(src)
    parts = []
    for i, (docs, src) in enumerate(zip(sources, sources_cfg)):
        ds = _rows_of(docs, src)
        if d.shuffle:
            ds = ds.shuffle(seed=_seed(cfg.train.seed, i))
        parts.append(ds.repeat())
    mixture = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, [s.weight for s in sources_cfg])
    batches = Lanes({r: _rows(cfg, mixture[r::gbs], tokenizer) for r in rows})
    if d.worker_count > 0:
        _allow_unparsed_absl_flags()
        # Each worker packs its own slice of every lane: deterministic for a given worker_count.
        batches = batches.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=d.worker_count, per_worker_buffer_size=max(1, d.prefetch))
        )
    elif d.prefetch > 0:
        batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=d.prefetch)
    # What gives the saved position its meaning; source paths are left out so data may move, and the
    # process count is left out since the position is global.
    layout = {
        "version": STATE_VERSION, "task": cfg.task, "rows": gbs, "seq_len": d.seq_len, "worker_count": d.worker_count,
        "shuffle": d.shuffle, "source_weights": [s.weight for s in sources_cfg],
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
    cfg: Config, tokenizer: Tokenizer, num_batches: int, rows: Sequence[int] | None = None, annotation: Annotation | None = None,
) -> list[dict[str, np.ndarray]]:
    """Returns this process's rows of the eval batches from data.eval_files, the same every call.

    Documents in file order are dealt to the G = train.global_batch_size lanes like training data
    (lane r: documents r, r + G, ...) and packed per lane, so every global batch is the same
    whichever process makes which rows; a lane that runs out gives padding rows (which count zero
    tokens). One process gets at most `num_batches`, fewer if the files run out; a process that
    makes part of the rows gets exactly `num_batches`, so that every process runs the same number
    of eval steps. `rows` and `annotation` are make_train_iterator's.
    """
    rows = process_rows(cfg, rows)
    d = cfg.data
    if not d.eval_files or num_batches <= 0:
        return []
    docs = [_open(cfg, s, tokenizer) for s in d.eval_files]
    for src in docs if annotation else ():
        annotation.add(src)
    items = grain.MapDataset.concatenate([_rows_of(x, src) for x, src in zip(docs, d.eval_files)])
    gbs = cfg.train.global_batch_size
    template = padding_batch(cfg, len(rows), tokenizer.pad_id, annotation)
    lanes = Lanes({r: _rows(cfg, items[r::gbs], tokenizer) for r in rows}, pad={k: v[0] for k, v in template.items()})
    out = list(itertools.islice(lanes.__iter__(), num_batches))
    if len(rows) < gbs:
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
