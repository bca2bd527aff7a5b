"""The journal keeps every result it acknowledged, even when the process is SIGKILLed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.result import FrameResult
from edge.store.journal import SCHEMA_VERSION, Journal

REPO = Path(__file__).resolve().parents[1]

WRITER = """
import sys, time
from edge.store.journal import Journal
from edge.result import FrameResult
journal = Journal(sys.argv[1])
run = journal.start_run("clip.avi", {"plane_student": "1.0.0"})
for i in range(100000):
    journal.append(run, FrameResult("clip.avi", i, "Femur", 0.9, 5.0, 1.0, 1.0, 3.0,
                                    [0, 0, 10, 10], "plane_student@1.0.0", time.time(),
                                    time.monotonic()))
    print(i, flush=True)
    time.sleep(0.002)
"""


def _result(i: int, error: str | None = None) -> FrameResult:
    return FrameResult("a.png", i, None if error else "4CH", None if error else 0.8, 4.0, 1.0,
                       1.0, 2.0, None, "plane_student@1.0.0", time.time(), time.monotonic(),
                       error=error)


def test_results_acknowledged_before_a_sigkill_are_all_there(tmp_path):
    path = tmp_path / "journal.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    acknowledged = -1
    deadline = time.monotonic() + 60
    try:
        while acknowledged < 150 and time.monotonic() < deadline:
            acknowledged = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert acknowledged >= 150
    journal = Journal(path)
    frames = [r["frame"] for r in journal.results()]
    assert frames[: acknowledged + 1] == list(range(acknowledged + 1))
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_run_records_its_frames_and_failures(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    run = journal.start_run("folder", {"plane_student": "1.0.0"})
    journal.append(run, _result(0))
    journal.append(run, _result(1, error="b.png: truncated JPEG (no end-of-image marker)"))
    journal.end_run(run)
    (row,) = journal.runs()
    assert (row["frames"], row["failed"]) == (2, 1)
    assert journal.results(run)[1]["error"].startswith("b.png")
    assert sqlite3.connect(tmp_path / "j.sqlite").execute(
        "PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_journal_from_a_newer_version_is_refused_not_wiped(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ValueError, match="j.sqlite: journal cannot be opened"):
        Journal(path)
    assert path.stat().st_size > 0


def test_old_runs_age_out_and_recent_ones_stay(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    old = journal.start_run("old", {})
    journal.append(old, _result(0))
    journal.end_run(old)
    journal.db.execute("UPDATE runs SET ended_ts = ended_ts - 100 * 86400 WHERE run_id = ?",
                       (old,))
    recent = journal.start_run("recent", {})
    journal.append(recent, _result(0))
    journal.end_run(recent)
    unfinished = journal.start_run("live", {})
    journal.append(unfinished, _result(0))
    assert journal.prune(keep_days=90) == 1
    assert [run["source"] for run in journal.runs()] == ["recent", "live"]
    assert len(journal.results()) == 2


def test_a_journal_of_schema_1_gains_the_biometry_columns_and_keeps_its_rows(tmp_path):
    from edge.store.journal import _MIGRATIONS

    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {_MIGRATIONS[1]} PRAGMA user_version=1; COMMIT;")
    db.execute("INSERT INTO runs (run_id, source, started_ts, models) VALUES ('r', 'a', 1, '{}')")
    db.execute("INSERT INTO results (run_id, source, frame, ts, mono_s, record)"
               " VALUES ('r', 'a.png', 0, 1, 1, '{\"frame\": 0}')")
    db.close()
    journal = Journal(path)
    run = journal.start_run("b", {"plane_student": "1.0.0"})
    head = FrameResult("b.png", 0, "Brain (Tv.)", 0.9, 4.0, 1.0, 1.0, 2.0, None,
                       "plane_student@1.0.0", time.time(), time.monotonic(),
                       biometry={"status": "ok", "hc_mm": 171.25, "ms": 9.0})
    journal.append(run, head)
    journal.append(run, _result(1))
    assert [r["frame"] for r in journal.results()] == [0, 0, 1]
    assert journal.results(run)[0]["biometry"]["hc_mm"] == 171.25
    rows = sqlite3.connect(path).execute(
        "SELECT biometry_status, hc_mm FROM results ORDER BY id").fetchall()
    assert rows == [(None, None), ("ok", 171.25), (None, None)]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_dates_kept_in_a_schema_5_journal_move_to_their_own_table(tmp_path):
    """Schema 5 kept an exam's dates in its row (written when it ended, so a killed run's
    were lost); schema 6 keeps them under the exam's id at once. An upgraded journal keeps
    the dates it had."""
    from edge.store.journal import _MIGRATIONS

    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    for step in range(1, 6):
        db.executescript(f"BEGIN; {_MIGRATIONS[step]} PRAGMA user_version={step}; COMMIT;")
    for exam_id, dates in (("e1", '{"lmp":"2026-06-01","today":"2026-12-04"}'), ("e2", None)):
        db.execute("INSERT INTO exams (exam_id, protocol, started_ts, ended_ts, ended_by,"
                   " summary, best_frames, dates) VALUES (?, 'p', 1, 2, 'gap', '{}', '{}', ?)",
                   (exam_id, dates))
    db.close()
    journal = Journal(path)
    assert journal.db.execute("SELECT exam_id, dates FROM exam_dates").fetchall() == [
        ("e1", '{"lmp":"2026-06-01","today":"2026-12-04"}')]
    assert journal.keep_dates("e3", {"lmp": "2026-07-01", "today": "2026-12-04"})
    assert journal.keep_dates("e1", None)
    # cleared dates keep their row as "null", so what a correction told the district stays
    assert journal.db.execute("SELECT exam_id, dates FROM exam_dates ORDER BY exam_id"
                              ).fetchall() == [("e1", "null"), ("e3", '{"lmp":"2026-07-01",'
                                                               '"today":"2026-12-04"}')]
    assert journal.exam_dates("e1") is None


def test_an_exams_dates_are_read_back_and_a_damaged_row_is_none_said_once(tmp_path, caplog):
    """What the exam's end reads to send the age by dates: the kept dates, or None for
    none kept and for a row the journal cannot give back as a small JSON object (not
    JSON, a list, 300 bytes, 1,000 brackets), each said in one line, never raised."""
    from edge.exam.screening import read_dates
    from edge.loop import with_age_by_dates

    journal = Journal(tmp_path / "j.sqlite")
    assert journal.keep_dates("kept", {"lmp": "2026-06-10", "today": "2026-12-04"})
    assert journal.exam_dates("kept") == {"lmp": "2026-06-10", "today": "2026-12-04"}
    assert journal.exam_dates("none") is None
    bad = {"text": "{not json", "list": '["2026-06-10"]', "long": '{"lmp":"' + "x" * 300 + '"}',
           "deep": "[" * 1000 + "]" * 1000, "bytes": b"\xff\xfe{"}
    for exam_id, raw in bad.items():
        journal.db.execute("INSERT INTO exam_dates (exam_id, dates) VALUES (?, ?)",
                           (exam_id, raw))
    caplog.clear()
    for exam_id in bad:
        assert journal.exam_dates(exam_id) is None, exam_id
    said = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    # a list is no dates, and an oversized row is never read: only unparsable text is said
    assert len(said) == 2 and "exam text" in said[0] and "exam bytes" in said[1], said
    assert all("\n" not in line for line in said)
    # dates the page would refuse (a period in the future) give no age either
    assert journal.keep_dates("future", {"lmp": "2027-01-01", "today": "2026-12-04"})
    assert read_dates(journal.exam_dates("future")) is None
    body = {"exam_id": "kept", "biometry": {"measured": 3, "declined": {}, "hc_mm": 230.0}}
    assert with_age_by_dates(body, journal)["biometry"]["ga_dates_weeks"] == 25.29
    assert with_age_by_dates({**body, "exam_id": "future"}, journal) == {
        **body, "exam_id": "future"}
    assert with_age_by_dates({"exam_id": "kept"}, journal) == {"exam_id": "kept"}
