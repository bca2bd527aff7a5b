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


@pytest.fixture(scope="session")
def _two_year_district(tmp_path_factory) -> Path:
    """The seeded district once per run (50 clinics in 5 districts, 2 years; health every 4 h
    instead of every hour, which only the rollup's work depends on), rolled up: seeding
    and rolling it up take 40 s on a slow CPU, and two test modules read it."""
    import time

    from central.dashboard.seed import SeedSettings, seed
    from central.dashboard.store import open_db, refresh

    folder = tmp_path_factory.mktemp("two_year_district")
    path = folder / "central.sqlite3"
    seed(str(path), SeedSettings(health_every_s=4 * 3600, end_ts=time.time()))
    db = open_db(str(path))
    try:
        refresh(db)
    finally:
        db.close()
    return folder


@pytest.fixture()
def two_year_district(_two_year_district, tmp_path) -> Path:
    """A private copy of the seeded two-year district's database (and the dashboard's file
    beside it): the path of its collector database."""
    dest = tmp_path / "two_year_district"
    dest.mkdir()
    for part in _two_year_district.iterdir():
        shutil.copyfile(part, dest / part.name)
    return dest / "central.sqlite3"
