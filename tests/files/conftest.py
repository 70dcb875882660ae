"""Fixtures of the file-layer tests: a private cache dir, so tests never touch ~/.cache/maxlm."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Returns the cache dir every file-layer test uses (decompressed copies land there)."""
    path = tmp_path_factory.mktemp("maxlm_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MAXLM_CACHE_DIR", str(path))
    yield path
    mp.undo()
