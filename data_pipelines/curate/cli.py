"""`curate PIPELINE.yaml --input GLOB --output DIR [--executor local|ray] [--workers N]`.

Wired as `maxlm curate ...` and `python -m data_pipelines curate ...`; holds no logic of its own.
"""

from __future__ import annotations

import argparse
import sys

from data_pipelines.command import run_command
from data_pipelines.curate.config import load_pipeline
from data_pipelines.curate.pipeline import curate
from data_pipelines.curate.stages import STAGES
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


def _curate(args: argparse.Namespace, log) -> str:
    """Returns the summary line of a curation run."""
    if args.workers is not None and args.workers < 1:
        raise MaxlmError(f"--workers must be >= 1, got {args.workers}")
    check_writable_dir(args.output, "--output")
    report = curate(load_pipeline(args.pipeline, STAGES), args.input, args.output, args.executor, args.workers, log)
    t = report["totals"]
    for cut in report["bad_records"]["cut_inputs"]:  # shown even with --quiet: data was lost
        print(f"warning: {cut['message']}", file=sys.stderr)
    cut = f", {t['cut_inputs']} input file(s) cut short" if t["cut_inputs"] else ""
    return (
        f"curated {t['docs_in']} documents -> {t['docs_out']} kept ({t['bad_records']} bad records{cut}) "
        f"in {report['run']['wall_seconds']:.1f} s; report: {args.output}/report.md"
    )


def main(argv: list[str]) -> int:
    """Runs the curate command; returns the process exit code (0 ok, 2 bad input or config)."""
    return run_command("curate", argv, _parser(), _curate)
