"""HF interop against transformers itself: imported models give transformers' logits, exports
load in transformers with identical weights, and the export streams and is atomic."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import maxlm  # noqa: E402
from maxlm.ckpt import step as stored_step  # noqa: E402
from maxlm.ckpt.hf import export_hf, import_hf  # noqa: E402
from maxlm.ckpt.manager import Checkpoints  # noqa: E402
from maxlm.cli import main as cli_main  # noqa: E402
from maxlm.config import (  # noqa: E402
    Config,
    MeshConfig,
    ModelConfig,
    RopeScalingConfig,
    TokenizerConfig,
    expert_dim,
    head_dim,
    load_config,
    sliding_layers,
)
from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece  # noqa: E402
from maxlm.errors import MaxlmError  # noqa: E402
from maxlm.models import params as params_lib  # noqa: E402
from maxlm.parallel.mesh import make_mesh  # noqa: E402
from maxlm.train.metrics import param_count  # noqa: E402
from maxlm.train.state import RUNTIME_MODEL_KEYS  # noqa: E402

V, T = 128, 48
# llama3 scaling over an original context of 32 with head_dim 16 puts the 8 frequencies in
# all three regimes (kept, interpolated, divided by the factor); T = 48 runs past 32.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32, "rope_theta": 10000.0}
SHAPE = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)
TEXTS = ["hello world", " leading space", "two  spaces\nnew line\n\n    indent", "digits 12345 é ünïcode 漢字 😀", "def f(x):\n\treturn x"]


def randomized(model):
    """Returns `model` with every weight (norms and biases too) moved off its init, so each mapping matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, V, (2, T))


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    """Returns a small sentencepiece model trained the way maxlm trains them."""
    root = Path(os.__file__).parent
    texts = [(root / n).read_text() for n in ("os.py", "textwrap.py", "string.py")]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=512, max_sentences=3000)


@pytest.fixture(scope="module")
def llama(tmp_path_factory, sp_model):
    """Returns (torch model, HF dir, imported run dir) of a Llama 3 shaped model with GQA and llama3 RoPE."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**SHAPE, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False, rms_norm_eps=1e-5)
    model = randomized(transformers.LlamaForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("llama_hf")
    model.save_pretrained(hf_dir)
    # Give the HF dir a tokenizer, so import and export carry one through.
    (hf_dir / "tokenizer.model").write_bytes(sp_model.read_bytes())
    transformers.AutoTokenizer.from_pretrained(hf_dir).save_pretrained(hf_dir)
    return model, hf_dir, import_hf(hf_dir, tmp_path_factory.mktemp("llama_run") / "run")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """Returns (torch model, HF dir, imported run dir) of a Qwen2 with tied embeddings and q/k/v biases, sharded."""
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(**SHAPE, tie_word_embeddings=True, rope_theta=10000.0)
    model = randomized(transformers.Qwen2ForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("qwen2_hf")
    model.save_pretrained(hf_dir, max_shard_size="100KB")  # sharded, with model.safetensors.index.json
    return model, hf_dir, import_hf(hf_dir, tmp_path_factory.mktemp("qwen2_run") / "run")


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """Returns (torch model, HF dir, imported run dir) of a Qwen3 with q/k norms, tied embeddings and
    head_dim 24, not hidden_size / num_heads = 16."""
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(**SHAPE, head_dim=24, tie_word_embeddings=True, rope_theta=10000.0)
    model = randomized(transformers.Qwen3ForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("qwen3_hf")
    model.save_pretrained(hf_dir)
    run = tmp_path_factory.mktemp("qwen3_run") / "run"
    assert cli_main(["import-hf", str(hf_dir), str(run)]) == 0  # through the command, as a user would
    return model, hf_dir, run


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """Returns (torch model, HF dir, imported run dir) of a Mistral whose sliding window (8) is far
    shorter than the T = 48 tokens scored and the 18 slots generated."""
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(**SHAPE, sliding_window=8, rope_theta=10000.0)
    model = randomized(transformers.MistralForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("mistral_hf")
    model.save_pretrained(hf_dir)
    return model, hf_dir, import_hf(hf_dir, tmp_path_factory.mktemp("mistral_run") / "run")


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    """Returns (torch model, HF dir, imported run dir) of a Mixtral with 4 experts, top-2, and a sliding window (8) under T = 48."""
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(**SHAPE, num_local_experts=4, num_experts_per_tok=2, sliding_window=8, rope_theta=10000.0)
    model = randomized(transformers.MixtralForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("mixtral_hf")
    model.save_pretrained(hf_dir)
    return model, hf_dir, import_hf(hf_dir, tmp_path_factory.mktemp("mixtral_run") / "run")


@pytest.fixture(scope="module")
def qwen3_moe(tmp_path_factory):
    """Returns (torch model, HF dir, imported run dir) of a Qwen3-MoE with 4 experts of width 40 (not intermediate_size),
    top-2 without renormalization (norm_topk_prob false), q/k norms and head_dim 24."""
    torch.manual_seed(0)
    cfg = transformers.Qwen3MoeConfig(**SHAPE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=40, norm_topk_prob=False,
                                      head_dim=24, rope_theta=10000.0)
    model = randomized(transformers.Qwen3MoeForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("qwen3_moe_hf")
    model.save_pretrained(hf_dir)
    return model, hf_dir, import_hf(hf_dir, tmp_path_factory.mktemp("qwen3_moe_run") / "run")


# Gemma's fixtures: head_dim 24, query_pre_attn_scalar 20 (neither 24 nor hidden / heads), a window of 8
# under T = 48, and caps small enough (2 on scores, 3 on logits) that tanh bends them.
GEMMA_SHAPE = dict(SHAPE, head_dim=24, sliding_window=8, query_pre_attn_scalar=20)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """Returns (torch model, HF dir, imported run dir) of a Gemma 2: local layer 0, global layer 1, both soft-caps."""
    torch.manual_seed(0)
    cfg = transformers.Gemma2Config(**GEMMA_SHAPE, attn_logit_softcapping=2.0, final_logit_softcapping=3.0)
    model = randomized(transformers.Gemma2ForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("gemma2_hf")
    model.save_pretrained(hf_dir)
    return model, hf_dir, import_hf(hf_dir, tmp_path_factory.mktemp("gemma2_run") / "run")


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """Returns (torch model, HF dir, imported run dir) of a Gemma 3 text model: layers local, local, global; q/k
    norms; the local layers' RoPE base 10k, the global one's 1M with linear scaling (as Gemma 3 4B's); no soft-caps."""
    torch.manual_seed(0)
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6}}
    cfg = transformers.Gemma3TextConfig(**dict(GEMMA_SHAPE, num_hidden_layers=3), rope_parameters=rope,
                                        layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    model = randomized(transformers.Gemma3ForCausalLM(cfg))
    hf_dir = tmp_path_factory.mktemp("gemma3_hf")
    model.save_pretrained(hf_dir)
    return model, hf_dir, import_hf(hf_dir, tmp_path_factory.mktemp("gemma3_run") / "run")


# Per fixture: (num_kv_heads, head_dim, tie_embeddings, qkv_bias, qk_norm, sliding_window, rope scaling type) of the import.
IMPORTED = {"llama": (2, 16, False, False, False, 0, "llama3"), "qwen2": (2, 16, True, True, False, 0, "none"),
            "qwen3": (2, 24, True, False, True, 0, "none"), "mistral": (2, 16, False, False, False, 8, "none"),
            "gemma2": (2, 24, True, False, False, 8, "none"), "gemma3": (2, 24, True, False, True, 8, "linear"),
            "mixtral": (2, 16, False, False, False, 8, "none"), "qwen3_moe": (2, 24, False, False, True, 0, "none")}
# Per MoE fixture: (experts, top-k, expert width, renormalized).
MOE_IMPORTED = {"mixtral": (4, 2, 96, True), "qwen3_moe": (4, 2, 40, False)}
# Gemma's own switches: (which layers slide, local RoPE base, query_pre_attn_scalar, attn / final soft-cap).
GEMMA_IMPORTED = {"gemma2": ((True, False), 0.0, 20, 2.0, 3.0), "gemma3": ((True, True, False), 10000.0, 20, 0.0, 0.0)}


@pytest.mark.parametrize("which", GEMMA_IMPORTED)
def test_gemma_import_reads_every_switch(which, request):
    _, _, run = request.getfixturevalue(which)
    m = maxlm.from_pretrained(run).config.model
    assert (sliding_layers(m), m.rope_local_theta, m.query_pre_attn_scalar, m.attn_softcap, m.final_softcap) == GEMMA_IMPORTED[which]
    assert (m.post_norms, m.norm_offset, m.embed_scale, m.mlp_activation) == (True, True, True, "gelu_tanh")


@pytest.mark.parametrize("which", MOE_IMPORTED)
def test_moe_router_losses_match_transformers(which, request, tokens):
    """Imported MoE keys as transformers built them; the load-balancing loss equals transformers' aux_loss on the same tokens."""
    from maxlm.models.llama import causal_segment_mask
    from maxlm.models.moe import router_losses

    model, _, run = request.getfixturevalue(which)
    loaded = maxlm.from_pretrained(run)
    m = loaded.config.model
    assert (m.num_experts, m.experts_per_token, expert_dim(m), m.router_renormalize) == MOE_IMPORTED[which]
    positions = jnp.broadcast_to(jnp.arange(T), tokens.shape)
    _, _, stats = params_lib.bind(loaded.graphdef, loaded.params).forward(tokens, positions, causal_segment_mask(jnp.ones(tokens.shape, jnp.int32)))
    aux, z = router_losses(stats)
    with torch.no_grad():
        out = model(torch.as_tensor(tokens, dtype=torch.long), output_router_logits=True)
    logits_LxNxE = torch.stack(out.router_logits).float()
    want_z = torch.logsumexp(logits_LxNxE, -1).pow(2).mean().item()
    print(f"{which}: aux {float(aux):.6f} vs {out.aux_loss.item():.6f}, z {float(z):.5f} vs {want_z:.5f}")
    assert float(aux) == pytest.approx(out.aux_loss.item(), rel=1e-5)
    assert float(z) == pytest.approx(want_z, rel=1e-5)


@pytest.mark.parametrize("which", IMPORTED)
def test_import_matches_transformers_logits(which, request, tokens):
    model, hf_dir, run = request.getfixturevalue(which)
    loaded = maxlm.from_pretrained(run)
    m = loaded.config.model
    assert m.family == which
    assert (m.num_kv_heads, head_dim(m), m.tie_embeddings, m.qkv_bias, m.qk_norm, m.sliding_window, m.rope_scaling.type) == IMPORTED[which]
    ref = torch_logits(model, tokens)
    diff = np.abs(np.asarray(loaded(tokens)) - ref).max()
    print(f"{which} import: max |logits - transformers| = {diff:.2e}")
    assert diff <= 1e-4
    # An HF dir loads directly too, without a run dir.
    chex.assert_trees_all_close(np.asarray(maxlm.from_pretrained(hf_dir)(tokens)), ref, rtol=0, atol=1e-4)


def test_imported_run_layout(llama):
    _, _, run = llama
    assert (run / "config.yaml").is_file() and Checkpoints(run, read_only=True).latest_step() == 0
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    assert maxlm.from_pretrained(run).tokenizer.path == str(run / "tokenizer")


@pytest.mark.parametrize("which", IMPORTED)
def test_export_round_trips_through_transformers(which, request, tokens, tmp_path):
    model, hf_dir, run = request.getfixturevalue(which)
    out = export_hf(run, tmp_path / "hf", max_shard_bytes=60_000)  # small shards: several files
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(model)
    want, got = model.state_dict(), reloaded.state_dict()
    assert set(want) == set(got)
    chex.assert_trees_all_close({k: v.numpy() for k, v in got.items()}, {k: v.numpy() for k, v in want.items()}, rtol=0, atol=1e-6)
    diff = np.abs(torch_logits(reloaded, tokens) - torch_logits(model, tokens)).max()
    print(f"{which} export: max |logit diff| = {diff:.1e}")
    assert diff <= 1e-6
    if IMPORTED[which][2]:  # tied
        assert "lm_head.weight" not in index["weight_map"]
        assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    if which == "llama":
        # The HF tokenizer the import copied comes back out unchanged.
        tok = transformers.AutoTokenizer.from_pretrained(out)
        assert [tok.encode(t, add_special_tokens=False) for t in TEXTS] == [
            transformers.AutoTokenizer.from_pretrained(hf_dir).encode(t, add_special_tokens=False) for t in TEXTS]


def _maxlm_run(tmp_path: Path, sp_model: Path, **model) -> tuple[Path, Config]:
    """Returns a run dir whose step-0 params come from maxlm's own init, moved off the init values."""
    tok = load_tokenizer(sp_model)
    m = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=96,
                    max_seq_len=64, dtype="float32", **model)
    cfg = Config(run_dir=str(tmp_path / "run"), model=m, tokenizer=TokenizerConfig(path=str(sp_model)))
    cfg.data.seq_len = 64
    p = params_lib.init(m, make_mesh(MeshConfig()), seed=3)
    keys = iter(jax.random.split(jax.random.key(4), 64))
    p = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(next(keys), a.shape, a.dtype), p)  # as if trained
    ckpts = Checkpoints(cfg.run_dir, async_save=False)
    ckpts.save(5, p, cfg)
    ckpts.close()
    return Path(cfg.run_dir), cfg


# Gemma's switches as maxlm configs: Gemma 2 alternating with both caps, Gemma 3 (here untied) with its
# local RoPE base, q/k norms, linear scaling on the global layer and a final cap.
GEMMA = dict(sliding_window=8, query_pre_attn_scalar=20, post_norms=True, norm_offset=True, embed_scale=True,
             mlp_activation="gelu_tanh", head_dim=24)
GEMMA2 = dict(GEMMA, family="gemma2", global_every=2, attn_softcap=2.0, final_softcap=3.0)
GEMMA3 = dict(GEMMA, family="gemma3", global_every=2, qk_norm=True, rope_theta=1e6, rope_local_theta=10000.0, final_softcap=3.0,
              rope_scaling=RopeScalingConfig(type="linear", factor=4.0))
# Qwen3 here is untied with attention_bias (q/k/v biases, a zero o_proj bias written), head_dim 24.
@pytest.mark.parametrize("model", [dict(family="llama", qkv_bias=True), dict(family="qwen2", tie_embeddings=True),
                                   dict(family="qwen3", qk_norm=True, qkv_bias=True, head_dim=24),
                                   dict(family="mistral", sliding_window=8), dict(GEMMA2, tie_embeddings=True),
                                   dict(GEMMA3, tie_embeddings=False),
                                   # Qwen3-MoE renormalized (norm_topk_prob true), with attention_bias and experts of width 40.
                                   dict(family="qwen3_moe", qk_norm=True, qkv_bias=True, head_dim=24, num_experts=4, experts_per_token=2,
                                        moe_mlp_dim=40, router_renormalize=True)])
def test_export_of_maxlm_trained_model(model, tmp_path, sp_model):
    run, cfg = _maxlm_run(tmp_path, sp_model, **model)
    out = export_hf(run / "checkpoints" / "5", tmp_path / "hf")  # a step dir works as well as the run
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = np.random.default_rng(1).integers(0, cfg.model.vocab_size, (2, 40))
    diff = np.abs(torch_logits(hf, tokens) - np.asarray(maxlm.from_pretrained(run)(tokens))).max()
    print(f"maxlm {model} export: max |transformers - maxlm| = {diff:.2e}")
    assert diff <= 1e-4
    # The sentencepiece model becomes an HF tokenizer that encodes exactly as sentencepiece does.
    # (AutoTokenizer forces Qwen2Tokenizer, byte-level BPE, on any qwen2 / qwen3 model: hence the class.)
    load = transformers.AutoTokenizer if model["family"] == "llama" else transformers.PreTrainedTokenizerFast
    sp, tok = load_tokenizer(sp_model), load.from_pretrained(out)
    assert [tok.encode(t, add_special_tokens=False) for t in TEXTS] == [sp.encode(t) for t in TEXTS]
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id, sp.eos_id) == (1, 2)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


# Gemma 3's text classifier is not Gemma3ForSequenceClassification (that one is the vision-language model's).
CLASSIFIERS = {"llama": "LlamaForSequenceClassification", "qwen3": "Qwen3ForSequenceClassification",
               "gemma3": "Gemma3TextForSequenceClassification"}


@pytest.mark.parametrize("model", [dict(family="llama"), dict(family="qwen3", qk_norm=True, head_dim=24), dict(GEMMA3, tie_embeddings=False)],
                         ids=["llama", "qwen3", "gemma3"])
def test_scalar_head_exports_sequence_classifier(model, tmp_path, sp_model):
    run, cfg = _maxlm_run(tmp_path, sp_model, scalar_head=True, **model)
    out = export_hf(run, tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == CLASSIFIERS[model["family"]] and hf.score.weight.shape == (1, 64)
    tokens = np.random.default_rng(2).integers(3, cfg.model.vocab_size, (1, 16))
    with torch.no_grad():
        want = hf(torch.as_tensor(tokens)).logits[:, 0].numpy()  # HF pools the last token
    loaded = maxlm.from_pretrained(run)
    model = params_lib.bind(loaded.graphdef, loaded.params)
    h, _ = model.hidden(jnp.asarray(tokens), jnp.arange(16)[None], jnp.tril(jnp.ones((1, 16, 16), bool)))
    chex.assert_trees_all_close(np.asarray(model.scores(h))[:, -1], want, rtol=0, atol=1e-4)


def test_export_reads_one_layer_slice_at_a_time(llama, tmp_path, monkeypatch):
    _, _, run = llama
    calls = []
    read = stored_step.StoredStep.read

    def spy(self, leaf, layer=None):
        calls.append((leaf, layer))
        return read(self, leaf, layer)

    def no_full_restore(*a, **k):
        raise AssertionError("export must not restore whole leaves")

    monkeypatch.setattr(stored_step.StoredStep, "read", spy)
    monkeypatch.setattr(stored_step.StoredStep, "restore", no_full_restore)
    monkeypatch.setattr(Checkpoints, "restore", no_full_restore)
    export_hf(run, tmp_path / "hf")
    stacked = [c for c in calls if c[0].startswith("layers/")]
    assert all(layer is not None for _, layer in stacked)
    assert sorted(stacked) == sorted((leaf, i) for leaf in {c[0] for c in stacked} for i in range(2))
    assert len({c[0] for c in stacked}) == 9  # q k v o, two norms, gate up down


def test_crashed_export_leaves_no_partial_dir(llama, tmp_path, monkeypatch):
    _, _, run = llama
    out = tmp_path / "hf"
    read = stored_step.StoredStep.read
    calls = []

    def crash_midway(self, leaf, layer=None):
        calls.append(leaf)
        if len(calls) == 6:
            raise RuntimeError("disk on fire")
        return read(self, leaf, layer)

    monkeypatch.setattr(stored_step.StoredStep, "read", crash_midway)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_hf(run, out)
    assert os.listdir(tmp_path) == []
    # A crash while replacing an earlier export keeps the earlier one whole.
    monkeypatch.setattr(stored_step.StoredStep, "read", read)
    export_hf(run, out)
    before = sorted(os.listdir(out))
    calls.clear()
    monkeypatch.setattr(stored_step.StoredStep, "read", crash_midway)
    with pytest.raises(RuntimeError):
        export_hf(run, out, overwrite=True)
    assert os.listdir(tmp_path) == ["hf"] and sorted(os.listdir(out)) == before


def test_export_refuses_to_replace_a_non_hf_dir(llama, tmp_path):
    _, _, run = llama
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(MaxlmError, match="exists and is not empty"):
        export_hf(run, tmp_path)


def test_export_cli_never_deletes_files_it_did_not_write(llama, tmp_path, capsys):
    _, _, run = llama
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    assert cli_main(["export-hf", str(run), str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["README.md"]
    # --overwrite writes the export beside the user's file, and a later export with fewer
    # shards removes the earlier export's surplus shards, nothing else.
    export_hf(run, out, max_shard_bytes=60_000, overwrite=True)
    many = {p for p in os.listdir(out) if p.endswith(".safetensors")}
    assert len(many) > 1
    assert cli_main(["export-hf", str(run), str(out)]) == 2  # an earlier export is a non-empty directory too
    assert cli_main(["export-hf", str(run), str(out), "--overwrite"]) == 0
    after = set(os.listdir(out))
    assert (out / "README.md").read_text() == "my notes"
    assert {p for p in after if p.endswith(".safetensors")} == {"model-00001-of-00001.safetensors"}
    assert transformers.AutoModelForCausalLM.from_pretrained(out) is not None


def test_bfloat16_import_and_export(llama, tmp_path):
    model, hf_dir, _ = llama
    run = import_hf(hf_dir, tmp_path / "run", dtype="bfloat16")
    out = export_hf(run, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    want = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    assert all(torch.equal(want[k], v) for k, v in reloaded.state_dict().items())


def test_unsupported_architecture_names_file_and_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(MaxlmError) as e:
        import_hf(tmp_path, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "config.json") in msg and "GPT2LMHeadModel" in msg
    assert msg.endswith("(supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, Gemma2ForCausalLM, "
                        "Gemma3ForCausalLM, MixtralForCausalLM, Qwen3MoeForCausalLM)")
    assert not (tmp_path / "out").exists()


def test_missing_inputs_raise_clear_errors(tmp_path, llama):
    with pytest.raises(MaxlmError, match="no such Hugging Face model directory"):
        import_hf(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaxlmError, match=r"empty/config.json: not found"):
        import_hf(tmp_path / "empty", tmp_path / "out")
    _, hf_dir, _ = llama
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(MaxlmError, match="noweights: no model.safetensors"):
        import_hf(tmp_path / "noweights", tmp_path / "out")
    with pytest.raises(MaxlmError, match="no such maxlm run"):
        export_hf(tmp_path / "nope", tmp_path / "hf")
    with pytest.raises(MaxlmError, match="no committed checkpoint"):
        export_hf(tmp_path / "empty", tmp_path / "hf")


def test_unmapped_tensors_are_not_dropped_silently(llama, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, hf_dir, _ = llama
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((hf_dir / "config.json").read_text())
    weights = load_file(hf_dir / "model.safetensors")
    weights["model.layers.0.self_attn.extra.weight"] = np.ones(3, np.float32)
    save_file(weights, bad / "model.safetensors")
    with pytest.raises(MaxlmError, match="no maxlm counterpart: model.layers.0.self_attn.extra.weight"):
        import_hf(bad, tmp_path / "out")


def test_config_mapping_accepts_legacy_rope_keys():
    from maxlm.ckpt.hf_config import hf_config, model_config

    legacy = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16, "rope_theta": 500000.0,
              "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}}
    m = model_config(legacy, "config.json")
    assert m.rope_theta == 500000.0 and m.rope_scaling.original_max_position == 8192 and m.num_kv_heads == 2
    # What an export writes maps back to the same model config.
    assert model_config(hf_config(m, dtype="float32", bos_id=1, eos_id=2, pad_id=None, score=False), "x") == dataclasses.replace(m, head_dim=4)
    with pytest.raises(MaxlmError, match="rope type yarn is not supported"):
        model_config({**legacy, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "config.json")


QWEN3_MOE_RAW = {"architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 16, "moe_intermediate_size": 4, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True}


@pytest.mark.parametrize("change, message", [
    ({"mlp_only_layers": [1]}, r"dense layers among the sparse ones \(mlp_only_layers \[1\], decoder_sparse_step 1\) are not supported"),
    ({"decoder_sparse_step": 2}, "decoder_sparse_step 2"),
    ({"router_jitter_noise": 0.1}, "router_jitter_noise 0.1 is not supported"),
    ({"num_experts": None}, "missing required key num_experts"),
])
def test_moe_layouts_maxlm_does_not_build_are_refused(change, message):
    from maxlm.ckpt.hf_config import hf_config, model_config

    m = model_config(QWEN3_MOE_RAW, "config.json")
    assert (m.num_experts, m.experts_per_token, m.moe_mlp_dim, m.router_renormalize) == (4, 2, 4, True)
    assert model_config(hf_config(m, dtype="float32", bos_id=1, eos_id=2, pad_id=None, score=False), "x") == dataclasses.replace(m, head_dim=4)
    with pytest.raises(MaxlmError, match=r"^config\.json: .*" + message):
        model_config({**QWEN3_MOE_RAW, **change}, "config.json")


@pytest.mark.parametrize("which", IMPORTED)
def test_greedy_generate_equals_transformers(which, request):
    """The KV-cache sampler's greedy tokens equal transformers' generate, one prompt at a time and batched."""
    model, hf_dir, run = request.getfixturevalue(which)
    prompts = [[5, 17, 99, 3, 42, 8], [64, 2]]
    n = 12
    with torch.no_grad():
        want = [model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                               eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    ours = maxlm.from_pretrained(run).generate(prompts, max_new_tokens=n)
    assert [row[-n:].tolist() for row in ours] == want


def test_import_refuses_a_foreign_non_empty_out_and_its_own_input(llama, tmp_path):
    _, hf_dir, _ = llama
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep\n")
    with pytest.raises(MaxlmError, match=f"import-hf OUT {mine}: exists and is not empty"):
        import_hf(hf_dir, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    with pytest.raises(MaxlmError, match="would write into the HF model dir it reads"):
        import_hf(hf_dir, hf_dir)


# The model cards' non-embedding parameter counts, in billions (Qwen/Qwen3-0.6B, Qwen/Qwen3-8B).
NON_EMBEDDING_B = {"qwen3_0_6b.yaml": 0.44, "qwen3_8b.yaml": 6.95}
# The model cards' total counts, in billions (google/gemma-2-2b 2.6B, gemma-2-9b 9.2B, gemma-3-1b-pt 1.0B; gemma-3-4b-pt's
# 4.3B less its ~0.4B SigLIP vision tower).
TOTAL_B = {"gemma2_2b.yaml": 2.6, "gemma2_9b.yaml": 9.2, "gemma3_1b.yaml": 1.0, "gemma3_4b.yaml": 3.9,
           "mixtral_8x7b.yaml": 46.7, "qwen3_30b_a3b.yaml": 30.5}
# Parameters a token runs through, in billions: the model cards give 12.9B (Mixtral 8x7B) and 3.3B (Qwen3-30B-A3B, truncated from 3.35).
ACTIVE_B = {"mixtral_8x7b.yaml": 12.9, "qwen3_30b_a3b.yaml": 3.35}


@pytest.mark.parametrize("preset", sorted(p.name for p in (Path(__file__).parents[2] / "configs" / "models").glob("*.yaml")))
def test_preset_maps_to_transformers_with_the_same_parameters(preset, tmp_path):
    """Each preset with a fixed vocabulary, exported as an HF config, reads back as itself and builds
    as many parameters in transformers (on the meta device) as in maxlm."""
    from maxlm.ckpt.hf_config import ARCHITECTURE, hf_config, model_config

    m = load_config(Path(__file__).parents[2] / "configs" / "models" / preset).model
    if m.vocab_size == 0:
        pytest.skip("vocabulary taken from the tokenizer")
    raw = hf_config(m, dtype="float32", bos_id=1, eos_id=2, pad_id=None, score=False)
    # How to run (remat, attention, ...) is the preset's, not part of the HF config.
    runtime = {k: getattr(m, k) for k in RUNTIME_MODEL_KEYS}
    assert dataclasses.replace(model_config(raw, preset), **runtime) == dataclasses.replace(m, head_dim=head_dim(m))
    _, shapes, _ = params_lib.abstract(m)
    ours = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(tmp_path))
    assert type(hf).__name__ == ARCHITECTURE[m.family]
    assert ours == sum(p.numel() for p in hf.parameters()) == param_count(m)
    if preset in ACTIVE_B:
        assert round(param_count(m, active=True) / 1e9, 2 if preset.startswith("qwen") else 1) == ACTIVE_B[preset]
    if preset in NON_EMBEDDING_B:
        embeddings = m.vocab_size * m.hidden_size * (1 if m.tie_embeddings else 2)
        assert round((ours - embeddings) / 1e9, 2) == NON_EMBEDDING_B[preset]
    if preset in TOTAL_B:
        assert round(ours / 1e9, 1) == TOTAL_B[preset]


# The google/gemma-2-2b and google/gemma-3-1b-pt config.json keys as published (before transformers 5's
# per-layer-type rope_parameters and layer_types): each must read as its preset.
LEGACY_GEMMA = {
    "gemma2_2b.yaml": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "attn_logit_softcapping": 50.0,
                       "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
                       "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "intermediate_size": 9216,
                       "max_position_embeddings": 8192, "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
                       "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
                       "vocab_size": 256000},
    "gemma3_1b.yaml": {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attn_logit_softcapping": None,
                       "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
                       "intermediate_size": 6912, "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 26,
                       "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
                       "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
                       "vocab_size": 262144},
}


@pytest.mark.parametrize("preset", LEGACY_GEMMA)
def test_published_gemma_configs_read_as_the_presets(preset):
    from maxlm.ckpt.hf_config import model_config

    m = load_config(Path(__file__).parents[2] / "configs" / "models" / preset).model
    assert model_config(LEGACY_GEMMA[preset], preset) == m
