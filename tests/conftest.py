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


# The two-year district, seeded by a process of its own beside the first tests once
# collection shows one needs it (tests/seed_two_year.py): {"folder", "proc", "log"}.
_SEEDING: dict = {}


def pytest_collection_modifyitems(session, config, items) -> None:
    if _SEEDING or not any("_two_year_district" in item.fixturenames for item in items):
        return
    import subprocess
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="sonoedge-two-year-"))
    log = open(folder / "seed.log", "wb")
    _SEEDING.update(folder=folder, log=log, proc=subprocess.Popen(
        [sys.executable, "-m", "tests.seed_two_year", str(folder)], cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT))


def pytest_sessionfinish(session, exitstatus) -> None:
    if not _SEEDING:
        return
    proc = _SEEDING["proc"]
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    _SEEDING["log"].close()
    shutil.rmtree(_SEEDING["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def _two_year_district(tmp_path_factory) -> Path:
    """The seeded district (tests/seed_two_year.py), rolled up, once per run: its folder.
    Two test modules read it."""
    from tests.seed_two_year import DB_NAME, make

    if not _SEEDING:  # collected without it (a plugin's selection): seeded here
        folder = tmp_path_factory.mktemp("two_year_district")
        make(folder)
        return folder
    proc, folder = _SEEDING["proc"], _SEEDING["folder"]
    try:
        proc.wait(timeout=900)
    except Exception:
        proc.kill()
        raise
    if proc.returncode != 0:
        pytest.fail("seeding the two-year district failed: "
                    + (folder / "seed.log").read_text(errors="replace")[-2000:])
    assert (folder / DB_NAME).is_file()
    return folder  # read only: each test copies it (removed when the session ends)


@pytest.fixture()
def two_year_district(_two_year_district, tmp_path) -> Path:
    """A private copy of the seeded two-year district's database (and the dashboard's file
    beside it): the path of its collector database."""
    dest = tmp_path / "two_year_district"
    dest.mkdir()
    for part in _two_year_district.iterdir():
        shutil.copyfile(part, dest / part.name)
    return dest / "central.sqlite3"
