"""Prints (with --run: runs) the command that trains one config on Cloud TPU: on every host of a TPU VM
slice over `gcloud ... ssh --worker=all`, or as an xpk workload on a GKE cluster (one or more slices).

    python tools/launch/tpu_vm.py ssh configs/my_run.yaml train.steps=20000 --name my-v5p --zone us-east5-a
    python tools/launch/tpu_vm.py xpk configs/my_run.yaml --cluster my-gke --tpu-type v5p-128 --slices 2 \\
        --docker-image gcr.io/my-project/maxlm:latest

Every host runs `python3 -m maxlm.cli train CONFIG k=v...` in the checkout (`--dir`, or the image's
working directory); JAX finds the other hosts of the slice itself. CONFIG is checked here by maxlm's
loader and passed as given, so give it relative to the repository, the same on this machine and on
the hosts. The run_dir must be one that every host reaches (a shared disk) for checkpoints to resume.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys

from train_command import add_config_args, check_name, shell_line, train_argv

from maxlm.errors import MaxlmError
from maxlm.parallel.topology import parse_slice

# xpk workloads are Kubernetes JobSet names: lower case, digits and '-', at most 40 characters.
_WORKLOAD = re.compile(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?")


def ssh_argv(a: argparse.Namespace, train: list[str]) -> list[str]:
    """Returns the gcloud command that runs `train` on every worker of TPU VM `a.name`."""
    home, rest = ("~/", a.dir[2:]) if a.dir.startswith("~/") else ("", a.dir)  # ~ left unquoted: it expands on the host
    remote = f"cd {home}{shlex.quote(rest)} && {shell_line([a.python, '-m', *train])}"
    project = [f"--project={a.project}"] if a.project else []
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", a.name, f"--zone={a.zone}", *project, "--worker=all", "--command", remote]


def xpk_argv(a: argparse.Namespace, train: list[str]) -> list[str]:
    """Returns the xpk command that creates workload `a.workload`: `train` on each host of `a.slices` slices."""
    where = [f"--zone={a.zone}"] * bool(a.zone) + [f"--project={a.project}"] * bool(a.project)
    return ["xpk", "workload", "create", f"--cluster={a.cluster}", f"--workload={a.workload}", f"--tpu-type={a.tpu_type}",
            f"--num-slices={a.slices}", f"--docker-image={a.docker_image}", f"--max-restarts={a.max_restarts}", *where,
            "--command", shell_line([a.python, "-m", *train])]


def check(a: argparse.Namespace) -> None:
    """Raises MaxlmError for names and counts gcloud or xpk would refuse."""
    if a.project:
        check_name(a.project, "--project")
    if a.zone:
        check_name(a.zone, "--zone")
    if a.how == "ssh":
        check_name(a.name, "--name")
        return
    check_name(a.cluster, "--cluster")
    if not _WORKLOAD.fullmatch(a.workload):
        raise MaxlmError(f"--workload {a.workload!r}: lower-case letters, digits and '-', starting with a letter, at most 40")
    try:
        parse_slice(a.tpu_type)
    except MaxlmError as e:
        raise MaxlmError(str(e).replace("--topology", "--tpu-type", 1)) from None
    if a.slices < 1 or a.max_restarts < 0:
        raise MaxlmError(f"--slices {a.slices} / --max-restarts {a.max_restarts}: expected >= 1 / >= 0")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # One parser per way (not subparsers): overrides may then come after the options, as for `maxlm train`.
    ssh = argparse.ArgumentParser(prog="tpu_vm.py ssh", description="every worker of one TPU VM slice, over gcloud ssh")
    xpk = argparse.ArgumentParser(prog="tpu_vm.py xpk", description="an xpk workload on a GKE cluster: one or more slices")
    if not argv or argv[0] not in ("ssh", "xpk"):
        print(f"usage: tpu_vm.py {{ssh,xpk}} CONFIG [k=v ...] [options]\n{__doc__.splitlines()[0]}", file=sys.stderr)
        return 2
    for q in (ssh, xpk):
        add_config_args(q)
        q.add_argument("--zone", required=q is ssh, default=None)
        q.add_argument("--project", default=None)
        q.add_argument("--python", default="python3", help="the interpreter on the hosts")
        q.add_argument("--run", action="store_true", help="run the command instead of printing it")
    ssh.add_argument("--name", required=True, help="the TPU VM")
    ssh.add_argument("--dir", default="~/maxlm", help="the maxlm checkout on every host")
    xpk.add_argument("--cluster", required=True)
    xpk.add_argument("--tpu-type", required=True, help="a slice as gcloud names it: v5p-128, v5litepod-256, v6e-256")
    xpk.add_argument("--slices", type=int, default=1)
    xpk.add_argument("--docker-image", required=True, help="an image with maxlm installed, started in its checkout")
    xpk.add_argument("--workload", default=None, help="default: maxlm-<config name>")
    xpk.add_argument("--max-restarts", type=int, default=3, help="restarts after a failure or preemption (each resumes)")
    a = (ssh if argv[0] == "ssh" else xpk).parse_intermixed_args(argv[1:], argparse.Namespace(how=argv[0]))
    if a.how == "xpk" and a.workload is None:
        stem = re.sub(r"[^a-z0-9-]+", "-", a.config.rsplit("/", 1)[-1].rsplit(".", 1)[0].lower()).strip("-")
        a.workload = f"maxlm-{stem}"[:40].rstrip("-")
    try:
        check(a)
        train = train_argv(a.config, a.overrides, absolute=False)
    except MaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cmd = ssh_argv(a, train) if a.how == "ssh" else xpk_argv(a, train)
    if not a.run:
        print(shell_line(cmd))
        return 0
    try:
        return subprocess.run(cmd, check=False).returncode
    except FileNotFoundError:
        print(f"error: --run: no {cmd[0]} on PATH; run the printed command where it is installed", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
