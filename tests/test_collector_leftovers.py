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

And the review's leftovers of those: the quota keeps two numbers per device, not a time
per letter, and says what its fixed window allows; a dead letter delivered again, which
the database holds already, spends no quota (both failed before). The bound on the QoS 0
messages held, rewritten as one pass, is pinned as it was.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import re
import sqlite3
import time

import paho.mqtt.client as mqtt
import psycopg
from psycopg import sql

from central.collector import BAD_TOPIC, Collector, CollectorSettings, DeadLetterQuota, quota_key
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


_letters = itertools.count()


def write(quota: DeadLetterQuota, now: float, n: int, device: str = "dev-a") -> int:
    """How many of ``n`` new dead letters of ``device`` a batch at ``now`` writes."""
    plan = quota.plan(now)
    written = sum(plan(dead_letter(f"sonoedge/{device}/exam", b"{bad %d" % next(_letters), "r",
                                   "c1", 1.0)) for _ in range(n))
    plan.commit()  # each one admitted is new, so written
    return written


def test_the_quota_is_a_fixed_window_its_first_letter_opens_so_at_most_twice_it_rolling():
    """A window opens with the first letter written after the last one closed and lasts
    window_s: limit letters in it, and all of them again in the next, so up to 2 x limit in
    a rolling window_s and (ceil(T / window_s) + 1) x limit in any T. Letters coming at
    most limit per rolling window_s are all written. Two numbers a device, and a device
    whose window has closed is forgotten."""
    quota = DeadLetterQuota(3, 10.0)
    assert write(quota, 100.0, 1) == 1  # opens dev-a's window, [100, 110)
    assert write(quota, 108.0, 5) == 2
    assert write(quota, 109.9, 1) == 0
    assert write(quota, 110.0, 5) == 3  # a new window, whole: 5 written in (100, 110]
    assert write(quota, 119.9, 1) == 0

    quota, times = DeadLetterQuota(3, 10.0), []  # a flood: 4 asked for every 0.7 s
    for i in range(1500):
        now = 200.0 + 0.7 * i
        times += [now] * write(quota, now, 4)
    assert len(times) == 3 * 100  # a window opens every 15 asks (10.5 s), 3 written in it
    for t in times:
        for span in (0.5, 10.0, 25.0, 100.0):
            assert sum(t <= u <= t + span for u in times) <= (math.ceil(span / 10) + 1) * 3

    quota = DeadLetterQuota(4, 10.0)  # at most 4 in every rolling 10 s: each one written
    assert all(write(quota, 2000.0 + 2.5 * i, 1) == 1 for i in range(100))

    quota = DeadLetterQuota(3, 10.0)
    for i in range(1000):
        write(quota, 0.5, 1, device=f"dev-{i}")
    write(quota, 20.0, 2, device="dev-x")  # a window on: the quiet devices are swept
    assert quota._windows == {"dev-x": (20.0, 2)}  # when its window opened, and its count


def test_a_dead_letter_delivered_again_spends_its_devices_quota_once(
        broker, collectors, tmp_path, url):
    """dev-a's quota is 3. The same broken message comes 5 times, each in a batch of its
    own, as the broker delivers a message again whose acknowledgement was lost: the
    database holds it once, and it spends one of the 3, so dev-a's next 2 broken messages
    are written too. It is logged and counted once, as it is written once."""
    c = collectors(broker.url("central"), url, tmp_path, "central",
                   extra=("--dead-letter-quota", "3"))
    c.wait_subscribed()
    a = raw_client(broker, "dev-a")
    try:
        for i in range(1, 7):
            for payload in [b"{broken"] if i <= 5 else [b"{broken 1", b"{broken 2"]:
                publish_wait(a, "sonoedge/dev-a/exam", payload)
            # a valid message after it, stored: the batch holding the letter is committed
            publish_wait(a, "sonoedge/dev-a/exam", encode(message("exam", seq=i)))
            wait_for(lambda n=i: messages_count(url) == n, 20, f"batch {i} stored")
        assert query(url, "SELECT preview FROM dead_letters ORDER BY preview") == [
            ("{broken",), ("{broken 1",), ("{broken 2",)]
    finally:
        a.loop_stop()
        a.disconnect()
    c.stop()
    log = c.log_text()
    stats = final_stats(log)
    assert (stats["dead"], stats["dead_over_quota"], stats["duplicates"]) == (3, 0, 0), stats
    assert log.count("dead letter on sonoedge/dev-a/") == 3
    assert "over quota" not in log and "Traceback" not in log


# -- one msg_id, two contents -------------------------------------------------------------------
def test_a_msg_id_stored_with_other_content_is_a_conflict_dead_letter_and_redeliveries_are_not(
        broker, collectors, tmp_path, url):
    """First wins. The same message again, byte for byte or with its keys in another order
    and other white space, is a silent duplicate; so is the same exam queued again under a
    new seq (a device that lost its outbox: ``resent``), and the same message re-dated by
    its box when its clock was set (every time moved forward by one step; its first copy,
    sent before the set, had arrived but its ack had not). Other content under the stored
    msg_id, from the device itself or from another one, is a dead letter naming the msg_id,
    counted as a conflict: times moved by different amounts, or by less than a step, too."""
    c = collectors(broker.url("central"), url, tmp_path, "central")
    c.wait_subscribed()
    a, b = raw_client(broker, "dev-a"), raw_client(broker, "dev-b")
    first = message("exam", seq=1)
    mid = first["msg_id"]
    try:
        publish_wait(a, "sonoedge/dev-a/exam", encode(first))
        wait_for(lambda: messages_count(url) == 1, 20, "the first message")
        step = 60 * 86400.0  # the box's clock was set 60 days forward
        moved = {k: round(first[k] + step, 3) for k in ("ts", "started_ts", "ended_ts")}
        same = [encode(first),
                json.dumps(dict(reversed(list(first.items()))), indent=3).encode(),
                encode({**first, "seq": 2, "boot_id": "boot-2", "ts": first["ts"] + 600,
                        "mono_s": 3.5}),
                encode({**first, **moved})]
        for payload in same:
            publish_wait(a, "sonoedge/dev-a/exam", payload)
        changed = {**first, "planes": {**first["planes"], "Femur": [2, 0.53]}}
        uneven = {**first, "started_ts": first["started_ts"] + step,
                  "ended_ts": first["ended_ts"] + step + 3600}
        slight = {**first, "started_ts": first["started_ts"] + 30,
                  "ended_ts": first["ended_ts"] + 30}
        for other in (changed, uneven, slight, {**changed, **moved}):
            publish_wait(a, "sonoedge/dev-a/exam", encode(other))
        publish_wait(b, "sonoedge/dev-b/exam", encode({**first, "device_id": "dev-b"}))
        wait_for(lambda: query(url, "SELECT COUNT(*) FROM dead_letters")[0][0] >= 5, 20,
                 "five conflicts")
        time.sleep(1.0)  # whatever else was on its way has landed
        dead = query(url, "SELECT topic, reason, preview FROM dead_letters ORDER BY topic")
        assert [d[0] for d in dead] == ["sonoedge/dev-a/exam"] * 4 + ["sonoedge/dev-b/exam"]
        for _, reason, _ in dead:
            assert reason.startswith(f"conflict: msg_id {mid} ") and "dev-a, seq 1" in reason
        previews = [json.loads(d[2]) for d in dead[:4]]
        for other in (changed, uneven, slight):  # what the district must look at
            assert other in previews
        (stored,) = query(url, "SELECT payload FROM messages WHERE msg_id = ?", (mid,))
        assert stored[0] == encode(first).decode()  # the first is kept
        assert query(url, "SELECT seq FROM resent") == [(2,)]
    finally:
        for client in (a, b):
            client.loop_stop()
            client.disconnect()
    c.stop()
    stats = final_stats(c.log_text())
    assert (stats["stored"], stats["duplicates"], stats["conflicts"]) == (1, 4, 5), stats
    assert stats["dead"] == 5, stats


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


def test_qos0_messages_held_beyond_receive_maximum_are_dropped_and_counted_the_rest_kept(
        tmp_path):
    """While the database is down, the first ``receive_maximum`` QoS 0 messages held are
    kept with every QoS 1 one, in the order received; the later QoS 0 ones are dropped."""
    c = Collector(CollectorSettings(mqtt_url="mqtt://127.0.0.1", receive_maximum=2,
                                    db_url=str(tmp_path / "central.sqlite3")))
    held = []
    for mid, qos in enumerate([1, 0, 1, 0, 0, 1, 0]):
        held.append(mqtt.MQTTMessage(mid, b"sonoedge/dev-a/exam"))
        held[-1].qos = qos
    try:
        kept = c._hold(held)
        assert [m.mid for m in kept] == [0, 1, 2, 3, 5]
        assert c.stats["qos0_dropped"] == 2
        assert c._hold(kept) == kept and c.stats["qos0_dropped"] == 2
    finally:
        c.store.close()
