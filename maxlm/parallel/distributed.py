"""Multi-process start: one JAX process per host (or per GPU), wired from the environment."""

from __future__ import annotations

import os

import jax

# Variables a launcher sets; JAX itself also detects SLURM, Open MPI and TPU pods on its own.
_ENV = ("MAXLM_COORDINATOR", "MAXLM_NUM_PROCESSES", "MAXLM_PROCESS_ID")


def initialize_from_env() -> bool:
    """Returns True after calling jax.distributed.initialize when the environment asks for it (once per process)."""
    if jax.distributed.is_initialized():
        return True  # an init_from chain trains its starting config inside this process's run
    if all(k in os.environ for k in _ENV):
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            # Cross-process collectives on CPU (local multi-process runs and tests) go through gloo.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["MAXLM_COORDINATOR"],
            num_processes=int(os.environ["MAXLM_NUM_PROCESSES"]),
            process_id=int(os.environ["MAXLM_PROCESS_ID"]),
        )
        return True
    if any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE")) and os.environ.get(
        "MAXLM_AUTO_DISTRIBUTED", "1"
    ) == "1":
        jax.distributed.initialize()  # cluster auto-detection
        return True
    return False
