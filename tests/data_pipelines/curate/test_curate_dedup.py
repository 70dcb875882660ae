"""Dedup internals against independent references: true Jaccard, BFS components, unbounded merge."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
from curate_outputs import REPO

from data_pipelines.curate.document import Document
from data_pipelines.curate.run.buckets import (
    Run,
    range_count,
    range_edges,
    run_paths,
    write_run,
)
from data_pipelines.curate.run.components import outgoing
from data_pipelines.curate.run.local import LocalExecutor
from data_pipelines.curate.run.resolve import resolve_group
from data_pipelines.curate.run.workdir import Workdir
from data_pipelines.curate.segment import norm_words
from data_pipelines.curate.stages.exact_dedup import ExactDedup, ExactDedupParams
from data_pipelines.curate.stages.minhash_dedup import MinhashDedup, MinhashDedupParams
from maxlm.files.readers import iter_records
from maxlm.files.writers import JsonlZstWriter

VOCAB = [f"w{i}" for i in range(400)]


def shingle_set(text: str, n: int = 5) -> set:
    w = norm_words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_minhash_estimates_true_jaccard():
    rng = random.Random(0)
    mh = MinhashDedup(MinhashDedupParams())
    errors = []
    for _ in range(40):
        base = [rng.choice(VOCAB) for _ in range(300)]
        other = list(base)
        for i in rng.sample(range(300), rng.randint(0, 60)):
            other[i] = rng.choice(VOCAB)
        a, b = " ".join(base), " ".join(other)
        sa, sb = shingle_set(a), shingle_set(b)
        true = len(sa & sb) / len(sa | sb)
        sig, valid = mh.signatures([a, b])
        assert valid.all()
        errors.append(abs(float((sig[0] == sig[1]).mean()) - true))
    # 112 hashes: the estimate's standard deviation is at most 0.05
    assert np.mean(errors) < 0.04 and max(errors) < 0.16


def test_minhash_is_stable_across_processes():
    texts = ["the quick brown fox jumps over the lazy dog again and again", "short", "", "Ünïcode wörds ärë fïnë tøø " * 5]
    mh = MinhashDedup(MinhashDedupParams())
    keys, valid = mh.keys([Document(str(i), t) for i, t in enumerate(texts)])
    assert valid.tolist() == [True, True, False, True]  # an empty text takes no part
    code = (
        "import json; from data_pipelines.curate.stages.minhash_dedup import MinhashDedup, MinhashDedupParams;"
        "from data_pipelines.curate.document import Document;"
        f"k, v = MinhashDedup(MinhashDedupParams()).keys([Document(str(i), t) for i, t in enumerate({texts!r})]);"
        "print(json.dumps(k.tolist()))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert json.loads(out) == keys.tolist()


def test_exact_key_normalizes_case_and_whitespace():
    ex = ExactDedup(ExactDedupParams())
    docs = [Document("a", "Hello   World\n"), Document("b", "hello world"), Document("c", "hello world!"), Document("d", "  ")]
    k, v = ex.keys(docs)
    assert k[0, 0] == k[1, 0] != k[2, 0] and v.tolist() == [True, True, True, False]
    by_fields = ExactDedup(ExactDedupParams(fields=["instruction", "input"]))
    k2, _ = by_fields.keys([Document("x", "Do it", {"input": "now"}, "instruction"), Document("y", "Do it", {"input": "later"}, "instruction")])
    assert k2[0, 0] != k2[1, 0]


def bfs_components(n: int, edges: list[tuple[int, int]]) -> list[int]:
    adj = defaultdict(list)
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    comp = list(range(n))
    seen = set()
    for s in range(n):
        if s in seen:
            continue
        stack, members = [s], []
        seen.add(s)
        while stack:
            x = stack.pop()
            members.append(x)
            for y in adj[x]:
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
        for m in members:
            comp[m] = min(members)
    return comp


def planted_runs(tmp_path, rng, shards: int, bands: int, chain: int) -> tuple[list, list[np.ndarray], list[np.ndarray]]:
    """Writes random colliding keys plus a chain of `chain` documents across every shard (each link one band);
    returns (shard names, keys [N, B] and valid [N] per shard)."""
    names, keys, valid = [], [], []
    for s in range(shards):
        n = int(rng.integers(30, 80))
        k = (rng.integers(0, 60, size=(n, bands)).astype(np.uint64) + np.uint64(1000)) * np.uint64(0x9E3779B97F4A7C15)
        keys.append(k)
        valid.append(rng.random(n) > 0.1)
        names.append(f"shard-{s:05d}")
    # a chain 0-1-2-...: link i joins member i and i+1 in band i % 2, so it is `chain` rounds long
    members = [(s, i) for i in range(chain // shards + 1) for s in range(shards)][:chain]
    for i, (s, li) in enumerate(members):
        valid[s][li] = True
        for band in (0, 1):
            if (i - band) % 2 == 0:  # this doc and the next share band `band`
                keys[s][li, band] = np.uint64(7 + 2 * i + band)
            else:  # ... and the previous one shares it with this doc
                keys[s][li, band] = np.uint64(7 + 2 * (i - 1) + band)
    for s, name in enumerate(names):
        write_run(tmp_path, name, 0, keys[s], valid[s])
    return names, keys, valid


def bucket_edges(keys: list[np.ndarray], valid: list[np.ndarray], skip: set = frozenset()) -> tuple[int, list]:
    """Returns (N, edges): every document joined to the first (smallest) member of each bucket it is in."""
    buckets, offset = defaultdict(list), 0
    for k, v in zip(keys, valid):
        for i in np.flatnonzero(v):
            if offset + int(i) not in skip:
                for band in range(k.shape[1]):
                    buckets[(band, int(k[i, band]))].append(offset + int(i))
        offset += len(k)
    return offset, [(m[0], x) for m in buckets.values() for x in m[1:]]


def test_range_edges_are_independent_of_the_range_count(tmp_path):
    """A few ranges or hundreds: the same pairs, so the same clusters."""
    names, keys, valid = planted_runs(tmp_path, np.random.default_rng(2), 5, 3, 40)
    offsets = np.concatenate(([0], np.cumsum([len(k) for k in keys])))
    runs = [Run(*run_paths(tmp_path, s, 0), int(offsets[i])) for i, s in enumerate(names)]
    n, ref = bucket_edges(keys, valid)
    expected = bfs_components(n, ref)
    for parts in (1, 7, 300):
        pairs = [range_edges(runs, 3, p, parts) for p in range(parts)]
        first, other = np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])
        assert (first < other).all()
        assert bfs_components(n, list(zip(first.tolist(), other.tolist()))) == expected, parts
    assert range_count(runs, 300, 1) > range_count(runs, 1 << 20, 1) == 1


def write_ids(tmp_path, names, keys) -> None:
    """Writes each shard's ids file as the shard pass does: one id per document, in order."""
    for s, name in enumerate(names):
        with JsonlZstWriter(tmp_path / f"{name}.ids.jsonl.zst", 1) as w:
            for i in range(len(keys[s])):
                w.write(f"{name}:{i}")


@pytest.mark.parametrize("workers,memory", [(1, 1 << 20), (2, 400)])
def test_resolve_matches_components_of_bfs(tmp_path, workers, memory):
    """Two stages over six shards: each removed document names its cluster's smallest member, the
    second stage sees only what the first kept, and a 90-link chain takes 90 propagation rounds."""
    rng = np.random.default_rng(3)
    names, keys, valid = planted_runs(tmp_path / "_work" / "p0", rng, 6, 2, 90)
    keys2 = [rng.integers(0, 40, size=(len(k), 1)).astype(np.uint64) for k in keys]
    for s, name in enumerate(names):
        write_run(tmp_path / "_work" / "p0", name, 1, keys2[s], valid[s])
    write_ids(tmp_path / "_work" / "p0", names, keys)
    counts = [len(k) for k in keys]
    ids = [f"{name}:{i}" for name, k in zip(names, keys) for i in range(len(k))]
    n, e1 = bucket_edges(keys, valid)
    comp1 = bfs_components(n, e1)
    gone1 = {i for i in range(n) if comp1[i] != i}
    _, e2 = bucket_edges(keys2, valid, skip=gone1)
    comp2 = bfs_components(n, e2)
    expected = {ids[i]: (0, ids[comp1[i]]) for i in gone1} | {ids[i]: (1, ids[comp2[i]]) for i in range(n) if comp2[i] != i}
    report = resolve_group(Workdir(tmp_path), 0, names, counts, [SimpleNamespace(bands=2), SimpleNamespace(bands=1)],
                           ["a", "b"], memory, LocalExecutor(workers), workers)
    got = {}
    for name in names:
        for _, (li, j, dup) in iter_records(tmp_path / "_work" / "r0" / f"{name}.removed.jsonl.zst", strict=True):
            got[f"{name}:{li}"] = (j, dup)
    assert got == expected
    assert report["a"]["removed"] == len(gone1) and report["a"]["clusters"] == len({comp1[i] for i in gone1})
    assert report["a"]["steps"]["components"]["rounds"] >= 90


def test_resolve_resumes_from_its_step_markers(tmp_path):
    """A resolve stopped after some propagation rounds finishes from there with the same removals."""
    rng = np.random.default_rng(4)
    names, keys, _ = planted_runs(tmp_path / "_work" / "p0", rng, 3, 2, 12)
    write_ids(tmp_path / "_work" / "p0", names, keys)
    args = (0, names, [len(k) for k in keys], [SimpleNamespace(bands=2)], ["a"], 1 << 20, LocalExecutor(1), 1)
    resolve_group(Workdir(tmp_path), *args)
    r0 = tmp_path / "_work" / "r0"
    want = {p.name: p.read_bytes() for p in r0.glob("*.removed.jsonl.zst")}
    rounds = sorted(r0.glob("s0/cc*.done.json"))
    assert len(rounds) > 3
    for p in rounds[3:] + [r0 / "s0" / "decide.done.json", r0 / "answer.done.json", r0 / "removals.done.json"]:
        p.unlink()
    for p in r0.glob("*.removed.jsonl.zst"):
        p.unlink()
    resolve_group(Workdir(tmp_path), *args)
    assert {p.name: p.read_bytes() for p in r0.glob("*.removed.jsonl.zst")} == want
    assert json.loads((r0 / "s0" / "cc0.done.json").read_text())["tasks"] == 3  # the rounds kept were not redone


def test_propagation_step_sends_only_what_can_lower_a_label():
    # edges seen from shard [10, 14): 10-12, 10-5, 11-13, 13-12, 12-20, 13-20
    adj = np.array([[10, 10, 11, 13, 12, 13], [12, 5, 13, 12, 20, 20]])
    labels = np.array([3, 11, 12, 13])
    sent = outgoing(adj, 10, labels, np.array([True, False, True, True]))
    # 11 did not change; 13's label 13 cannot lower 12; 20 hears the smaller of 12 and 13
    assert sent.tolist() == [[5, 12, 20], [3, 3, 12]]
