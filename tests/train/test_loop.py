"""`maxlm train` end to end: loss falls, sharding parity, exact resume after kill -9 and SIGTERM,
gradient accumulation, and one-line errors before any compile."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import numpy as np
import pytest
import yaml

from maxlm.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tokenizer_model(shared_data, tmp_path_factory):
    """A 384-piece sentencepiece model trained on tinyshakespeare, shared by the tests here."""
    from maxlm.config import SourceConfig
    from maxlm.data.sources import iter_texts
    from maxlm.data.tokenizers import train_sentencepiece

    out = tmp_path_factory.mktemp("tok") / "tok.model"
    texts = iter_texts([SourceConfig(path=str(shared_data / "pretrain" / "tinyshakespeare.txt"))])
    return str(train_sentencepiece(texts, out, vocab_size=384, model_type="bpe", max_sentences=20000, character_coverage=1.0))


def tiny_config(tmp_path, shared_data, tokenizer_model, **sections) -> Path:
    """Writes a tiny pretraining config and returns its path."""
    cfg = {
        "base_config": str(REPO / "configs" / "models" / "tiny.yaml"),
        "run_dir": str(tmp_path / "run"),
        "tokenizer": {"path": tokenizer_model},
        "data": {"train_files": [str(shared_data / "pretrain" / "tinyshakespeare.txt")], "seq_len": 64},
        "train": {"steps": 8, "global_batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 2, "log_every": 1},
        "checkpoint": {"interval_steps": 4, "async_save": True},
        "mesh": {"data": -1},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("loss") is not None}


def run_cli(config, *overrides, devices=8, env_extra=None, background=False):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "maxlm.cli", "train", str(config), *overrides]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_tiny_run_learns_and_writes_everything(tmp_path, shared_data, tokenizer_model):
    from maxlm.config import load_config
    from maxlm.train.run import train

    cfg = load_config(tiny_config(tmp_path, shared_data, tokenizer_model), ["train.steps=30", "train.eval_every=15", "train.eval_steps=2",
                      f"data.eval_files=[{shared_data / 'pretrain' / 'tinyshakespeare.txt'}]", "sample.prompts=['ROMEO:']", "sample.max_new_tokens=8"])
    result = train(cfg, log=lambda *_: None)
    run = Path(cfg.run_dir)
    first, last = np.mean([result.losses[s] for s in (1, 2, 3)]), np.mean([result.losses[s] for s in (28, 29, 30)])
    assert last < first - 1.0, (first, last)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu", "data_wait_fraction"):
        assert key in rows[0]
    assert any("eval_loss" in r for r in rows) and result.eval_loss is not None
    assert (run / "config.yaml").exists() and (run / "loss.png").stat().st_size > 1000
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 30
    assert list((run / "tensorboard").iterdir())
    assert result.samples and result.samples[0].startswith("ROMEO:")


def test_an_evaluation_sees_the_params_of_its_own_step(tmp_path, shared_data, tokenizer_model):
    from maxlm.config import load_config
    from maxlm.train.run import train

    # Step 2's held-out loss in a 3-step run (the loop has step 3 in flight by then) equals the last step's of a 2-step run.
    base = tiny_config(tmp_path, shared_data, tokenizer_model, train={"schedule": "constant", "eval_every": 2, "eval_steps": 1},
                       data={"eval_files": [str(shared_data / "pretrain" / "tinyshakespeare.txt")]})
    evals = {}
    for steps in (3, 2):
        run = tmp_path / f"run{steps}"
        train(load_config(base, [f"run_dir={run}", f"train.steps={steps}"]), log=lambda *_: None)
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        evals[steps] = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    assert {2, 3} <= set(evals[3]) and evals[3][2] != evals[3][3]
    assert evals[3][2] == evals[2][2], evals


def test_grad_accumulation_matches_one_big_batch(tmp_path, shared_data, tokenizer_model):
    from maxlm.config import load_config
    from maxlm.train.run import train

    base = tiny_config(tmp_path, shared_data, tokenizer_model, train={"steps": 3, "global_batch_size": 32})
    one = train(load_config(base, [f"run_dir={tmp_path / 'a'}"]), log=lambda *_: None)
    acc = train(load_config(base, [f"run_dir={tmp_path / 'b'}", "train.grad_accum_steps=4"]), log=lambda *_: None)
    chex.assert_trees_all_close(acc.losses, one.losses, rtol=1e-5, atol=0)


# Qwen3's switches on the tiny shape: q/k norms, head_dim 24 (not 64 / 4 heads), tied embeddings.
QWEN3 = {"family": "qwen3", "qk_norm": True, "head_dim": 24, "tie_embeddings": True}
# Gemma 2's: local and global layers alternating (window 16 under 64-token rows), both soft-caps, post-norms. Its local
# layers are Mistral's sliding window (the same masked blocks), so Mistral needs no run of its own here.
GEMMA2 = {"family": "gemma2", "sliding_window": 16, "global_every": 2, "query_pre_attn_scalar": 16, "attn_softcap": 50.0, "final_softcap": 30.0,
          "post_norms": True, "norm_offset": True, "embed_scale": True, "mlp_activation": "gelu_tanh", "tie_embeddings": True}


@pytest.mark.slow
@pytest.mark.parametrize("model", [{}, QWEN3, GEMMA2], ids=["llama", "qwen3", "gemma2"])
def test_same_losses_on_1_and_8_devices(model, tmp_path, shared_data, tokenizer_model):
    cfg = tiny_config(tmp_path, shared_data, tokenizer_model, train={"steps": 5}, model=model)
    runs = {
        "1 device": (1, []),
        "data2 x fsdp2 x tensor2": (8, ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]),
    }
    if not model:  # the other families differ in the layer, not in how it shards: one 3-axis mesh checks them
        runs["fsdp4 x tensor2"] = (8, ["mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"])
    got = {}
    for name, (devices, mesh) in runs.items():
        out = run_cli(cfg, f"run_dir={tmp_path / name.replace(' ', '_')}", *mesh, devices=devices)
        assert out.returncode == 0, out.stdout + out.stderr
        got[name] = losses(tmp_path / name.replace(" ", "_"))
    ref = got["1 device"]
    assert sorted(ref) == [1, 2, 3, 4, 5]
    for name, l in got.items():
        chex.assert_trees_all_close(l, ref, rtol=1e-4, atol=0, custom_message=name)


def _wait_for_checkpoint(run_dir: Path, step: int, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()] if (run_dir / "checkpoints").exists() else []
        if any(s >= step for s in done):
            return
        if proc.poll() is not None:
            raise AssertionError("run ended before checkpointing: " + proc.stdout.read())
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill-9", "sigterm"])
def test_interrupted_run_resumes_exactly(tmp_path, shared_data, tokenizer_model, how):
    cfg = tiny_config(tmp_path, shared_data, tokenizer_model, train={"steps": 12}, checkpoint={"interval_steps": 3})
    ref_dir, dir_ = tmp_path / "reference", tmp_path / "interrupted"
    assert run_cli(cfg, f"run_dir={ref_dir}", devices=1).returncode == 0
    proc = run_cli(cfg, f"run_dir={dir_}", devices=1, background=True)
    _wait_for_checkpoint(dir_, 3, proc)
    if how == "kill-9":
        proc.kill()
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    if how == "sigterm":
        assert proc.returncode == 0, out
        if "SIGTERM" not in out:  # the run may have finished before the signal landed
            assert "run dir" in out
    resumed = run_cli(cfg, f"run_dir={dir_}", devices=1)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ref, got = losses(ref_dir), losses(dir_)
    assert sorted(got) == list(range(1, 13))
    chex.assert_trees_all_close(got, ref, rtol=0, atol=1e-6)
    # orbax never leaves a half-written step where the loader would find it
    assert not [p for p in (dir_ / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stepz=3"], "did you mean train.steps?"),
        (["mesh.data=3"], "mesh data=3 fsdp=1 expert=1 tensor=1 needs 3 devices but 8 are present"),
        (["train.global_batch_size=6"], "not divisible by the data-parallel size 8"),
        (["data.train_files=[/nope/missing.jsonl]"], "/nope/missing.jsonl"),
    ],
)
def test_bad_input_is_one_line_before_compile(tmp_path, shared_data, tokenizer_model, capsys, overrides, message):
    cfg = tiny_config(tmp_path, shared_data, tokenizer_model)
    assert cli_main(["train", str(cfg), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_malformed_record_names_file_and_line(tmp_path, shared_data, tokenizer_model, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops}\n')
    cfg = tiny_config(tmp_path, shared_data, tokenizer_model)
    assert cli_main(["train", str(cfg), f"data.train_files=[{bad}]"]) == 2
    assert "bad.jsonl:3:" in capsys.readouterr().err
