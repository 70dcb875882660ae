"""Writes the SkyPilot task YAML that trains one config on N nodes of any cloud SkyPilot reaches.

    python tools/launch/skypilot.py configs/my_run.yaml train.steps=20000 --nodes 2 --accelerators H100:8 \\
        --spot --bucket gs://my-bucket/runs
    sky jobs launch my_run.sky.yaml      # a managed job: relaunched, and resumed, after a preemption

SkyPilot copies this directory (the maxlm checkout) to every node as the task's workdir, runs `setup`
there once, then `run` on every node: one process per node driving all its GPUs, wired for
jax.distributed from SkyPilot's environment (the first of SKYPILOT_NODE_IPS is the coordinator,
SKYPILOT_NODE_RANK the process id). On TPUs (`--accelerators tpu-v5p-8`, ...) JAX finds the other
hosts itself. With --bucket, run_dir is the config's run name on that bucket, mounted on every node,
so a relaunched job resumes from its last checkpoint; without it a preempted run starts over.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml
from train_command import add_config_args, check_name, shell_line, train_argv, write_new

from maxlm.config import load_config
from maxlm.errors import MaxlmError

_ACCELERATORS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[1-9]\d*)?")  # H100:8, A100-80GB:8, L4, tpu-v5p-8
_BUCKET = re.compile(r"(gs|s3|r2|cos|oci)://[a-z0-9][a-z0-9._-]*(/[^\s]*)?")
MOUNT = "/maxlm-runs"


class _Literal(str):
    """A multi-line string written as a YAML block (`|`), as SkyPilot's own examples write `run`."""


class _Dumper(yaml.SafeDumper):
    """yaml's safe dumper, with _Literal blocks (a subclass: the shared SafeDumper is left as it is)."""


_Dumper.add_representer(_Literal, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", str(s), style="|"))


def wires_processes(a: argparse.Namespace) -> bool:
    """Returns whether the nodes' processes are wired by MAXLM_* variables (several GPU nodes; TPU hosts find each other)."""
    return a.nodes > 1 and not a.accelerators.lower().startswith("tpu-")


def run_script(a: argparse.Namespace, train: list[str]) -> str:
    """Returns the `run` commands of every node: the MAXLM_* variables where needed, then `train`."""
    lines = []
    if wires_processes(a):
        lines += [
            'export MAXLM_COORDINATOR="$(echo "$SKYPILOT_NODE_IPS" | head -n1):$MAXLM_PORT"',
            'export MAXLM_NUM_PROCESSES="$SKYPILOT_NUM_NODES"',
            'export MAXLM_PROCESS_ID="$SKYPILOT_NODE_RANK"',
        ]
    return "\n".join(lines + [shell_line([a.python, "-m", *train])]) + "\n"


def task(a: argparse.Namespace, train: list[str]) -> dict:
    """Returns the SkyPilot task (as its YAML holds it) for parsed arguments `a` and the `maxlm.cli train` argv."""
    resources = {"accelerators": a.accelerators}
    if a.cloud:
        resources["cloud"] = a.cloud
    if a.spot:
        resources["use_spot"] = True
    # a managed job relaunches after a preemption (FAILOVER: elsewhere if need be) and after errors, up to the count
    resources["job_recovery"] = {"strategy": "FAILOVER", "max_restarts_on_errors": a.max_restarts}
    t = {"name": a.name, "num_nodes": a.nodes, "resources": resources, "workdir": str(Path.cwd())}
    if wires_processes(a):
        t["envs"] = {"MAXLM_PORT": str(a.port)}
    if a.bucket:
        # MOUNT_CACHED: checkpoints are written to local disk and uploaded behind, not through FUSE one write at a time
        t["file_mounts"] = {MOUNT: {"source": a.bucket, "mode": "MOUNT_CACHED"}}
    t["setup"] = _Literal(a.setup + "\n")
    t["run"] = _Literal(run_script(a, train))
    return t


def check(a: argparse.Namespace) -> None:
    """Raises MaxlmError for arguments SkyPilot would refuse or that could not resume."""
    check_name(a.name, "--name")
    if a.nodes < 1 or a.max_restarts < 0 or not 0 < a.port < 65536:
        raise MaxlmError(f"--nodes {a.nodes} / --max-restarts {a.max_restarts} / --port {a.port}: expected >= 1 / >= 0 / 1-65535")
    if not _ACCELERATORS.fullmatch(a.accelerators):
        raise MaxlmError(f"--accelerators {a.accelerators!r}: expected NAME[:COUNT] as SkyPilot takes it, e.g. H100:8 or tpu-v5p-8")
    if a.cloud:
        check_name(a.cloud, "--cloud")
    if a.bucket and not _BUCKET.fullmatch(a.bucket):
        raise MaxlmError(f"--bucket {a.bucket!r}: expected a bucket URL such as gs://my-bucket/runs or s3://my-bucket")
    if a.bucket and any(o.startswith("run_dir=") for o in a.overrides):
        raise MaxlmError("--bucket sets run_dir (on the bucket); drop the run_dir= override")
    config = Path(a.config).resolve()
    if not config.is_relative_to(Path.cwd()):
        raise MaxlmError(f"CONFIG {a.config}: outside this directory, which is what SkyPilot copies to the nodes; run from the checkout")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(p)
    p.add_argument("--accelerators", required=True, help="per node, as SkyPilot takes it: H100:8, A100-80GB:8, tpu-v5p-8")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--cloud", default=None, help="gcp, aws, azure, kubernetes, ... (default: SkyPilot chooses)")
    p.add_argument("--spot", action="store_true", help="spot / preemptible nodes (use with --bucket to resume)")
    p.add_argument("--bucket", default=None, help="where run_dir lives: gs://, s3://, r2://, ... (needed to resume on other nodes)")
    p.add_argument("--max-restarts", type=int, default=3, help="relaunches of a managed job after errors (preemptions: always)")
    p.add_argument("--port", type=int, default=8476, help="the coordinator's port on the first node")
    p.add_argument("--setup", default=None, help='the setup commands (default: pip install -e ".[gpu]", or ".[tpu]")')
    p.add_argument("--python", default="python", help="the interpreter on the nodes, after setup")
    p.add_argument("--name", default=None, help="default: maxlm-<config name>")
    p.add_argument("--out", default=None, help="the YAML to write (default: <config name>.sky.yaml here)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    a = p.parse_intermixed_args(argv)
    stem = Path(a.config).stem
    a.name = a.name or f"maxlm-{stem}".replace("_", "-")
    a.out = a.out or f"{stem}.sky.yaml"
    extra = "tpu" if a.accelerators.lower().startswith("tpu-") else "gpu"
    a.setup = a.setup or f'pip install -e ".[{extra}]"'
    try:
        check(a)
        overrides = list(a.overrides)
        if a.bucket:
            overrides.append(f"run_dir={MOUNT}/{Path(load_config(a.config, overrides).run_dir).name}")
        config = Path(a.config).resolve().relative_to(Path.cwd())
        out = write_new(Path(a.out), yaml.dump(task(a, train_argv(str(config), overrides, absolute=False)), Dumper=_Dumper, sort_keys=False), a.force)
    except MaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}; launch it with: sky jobs launch {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
