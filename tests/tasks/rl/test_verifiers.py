"""Verifier rewards on every real GSM8K training answer and builtin:sort record, and on hand-written edge cases."""

import json
import re

import pytest

from maxlm.data import sorting
from maxlm.errors import MaxlmError
from maxlm.tasks.rl.verifiers import FORMAT_REWARD, VERIFIERS, arithmetic_exact, format_reward, gsm8k_exact, sort_exact, verifier


@pytest.fixture(scope="module")
def gsm8k_rows(shared_data):
    with open(shared_data / "sft" / "gsm8k_train.jsonl") as f:
        return [json.loads(line) for line in f]


def gold_number(solution: str) -> str:
    """The gold final answer, read independently: the text after "####", commas dropped."""
    return solution.split("####")[-1].strip().replace(",", "")


def test_gold_solutions_score_one_and_perturbed_score_zero(gsm8k_rows):
    assert len(gsm8k_rows) == 7473
    for row in gsm8k_rows:
        solution, gold = row["answer"], gold_number(row["answer"])
        assert gsm8k_exact(solution, gold) == 1.0, solution
        assert gsm8k_exact(solution, solution) == 1.0  # the answer field may be the whole solution
        assert format_reward(solution, gold) == FORMAT_REWARD
        # Perturb the final number: the solution now ends in a different answer.
        head, tail = solution.rsplit("####", 1)
        wrong = str(int(gold) + 1)
        assert gsm8k_exact(head + "#### " + wrong, gold) == 0.0
        assert gsm8k_exact(solution, wrong) == 0.0
        # Without the "####" line the marker is gone; the stated final answer still counts.
        assert gsm8k_exact(head + f"The answer is {tail.strip()}.", gold) == 1.0


@pytest.mark.parametrize(
    "completion,answer,want",
    [
        ("She pays $1,200.", "1200", 1.0),
        ("#### $1,200.00", "#### 1,200", 1.0),
        ("#### 18\n\nThat was 3 steps.", "18", 1.0),  # numbers after the marker's line do not count
        ("It costs 5-3 = 2 dollars, so -4 remain", "-4", 1.0),
        ("It costs 5-3 = 2", "-3", 0.0),  # "5-3" is a subtraction, not -3
        ("The answer is 72.5", "72", 0.0),
        ("No number here.", "3", 0.0),
        ("1,2,3", "123", 0.0),
    ],
)
def test_gsm8k_exact_edge_cases(completion, answer, want):
    assert gsm8k_exact(completion, answer) == want


def test_format_and_arithmetic():
    assert format_reward("so\n#### 42", "") == FORMAT_REWARD
    assert format_reward("the answer is 42", "") == 0.0
    assert format_reward("#### forty-two", "") == 0.0
    assert arithmetic_exact(" 1357 is the sum; 12 + 3 = 15", "1357") == 1.0
    assert arithmetic_exact("-8", "-8") == 1.0
    assert arithmetic_exact("It is 15", "1357") == 0.0
    assert arithmetic_exact("", "3") == 0.0
    assert arithmetic_exact("13570", "1357") == 0.0


@pytest.mark.parametrize(
    "completion,want",
    [
        ("1 3 7 9", 1.0),
        ("  1 3  7 9\n", 1.0),  # spacing around and between the items does not count
        ("1 7 3 9", 0.0),  # the right digits out of order
        ("1 3 7", 0.0),  # one item short
        ("1 3 7 9 9", 0.0),  # one item too many
        ("1 3 7 9.", 0.0),
        ("1,3,7,9", 0.0),  # the items are space-separated
        ("13 7 9", 0.0),
        ("", 0.0),
    ],
)
def test_sort_exact_edge_cases(completion, want):
    assert sort_exact(completion, "1 3 7 9") == want


def test_sort_exact_on_the_builtin_records():
    for r in sorting.records("eval"):
        assert sort_exact(r["answer"], r["answer"]) == 1.0
        assert sort_exact(r["prompt"].removeprefix("Sort: "), r["answer"]) == float(r["prompt"] == "Sort: " + r["answer"])


def test_registry():
    assert set(VERIFIERS) == {"gsm8k_exact", "format", "arithmetic_exact", "sort_exact"}
    assert verifier("gsm8k_exact") is gsm8k_exact
    with pytest.raises(MaxlmError, match=re.escape("valid verifiers: arithmetic_exact, format, gsm8k_exact, sort_exact")):
        verifier("gsm8k")
