"""Shared fixtures: the real data beside the repo and the shipped models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


# Long, single-threaded work some tests wait for, started as processes of their own beside
# the first tests (the second core is mostly idle) once collection shows a test needs it:
# the two-year district's seed (40-50 s) and the emulated arm64 run (about 60 s), which the
# suite waited for in turn. Each job: the fixture that waits for it, its command.
BACKGROUND = {
    "_two_year_district": [sys.executable, "-m", "tests.seed_two_year", "{folder}"],
    "arm64_emulated_run": ["bash", "scripts/arm64_emulated.sh"],
}
_JOBS: dict[str, dict] = {}  # fixture -> {"folder", "proc", "log"}


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect have chosen the items
def pytest_collection_modifyitems(session, config, items) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Under xdist (`make test`) every worker collects every test but runs only some
        # files: each would start its own copy of every job. The other worker is the
        # overlap, so a job runs in the foreground of the worker whose test needs it.
        return
    needed = {name for item in items for name in item.fixturenames if name in BACKGROUND}
    for name in sorted(needed - set(_JOBS)):
        if name == "arm64_emulated_run" and os.geteuid() != 0:
            continue  # its test is skipped: debootstrap and unshare -m need root
        folder = Path(tempfile.mkdtemp(prefix=f"sonoedge-{name.strip('_')}-"))
        log = open(folder / "job.log", "wb")
        argv = [a.replace("{folder}", str(folder)) for a in BACKGROUND[name]]
        _JOBS[name] = {"folder": folder, "log": log, "proc": subprocess.Popen(
            argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_job_env(),
            preexec_fn=lambda: os.nice(5))}  # the tests in the foreground first


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test's captured output as text xdist can send: a path with a byte that is not UTF-8
    (the hostile-file tests) is logged with a lone surrogate, which a worker cannot encode
    and died of, losing the report of every test after it."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]


def _job_env() -> dict[str, str]:
    """A background job's environment: this Python and the real data, for the scripts."""
    return {**os.environ, "PYTHON": sys.executable, "SONOEDGE_DATA": str(DATA)}


def pytest_sessionfinish(session, exitstatus) -> None:
    for job in _JOBS.values():
        if job["proc"].poll() is None:
            job["proc"].kill()
            job["proc"].wait(10)
        job["log"].close()
        shutil.rmtree(job["folder"], ignore_errors=True)


def background_job(name: str, timeout_s: float = 1800) -> tuple[int, str, Path] | None:
    """Wait for a background job: (exit code, the tail of its output, its folder), or None
    where none was started (its test collected some other way)."""
    job = _JOBS.get(name)
    if job is None:
        return None
    try:
        job["proc"].wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        job["proc"].kill()
        raise
    job["log"].flush()
    tail = (job["folder"] / "job.log").read_text(errors="replace")[-4000:]
    return job["proc"].returncode, tail, job["folder"]


@pytest.fixture(scope="session")
def _two_year_district(tmp_path_factory) -> Path:
    """The seeded district (tests/seed_two_year.py), rolled up, once per run: its folder,
    read only (each test copies it). Two test modules read it."""
    from tests.seed_two_year import DB_NAME, make

    done = background_job("_two_year_district", 900)
    if done is None:
        folder = tmp_path_factory.mktemp("two_year_district")
        make(folder)
        return folder
    code, tail, folder = done
    if code != 0:
        pytest.fail(f"seeding the two-year district failed: {tail[-2000:]}")
    assert (folder / DB_NAME).is_file()
    return folder


@pytest.fixture(scope="session")
def arm64_emulated_run() -> tuple[int, str]:
    """scripts/arm64_emulated.sh's exit code and output (tests/test_score_on_emulated_arm64.py)."""
    done = background_job("arm64_emulated_run")
    if done is None:
        out = subprocess.run(BACKGROUND["arm64_emulated_run"], capture_output=True, text=True,
                             cwd=REPO, timeout=1800, env=_job_env())
        return out.returncode, out.stdout + out.stderr
    return done[0], done[1]


@pytest.fixture()
def two_year_district(_two_year_district, tmp_path) -> Path:
    """A private copy of the seeded two-year district's database (and the dashboard's file
    beside it): the path of its collector database."""
    dest = tmp_path / "two_year_district"
    dest.mkdir()
    for part in _two_year_district.iterdir():
        shutil.copyfile(part, dest / part.name)
    return dest / "central.sqlite3"
