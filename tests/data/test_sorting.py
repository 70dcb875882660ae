"""builtin:sort[@eval]: records made on the spot, split by multiset so no eval list reorders a train list."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from maxlm.data import sorting
from maxlm.data.builtin import builtin_path
from maxlm.data.records import read_records
from maxlm.errors import MaxlmError


def digits_of(prompt: str) -> list[int]:
    """The prompt's list, read back from its text."""
    head, _, tail = prompt.partition(": ")
    assert head == "Sort"
    return [int(d) for d in tail.split(" ")]


def test_records_are_well_formed_and_the_splits_share_no_multiset():
    train, held_out = sorting.records("train"), sorting.records("eval")
    assert len(train) == 20000 and len(held_out) == 1210
    for r in train + held_out:
        digits = digits_of(r["prompt"])
        assert 3 <= len(digits) <= 8 and all(0 <= d <= 9 for d in digits)
        assert r["response"] == r["answer"] == " ".join(str(d) for d in sorted(digits))
    train_sets = {r["answer"] for r in train}
    eval_sets = [r["answer"] for r in held_out]
    assert len(set(eval_sets)) == len(eval_sets)  # each held-out multiset once
    assert not train_sets & set(eval_sets)  # no eval list is a reordering of a train list
    assert len(train_sets) > 10000  # train draws widely, not a few lists repeated
    # Shown unsorted: most prompts are not already in order (a model must sort, not copy).
    assert sum(r["prompt"][len("Sort: "):] == r["answer"] for r in train) < 0.05 * len(train)


def test_every_multiset_is_in_exactly_one_split():
    # An independent enumeration with plain loops over digit counts: 43,692 multisets of 3..8 digits.
    every = []
    def extend(prefix, smallest):
        if 3 <= len(prefix):
            every.append(tuple(prefix))
        if len(prefix) < 8:
            for d in range(smallest, 10):
                extend(prefix + [d], d)
    extend([], 0)
    assert len(every) == 43692
    train, held_out = set(sorting.multisets("train")), set(sorting.multisets("eval"))
    assert train | held_out == set(every) and not train & held_out
    assert {tuple(sorted(digits_of(r["prompt"]))) for r in sorting.records("eval")} == held_out


def test_records_are_deterministic_and_the_eval_file_is_shuffled():
    assert sorting.records("train")[:50] == sorting.records("train")[:50]
    held_out = sorting.records("eval")
    assert held_out == sorting.records("eval")
    # Any prefix is a fair sample (the in-run eval reads the first eval_steps x batch prompts):
    # the first 128 hold lists of each length about as the whole file does.
    share = Counter(len(digits_of(r["prompt"])) for r in held_out)
    head = Counter(len(digits_of(r["prompt"])) for r in held_out[:128])
    assert abs(head[8] / 128 - share[8] / len(held_out)) < 0.15 and head[8] < 128


def test_builtin_names_write_the_files_once(data_cache):
    path = builtin_path("builtin:sort@eval")
    assert path.startswith(str(data_cache)) and path.endswith("sort-v1-eval.jsonl")
    with open(path) as f:
        assert [json.loads(line) for line in f] == sorting.records("eval")
    mtime = (data_cache / "builtin" / "sort-v1-eval.jsonl").stat().st_mtime_ns
    assert builtin_path("builtin:sort@eval") == path
    assert (data_cache / "builtin" / "sort-v1-eval.jsonl").stat().st_mtime_ns == mtime  # read, not rewritten
    # The one file serves both tasks: sft reads prompt/response, grpo prompt/answer.
    sft, _ = read_records("builtin:sort", "sft")
    grpo, _ = read_records("builtin:sort@eval", "grpo")
    assert len(sft) == 20000 and len(grpo) == 1210
    assert grpo[0].answer == sorting.records("eval")[0]["answer"]
    with pytest.raises(MaxlmError, match="builtin:sort@eval"):
        builtin_path("builtin:sorted")
