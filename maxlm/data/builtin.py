"""`builtin:stdlib-docs`: an English corpus that needs no download, taken from the running
Python's standard library *source* (docstrings, comment blocks, pydoc's reference topics).

Files are parsed with `ast`, never imported (`this` and `antigravity` act on import). Each
docstring, comment block or topic is one document. A file goes wholly to the train or the
eval split (`builtin:stdlib-docs@eval`, about 2% of files) by a hash of its path, and exact
duplicates are dropped, so the two splits share no document. The corpus is written once
as jsonl under `cache_dir("builtin")` and read from there like any other source.
The verifiable tasks made on the spot (`builtin:arithmetic`, `builtin:sort`, each with an
`@eval` split) live in their own modules; GENERATED maps their names here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import sysconfig
from pathlib import Path

from maxlm.data import arithmetic, sorting
from maxlm.files.atomic import write_atomic
from maxlm.files.cache import cache_dir
from maxlm.errors import MaxlmError

SPLITS = {"builtin:stdlib-docs": "train", "builtin:stdlib-docs@eval": "eval"}
VERSION = 2  # bump when extraction changes; it names the cache files
EVAL_EVERY = 50  # one file in 50 is held out
MIN_CHARS = 64
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
# The verifiable tasks made on the spot: builtin name -> the function writing (once) and returning its jsonl.
GENERATED = {
    **{name: arithmetic.arithmetic_path for name in arithmetic.NAMES},
    **{name: sorting.sort_path for name in sorting.NAMES},
}
_WORD = re.compile(r"[A-Za-z][a-z]*[.,;:!?)]*$|\(?[A-Za-z][a-z]*$")


def is_builtin(path: str) -> bool:
    """Returns whether a source path names a builtin corpus."""
    return path.startswith("builtin:")


def builtin_path(name: str) -> str:
    """Returns the jsonl path of builtin corpus `name`, building the corpus on first use."""
    if name in GENERATED:
        return GENERATED[name](name)
    if name not in SPLITS:
        raise MaxlmError(f"unknown builtin corpus {name!r}; available: {', '.join([*SPLITS, *GENERATED])}")
    paths = {split: _cache_path(split) for split in ("train", "eval")}
    if not all(p.exists() for p in paths.values()):
        print(f"building {name.split('@')[0]} from {_stdlib()} (once) ...", file=sys.stderr, flush=True)
        splits = stdlib_documents()
        for split, path in paths.items():
            lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in splits[split])
            write_atomic(path, lambda f, data=lines.encode("utf-8"): f.write(data))
        mb = sum(p.stat().st_size for p in paths.values()) / 1e6
        print(f"builtin corpus: {len(splits['train'])} train / {len(splits['eval'])} eval documents, "
              f"{mb:.1f} MB in {paths['train'].parent}", file=sys.stderr, flush=True)
    return str(paths[SPLITS[name]])


def _cache_path(split: str) -> Path:
    v = sys.version_info
    return cache_dir("builtin") / f"stdlib-docs-py{v.major}.{v.minor}.{v.micro}-v{VERSION}-{split}.jsonl"


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents() -> dict[str, list[str]]:
    """Returns {"train": texts, "eval": texts} extracted from the standard library source."""
    root = _stdlib()
    files = sorted(
        p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])
    )
    seen: set[str] = set()
    out: dict[str, list[str]] = {"train": [], "eval": []}
    # Train files first, so a text found in both splits stays in train only.
    rel = {p: p.relative_to(root).as_posix() for p in files}
    is_eval = {p: int(hashlib.sha1(rel[p].encode()).hexdigest()[:8], 16) % EVAL_EVERY == 0 for p in files}
    for p in sorted(files, key=lambda p: (is_eval[p], rel[p])):
        for text in documents_of_source(p.read_bytes(), topics=rel[p].startswith("pydoc_data/")):
            if text not in seen:
                seen.add(text)
                out["eval" if is_eval[p] else "train"].append(text)
    return out


def documents_of_source(source: bytes, topics: bool = False) -> list[str]:
    """Returns the cleaned prose documents of one Python source file (none if it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    docs, string_lines = [], set()
    for node in ast.walk(tree):  # one walk: parsing and walking are most of the build time
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)  # clean: inspect.cleandoc's dedent
            if doc:
                docs.append(clean_docstring(doc))
        elif isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) and node.end_lineno:
            string_lines.update(range(node.lineno + 1, node.end_lineno + 1))
        elif topics and isinstance(node, ast.Dict):
            # pydoc_data/topics.py holds the language reference's topics as dict values.
            docs += [clean_docstring(v.value) for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    docs += comment_blocks(source, string_lines)
    return [d for d in docs if len(d) >= MIN_CHARS]


def clean_docstring(doc: str) -> str:
    """Returns a docstring (or topic) without doctest examples, blank-line runs collapsed."""
    kept, in_example = [], False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_example = True  # the prompt, its continuations and expected output run to a blank line
        elif not stripped:
            in_example = False
        if not in_example:
            kept.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def comment_blocks(source: bytes, string_lines: set[int]) -> list[str]:
    """Returns runs of whole-line `#` comments that read as prose, each joined into one paragraph.

    `string_lines` are the lines inside multi-line strings, where '#' starts no comment.
    """
    blocks, current = [], []
    for lineno, raw in enumerate(source.decode("utf-8", "replace").splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") and lineno not in string_lines and lineno > 2:  # 1-2: shebang, coding
            current.append(line.lstrip("#").strip())
            continue
        if current:
            blocks.append(" ".join(w for w in current if w))
            current = []
    if current:
        blocks.append(" ".join(w for w in current if w))
    return [b for b in blocks if _reads_as_prose(b)]


def _reads_as_prose(text: str) -> bool:
    # Commented-out code and banner lines are mostly not words.
    words = text.split()
    return len(words) >= 8 and sum(bool(_WORD.match(w)) for w in words) >= 0.7 * len(words)
