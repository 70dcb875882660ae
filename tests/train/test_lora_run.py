"""LoRA runs end to end on an imported model (transformers' random Llama, a tokenizer trained here):
what trains and what is saved, PEFT's and transformers' logits of the exports, the base check,
a DPO run whose reference is the base with the adapters off, and runs on an nf4 base (QLoRA; dense and MoE)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml
from etils import epath

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import maxlm  # noqa: E402
from maxlm.ckpt.adapters import MergedStep  # noqa: E402
from maxlm.ckpt.hf import export_hf, import_hf  # noqa: E402
from maxlm.ckpt.manager import Checkpoints  # noqa: E402
from maxlm.ckpt.step import StoredStep  # noqa: E402
from maxlm.config import load_config  # noqa: E402
from maxlm.data.tokenizers import train_sentencepiece  # noqa: E402
from maxlm.errors import MaxlmError  # noqa: E402
from maxlm.models import lora  # noqa: E402
from maxlm.models import params as params_lib  # noqa: E402
from maxlm.parallel.mesh import make_mesh  # noqa: E402
from maxlm.tasks.pairs import completion_logps  # noqa: E402
from maxlm.train.resume import check_resumable  # noqa: E402
from maxlm.train.run import train  # noqa: E402
from maxlm.train.setup import setup  # noqa: E402
from maxlm.train.state import load_params  # noqa: E402

pytestmark = pytest.mark.slow  # a few LoRA runs and their compiles
V = 512
SHAPE = {"vocab_size": V, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": False}
TARGETS = ["q", "k", "v", "o", "gate", "up", "down"]


def hf_model(seed: int, out: Path, sp: Path) -> tuple[object, Path]:
    """Returns (a random transformers Llama, its dir with the sentencepiece tokenizer)."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval()
    model.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(sp.read_bytes())
    return model, out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[object, Path, Path]:
    """Returns (transformers model, its HF dir, its `maxlm import-hf` run)."""
    root = tmp_path_factory.mktemp("lora_base")
    texts = [(Path(os.__file__).parent / n).read_text() for n in ("os.py", "textwrap.py")]
    sp = train_sentencepiece(texts, root / "sp.model", vocab_size=V, max_sentences=2000)
    model, hf_dir = hf_model(0, root / "hf", sp)
    return model, hf_dir, import_hf(hf_dir, root / "run")


def lora_config(root: Path, base_run: Path, shared_data: Path, **over) -> Path:
    """Returns a LoRA config on base_run; `over`: top-level sections replaced."""
    cfg = {
        "task": "sft", "run_dir": str(root / "run"),
        "data": {"train_files": [{"path": str(shared_data / "preference" / "hh_rlhf_harmless_part1.jsonl.gz"), "rows": "0:120"}],
                 "seq_len": 96, "on_bad_record": "skip"},
        "train": {"steps": 3, "global_batch_size": 8, "warmup_steps": 1, "log_every": 1, "learning_rate": 2e-2, "init_from": str(base_run)},
        "lora": {"rank": 4, "alpha": 8.0, "targets": TARGETS},
        "mesh": {"data": -1},
    } | over
    path = root / "lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, base, shared_data) -> Path:
    root = tmp_path_factory.mktemp("lora_sft")
    logs = []
    train(load_config(lora_config(root, base[2], shared_data)), log=logs.append)
    assert any("lora: rank 4" in line and "trainable params" in line for line in logs)
    return root / "run"


def lora_logits(run: Path, tokens: np.ndarray, float_base: bool = False) -> np.ndarray:
    """Returns the f32 logits of a LoRA run through maxlm's adapted forward (adapters applied in the projections, not merged),
    on its base as the run held it (lora.base_dtype) or, with `float_base`, as stored."""
    cfg = StoredStep(run).config
    if float_base:
        cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, base_dtype="param_dtype"))
    mesh = make_mesh(cfg.mesh)
    params = lora.held_base(load_params(cfg.train.init_from, cfg, mesh), cfg.lora)  # the base, as the run held it
    adapters = Checkpoints(run, read_only=True).restore(None, lora.trainable(params_lib.abstract(cfg.model, cfg.lora)[1]))["params"]
    graphdef, _, _ = params_lib.abstract(dataclasses.replace(cfg.model, dtype="float32"), cfg.lora)
    return np.asarray(jax.jit(lambda p, t: params_lib.bind(graphdef, p)(t))(lora.join(adapters, params), tokens))


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def test_checkpoint_holds_adapters_and_optimizer_state_of_adapters_only(sft_run):
    stored = StoredStep(sft_run)
    adapter_leaves = {f"layers/{p}/{t}_lora/{ab}" for p, ts in (("attn", "qkvo"), ("mlp", ("gate", "up", "down"))) for t in ts for ab in "ab"}
    assert set(stored.leaves) == adapter_leaves
    opt_dir = sft_run / "checkpoints" / str(stored.step) / "opt_state"
    opt = jax.tree.leaves(ocp.StandardCheckpointHandler().metadata(epath.Path(opt_dir)).tree)
    shapes = [tuple(x.shape) for x in opt]
    # AdamW's mu and nu, one per adapter leaf, and its step count: nothing of the base.
    assert len(opt) == 2 * len(adapter_leaves) + 1 and sorted(s for s in shapes if s) == sorted(2 * [stored.shape(k) for k in adapter_leaves])
    record = stored.checkpoints.base(stored.step)
    assert Path(record["init_from"]).parent == Path(stored.config.train.init_from).resolve()
    assert "layers/mlp/gate" in record["fingerprint"]


def test_peft_adapter_and_merged_export_give_maxlm_logits(sft_run, base, tmp_path):
    model, hf_dir, _ = base
    tokens = np.random.default_rng(0).integers(0, V, (2, 40))
    ours = lora_logits(sft_run, tokens)
    assert np.abs(ours - torch_logits(model, tokens)).max() > 1e-2  # the adapters trained away from the base

    out = export_hf(sft_run, tmp_path / "peft")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32), out).eval()
    diff_peft = np.abs(torch_logits(adapted, tokens) - ours).max()

    merged = export_hf(sft_run, tmp_path / "merged", merge=True)
    plain = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    diff_merged = np.abs(torch_logits(plain, tokens) - ours).max()
    print(f"max |logits - maxlm LoRA|: peft {diff_peft:.2e}, merged export {diff_merged:.2e}")
    assert diff_peft <= 1e-4 and diff_merged <= 1e-4
    # maxlm's own loader merges too: sampling and eval see the same model.
    loaded = maxlm.from_pretrained(sft_run, dtype="float32")
    assert np.abs(np.asarray(loaded(tokens)) - ours).max() <= 1e-4


def test_adapters_refuse_a_changed_base(base, sft_run, tmp_path):
    _, hf_dir, base_run = base
    copy, run = tmp_path / "base", tmp_path / "lora"
    shutil.copytree(base_run, copy)
    shutil.copytree(sft_run, run)
    # The run and its base moved together: point its base record at the moved base (a JSON file).
    step = StoredStep(run).step
    record_file = run / "checkpoints" / str(step) / "base" / "metadata"
    record_file.write_text(json.dumps(json.loads(record_file.read_text()) | {"init_from": str(copy / "checkpoints")}))
    maxlm.from_pretrained(run)  # loads while its base is the one it trained on
    shutil.rmtree(copy)
    _, other_dir = hf_model(1, tmp_path / "other_hf", hf_dir / "tokenizer.model")
    import_hf(other_dir, copy)
    with pytest.raises(MaxlmError, match="the LoRA base changed"):
        maxlm.from_pretrained(run)
    with pytest.raises(MaxlmError, match="the LoRA base changed"):
        export_hf(run, tmp_path / "merged", merge=True)
    cfg = StoredStep(run).config
    resumed = dataclasses.replace(cfg, run_dir=str(run), train=dataclasses.replace(cfg.train, steps=step + 1))
    with pytest.raises(MaxlmError, match="the LoRA base changed"):
        train(resumed, log=lambda s: None)


def test_dpo_with_lora_compares_with_the_base_with_adapters_off(base, tmp_path, shared_data):
    _, _, base_run = base
    # warmup_steps 0: the first update already moves the adapters
    cfg = load_config(lora_config(tmp_path, base_run, shared_data, task="dpo"), ["train.warmup_steps=0"])
    mesh = make_mesh(cfg.mesh)
    run = setup(cfg, mesh, log=lambda s: None)
    assert run.ref_params is None  # no second model: the step takes its reference from its own params
    local, _ = run.data.train.next(run.state.params, 1)
    batch = run.to_global(local)
    base_params = load_params(str(base_run), run.cfg, mesh)
    run.state.params, run.state.opt_state, first = run.step_fn(run.state.params, run.state.opt_state, batch, None, {})
    # Fresh adapters (b = 0) are the base: DPO's first loss is log 2.
    assert abs(float(first["loss"]) - math.log(2)) < 1e-4
    run.state.params, run.state.opt_state, second = run.step_fn(run.state.params, run.state.opt_state, batch, None, {})
    assert abs(float(second["margin"])) > 1e-4  # the policy moved away from its reference
    plain_graphdef, _, _ = params_lib.abstract(run.cfg.model)
    with jax.set_mesh(mesh):
        off = jax.jit(lambda p, b: completion_logps(run.graphdef, lora.adapters_off(p), b))(run.state.params, batch)[0]
        ref = jax.jit(lambda p, b: completion_logps(plain_graphdef, p, b))(base_params, batch)[0]
    np.testing.assert_allclose(np.asarray(off), np.asarray(ref), atol=1e-4)


def test_resume_refuses_other_adapters(sft_run):
    cfg = StoredStep(sft_run).config
    for lora_cfg in (dataclasses.replace(cfg.lora, rank=8), dataclasses.replace(cfg.lora, targets=["q", "v"])):
        with pytest.raises(MaxlmError, match="resumes only with the adapters it started with"):
            check_resumable(dataclasses.replace(cfg, run_dir=str(sft_run), lora=lora_cfg))


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory, base, shared_data) -> tuple[Path, Path]:
    """Returns (config, run dir) of a finished 4-step LoRA SFT run on an nf4 base, checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("lora_nf4")
    path = lora_config(root, base[2], shared_data,
                       train={"steps": 4, "global_batch_size": 8, "warmup_steps": 1, "log_every": 1, "learning_rate": 2e-2, "init_from": str(base[2])},
                       lora={"rank": 4, "alpha": 8.0, "targets": TARGETS, "base_dtype": "nf4", "nf4_block": 32},  # SHAPE's inputs: 64, 96
                       checkpoint={"interval_steps": 2, "async_save": False, "keep": 5})
    train(load_config(path), log=lambda s: None)
    return path, root / "run"


def losses(run: Path) -> dict[int, float]:
    """Returns {step: train loss} from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_nf4_base_trains_resumes_exactly_and_exports(nf4_run, base, tmp_path):
    path, run = nf4_run
    _, hf_dir, _ = base
    loss = losses(run)
    print(f"nf4 base: train loss by step {loss}")
    assert sorted(loss) == [1, 2, 3, 4] and loss[4] < loss[1]
    assert all(lora.is_adapter(k.split("/")[-2]) for k in StoredStep(run).leaves)  # adapters only: no quantized base

    # Resume from step 2: the same adapters and losses as the uninterrupted run (the base re-quantized from its record).
    copy = tmp_path / "resumed"
    shutil.copytree(run, copy)
    shutil.move(copy / "checkpoints" / "4", tmp_path / "step4")
    logs = []
    train(load_config(path, [f"run_dir={copy}"]), log=logs.append)
    assert any(f"resumed from {copy / 'checkpoints'}/2" in line for line in logs)
    assert losses(copy) == loss
    for leaf in StoredStep(run).leaves:
        np.testing.assert_array_equal(StoredStep(copy).read(leaf), StoredStep(run).read(leaf), err_msg=leaf)

    tokens = np.random.default_rng(0).integers(0, V, (2, 40))
    ours = lora_logits(run, tokens)  # adapted forward on the nf4 base
    merged = export_hf(run, tmp_path / "merged", merge=True)  # the adapters merged onto the dequantized base
    plain = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    diff_merged = np.abs(torch_logits(plain, tokens) - ours).max()
    loaded = maxlm.from_pretrained(run, dtype="float32")
    diff_loaded = np.abs(np.asarray(loaded(tokens)) - ours).max()
    # PEFT's adapter goes onto the stored float base (not the nf4 one the adapters trained on): maxlm's adapters on that base.
    out = export_hf(run, tmp_path / "peft")
    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32), out).eval()
    on_float = lora_logits(run, tokens, float_base=True)
    diff_peft = np.abs(torch_logits(adapted, tokens) - on_float).max()
    print(f"nf4 base, max |logits - maxlm LoRA|: merged export {diff_merged:.2e}, from_pretrained {diff_loaded:.2e}; PEFT on the float "
          f"base vs maxlm's on it {diff_peft:.2e}; the float base vs the nf4 one {np.abs(on_float - ours).max():.2e} (logit std {ours.std():.3f})")
    assert diff_merged <= 1e-4 and diff_loaded <= 1e-4 and diff_peft <= 1e-4


def test_nf4_blocks_are_checked_against_the_init_from_model(base, tmp_path, shared_data):
    # The loader sees the config's default model; the run's is init_from's (intermediate_size 96, which 64 does not divide).
    path = lora_config(tmp_path, base[2], shared_data, lora={"rank": 4, "targets": TARGETS, "base_dtype": "nf4"})
    with pytest.raises(MaxlmError, match=rf"^train.init_from {re.escape(str(base[2]))}: its model cannot be held as lora.base_dtype nf4: "
                                         r"lora.nf4_block \(64\) must divide .* down take 96 \(model.mlp_dim\)"):
        train(load_config(path), log=lambda s: None)


def test_an_moe_run_on_an_nf4_base_exports_the_experts_it_trained_with(tmp_path, shared_data):
    # Mixtral's experts are held as nf4 too (one matrix per expert) and two of them adapted; the merged export holds those same
    # dequantized experts with their adapters merged in.
    sp = train_sentencepiece([(Path(os.__file__).parent / "os.py").read_text()], tmp_path / "sp.model", vocab_size=V, max_sentences=2000)
    torch.manual_seed(0)
    shape = {k: v for k, v in SHAPE.items() if k != "tie_word_embeddings"}
    cfg = transformers.MixtralConfig(**shape, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    transformers.MixtralForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes(sp.read_bytes())
    base_run = import_hf(tmp_path / "hf", tmp_path / "base")
    path = lora_config(tmp_path, base_run, shared_data, lora={"rank": 4, "alpha": 8.0, "targets": ["q", "o", "gate", "down"], "base_dtype": "nf4",
                                                              "nf4_block": 32},
                       train={"steps": 2, "global_batch_size": 8, "warmup_steps": 1, "log_every": 1, "learning_rate": 2e-2, "init_from": str(base_run)})
    train(load_config(path), log=lambda s: None)
    run = tmp_path / "run"
    merged_step = MergedStep(StoredStep(run))
    whole = merged_step.read("layers/moe/down")
    np.testing.assert_array_equal(merged_step.read("layers/moe/down", (1, 2)), whole[1, 2])  # one expert, as export reads it
    assert np.abs(whole - StoredStep(base_run).read("layers/moe/down")).max() > 0  # the nf4 experts, not the float ones
    assert np.abs(StoredStep(run).read("layers/moe/down_lora/b")).max(axis=(2, 3)).min() > 0  # every expert's adapter trained
    tokens = np.random.default_rng(0).integers(0, V, (2, 40))
    ours = lora_logits(run, tokens)
    plain = transformers.AutoModelForCausalLM.from_pretrained(export_hf(run, tmp_path / "merged", merge=True), dtype=torch.float32).eval()
    diff = np.abs(torch_logits(plain, tokens) - ours).max()
    print(f"nf4 Mixtral LoRA on q, o, gate, down: max |merged export's logits - maxlm's| {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.parametrize("targets", [TARGETS, ["up"]], ids=["all", "up-only"])
def test_an_moe_runs_expert_adapters_load_in_peft_and_merge(tmp_path, shared_data, targets):
    # PEFT adapts transformers 5's fused expert parameters (target_parameters): every projection (gate and up then share
    # gate_up_proj's adapter, at rank 2r) or the experts' up alone (no target module at all).
    sp = train_sentencepiece([(Path(os.__file__).parent / "os.py").read_text()], tmp_path / "sp.model", vocab_size=V, max_sentences=2000)
    torch.manual_seed(0)
    shape = {k: v for k, v in SHAPE.items() if k != "tie_word_embeddings"}
    cfg = transformers.Qwen3MoeConfig(**shape, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40, norm_topk_prob=True,
                                      head_dim=16, tie_word_embeddings=False)
    transformers.Qwen3MoeForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes(sp.read_bytes())
    base_run = import_hf(tmp_path / "hf", tmp_path / "base")
    path = lora_config(tmp_path, base_run, shared_data, lora={"rank": 4, "alpha": 8.0, "targets": targets},
                       train={"steps": 2, "global_batch_size": 8, "warmup_steps": 1, "log_every": 1, "learning_rate": 2e-2, "init_from": str(base_run)})
    train(load_config(path), log=lambda s: None)
    run = tmp_path / "run"
    tokens = np.random.default_rng(0).integers(0, V, (2, 40))
    ours = lora_logits(run, tokens)
    base_logits = torch_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval(), tokens)
    assert np.abs(ours - base_logits).max() > 1e-3  # the adapters moved the logits
    out = export_hf(run, tmp_path / "peft")
    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32), out).eval()
    diff_peft = np.abs(torch_logits(adapted, tokens) - ours).max()
    plain = transformers.AutoModelForCausalLM.from_pretrained(export_hf(run, tmp_path / "merged", merge=True), dtype=torch.float32).eval()
    diff_merged = np.abs(torch_logits(plain, tokens) - ours).max()
    print(f"MoE LoRA {targets}: max |logits - maxlm's|: peft {diff_peft:.2e}, merged export {diff_merged:.2e}; moved {np.abs(ours - base_logits).max():.2e}")
    assert diff_peft <= 1e-4 and diff_merged <= 1e-4
