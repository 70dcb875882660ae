"""A sentencepiece `.model` as a Hugging Face `tokenizer.json`, built from the model's own specs.

The core install has neither `tokenizers` nor `transformers`; the file is written as plain JSON
in the `tokenizers` serialization, so that `AutoTokenizer.from_pretrained` loads it and encodes
as `SentencePieceProcessor.encode` does: the normalizer spec (precompiled character map, extra
whitespace removal, whitespace escaping, dummy prefix), BPE merges ranked by piece score or the
unigram scores, byte fallback, and user-defined pieces, which sentencepiece emits whole.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2

from maxlm.errors import MaxlmError

# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4
UNIGRAM, BPE = 1, 2
SPACE = "\u2581"


def _replace(pattern: str, content: str, regex: bool = False) -> dict:
    return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern}, "content": content}


def read_proto(path: Path) -> sentencepiece_model_pb2.ModelProto:
    """Returns the parsed sentencepiece model at `path`."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf's DecodeError and friends
        raise MaxlmError(f"{path}: not a sentencepiece model ({e})") from None
    if not proto.pieces:
        raise MaxlmError(f"{path}: not a sentencepiece model (no pieces)")
    return proto


def _merges(proto) -> list[list[str]]:
    """Returns BPE merges: every split of a normal piece into two normal pieces, the higher-scored piece first."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, left, right))
    return [[left, right] for _, _, left, right in sorted(ranked)]


def _model(proto, user_defined: list[str]) -> dict:
    """Returns the tokenizer.json `model` section: BPE with its merges, or Unigram with its scores."""
    t = proto.trainer_spec
    if t.model_type == BPE:
        return {
            "type": "BPE", "dropout": None, "unk_token": t.unk_piece, "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": True, "byte_fallback": t.byte_fallback, "ignore_merges": bool(user_defined),
            "vocab": {p.piece: i for i, p in enumerate(proto.pieces)}, "merges": _merges(proto),
        }
    if t.model_type == UNIGRAM:
        return {"type": "Unigram", "unk_id": t.unk_id, "vocab": [[p.piece, p.score] for p in proto.pieces], "byte_fallback": t.byte_fallback}
    raise MaxlmError(f"sentencepiece model type {t.model_type} (word / char) has no Hugging Face tokenizer.json form here; use bpe or unigram")


def _normalizer_and_pre_tokenizer(proto, user_defined: list[str]) -> tuple[dict, dict | None]:
    """Returns the normalizer and pre-tokenizer sections that apply sentencepiece's normalizer spec, in its order."""
    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(spec.precompiled_charsmap).decode()})
    if spec.remove_extra_whitespaces:
        # Only spaces: sentencepiece leaves other whitespace, such as newlines, alone.
        steps += [_replace(r"\A +| +\z", "", regex=True), _replace(" {2,}", " ", regex=True)]
    if spec.escape_whitespaces:
        steps.append(_replace(" ", SPACE))
    if spec.add_dummy_prefix:
        # Once, before the whole text, as sentencepiece does (Metaspace's prefix skips a text that
        # starts with "▁" or lost its leading spaces to the whitespace removal).
        steps.append({"type": "Prepend", "prepend": SPACE})
    pre = []
    if user_defined:
        # Not added tokens: those would cut the text into sections that each get the prefix.
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        pre.append({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False})
    return {"type": "Sequence", "normalizers": steps}, ({"type": "Sequence", "pretokenizers": pre} if pre else None)


def _decoder(proto) -> dict:
    """Returns the decoder section: "▁" back to spaces, byte pieces back to bytes, the dummy prefix dropped."""
    steps = [_replace(SPACE, " ")]
    if proto.trainer_spec.byte_fallback:
        steps.append({"type": "ByteFallback"})
    if proto.normalizer_spec.add_dummy_prefix:
        steps += [{"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]
    elif proto.trainer_spec.byte_fallback:
        steps.append({"type": "Fuse"})
    return {"type": "Sequence", "decoders": steps}


def tokenizer_json(path: Path) -> tuple[dict, dict]:
    """Returns (the tokenizer.json content, the special tokens {"bos_token", "eos_token", "unk_token", "pad_token"} it has) of a .model."""
    proto = read_proto(path)
    user_defined = [p.piece for p in proto.pieces if p.type == USER_DEFINED]
    added = [
        {"id": i, "content": p.piece, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, p in enumerate(proto.pieces) if p.type in (UNKNOWN, CONTROL)
    ]
    normalizer, pre_tokenizer = _normalizer_and_pre_tokenizer(proto, user_defined)
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": _decoder(proto), "model": _model(proto, user_defined),
    }
    t = proto.trainer_spec
    special = {f"{name}_token": proto.pieces[i].piece for name, i in (("bos", t.bos_id), ("eos", t.eos_id), ("unk", t.unk_id), ("pad", t.pad_id))
               if 0 <= i < len(proto.pieces)}
    return tokenizer, special
