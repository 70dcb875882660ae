"""Config loading: inheritance, overrides, typed values, and errors that name the key."""

from pathlib import Path

import pytest
import yaml

from maxlm.config import load_config
from maxlm.errors import MaxlmError

REPO = Path(__file__).resolve().parent.parent


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
    from maxlm.config import coerce

    assert coerce(None, list[str], "k", "w") == [] and coerce("a", list[str], "k", "w") == ["a"]
    assert coerce(3, float, "k", "w") == 3.0 and coerce("1e-3", float, "k", "w") == 1e-3
    assert coerce(None, int | None, "k", "w") is None and coerce(2.0, int, "k", "w") == 2
    for value, t, message in [("2", int, "must be an integer"), (True, int, "must be an integer"), (2.5, int, "must be an integer"),
                              ("yes", bool, "must be true or false"), ([1], str, "must be a string"), ("x", float, "must be a number")]:
        with pytest.raises(MaxlmError, match=f"w: k {message}"):
            coerce(value, t, "k", "w")
    with pytest.raises(MaxlmError, match="model.dtype must be one of"):
        coerce("f32", str, "model.dtype", "w")


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml") if p.parent.name not in ("curation", "synth"))
)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(REPO / "configs" / path)
    assert cfg.task in ("pretrain", "sft", "rm", "dpo", "ppo", "grpo")
