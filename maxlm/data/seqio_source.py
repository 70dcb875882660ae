"""`data.seqio_task`: a registered seqio Task or Mixture as one more source of text.

seqio yields a tf.data stream, which can neither be indexed (Grain's shuffle, mixing and
checkpoints need random access) nor be shared with worker processes; so its train split
is written once to a jsonl file under `cache_dir("seqio")` and read like any other source.
Delete that file to re-export after changing the task. Needs `pip install maxlm[seqio]`.
"""

from __future__ import annotations

import json
import re
import sys

from maxlm.files.atomic import write_atomic
from maxlm.files.cache import cache_dir
from maxlm.errors import MaxlmError

TEXT_FEATURES = ("text", "targets_pretokenized", "targets")  # first present wins


def seqio_path(name: str, split: str = "train") -> str:
    """Returns the jsonl export of seqio task/mixture `name`'s split, writing it on first use."""
    try:
        import seqio
    except ImportError:
        raise MaxlmError(f"data.seqio_task {name!r} needs seqio: pip install maxlm[seqio]") from None
    out = cache_dir("seqio") / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{split}.jsonl"
    if out.exists():
        return str(out)
    try:
        provider = seqio.get_mixture_or_task(name)
    except (ValueError, KeyError) as e:
        raise MaxlmError(f"data.seqio_task {name!r}: not a registered seqio Task or Mixture ({e})") from None
    print(f"exporting seqio {name!r} {split} split to {out} (once) ...", file=sys.stderr, flush=True)
    dataset = provider.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1)
    features = getattr(provider, "output_features", {}) or {}

    def write(f):
        for example in dataset.as_numpy_iterator():
            f.write(json.dumps({"text": example_text(example, features, name)}, ensure_ascii=False).encode("utf-8") + b"\n")

    write_atomic(out, write)
    return str(out)


def example_text(example: dict, features: dict, name: str) -> str:
    """Returns the text of one seqio example: a string feature, or token ids decoded by its vocabulary."""
    key = next((k for k in TEXT_FEATURES if k in example), None)
    if key is None:
        raise MaxlmError(f"data.seqio_task {name!r}: examples have none of the features {', '.join(TEXT_FEATURES)}; got {', '.join(example)}")
    value = example[key]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    if key in features and getattr(value, "dtype", None) is not None and value.dtype.kind in "iu":
        return features[key].vocabulary.decode([int(i) for i in value])
    raise MaxlmError(f"data.seqio_task {name!r}: feature {key!r} is neither text nor token ids ({type(value).__name__})")
