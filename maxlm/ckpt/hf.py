"""Hugging Face interop: import Llama / Qwen2 / Qwen3 / Mistral / Gemma 2 / Gemma 3 / Mixtral / Qwen3-MoE safetensors models as
maxlm runs, export runs back.

`import_hf` reads tensor by tensor and fills one stacked leaf at a time, placing each on
the devices before the next is read. `export_hf` streams: every HF tensor is produced from
one layer's slice of a stored leaf (`StoredStep.read(leaf, i)`) right when its bytes are
written, so host memory holds one HF tensor (and its transposed copy) plus the open leaf's
decoded chunks, at most 2 GiB (see `ckpt.step`), never the model: for Llama 3 70B in bf16
that is about 2 GiB + 2 x its 2.1 GB embedding. The export is written to a temporary
sibling dir and renamed into place, so a crash never leaves a half-written dir; into a non-empty
dir (--overwrite, or a run's own earlier export) its files are moved in one by one, the others kept.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from maxlm.ckpt.adapters import MergedStep
from maxlm.ckpt.hf_peft import RUN_FILE, export_peft
from maxlm.ckpt.hf_config import generation_config, hf_config, model_config, read_config_json
from maxlm.ckpt.step import StoredStep
from maxlm.ckpt.hf_tokenizer import copy_hf_tokenizer, special_ids, write_hf_tokenizer
from maxlm.ckpt.hf_weights import (
    IGNORED_SUFFIXES, TOP_TENSORS, ZERO_ONLY_SUFFIX, Entry, SafetensorsDir, entry_bytes, from_hf,
    hf_shape, layer_name, layer_tensors, np_dtype, per_expert, to_hf, write_safetensors,
)
from maxlm.ckpt.manager import Checkpoints
from maxlm.data.chat import jinja_template
from maxlm.config import Config, MeshConfig, ModelConfig, dump_yaml, validate
from maxlm.errors import MaxlmError
from maxlm.files import atomic
from maxlm.files.outputs import check_output_dir
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks import TASKS, has_reward_head

MAX_SHARD_BYTES = 4 << 30
PARAM_DTYPES = ("float32", "bfloat16")


# ---------------------------------------------------------------- import


def read_hf(hf_dir: str | os.PathLike, dtype: str = "float32", mesh: Mesh | None = None) -> tuple[Config, Any]:
    """Returns (config, params) of an HF model dir of a supported family; params in `dtype`, sharded over `mesh`.

    The default mesh puts every local device on the fsdp axis, so a model larger than one
    device's memory still loads. Host memory holds one stacked leaf at a time.
    """
    hf_dir = Path(hf_dir).resolve()
    if dtype not in PARAM_DTYPES:
        raise MaxlmError(f"dtype must be one of {', '.join(PARAM_DTYPES)}, got {dtype!r}")
    raw = read_config_json(hf_dir)
    m = dataclasses.replace(model_config(raw, str(hf_dir / "config.json")), dtype=dtype, param_dtype=dtype)
    cfg = Config(run_dir=str(hf_dir), model=m)
    cfg.data.seq_len = min(cfg.data.seq_len, m.max_seq_len)
    try:
        validate(cfg)
    except MaxlmError as e:
        raise MaxlmError(f"{hf_dir / 'config.json'}: {e}") from None
    files = SafetensorsDir(hf_dir)
    try:
        params = _load_params(files, cfg.model, mesh or make_mesh(MeshConfig(data=1, fsdp=-1)))
    finally:
        files.close()
    return cfg, params


def _load_params(files: SafetensorsDir, m: ModelConfig, mesh: Mesh) -> Any:
    _, shapes, _ = params_lib.abstract(m)
    shardings = params_lib.shardings(m, mesh)
    used: set[str] = set()

    def load(path, sds, sharding):
        leaf = "/".join(k.key for k in path)
        host = np.empty(sds.shape, sds.dtype)
        if leaf.startswith("layers/"):
            name, layout = layer_tensors(m.family)[leaf.removeprefix("layers/")]
            # A per-expert name fills one [layer, expert] row of the stacked leaf per HF tensor.
            rows = [(i, j) for i in range(sds.shape[0]) for j in range(sds.shape[1])] if per_expert(name) else [(i,) for i in range(sds.shape[0])]
            one = sds.shape[len(rows[0]):]
            for row in rows:
                hf_name = layer_name(row[0], name, *row[1:])
                host[row] = from_hf(files.get(hf_name, hf_shape(one, layout)), one, layout)
                used.add(hf_name)
        else:
            name, layout = TOP_TENSORS[leaf]
            host[...] = from_hf(files.get(name, hf_shape(sds.shape, layout)), sds.shape, layout)
            used.add(name)
        return jax.device_put(host, sharding)

    params = jax.tree_util.tree_map_with_path(load, shapes, shardings)
    _check_leftovers(files, used, m.tie_embeddings)
    return params


def _check_leftovers(files: SafetensorsDir, used: set[str], tied: bool) -> None:
    """Raises if the files hold weights that the import would silently drop."""
    left = []
    for name in sorted(files.names() - used):
        if name.endswith(IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        if name.endswith(ZERO_ONLY_SUFFIX) and not np.any(files.get(name)):
            continue
        left.append(name)
    if left:
        more = f" and {len(left) - 3} more" if len(left) > 3 else ""
        raise MaxlmError(f"{files.dir}: tensors with no maxlm counterpart: {', '.join(left[:3])}{more}")


def import_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Returns `out_dir`, a new maxlm run dir holding the HF model as step 0 plus its tokenizer.

    Writes `config.yaml`, `checkpoints/0/` (params only) and `tokenizer/` (the HF tokenizer
    files, which `tokenizer.path` then points at). Param and compute dtype are `dtype`.
    """
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir).resolve()
    if Checkpoints(out_dir, read_only=True).latest_step() is not None:
        raise MaxlmError(f"{out_dir}: already holds checkpoints; import into a new directory")
    if out_dir == hf_dir or hf_dir.is_relative_to(out_dir):
        raise MaxlmError(f"import-hf OUT {out_dir}: would write into the HF model dir it reads; choose a new directory")
    check_output_dir(out_dir, "import-hf OUT", None)
    cfg, params = read_hf(hf_dir, dtype)
    cfg.run_dir = str(out_dir)
    if copy_hf_tokenizer(hf_dir, out_dir / "tokenizer"):
        cfg.tokenizer.path = str(out_dir / "tokenizer")
    else:
        print(f"warning: {hf_dir} has no tokenizer files; set tokenizer.path before training on {out_dir}",
              file=sys.stderr, flush=True)
    dump_yaml(cfg, out_dir / "config.yaml")
    ckpts = Checkpoints(out_dir, async_save=False)
    ckpts.save(0, params, cfg)
    ckpts.close()
    return out_dir


# ---------------------------------------------------------------- export


def export_hf(path: str | os.PathLike, out_dir: str | os.PathLike, *, max_shard_bytes: int = MAX_SHARD_BYTES,
              overwrite: bool = False, merge: bool = False) -> Path:
    """Returns `out_dir`, an HF model dir written from a maxlm run dir, its checkpoints/ dir or one step dir.

    Llama runs become LlamaForCausalLM, the others their family's ForCausalLM (Gemma 3: text-only); a run with a scalar head
    becomes the family's ForSequenceClassification (num_labels=1, `score.weight` [1, D]; no LM head).
    Weights keep their stored dtype; shards hold whole layers, up to `max_shard_bytes` each.
    A non-empty `out_dir` is refused unless `overwrite`; then only the files an export writes are
    replaced (and an earlier export's surplus shards removed): nothing else there is deleted.
    A LoRA run becomes a PEFT adapter dir (ckpt/hf_peft.py); with `merge`, a plain model with the adapters merged into its base.
    """
    stored = StoredStep(path)
    if stored.config.lora.rank and not merge:
        return export_peft(stored, Path(out_dir).resolve(), overwrite)
    if stored.config.lora.rank:
        stored = MergedStep(stored)
    m = stored.config.model
    if has_reward_head(stored.config) and stored.config.rm.pooling != "last":
        raise MaxlmError(
            f"{path}: a reward model trained with rm.pooling={stored.config.rm.pooling} has no Hugging Face equivalent "
            "(ForSequenceClassification reads the last token); use it with maxlm eval / rl.reward_model"
        )
    out_dir = Path(out_dir).resolve()
    check_output_dir(out_dir, "export-hf OUT", overwrite)
    _check_stored_shapes(stored)
    dtype = stored.dtype("embed").name
    tok_src = stored.tokenizer_path()
    if tok_src is None:
        print(f"warning: tokenizer of {stored.run_dir} not found; exporting weights and config only", file=sys.stderr, flush=True)
    bos, eos = special_ids(tok_src) if tok_src else (None, None)
    shards = _pack(_tensor_groups(stored, dtype), max_shard_bytes)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        weight_map, total = {}, 0
        for k, entries in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(tmp / fname, entries)
            for e in entries:
                weight_map[e[0]] = fname
                total += entry_bytes(e)
        # maxlm_run: which run wrote it, so that run's own end-of-run export may replace it on a rerun.
        metadata = {"total_size": total, "maxlm_run": str(stored.run_dir.resolve())}
        _write_json(tmp / "model.safetensors.index.json", {"metadata": metadata, "weight_map": weight_map})
        score = has_reward_head(stored.config)
        _write_json(tmp / "config.json", hf_config(m, dtype=dtype, bos_id=bos, eos_id=eos, pad_id=None, score=score))
        s = stored.config.sample
        _write_json(tmp / "generation_config.json", generation_config(bos, eos, None, s.temperature, s.top_k, s.top_p))
        if tok_src:
            # A chat run's export prompts as it trained: its built-in template becomes the tokenizer's own.
            chat_template = jinja_template(stored.config.data.chat_template) if TASKS[stored.config.task].chat else None
            write_hf_tokenizer(tok_src, tmp, chat_template)
            if m.family in ("qwen2", "qwen3", "qwen3_moe") and tok_src.is_file():
                print(f"warning: {out_dir}: AutoTokenizer loads every {m.family} model's tokenizer as Qwen2Tokenizer (byte-level BPE), "
                      "which does not reproduce this sentencepiece tokenizer; load it with transformers.PreTrainedTokenizerFast",
                      file=sys.stderr, flush=True)
        atomic.replace_dir(tmp, out_dir, stale=_exported_shards(out_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_stored_shapes(stored: StoredStep) -> None:
    _, shapes, _ = params_lib.abstract(stored.config.model)
    for path, sds in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        leaf = "/".join(k.key for k in path)
        if stored.shape(leaf) != tuple(sds.shape):
            raise MaxlmError(f"{stored.params_dir}: {leaf} has shape {list(stored.shape(leaf))}, its config implies {list(sds.shape)}")


def _read_in_hf_layout(stored: StoredStep, leaf: str, i: int | None, layout) -> np.ndarray:
    return to_hf(stored.read(leaf, i), layout)


def _stored(stored: StoredStep, leaf: str, i: int | tuple[int, int] | None, name: str, layout, dtype: str) -> tuple[str, Entry]:
    """Returns (leaf, entry) of HF tensor `name`: row `i` (or (layer, expert)) of the stored `leaf`, or all of it when i is None."""
    shape = stored.shape(leaf)[0 if i is None else len(i) if isinstance(i, tuple) else 1:]
    return leaf, (name, hf_shape(shape, layout), dtype, functools.partial(_read_in_hf_layout, stored, leaf, i, layout))


def _zeros(name: str, shape: tuple[int, ...], dtype: str) -> tuple[str, Entry]:
    """Returns ("zeros", entry) of an all-zero HF tensor `name`."""
    return "zeros", (name, shape, dtype, functools.partial(np.zeros, shape, np_dtype(dtype)))


def _tensor_groups(stored: StoredStep, dtype: str) -> list[list[tuple[str, Entry]]]:
    """Returns the HF tensors to write, grouped [embed], [layer 0], ..., [final norm, head], each tagged with its leaf."""
    m = stored.config.model
    hd = stored.shape("layers/attn/q")[-1]
    groups = [[_stored(stored, "embed", None, *TOP_TENSORS["embed"], dtype)]]
    for i in range(m.num_layers):
        group = []
        for sub, (name, layout) in layer_tensors(m.family).items():
            if f"layers/{sub}" not in stored.leaves:
                continue
            if per_expert(name):
                group += [_stored(stored, f"layers/{sub}", (i, j), layer_name(i, name, j), layout, dtype) for j in range(m.num_experts)]
            else:
                group.append(_stored(stored, f"layers/{sub}", i, layer_name(i, name), layout, dtype))
        # HF's modules have biases maxlm's may lack: Qwen2's q/k/v always, Llama's / Qwen3's o_proj with attention_bias.
        if m.family == "qwen2" and not m.qkv_bias:
            heads = {"q": m.num_heads, "k": m.num_kv_heads, "v": m.num_kv_heads}
            group += [_zeros(layer_name(i, f"self_attn.{p}_proj.bias"), (n * hd,), dtype) for p, n in heads.items()]
        if m.family in ("llama", "qwen3", "qwen3_moe") and m.qkv_bias:
            group.append(_zeros(layer_name(i, "self_attn.o_proj.bias"), (m.hidden_size,), dtype))
        groups.append(group)
    last = [_stored(stored, "final_norm/scale", None, *TOP_TENSORS["final_norm/scale"], dtype)]
    if has_reward_head(stored.config):
        last.append(_stored(stored, "score_head", None, *TOP_TENSORS["score_head"], dtype))
    elif not m.tie_embeddings:
        last.append(_stored(stored, "lm_head", None, *TOP_TENSORS["lm_head"], dtype))
    groups.append(last)
    return groups


def _pack(groups: list[list[tuple[str, Entry]]], max_bytes: int) -> list[list[Entry]]:
    """Returns shards of whole groups up to `max_bytes` each, entries ordered leaf by leaf.

    Leaf-major order makes consecutive reads hit the same stored chunks while they are cached.
    """
    shards: list[list[tuple[str, Entry]]] = [[]]
    size = 0
    for group in groups:
        nbytes = sum(entry_bytes(e) for _, e in group)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += nbytes
    return [[e for _, e in sorted(shard, key=lambda t: t[0])] for shard in shards]


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def exported_from(out_dir: str | os.PathLike) -> str | None:
    """Returns the run dir whose export `out_dir` holds (from its index, or a PEFT export's own file), or None."""
    try:
        if (Path(out_dir) / RUN_FILE).is_file():
            return json.loads((Path(out_dir) / RUN_FILE).read_text())["maxlm_run"]
        return json.loads((Path(out_dir) / "model.safetensors.index.json").read_text())["metadata"]["maxlm_run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _exported_shards(out_dir: Path) -> tuple[str, ...]:
    """Returns the weight files an earlier export into `out_dir` listed in its index (none if there is none)."""
    try:
        index = json.loads((out_dir / "model.safetensors.index.json").read_text())
        return tuple(sorted(set(index["weight_map"].values())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ()
