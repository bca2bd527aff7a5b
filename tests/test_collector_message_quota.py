"""One box cannot fill the district's disk with valid messages, and nothing a box accepted
is lost for it.

Before, a device's valid messages were stored whatever its quota (only dead letters had
one): a box with valid credentials (a firmware looping, a stolen box's password) could
send valid, distinct exams, health and dates corrections as fast as the broker took them,
fill the district's disk, and every other clinic's messages were then refused. Now each
device writes at most ``--exam-quota`` of each kind with a receipt and ``--health-quota``
of each other kind per ``--message-window-s`` (central/collector.py ``MessageQuota``). An
exam over it gets no receipt: its box keeps it and sends it again after its
``resend_after_s``, and it is stored once a window with room has come. Health over it is
dropped (the next one repeats its figures). A redelivery the database holds spends nothing
and is receipted whatever the quota.

Real Mosquitto with the provisioned ACL, the real collector as its own process, SQLite and
a real PostgreSQL, and the real outbox and uplink (``tests/device_sim.py``). Each test
failed on the code before the change.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest

from central.collector import MessageQuota
from central.db import Store
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import REPO, produced_file, py_env, run_device, stored, wait_for
from tests.test_central import encode, message, row
from tests.test_uplink_scenarios import publish_wait, raw_client

postgres, broker, collectors = fx.postgres, fx.broker, fx.collectors  # fixtures
pg_url, url = fx.pg_url, fx.url  # fixtures


def query(db: str, text: str, params: tuple = ()) -> list[tuple]:
    store = Store(db, create=False)
    try:
        return store.query(text, params)
    finally:
        store.close()


def final_stats(log_text: str) -> dict:
    """The counts the collector logs as it stops."""
    (line,) = [x for x in log_text.splitlines() if " stopping: " in x]
    return ast.literal_eval(line.split(" stopping: ", 1)[1])


def over_said(log_text: str) -> tuple[int, Counter]:
    """What the lines on valid messages over quota said: how many lines, and the sum of
    their counts per "device kind". The first is said as it happens, the rest summed up
    (here: at the stop, within a minute)."""
    lines = [x for x in log_text.splitlines() if "valid message(s) over quota" in x]
    counts: Counter = Counter()
    for line in lines:
        listed = line.split("counted, not stored: ", 1)[1].split(";", 1)[0]
        total = int(re.search(r"(\d+) valid message\(s\) over quota", line)[1])
        each = {k: int(n) for k, n in (x.rsplit(" ", 1) for x in listed.split(", "))}
        assert sum(each.values()) == total, line
        counts.update(each)
    return len(lines), counts


def exams_produced(state) -> set[str]:
    return {line.split()[0] for line in produced_file(state).read_text().splitlines()
            if line.split()[1:] == ["exam"]}


# -- a box over its quota ------------------------------------------------------------------------
def test_a_box_over_its_exam_quota_keeps_what_gets_no_receipt_and_it_is_stored_after_the_window(
        broker, collectors, tmp_path, url):
    """Two boxes in service (each has had a receipt, so each keeps a sent exam until its
    receipt). The collector stores at most 4 exams a box per 8 s. dev-a sends 7 exams at
    once: 4 are stored and receipted, 3 get no receipt and stay in its outbox. dev-b, in
    the meantime, has each of its exams stored and receipted. Once the window has passed,
    dev-a sends the 3 again (its resend_after_s, 1 s here; 6 h in the field) and they are
    stored: every exam either box produced is stored, once, and both outboxes are empty.
    While over quota, dev-a sent each of the 3 once: no receipt is no reason to send again
    sooner."""
    window = 8.0
    a, b = tmp_path / "dev-a", tmp_path / "dev-b"
    (tmp_path / "first").mkdir()
    first = collectors(broker.url("central"), url, tmp_path / "first", "central")
    first.wait_subscribed()
    for state, device in ((a, "dev-a"), (b, "dev-b")):  # in service: a receipt has come
        done = run_device(state, broker.url(device), device=device, frames=5, exam_every=5,
                          health_every=1000, wait_receipts=20)
        assert done["awaiting_receipt"] == 0 and done["used_bytes"] == 0, done
    first.stop()
    # a collector counts the last window's writes from the database as it starts (`seed`):
    # these two runs' would spend some of the 4, so they are a window old first
    last = query(url, "SELECT MAX(received_ts) FROM messages")[0][0]
    wait_for(lambda: time.time() > last + window + 0.2, window + 5, "a window to pass")

    c = collectors(broker.url("central"), url, tmp_path, "central",
                   extra=("--exam-quota", "4", "--message-window-s", str(window)))
    c.wait_subscribed()
    over = run_device(a, broker.url("dev-a"), frames=35, exam_every=5, health_every=1000,
                      wait_receipts=3)
    sent_by = time.monotonic()  # dev-a's window opened before this
    assert over["drained"] is True and over["pending"] == 0, over
    assert over["awaiting_receipt"] == 3, over  # kept, as sent, without a receipt
    want_a = exams_produced(a)
    assert len(want_a) == 1 + 7
    assert len(stored(url, "dev-a", ("exam",))) == 1 + 4

    other = run_device(b, broker.url("dev-b"), device="dev-b", frames=15, exam_every=5,
                       health_every=1000, wait_receipts=20)
    assert other["awaiting_receipt"] == 0 and other["used_bytes"] == 0, other  # receipted
    assert {r[0] for r in stored(url, "dev-b", ("exam",))} == exams_produced(b)

    wait_for(lambda: time.monotonic() > sent_by + window + 0.5, window + 5,
             "dev-a's window to pass")
    again = run_device(a, broker.url("dev-a"), frames=0, resend_after_s=1, wait_receipts=30)
    c.stop()
    rows = stored(url, "dev-a", ("exam",))
    assert {r[0] for r in rows} == want_a and len(rows) == len(want_a)  # all, each once
    assert again["awaiting_receipt"] == 0 and again["used_bytes"] == 0, again
    assert "had no receipt from the district" in again["log"]
    log = c.log_text()
    stats = final_stats(log)
    assert (stats["withheld_over_quota"], stats["dropped_over_quota"]) == (3, 0), stats
    lines, said = over_said(log)
    assert lines <= 2 and said == {"dev-a exam": 3}, (lines, said)
    assert "Traceback" not in log


# -- receipts over quota -------------------------------------------------------------------------
def _reader(client: mqtt.Client, device: str) -> list[set[str]]:
    """The receipts ``device`` gets, each as its set of msg_ids, in order."""
    got: list[set[str]] = []
    granted: list = []
    client.on_message = lambda _c, _u, msg: got.append(set(json.loads(msg.payload)["msg_ids"]))
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.extend(codes)
    client.subscribe(f"sonoedge-receipt/{device}", qos=1)
    wait_for(lambda: granted, 5, f"{device}'s receipts subscribed")
    assert not granted[0].is_failure, granted
    return got


def _ids(receipts: list[set[str]]) -> set[str]:
    return set().union(*receipts)


def test_over_quota_a_new_exam_gets_no_receipt_a_stored_one_does_and_health_is_dropped(
        broker, collectors, tmp_path, url):
    """The collector keeps 2 exams and 2 health messages a device. dev-a's first exam comes
    three times (a broker redelivering it): it is stored once and spends one, so its second
    exam is stored too. Over quota, dev-a's third exam is not stored and gets no receipt;
    the first, delivered again, is receipted again (stored, it costs nothing); the second
    queued again under a new seq (a box that lost its outbox) would write that seq, so it
    waits as well. dev-a's health beyond 2 is dropped; dev-b's exams and health are stored
    and its exams receipted. One line says what was over."""
    c = collectors(broker.url("central"), url, tmp_path, "central",
                   extra=("--exam-quota", "2", "--health-quota", "2"))
    c.wait_subscribed()
    a, b = raw_client(broker, "dev-a"), raw_client(broker, "dev-b")
    to_a, to_b = _reader(a, "dev-a"), _reader(b, "dev-b")
    e1, e2, e3 = (message("exam", seq=s) for s in (1, 2, 3))
    try:
        for _ in range(3):
            publish_wait(a, "sonoedge/dev-a/exam", encode(e1))
        publish_wait(a, "sonoedge/dev-a/exam", encode(e2))
        wait_for(lambda: _ids(to_a) == {e1["msg_id"], e2["msg_id"]}, 20, "two receipts")
        to_a.clear()

        publish_wait(a, "sonoedge/dev-a/exam", encode(e3))
        publish_wait(a, "sonoedge/dev-a/exam", encode(e1))
        publish_wait(a, "sonoedge/dev-a/exam", encode({**e2, "seq": 9}))
        for s in range(4, 8):
            publish_wait(a, "sonoedge/dev-a/health", encode(message("health", seq=s)))
        theirs = [message("exam", device="dev-b", seq=s) for s in (1, 2)]
        for m in theirs:
            publish_wait(b, "sonoedge/dev-b/exam", encode(m))
        publish_wait(b, "sonoedge/dev-b/health", encode(message("health", "dev-b", seq=3)))
        wait_for(lambda: _ids(to_b) == {m["msg_id"] for m in theirs}, 20,
                 "dev-b's receipts")  # the collector has had dev-a's, sent before
        wait_for(lambda: len(stored(url, "dev-b")) == 3, 20, "dev-b's messages stored")
        time.sleep(1.0)  # whatever else was on its way has landed
        assert _ids(to_a) == {e1["msg_id"]}, to_a
    finally:
        for client in (a, b):
            client.loop_stop()
            client.disconnect()
    c.stop()
    assert [(r[2], r[1]) for r in stored(url, "dev-a")] == [
        ("exam", 1), ("exam", 2), ("health", 4), ("health", 5)]
    assert query(url, "SELECT COUNT(*) FROM resent")[0][0] == 0
    assert query(url, "SELECT COUNT(*) FROM dead_letters")[0][0] == 0
    log = c.log_text()
    stats = final_stats(log)
    assert (stats["withheld_over_quota"], stats["dropped_over_quota"]) == (2, 2), stats
    assert stats["duplicates"] == 3, stats  # e1 twice at first, and once over quota
    lines, said = over_said(log)
    assert 1 <= lines <= 2 and said == {"dev-a exam": 2, "dev-a health": 2}, (lines, said)
    assert "Traceback" not in log


def test_a_restarted_collector_goes_on_from_the_windows_count_in_the_database(
        broker, collectors, tmp_path, url):
    """The quota lived in the collector's memory alone: restarted (an upgrade, a crash, a
    box's flood that had it killed), it allowed each box the window's quota again. Now it
    counts each box's writes of the last window from the database as it starts. dev-a's 2
    exams stored a minute ago fill its quota of 2 a day: its third gets no receipt and is
    not stored. dev-b's 2 of two days ago are of a window past: its exam is stored and
    receipted, and so is dev-a's health (a kind of its own quota)."""
    store = Store(url)
    try:
        now = time.time()
        store.store([dataclasses.replace(row(message("exam", seq=s)), received_ts=now - 60 + s)
                     for s in (1, 2)]
                    + [dataclasses.replace(row(message("exam", device="dev-b", seq=s)),
                                           received_ts=now - 2 * 86400 + s) for s in (1, 2)],
                    [])
    finally:
        store.close()
    c = collectors(broker.url("central"), url, tmp_path, "central",
                   extra=("--exam-quota", "2", "--message-window-s", "86400"))
    c.wait_subscribed()
    a, b = raw_client(broker, "dev-a"), raw_client(broker, "dev-b")
    to_a, to_b = _reader(a, "dev-a"), _reader(b, "dev-b")
    e3, theirs = message("exam", seq=3), message("exam", device="dev-b", seq=3)
    try:
        publish_wait(a, "sonoedge/dev-a/exam", encode(e3))
        publish_wait(a, "sonoedge/dev-a/health", encode(message("health", seq=4)))
        publish_wait(b, "sonoedge/dev-b/exam", encode(theirs))
        wait_for(lambda: _ids(to_b) == {theirs["msg_id"]}, 20, "dev-b's receipt")
        wait_for(lambda: ("health", 4) in [(r[2], r[1]) for r in stored(url, "dev-a")], 20,
                 "dev-a's health stored")
        time.sleep(1.0)  # whatever else was on its way has landed
        assert to_a == [], to_a
    finally:
        for client in (a, b):
            client.loop_stop()
            client.disconnect()
    c.stop()
    assert [(r[2], r[1]) for r in stored(url, "dev-a")] == [
        ("exam", 1), ("exam", 2), ("health", 4)]
    assert [r[1] for r in stored(url, "dev-b", ("exam",))] == [1, 2, 3]
    stats = final_stats(c.log_text())
    assert (stats["stored"], stats["withheld_over_quota"]) == (2, 1), stats


def test_a_received_time_that_is_no_time_leaves_that_boxs_count_at_none(tmp_path):
    """The count read at a collector's start took every row's received time for a number: a
    damaged one (SQLite keeps a text where a number was) stopped the collector with a
    traceback. That box's count now starts from none, as before the seed; the others are
    read as they are."""
    url = f"sqlite:///{tmp_path / 'central.sqlite3'}"
    store = Store(url)
    now = time.time()
    try:
        store.store([dataclasses.replace(row(message("exam", seq=1)), received_ts=now),
                     dataclasses.replace(row(message("exam", device="dev-b", seq=1)),
                                         received_ts=now)], [])
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "central.sqlite3")
    db.execute("UPDATE messages SET received_ts = 'later' WHERE device_id = 'dev-a'")
    db.commit()
    db.close()
    store = Store(url)
    try:
        assert store.recent_writes(now - 60) == [("dev-b", "exam", 1, now)]
    finally:
        store.close()


# -- the quota itself ----------------------------------------------------------------------------
def test_the_message_quota_is_per_device_and_kind_and_spends_only_what_was_written():
    """Each kind with a receipt has the first limit, each other kind the second, per
    device; a write the batch took fits again when asked again (a batch retried row by
    row); a plan never committed (a batch the database did not take) spends nothing; a
    device's whole quota is back once its window has passed."""
    quota = MessageQuota(2, 3, 10.0)
    exams = [row(message("exam", seq=s)) for s in (1, 2, 3)]
    health = [row(message("health", seq=s)) for s in (4, 5, 6, 7)]
    another = row(message("exam", seq=8))
    theirs = row(message("exam", device="dev-b", seq=1))

    failed = quota.plan(100.0)  # a batch the database did not take
    for r in exams[:2]:
        assert failed.fits(r)
        failed.took(r)
    plan = quota.plan(100.0)
    answers = []
    for r in exams + health + [theirs]:
        answers.append(plan.fits(r))
        if answers[-1]:
            plan.took(r)
    assert answers == [True, True, False, True, True, True, False, True]
    assert plan.fits(exams[0]) and not plan.fits(another)  # asked again: the same
    plan.commit()
    later = quota.plan(105.0)
    assert not later.fits(another) and later.fits(row(message("exam", device="dev-b", seq=2)))
    assert quota.plan(110.0).fits(another)  # the window has passed


# -- hostile settings ----------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (("--exam-quota", "0"), "--exam-quota 0: must be 1-"),
    (("--health-quota", "-1"), "--health-quota -1: must be 1-"),
    (("--exam-quota", "1e3"), "--exam-quota: invalid int value: '1e3'"),
    (("--message-window-s", "nan"), "--message-window-s nan: must be within"),
    (("--message-window-s", "0.5"), "--message-window-s 0.5: must be within"),
])
def test_message_quota_settings_out_of_range_are_one_line_naming_the_option(tmp_path, args,
                                                                           needle):
    out = subprocess.run([sys.executable, "-m", "central.cli", "--mqtt-url",
                          "mqtt://127.0.0.1:1", "--db", str(tmp_path / "c.sqlite3"),
                          "--duration-s", "3", *args], capture_output=True, text=True,
                         env=py_env(), cwd=str(REPO), timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("sonoedge-central") and needle in line, line
