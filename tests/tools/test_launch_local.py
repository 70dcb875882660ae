"""tools/launch/local.py: N processes with the jax.distributed environment; a failure or a SIGTERM reaches them all."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

LAUNCH = Path(__file__).resolve().parents[2] / "tools" / "launch" / "local.py"

# Each process prints its environment, then process 1 exits with 3 (after the others have had time
# to start) while the others would sleep on.
CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("saved, exiting", flush=True), sys.exit(0)))
env = {k: os.environ.get(k) for k in ("MAXLM_COORDINATOR", "MAXLM_NUM_PROCESSES", "MAXLM_PROCESS_ID", "JAX_PLATFORMS", "XLA_FLAGS")}
print(sorted(env.items()), flush=True)
if sys.argv[1] == "fail" and env["MAXLM_PROCESS_ID"] == "1":
    time.sleep(3)
    sys.exit(3)
time.sleep(60)
"""


def _start(mode: str, n: int = 3) -> subprocess.Popen:
    cmd = [sys.executable, str(LAUNCH), "-n", str(n), "--cpu-devices", "2", "--", sys.executable, "-c", CHILD, mode]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_each_process_gets_the_distributed_environment_and_a_failure_stops_the_rest():
    t0 = time.monotonic()
    p = _start("fail")
    out, _ = p.communicate(timeout=50)
    assert p.returncode == 3, out
    assert time.monotonic() - t0 < 50  # the sleeping processes were stopped, not waited for
    lines = out.splitlines()
    for i in range(3):
        (env,) = [line for line in lines if line.startswith(f"[{i}] [(")]
        assert f"('MAXLM_PROCESS_ID', '{i}')" in env and "('MAXLM_NUM_PROCESSES', '3')" in env
        assert "('JAX_PLATFORMS', 'cpu')" in env and "--xla_force_host_platform_device_count=2" in env
    coordinators = {line.split("('MAXLM_COORDINATOR', ")[1].split(")")[0] for line in lines if "MAXLM_COORDINATOR" in line}
    assert len(coordinators) == 1 and coordinators.pop().startswith("'127.0.0.1:")
    assert out.count("saved, exiting") == 2  # processes 0 and 2 got SIGTERM


def test_sigterm_is_passed_on_to_every_process():
    p = _start("wait", n=2)
    deadline = time.monotonic() + 30
    seen = []
    while len([s for s in seen if "MAXLM_PROCESS_ID" in s]) < 2 and time.monotonic() < deadline:
        seen.append(p.stdout.readline())
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    out = "".join(seen) + out
    assert p.returncode == 0, out
    assert "[0] saved, exiting" in out and "[1] saved, exiting" in out
