"""Two JAX processes on one machine, wired by jax.distributed from the environment, train and resume."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(config: Path, *overrides: str) -> list[subprocess.CompletedProcess]:
    port = free_port()
    procs = []
    for i in range(2):
        env = dict(
            os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
            MAXLM_COORDINATOR=f"127.0.0.1:{port}", MAXLM_NUM_PROCESSES="2", MAXLM_PROCESS_ID=str(i),
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "maxlm.cli", "train", str(config), *overrides],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=600), p.stdout.read(), "") for p in procs]


@pytest.mark.slow
def test_two_processes_train_and_resume(tmp_path, shared_data):
    cfg = {
        "base_config": str(REPO / "configs" / "models" / "tiny.yaml"),
        "run_dir": str(tmp_path / "run"),
        "tokenizer": {"path": str(tmp_path / "tok.model"), "vocab_size": 400},
        "data": {"train_files": [str(shared_data / "pretrain" / "tinyshakespeare.txt")], "seq_len": 64},
        "train": {"steps": 4, "global_batch_size": 8, "log_every": 1, "warmup_steps": 1},
        "checkpoint": {"interval_steps": 2},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # Train the tokenizer once up front so the two processes do not race to write it.
    from maxlm.config import load_config
    from maxlm.data.tokenizers import ensure_tokenizer

    ensure_tokenizer(load_config(path))
    for run in launch_two(path):
        assert run.returncode == 0, run.stdout
        assert "4 cpu devices" in run.stdout and "'data': 4" in run.stdout
    for run in launch_two(path, "train.steps=6"):
        assert run.returncode == 0, run.stdout
        assert "resumed from" in run.stdout
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert {p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()} >= {"4", "6"}
