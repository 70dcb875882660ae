"""Writes (and with --submit, submits) an sbatch script that trains one config on a Slurm cluster.

    python tools/launch/slurm.py configs/my_run.yaml train.steps=20000 --nodes 4 --gpus-per-node 8 \\
        --partition gpu --time 24:00:00 --submit

The script runs `srun python -m maxlm.cli train CONFIG k=v...`: one task per process, which JAX
wires from Slurm's environment itself (SLURM_PROCID, SLURM_STEP_NODELIST, ...). By default a node runs
one task per GPU, as JAX's Slurm detection expects (each task drives the GPU of its SLURM_LOCALID);
`--tasks-per-node 1` runs one task that drives all its node's GPUs instead.

Preemption: the job is `--requeue`able and its shell outlives SIGTERM, so when Slurm preempts or
requeues it every task gets SIGTERM, saves a checkpoint and exits (maxlm's own handler) before
Slurm's KillWait runs out, and the requeued job resumes from the config's run_dir. With --time, Slurm
signals the script --requeue-before seconds ahead of the limit and it requeues itself the same way.
Every error in the input (a bad key in the config, an unknown partition name's shape, a time limit
Slurm cannot parse) is reported before anything is written.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from train_command import add_config_args, check_name, shell_line, train_argv, write_new

from maxlm.errors import MaxlmError

# Slurm's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def time_seconds(text: str) -> int:
    """Returns the seconds of a Slurm --time value; raises MaxlmError for a form Slurm does not take."""
    m = _TIME.fullmatch(text)
    if not m:
        raise MaxlmError(f"--time {text!r}: expected minutes, H:M:S or D-H[:M[:S]], e.g. 90, 24:00:00, 2-00:00:00")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = int(a), int(b or 0), int(c or 0)
        seconds = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:  # M
        seconds = int(a) * 60
    if seconds <= 0:
        raise MaxlmError(f"--time {text!r}: must be more than zero")
    return seconds


def render(a: argparse.Namespace, train: list[str]) -> str:
    """Returns the sbatch script for parsed arguments `a` and the `maxlm.cli train ...` argv."""
    out = Path(a.out).resolve()
    tasks = a.tasks_per_node or max(a.gpus_per_node, 1)
    directives = {
        "job-name": a.job_name,
        "nodes": a.nodes,
        "ntasks-per-node": tasks,
        "gpus-per-node": a.gpus_per_node or None,
        "cpus-per-task": a.cpus_per_task,
        "partition": a.partition,
        "time": a.time,
        # B: to the batch shell only; its trap requeues the job, which sends every task SIGTERM
        "signal": f"B:USR1@{a.requeue_before}" if a.time else None,
        "requeue": True,
        "open-mode": "append",  # a requeued job appends to its log
        "output": str(out.with_suffix("")) + "-%j.out",
        "chdir": str(Path.cwd()),
    }
    lines = ["#!/bin/bash", f"# Written by tools/launch/slurm.py; `sbatch {out.name}` submits it again (resuming the run)."]
    lines += [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={v}" for k, v in directives.items() if v is not None]
    lines += ["set -u", 'echo "maxlm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"']
    if tasks == 1 and a.gpus_per_node > 1:  # JAX would give the one task only GPU 0 (its SLURM_LOCALID)
        lines.append(f"export JAX_LOCAL_DEVICE_IDS={','.join(map(str, range(a.gpus_per_node)))}")
    if a.cpu_devices:  # a rehearsal on CPU nodes: K fake devices per task
        lines += ["export JAX_PLATFORMS=cpu", f"export XLA_FLAGS=--xla_force_host_platform_device_count={a.cpu_devices}"]
    lines += [
        # The shell must outlive SIGTERM: when it exits, Slurm kills the tasks before they have saved.
        "trap 'echo \"maxlm: SIGTERM: the tasks save a checkpoint and exit\"' TERM",
        "trap 'echo \"maxlm: time limit near: requeueing\"; scontrol requeue \"$SLURM_JOB_ID\"' USR1",
        f"srun --kill-on-bad-exit=1 {shell_line([a.python, '-m', *train])} &",
        "step=$!",
        "wait \"$step\"; status=$?",
        "# a trapped signal ends `wait` early: wait on until the tasks have exited",
        "while kill -0 \"$step\" 2>/dev/null; do wait \"$step\"; status=$?; done",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def check(a: argparse.Namespace) -> None:
    """Raises MaxlmError for arguments Slurm would refuse or that cannot run maxlm."""
    for flag, value, least in (("--nodes", a.nodes, 1), ("--gpus-per-node", a.gpus_per_node, 0),
                               ("--tasks-per-node", a.tasks_per_node, 0), ("--cpus-per-task", a.cpus_per_task or 1, 1),
                               ("--cpu-devices", a.cpu_devices, 0), ("--requeue-before", a.requeue_before, 1)):
        if value < least:
            raise MaxlmError(f"{flag} {value}: must be >= {least}")
    if a.tasks_per_node and a.gpus_per_node and a.tasks_per_node not in (1, a.gpus_per_node):
        raise MaxlmError(f"--tasks-per-node {a.tasks_per_node} with --gpus-per-node {a.gpus_per_node}: "
                         "use one task per GPU (the default) or 1 (one task drives every GPU of its node)")
    if a.cpu_devices and a.gpus_per_node:
        raise MaxlmError("--cpu-devices runs on fake CPU devices; it does not go with --gpus-per-node")
    check_name(a.job_name, "--job-name")
    if a.partition:
        check_name(a.partition, "--partition")
    if a.time and a.requeue_before >= time_seconds(a.time):
        raise MaxlmError(f"--requeue-before {a.requeue_before}s: must be shorter than --time {a.time}")
    if a.submit and not shutil.which("sbatch"):
        raise MaxlmError("--submit: no sbatch on PATH; run this where Slurm is installed, or drop --submit to only write the script")
    if not Path(a.python).is_file():
        raise MaxlmError(f"--python {a.python}: no such file")


def submit(script: Path) -> str:
    """Returns the job id that `sbatch script` printed; raises MaxlmError when sbatch refuses it."""
    run = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
    if run.returncode:
        raise MaxlmError(f"sbatch {script} failed ({run.returncode}): {run.stderr.strip() or run.stdout.strip()}")
    return run.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(p)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, required=True, help="0 on CPU nodes")
    p.add_argument("--tasks-per-node", type=int, default=0, help="processes per node (default: one per GPU, 1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per task (default: the cluster's; data loading uses them)")
    p.add_argument("--cpu-devices", type=int, default=0, help="fake CPU devices per task (a rehearsal on CPU nodes)")
    p.add_argument("--partition", default=None)
    p.add_argument("--time", default=None, help="time limit, as sbatch takes it (minutes, H:M:S, D-H:M:S)")
    p.add_argument("--requeue-before", type=int, default=300,
                   help="with --time: seconds before the limit at which the job saves and requeues itself")
    p.add_argument("--job-name", default=None, help="default: maxlm-<config name>")
    p.add_argument("--python", default=sys.executable, help="the interpreter on the nodes (default: this one; a shared filesystem)")
    p.add_argument("--out", default=None, help="the script to write (default: <config name>.sbatch here)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--submit", action="store_true", help="run sbatch on the script and print the job id")
    a = p.parse_intermixed_args(argv)  # overrides may come after the options
    stem = Path(a.config).stem
    a.job_name = a.job_name or f"maxlm-{stem}"
    a.out = a.out or f"{stem}.sbatch"
    a.python = os.path.abspath(a.python)
    try:
        check(a)
        train = train_argv(a.config, a.overrides)
        script = write_new(Path(a.out), render(a, train), a.force)
        print(f"wrote {script}", file=sys.stderr)
        if a.submit:
            print(submit(script))  # the job id alone on stdout: jid=$(python tools/launch/slurm.py ... --submit)
    except MaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
