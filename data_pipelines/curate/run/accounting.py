"""What a curation task reports about itself: its seconds and its process's peak memory."""

from __future__ import annotations

import resource
import sys
import time


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
