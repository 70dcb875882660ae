"""Ray executor: one Ray task per shard on an existing cluster, or on a local Ray started here.

Ray is an optional extra: it is imported only when this executor is chosen. Workers must see
the same filesystem as the driver (true for a local Ray and for clusters on shared storage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

from maxlm.errors import MaxlmError

REPO_ROOT = str(Path(__file__).resolve().parents[3])  # the checkout holding data_pipelines


def import_ray():
    """Returns the ray module, or raises MaxlmError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MaxlmError("executor ray needs Ray: pip install 'ray>=2.9' (or use --executor local)") from None
    return ray


class RayExecutor:
    """Runs tasks as Ray tasks of one CPU each; results come back as shards finish."""

    def __init__(self, workers: int):
        self.workers = workers
        self.started = False  # True when this executor started the local Ray (and so stops it)

    def map(self, fn: Callable, tasks: list) -> Iterator:
        """Yields fn(task) for every task, in completion order."""
        ray = import_ray()
        if not tasks:
            return
        if not ray.is_initialized():
            path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
            # workers import data_pipelines from this checkout, installed or not
            env = {"env_vars": {"PYTHONPATH": path}}
            if os.environ.get("RAY_ADDRESS"):
                ray.init(runtime_env=env, log_to_driver=False)  # a cluster's size is its own
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False, runtime_env=env)
            self.started = True
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])

    def close(self) -> None:
        """Stops the Ray instance this executor started; one it found running is left alone."""
        if self.started:
            import_ray().shutdown()
            self.started = False
