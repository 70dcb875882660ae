"""The run report: per-stage documents and bytes in/out, removal reasons with examples,
histograms of key statistics (PNG), throughput, bad input records with file:line, and the
input files whose stream broke off (truncated .gz/.zst), with the line they were cut at."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from maxlm.files.atomic import atomic_path, write_json, write_text
from data_pipelines.curate.config import PipelineConfig
from data_pipelines.curate.inputs import InputFile
from data_pipelines.curate.run.workdir import Workdir
from data_pipelines.curate.run.plan import Phase
from data_pipelines.curate.stages.decontaminate import HIT_PREFIX
from data_pipelines.curate.stats import StageStats
from data_pipelines.curate.warc import is_warc

MAX_BAD_LISTED = 1000
MAX_HITS_SHOWN = 50  # eval items listed in report.md; report.json has them all
HIST_BINS = 30


def cut_line(cut: dict) -> str:
    """Returns the one line that says where an input file was cut and what that cost."""
    line = cut["where"].rpartition(":")[2]
    unit = "record" if is_warc(cut["path"]) else "line"
    why = cut["problem"].removeprefix("unreadable from here on: ")
    return (f"{cut['path']}: cut at {unit} {line} ({why}): the stream ends there, so the documents after it could not "
            f"be read and how many there were cannot be known; the {cut['records_before']} records before it were read")


def _gather(workdir: Workdir, phases: tuple[Phase, ...], shards: list[str]) -> tuple[dict, dict, dict, int]:
    """Returns (stats by label, read totals, bad records and cut inputs, documents written) from the markers."""
    by_label: dict[str, StageStats] = {}
    read = {"docs": 0, "bytes": 0}
    bad = {"count": 0, "examples": [], "cut_inputs": []}
    written = 0
    for k in range(len(phases)):
        for s in shards:
            m = json.loads(workdir.shard_done(k, s).read_text())
            for label, raw in m["stages"].items():
                by_label.setdefault(label, StageStats()).merge(StageStats.from_dict(raw))
            if k == 0:
                read["docs"] += m["read"]["docs"]
                read["bytes"] += m["read"]["bytes"]
                bad["count"] += m["bad"]["count"]
                bad["examples"].extend(m["bad"]["examples"][: MAX_BAD_LISTED - len(bad["examples"])])
                if m["bad"].get("cut"):
                    bad["cut_inputs"].append({**m["bad"]["cut"], "message": cut_line(m["bad"]["cut"])})
            if k == len(phases) - 1:
                written += m["kept"]
    return by_label, read, bad, written


def _histogram(values: list[float], png: Path, title: str) -> dict:
    """Returns {edges, counts, png} for `values` and draws them into `png`."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; set before pyplot is imported
    import matplotlib.pyplot as plt

    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=HIST_BINS)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.stairs(counts, edges, fill=True, color="#4878a8")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("documents (sampled)", fontsize=8)
    fig.subplots_adjust(left=0.14, bottom=0.12, right=0.97, top=0.9)  # tight_layout costs as much as drawing
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist(), "png": str(png.relative_to(png.parent.parent))}


def write_report(workdir: Workdir, cfg: PipelineConfig, inputs: list[InputFile], phases: tuple[Phase, ...], shards: list[str], run: dict) -> dict:
    """Writes DIR/report.json, DIR/report.md and DIR/report/*.png; returns the report."""
    by_label, read, bad, written = _gather(workdir, phases, shards)
    resolves, id_steps = {}, []
    for k, phase in enumerate(phases):
        if phase.group and workdir.resolve_done(k).exists():
            done = json.loads(workdir.resolve_done(k).read_text())
            resolves.update(done["stages"])
            id_steps.append({"stages": list(done["stages"]), **done["ids"]})
    stages_out = []
    for spec in cfg.stages:
        st = by_label.get(spec.label, StageStats())
        extra = resolves.get(spec.label)
        if extra:
            st.seconds += extra["seconds"]
        hists = {}
        for stat, values in sorted(st.samples.items()):
            if values:
                png = workdir.report_dir / f"{spec.label.replace('#', '_')}.{stat}.png"
                hists[stat] = _histogram(values, png, f"{spec.label}: {stat}")
        stages_out.append({
            "label": spec.label,
            "stage": spec.name,
            "docs_in": st.docs_in,
            "docs_out": st.docs_out,
            "docs_removed": st.docs_in - st.docs_out,
            "bytes_in": st.bytes_in,
            "bytes_out": st.bytes_out,
            "seconds": round(st.seconds, 3),
            # summed over workers: what one core does in this stage
            "docs_per_second": round(st.docs_in / st.seconds, 1) if st.seconds > 0 else None,
            "removed": dict(sorted(st.removed.items(), key=lambda kv: -kv[1])),
            "examples": st.examples,
            "counters": dict(sorted(st.counters.items())),
            "histograms": hists,
            **({"dedup": {k: v for k, v in extra.items() if k != "seconds"}} if extra else {}),
        })
    last = [s for s in stages_out if s["docs_in"] or s["docs_out"]]
    bytes_out = last[-1]["bytes_out"] if last else read["bytes"]
    wall = run["wall_seconds"]
    report = {
        "pipeline": cfg.path,
        "output": str(workdir.root),
        "output_format": cfg.output.format,
        "run": {**run, "wall_seconds": round(wall, 3)},
        "inputs": [{"shard": s, "file": f.path} for s, f in zip(shards, inputs)],
        "totals": {
            "docs_in": read["docs"] + bad["count"],
            "good_docs_in": read["docs"],
            "bytes_in": read["bytes"],
            "docs_out": written,
            "bytes_out": bytes_out,
            "bad_records": bad["count"],
            "cut_inputs": len(bad["cut_inputs"]),
            "docs_per_second_wall": round(read["docs"] / wall, 1) if wall > 0 else None,
        },
        "bad_records": bad,
        "stages": stages_out,
        # per dedup group: the duplicate-id steps its stages share (not in any one stage's seconds)
        "dedup_ids": id_steps,
    }
    write_json(workdir.root / "report.json", report)
    write_text(workdir.root / "report.md", render_markdown(report))
    return report


def _hits_table(counters: dict) -> list[str]:
    """Returns report.md lines listing the eval items a decontaminate stage hit, most documents first."""
    hits = sorted(((k[len(HIT_PREFIX):], v) for k, v in counters.items() if k.startswith(HIT_PREFIX)), key=lambda kv: (-kv[1], kv[0]))
    if not hits:
        return []
    out = ["", f"Eval items hit: {len(hits)}", "", "| eval item | documents |", "| --- | ---: |"]
    out += [f"| `{item}` | {n} |" for item, n in hits[:MAX_HITS_SHOWN]]
    if len(hits) > MAX_HITS_SHOWN:
        out.append(f"| ... {len(hits) - MAX_HITS_SHOWN} more in report.json (counters `{HIT_PREFIX}*`) | |")
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def render_markdown(r: dict) -> str:
    """Returns the report as Markdown: totals, a stage table, reasons, examples, histograms, bad input."""
    t = r["totals"]
    out = [
        f"# Curation report: {r['pipeline']}",
        "",
        f"- output: `{r['output']}` ({r['output_format']}); executor {r['run']['executor']} x {r['run']['workers']}",
        f"- wall time: {r['run']['wall_seconds']:.1f} s ({t['docs_per_second_wall']} docs/s)"
        + (" (resumed run)" if r["run"].get("resumed") else ""),
        f"- documents: {t['docs_in']} in ({t['bad_records']} bad input records), {t['docs_out']} out",
        *([f"- **{t['cut_inputs']} input file(s) cut short**: documents after the cut could not be read (see below)"] if t.get("cut_inputs") else []),
        f"- text: {_mb(t['bytes_in'])} in, {_mb(t['bytes_out'])} out",
        "",
        "| stage | docs in | docs out | removed | bytes in | bytes out | docs/s per core |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in r["stages"]:
        out.append(
            f"| {s['label']} | {s['docs_in']} | {s['docs_out']} | {s['docs_removed']} | {_mb(s['bytes_in'])} "
            f"| {_mb(s['bytes_out'])} | {s['docs_per_second'] or '-'} |"
        )
    for s in r["stages"]:
        out += ["", f"## {s['label']}", ""]
        if s["removed"]:
            out.append("Removal reasons: " + ", ".join(f"`{k}` {v}" for k, v in s["removed"].items()))
        counters = {k: v for k, v in s["counters"].items() if not k.startswith(HIT_PREFIX)}
        if counters:
            out.append("")
            out.append("Counters: " + ", ".join(f"`{k}` {v}" for k, v in counters.items()))
        out += _hits_table(s["counters"])
        if s.get("dedup"):
            out.append("")
            out.append("Dedup: " + ", ".join(f"{k} {v}" for k, v in s["dedup"].items() if k != "steps"))
            steps = s["dedup"].get("steps", {})
            if steps:
                out.append("")
                out.append("Resolve tasks: " + ", ".join(
                    f"{name} {st['tasks']} in {st['seconds']:.2f} s (peak {st['max_task_rss_mb']:.0f} MiB)" for name, st in steps.items()))
        ids = next((g for g in r.get("dedup_ids", []) if g["stages"][-1] == s["label"]), None)
        if ids:
            out += ["", f"Duplicate ids for {', '.join(ids['stages'])}: " + ", ".join(
                f"{name} {ids[name]['tasks']} in {ids[name]['seconds']:.2f} s" for name in ("answer", "removals"))]
        for reason, exs in s["examples"].items():
            out += ["", f"Examples removed for `{reason}`:", ""]
            for ex in exs[:3]:
                snippet = " ".join(ex["text"].split())[:160].replace("|", "\\|")
                dup = f" (duplicate of `{ex['duplicate_of']}`)" if "duplicate_of" in ex else ""
                out.append(f"- `{ex['where']}`{dup}: {snippet}")
        for stat, h in s["histograms"].items():
            out += ["", f"![{s['label']} {stat}]({h['png']})"]
    bad = r["bad_records"]
    if bad.get("cut_inputs"):
        out += ["", f"## Input files cut short ({len(bad['cut_inputs'])})", ""]
        out += [f"- {c['message']}" for c in bad["cut_inputs"]]
    if bad["count"]:
        out += ["", f"## Bad input records ({bad['count']})", "", "Skipped and counted; every other record was kept.", ""]
        out += [f"- {e}" for e in bad["examples"][:20]]
        if bad["count"] > 20:
            out.append(f"- ... {bad['count'] - 20} more in report.json and removed/*.jsonl.zst")
    return "\n".join(out) + "\n"
