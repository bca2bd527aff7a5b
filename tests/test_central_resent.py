"""A message the collector already had, sent again under a new seq, is no loss.

A device whose outbox was too corrupt to salvage queues its journaled exams again: each
comes under its old ``msg_id`` (its exam key's) and a NEW ``seq``. The collector stores the
message once, and records the new seq in ``resent`` so that the district's report and the
dashboard do not count it as a hole, while a seq that never arrived still counts as lost.
On SQLite and on a real PostgreSQL (a database of its own per test), and end to end with a
real Mosquitto, collector and ``sonoedge run``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

from central.dashboard import queries
from central.dashboard.store import open_db, refresh
from central.db import Row, Store
from central.report import build_report
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import py_env, wait_for
from tests.test_central import message, row
from tests.test_hardening import device_config, exams_at, report, run_args

postgres, broker, collectors = fx.postgres, fx.broker, fx.collectors  # fixtures
pg_url, url = fx.pg_url, fx.url  # fixtures



def at(payload: dict, received: float) -> Row:
    return replace(row(payload), received_ts=received)


def again(payload: dict, seq: int) -> dict:
    """The same message (same msg_id) queued again under a new seq."""
    return {**payload, "seq": seq}


def resent(store: Store) -> list[tuple]:
    return store.query("SELECT device_id, seq, msg_id, kind FROM resent ORDER BY seq")


def salvage_story(now: float) -> tuple[list[Row], list[Row], dict, dict]:
    """Seqs 1-5 (4 truly lost), then the device loses its outbox: health 6, exams 1 and 2
    again as seqs 7 and 8, a new exam 9; its status says 9 were allocated."""
    e1, e2, e5 = (message("exam", seq=s) for s in (1, 2, 5))
    before = [at(e1, now - 60), at(e2, now - 60), at(message("health", seq=3), now - 60),
              at(e5, now - 60)]
    after = [at(message("health", seq=6), now), at(again(e1, 7), now),
             at(again(e2, 8), now), at(message("exam", seq=9), now),
             at(message("status", seq=9, state="online"), now)]
    return before, after, e1, e2


# -- the collector and the report --------------------------------------------------------------
def test_an_exam_sent_again_with_a_new_seq_fills_its_hole_but_a_true_gap_is_still_lost(url):
    store = Store(url)
    before, after, e1, e2 = salvage_story(time.time())
    assert store.store(before, []) == (4, 0)
    assert store.store(after, []) == (3, 0)  # exams 1 and 2 were here already
    (dev,) = build_report(store)["devices"]
    assert (dev["exams"], dev["health"], dev["max_seq"]) == (4, 2, 9)
    assert dev["missing"] == 1 and dev["gaps"] == [[4, 4]] and dev["lost"] == 1
    assert dev["behind"] == 0
    assert resent(store) == [("dev-a", 7, e1["msg_id"], "exam"),
                             ("dev-a", 8, e2["msg_id"], "exam")]
    store.close()


def test_a_plain_redelivery_or_a_msg_id_from_another_device_records_no_resend(url):
    store = Store(url)
    e1 = message("exam", seq=1)
    status = message("status", seq=1, state="online")
    assert store.store([row(e1), row(status)], []) == (2, 0)
    assert store.store([row(e1), row(e1)], []) == (0, 0)  # the broker delivered it again
    other = {**again(e1, 9), "device_id": "dev-b"}  # not dev-b's message, not dev-a's seq
    assert store.store([row(other)], []) == (0, 0)
    # status takes no seq of its own (it repeats the last one): nothing to fill
    assert store.store([row(again(status, 2))], []) == (0, 0)
    (dev,) = build_report(store)["devices"]
    assert (dev["device_id"], dev["max_seq"], dev["missing"]) == ("dev-a", 1, 0)
    assert resent(store) == []
    store.close()


def test_a_resend_in_the_batch_of_its_original_or_beside_a_refused_row_is_recorded(url):
    """In one transaction with the message it repeats, and on the row-by-row path a refused
    row sends the batch down (which costs the refused row alone)."""
    store = Store(url)
    e1, e3 = message("exam", seq=1), message("exam", seq=3)
    assert store.store([row(e1), row(again(e1, 2))], []) == (1, 0)
    bad = (replace(row(e3), seq=2 ** 70) if not store.pg  # SQLite cannot bind it
           else replace(row(e3), clinic_id="a\x00b"))  # PostgreSQL refuses NUL in text
    new_rows, new_dead, refused = store.store_checked([row(again(e1, 4)), bad], [])
    assert (new_rows, new_dead, [r.digest for r in refused]) == (0, 1, [e3["msg_id"]])
    (dev,) = build_report(store)["devices"]
    assert (dev["max_seq"], dev["missing"], dev["gaps"]) == (4, 1, [[3, 3]])
    assert [r[1] for r in resent(store)] == [2, 4]
    store.close()


def test_a_report_on_a_database_from_before_the_resent_table_still_counts_holes(url):
    store = Store(url)
    store.store([at(message("exam", seq=s), time.time()) for s in (1, 2, 4)], [])
    with store.tx() as cur:
        cur.execute("DROP TABLE resent")
    store.close()
    old = Store(url, create=False)  # a report opens it as it is: no table is made
    assert not old.has_table("resent")
    (dev,) = build_report(old)["devices"]
    assert (dev["max_seq"], dev["missing"], dev["gaps"]) == (4, 1, [[3, 3]])
    old.close()
    db = open_db(url)  # and the dashboard rolls it up
    try:
        assert refresh(db).messages == 3
        holes = queries.holes(db, queries.Scope(None), queries.period(2))
        assert [(h.device_id, h.first_seq, h.last_seq) for h in holes] == [("dev-a", 3, 3)]
    finally:
        db.close()
    if not url.startswith("postgresql://"):
        out = subprocess.run([sys.executable, "-m", "central.cli", "report", "--db", url,
                              "--json"], capture_output=True, text=True, env=py_env(),
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["devices"][0]["missing"] == 1


# -- the dashboard -------------------------------------------------------------------------------
def test_the_dashboard_counts_no_hole_for_a_resent_exam_nor_counts_it_as_a_message(url):
    now = time.time()
    store = Store(url)
    before, after, _, _ = salvage_story(now)
    store.store(before + after, [])
    store.close()
    db = open_db(url)
    try:
        first = refresh(db)
        per = queries.period(2, now=now)
        holes = queries.holes(db, queries.Scope(None), per)
        assert [(h.device_id, h.first_seq, h.last_seq) for h in holes] == [("dev-a", 4, 4)]
        (dev,) = queries.devices_page(db, queries.Scope(None), per, now=now)
        assert (dev.missing, dev.behind, dev.received) == (1, 0, 6)  # 4 exams, 2 health
        clinics = queries.clinics_page(db, queries.Scope(None), per)
        assert sum(c.exams for c in clinics.rows()) == 4
        assert sum(c.missing for c in clinics.rows()) == 1
        assert (first.messages, first.resent) == (7, 2)
        second = refresh(db)
        assert (second.messages, second.resent) == (0, 0)  # each rolled up once
    finally:
        db.close()


# -- end to end: a real device loses its outbox --------------------------------------------------
def test_a_device_that_lost_its_outbox_sends_its_exams_again_and_none_is_counted_lost(
        broker, collectors, tmp_path, data_dir):
    """Two exams reach the district; the outbox is then destroyed, so the next start queues
    both again from the journal under their old msg_ids and new seqs. The district keeps
    each exam once and reports no message missing."""
    db = str(tmp_path / "central.sqlite3")
    collectors(broker.url("central"), db, tmp_path, "central-1").wait_subscribed()
    config = device_config(tmp_path, broker)
    state = tmp_path / "state"
    src = sorted((data_dir / "hc18" / "images").glob("*.png"))[:2]

    def run(path) -> subprocess.CompletedProcess:
        out = subprocess.run(run_args(config, path, state, "--once"), capture_output=True,
                             text=True, env=py_env(), timeout=180)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
        return out

    for path in src:
        run(path)
    first = wait_for(lambda: len(exams_at(db)) == 2 and exams_at(db), 30, "two exams")
    for side in ("-wal", "-shm"):
        (state / f"outbox.sqlite3{side}").unlink(missing_ok=True)
    (state / "outbox.sqlite3").write_bytes(b"\xa5" * 8192)  # nothing left to salvage
    third = run(src[0])
    assert "2 journaled exam(s) it no longer held queued again" in third.stderr, third.stderr

    def recorded() -> list[tuple]:
        with sqlite3.connect(db, timeout=10) as conn:
            return list(conn.execute("SELECT msg_id, seq FROM resent WHERE device_id = "
                                     "'dev-a' ORDER BY seq"))

    # delivered in seq order: the two queued again at the start came before the third exam
    wait_for(lambda: len(exams_at(db)) == 3, 30, "the third exam")
    time.sleep(1.0)
    dev = report(db)["devices"][0]
    assert dev["exams"] == 3 and dev["missing"] == 0 and dev["lost"] == 0, dev
    assert dev["gaps"] == [] and dev["behind"] == 0, dev
    with sqlite3.connect(db, timeout=10) as conn:
        ids = dict(conn.execute("SELECT msg_id, seq FROM messages WHERE kind = 'exam'"))
    firsts = {e["msg_id"] for e in first}
    assert {m for m, _ in recorded()} == firsts
    assert all(seq > max(ids[m] for m in firsts) for _, seq in recorded())  # new seqs
