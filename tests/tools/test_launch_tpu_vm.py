"""tools/launch/tpu_vm.py: the printed gcloud and xpk lines split back into the train command (quoting
survives a space in an override), gcloud's and xpk's own parsers take them where those tools are
installed (gcloud up to the credentials it lacks here, xpk in --dry-run down to its JobSet), and
bad input is one error line."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "tools" / "launch" / "tpu_vm.py"
TRAIN = ["python3", "-m", "maxlm.cli", "train", "configs/quickstart.yaml", "train.steps=9", "run_dir=runs/a b"]


def tpu_vm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCH), *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120, check=False)


def _ssh_line() -> list[str]:
    r = tpu_vm("ssh", "configs/quickstart.yaml", "train.steps=9", "run_dir=runs/a b", "--name", "my-v5p", "--zone", "us-east5-a")
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout)


def _xpk_line() -> list[str]:
    r = tpu_vm("xpk", "configs/quickstart.yaml", "train.steps=9", "run_dir=runs/a b", "--cluster", "gke1", "--tpu-type", "v5p-128",
               "--slices", "2", "--docker-image", "gcr.io/p/maxlm:1", "--zone", "us-east5-a", "--project", "myproj")
    assert r.returncode == 0, r.stderr
    return shlex.split(r.stdout)


def test_the_ssh_line_runs_the_train_command_on_every_worker():
    argv = _ssh_line()
    assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v5p", "--zone=us-east5-a", "--worker=all"]
    assert argv[8] == "--command" and len(argv) == 10
    assert shlex.split(argv[9]) == ["cd", "~/maxlm", "&&", *TRAIN]


def test_the_xpk_line_creates_a_multislice_workload():
    argv = _xpk_line()
    assert argv[:3] == ["xpk", "workload", "create"]
    for flag in ("--cluster=gke1", "--workload=maxlm-quickstart", "--tpu-type=v5p-128", "--num-slices=2",
                 "--docker-image=gcr.io/p/maxlm:1", "--max-restarts=3", "--zone=us-east5-a", "--project=myproj"):
        assert flag in argv
    assert shlex.split(argv[argv.index("--command") + 1]) == TRAIN


@pytest.mark.parametrize("args, message", [
    (["ssh", "configs/quickstart.yaml", "--name", "a b", "--zone", "z"], "--name 'a b': use letters"),
    (["ssh", "configs/quickstart.yaml", "train.stepz=1", "--name", "n", "--zone", "z"], "unknown key train.stepz"),
    (["xpk", "configs/quickstart.yaml", "--cluster", "c", "--tpu-type", "v5p-7", "--docker-image", "i"], "--tpu-type 'v5p-7': v5p slices"),
    (["xpk", "configs/quickstart.yaml", "--cluster", "c", "--tpu-type", "v5p-8", "--docker-image", "i", "--workload", "Big"], "--workload 'Big'"),
    (["tpu", "configs/quickstart.yaml"], "usage: tpu_vm.py {ssh,xpk}"),
])
def test_bad_input_is_one_error(args, message):
    r = tpu_vm(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def _isolated(tmp_path: Path) -> dict:
    # a fresh gcloud config: no account, no project, nothing that could reach a real one
    return dict(os.environ, HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), CLOUDSDK_CORE_DISABLE_PROMPTS="1",
                CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true", CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true")


@pytest.mark.skipif(not shutil.which("gcloud"), reason="gcloud is not installed (the Google Cloud SDK)")
def test_gcloud_parses_the_ssh_line(tmp_path):
    r = subprocess.run(_ssh_line(), capture_output=True, text=True, env=_isolated(tmp_path), timeout=120, check=False)
    # gcloud checks its arguments before it asks for credentials, which this test gives it none of
    assert r.returncode != 0 and "active account" in r.stderr and "unrecognized arguments" not in r.stderr, r.stderr


@pytest.mark.skipif(not shutil.which("xpk"), reason="xpk is not installed (pip install xpk)")
def test_xpk_dry_run_renders_the_workload(tmp_path):
    r = subprocess.run([*_xpk_line(), "--dry-run"], capture_output=True, text=True, env=_isolated(tmp_path),
                       timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    for line in ("maxRestarts: 3", "replicas: 2", "cloud.google.com/gke-tpu-topology: 4x4x4", "image: gcr.io/p/maxlm:1",
                 "python3 -m maxlm.cli train configs/quickstart.yaml train.steps=9 'run_dir=runs/a b'"):
        assert line in out, (line, out)
