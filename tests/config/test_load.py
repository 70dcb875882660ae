"""The one loader: inheritance, overrides, typed values, and errors that name file:line or the override and the key."""

import re
import typing
from pathlib import Path

import pytest
import yaml

from maxlm.config import ModelConfig, coerce, from_dict, load_config, to_dict
from maxlm.cli import main as cli_main
from maxlm.errors import MaxlmError

REPO = Path(__file__).resolve().parents[2]


def write(path, data):
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_base_config_chain_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", {"model": {"hidden_size": 128, "num_layers": 3}, "train": {"steps": 7}})
    write(tmp_path / "exp.yaml", {"base_config": "base.yaml", "model": {"num_layers": 5}, "data": {"train_files": ["a.jsonl", {"path": "b.parquet", "weight": 3}]}})
    cfg = load_config(tmp_path / "exp.yaml", ["train.learning_rate=1e-3", "mesh.tensor=2", "model.rope_scaling.type=llama3"])
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.train.steps) == (128, 5, 7)
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.mesh.tensor == 2 and cfg.model.rope_scaling.type == "llama3"
    assert [s.path for s in cfg.data.train_files] == ["a.jsonl", "b.parquet"]
    assert cfg.data.train_files[1].weight == 3.0


def test_presets_resolve_from_configs_dir(tmp_path):
    write(tmp_path / "exp.yaml", {"base_config": "models/llama3_8b.yaml", "train": {"steps": 1}})
    cfg = load_config(tmp_path / "exp.yaml")
    assert cfg.model.num_kv_heads == 8 and cfg.model.rope_scaling.factor == 8.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.stepz=3", "unknown key train.stepz; did you mean train.steps?"),
        ("mesh.tensr=2", "did you mean mesh.tensor?"),
        ("train.steps=many", "train.steps must be an integer"),
        ("model.dtype=f32", "model.dtype must be one of"),
        ("train.steps", "expected key.sub=value"),
        ("model.num_kv_heads=3", "must be a multiple of model.num_kv_heads"),
        ("model.qk_norm=true", "model.qk_norm: true needs model.family qwen3"),
        ("model.family=qwen3", "model.family qwen3 needs model.qk_norm: true"),
        ("model.sliding_window=16", "needs model.family mistral"),
        ("model.attn_softcap=50", "model.attn_softcap: 50.0 needs model.family gemma2"),
        ("model.family=gemma3", "model.family gemma3 needs model.qk_norm: true"),
        ("model.post_norms=true", "model.post_norms: true needs model.family gemma2 or gemma3"),
        ("model.mlp_activation=gelu_tanh", "model.mlp_activation: gelu_tanh needs model.family gemma2 or gemma3"),
        ("model.num_experts=4", "model.num_experts: 4 needs model.family mixtral or qwen3_moe"),
        ("model.family=mixtral", "model.family mixtral needs model.num_experts > 0"),
        ("mesh.expert=0", "mesh: at most one axis may be -1 and the others must be >= 1"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(MaxlmError, match=message.replace("?", r"\?").replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_key_in_file_names_file(tmp_path):
    p = write(tmp_path / "exp.yaml", {"train": {"learning_rat": 0.1}})
    with pytest.raises(MaxlmError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "did you mean train.learning_rate?" in str(e.value)


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path / "bad.yaml", "train:\n  steps: 3\n  seed: [1,\n")
    with pytest.raises(MaxlmError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(p)


def test_missing_base_and_cycle(tmp_path):
    write(tmp_path / "a.yaml", {"base_config": "b.yaml"})
    write(tmp_path / "b.yaml", {"base_config": "a.yaml"})
    with pytest.raises(MaxlmError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "c.yaml", {"base_config": "nope.yaml"})
    with pytest.raises(MaxlmError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "c.yaml")


def test_coerce_is_strict():

    assert coerce(None, list[str], "k", "w") == [] and coerce("a", list[str], "k", "w") == ["a"]
    assert coerce(3, float, "k", "w") == 3.0 and coerce("1e-3", float, "k", "w") == 1e-3
    assert coerce(None, int | None, "k", "w") is None and coerce(2.0, int, "k", "w") == 2
    for value, t, message in [("2", int, "must be an integer"), (True, int, "must be an integer"), (2.5, int, "must be an integer"),
                              ("yes", bool, "must be true or false"), ([1], str, "must be a string"), ("x", float, "must be a number")]:
        with pytest.raises(MaxlmError, match=f"w: k {message}"):
            coerce(value, t, "k", "w")
    with pytest.raises(MaxlmError, match="model.dtype must be one of"):
        coerce("f32", typing.get_type_hints(ModelConfig)["dtype"], "model.dtype", "w")


def test_coerce_checks_choices_and_mappings_nested_in_lists_and_optionals():
    assert coerce(["a", "b"], list[typing.Literal["a", "b"]], "k", "w") == ["a", "b"]
    assert coerce({2: 0.5}, dict[int, float] | None, "k", "w") == {2: 0.5}
    with pytest.raises(MaxlmError, match=r"^w: k\[1\] must be one of a, b; got 'c'"):
        coerce(["a", "c"], list[typing.Literal["a", "b"]], "k", "w")
    with pytest.raises(MaxlmError, match=r"^w: k\.2 must be a number, got 'x'"):
        coerce({2: "x"}, dict[int, float] | None, "k", "w")


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml") if p.parent.name not in ("curation", "synth"))
)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(REPO / "configs" / path)
    assert cfg.task in ("pretrain", "sft", "rm", "dpo", "ppo", "grpo")


def test_every_preset_of_7b_or_more_shards_its_state_and_recomputes_activations():
    """The presets measured to fit a pod (README, "Will it fit?") all carry the two settings that made them fit."""
    from maxlm.train.metrics import param_count

    big = {}
    for p in sorted((REPO / "configs" / "models").glob("*.yaml")):
        cfg = load_config(p)
        if param_count(cfg.model) >= 6e9:
            big[p.stem] = (cfg.mesh.data, cfg.mesh.fsdp, cfg.model.remat)
    assert {"llama3_8b", "llama3_70b", "mixtral_8x7b", "qwen3_30b_a3b"} <= set(big)
    assert {k: v for k, v in big.items() if v != (1, -1, "full")} == {}


def test_errors_name_the_file_and_line_of_the_key(tmp_path):
    p = write(tmp_path / "exp.yaml", "run_dir: r\ntrain:\n  steps: 3\n  learning_rat: 0.1\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(p))}:4: unknown key train\.learning_rat; did you mean train\.learning_rate\?"):
        load_config(p)
    p = write(tmp_path / "exp.yaml", "train:\n  steps: 3\n\n  b1: 1.0\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(p))}:4: train\.b1 must be in \[0, 1\), got 1\.0$"):
        load_config(p)
    p = write(tmp_path / "exp.yaml", "data:\n  train_files:\n    - a.jsonl\n    - {path: b.jsonl, weight: 0}\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(p))}:4: data\.train_files\[1\]\.weight must be > 0, got 0\.0$"):
        load_config(p)
    p = write(tmp_path / "exp.yaml", "model:\n  remat: ful\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(p))}:2: model\.remat must be one of none, full, dots, dots_no_batch; got 'ful'; did you mean 'full'\?"):
        load_config(p)


def test_an_error_in_a_base_file_names_the_base_and_its_line(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  steps: 3\n  warmup_steps: -5\nmodel:\n  norm_eps: 0\n")
    write(tmp_path / "exp.yaml", "base_config: base.yaml\nmodel:\n  norm_eps: 1.0e-6\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(tmp_path / 'base.yaml'))}:3: train\.warmup_steps must be >= 0, got -5$"):
        load_config(tmp_path / "exp.yaml")
    # the top file's value replaces the base's, and so does its line
    write(tmp_path / "exp.yaml", "base_config: base.yaml\ntrain:\n  warmup_steps: 0\n  eps: -1\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(tmp_path / 'exp.yaml'))}:4: train\.eps must be > 0, got -1\.0$"):
        load_config(tmp_path / "exp.yaml")
    write(tmp_path / "missing.yaml", "run_dir: r\nbase_config: nope.yaml\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(tmp_path / 'missing.yaml'))}:2: base_config: .*nope\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_an_error_from_an_override_names_the_override(tmp_path):
    p = write(tmp_path / "exp.yaml", "train:\n  steps: 3\n  b1: 1.5\n")
    assert load_config(p, ["train.b1=0.5"]).train.b1 == 0.5  # an override may fix the file's value
    with pytest.raises(MaxlmError, match=r"^override 'train\.steps=-1': train\.steps must be >= 0, got -1$"):
        load_config(p, ["train.b1=0.5", "train.steps=-1"])
    with pytest.raises(MaxlmError, match=r"^override 'data\.eval_files=\[\{path: x, weight: -1\}\]': data\.eval_files\[0\]\.weight must be > 0"):
        load_config(p, ["train.b1=0.5", "data.eval_files=[{path: x, weight: -1}]"])


def test_a_saved_config_round_trips_and_is_range_checked():
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    assert from_dict(to_dict(cfg)) == cfg
    raw = to_dict(cfg)
    raw["checkpoint"]["interval_steps"] = 0
    with pytest.raises(MaxlmError, match=r"^ckpt/3/config: checkpoint\.interval_steps must be > 0, got 0$"):
        from_dict(raw, where="ckpt/3/config")


@pytest.mark.parametrize("text, overrides, message", [
    ("run_dir: {run}\ncheckpoint:\n  interval_steps: 0\n", [], "{p}:3: checkpoint.interval_steps must be > 0, got 0"),
    ("run_dir: {run}\n", ["train.learning_rate=-3e-4"], "override 'train.learning_rate=-3e-4': train.learning_rate must be >= 0, got -0.0003"),
    ("run_dir: {run}\ntask: dpo\ndpo:\n  beta: -0.1\n", [], "{p}:4: dpo.beta must be >= 0, got -0.1"),
])
def test_maxlm_train_refuses_a_value_out_of_range_in_one_line_before_any_work(tmp_path, capsys, text, overrides, message):
    run = tmp_path / "run"
    p = write(tmp_path / "exp.yaml", text.format(run=run))
    assert cli_main(["train", str(p), *overrides]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message.format(p=p)}\n" and not run.exists()


def test_a_config_that_is_a_directory_or_not_text_is_one_error(tmp_path):
    with pytest.raises(MaxlmError, match=r"config file not found"):
        load_config(tmp_path)
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(p))}: cannot read the config file"):
        load_config(p)


def test_values_that_do_not_fit_together_name_where_one_of_them_came_from(tmp_path):
    p = write(tmp_path / "exp.yaml", "model:\n  hidden_size: 64\n  num_heads: 4\n  num_kv_heads: 3\n")
    with pytest.raises(MaxlmError, match=rf"^{re.escape(str(p))}:4: model\.num_heads \(4\) must be a multiple of model\.num_kv_heads \(3\)$"):
        load_config(p)
    with pytest.raises(MaxlmError, match=r"^override 'data\.seq_len=4096': data\.seq_len \(4096\) exceeds model\.max_seq_len \(2048\)$"):
        load_config(None, ["data.seq_len=4096"])
    with pytest.raises(MaxlmError, match=r"^mesh: at most one axis"):  # nothing was written: no origin to name
        from_dict({"mesh": {"data": 0}})


def test_a_key_left_unset_takes_its_tasks_default_and_a_set_one_stays(tmp_path):
    # rl.kl_in: ppo's KL to the reference is a reward penalty, grpo's a loss term, unless the config says otherwise.
    assert load_config(REPO / "configs" / "ppo_arithmetic.yaml").rl.kl_in == "reward"
    assert load_config(REPO / "configs" / "grpo_arithmetic.yaml").rl.kl_in == "loss"
    assert load_config(REPO / "configs" / "grpo_arithmetic.yaml", ["rl.kl_in=reward"]).rl.kl_in == "reward"
    assert load_config(write(tmp_path / "g.yaml", "task: grpo\nrl:\n  kl_in: reward\n")).rl.kl_in == "reward"
    assert load_config(write(tmp_path / "p.yaml", "task: ppo\nrl:\n  kl_in: loss\n")).rl.kl_in == "loss"
    # A saved config from before the key existed gets its task's default; the saved mapping itself is left as it was.
    raw = {"task": "grpo", "rl": {"kl_coef": 0.1}}
    assert from_dict(raw).rl.kl_in == "loss" and raw == {"task": "grpo", "rl": {"kl_coef": 0.1}}
    assert from_dict(to_dict(load_config(REPO / "configs" / "grpo_arithmetic.yaml", ["rl.kl_in=reward"]))).rl.kl_in == "reward"
    with pytest.raises(MaxlmError, match="rl.kl_in must be one of reward, loss"):
        load_config(None, ["task=grpo", "rl.kl_in=both"])
