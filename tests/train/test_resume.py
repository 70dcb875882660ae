"""Resuming a run: a changed model shape is refused naming the key and both values (config.yaml
untouched), and a damaged committed checkpoint names the intact earlier step that the advice resumes from."""

import json
import re
import shutil
import subprocess

import pytest
from tiny_run import write_tiny_config

from maxlm.cli import main as cli_main



@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_data):
    """Returns (config, run dir) of a finished tiny run with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("resume")
    path = write_tiny_config(root, shared_data, train={"steps": 4}, checkpoint={"interval_steps": 2, "async_save": False, "keep": 5})
    assert cli_main(["train", str(path)]) == 0
    return path, root / "run"


@pytest.fixture
def run_copy(finished, tmp_path):
    """Returns (config, run dir) of a copy of the finished run that a test may damage."""
    path, run = finished
    shutil.copytree(run, tmp_path / "run")
    return path, tmp_path / "run"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("override, key, saved, now", [("model.hidden_size=128", "hidden_size", 64, 128), ("model.num_layers=3", "num_layers", 2, 3)])
def test_changed_model_shape_is_refused_and_config_yaml_kept(run_copy, capsys, override, key, saved, now):
    path, run = run_copy
    before = (run / "config.yaml").read_bytes()
    assert cli_main(["train", str(path), f"run_dir={run}", "train.steps=6", override]) == 2
    err = one_error_line(capsys)
    assert f"model.{key}" in err and f"saved with {saved}" in err and f"now says {now}" in err
    assert (run / "config.yaml").read_bytes() == before
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_checkpoint_names_the_intact_step_whose_advice_resumes(run_copy, capsys, damage):
    path, run = run_copy
    data = max((p for p in (run / "checkpoints" / "4" / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        data.unlink()
    assert cli_main(["train", str(path), f"run_dir={run}", "train.steps=6"]) == 2
    err = one_error_line(capsys)
    assert f"checkpoint {run / 'checkpoints' / '4'} is damaged" in err and "step 2 is intact" in err
    move = re.search(r"\(mv (\S+) (\S+)\)", err)
    subprocess.run(["mv", move[1], move[2]], check=True)  # the advice, as a user would follow it
    assert cli_main(["train", str(path), f"run_dir={run}", "train.steps=6"]) == 0
    assert f"resumed from {run / 'checkpoints'}/2" in capsys.readouterr().out
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
