"""One-line errors of `maxlm eval` and `maxlm generate`: an unwritable --output before any
evaluation, bad records naming the --on-bad-record flag, and generation requests the model cannot serve."""

import json

import pytest

from maxlm.cli import main as cli_main


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("bad", ["read-only", "a file"])
def test_unwritable_output_is_refused_before_the_evaluation(runs, write_jsonl, tmp_path, capsys, monkeypatch, bad):
    def evaluated(*_, **__):
        raise AssertionError("the evaluation ran before --output was checked")

    monkeypatch.setattr("maxlm.eval.perplexity.eval_perplexity", evaluated)
    monkeypatch.setattr("maxlm.pretrained.from_pretrained", evaluated)
    a_file = tmp_path / "results"
    a_file.write_text("")
    output = {"read-only": "/sys/maxlm-results", "a file": str(a_file)}[bad]
    data = write_jsonl("text.jsonl", [{"text": "some text"}])
    assert cli_main(["eval", "perplexity", str(runs["pretrain"]), "--data", data, "--output", output]) == 2
    assert f"--output {output}" in one_error_line(capsys)


@pytest.mark.parametrize("command, run, second", [
    (["perplexity"], "pretrain", "{oops"),
    (["perplexity", "--task", "sft"], "sft", json.dumps({"prompt": "p", "response": 7})),
    (["win-rate", "--a", "{sft}", "--b", "{sft}", "--rm", "{rm}", "--prompts"], None, "{oops"),
])
def test_bad_record_names_the_flag_not_the_config_key(runs, tmp_path, capsys, command, run, second):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok", "prompt": "p", "response": "r"}) + "\n" + second + "\n")
    args = [a.format(**runs) for a in command] + ([str(runs[run]), "--data"] if run else [])
    assert cli_main(["eval", *args, str(bad)]) == 2
    err = one_error_line(capsys)
    assert f"{bad}:2:" in err and "(pass --on-bad-record skip to drop such records)" in err and "data.on_bad_record" not in err


def test_bad_record_of_a_training_run_still_names_the_config_key(tmp_path):
    from maxlm.data.formats import JsonlFile
    from maxlm.errors import MaxlmError

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    with pytest.raises(MaxlmError, match=r"\(set data.on_bad_record=skip to drop such records\)"):
        JsonlFile(str(bad))


@pytest.mark.parametrize("args, message", [
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),
    (["--prompt", "to be or not to be " * 40], "exceeds model.max_seq_len (64)"),
])
def test_generate_requests_the_model_cannot_serve_are_one_line(runs, capsys, args, message):
    assert cli_main(["generate", str(runs["pretrain"]), "--prompt", "hello", *args]) == 2
    assert message in one_error_line(capsys)
