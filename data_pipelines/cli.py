"""`curate PIPELINE.yaml --input GLOB --output DIR [--executor local|ray] [--workers N]`.

Wired as `maxlm curate ...` and `python -m data_pipelines curate ...`; holds no logic of its own.
"""

from __future__ import annotations

import argparse
import sys

from maxlm.errors import MaxlmError
from maxlm.files.writable import check_writable_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curate", description="Filter and deduplicate documents with a YAML pipeline.")
    p.add_argument("pipeline", help="pipeline YAML, e.g. configs/curation/english_web.yaml")
    p.add_argument("--input", required=True, help="input files: a glob (quote it), ** recurses")
    p.add_argument("--output", required=True, help="output directory (rerun the same command to resume)")
    p.add_argument("--executor", choices=("local", "ray"), help="overrides the YAML's executor (default local)")
    p.add_argument("--workers", type=int, help="parallel shards; overrides the YAML (default all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


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
    print(summary)
    return 0


def _curate(args: argparse.Namespace, log) -> str:
    """Returns the summary line of a curation run."""
    from data_pipelines.config import load_pipeline
    from data_pipelines.run.pipeline import curate

    if args.workers is not None and args.workers < 1:
        raise MaxlmError(f"--workers must be >= 1, got {args.workers}")
    check_writable_dir(args.output, "--output")
    report = curate(load_pipeline(args.pipeline), args.input, args.output, args.executor, args.workers, log)
    t = report["totals"]
    return (
        f"curated {t['docs_in']} documents -> {t['docs_out']} kept ({t['bad_records']} bad records) "
        f"in {report['run']['wall_seconds']:.1f} s; report: {args.output}/report.md"
    )


def main(argv: list[str]) -> int:
    """Runs the curate command; returns the process exit code (0 ok, 2 bad input or config)."""
    return run_command("curate", argv, _parser(), _curate)
