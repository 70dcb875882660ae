"""kill -9 right after a checkpoint commits: the metrics line of that step is on disk, so the
resumed run's metrics.jsonl has every step once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import write_tiny_config



def committed(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in os.scandir(d) if p.name.isdigit()) if d.is_dir() else []


@pytest.mark.slow
def test_metrics_of_a_committed_step_survive_kill_9(tmp_path, shared_data):
    # Every step commits a checkpoint synchronously: without the fix the step's metrics line
    # came only after the next step was dispatched, a window each commit opened.
    path = write_tiny_config(tmp_path, shared_data, train={"steps": 40}, checkpoint={"interval_steps": 1, "async_save": False, "keep": 100})
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "maxlm.cli", "train", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "run"
    deadline = time.time() + 600
    while not [s for s in committed(run) if s >= 3]:
        assert proc.poll() is None and time.time() < deadline, "the run ended before its third checkpoint"
    proc.send_signal(signal.SIGKILL)  # at once: the step just committed
    proc.wait()
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    last = committed(run)[-1]
    assert last < 40, "the run finished before the kill"
    assert set(range(1, last + 1)) <= set(steps), (last, steps)
