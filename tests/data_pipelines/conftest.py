"""Fixtures for the curation tests: YAML files in tmp_path (shared_data comes from tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the repo root holds data_pipelines
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@pytest.fixture
def write_yaml(tmp_path):
    """Returns a function writing YAML text to tmp_path/name and returning its path."""

    def _write(text: str, name: str = "pipeline.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
