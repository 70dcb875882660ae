"""Per-stage counters: documents and bytes in/out, removal reasons, examples, sampled statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MAX_EXAMPLES = 5  # removed-text examples kept per reason
EXAMPLE_CHARS = 300
MAX_SAMPLES = 500  # values kept per statistic per shard for histograms (reservoir sample)
MAX_MERGED_SAMPLES = 20_000  # values kept per statistic for the whole run's histograms
_MASK64 = (1 << 64) - 1


@dataclass
class StageStats:
    """What one stage did to one shard (or, merged, to the whole run)."""

    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    removed: dict[str, int] = field(default_factory=dict)  # reason -> documents removed
    examples: dict[str, list[dict]] = field(default_factory=dict)  # reason -> [{id, where, text}]
    counters: dict[str, int] = field(default_factory=dict)  # e.g. PII replacements by type
    samples: dict[str, list[float]] = field(default_factory=dict)  # statistic -> sampled values
    seen: dict[str, int] = field(default_factory=dict)  # statistic -> values offered (reservoir)

    def value(self, name: str, v: float) -> None:
        """Records one value of statistic `name` (kept in a bounded reservoir sample)."""
        seen = self.seen.get(name, 0) + 1
        self.seen[name] = seen
        bucket = self.samples.setdefault(name, [])
        if len(bucket) < MAX_SAMPLES:
            bucket.append(float(v))
        else:
            # reservoir sampling with a hashed counter instead of an RNG: reruns give the same
            # report, and no generator state has to travel in the shard's marker
            x = (seen * 0x9E3779B97F4A7C15) & _MASK64
            j = (x ^ (x >> 29)) % seen
            if j < MAX_SAMPLES:
                bucket[j] = float(v)

    def count(self, name: str, n: int = 1) -> None:
        """Adds `n` to counter `name`."""
        self.counters[name] = self.counters.get(name, 0) + n

    def remove(self, reason: str, doc_id, where: str, text: str, **extra) -> None:
        """Records one removed document under `reason`, keeping the first few as examples."""
        self.removed[reason] = self.removed.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append({"id": doc_id, "where": where, "text": text[:EXAMPLE_CHARS], **extra})

    def merge(self, other: "StageStats") -> None:
        """Adds `other` into this one."""
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.seconds += other.seconds
        for k, v in other.removed.items():
            self.removed[k] = self.removed.get(k, 0) + v
        for k, v in other.examples.items():
            mine = self.examples.setdefault(k, [])
            mine.extend(v[: MAX_EXAMPLES - len(mine)])
        for k, v in other.counters.items():
            self.counters[k] = self.counters.get(k, 0) + v
        for k, v in other.samples.items():
            # merged samples only feed histograms: concatenate, then thin evenly past the cap
            mine = self.samples.setdefault(k, [])
            mine.extend(v)
            if len(mine) > MAX_MERGED_SAMPLES:
                step = len(mine) / MAX_MERGED_SAMPLES
                self.samples[k] = [mine[int(i * step)] for i in range(MAX_MERGED_SAMPLES)]
            self.seen[k] = self.seen.get(k, 0) + other.seen.get(k, 0)

    def to_dict(self) -> dict:
        """Returns the stats as plain JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "StageStats":
        """Returns StageStats rebuilt from `to_dict` output."""
        return cls(**raw)
