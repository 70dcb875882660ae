"""train.trackers (W&B offline, an MLflow file store) hold metrics.jsonl's numbers step for step, and
train.eval_harness logs lm-eval figures of the live params there, equal to `maxlm eval harness` on that step's checkpoint."""

from __future__ import annotations

import json
import struct

import pytest
import yaml
from tiny_run import write_tiny_config

from maxlm.cli import main as cli_main
from maxlm.config import load_config
from maxlm.errors import MaxlmError
from maxlm.train.run import train

pytest.importorskip("wandb")
pytest.importorskip("mlflow")
pytest.importorskip("lm_eval")


def write_tasks(root) -> None:
    """Writes a multiple-choice and a rolling-perplexity lm-eval task (dataset_path: json) into root."""
    docs = {
        "tk_mc": [{"q": q, "choices": c, "answer": a} for q, c, a in [
            ("Who speaks first?", ["the king", "a citizen", "nobody"], 1), ("What is done?", ["all", "nothing"], 0),
            ("Where are we?", ["in Rome", "at sea", "in a field"], 2)]],
        "tk_ppl": [{"text": "First Citizen: Before we proceed any further, hear me speak."}, {"text": "All: Speak, speak."}],
    }
    configs = {
        "tk_mc": {"output_type": "multiple_choice", "doc_to_text": "{{q}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
                  "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]},
        "tk_ppl": {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                   "metric_list": [{"metric": "byte_perplexity"}]},
    }
    for name, records in docs.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(root / f"{name}.jsonl")}},
               "test_split": "test", **configs[name]}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))


def wandb_history(run_file) -> dict[int, dict[str, float]]:
    """Returns {step: metrics} of the history records in a .wandb file (LevelDB log blocks of wandb's Record protos)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, out = run_file.read_bytes(), 7, b"", {}  # 7: the ":W&B" header with its magic and version
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = chunk + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                out[items.pop("_step")] = {k: v for k, v in items.items() if not k.startswith("_")}
    return out


def test_trackers_and_eval_harness_log_the_metrics_jsonl_records(tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store only on request
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_tasks(tasks)
    path = write_tiny_config(
        tmp_path, shared_data, model={"max_seq_len": 32}, checkpoint={"interval_steps": 3},
        train={"steps": 3, "global_batch_size": 8, "log_every": 1, "warmup_steps": 1, "schedule": "constant", "trackers": ["wandb", "mlflow"],
               "eval_harness": {"tasks": ["tk_mc", "tk_ppl"], "every": 2, "include_path": str(tasks)}},
    )
    assert cli_main(["train", str(path)]) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = {r["step"]: {k: float(v) for k, v in r.items() if k != "step" and isinstance(v, (int, float)) and v is not None}
                for r in records}
    assert sorted(expected) == [1, 2, 3]
    harness_keys = {"harness/tk_mc/acc", "harness/tk_mc/acc_norm", "harness/tk_ppl/byte_perplexity"}
    assert [s for s in expected if harness_keys <= set(expected[s])] == [2, 3]  # every 2nd step and the last

    # W&B: the offline run's history, step for step.
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    assert sorted(history) == sorted(expected)
    for step, metrics in expected.items():
        assert history[step] == pytest.approx(metrics), step
    # MLflow: every metric's history from the file store, step for step.
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    (mlrun,) = client.search_runs([client.get_experiment_by_name("maxlm").experiment_id])
    for key in {k for m in expected.values() for k in m}:
        history = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, key)}
        assert history == pytest.approx({s: m[key] for s, m in expected.items() if key in m}), key
    assert mlrun.data.params["train.eval_harness.every"] == "2" and mlrun.data.params["model.max_seq_len"] == "32"

    # A resume logs on into the same tracker runs: MLflow's one run holds steps 1-4, W&B's offline run keeps its id.
    ids = json.loads((run / "trackers.json").read_text())
    assert cli_main(["train", str(path), "train.steps=4", "train.eval_harness.tasks=[]"]) == 0
    assert json.loads((run / "trackers.json").read_text()) == ids
    (mlrun,) = client.search_runs([client.get_experiment_by_name("maxlm").experiment_id])
    assert mlrun.info.run_id == ids["mlflow"] and mlrun.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(ids["mlflow"], "loss")) == [1, 2, 3, 4]
    assert mlrun.data.params["train.steps"] == "3"  # MLflow params are immutable: the first invocation's stay
    assert {p.name.split("-")[-1] for p in tmp_path.glob("wandb/offline-run-*")} == {ids["wandb"]}

    # The harness saw step 2's own params, not step 3's (already dispatched in a pipelined loop; no checkpoint at step 2
    # to finish it): the figures of the same run stopped at step 2 (a constant schedule: its steps 1-2 are the same).
    ref = tmp_path / "ref"
    assert cli_main(["train", str(path), "train.steps=2", f"run_dir={ref}", "train.eval_harness.tasks=[]", "train.trackers=[]"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert cli_main(["eval", "harness", str(ref), "--tasks", "tk_mc,tk_ppl", "--include-path", str(tasks),
                     "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((out / "results.json").read_text()) == printed and "| tk_mc |" in (out / "results.md").read_text()
    fresh = printed["tasks"]
    assert fresh["tk_mc"]["n"] == 3
    for key in harness_keys:
        _, task, metric = key.split("/")
        assert expected[2][key] == pytest.approx(fresh[task][metric], rel=1e-6), key
    assert expected[2]["harness/tk_ppl/byte_perplexity"] != expected[3]["harness/tk_ppl/byte_perplexity"]  # the params moved


def test_a_missing_tracker_or_task_is_refused_before_anything_runs(tmp_path, shared_data, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = load_config(write_tiny_config(tmp_path, shared_data, train={"trackers": ["mlflow"]}))
    with pytest.raises(MaxlmError, match=r"train.trackers: mlflow is not installed: pip install 'maxlm\[mlflow\]'"):
        train(cfg)
    cfg = load_config(write_tiny_config(tmp_path, shared_data, train={"eval_harness": {"tasks": ["tk_mc"]}}))
    with pytest.raises(MaxlmError, match="nothing evaluates it"):
        train(cfg)
    assert not (tmp_path / "run").exists()
