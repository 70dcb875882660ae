"""Command-line flags that mean a config field refuse what the field's range refuses: one `error:` line, exit 2."""

from __future__ import annotations

import argparse

import pytest

from maxlm.cli import main
from maxlm.config import SampleConfig, TokenizerConfig, flag_type


@pytest.mark.parametrize(
    "argv, flag, message",
    [
        (["generate", "run", "--prompt", "a", "--temperature", "-1"], "--temperature", "must be >= 0, got -1"),
        (["generate", "run", "--prompt", "a", "--top-p", "2"], "--top-p", "must be in (0, 1], got 2"),
        (["generate", "run", "--prompt", "a", "--top-p", "0"], "--top-p", "must be in (0, 1], got 0"),
        (["generate", "run", "--prompt", "a", "--top-k", "-5"], "--top-k", "must be >= 0, got -5"),
        (["generate", "run", "--prompt", "a", "--max-new-tokens", "0"], "--max-new-tokens", "must be > 0, got 0"),
        (["generate", "run", "--prompt", "a", "--max-new-tokens", "1.5"], "--max-new-tokens", "must be an integer, got '1.5'"),
        (["eval", "exact-match", "run", "--data", "d.jsonl", "--max-new-tokens", "0"], "--max-new-tokens", "must be > 0, got 0"),
        (["eval", "win-rate", "--rm", "r", "--a", "a", "--b", "b", "--prompts", "p", "--max-new-tokens", "-1"], "--max-new-tokens", "must be > 0, got -1"),
        (["synth", "constitutional", "--model", "m", "--temperature", "-0.5"], "--temperature", "must be >= 0, got -0.5"),
        (["synth", "self-instruct", "--model", "m", "--top-p", "1.5"], "--top-p", "must be in (0, 1], got 1.5"),
        (["tokenizer", "train", "--input", "a", "--output", "b", "--vocab-size", "100"], "--vocab-size", "must be >= 260, got 100"),
    ],
)
def test_a_flag_outside_its_fields_range_is_one_error_line_exit_2(argv, flag, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert line.endswith(f"error: argument {flag}: {message}")


def test_flag_type_parses_the_fields_type_and_accepts_the_bounds():
    temperature, top_p, vocab = flag_type(SampleConfig, "temperature"), flag_type(SampleConfig, "top_p"), flag_type(TokenizerConfig, "vocab_size")
    assert temperature("0") == 0.0 and top_p("1") == 1.0 and vocab("260") == 260 and isinstance(vocab("300"), int)
    with pytest.raises(argparse.ArgumentTypeError, match="must be a number"):
        temperature("hot")
