"""WARC input: the pages maxlm reads from a WARC file are the documents datatrove's WarcReader +
Trafilatura read from it (same ids, URLs, dates, texts), on pages of many shapes; `maxlm curate`
runs on .warc.gz input and names a file cut short by its record; a page past `input.warc_timeout_s`
is a bad record and the pages after it are read."""

from __future__ import annotations

import gc
import html
import io
import json
import pydoc
import random
import signal
import threading
from pathlib import Path

import pytest

warcio = pytest.importorskip("warcio")
pytest.importorskip("trafilatura")

from curate_outputs import read_output, read_removed
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from data_pipelines.curate.config import InputConfig
from data_pipelines.curate.inputs import list_inputs, read_documents
from maxlm.cli import main as cli_main
from maxlm.files.formats import BadRecord

PAGE = """<!DOCTYPE html><html><head><meta charset="{charset}"><title>{title}</title></head><body>
<header><nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav></header>
<main><article><h1>{title}</h1>
{body}
</article></main>
<footer><p>Copyright 2026 Example Site. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
</body></html>"""
NAV_ONLY = PAGE.format(charset="utf-8", title="Index", body="").replace("<h1>Index</h1>", "")


def _page(title: str, text: str, charset: str = "utf-8") -> str:
    """Returns an HTML page with the text's paragraphs (blank-line separated) in <p>s, lists and pre blocks kept."""
    blocks = []
    for para in text.split("\n\n"):
        if para.strip():
            inner = html.escape(para)
            blocks.append(f"<pre>{inner}</pre>" if para.startswith((" ", "\t")) or "{" in para else f"<p>{inner}</p>")
    return PAGE.format(charset=charset, title=html.escape(title), body="\n".join(blocks))


def _pages(shared_data: Path) -> list[tuple[str, bytes, str | None]]:
    """Returns (url, body bytes, content type) of varied pages: two of each shape of the parity corpus,
    pydoc's HTML of stdlib modules, a Latin-1 page, a navigation-only page, a JSON and a PNG response."""
    from parity_corpus import build

    rng = random.Random(3)
    by_shape: dict[str, list[str]] = {}
    for shape, text in build(shared_data):
        by_shape.setdefault(shape, []).append(text)
    pages = []
    for shape, texts in sorted(by_shape.items()):
        for i, text in enumerate(rng.sample(texts, 2)):
            pages.append((f"https://example.org/{shape}/{i}", _page(f"{shape} {i}", text).encode(), "text/html; charset=utf-8"))
    for name in ("json", "textwrap", "shlex", "bisect", "heapq", "fractions"):
        doc = pydoc.HTMLDoc().page(name, pydoc.HTMLDoc().document(__import__(name)))
        pages.append((f"https://docs.example.org/{name}.html", doc.encode(), "text/html"))
    latin = _page("Café crème", "Le café crème est servi à la française, très chaud.\n\n" * 6, charset="iso-8859-1")
    pages.append(("https://example.fr/cafe", latin.encode("latin-1"), "text/html; charset=ISO-8859-1"))
    pages.append(("https://example.org/index", NAV_ONLY.encode(), "text/html"))
    pages.append(("https://example.org/api", json.dumps({"text": "not a page"}).encode(), "application/json"))
    pages.append(("https://example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image/png"))
    return pages


def write_warc(path: Path, pages: list[tuple[str, bytes, str | None]]) -> None:
    """Writes a gzipped WARC: a warcinfo record, then per page a request and its response (with its payload type)."""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "maxlm tests"}))
        for url, body, ctype in pages:
            req = StatusAndHeaders("GET / HTTP/1.1", [("Host", url.split("/")[2])], is_http_request=True)
            w.write_record(w.create_warc_record(url, "request", http_headers=req))
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            headers = {"WARC-Identified-Payload-Type": ctype.split(";")[0]} if "png" not in ctype else {}
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                                warc_headers_dict=headers))


@pytest.fixture(scope="module")
def warc_dir(tmp_path_factory, shared_data) -> tuple[Path, list]:
    d = tmp_path_factory.mktemp("warc")
    pages = _pages(shared_data)
    write_warc(d / "crawl.warc.gz", pages)
    return d, pages


def _datatrove_docs(folder: Path) -> dict[str, tuple[str, str, str]]:
    """Returns {id: (text, url, date)} of datatrove's WarcReader + Trafilatura (its duplicate cache off, as maxlm's)."""
    pytest.importorskip("magic")  # datatrove's reader imports python-magic and cchardet
    pytest.importorskip("cchardet")
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    docs = Trafilatura(deduplicate=False, timeout=30).run(WarcReader(str(folder), glob_pattern="*.warc.gz").run())
    return {d.id: (d.text, d.metadata["url"], d.metadata["date"]) for d in docs}


def test_warc_pages_are_the_documents_datatrove_reads(warc_dir):
    folder, pages = warc_dir
    (f,) = list_inputs(str(folder / "*.warc.gz"))
    items = list(read_documents(f, InputConfig()))
    docs = [d for d in items if not isinstance(d, BadRecord)]
    bad = [d for d in items if isinstance(d, BadRecord)]
    theirs = _datatrove_docs(folder)
    mine = {d.id: (d.text, d.meta["url"], d.meta["date"]) for d in docs}
    assert len(mine) == len(docs) >= len(pages) - 4  # every page but the JSON, the PNG and the navigation-only one
    assert mine.keys() == theirs.keys()
    differ = [i for i in mine if mine[i] != theirs[i]]
    assert not differ, f"{len(differ)} of {len(mine)} pages differ, e.g. {mine[differ[0]]!r} vs {theirs[differ[0]]!r}"
    assert {d.meta["url"] for d in docs} >= {"https://example.fr/cafe", "https://docs.example.org/json.html"}
    assert "Le café crème est servi" in next(d.text for d in docs if d.meta["url"] == "https://example.fr/cafe")
    # the navigation-only page is a bad record with its reason and record number, not a silent drop
    (nav,) = bad
    assert "no main text" in nav.problem and nav.where.startswith("crawl.warc.gz:")
    assert all(d.where.startswith("crawl.warc.gz:") and "Copyright 2026" not in d.text for d in docs)


PIPELINE = """
stages:
  - length: {min_words: 5}
"""


def test_curate_reads_warc_and_names_a_cut_file_by_record(warc_dir, tmp_path, capsys):
    folder, pages = warc_dir
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.warc.gz").write_bytes((folder / "crawl.warc.gz").read_bytes())
    write_warc(tmp_path / "b.warc.gz", pages[::-1])  # another crawl: new record ids
    blob = (tmp_path / "b.warc.gz").read_bytes()
    (inp / "b.warc.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "p.yaml").write_text(PIPELINE)
    assert cli_main(["curate", str(tmp_path / "p.yaml"), "--input", str(inp / "*.warc.gz"), "--output", str(tmp_path / "out"), "-q"]) == 0
    assert f"{inp / 'b.warc.gz'}: cut at record " in capsys.readouterr().err
    a_ids = {d.id for d in read_documents(list_inputs(str(inp / "a.warc.gz"))[0], InputConfig()) if not isinstance(d, BadRecord)}
    out = read_output(tmp_path / "out")
    assert all(r["url"].startswith("https://") and r["date"] and r["text"] for r in out)
    kept_a = {r["id"] for r in out if r["id"] in a_ids}
    assert len(a_ids) - 2 <= len(kept_a) < len(out)  # a few very short pages may fall to the length stage; b's first half is there
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["cut_inputs"] == 1
    assert any(r["stage"] == "input" and "no main text" in r["reason"] for r in read_removed(tmp_path / "out"))


def test_warc_needs_its_extra_named(monkeypatch, tmp_path):
    import builtins

    from maxlm.errors import MaxlmError

    real = builtins.__import__

    def no_trafilatura(name, *a, **k):
        if name.startswith("trafilatura"):
            raise ImportError(name=name)
        return real(name, *a, **k)

    (tmp_path / "x.warc").write_bytes(b"")
    monkeypatch.setattr(builtins, "__import__", no_trafilatura)
    with pytest.raises(MaxlmError, match=r"pip install 'maxlm\[warc\]'"):
        list(read_documents(list_inputs(str(tmp_path / "x.warc"))[0], InputConfig()))


def test_a_warc_cut_anywhere_ends_in_one_stream_cut(warc_dir, tmp_path):
    from maxlm.files.formats import StreamCut

    folder, _ = warc_dir
    blob = (folder / "crawl.warc.gz").read_bytes()
    whole = [d.id for d in read_documents(list_inputs(str(folder / "crawl.warc.gz"))[0], InputConfig()) if not isinstance(d, BadRecord)]
    for k in range(1, 40):  # inside a record's body, inside a header, between gzip members
        (tmp_path / "cut.warc.gz").write_bytes(blob[: len(blob) * k // 40])
        items = list(read_documents(list_inputs(str(tmp_path / "cut.warc.gz"))[0], InputConfig()))
        assert isinstance(items[-1], StreamCut) and not any(isinstance(d, StreamCut) for d in items[:-1]), k
        ids = [d.id for d in items if not isinstance(d, BadRecord)]
        assert ids == whole[: len(ids)], k  # what was read before the cut is whole and in order


# CPU times measured on a loaded 2-core machine: a short page takes trafilatura 2-6 ms, the long one
# 0.13-0.25 s (cut off at the tight limit within a few ms of it); 0.03 s sits 5x or more above the one
# and 4x or more below the other, and the 1 s default 4x or more above the long page.
TIGHT_S = 0.03
SHORT = "The cafe on the corner serves coffee, tea and small cakes every morning of the week.\n\n" * 3
LONG = "\n\n".join(f"Paragraph {i} of a very long page, with words enough to count as text." for i in range(2000))
SLOW_URLS = ["https://example.org/before", "https://example.org/long", "https://example.org/after"]


@pytest.fixture(scope="module")
def slow_warc(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "slow.warc.gz"
    texts = [("Before", SHORT), ("Long", LONG), ("After", SHORT.replace("cafe", "bakery"))]
    write_warc(path, [(url, _page(title, text).encode(), "text/html") for url, (title, text) in zip(SLOW_URLS, texts)])
    return path


@pytest.fixture
def own_cpu_time():
    """Charges each page only its own CPU time: trafilatura set up first (its first page in a process costs
    a few ms more), and the test process's heap frozen out of garbage collection (a full collection of
    it has taken 0.2-0.45 s here, and would count against whichever page it interrupted)."""
    from trafilatura import extract

    extract(_page("Warm-up", SHORT))
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def test_a_page_past_the_time_limit_is_a_bad_record_and_the_next_is_read(slow_warc, own_cpu_time):
    (f,) = list_inputs(str(slow_warc))
    handler = signal.getsignal(signal.SIGPROF)
    default = list(read_documents(f, InputConfig()))
    assert [d.meta["url"] for d in default] == SLOW_URLS  # within 1 s, the long page is text like any other
    assert "Paragraph 1999 of a very long page" in default[1].text
    tight = list(read_documents(f, InputConfig(warc_timeout_s=TIGHT_S)))
    assert [type(d) for d in tight] == [type(default[0]), BadRecord, type(default[2])]
    # warcinfo is record 0, then a request and a response per page: the long page's response is record 4
    assert (tight[1].problem, tight[1].where) == (f"extraction took more than {TIGHT_S:g} s of CPU time (input.warc_timeout_s)", "slow.warc.gz:4")
    assert [(d.id, d.text) for d in (tight[0], tight[2])] == [(d.id, d.text) for d in (default[0], default[2])]
    # no timer left to go off later, and SIGPROF's handler is the one there was before
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0) and signal.getsignal(signal.SIGPROF) is handler


def test_off_the_main_thread_pages_are_extracted_without_a_limit(slow_warc):
    (f,) = list_inputs(str(slow_warc))
    items = []  # only the main thread may set a signal's handler: another one reads every page unbounded
    reader = threading.Thread(target=lambda: items.extend(read_documents(f, InputConfig(warc_timeout_s=TIGHT_S))))
    reader.start()
    reader.join()
    assert [d.meta["url"] for d in items] == SLOW_URLS


def test_curate_workers_time_out_pages_by_the_config(slow_warc, tmp_path, own_cpu_time):
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("a.warc.gz", "b.warc.gz"):  # two inputs: two pool workers (forked), each timing its own pages
        (inp / name).write_bytes(slow_warc.read_bytes())
    (tmp_path / "p.yaml").write_text(f"input: {{warc_timeout_s: {TIGHT_S}}}\nworkers: 2\n{PIPELINE}")
    assert cli_main(["curate", str(tmp_path / "p.yaml"), "--input", str(inp / "*.warc.gz"), "--output", str(tmp_path / "out"), "-q"]) == 0
    assert sorted(r["url"] for r in read_output(tmp_path / "out")) == sorted(SLOW_URLS[::2] * 2)
    timed_out = [r for r in read_removed(tmp_path / "out") if f"more than {TIGHT_S:g} s of CPU time (input.warc_timeout_s)" in r["reason"]]
    assert len(timed_out) == 2 and {r["stage"] for r in timed_out} == {"input"}
