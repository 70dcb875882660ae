"""The work directory of a curation run: where each of its files lives under --output DIR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maxlm.files.writers import SUFFIX


@dataclass(frozen=True)
class Workdir:
    """Paths under DIR: final shards at the top, removed/ records, _work/ for resumable state."""

    root: Path

    @property
    def work(self) -> Path:
        """Returns DIR/_work: resumable state, markers and intermediate shards."""
        return self.root / "_work"

    @property
    def manifest(self) -> Path:
        """Returns the file naming the pipeline fingerprint and inputs this DIR belongs to."""
        return self.work / "manifest.json"

    def phase_dir(self, phase: int) -> Path:
        """Returns the directory of one phase's markers, intermediate docs and spilled keys."""
        return self.work / f"p{phase}"

    def shard_done(self, phase: int, shard: str) -> Path:
        """Returns the marker written (atomically, last) when a shard finished a phase."""
        return self.phase_dir(phase) / f"{shard}.done.json"

    def docs(self, phase: int, shard: str) -> Path:
        """Returns the intermediate documents a phase hands to the next one."""
        return self.phase_dir(phase) / f"{shard}.docs.jsonl.zst"

    def ids(self, phase: int, shard: str) -> Path:
        """Returns the ids of the intermediate documents, in order (read to name duplicate_of)."""
        return self.phase_dir(phase) / f"{shard}.ids.jsonl.zst"

    def resolve_dir(self, phase: int) -> Path:
        """Returns the directory of the dedup decisions made after `phase`."""
        return self.work / f"r{phase}"

    def resolve_done(self, phase: int) -> Path:
        """Returns the marker written when the dedup after `phase` is resolved."""
        return self.resolve_dir(phase) / "done.json"

    def stage_dir(self, phase: int, stage: int) -> Path:
        """Returns the directory of one group stage's resolve: key runs, edges, labels, decisions."""
        return self.resolve_dir(phase) / f"s{stage}"

    def step_done(self, phase: int, stage: int, step: str) -> Path:
        """Returns the marker written when every task of one resolve step of a stage finished."""
        return self.stage_dir(phase, stage) / f"{step}.done.json"

    def edges(self, phase: int, stage: int, part: int) -> Path:
        """Returns the duplicate edges [2, E] (both directions, sorted by source) found in one key range."""
        return self.stage_dir(phase, stage) / f"edges-{part:05d}.i64"

    def labels(self, phase: int, stage: int, round_: int, shard: str) -> Path:
        """Returns a shard's component labels (smallest global index reached so far) after one round."""
        return self.stage_dir(phase, stage) / f"cc{round_}" / f"{shard}.labels.i64"

    def messages(self, phase: int, stage: int, round_: int, shard: str) -> Path:
        """Returns the (node, label) messages [2, M], sorted by node, a shard sent in one round."""
        return self.stage_dir(phase, stage) / f"cc{round_}" / f"{shard}.msgs.i64"

    def decisions(self, phase: int, stage: int, shard: str) -> Path:
        """Returns a shard's decisions through group stage `stage`: removing stage and duplicate_of index."""
        return self.stage_dir(phase, stage) / f"{shard}.decisions.npz"

    def roots(self, phase: int, stage: int, shard: str) -> Path:
        """Returns the sorted global indices of the kept documents a shard's duplicates of one stage point at."""
        return self.stage_dir(phase, stage) / f"{shard}.roots.i64"

    def adjacency(self, phase: int, stage: int, shard: str) -> Path:
        """Returns a shard's duplicate edges [2, E] (source in the shard, sorted; other end), gathered once."""
        return self.stage_dir(phase, stage) / f"{shard}.adj.i64"

    def answers(self, phase: int, owner: str, asker: str) -> Path:
        """Returns the [global index, id] pairs shard `owner` looked up for shard `asker`."""
        return self.resolve_dir(phase) / "ids" / f"{owner}.for.{asker}.jsonl.zst"

    def removals(self, phase: int, shard: str) -> Path:
        """Returns the dedup decisions for one shard: [local index, group stage, duplicate_of]."""
        return self.resolve_dir(phase) / f"{shard}.removed.jsonl.zst"

    def output(self, shard: str, fmt: str) -> Path:
        """Returns the final curated shard file."""
        return self.root / f"{shard}{SUFFIX[fmt]}"

    def removed(self, phase: int, shard: str) -> Path:
        """Returns the removed-docs file of one shard's phase: id, stage, reason, duplicate_of."""
        return self.root / "removed" / f"{shard}.p{phase}.jsonl.zst"

    @property
    def report_dir(self) -> Path:
        """Returns the directory of the report's histogram PNGs."""
        return self.root / "report"


def shard_name(index: int) -> str:
    """Returns the name of input shard `index`: shard-00003."""
    return f"shard-{index:05d}"
