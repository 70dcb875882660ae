"""The corpus a dedup resolve works over: its shards and where each starts in the global index."""

from __future__ import annotations

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

