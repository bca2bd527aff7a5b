"""A corrupt journal costs the rows on its damaged pages, not the others: what can still be
read from it is salvaged into the new journal, exams first, within a bound of time.

Each test damages a real journal the way a card does (whole 4 kB pages overwritten) at
pages `dbstat` names, then opens it, or writes to it, as the loop does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path

from edge.config import MqttSettings, Settings
from edge.loop import requeue_unqueued_exams
from edge.result import FrameResult
from edge.store import journal as journal_module
from edge.store.journal import JOURNAL_FILE, Journal
from edge.uplink.mqtt import Uplink
from edge.web.history import ExamHistory
from tests.test_dates_correction import ENVELOPE
from tests.test_outbox import exam_body

MODELS = {"plane_student": "1.0.0"}
DATES = {"lmp": "2026-06-10", "today": "2026-12-04"}


def frame(i: int) -> FrameResult:
    return FrameResult("clip.avi", i, "4CH", 0.8, 4.0, 1.0, 1.0, 2.0, [0, 0, 10, 10],
                       "plane_student@1.0.0", time.time(), time.monotonic())


def summary(started_ts: float) -> dict:
    """An exam's summary as the loop journals it (the body the district gets)."""
    body = {k: v for k, v in exam_body().items() if k not in ENVELOPE}
    body.update(exam_id=str(uuid.uuid4()), started_ts=started_ts, ended_ts=started_ts + 60)
    return body


def summaries(journal: Journal) -> list[dict]:
    """Every exam's summary in the journal, oldest first, as the re-queue reads them."""
    return [journal.ended_summary(exam_id) for exam_id in journal.exam_ids(0)]


def many_frames(journal: Journal, n: int) -> str:
    """A run of `n` frame results, written fast (one transaction); its id."""
    run = journal.start_run("clinic-a", MODELS)
    journal.db.execute("BEGIN")
    for i in range(n):
        journal.append(run, frame(i))
    journal.db.execute("COMMIT")
    return run


def leaves(path: Path, name: str) -> list[tuple[int, int]]:
    """(page number, rows on it) of the leaf pages of a table or index, in rowid order."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT pageno, ncell FROM dbstat WHERE name = ? AND pagetype = "
                          "'leaf' ORDER BY path", (name,)).fetchall()
    finally:
        db.close()


def damage(path: Path, pages: list[int]) -> bytes:
    """Overwrite whole pages, as a card that went bad does; the file's bytes after."""
    with open(path, "r+b") as handle:
        for page in pages:
            handle.seek((page - 1) * 4096)
            handle.write(b"\xa5" * 4096)
    return path.read_bytes()


def said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == journal_module.__name__]


def test_a_journal_found_corrupt_at_start_keeps_its_exams_runs_and_frames(tmp_path, caplog):
    """A power cut tore the page the journal was writing (the last of its frame results)
    and an older one. The next start moves the file aside and finds in the new journal
    every exam, the dates kept for them, both runs and every frame not on those two
    pages: the history page lists the exams, the re-queue of exams an outbox lost queues
    them, and the killed run can still be replayed. One line says what was recovered."""
    path = tmp_path / JOURNAL_FILE
    journal = Journal(path)
    done = journal.start_run("clinic-a", MODELS)
    for i in range(1200):
        journal.append(done, frame(i))
    exams = [summary(time.time() - 3600 + 60 * k) for k in range(5)]
    for k, body in enumerate(exams):
        assert journal.add_exam(done, body, {}, 240 * k + 1, 240 * k + 240)
    assert journal.keep_dates(exams[0]["exam_id"], DATES, entered_ts=1_700_000_000.0)
    assert journal.keep_dates(exams[3]["exam_id"], DATES, entered_ts=1_700_000_100.0)
    assert journal.end_run(done)
    killed = journal.start_run("clinic-a", MODELS)  # the process dies in this run
    for i in range(1500):
        journal.append(killed, frame(i))
    ids = {run: [r[0] for r in journal.db.execute("SELECT id FROM results WHERE run_id=? "
                                                  "ORDER BY id", (run,))]
           for run in (done, killed)}
    journal.close()
    results = leaves(path, "results")
    torn = [results[len(results) // 3], results[-1]]  # a page in the middle, and the last
    lost = sum(rows for _, rows in torn)
    damaged = damage(path, [page for page, _ in torn])

    caplog.set_level(logging.WARNING)
    journal = Journal(path)
    assert journal.moved_aside is not None
    assert journal.moved_aside.read_bytes() == damaged  # the evidence, as it was found
    assert summaries(journal) == exams
    assert journal.exam_dates(exams[3]["exam_id"]) == DATES
    assert journal.dates_entry(exams[3]["exam_id"])[:2] == (1, 1_700_000_100.0)
    assert journal.open_runs() == [(killed, MODELS)]
    assert journal.salvaged == {"exams": (5, 0), "exam_dates": (2, 0), "runs": (2, 0),
                                "exam_withdrawals": (0, 0),
                                "results": (2700 - lost, lost)}
    [line] = said(caplog)
    assert f"journal {path} is corrupt" in line and f"moved to {journal.moved_aside}" in line
    assert (f"(rows recovered/not readable): exams 5/0, exam dates 2/0, exam withdrawals "
            f"0/0, runs 2/0, frame results {2700 - lost}/{lost}") in line, line

    replayed = [row for row, _ in journal.replay(killed)]
    kept = {r[0] for r in journal.db.execute("SELECT id FROM results WHERE run_id=?",
                                             (done,))}
    assert set(replayed) < set(ids[killed]) and set(kept) < set(ids[done])
    assert len(replayed) + len(kept) == 2700 - lost  # under their own ids
    assert [r["frame"] for r in journal.results(done)] == [
        i for i, row in enumerate(ids[done]) if row in kept]

    history = ExamHistory(tmp_path)
    try:
        listed, readable = asyncio.run(history.recent(10, None))
    finally:
        history.close()
    assert readable and [e["exam_id"] for e in listed] == [e["exam_id"] for e in exams[::-1]]
    uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path)
    assert requeue_unqueued_exams(Settings(), journal, uplink) == 5
    queued = [json.loads(m.payload)["exam_id"] for m in uplink.outbox.list(10)]
    assert sorted(queued) == sorted(e["exam_id"] for e in exams)

    run = journal.start_run("clinic-a", MODELS)  # and the new journal goes on
    assert journal.append(run, frame(0)) is not None
    assert journal.add_exam(run, summary(time.time()), {})
    assert len(summaries(journal)) == 6


def earlier_exams_with_a_bad_index(path: Path) -> list[dict]:
    """A journal of one ended run with four exams whose key index then went bad: a page
    nothing reads until an exam is written."""
    journal = Journal(path)
    earlier = journal.start_run("clinic-a", MODELS)
    for i in range(300):
        journal.append(earlier, frame(i))
    exams = [summary(time.time() - 7200 + 60 * k) for k in range(4)]
    for body in exams:
        assert journal.add_exam(earlier, body, {})
    assert journal.keep_dates(exams[1]["exam_id"], DATES)
    assert journal.end_run(earlier)
    journal.close()
    damage(path, [page for page, _ in leaves(path, "sqlite_autoindex_exams_1")])
    return exams


def test_the_start_finds_a_bad_page_no_read_reaches_before_the_first_exam(tmp_path, caplog):
    """The exams' key index went bad while the box was off. Nothing the start reads touches
    it, so before, the first exam's end found it, mid-exam, in the loop. The start's quick
    check finds it: the journal is salvaged before the first frame, every exam kept."""
    path = tmp_path / JOURNAL_FILE
    exams = earlier_exams_with_a_bad_index(path)
    caplog.set_level(logging.WARNING)
    journal = Journal(path)
    assert journal.moved_aside is not None and journal.moved_aside.exists()
    assert journal.salvaged == {"exams": (4, 0), "exam_dates": (1, 0), "runs": (1, 0),
                                "exam_withdrawals": (0, 0),
                                "results": (300, 0)}
    [line] = said(caplog)
    assert f"journal {path} is corrupt" in line, line
    run = journal.start_run("clinic-a", MODELS)
    rows = [journal.append(run, frame(i)) for i in range(10)]
    now = summary(time.time())
    assert journal.add_exam(run, now, {}, rows[0], rows[-1])
    assert summaries(journal) == [*exams, now]
    assert journal.exam_dates(exams[1]["exam_id"]) == DATES
    assert len(said(caplog)) == 1  # nothing more to find


def test_the_start_check_of_a_large_journal_leaves_its_frame_results_to_the_writes(
        tmp_path, caplog, monkeypatch):
    """A journal of up to 2 GB on a slow card takes most of a minute to check, and SQLite
    3.40 cannot stop the check mid-walk: above START_CHECK_BYTES the frame results are not
    checked at start (said in one line), while the exams still are. A bad page among the
    frame results is then found by the write that reaches it."""
    monkeypatch.setattr(journal_module, "START_CHECK_BYTES", 1 << 20)
    path = tmp_path / JOURNAL_FILE
    journal = Journal(path)
    run = many_frames(journal, 6000)
    assert journal.add_exam(run, summary(time.time()), {})
    journal.close()
    assert path.stat().st_size > 1 << 20
    damage(path, [leaves(path, "results")[len(leaves(path, "results")) // 2][0]])
    caplog.set_level(logging.INFO)
    journal = Journal(path)
    assert journal.moved_aside is None
    assert any("frame results are not checked at start" in line for line in said(caplog))
    journal.close()
    damage(path, [page for page, _ in leaves(path, "sqlite_autoindex_exams_1")])
    journal = Journal(path)  # the exams are checked whatever the file's size
    assert journal.moved_aside is not None
    journal.close()


def test_the_start_check_stops_where_sqlite_can_stop_it(tmp_path, caplog, monkeypatch):
    """Where SQLite can stop the check (between b-trees on 3.40, anywhere on later ones),
    it stops at START_CHECK_SECONDS (here 0.1 ms against 60,000 frames) and says so, and
    the start goes on."""
    monkeypatch.setattr(journal_module, "START_CHECK_SECONDS", 0.0001)
    path = tmp_path / JOURNAL_FILE
    journal = Journal(path)
    many_frames(journal, 60_000)
    journal.close()
    caplog.set_level(logging.INFO)
    began = time.monotonic()
    journal = Journal(path)
    took = time.monotonic() - began
    assert took < 2.0, took
    assert journal.moved_aside is None
    assert any("the start's check stopped after 0.0001 s" in line for line in said(caplog))
    journal.close()


def test_a_write_that_finds_the_journal_corrupt_salvages_it_and_goes_on(tmp_path, caplog,
                                                                        monkeypatch):
    """A page the start's check did not reach (a journal too large to check within
    START_CHECK_SECONDS, here no check at all) went bad before this run. The run's first
    exam end reaches it: the journal is moved aside there, in the loop, and the earlier
    exams and this run's frames, journaled since the start, are all in the new one,
    beside the exam whose write found the damage."""
    monkeypatch.setattr(journal_module, "START_CHECK_SECONDS", 0)
    path = tmp_path / JOURNAL_FILE
    exams = earlier_exams_with_a_bad_index(path)

    caplog.set_level(logging.WARNING)
    journal = Journal(path)
    assert journal.moved_aside is None  # the start did not reach the damage
    run = journal.start_run("clinic-a", MODELS)
    rows = [journal.append(run, frame(i)) for i in range(80)]
    now = summary(time.time())
    assert journal.add_exam(run, now, {}, rows[0], rows[-1])  # found it, and written anew
    assert journal.moved_aside is not None and journal.moved_aside.exists()
    assert summaries(journal) == [*exams, now]
    assert journal.exam_dates(exams[1]["exam_id"]) == DATES
    assert [r["frame"] for r in journal.results(run)] == list(range(80))
    assert journal.salvaged == {"exams": (4, 0), "exam_dates": (1, 0), "runs": (2, 0),
                                "exam_withdrawals": (0, 0),
                                "results": (380, 0)}
    [line] = said(caplog)
    assert "is corrupt" in line and ("exams 4/0, exam dates 1/0, exam withdrawals 0/0, "
                                     "runs 2/0, frame results 380/0") in line, line
    assert journal.append(run, frame(80)) == rows[-1] + 1
    assert journal.end_run(run)
    assert [r["frames"] for r in journal.runs()] == [300, 81]


def test_a_journal_whose_header_is_destroyed_is_one_line_and_an_empty_journal(tmp_path,
                                                                              caplog):
    """Nothing of a file whose first page is gone can be opened: the start still ends in
    a working journal, empty, with one line naming the file and where it went (in a
    folder whose name is not UTF-8, as a box's may be)."""
    folder = Path(os.fsdecode(os.fsencode(tmp_path / "state-\xe9") + b"\xff"))
    folder.mkdir()
    path = folder / JOURNAL_FILE
    journal = Journal(path)
    run = journal.start_run("clinic-a", MODELS)
    for i in range(200):
        journal.append(run, frame(i))
    assert journal.add_exam(run, summary(time.time()), {})
    journal.close()
    damage(path, [1])

    caplog.set_level(logging.WARNING)
    journal = Journal(path)
    assert journal.moved_aside is not None and journal.salvaged == {}
    [line] = said(caplog)
    assert f"journal {path} is corrupt" in line and str(journal.moved_aside) in line
    assert line.endswith("nothing in it could be read (file is not a database): a new, "
                         "empty journal is started"), line
    run = journal.start_run("clinic-a", MODELS)
    # the old journal's last id is unknown: ids go on far above anything it may have given
    assert journal.append(run, frame(0)) == journal_module.SALVAGE_ID_GAP + 1
    body = summary(time.time())
    assert journal.add_exam(run, body, {})
    assert summaries(journal) == [body]


def test_rows_that_do_not_read_back_as_written_are_left_behind_and_counted(tmp_path, caplog):
    """A damaged page can still give rows. One the journal's readers would not read back
    as it was written (a summary that is not JSON or names another exam, dates too long,
    a run's models or a frame's record that is no object) is not copied, nor is a row far
    longer than any the journal writes (never loaded: memory stays bounded): each is
    counted as not readable, and the new journal's readers see the sound rows only."""
    path = tmp_path / JOURNAL_FILE
    journal = Journal(path)
    run = journal.start_run("clinic-a", MODELS)
    for i in range(400):
        journal.append(run, frame(i))
    exams = [summary(time.time() - 600 + k) for k in range(3)]
    for body in exams:
        assert journal.add_exam(run, body, {})
    assert journal.keep_dates(exams[0]["exam_id"], DATES)
    db = journal.db
    db.execute("INSERT INTO exams (exam_id, protocol, started_ts, ended_ts, ended_by, summary,"
               " best_frames) VALUES ('x1', '', 1, 2, '', '{\"exam_id\":\"x1\"', '{}')")
    db.execute("INSERT INTO exams (exam_id, protocol, started_ts, ended_ts, ended_by, summary,"
               " best_frames) VALUES ('x2', '', 1, 2, '', ?, '{}')", (
                   '{"exam_id":"' + exams[0]["exam_id"] + '"}',))
    db.execute("INSERT INTO exam_dates (exam_id, dates) VALUES ('x3', ?)",
               ('{"lmp":"' + "9" * 300 + '"}',))
    db.execute("INSERT INTO runs (run_id, source, started_ts, models) VALUES ('r2', 's', 1, "
               "'[1')")
    db.execute("INSERT INTO results (run_id, source, frame, ts, mono_s, record) VALUES "
               "(?, 'a.png', 1, 1, 1, '[]')", (run,))
    db.execute("INSERT INTO results (run_id, source, frame, ts, mono_s, record) VALUES "
               "(?, 'a.png', 2, 1, 1, ?)", (run, '{"frame": 2, "x": "' + "x" * (2 << 20) + '"}'))
    for i in range(400, 800):
        journal.append(run, frame(i))
    journal.close()
    results = leaves(path, "results")
    tail = results[-1][1]
    damage(path, [results[-1][0]])

    caplog.set_level(logging.WARNING)
    journal = Journal(path)
    assert summaries(journal) == exams
    assert [r[0] for r in journal.db.execute("SELECT run_id FROM runs")] == [run]
    assert journal.salvaged == {"exams": (3, 2), "exam_dates": (1, 1), "runs": (1, 1),
                                "exam_withdrawals": (0, 0),
                                "results": (800 - tail, tail + 2)}
    assert "exams 3/2, exam dates 1/1, exam withdrawals 0/0, runs 1/1" in said(caplog)[0]
    assert all(isinstance(r, dict) and r["frame"] == i for i, r in enumerate(
        journal.results(run)))


def test_a_huge_corrupt_journal_is_salvaged_within_its_bound_exams_first(tmp_path, caplog,
                                                                         monkeypatch):
    """The salvage holds up the start, so it stops at SALVAGE_SECONDS (here cut to 0.2 s
    against a file it cannot copy in that time): the exams are in the new journal, then
    the newest frames, and the line says where it stopped. The rest stays in the
    moved-aside file."""
    monkeypatch.setattr(journal_module, "SALVAGE_SECONDS", 0.2)
    path = tmp_path / JOURNAL_FILE
    journal = Journal(path)
    run = many_frames(journal, 60_000)
    exams = [summary(time.time() - 600 + k) for k in range(3)]
    for body in exams:
        assert journal.add_exam(run, body, {})
    journal.close()
    last, rows = leaves(path, "results")[-1]
    damage(path, [last])

    caplog.set_level(logging.WARNING)
    began = time.monotonic()
    journal = Journal(path)
    took = time.monotonic() - began
    assert took < 0.2 + 2.0, took  # the bound, and a margin for a busy box
    assert summaries(journal) == exams
    assert journal.salvaged["exams"] == (3, 0) and journal.salvaged["runs"] == (1, 0)
    copied, _ = journal.salvaged["results"]
    assert 0 < copied < 60_000 - rows
    ids = [r[0] for r in journal.db.execute("SELECT id FROM results ORDER BY id")]
    assert ids == list(range(60_000 - rows - copied + 1, 60_000 - rows + 1))  # the newest
    [line] = said(caplog)
    assert line.endswith("stopped in frame results after 0.2 s (SALVAGE_SECONDS): the rest "
                         "is only in the moved-aside file"), line
    assert journal.moved_aside.stat().st_size > 60_000 * 300  # all of it still there


def test_result_ids_lost_with_a_damaged_page_are_never_handed_out_again(tmp_path):
    """The salvage copied rows under their ids but not the counter that hands out the next:
    with the last page of frame results lost, the running run's next frames took the lost
    ids again, so its next exam got the id of one already journaled (an exam's id derives
    from its run and first frame's row) and replaced it, and the outbox refused it as
    queued. Ids go on above the old journal's counter, or, where even that cannot be read,
    far above what was copied."""
    for also_the_counter in (False, True):
        path = tmp_path / str(also_the_counter) / JOURNAL_FILE
        journal = Journal(path)
        run = journal.start_run("clinic-a", MODELS)
        for i in range(1200):
            journal.append(run, frame(i))
        top = journal.db.execute("SELECT MAX(id) FROM results").fetchone()[0]
        journal.close()
        pages = [leaves(path, "results")[-1][0]]
        if also_the_counter:
            pages += [page for page, _ in leaves(path, "sqlite_sequence")]
        damage(path, pages)
        journal = Journal(path)
        assert journal.moved_aside is not None and journal.salvaged["results"][1] > 0
        again = journal.append(journal.start_run("clinic-a", MODELS), frame(0))
        assert again is not None and again > top, (also_the_counter, again, top)
        journal.close()
