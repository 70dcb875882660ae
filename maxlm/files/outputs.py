"""The one check every command runs on its outputs before any work: nothing a user wrote is lost.

An output may not be one of the command's inputs, two outputs of one command may not be one
file, and an output directory must be empty (or hold the command's own earlier output) unless
the user passes --overwrite.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from maxlm.errors import MaxlmError
from maxlm.files.writable import PROBE_PREFIX, check_writable_dir, check_writable_file


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Returns whether two paths name one file: the same inode if both exist, else the same absolute path."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output(outputs: Mapping[str, str | os.PathLike], inputs: Mapping[str, str | os.PathLike] | None = None,
                 overwrite: bool | None = False) -> None:
    """Raises MaxlmError when an output (flag -> path) is a directory, unwritable, another output, or (without `overwrite`) an input.

    `overwrite=None` says the command has no --overwrite (its outputs are appended to and resumed), so an
    output that is an input is always refused.
    """
    named = [(flag, path) for flag, path in outputs.items() if path]
    for i, (flag, path) in enumerate(named):
        check_writable_file(path, flag)  # a file path whose directory takes a write
        for other, other_path in named[:i]:
            if same_file(path, other_path):
                raise MaxlmError(f"{flag} and {other} are one file ({path}); they hold different records, give each its own path")
        for in_flag, in_path in (inputs or {}).items():
            if in_path and not overwrite and same_file(path, in_path):
                hint = "" if overwrite is None else ", or pass --overwrite to replace the input"
                raise MaxlmError(f"{flag} {path}: is also the input ({in_flag}) and would replace it; choose another path{hint}")


def check_output_dir(path: str | os.PathLike, flag: str, overwrite: bool | None = False,
                     ours: bool | Callable[[], bool] = False, what: str = "") -> None:
    """Raises MaxlmError when `path` is a file, unwritable, or a non-empty directory that is not `ours` and `overwrite` is not given.

    `ours` says the directory holds this command's own earlier output (a run to resume); a callable
    is asked only after the directory was listed non-empty, so files that another process of the
    same run writes meanwhile (its lock) are seen by it. `overwrite=None` says the command has no --overwrite.
    """
    path = Path(path)
    check_writable_dir(path, flag)  # a directory, or one that can be made, that takes a write
    if not path.is_dir() or overwrite or not any(not p.name.startswith(PROBE_PREFIX) for p in path.iterdir()):
        return
    if not (ours() if callable(ours) else ours):
        hint = "" if overwrite is None else ", or pass --overwrite (which replaces only the files this command writes)"
        raise MaxlmError(f"{flag} {path}: exists and is not empty{what}; choose another directory{hint}")
