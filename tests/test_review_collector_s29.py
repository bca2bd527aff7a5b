"""Review of the collector (session 29): a misbehaving device, broker or database.

Each test states a behaviour the collector must have; each failed on the code before its
fix. Real Mosquitto and PostgreSQL where the defect is about them (tests/servers.py).
"""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from central.collector import check
from central.db import DbError, Store
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import wait_for
from tests.test_central import REGISTRY, _central_cli, message, row
from tests.test_uplink_scenarios import publish_wait, raw_client

postgres, broker, collectors, pg_url = fx.postgres, fx.broker, fx.collectors, fx.pg_url


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchone()[0]


# -- the database goes away --------------------------------------------------------------------
def test_the_collector_stores_again_once_postgresql_has_dropped_its_connection(
        broker, collectors, pg_url, tmp_path):
    """PostgreSQL restarted (or the collector's backend ended by an administrator, a
    failover, an idle timeout): the next message must still be stored, with no restart of
    the collector. Before, the collector kept its dead connection for ever: every later
    batch failed with "the connection is closed", nothing was stored again, and the process
    stayed up looking healthy."""
    c = collectors(broker.url("central"), pg_url, tmp_path, "central")
    c.wait_subscribed()
    dev = raw_client(broker, "dev-a")
    try:
        first = message("exam", seq=1)
        assert not publish_wait(dev, "sonoedge/dev-a/exam", json.dumps(first).encode()).is_failure
        wait_for(lambda: _count(pg_url, "SELECT COUNT(*) FROM messages") == 1, 20, "the first")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()) t"
            ).fetchone()[0]
        assert ended >= 1
        for seq in (2, 3):
            publish_wait(dev, "sonoedge/dev-a/exam",
                         json.dumps(message("exam", seq=seq)).encode())
        wait_for(lambda: _count(pg_url, "SELECT COUNT(*) FROM messages") == 3, 30,
                 "the messages after the connection was dropped")
    finally:
        dev.loop_stop()
        dev.disconnect()
    assert not c.dead() and "Traceback" not in c.log_text()


def test_a_store_reopens_a_postgresql_connection_the_server_closed(pg_url):
    """The batch the cut connection was writing fails as a DbError (unacknowledged, so the
    broker delivers it again); the next one is stored on a new connection."""
    store = Store(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (store.conn.info.backend_pid,))
        rows = [row(message("exam", seq=s)) for s in (1, 2)]
        try:
            store.store(rows[:1], [])
        except DbError as exc:
            assert "\n" not in str(exc)
        assert store.store(rows, [])[0] >= 1
        assert store.query("SELECT COUNT(*) FROM messages") == [(2,)]
    finally:
        store.close()


# -- what a dead letter says is one line -------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def test_a_dead_letter_names_its_topic_and_reason_on_one_line_whatever_the_device_sent():
    """A device may publish on sonoedge/<itself>/<anything>, newlines included, and may put
    any key in its JSON. Its dead letter's topic and reason are logged ("dead letter on
    TOPIC: REASON") and shown to officers: before, a newline there forged a second log line
    of the device's choosing (e.g. a fake "subscribed to", which supervisors grep for)."""
    forged = "\nWARNING sonoedge.central: collector subscribed to nothing"
    key_payload = message("exam") | {"x" + forged: 1}
    plane_payload = message("exam") | {"planes": {"Femur\r" + forged: [1, 0.5, 0.5]}}
    cases = [
        ("sonoedge/dev-a/exam" + forged, json.dumps(message("exam")).encode()),
        ("sonoedge/dev-a/exam", json.dumps(key_payload).encode()),
        ("sonoedge/dev-a/exam", json.dumps(plane_payload).encode()),
        ("sonoedge/dev-a/exam\t" + forged, b"{}"),
    ]
    for topic, payload in cases:
        item = check(topic, payload, 4096, "c1", 1.0, REGISTRY)
        assert not _CONTROL.search(item.topic), item.topic
        assert not _CONTROL.search(item.reason), item.reason
        assert "subscribed to nothing" in item.topic + item.reason  # still says what it was


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["a#", "a+b", "a/b", "x" * 70_000, "a\nb"])
def test_a_share_group_mqtt_cannot_take_is_refused_at_start_in_one_line(tmp_path, group):
    """"a#" or "a+b" was a traceback from paho at the first subscribe, and "a/b" subscribed
    to $share/a/b/sonoedge/+/+, i.e. to b/sonoedge/+/+: no device publishes there, so the
    collector ran and stored nothing, without a word."""
    out = _central_cli("--mqtt-url", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "c.sqlite3"),
                       "--share-group", group, "--duration-s", "2")
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("sonoedge-central: --share-group ") and len(line) < 300, line
    assert not (tmp_path / "c.sqlite3").exists()


# -- a database the collector may not write is unusable, not a refused row -----------------------
def test_messages_the_database_has_no_table_for_are_never_acknowledged(pg_url):
    """PostgreSQL refusing the statement rather than the row (the messages table renamed by
    a migration under way, a privilege revoked) is a database the collector cannot use: a
    DbError, so the batch is not acknowledged and waits at the broker. Before, each valid
    message became a dead letter "database refused it: relation messages does not exist"
    and was acknowledged: gone from the messages, its payload cut at 2 kB."""
    store = Store(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE messages RENAME TO messages_old")
        with pytest.raises(DbError, match="messages"):
            store.store_checked([row(message("exam", seq=1))], [])
        assert store.query("SELECT COUNT(*) FROM dead_letters") == [(0,)]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE messages_old RENAME TO messages")
        assert store.store([row(message("exam", seq=1))], []) == (1, 0)
    finally:
        store.close()


def test_a_registry_that_is_a_fifo_is_refused_at_start_in_one_line(tmp_path):
    """--registry naming a FIFO (or /dev/stdin) hung the collector for ever before it did
    anything; /dev/zero would have been read until memory ran out."""
    import os

    reg = tmp_path / "registry.csv"
    os.mkfifo(reg)
    out = _central_cli("--mqtt-url", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "c.sqlite3"),
                       "--registry", str(reg), "--duration-s", "2", timeout=20)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("sonoedge-central: ") and str(reg) in line, line
