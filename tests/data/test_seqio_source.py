"""data.seqio_task: a registered seqio Task as one more source (needs the [seqio] extra)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from maxlm.config import Config, DataConfig, SourceConfig, TrainConfig
from maxlm.data.pipeline import make_train_iterator
from maxlm.errors import MaxlmError


def test_missing_extra_is_named(tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "seqio", None)  # `import seqio` fails as without the extra
    cfg = Config(data=DataConfig(seqio_task="any_task", seq_len=32), train=TrainConfig(global_batch_size=2))
    with pytest.raises(MaxlmError, match=r"pip install maxlm\[seqio\]"):
        make_train_iterator(cfg, tokenizer)


def test_seqio_task_feeds_the_pipeline(tokenizer, tmp_path, write_jsonl):
    seqio = pytest.importorskip("seqio")
    tf = pytest.importorskip("tensorflow")
    texts = [f"seqio document {i} speaks of the king" for i in range(20)]

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({"text": texts})

    name = "maxlm_test_seqio_task"
    if name not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]), preprocessors=[], output_features={}
        )
    other = write_jsonl(tmp_path / "other.jsonl", [f"file document {i} speaks of the queen" for i in range(20)])
    cfg = Config(
        data=DataConfig(train_files=[SourceConfig(path=str(other))], seqio_task=name, seq_len=32, prefetch=0),
        train=TrainConfig(global_batch_size=4),
    )
    it = make_train_iterator(cfg, tokenizer)
    stream = np.concatenate([next(it)["tokens"].reshape(-1) for _ in range(10)])
    text = tokenizer.decode(stream)
    assert "seqio document" in text and "file document" in text


def test_tokenized_seqio_mixture_is_decoded_with_its_vocabulary(tokenizer, spm_path):
    seqio = pytest.importorskip("seqio")
    tf = pytest.importorskip("tensorflow")
    texts = [f"a tokenized seqio line number {i} of the play" for i in range(12)]

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({"targets": texts})

    vocab = seqio.SentencePieceVocabulary(str(spm_path))
    task, mixture = "maxlm_test_seqio_tokenized", "maxlm_test_seqio_mixture"
    if task not in seqio.TaskRegistry.names():
        seqio.TaskRegistry.add(
            task, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
            preprocessors=[seqio.preprocessors.tokenize], output_features={"targets": seqio.Feature(vocab, add_eos=False)},
        )
        seqio.MixtureRegistry.add(mixture, [(task, 1.0)])
    cfg = Config(data=DataConfig(seqio_task=mixture, seq_len=32, prefetch=0, shuffle=False), train=TrainConfig(global_batch_size=2))
    it = make_train_iterator(cfg, tokenizer)
    text = tokenizer.decode(np.concatenate([next(it)["tokens"].reshape(-1) for _ in range(6)]))
    # Token ids went through the task's vocabulary and back to text, then through maxlm's tokenizer.
    assert "a tokenized seqio line number 0 of the play" in text
