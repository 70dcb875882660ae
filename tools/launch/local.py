"""Runs one command as N JAX processes on this machine, wired by jax.distributed from the environment.

    python tools/launch/local.py -n 2 --cpu-devices 4 -- maxlm train configs/quickstart.yaml

Each process gets MAXLM_COORDINATOR / MAXLM_NUM_PROCESSES / MAXLM_PROCESS_ID (read by
`maxlm.parallel.distributed.initialize_from_env`); `--cpu-devices K` runs each on K fake CPU
devices (JAX_PLATFORMS=cpu), which is how a multi-host run is rehearsed on one machine. Output
lines are prefixed with the process index. SIGINT / SIGTERM are passed on as SIGTERM (a training
process saves a checkpoint and exits); when one process fails the others are stopped, since they
would wait for it forever at the next collective. Exits with the first non-zero status, else 0.

One process already drives every GPU of a host; across hosts, JAX reads SLURM / Open MPI / Cloud
TPU environments itself. slurm.py, tpu_vm.py and skypilot.py beside this file start a run on those clusters.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
    """Returns a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, index: int, count: int, port: int, cpu_devices: int) -> dict:
    """Returns the environment of process `index` of `count`."""
    env = dict(base, MAXLM_COORDINATOR=f"127.0.0.1:{port}", MAXLM_NUM_PROCESSES=str(count), MAXLM_PROCESS_ID=str(index))
    if cpu_devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={cpu_devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _relay(index: int, stream, out, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"[{index}] {line}")
            out.flush()


def launch(command: list[str], processes: int, cpu_devices: int = 0, port: int = 0, out=sys.stdout) -> int:
    """Returns the exit status of `command` run as `processes` JAX processes: the first non-zero one, else 0."""
    port = port or free_port()
    lock = threading.Lock()
    procs, relays = [], []
    for i in range(processes):
        p = subprocess.Popen(command, env=process_env(os.environ, i, processes, port, cpu_devices),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        procs.append(p)
        relays.append(threading.Thread(target=_relay, args=(i, p.stdout, out, lock), daemon=True))
        relays[-1].start()

    def stop_all(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop_all) for s in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while None in [p.poll() for p in procs]:  # a list, not any(): every process is polled
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed and not status:
                status = failed[0]
                stop_all()
            time.sleep(0.2)
        status = status or next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for t in relays:
            t.join(timeout=5)
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--processes", type=int, required=True)
    p.add_argument("--cpu-devices", type=int, default=0, help="fake CPU devices per process (0: the platform's own devices)")
    p.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (0: a free one)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each process runs")
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        p.error("give the command after --, e.g. -- maxlm train configs/quickstart.yaml")
    if a.processes < 1 or a.cpu_devices < 0:
        p.error("--processes must be >= 1 and --cpu-devices >= 0")
    return launch(command, a.processes, a.cpu_devices, a.port)


if __name__ == "__main__":
    sys.exit(main())
