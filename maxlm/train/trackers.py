"""Experiment trackers beside metrics.jsonl and TensorBoard (`train.trackers: [wandb, mlflow]`).

The one metrics writer hands every record it appends to metrics.jsonl to each tracker, with the
record's own step, so a tracker holds the same numbers step for step (None and non-numbers are
left out). The run's resolved config goes in as the tracker run's config (W&B) or its params
(MLflow, flattened to dotted keys). Where they go is each tracker's own setting: WANDB_PROJECT /
WANDB_MODE / WANDB_DIR (default dir: the run dir), MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME.
A run dir has one tracker run per tracker, named after the run dir: its id is kept in the run dir's
trackers.json, and a resumed `maxlm train` logs on into that same run (W&B `resume="allow"`, the same
MLflow run), its steps after the restored checkpoint. Steps a killed invocation logged past that
checkpoint are logged again with the same values (the resume is exact): W&B keeps the first, MLflow
holds both. MLflow params cannot change, so a resume adds only config keys the run does not hold yet.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from maxlm.errors import MaxlmError
from maxlm.files import atomic

# tracker -> (the module it needs, the maxlm extra that installs it)
MODULES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
MLFLOW_PARAM_CHARS = 6000  # MLflow refuses longer param values


class TrackerRun(Protocol):
    """A sink of logged records: one call per record, with its step."""

    run_id: str  # what reopens it on resume

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def check_trackers(names: Sequence[str]) -> None:
    """Raises MaxlmError naming the extra to install when a configured tracker's package is missing."""
    for name in names:
        module, extra = MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise MaxlmError(f"train.trackers: {name} is not installed: pip install 'maxlm[{extra}]'")


RUNS_FILE = "trackers.json"  # tracker -> its run's id, in the run dir


def open_trackers(names: Sequence[str], run_dir: Path, config: dict) -> list[TrackerRun]:
    """Returns the configured trackers, each on the run dir's tracker run (a new one, named after `run_dir`, the first time)."""
    check_trackers(names)
    path = Path(run_dir) / RUNS_FILE
    ids = json.loads(path.read_text()) if path.exists() else {}
    opened = {"wandb": WandbTracker, "mlflow": MlflowTracker}
    runs = {n: opened[n](run_dir, config, ids.get(n)) for n in dict.fromkeys(names)}
    now = ids | {n: r.run_id for n, r in runs.items()}
    if now != ids:
        atomic.write_json(path, now)
    return list(runs.values())


def scalars(record: dict) -> dict[str, float]:
    """Returns the numeric entries of a metrics record, "step" and None values left out."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}


class WandbTracker:
    """A Weights & Biases run (offline with WANDB_MODE=offline)."""

    def __init__(self, run_dir: Path, config: dict, run_id: str | None = None):
        import wandb

        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "maxlm"), name=Path(run_dir).name, config=config,
                               dir=os.environ.get("WANDB_DIR", str(run_dir)), reinit="create_new", id=run_id, resume="allow")
        self.run_id = self._run.id

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


class MlflowTracker:
    """An MLflow run in the experiment MLFLOW_EXPERIMENT_NAME (default "maxlm") of the tracking URI MLflow resolves."""

    def __init__(self, run_dir: Path, config: dict, run_id: str | None = None):
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._client, self._metric = MlflowClient(), Metric
        held: dict[str, str] = {}
        if run_id:
            try:  # the run dir's run, unless this tracking URI does not hold it
                held = self._client.get_run(run_id).data.params
                self._client.update_run(run_id, status="RUNNING")
            except MlflowException:
                run_id = None
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "maxlm")
            experiment = self._client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(name)
            run_id = self._client.create_run(experiment_id, run_name=Path(run_dir).name).info.run_id
        self.run_id = run_id
        params = [Param(k, v[:MLFLOW_PARAM_CHARS]) for k, v in flat_params(config).items() if k not in held]
        for start in range(0, len(params), 100):  # MLflow's batch limit for params
            self._client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[self._metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Returns a nested config as {"a.b.c": str(value)}: lists and None as JSON."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out |= flat_params(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out

