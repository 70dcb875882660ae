"""The corpus a dedup resolve works over: its shards, where each starts in the global index, and
what every resolve task reports about itself."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.curate.run.workdir import Workdir


@dataclass(frozen=True)
class Group:
    """One dedup group of one phase: shard names and offsets [S + 1] into the global document index."""

    root: str
    phase: int
    shards: tuple[str, ...]
    offsets: tuple[int, ...]

    @property
    def workdir(self) -> Workdir:
        """Returns the run's work directory."""
        return Workdir(Path(self.root))

    def span(self, i: int) -> tuple[int, int]:
        """Returns the global index range [lo, hi) of shard i."""
        return self.offsets[i], self.offsets[i + 1]

    def run_dir(self, stage: int) -> Path:
        """Returns where the key runs of group stage `stage` are: the phase's for the first, pruned copies after."""
        wd = self.workdir
        return wd.phase_dir(self.phase) if stage == 0 else wd.stage_dir(self.phase, stage)


def peak_rss_mb() -> float:
    """Returns this process's peak resident memory in MiB."""
    try:
        # Linux: the high-water mark of this program's own memory; getrusage's would also count the
        # process it was started from, whose maximum survives exec
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)  # bytes on macOS, KiB elsewhere


def usage(t0: float) -> dict:
    """Returns what a task reports about itself: seconds since t0 and its process's peak memory."""
    return {"seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}
