"""Evaluation results on disk: DIR/results.json (the result as is) and DIR/results.md (tables).

Every `maxlm eval` command returns one flat dict: scalars (the metrics), at most a few
dicts of per-group metrics (`subjects`) and lists of example dicts (`examples`). The
markdown puts the scalars in one table, each group dict and example list in a table of its own.
"""

from __future__ import annotations

from pathlib import Path

from maxlm.errors import MaxlmError
from maxlm.files import atomic

CELL_CHARS = 160  # example texts are cut here in the table; results.json keeps them whole


def write_report(result: dict, output: str | Path, title: str) -> Path:
    """Returns `output` after writing results.json and results.md of `result` there."""
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / "results.json", result, indent=2, ensure_ascii=False)
        atomic.write_text(out / "results.md", markdown(result, title))
    except OSError as e:
        raise MaxlmError(f"--output {output}: cannot write the results: {e.strerror or e}") from None
    return out


def markdown(result: dict, title: str) -> str:
    """Returns `result` as markdown: a metric | value table, then one table per nested dict or list."""
    scalars = {k: v for k, v in result.items() if not isinstance(v, (dict, list))}
    lines = [f"# {title}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in scalars.items()]
    for key, value in result.items():
        if isinstance(value, dict) and value:
            lines += ["", f"## {key}", ""] + _table([{key: name, **row} for name, row in value.items()])
        elif isinstance(value, list) and value:
            lines += ["", f"## {key}", ""] + _table(value)
    return "\n".join(lines) + "\n"


def _table(rows: list[dict]) -> list[str]:
    """Returns the lines of a markdown table whose columns are the rows' keys, in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return lines + ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        value = " / ".join(map(str, value))
    text = str(value)
    text = text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"
    # A pipe or newline would end the cell or the row.
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")
