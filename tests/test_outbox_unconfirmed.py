"""The outbox keeps the id of every exam that left it without the district's receipt.

An exam deleted on its PUBACK before any receipt came (or dropped by the quota) is one
nothing proves the district stored: its id stays in the outbox's `unconfirmed` until its
receipt names it, and the uplink chip counts it as not confirmed
(tests/test_page_uplink_exam_counts.py shows the chip). Here, on real SQLite files in the
state folder: health is never counted; the ids kept are bounded and those past the bound
are still counted; a damaged or hand-edited table or counter opens with one line, never a
raise, and what it lost is counted as unconfirmed, never as confirmed; a corrupt outbox's
salvage keeps them.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from edge.store import outbox as outbox_module
from edge.store.outbox import OUTBOX_FILE, ROW_OVERHEAD_BYTES, counts_of, open_outbox
from tests.test_journal_salvage import damage, leaves
from tests.test_outbox import exam_body


def said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == outbox_module.log.name]


def not_confirmed(box) -> int:
    """Exams gone without a receipt, waited for or no longer: never counted confirmed."""
    counts = box.exam_counts()
    return counts["unconfirmed"] + counts["unconfirmed_old"]


def sent_before_receipts(box, n: int) -> list[str]:
    """`n` exams and as many health messages, each acknowledged by the broker before the
    district ever sent a receipt: the exams' ids."""
    ids = []
    for _ in range(n):
        exam, health = box.enqueue("exam", exam_body()), box.enqueue("health", {"h": 1})
        box.ack([exam.msg_id, health.msg_id])
        ids.append(exam.msg_id)
    return ids


def test_exams_gone_on_puback_before_any_receipt_wait_for_their_own_receipt(tmp_path):
    """Health is nobody's record: only the exams are counted, across a reopen, each until
    its own receipt."""
    box = open_outbox(tmp_path)
    first, second = sent_before_receipts(box, 2)
    assert box.pending_count() == 0 and box.awaiting_receipt_count() == 0
    box.receipt(["not-one-of-ours"])
    assert box.exam_counts() == {"pending": 0, "awaiting_receipt": 0, "unconfirmed": 2,
                                 "unconfirmed_old": 0, "rejected": 0, "receipts_seen": True}
    box.close()
    box = open_outbox(tmp_path)
    box.receipt([second])
    assert box.exam_counts()["unconfirmed"] == 1
    assert counts_of(box._db)["unconfirmed"] == 1  # `sonoedge outbox`, `sonoedge status`
    box.receipt([first])
    assert box.exam_counts()["unconfirmed"] == 0


def test_the_ids_kept_are_bounded_and_those_past_the_bound_still_count(tmp_path,
                                                                        monkeypatch):
    """Past UNCONFIRMED_MAX the oldest id is forgotten (its receipt can no longer be
    matched) but still counted, so it never reads as confirmed. An exam the quota drops
    left without a receipt too."""
    monkeypatch.setattr(outbox_module, "UNCONFIRMED_MAX", 3)
    box = open_outbox(tmp_path)
    ids = sent_before_receipts(box, 5)
    assert box._db.execute("SELECT COUNT(*) FROM unconfirmed").fetchone()[0] == 3
    box.receipt(ids)  # the two oldest are no longer matched: counted, not waited for
    assert (box.exam_counts()["unconfirmed"], box.exam_counts()["unconfirmed_old"]) == (0, 2)

    probe = open_outbox(tmp_path / "probe").enqueue("exam", exam_body())
    room = 2 * (probe.size + ROW_OVERHEAD_BYTES) + probe.size // 2  # two exams, not three
    small = open_outbox(tmp_path / "small", quota_bytes=room)
    for _ in range(3):
        small.enqueue("exam", exam_body())
    assert small.drop_report()["exam"] == 1
    assert small.exam_counts() == {"pending": 2, "awaiting_receipt": 0, "unconfirmed": 1,
                                   "unconfirmed_old": 0, "rejected": 0,
                                   "receipts_seen": False}


def test_an_exam_gone_without_a_receipt_is_waited_for_a_week_then_counted_apart(tmp_path):
    """A box that sent to a collector from before receipts, then saw its district upgraded:
    its 300 exams gone on PUBACK were "not yet confirmed" on the chip for ever, with nothing
    for the midwife to do (a walk). A receipt is waited for UNCONFIRMED_WAIT_S; after it
    the exam is counted apart (never as confirmed), and a late receipt still clears it."""
    box = open_outbox(tmp_path)
    ids = sent_before_receipts(box, 3)
    box.receipt(["not-one-of-ours"])
    week = outbox_module.UNCONFIRMED_WAIT_S
    assert box.exam_counts()["unconfirmed"] == 3
    later = box.exam_counts(now=time.time() + week + 60)
    assert (later["unconfirmed"], later["unconfirmed_old"]) == (0, 3)
    box.receipt(ids[:1])  # a collector's backlog, very late
    later = box.exam_counts(now=time.time() + week + 60)
    assert (later["unconfirmed"], later["unconfirmed_old"]) == (0, 2)
    assert counts_of(box._db)["unconfirmed"] == 2  # `sonoedge status` counts every one


def _text_counter(db: sqlite3.Connection) -> None:
    db.execute("UPDATE meta SET value = 'many' WHERE key = 'unconfirmed_forgotten'")


def _huge_counter(db: sqlite3.Connection) -> None:
    db.execute("UPDATE meta SET value = 1e300 WHERE key = 'unconfirmed_forgotten'")


def _other_table(db: sqlite3.Connection) -> None:
    db.execute("DROP TABLE unconfirmed")
    db.execute("CREATE TABLE unconfirmed (x)")
    db.executemany("INSERT INTO unconfirmed VALUES (?)", [(1,), (2,)])


def _a_view(db: sqlite3.Connection) -> None:
    db.execute("DROP TABLE unconfirmed")
    db.execute("CREATE VIEW unconfirmed AS SELECT 'a' AS msg_id UNION SELECT 'b'")


@pytest.mark.parametrize("edit, left", [(_text_counter, 2), (_huge_counter, 2),
                                        (_other_table, 2), (_a_view, 2)],
                         ids=["text counter", "huge counter", "other table", "a view"])
def test_a_damaged_record_of_unconfirmed_exams_is_one_line_and_no_raise(tmp_path, caplog,
                                                                       edit, left):
    """A hand edit or a flipped bit in the state folder: the outbox opens, one line names
    it, what it can no longer match is still counted unconfirmed, and the next exam acked
    and received works."""
    box = open_outbox(tmp_path)
    sent_before_receipts(box, 2)
    box.close()
    db = sqlite3.connect(tmp_path / OUTBOX_FILE)
    edit(db)
    db.commit()
    db.close()
    caplog.set_level(logging.WARNING)
    box = open_outbox(tmp_path)
    assert len(said(caplog)) == 1, said(caplog)
    assert not_confirmed(box) == left
    nxt = sent_before_receipts(box, 1)
    assert not_confirmed(box) == left + 1
    box.receipt(nxt)
    assert not_confirmed(box) == left


def test_a_corrupt_outbox_salvages_the_ids_of_unconfirmed_exams(tmp_path, caplog):
    """A card damages the outbox's message table: the ids of exams gone without a receipt
    are salvaged with the rest, and a receipt still confirms them."""
    box = open_outbox(tmp_path)
    gone = sent_before_receipts(box, 20)
    for _ in range(300):
        box.enqueue("exam", exam_body())
    box.close()
    path = tmp_path / OUTBOX_FILE
    pages = leaves(path, "outbox")
    damage(path, [pages[len(pages) // 2][0]])
    caplog.set_level(logging.WARNING)
    box = open_outbox(tmp_path)
    assert box.moved_aside is not None and box.exam_counts()["unconfirmed"] == 20
    box.receipt(gone[:5])
    assert box.exam_counts()["unconfirmed"] == 15
