"""Sources: a `SourceConfig` (file, glob, `builtin:` corpus or `seqio:` task) opened as one
validated random-access list of texts, the shape Grain's `MapDataset.source` takes."""

from __future__ import annotations

import bisect
import glob
import os
from collections.abc import Iterator, Sequence

from maxlm.config import DataConfig, SourceConfig
from maxlm.data import builtin
from maxlm.errors import MaxlmError
from maxlm.files.readers import open_file

SEQIO_PREFIX = "seqio:"


class Documents:
    """The texts of one source's files, end to end (a `grain.sources.RandomAccessDataSource`)."""

    def __init__(self, name: str, readers: Sequence):
        self.name = name
        self.readers = list(readers)
        self._ends = []  # _ends[f]: documents in readers[:f + 1]
        total = 0
        for r in self.readers:
            total += len(r)
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, i: int) -> str:
        f = bisect.bisect_right(self._ends, i)
        return self.readers[f][i - (self._ends[f - 1] if f else 0)]

    @property
    def skipped(self) -> int:
        """Records dropped as bad (on_bad_record=skip) across the files."""
        return sum(r.skipped for r in self.readers)

    def __repr__(self) -> str:
        return f"Documents({self.name!r}, {len(self)} documents in {len(self.readers)} files)"


def expand(path: str) -> list[str]:
    """Returns the files a source path names: a builtin corpus, one file, or a glob's matches (sorted)."""
    if builtin.is_builtin(path):
        return [builtin.builtin_path(path)]
    if path.startswith(SEQIO_PREFIX):
        from maxlm.data.seqio_source import seqio_path

        return [seqio_path(path[len(SEQIO_PREFIX):])]
    full = os.path.expanduser(path)
    if glob.has_magic(full):
        files = sorted(f for f in glob.glob(full, recursive=True) if os.path.isfile(f))
        if not files:
            raise MaxlmError(f"{path}: no file matches this pattern")
        return files
    if os.path.isdir(full):
        raise MaxlmError(f"{path}: is a directory; name its files with a glob such as {os.path.join(path, '*.jsonl')}")
    if not os.path.isfile(full):
        raise MaxlmError(f"{path}: file not found")
    return [full]


def open_source(src: SourceConfig, on_bad_record: str = "error") -> Documents:
    """Returns the validated texts of one source; raises MaxlmError if it has none."""
    if not src.path:
        raise MaxlmError("data source with an empty path; expected a file, a glob, builtin:stdlib-docs or seqio:<task>")
    readers = [open_file(f, src.format, src.text_key, on_bad_record) for f in expand(src.path)]
    docs = Documents(src.path, readers)
    if len(docs) == 0:
        raise MaxlmError(f"{src.path}: no documents" + (f" ({docs.skipped} bad records skipped)" if docs.skipped else ""))
    return docs


def row_slice(spec: str, n: int, name: str) -> slice:
    """Returns the slice `spec` ("start:stop", ints or percents of n) names; raises MaxlmError when malformed."""
    if not spec:
        return slice(None)

    def bound(part: str) -> int | None:
        part = part.strip()
        if not part:
            return None
        try:
            return round(n * float(part[:-1]) / 100) if part.endswith("%") else int(part)
        except ValueError:
            raise MaxlmError(f"{name}: rows {spec!r}: expected start:stop with integers or percents, e.g. 0:90% or 1000:") from None

    if spec.count(":") != 1:
        raise MaxlmError(f"{name}: rows {spec!r}: expected start:stop with integers or percents, e.g. 0:90% or 1000:")
    start, stop = (bound(p) for p in spec.split(":"))
    return slice(start, stop)


def train_sources(data: DataConfig) -> list[SourceConfig]:
    """Returns data.train_files plus data.seqio_task (weight 1) as one list of sources."""
    extra = [SourceConfig(path=SEQIO_PREFIX + data.seqio_task)] if data.seqio_task else []
    return list(data.train_files) + extra


def iter_texts(sources: Sequence[SourceConfig], on_bad_record: str = "error") -> Iterator[str]:
    """Returns the texts of all sources, interleaved round-robin so a capped read samples each one."""
    opened = [open_source(s, on_bad_record) for s in sources]  # validate all before yielding any
    cursors = [iter(range(len(d))) for d in opened]
    while opened:
        for d, c in list(zip(opened, cursors)):
            i = next(c, None)
            if i is None:
                opened.remove(d)
                cursors.remove(c)
            else:
                yield d[i]
