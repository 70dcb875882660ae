"""Fixtures for the curation tests: the shared data location and YAML files in tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# labelled_corpus and curate_outputs live beside the tests; the repo root holds data_pipelines
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from labelled_corpus import shared_data_dir  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (e.g. starts a local Ray)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("shared data not found: set MAXLM_SHARED_DATA or place it at <repo>/../shared/data")
    return d


@pytest.fixture
def write_yaml(tmp_path):
    """Returns a function writing YAML text to tmp_path/name and returning its path."""

    def _write(text: str, name: str = "pipeline.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
