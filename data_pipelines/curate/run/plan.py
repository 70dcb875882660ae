"""Cut the stage list into phases: per-document filters run in workers until a dedup barrier."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines.curate.config import StageSpec


@dataclass
class Phase:
    """One pass over every shard: apply `after` (the previous group's dedup), run `filters`,
    then emit keys for `group` (dedup stages resolved corpus-wide before the next phase)."""

    filters: list[StageSpec] = field(default_factory=list)
    group: list[StageSpec] = field(default_factory=list)
    after: list[StageSpec] = field(default_factory=list)


def plan_phases(stages: list[StageSpec], kinds: dict[str, str]) -> list[Phase]:
    """Returns the phases of a stage list; consecutive dedup stages share one barrier."""
    phases = [Phase()]
    for spec in stages:
        cur = phases[-1]
        if kinds[spec.name] == "dedup":
            cur.group.append(spec)
        elif cur.group:
            phases.append(Phase(filters=[spec], after=cur.group))
        else:
            cur.filters.append(spec)
    if phases[-1].group:
        phases.append(Phase(after=phases[-1].group))  # the final pass drops the duplicates and writes
    return phases
