"""A varied corpus of real text, built at run time, for the rule filters' parity tests against datatrove.

Shapes: math word problems with worked answers, instruction seeds with their instances,
roleplay answers, assistant dialogues, play scenes (the shared data sets); module, class and
function docstrings, man-page-like module summaries, argparse help screens, tool descriptions
with JSON parameter schemas, bullet lists, tables, code with docstrings and key: value records
(the standard library's own source, read with `ast`, never imported); plus the labelled
corpus's spam and foreign text. Nothing is copied into the repository; the same Python and
shared data give the same corpus.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import sys
import sysconfig
from pathlib import Path

from labelled_corpus import _foreign_docs, _spam_docs

MAX_CHARS = 12_000  # keeps the slow reference filters fast; longer texts are cut at a line end


def _cut(text: str) -> str:
    """Returns `text` cut at the last line end before MAX_CHARS (whole when shorter)."""
    if len(text) <= MAX_CHARS:
        return text
    end = text.rfind("\n", 0, MAX_CHARS)
    return text[: end if end > 0 else MAX_CHARS]


# ---------------------------------------------------------------- the shared data sets


def _shared_docs(data: Path, rng: random.Random) -> list[tuple[str, str]]:
    gsm = [json.loads(ln) for ln in (data / "sft" / "gsm8k_train.jsonl").read_text().splitlines()]
    picks = rng.sample(gsm, 700)
    out = [("gsm8k_qa", f"{r['question']}\n\n{r['answer']}") for r in picks[:300]]
    out += [("gsm8k_sheet", "\n\n".join(r["question"] for r in picks[i:i + 4])) for i in range(300, 500, 4)]
    out += [("gsm8k_record", f"question: {r['question']}\nanswer: {r['answer'].split('####')[-1].strip()}")
            for r in picks[500:560]]
    rows = picks[560:700]
    for i in range(0, len(rows), 7):  # a markdown table of problems and their answers
        body = "\n".join(f"| {j + 1} | {r['question']} | {r['answer'].split('####')[-1].strip()} |"
                         for j, r in enumerate(rows[i:i + 7]))
        out.append(("gsm8k_table", f"| # | problem | answer |\n| --- | --- | --- |\n{body}"))
    for r in (json.loads(ln) for ln in (data / "sft" / "alpaca_seed_tasks.jsonl").read_text().splitlines()):
        inst = "\n\n".join(f"Input: {x['input']}\nOutput: {x['output']}" if x["input"] else f"Output: {x['output']}"
                           for x in r["instances"])
        out.append(("alpaca_seed", f"Task: {r['name']}\nInstruction: {r['instruction']}\n\n{inst}"))
    roles = json.loads((data / "sft" / "gpteacher_roleplay.json").read_text())
    for r in rng.sample(roles, 300):
        out.append(("gpteacher", "\n\n".join(x.strip() for x in (r["instruction"], r["input"], r["output"]) if x.strip())))
    with gzip.open(data / "preference" / "hh_rlhf_harmless_part1.jsonl.gz", "rt") as f:
        pairs = [json.loads(ln) for ln in f]
    for r in rng.sample(pairs, 400):
        out.append(("hh_dialogue", r[rng.choice(("chosen", "rejected"))].strip()))
    speeches = [b.strip() for b in (data / "pretrain" / "tinyshakespeare.txt").read_text().split("\n\n") if b.strip()]
    for _ in range(250):  # a scene: consecutive speeches
        i = rng.randrange(len(speeches) - 30)
        out.append(("shakespeare_scene", "\n\n".join(speeches[i:i + rng.randint(4, 30)])))
    out += [("shakespeare_speech", s) for s in rng.sample(speeches, 100)]
    return out


# ---------------------------------------------------------------- the standard library's source


def _stdlib_trees(rng: random.Random, n: int = 260) -> list[tuple[str, ast.Module]]:
    """Returns (module name, parsed tree) of n standard library modules; each function's text is its .source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "site-packages", "idlelib", "lib2to3", "tkinter", "turtledemo"}
    paths = sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))
    out = []
    for path in rng.sample(paths, min(n, len(paths))):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError):
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):  # whole lines of the def: enough for a code document
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                node.source = "".join(lines[node.lineno - 1:node.end_lineno])
        out.append((".".join(path.relative_to(root).with_suffix("").parts), tree))
    return out


def _functions(tree: ast.Module) -> list[ast.FunctionDef]:
    """Returns the public functions and methods of `tree` that carry a docstring."""
    return [n for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not n.name.startswith("_") and ast.get_docstring(n)]


def _summary(node) -> str:
    """Returns the first paragraph of a node's docstring, on one line."""
    return " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())


def _man_page(name: str, tree: ast.Module) -> str:
    """Returns a pydoc-like text page: NAME, DESCRIPTION, CLASSES, FUNCTIONS."""
    parts = [f"NAME\n    {name} - {_summary(tree)}", "DESCRIPTION\n" + "\n".join(
        "    " + ln for ln in (ast.get_docstring(tree) or "").splitlines())]
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and ast.get_docstring(n)]
    if classes:
        parts.append("CLASSES\n" + "\n\n".join(f"    class {c.name}\n     |  {_summary(c)}" for c in classes))
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and ast.get_docstring(n)]
    if funcs:
        parts.append("FUNCTIONS\n" + "\n\n".join(
            f"    {f.name}({ast.unparse(f.args)})\n" + "\n".join("        " + ln for ln in ast.get_docstring(f).splitlines())
            for f in funcs))
    return "\n\n".join(parts)


def _params(f: ast.FunctionDef) -> list[str]:
    return [a.arg for a in f.args.args + f.args.kwonlyargs if a.arg not in ("self", "cls")]


def _tool_text(funcs: list[ast.FunctionDef], module: str, rng: random.Random) -> str:
    """Returns a tool-use system prompt: each function as a tool with a JSON parameter schema."""
    tools = []
    for f in funcs:
        schema = {"type": "object", "properties": {p: {"type": "string", "description": f"The {p} argument."}
                                                   for p in _params(f)}, "required": _params(f)[:1]}
        tools.append(f"Tool name: {module}.{f.name}\nDescription: {_summary(f)}\nParameters: {json.dumps(schema)}")
    head = rng.choice(["You have access to the following tools. Call a tool when it helps answer the user.",
                       "The assistant can use these functions:", "Available tools:"])
    return head + "\n\n" + "\n\n".join(tools) + "\n\nAnswer the user's question, using the tools above if needed."


def _help_screen(f: ast.FunctionDef, module: str) -> str:
    """Returns the argparse help of a command line built from a function's parameters and docstring."""
    parser = argparse.ArgumentParser(prog=f"python -m {module} {f.name}", description=_summary(f),
                                     epilog=(ast.get_docstring(f) or "").split("\n\n", 1)[-1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for p in _params(f):
        parser.add_argument(f"--{p.replace('_', '-')}", metavar=p.upper(), help=f"the {p} passed to {f.name}")
    return parser.format_help()


def _record(f: ast.FunctionDef, module: str) -> str:
    """Returns a function's entry as key: value lines, as a JSON record printed for reading."""
    rec = {"module": module, "name": f.name, "signature": f"{f.name}({ast.unparse(f.args)})",
           "line": f.lineno, "summary": _summary(f)}
    return "\n".join(f"{k}: {v}" for k, v in rec.items())


def _stdlib_docs(rng: random.Random) -> list[tuple[str, str]]:
    trees = _stdlib_trees(rng)
    out = []
    for name, tree in trees:
        doc = ast.get_docstring(tree)
        if doc and len(doc) > 200:
            out.append(("module_doc", doc))
    for name, tree in trees:
        out.append(("man_page", _man_page(name, tree)))
    funcs = [(name, f) for name, tree in trees for f in _functions(tree)]
    for name, f in rng.sample(funcs, 400):
        out.append(("docstring", ast.get_docstring(f)))
    for name, f in rng.sample(funcs, 250):
        out.append(("code", f.source))
    for name, tree in trees:
        fs = _functions(tree)
        if len(fs) >= 2:
            out.append(("tools", _tool_text(rng.sample(fs, min(len(fs), rng.randint(2, 8))), name, rng)))
    for name, f in rng.sample(funcs, 200):
        out.append(("help_screen", _help_screen(f, name)))
    for name, tree in rng.sample(trees, 150):
        fs = _functions(tree)
        if fs:
            bullet = rng.choice(["- ", "* ", "• ", "1. "])
            out.append(("list", f"Functions of {name}:\n" + "\n".join(f"{bullet}{f.name}: {_summary(f)}" for f in fs[:40])))
    for name, tree in rng.sample(trees, 100):
        fs = _functions(tree)[:25]
        if fs:
            rows = "\n".join(f"| `{f.name}` | {_summary(f)} |" for f in fs)
            out.append(("table", f"| function | what it does |\n| --- | --- |\n{rows}"))
    for i in range(0, 600, 6):  # several records of one module in a row: templated text
        out.append(("records", "\n\n".join(_record(f, name) for name, f in funcs[i * 3:i * 3 + 6])))
    return out


def build(data: Path, seed: int = 0) -> list[tuple[str, str]]:
    """Returns (shape, text) of every corpus document: shared data, stdlib prose, spam and foreign text."""
    rng = random.Random(seed)
    docs = _shared_docs(data, rng) + _stdlib_docs(rng)
    docs += [("spam", t) for t in _spam_docs(60, rng)] + [("foreign", t) for t in _foreign_docs(40, rng)]
    return [(shape, _cut(text)) for shape, text in docs if text and text.strip()]


if __name__ == "__main__":
    from labelled_corpus import shared_data_dir

    corpus = build(shared_data_dir())
    print(len(corpus), "documents,", sum(len(t) for _, t in corpus), "chars", file=sys.stderr)
