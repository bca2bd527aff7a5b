"""The collector's three leftovers: a dead-letter quota per device, conflicting duplicates,
and a database that is down.

Each test states a behaviour on real servers (Mosquitto on a free loopback port, the
collector as its own process, SQLite and a real PostgreSQL from ``tests/servers.py``), and
each failed on the code before the change:

* one device could fill the district's disk with dead letters, as fast as it published;
* a message under a stored ``msg_id`` with other content was dropped as a duplicate, and
  no one could see that two messages had claimed one id;
* a database that could not be written was tried again about twice a second, reconnecting
  to the broker each time, with log lines to match.
"""

from __future__ import annotations

import ast
import json
import re
import sqlite3
import time

import psycopg
from psycopg import sql

from central.collector import BAD_TOPIC, DeadLetterQuota, quota_key
from central.db import Store, dead_letter
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import wait_for
from tests.test_central import encode, message
from tests.test_uplink_scenarios import publish_wait, raw_client

postgres, broker, collectors = fx.postgres, fx.broker, fx.collectors  # fixtures
pg_url, url = fx.pg_url, fx.url  # fixtures


def query(db: str, text: str, params: tuple = ()) -> list[tuple]:
    store = Store(db, create=False)
    try:
        return store.query(text, params)
    finally:
        store.close()


def dead_of(db: str, device: str) -> list[tuple]:
    """(topic, reason, received_ts) of the dead letters on ``device``'s topics."""
    return [r for r in query(db, "SELECT topic, reason, received_ts FROM dead_letters "
                                 "ORDER BY received_ts")
            if r[0].startswith(f"sonoedge/{device}/")]


def messages_count(db: str) -> int:
    return query(db, "SELECT COUNT(*) FROM messages")[0][0]


def final_stats(log_text: str) -> dict:
    """The counts the collector logs as it stops."""
    (line,) = [x for x in log_text.splitlines() if " stopping: " in x]
    return ast.literal_eval(line.split(" stopping: ", 1)[1])


# -- a device flooding dead letters --------------------------------------------------------------
def test_a_device_flooding_dead_letters_gets_its_quota_per_window_and_its_messages_stored(
        broker, collectors, tmp_path):
    """dev-a sends 10 broken messages with 2 valid ones among them, then a conflicting
    copy of one of them; the collector keeps 3 dead letters of dev-a per 4 s. dev-a's valid
    messages are stored, dev-b's dead letters are its own quota's, and what is over quota
    is counted and said in one line, not logged letter by letter. Once the window has
    passed, dev-a's quota is back."""
    db = str(tmp_path / "central.sqlite3")
    window = 4.0
    c = collectors(broker.url("central"), db, tmp_path, "central",
                   extra=("--dead-letter-quota", "3", "--dead-letter-window-s", str(window)))
    c.wait_subscribed()
    a, b = raw_client(broker, "dev-a"), raw_client(broker, "dev-b")
    valid = [message("exam", seq=s) for s in (1, 2)]
    try:
        for i in range(10):
            publish_wait(a, "sonoedge/dev-a/exam", b"{broken %d" % i)
            if i in (3, 7):
                publish_wait(a, "sonoedge/dev-a/exam", encode(valid[i // 4]))
        publish_wait(a, "sonoedge/dev-a/exam",
                     encode({**valid[0], "planes": {**valid[0]["planes"], "Femur": [2, 0.5]}}))
        for i in range(2):
            publish_wait(b, "sonoedge/dev-b/health", b"[%d]" % i)
        wait_for(lambda: messages_count(db) == 2 and len(dead_of(db, "dev-b")) == 2, 20,
                 "dev-a's valid messages and dev-b's dead letters")
        time.sleep(1.0)  # whatever else was on its way has landed
        kept = dead_of(db, "dev-a")
        assert len(kept) == 3, kept
        assert sorted(r[0] for r in query(db, "SELECT msg_id FROM messages")) == sorted(
            v["msg_id"] for v in valid)

        # the window rolls on: 3 more of dev-a's are written, the 4th is not
        wait_for(lambda: time.time() > max(r[2] for r in kept) + window + 0.5, window + 5,
                 "the quota's window to pass")
        for i in range(4):
            publish_wait(a, "sonoedge/dev-a/health", b"[%d]" % (100 + i))
        wait_for(lambda: len(dead_of(db, "dev-a")) >= 6, 20, "dev-a's quota back")
        time.sleep(1.0)
        assert len(dead_of(db, "dev-a")) == 6
    finally:
        for client in (a, b):
            client.loop_stop()
            client.disconnect()
    c.stop()
    log = c.log_text()
    stats = final_stats(log)
    assert stats["stored"] == 2 and stats["dead"] == 8, stats
    assert stats["dead_over_quota"] == 8 + 1, stats  # 7 broken, the conflict, 1 after
    assert stats["conflicts"] == 1, stats
    assert log.count("dead letter on sonoedge/dev-a/") == 6  # only the letters kept
    over = [x for x in log.splitlines() if "over quota" in x]
    # the first as it happens, the rest summed up (here: at the stop, within a minute)
    assert len(over) == 2, over
    assert sum(int(re.search(r"(\d+) dead letter\(s\) over quota", x)[1])
               for x in over) == 9, over
    assert all("dev-a " in x and "dev-b" not in x for x in over), over
    assert "Traceback" not in log


def test_the_quota_is_per_device_with_one_bucket_for_topics_without_one_and_spent_once_stored():
    assert quota_key("sonoedge/dev-a/exam") == "dev-a"
    assert quota_key("sonoedge/dev-a/exam/x") == "dev-a"
    for topic in ("other/dev-a/exam", "sonoedge", "sonoedge/\\x0a/exam", "sonoedge//exam",
                  "sonoedge/-dev/exam"):
        assert quota_key(topic) == BAD_TOPIC, topic
    quota = DeadLetterQuota(2, 10.0)
    letters = [dead_letter(t, b"x%d" % i, "r", "c1", 1.0) for i, t in enumerate(
        ["sonoedge/dev-a/exam"] * 3 + ["odd/topic", "elsewhere", "x/y/z"])]
    failed = quota.plan(100.0)  # a batch the database did not take spends nothing
    assert [failed(d) for d in letters] == [True, True, False, True, True, False]
    plan = quota.plan(100.0)
    assert [plan(d) for d in letters] == [True, True, False, True, True, False]
    assert [plan(d) for d in letters] == [True, True, False, True, True, False]  # asked again
    plan.commit()
    assert quota.plan(105.0)(dead_letter("sonoedge/dev-a/exam", b"new", "r", "c1", 1.0)) \
        is False
    assert quota.plan(110.5)(dead_letter("sonoedge/dev-a/exam", b"new", "r", "c1", 1.0))


# -- one msg_id, two contents -------------------------------------------------------------------
def test_a_msg_id_stored_with_other_content_is_a_conflict_dead_letter_and_redeliveries_are_not(
        broker, collectors, tmp_path, url):
    """First wins. The same message again, byte for byte or with its keys in another order
    and other white space, is a silent duplicate; so is the same exam queued again under a
    new seq (a device that lost its outbox: ``resent``). Other content under the stored
    msg_id, from the device itself or from another one, is a dead letter naming the msg_id,
    counted as a conflict."""
    c = collectors(broker.url("central"), url, tmp_path, "central")
    c.wait_subscribed()
    a, b = raw_client(broker, "dev-a"), raw_client(broker, "dev-b")
    first = message("exam", seq=1)
    mid = first["msg_id"]
    try:
        publish_wait(a, "sonoedge/dev-a/exam", encode(first))
        wait_for(lambda: messages_count(url) == 1, 20, "the first message")
        same = [encode(first),
                json.dumps(dict(reversed(list(first.items()))), indent=3).encode(),
                encode({**first, "seq": 2, "boot_id": "boot-2", "ts": first["ts"] + 600,
                        "mono_s": 3.5})]
        for payload in same:
            publish_wait(a, "sonoedge/dev-a/exam", payload)
        changed = {**first, "planes": {**first["planes"], "Femur": [2, 0.53]}}
        publish_wait(a, "sonoedge/dev-a/exam", encode(changed))
        publish_wait(b, "sonoedge/dev-b/exam", encode({**first, "device_id": "dev-b"}))
        wait_for(lambda: query(url, "SELECT COUNT(*) FROM dead_letters")[0][0] >= 2, 20,
                 "two conflicts")
        time.sleep(1.0)  # whatever else was on its way has landed
        dead = query(url, "SELECT topic, reason, preview FROM dead_letters ORDER BY topic")
        assert [d[0] for d in dead] == ["sonoedge/dev-a/exam", "sonoedge/dev-b/exam"]
        for _, reason, _ in dead:
            assert reason.startswith(f"conflict: msg_id {mid} ") and "dev-a, seq 1" in reason
        assert json.loads(dead[0][2]) == changed  # what the district must look at
        (stored,) = query(url, "SELECT payload FROM messages WHERE msg_id = ?", (mid,))
        assert stored[0] == encode(first).decode()  # the first is kept
        assert query(url, "SELECT seq FROM resent") == [(2,)]
    finally:
        for client in (a, b):
            client.loop_stop()
            client.disconnect()
    c.stop()
    stats = final_stats(c.log_text())
    assert (stats["stored"], stats["duplicates"], stats["conflicts"]) == (1, 3, 2), stats
    assert stats["dead"] == 2, stats


# -- the database is down ------------------------------------------------------------------------
def test_postgresql_down_is_retried_with_a_doubling_wait_and_its_messages_held_then_stored(
        broker, collectors, postgres, pg_url, tmp_path):
    """The collector's database stops taking connections for 8 s while a device sends.
    The collector tries again after waits doubling from 0.5 s (at most 6 connections
    refused in 8 s; before, one every half second and a reconnect to the broker each time),
    keeps its broker session, says once that the database is down and once that it is
    back, and then stores every message held, once."""
    name = pg_url.rsplit("/", 1)[1]
    refused = f'database "{name}" is not currently accepting connections'
    pg_log = postgres.root / "pg.log"

    def allow(yes: bool) -> None:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if yes else "false")))
            if not yes:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = %s", (name,))

    c = collectors(broker.url("central"), pg_url, tmp_path, "central")
    c.wait_subscribed()
    dev = raw_client(broker, "dev-a")
    sent = [message("exam", seq=s) for s in (1, 2, 3, 4)]
    try:
        publish_wait(dev, "sonoedge/dev-a/exam", encode(sent[0]))
        wait_for(lambda: messages_count(pg_url) == 1, 20, "the first message")
        allow(False)
        before = pg_log.read_text(errors="replace").count(refused)
        for m in sent[1:]:
            publish_wait(dev, "sonoedge/dev-a/exam", encode(m))
        time.sleep(8.0)
        tries = pg_log.read_text(errors="replace").count(refused) - before
        assert 2 <= tries <= 6, f"{tries} connections refused in 8 s"
        allow(True)
        wait_for(lambda: messages_count(pg_url) == 4, 20, "the held messages stored")
    finally:
        allow(True)
        dev.loop_stop()
        dev.disconnect()
    c.stop()
    log = c.log_text()
    assert log.count("subscribed to") == 1, log  # the broker session was kept
    assert len([x for x in log.splitlines() if "database down" in x]) == 1, log
    assert len([x for x in log.splitlines() if "database back" in x]) == 1, log
    assert sorted(r[0] for r in query(pg_url, "SELECT msg_id FROM messages")) == sorted(
        m["msg_id"] for m in sent)
    stats = final_stats(log)
    assert (stats["stored"], stats["duplicates"], stats["dead"]) == (4, 0, 0), stats
    assert "Traceback" not in log


def test_a_sqlite_database_that_cannot_be_written_holds_the_messages_and_says_so_once(
        broker, collectors, tmp_path):
    """The same on SQLite, its messages table gone for 3 s (a migration under way): the
    messages wait unacknowledged in the collector, which stays subscribed, and are
    stored once it is back."""
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central")
    c.wait_subscribed()
    dev = raw_client(broker, "dev-a")
    sent = [message("health", seq=s) for s in (1, 2, 3)]

    def rename(old: str, new: str) -> None:
        conn = sqlite3.connect(db, timeout=10)
        try:
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
            conn.commit()
        finally:
            conn.close()

    try:
        publish_wait(dev, "sonoedge/dev-a/health", encode(sent[0]))
        wait_for(lambda: messages_count(db) == 1, 20, "the first message")
        rename("messages", "messages_away")
        for m in sent[1:]:
            publish_wait(dev, "sonoedge/dev-a/health", encode(m))
        wait_for(lambda: "no such table" in c.log_text(), 10, "a try that failed")
        time.sleep(3.0)
        rename("messages_away", "messages")
        wait_for(lambda: messages_count(db) == 3, 20, "the held messages stored")
    finally:
        dev.loop_stop()
        dev.disconnect()
    c.stop()
    log = c.log_text()
    assert log.count("subscribed to") == 1, log
    assert len([x for x in log.splitlines() if "database down" in x]) == 1, log
    assert len([x for x in log.splitlines() if "database back" in x]) == 1, log
    assert "no such table" in log and "Traceback" not in log
    assert final_stats(log)["stored"] == 3
