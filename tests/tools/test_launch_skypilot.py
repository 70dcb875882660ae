"""tools/launch/skypilot.py: the task YAML is read back by SkyPilot's own parser (sky.Task.from_yaml,
the [skypilot] extra), its `run` script gives every node the jax.distributed environment, and bad
input is one error line that writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "tools" / "launch" / "skypilot.py"


def skypilot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCH), *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120, check=False)


def _write(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "task.sky.yaml"
    r = skypilot("configs/quickstart.yaml", "train.steps=9", *args, "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_skypilot_parses_the_task(tmp_path):
    sky = pytest.importorskip("sky", reason="SkyPilot is not installed: pip install -e '.[skypilot]'")
    out = _write(tmp_path, "--nodes", "2", "--accelerators", "H100:8", "--spot", "--bucket", "gs://my-bucket/runs", "--cloud", "gcp")
    task = sky.Task.from_yaml(str(out))
    assert task.name == "maxlm-quickstart" and task.num_nodes == 2 and task.workdir == str(REPO)
    (res,) = task.resources
    assert res.accelerators == {"H100": 8} and res.use_spot and str(res.cloud).lower() == "gcp"
    assert task.envs == {"MAXLM_PORT": "8476"}
    assert task.storage_mounts["/maxlm-runs"].source == "gs://my-bucket/runs"
    assert task.setup.strip() == 'pip install -e ".[gpu]"'
    assert "run_dir=/maxlm-runs/quickstart" in task.run


def test_every_node_gets_its_rank_and_the_first_node_as_coordinator(tmp_path):
    out = _write(tmp_path, "--nodes", "3", "--accelerators", "A100:8", "--python", str(tmp_path / "fake_python"))
    fake = tmp_path / "fake_python"  # prints what maxlm would be started with
    fake.write_text('#!/bin/sh\necho "$MAXLM_COORDINATOR $MAXLM_NUM_PROCESSES $MAXLM_PROCESS_ID $*"\n')
    fake.chmod(0o755)
    run = yaml.safe_load(out.read_text())["run"]
    env = dict(os.environ, MAXLM_PORT="8476", SKYPILOT_NODE_IPS="10.0.0.5\n10.0.0.6\n10.0.0.7", SKYPILOT_NUM_NODES="3", SKYPILOT_NODE_RANK="2")
    r = subprocess.run(["bash", "-c", run], capture_output=True, text=True, env=env, check=True)
    assert r.stdout.strip() == "10.0.0.5:8476 3 2 -m maxlm.cli train configs/quickstart.yaml train.steps=9"


def test_one_node_and_tpus_need_no_distributed_environment(tmp_path):
    for args in (["--accelerators", "H100:8"], ["--nodes", "2", "--accelerators", "tpu-v5p-16"]):
        task = yaml.safe_load(_write(tmp_path, *args, "--force").read_text())
        assert task["run"] == "python -m maxlm.cli train configs/quickstart.yaml train.steps=9\n" and "envs" not in task
    assert task["setup"] == 'pip install -e ".[tpu]"\n'


@pytest.mark.parametrize("args, message", [
    (["--accelerators", "H100 8"], "--accelerators 'H100 8': expected NAME[:COUNT]"),
    (["--accelerators", "H100:8", "--bucket", "my-bucket"], "--bucket 'my-bucket': expected a bucket URL"),
    (["--accelerators", "H100:8", "--bucket", "gs://b", "run_dir=x"], "--bucket sets run_dir"),
    (["--accelerators", "H100:8", "train.stepz=1"], "unknown key train.stepz"),
    (["--accelerators", "H100:8", "--nodes", "0"], "--nodes 0"),
])
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, args, message):
    r = skypilot("configs/quickstart.yaml", *args, "--out", str(tmp_path / "t.yaml"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
