"""tools/launch/slurm.py: bad input fails before a file is written; on a real one-node Slurm cluster
(slurm-wlm + munge, started by the test) a two-process run is requeued (the time-limit path) and
cancelled, saving on SIGTERM each time, and the resubmitted job resumes and finishes with every step once."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tiny_run import write_tiny_config

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "tools" / "launch" / "slurm.py"
CONFIG = REPO / "configs" / "quickstart.yaml"
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scancel", "scontrol")


def slurm_py(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs tools/launch/slurm.py from the repository root with this checkout's maxlm."""
    env = dict(env or os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(LAUNCH), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120, check=False)


def test_the_script_runs_one_task_per_gpu_and_requeues(tmp_path):
    out = tmp_path / "run.sbatch"
    r = slurm_py(str(CONFIG), "train.steps=7", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu",
                 "--time", "2-00:00:00", "--out", str(out))
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --signal=B:USR1@300", "#SBATCH --requeue", f"#SBATCH --chdir={REPO}"):
        assert line in text.splitlines(), (line, text)
    assert f"srun --kill-on-bad-exit=1 {sys.executable} -m maxlm.cli train {CONFIG} train.steps=7 &" in text
    assert "JAX_LOCAL_DEVICE_IDS" not in text
    # One task driving all 4 GPUs of its node: JAX would otherwise give it GPU 0 alone.
    r = slurm_py(str(CONFIG), "--nodes", "1", "--gpus-per-node", "4", "--tasks-per-node", "1", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3" in out.read_text() and "--signal" not in out.read_text()


@pytest.mark.parametrize("args, message", [
    (["train.stepz=3"], "unknown key train.stepz; did you mean train.steps?"),
    (["--nodes", "0"], "--nodes 0: must be >= 1"),
    (["--time", "1:2:3:4"], "--time '1:2:3:4': expected minutes"),
    (["--time", "4"], "--requeue-before 300s: must be shorter than --time 4"),
    (["--partition", "gpu;rm"], "--partition 'gpu;rm': use letters"),
    (["--tasks-per-node", "3"], "--tasks-per-node 3 with --gpus-per-node 2"),
    (["steps"], "override 'steps': expected key=value"),
])
def test_bad_input_is_one_error_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "run.sbatch"
    r = slurm_py(str(CONFIG), "--nodes", "1", "--gpus-per-node", "2", "--out", str(out), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_submit_without_sbatch_writes_nothing(tmp_path):
    r = slurm_py(str(CONFIG), "--nodes", "1", "--gpus-per-node", "1", "--out", str(tmp_path / "run.sbatch"), "--submit",
                 env=dict(os.environ, PATH=str(tmp_path)))
    assert r.returncode == 2 and "--submit: no sbatch on PATH" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_script_is_kept_without_force(tmp_path):
    out = tmp_path / "run.sbatch"
    out.write_text("mine\n")
    r = slurm_py(str(CONFIG), "--nodes", "1", "--gpus-per-node", "1", "--out", str(out))
    assert r.returncode == 2 and "exists; pass --force" in r.stderr
    assert out.read_text() == "mine\n"
    assert slurm_py(str(CONFIG), "--nodes", "1", "--gpus-per-node", "1", "--out", str(out), "--force").returncode == 0
    assert out.read_text().startswith("#!/bin/bash") and [p.name for p in tmp_path.iterdir()] == ["run.sbatch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, host: str, cpus: int) -> str:
    user = getpass.getuser()
    return "\n".join([
        "ClusterName=maxlmtest", f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge", f"AuthInfo=socket={root}/munge.sock", "CredType=cred/munge",
        f"SlurmUser={user}", f"SlurmdUser={user}",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        f"PlugStackConfig={root}/plugstack.conf",
        # no cgroups: the test may run in a container
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SlurmdParameters=config_overrides",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none", "ReturnToService=2", "MailProg=/bin/true", "MinJobAge=600",
        "KillWait=30",  # SIGTERM to SIGKILL: time for the tasks to save
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
    ]) + "\n"


@pytest.fixture
def slurm_cluster():
    """Yields the environment (SLURM_CONF) of a one-node Slurm cluster of this machine, started here and stopped after."""
    sbin = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # the daemons live there, off a non-root PATH
    found = {b: shutil.which(b, path=sbin) for b in SLURM_BINARIES}
    missing = [b for b, path in found.items() if not path]
    if missing:
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): apt-get install -y slurm-wlm munge")
    root = Path(tempfile.mkdtemp(prefix="maxlm-slurm-"))  # short: munge's socket path must fit a sockaddr_un
    for d in ("state", "spool"):
        (root / d).mkdir()
    (root / "plugstack.conf").write_text("")
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host, max(2, os.cpu_count() or 1)))
    env = dict(os.environ, SLURM_CONF=str(conf))
    with open(root / "daemons.log", "w") as log:
        munged = [found["munged"], "-F", "-f", f"--socket={root}/munge.sock", f"--key-file={key}", f"--pid-file={root}/munged.pid",
                  f"--seed-file={root}/munged.seed", f"--log-file={root}/munged.log"]
        daemons = [subprocess.Popen(munged, stdout=log, stderr=subprocess.STDOUT)]
        try:
            _wait(lambda: (root / "munge.sock").exists(), 10, "munged did not start", root)
            for daemon in ([found["slurmctld"], "-D", "-i"], [found["slurmd"], "-D"]):
                daemons.append(subprocess.Popen([*daemon, "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT, env=env))
            _wait(lambda: _sinfo(env) == "idle", 30, "the node did not come up idle", root)
            yield env
        finally:
            # a job left by a failed test: its tasks save and exit before the daemons that watch them go
            subprocess.run(["scancel", "--full", "--user", getpass.getuser()], env=env, capture_output=True, check=False)
            deadline = time.monotonic() + 45
            while _squeue(env) and time.monotonic() < deadline:
                time.sleep(0.5)
            for d in reversed(daemons):
                d.terminate()
                try:
                    d.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    d.kill()
        shutil.rmtree(root, ignore_errors=True)


def _squeue(env: dict) -> str:
    r = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def _sinfo(env: dict) -> str:
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, check=False)
    return r.stdout.strip()


def _wait(ready, seconds: float, what: str, root: Path | None = None) -> None:
    """Returns once ready() is true; raises AssertionError naming `what` (and the daemons' logs under root) after `seconds`."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(root.glob("*.log"))) if root else ""
            raise AssertionError(what + logs)
        time.sleep(0.5)


def _job_state(jid: str, env: dict) -> str:
    r = subprocess.run(["scontrol", "show", "job", jid], env=env, capture_output=True, text=True, check=False)
    return next((w.split("=", 1)[1] for w in r.stdout.split() if w.startswith("JobState=")), "UNKNOWN")


def _saved_steps(run: Path) -> list[int]:
    ckpts = run / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


@pytest.mark.slow
def test_a_requeued_and_a_cancelled_slurm_job_save_and_resume(tmp_path, shared_data, slurm_cluster):
    env = slurm_cluster
    run = tmp_path / "run"
    config = write_tiny_config(tmp_path, shared_data, train={"steps": 100000}, checkpoint={"interval_steps": 20})
    out = tmp_path / "tiny.sbatch"

    def submit(*overrides: str) -> tuple[str, Path]:
        r = slurm_py(str(config), *overrides, "--nodes", "1", "--gpus-per-node", "0", "--tasks-per-node", "2",
                     "--cpu-devices", "2", "--out", str(out), "--force", "--submit", env=env)
        assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stdout + r.stderr
        jid = r.stdout.strip()
        return jid, tmp_path / f"tiny-{jid}.out"

    def log_of(path: Path) -> str:
        return path.read_text() if path.exists() else "(no log)"

    def state(jid: str) -> str:
        return _job_state(jid, env)

    job, log = submit()
    _wait(lambda: _saved_steps(run) or state(job) not in ("PENDING", "RUNNING"), 150, "no checkpoint was written")
    assert state(job) == "RUNNING", log_of(log)

    # Near --time, Slurm sends the batch shell USR1 (--signal=B:USR1@S); its trap requeues the job: the
    # tasks get SIGTERM, save, and the same job starts again (restart 1, appending to its log).
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    _wait(lambda: "SIGTERM: saved step" in log_of(log) and state(job) == "PENDING", 60, "the job was not requeued")
    requeued = _saved_steps(run)[-1]
    assert "time limit near: requeueing" in log_of(log) and f"SIGTERM: saved step {requeued}" in log_of(log), log_of(log)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)  # skip the requeue's hold-off
    _wait(lambda: _saved_steps(run)[-1] > requeued or state(job) not in ("PENDING", "RUNNING"), 150, "the requeued job made no checkpoint")
    text = log_of(log)
    assert state(job) == "RUNNING" and "(restart 1)" in text and f"checkpoints/{requeued}\n" in text.split("(restart 1)")[1], text

    # scancel: SIGTERM, a save, and the job ends; submitting the script again resumes it.
    subprocess.run(["scancel", job], env=env, check=True)
    _wait(lambda: state(job) not in ("RUNNING", "COMPLETING"), 60, "the cancelled job did not end")
    cancelled = _saved_steps(run)[-1]
    assert cancelled > requeued and f"SIGTERM: saved step {cancelled}" in log_of(log), log_of(log)

    job, log = submit(f"train.steps={cancelled + 3}")
    _wait(lambda: state(job) not in ("PENDING", "RUNNING", "COMPLETING"), 150, "the resubmitted job did not end")
    text = log_of(log)
    assert state(job) == "COMPLETED", text
    assert "resumed from " in text and f"checkpoints/{cancelled}\n" in text, text
    assert "4 cpu devices" in text  # two tasks of 2 fake devices each, one jax.distributed run
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, cancelled + 4))
    assert _saved_steps(run)[-1] == cancelled + 3
