"""Test-wide setup: 8 fake CPU devices, a persistent compilation cache, the shared data locator."""

import os
from pathlib import Path

# Must be set before jax is imported anywhere: sharding tests need 8 devices on one CPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
jax.config.update("jax_compilation_cache_dir", os.environ.get("MAXLM_TEST_COMPILATION_CACHE", str(REPO / ".cache" / "jax")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def shared_data_dir() -> Path | None:
    """Returns the shared data folder (MAXLM_SHARED_DATA or ../shared/data), or None."""
    env = os.environ.get("MAXLM_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared public data sets; skips the test with the reason when they are absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared data not found: set MAXLM_SHARED_DATA or place it at ../shared/data")
    return d
