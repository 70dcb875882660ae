"""Connected components of the duplicate graph by min-label propagation, one task per shard per round.

Every document starts labelled with its own global index. In a round, each shard takes the
labels its neighbours sent last round (keeping the smallest), then sends every changed label
along its edges. When a round sends nothing, each label is the smallest index of its component:
the document every other member is a duplicate of. A task holds one shard's labels, edges and
incoming messages, never the corpus's; the rounds number about the graph's diameter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from data_pipelines.curate.run.arrays import columns_in, load_array, save_array
from data_pipelines.curate.run.accounting import usage
from data_pipelines.curate.run.group import Group


def receive(labels_N: np.ndarray, lo: int, messages_2M: np.ndarray) -> np.ndarray:
    """Returns labels_N lowered by the (node, label) messages; nodes are global indices from lo."""
    out = labels_N.copy()
    np.minimum.at(out, messages_2M[0] - lo, messages_2M[1])
    return out


def outgoing(adj_2E: np.ndarray, lo: int, labels_N: np.ndarray, changed_N: np.ndarray) -> np.ndarray:
    """Returns the messages [2, M] (node, label), sorted by node, one per node: the smallest label a
    changed neighbour sends it. A label not below the node's own index can never lower its label."""
    src, dst = adj_2E
    send = changed_N[src - lo]
    node, label = dst[send], labels_N[src[send] - lo]
    useful = label < node
    node, label = node[useful], label[useful]
    order = np.lexsort((label, node))
    node, label = node[order], label[order]
    first = np.ones(len(node), dtype=bool)
    first[1:] = node[1:] != node[:-1]
    return np.stack([node[first], label[first]])


@dataclass(frozen=True)
class PropagateTask:
    """Round `round` of group stage `stage` for shard `index`; round 0 also gathers its edges from the `parts` ranges."""

    group: Group
    stage: int
    round: int
    index: int
    parts: int


def run_propagate(task: PropagateTask) -> dict:
    """Writes the shard's labels and sent messages for the round; returns how many it sent, and usage."""
    t0 = time.perf_counter()
    g, wd, j, r = task.group, task.group.workdir, task.stage, task.round
    shard = g.shards[task.index]
    lo, hi = g.span(task.index)
    if r == 0:
        parts = [columns_in(load_array(wd.edges(g.phase, j, p), 2), lo, hi) for p in range(task.parts)]
        adj = np.concatenate([np.zeros((2, 0), np.int64)] + parts, axis=1)
        save_array(wd.adjacency(g.phase, j, shard), adj)
        labels = np.arange(lo, hi, dtype=np.int64)
        changed = np.ones(hi - lo, dtype=bool)
    else:
        adj = load_array(wd.adjacency(g.phase, j, shard), 2)
        before = load_array(wd.labels(g.phase, j, r - 1, shard))
        labels = before
        for other in g.shards:
            labels = receive(labels, lo, columns_in(load_array(wd.messages(g.phase, j, r - 1, other), 2), lo, hi))
        changed = labels < before
    save_array(wd.labels(g.phase, j, r, shard), labels)
    sent = outgoing(np.asarray(adj), lo, labels, changed)
    save_array(wd.messages(g.phase, j, r, shard), sent)
    return {"sent": sent.shape[1], **usage(t0)}
