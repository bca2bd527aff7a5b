"""Shared fixtures: the real data beside the repo and the shipped models."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
# the first tests (the cores are not busy all the time: many tests wait on servers and
# browsers): the two-year district's seed (40-60 s) and the emulated arm64 run (about 60-75 s
# from scratch), which the suite waited for in turn. Each job: the fixture that waits for
# it, its command.
BACKGROUND = {
    "_two_year_district": [sys.executable, "-m", "tests.seed_two_year", "{folder}"],
    "arm64_emulated_run": ["bash", "scripts/arm64_emulated.sh"],
}
_JOBS: dict[str, dict] = {}  # fixture -> {"folder", "proc", "log"}
# Under xdist (`make test`) the workers learn a job the controller started from this
# variable's folder, where its exit code lands in a file of its own when it ends.
_JOB_ENV = "SONOEDGE_TEST_JOB_"


def _start_job(name: str) -> None:
    if name == "arm64_emulated_run" and os.geteuid() != 0:
        return  # its test is skipped: debootstrap and unshare -m need root
    folder = Path(tempfile.mkdtemp(prefix=f"sonoedge-{name.strip('_')}-"))
    log = open(folder / "job.log", "wb")
    argv = [a.replace("{folder}", str(folder)) for a in BACKGROUND[name]]
    # the exit code written last, by the shell that waited for it: a worker polls for it
    wrapped = ["sh", "-c", '"$@"; echo $? > "$0/rc.tmp" && mv "$0/rc.tmp" "$0/rc"',
               str(folder), *argv]
    _JOBS[name] = {"folder": folder, "log": log, "proc": subprocess.Popen(
        wrapped, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_job_env(),
        start_new_session=True,  # killed as a group: the shell and its job
        preexec_fn=lambda: os.nice(5))}  # the tests in the foreground first
    os.environ[_JOB_ENV + name.strip("_")] = str(folder)


def pytest_configure(config) -> None:
    """Under xdist, the controller starts the jobs of a whole-suite run (`make test`) before
    its workers are spawned: a worker only collects, and started in the worker whose test
    needs it, each job ran in its foreground (a minute of the seed, one of debootstrap)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses",
                                                             None):
        return
    whole = (config.args_source == pytest.Config.ArgsSource.TESTPATHS
             and not config.option.keyword and not config.option.markexpr
             and not config.getoption("deselect", None))
    if whole:
        for name in sorted(BACKGROUND):
            _start_job(name)


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect have chosen the items
def pytest_collection_modifyitems(session, config, items) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or _JOBS:
        # Under xdist every worker collects every test but runs only some files: the
        # controller started the jobs of a whole-suite run (pytest_configure); with files
        # or -k chosen, a job runs in the foreground of the worker whose test needs it.
        return
    needed = {name for item in items for name in item.fixturenames if name in BACKGROUND}
    for name in sorted(needed - set(_JOBS)):
        _start_job(name)


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
        _stop(job)
        job["log"].close()
        shutil.rmtree(job["folder"], ignore_errors=True)


def background_job(name: str, timeout_s: float = 1800) -> tuple[int, str, Path] | None:
    """Wait for a background job: (exit code, the tail of its output, its folder), or None
    where none was started (its test collected some other way)."""
    job = _JOBS.get(name)
    started = os.environ.get(_JOB_ENV + name.strip("_"))
    if job is None and not started:
        return None
    folder = job["folder"] if job else Path(started)  # the xdist controller's, or this one's
    deadline = time.monotonic() + timeout_s
    while not (folder / "rc").is_file():
        if job and job["proc"].poll() is not None and not (folder / "rc").is_file():
            return 1, f"its shell ended ({job['proc'].returncode}) without an exit code", folder
        if time.monotonic() > deadline:
            if job:
                _stop(job)
            raise TimeoutError(f"background job {name} not done in {timeout_s:.0f} s")
        time.sleep(0.5)
    if job:
        job["log"].flush()
    tail = (folder / "job.log").read_text(errors="replace")[-4000:]
    return int((folder / "rc").read_text().strip() or 1), tail, folder


def _stop(job: dict) -> None:
    if job["proc"].poll() is None:
        os.killpg(job["proc"].pid, signal.SIGKILL)
        job["proc"].wait(10)


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
