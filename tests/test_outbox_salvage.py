"""A corrupt outbox costs the messages on its damaged pages, not the ones between them.

The outbox's salvage read its messages forwards up to the first damaged page and backwards
down to the last: with two bad pages, every message between them was lost, and one bad
page of its keys lost every key. It now reads around each damaged range, as the journal's
salvage does. Each test damages a real outbox the way a card does (whole 4 kB pages
overwritten) at pages `dbstat` names, then opens it as the device does.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

from edge.store import outbox as outbox_module
from edge.store.outbox import OUTBOX_FILE, Outbox, open_outbox
from tests.test_journal_salvage import damage, leaves
from tests.test_outbox import exam_body


def said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == outbox_module.log.name]


def on_pages(path, pages: set[int]) -> set[str]:
    """The msg_ids whose rows lie on those leaf pages of the outbox table (its leaves hold
    its rows in id order)."""
    db = sqlite3.connect(path)
    try:
        ids = [r[0] for r in db.execute("SELECT msg_id FROM outbox ORDER BY id")]
    finally:
        db.close()
    found, at = set(), 0
    for page, count in leaves(path, "outbox"):
        if page in pages:
            found.update(ids[at:at + count])
        at += count
    assert at == len(ids)
    return found


def test_two_damaged_pages_cost_their_messages_not_those_between_them(tmp_path, caplog):
    """An outbox of 600 exams the broker has not had yet (the box was offline for weeks)
    loses two pages of its table to the card. Every other message is salvaged, under its
    msg_id and seq, and queued in the order it was first queued, so the district still
    gets the exams oldest first; one line says how much was lost."""
    box = open_outbox(tmp_path)
    sent = [box.enqueue("exam", exam_body()) for _ in range(600)]
    box.close()
    path = tmp_path / OUTBOX_FILE
    pages = leaves(path, "outbox")
    bad = {pages[len(pages) // 4][0], pages[3 * len(pages) // 4][0]}
    lost = on_pages(path, bad)
    assert 0 < len(lost) < 100
    damage(path, sorted(bad))

    caplog.set_level(logging.WARNING)
    box = open_outbox(tmp_path)
    try:
        assert box.moved_aside is not None
        kept = box.list(1000)
        assert [m.msg_id for m in kept] == [m.msg_id for m in sent if m.msg_id not in lost]
        assert [m.seq for m in kept] == [m.seq for m in sent if m.msg_id not in lost]
        assert all(json.loads(m.payload)["seq"] == m.seq for m in kept)
        assert box.salvaged == 600 - len(lost)
        assert box.enqueue("health", {"kind": "health"}).seq == 601  # never a seq twice
    finally:
        box.close()
    [line] = said(caplog)
    assert f"{600 - len(lost)} message(s) salvaged into a new outbox; damaged ranges span " \
        f"{len(lost)} message id(s)" in line, line


def test_a_damaged_page_of_keys_costs_its_keys_not_every_key(tmp_path):
    """The keys say which exams were ever queued, sent or not: an exam the journal offers
    again after a crash (`requeue_unqueued_exams`) is not queued twice. One bad page of
    them used to cost them all; now only the keys on it are forgotten."""
    box = open_outbox(tmp_path)
    keys = [f"exam-{i:05d}-" + "k" * 40 for i in range(2000)]
    for key in keys:
        assert box.enqueue("exam", exam_body(), key=key) is not None
    box.ack([m.msg_id for m in box.list(5000)])  # all sent: only their keys remain
    box.close()
    path = tmp_path / OUTBOX_FILE
    pages = leaves(path, "keys")
    assert len(pages) > 4
    page, count = pages[len(pages) // 2]
    damage(path, [page])

    box = open_outbox(tmp_path)
    try:
        assert box.moved_aside is not None
        again = [k for k in keys if box.enqueue("exam", exam_body(), key=k) is not None]
        assert len(again) == count, (len(again), count)  # those on the bad page only
    finally:
        box.close()


def test_a_huge_damaged_outbox_is_salvaged_within_its_bound(tmp_path, caplog, monkeypatch):
    """The salvage holds up the start, so it stops at SALVAGE_SECONDS (here cut to 0.05 s
    against a file it cannot read in that time), says so, and the device goes on with
    what it read, the newest messages first."""
    monkeypatch.setattr(outbox_module, "SALVAGE_SECONDS", 0.05)
    box = Outbox(tmp_path / OUTBOX_FILE, quota_bytes=1 << 30)
    box._db.execute("BEGIN")  # written fast: one transaction
    body = json.dumps(exam_body()).encode()
    for seq in range(1, 100_001):
        msg_id = f"m{seq:07d}"
        payload = body[:-1] + f',"msg_id":"{msg_id}","seq":{seq}}}'.encode()
        box._db.execute("INSERT INTO outbox(msg_id, seq, kind, payload, size, created_ts) "
                        "VALUES (?, ?, 'exam', ?, ?, ?)",
                        (msg_id, seq, payload, len(payload), time.time()))
    box._db.execute("UPDATE meta SET value = 100000 WHERE key = 'seq'")
    box._db.execute("COMMIT")
    box.close()
    path = tmp_path / OUTBOX_FILE
    damage(path, [leaves(path, "outbox")[10][0]])

    caplog.set_level(logging.WARNING)
    began = time.monotonic()
    box = Outbox(path, quota_bytes=1 << 30)
    took = time.monotonic() - began
    try:
        assert took < 0.05 + 2.0, took  # the bound, and a margin for a busy box
        assert 0 < box.salvaged < 100_000
        kept = [m.seq for m in box.list(200_000)]
        assert kept == list(range(100_001 - len(kept), 100_001))  # the newest
        assert box.enqueue("health", {"kind": "health"}).seq == 100_001
    finally:
        box.close()
    [line] = said(caplog)
    assert line.endswith("stopped after 0.05 s (SALVAGE_SECONDS): the rest is only in the "
                         "moved-aside file"), line


def test_damaged_counters_cost_only_themselves_in_a_salvage_and_in_the_drop_report(
        tmp_path, caplog):
    """The counters of drops a health message reports live in the outbox's `meta`. One
    damaged counter (1e300, a text) made the salvage of a corrupt outbox raise
    OverflowError, or lose every counter, and made the drop report of a sound one raise
    ValueError at every health message. Now it reads as 0, and the others are kept."""
    box = open_outbox(tmp_path)
    for _ in range(40):
        box.enqueue("exam", exam_body())
    with box._tx() as db:
        db.execute("UPDATE meta SET value = 7 WHERE key = 'dropped_health'")
        db.execute("UPDATE meta SET value = 3 WHERE key = 'reported_health'")
        db.execute("UPDATE meta SET value = 'abc' WHERE key = 'dropped_exam'")
        db.execute("UPDATE meta SET value = 1e300 WHERE key = 'reported_exam'")
    assert box.drop_report() == {"health": 7, "exam": 0, "health_new": 4, "exam_new": 0}
    box.close()
    path = tmp_path / OUTBOX_FILE
    damage(path, [leaves(path, "outbox")[1][0]])

    caplog.set_level(logging.WARNING)
    box = open_outbox(tmp_path)
    try:
        assert box.moved_aside is not None and 0 < box.salvaged < 40
        assert box.drop_report() == {"health": 7, "exam": 0, "health_new": 4, "exam_new": 0}
        assert box.enqueue("health", {"kind": "health"}).seq == 41
    finally:
        box.close()
