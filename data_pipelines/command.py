"""What every data_pipelines command (curate, select, synth) shares: exit codes, error lines, progress."""

from __future__ import annotations

import argparse
import sys

from maxlm.errors import MaxlmError
from maxlm.files.writable import place_error_line


def run_command(name: str, argv: list[str], parser: argparse.ArgumentParser, work) -> int:
    """Returns the exit code of one data_pipelines command: 0 after printing `work(args, log)`'s
    summary line, 2 after one `error: ...` line for bad input or config. Progress goes to stderr
    unless --quiet; a leading `name` in argv (as `maxlm NAME ...` passes it) is dropped."""
    argv = list(argv)
    if argv and argv[0] == name:
        argv = argv[1:]
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        summary = work(args, log)
    except MaxlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full or read-only disk mid-run: one line, as `maxlm` prints it
        line = place_error_line(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    print(summary)
    return 0
