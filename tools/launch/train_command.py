"""What the cluster launchers (slurm.py, tpu_vm.py, skypilot.py) share: the `maxlm train` command they
run, checked by maxlm's own config loader before anything is written or submitted, and the one way
they write their output (atomically, never over an existing file without --force).
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from maxlm.config import load_config
from maxlm.errors import MaxlmError
from maxlm.files.atomic import write_text

# Slurm job names, TPU VM names, xpk workloads, SkyPilot tasks: letters, digits and - _ . only.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def add_config_args(p: argparse.ArgumentParser) -> None:
    """Adds CONFIG and its k=v overrides, as `maxlm train` takes them."""
    p.add_argument("config", help="the training config (YAML), as for `maxlm train`")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for `maxlm train`")


def train_argv(config: str, overrides: list[str], absolute: bool = True) -> list[str]:
    """Returns `maxlm.cli train CONFIG overrides` (after `python -m`), having loaded the config with them.

    Raises MaxlmError naming the bad file, key or value, so a typo fails here rather than on a node
    after hours in the queue. `absolute` makes CONFIG absolute (a shared filesystem); a remote
    checkout (TPU VM, SkyPilot workdir) keeps it as given, relative to the repository.
    """
    path = Path(config)
    if not path.is_file():
        raise MaxlmError(f"CONFIG {config}: no such file")
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise MaxlmError(f"override {bad[0]!r}: expected key=value, e.g. train.steps=1000")
    load_config(path, list(overrides))
    return ["maxlm.cli", "train", str(path.resolve() if absolute else path), *overrides]


def shell_line(argv: list[str]) -> str:
    """Returns argv as one POSIX shell command line."""
    return " ".join(shlex.quote(a) for a in argv)


def check_name(value: str, flag: str) -> str:
    """Returns `value` when it is a name every scheduler takes, else raises MaxlmError."""
    if not NAME.fullmatch(value):
        raise MaxlmError(f"{flag} {value!r}: use letters, digits, '-', '_' and '.' (starting with a letter or digit)")
    return value


def check_new(out: Path, force: bool) -> None:
    """Raises MaxlmError when `out` exists (and --force was not given) or is a directory."""
    if out.is_dir():
        raise MaxlmError(f"--out {out}: is a directory; give a file path")
    if out.exists() and not force:
        raise MaxlmError(f"--out {out}: exists; pass --force to replace it, or choose another path")


def write_new(out: Path, text: str, force: bool) -> Path:
    """Returns `out` after writing `text` to it atomically (refused over an existing file without `force`)."""
    check_new(out, force)
    return write_text(out, text)
