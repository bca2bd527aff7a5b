"""Shared fixtures for the MQTT tests: a private broker, PostgreSQL, collectors, devices.

Import the fixtures into a test module with ``from tests.conftest_mqtt import *``-style
explicit imports. Every process started here is stopped at teardown and every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import Mosquitto, Postgres
from wire.schema import QUEUED_KINDS

REPO = Path(__file__).resolve().parents[1]
DEVICES = ("dev-a", "dev-b")


def py_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str,
             interval_s: float = 0.1):
    """Poll until ``predicate()`` is truthy; fail the test naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def broker(tmp_path) -> Mosquitto:
    """A broker with two devices and one central user, ACL from board.provision."""
    m = Mosquitto(tmp_path / "broker")
    for dev in DEVICES:
        m.add_user(dev, "device")
    m.add_user("central", "central")
    m.add_user("central-2", "central")  # client id = user name: one user per collector
    m.start()
    yield m
    m.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def pg_url(postgres):
    """A database of its own on the test cluster, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres.url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """The collector's database on each backend: a SQLite file, or a PostgreSQL database
    of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "central.sqlite3")
    return request.getfixturevalue("pg_url")


SHARE_GROUP = "test-group-5Fq2xZ8rT1"  # as `secrets.token_urlsafe(16)` makes one


class CollectorProc:
    """``python -m central.cli`` as a real process, its log in a file."""

    def __init__(self, url: str, db: str, workdir: Path, client_id: str, share: bool = False,
                 extra: tuple[str, ...] = ()):
        self.log = workdir / f"{client_id}.log"
        self.db = db
        args = [sys.executable, "-m", "central.cli", "--mqtt-url", url, "--db", db,
                "--client-id", client_id, "--reconnect-max-s", "0.5", "--duration-s", "120",
                *extra]
        if share:  # the collectors' secret group (central/collector.py)
            args += ["--share-group", SHARE_GROUP]
        self._logfile = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._logfile, stderr=subprocess.STDOUT,
                                     env=py_env(), cwd=str(REPO))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_subscribed(self, count: int = 1, timeout_s: float = 15.0) -> None:
        wait_for(lambda: self.log_text().count("subscribed to") >= count or self.dead(),
                 timeout_s, f"collector subscription #{count}")
        assert not self.dead(), self.log_text()

    def dead(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._logfile.close()


@pytest.fixture
def collectors():
    """Factory for collector processes; all of them are stopped at teardown."""
    started: list[CollectorProc] = []

    def start(*args, **kw) -> CollectorProc:
        c = CollectorProc(*args, **kw)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def run_device(state_dir: Path, url: str, device: str = "dev-a", timeout_s: float = 60,
               **opts) -> dict:
    """Run the device simulator to completion; returns its final outbox counts."""
    out = subprocess.run(device_args(state_dir, url, device, **opts), capture_output=True,
                         text=True, env=py_env(), cwd=str(REPO), timeout=timeout_s)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"log": out.stderr}


def device_args(state_dir: Path, url: str, device: str = "dev-a", **opts) -> list[str]:
    args = [sys.executable, "-m", "tests.device_sim", "--state-dir", str(state_dir),
            "--mqtt-url", url, "--device-id", device,
            "--produced", str(produced_file(state_dir))]
    for key, value in opts.items():
        flag = f"--{key.replace('_', '-')}"
        args += [flag] if value is True else [flag, str(value)]
    return args


def produced_file(state_dir: Path) -> Path:
    """Where the simulator lists what it enqueued: one file per state dir."""
    return state_dir.parent / f"{state_dir.name}.produced"


def produced_ids(state_dir: Path, device: str = "") -> set[str]:
    """msg_ids the device running on ``state_dir`` enqueued (``device`` is informative)."""
    path = produced_file(state_dir)
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def stored(db: str, device: str, kinds: tuple[str, ...] = QUEUED_KINDS) -> list[tuple]:
    """(msg_id, seq, kind) rows the collector stored for ``device``: by default those of
    the kinds that take a seq."""
    marks = ", ".join("?" for _ in kinds)
    sql = (f"SELECT msg_id, seq, kind FROM messages WHERE device_id = ? AND kind IN ({marks}) "
           "ORDER BY seq")
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return list(conn.execute(sql.replace("?", "%s"), (device, *kinds)).fetchall())
    if not Path(db).exists():
        return []
    conn = sqlite3.connect(db, timeout=10)
    try:
        return list(conn.execute(sql, (device, *kinds)).fetchall())
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def outbox_last_seq(state_dir: Path) -> int:
    conn = sqlite3.connect(state_dir / "outbox.sqlite3", timeout=10)
    try:
        return conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0]
    finally:
        conn.close()
