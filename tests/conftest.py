"""Shared fixtures: the real data beside the repo and the shipped models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.capture.demo import default_data_dir

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_dir()
MODELS = REPO / "models"
PLANE_MODEL = "plane_student"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "sononet" / "examples").is_dir():
        pytest.fail(f"real data not found under {DATA} (set SONOEDGE_DATA)")
    return DATA


@pytest.fixture()
def models_copy(tmp_path: Path) -> Path:
    """A private copy of the shipped models, for tests that damage or remove files."""
    dest = tmp_path / "models"
    shutil.copytree(MODELS, dest)
    return dest
