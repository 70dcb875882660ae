"""WARC files (.warc, .warc.gz: what Common Crawl publishes) to documents: the main text of each
HTML response, extracted by trafilatura, with the record's id, URL and date.

It reads what datatrove's `WarcReader` + `Trafilatura` recipe reads, by the same rules: response
and conversion (WET) records only; the payload type from `WARC-Identified-Payload-Type` must be
HTML or XHTML (or plain text in a WET conversion); the bytes are UTF-8 or else the detected
charset; trafilatura's `extract` with `favor_precision=True, include_comments=False`. Two
deliberate differences:
- trafilatura's `deduplicate=False`: its duplicate-paragraph cache is global to the process, so
  with it on, a page's text would depend on which pages the same worker extracted before (and so
  on the worker count). Duplicates are the dedup stages' job.
- a record without a payload type is told by its HTTP `Content-Type` header, not by libmagic
  sniffing the bytes (no system library needed; the server's own word for what it sent).
A WET conversion is text already and is kept as it is. A page with no main text, or whose bytes decode in no charset, is a bad record with its reason
(datatrove drops it silently); a file cut short ends with one StreamCut.

Each page's extraction has datatrove's per-document time limit (`input.warc_timeout_s`, 1 s by
default); a page past it is a bad record too (datatrove drops it with a logged warning). Two
differences in how: datatrove runs trafilatura in a child process that it kills, here a timer signal
interrupts trafilatura in the worker itself (no pickling of every page through a pipe, no second
process per worker; the price: one long call inside lxml's C code ends only when it returns to
Python); and the limit is CPU time, not wall-clock time, so which pages time out does not depend on
how loaded the machine is or how many workers share it (as with `deduplicate=False` above: a page's
outcome should not depend on what else runs beside it).
"""

from __future__ import annotations

import signal
import threading
import zlib
from collections.abc import Iterator

from maxlm.errors import MaxlmError
from maxlm.files.formats import BadRecord, StreamCut

EXTENSIONS = (".warc", ".warc.gz")
HTML_TYPES = ("text/html", "application/xhtml+xml")


def is_warc(path: str) -> bool:
    """Returns whether `path` is named like a WARC file."""
    return str(path).lower().endswith(EXTENSIONS)


def _libraries():
    """Returns (warcio's ArchiveIterator, trafilatura's extract), or raises naming the extra to install."""
    try:
        from trafilatura import extract
        from warcio.archiveiterator import ArchiveIterator
    except ImportError as e:
        raise MaxlmError(f"reading WARC input needs warcio and trafilatura ({e.name} is missing): pip install 'maxlm[warc]'") from e
    return ArchiveIterator, extract


def payload_type(record) -> str | None:
    """Returns the record's payload MIME type: WARC-Identified-Payload-Type, else the HTTP Content-Type, lower case."""
    mime = record.rec_headers.get_header("WARC-Identified-Payload-Type")
    if mime is None and record.http_headers is not None:
        mime = record.http_headers.get_header("Content-Type")
    return mime.split(";")[0].strip().lower() if mime else None


def wanted(record) -> bool:
    """Returns whether a record is a page to extract: an HTML response, or a WET conversion of one."""
    if record.rec_type not in ("response", "conversion"):
        return False
    mime = payload_type(record)
    if record.rec_type == "conversion":
        return mime is None or mime in HTML_TYPES or mime == "text/plain"
    return mime in HTML_TYPES


def decode(content: bytes, record) -> str | None:
    """Returns the page's text: UTF-8, else the HTTP header's charset, else the detected one; None if none decodes it."""
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        pass
    candidates = []
    if record.http_headers is not None:
        for part in (record.http_headers.get_header("Content-Type") or "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                candidates.append(value.strip("\"'"))
    from charset_normalizer import from_bytes

    best = from_bytes(content).best()
    if best is not None:
        candidates.append(best.encoding)
    for charset in candidates:
        try:
            return content.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    return None


class _OutOfTime(BaseException):
    """The timer's interrupt: not an Exception, since trafilatura catches Exception around its fallback extractors."""


def timer_usable() -> bool:
    """Returns whether this thread may time a page with a CPU-time timer (SIGPROF): POSIX, the main thread, none running."""
    return (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_PROF)[0] == 0)


def extract_main_text(extract, html: str, seconds: float) -> str | None:
    """Returns trafilatura's main text of `html` (None if it finds none); raises TimeoutError past `seconds` of CPU time."""
    options = {"favor_precision": True, "include_comments": False, "deduplicate": False}
    if not timer_usable():
        # only the main thread may set a signal's handler: a pool worker runs its shards there; where a Ray
        # worker or an embedding app runs them on another thread, or a timer not ours to reset is running
        # (a sampling profiler's), the page is extracted without a limit rather than not at all
        return extract(html, **options)
    armed = True

    def on_timer(signum, frame):
        if armed:  # a signal still pending after the page finished is no longer about it
            raise _OutOfTime

    previous = signal.signal(signal.SIGPROF, on_timer)
    try:
        # the process's CPU time (all its threads: in a worker only this one is busy meanwhile); a page that
        # hangs hangs in a loop, trafilatura having no I/O to wait on
        signal.setitimer(signal.ITIMER_PROF, seconds)
        text = extract(html, **options)
        armed = False
        return text
    except _OutOfTime:
        raise TimeoutError(f"extraction took more than {seconds:g} s of CPU time") from None
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def gzip_tail_complete(path: str, offset: int) -> bool:
    """Returns whether every gzip member of `path` from byte `offset` on (a record's start) ends whole."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    while data:  # one member per record: each decompresses one record's bytes
        member = zlib.decompressobj(wbits=31)
        try:
            member.decompress(data)
        except zlib.error:
            return False
        if not member.eof:
            return False
        data = member.unused_data
    return True


def read_warc(path: str, name: str, timeout_s: float) -> Iterator[tuple[int, dict | BadRecord]]:
    """Yields (record number, {"text", "id", "url", "date"}) for each page of one WARC file; a BadRecord for
    a page with no text or whose extraction takes over `timeout_s`; a StreamCut where the file breaks off.
    Record numbers count every record from 0."""
    ArchiveIterator, extract = _libraries()
    index, offset = -1, 0
    with open(path, "rb") as fh:
        archive = ArchiveIterator(fh)
        records = iter(archive)
        while True:
            index += 1
            try:
                record = next(records)
                content = record.content_stream().read() if wanted(record) else None
                while content is None and record.raw_stream.read(1 << 16):
                    pass  # a skipped record is read through too (warcio would), so a cut in it shows
                cut = "is cut short" if record.raw_stream.limit > 0 else ""  # fewer bytes than its Content-Length
                offset = archive.get_record_offset()  # reads the record to its end: after its content
            except StopIteration:
                index -= 1
                break
            except Exception as e:  # noqa: BLE001 - warcio fails in assorted ways (ArchiveLoadFailed, AttributeError) on a cut header
                cut = f"cannot be read ({type(e).__name__}: {e})"
            if cut:
                yield index, StreamCut(f"unreadable from here on: record {index} {cut}", f"{name}:{index}")
                return
            if content is None:
                continue
            where = f"{name}:{index}"
            html = decode(content, record)
            if html is None:
                yield index, BadRecord("the page's bytes decode in no charset (UTF-8, its header's or a detected one)", where)
                continue
            try:
                text = html if record.rec_type == "conversion" else extract_main_text(extract, html, timeout_s)
            except TimeoutError as e:
                yield index, BadRecord(f"{e} (input.warc_timeout_s)", where)
                continue
            if not text:
                yield index, BadRecord("no main text in the page (trafilatura extracted nothing)", where)
                continue
            headers = record.rec_headers
            yield index, {"text": text, "id": headers.get_header("WARC-Record-ID"),
                          "url": headers.get_header("WARC-Target-URI"), "date": headers.get_header("WARC-Date")}
    # warcio ends quietly where a gzip member breaks off between records: the members after the last record say so
    if path.lower().endswith(".gz") and not gzip_tail_complete(path, offset):
        yield index + 1, StreamCut(f"unreadable from here on: the gzip stream breaks off after record {index}", f"{name}:{index + 1}")
