"""When the box's clock steps (the midwife's page sets it forward, or network time comes
up), what the clock before the step stamped is dated again, and the box, its page and the
district agree.

The last session's tap re-dated only the outbox's queued messages. The exam running at the
tap still said it began weeks before it ended; the page's list and reports kept the early
dates the district no longer had; the next start's journal prune took a week of frames
written by the old clock for two months old and deleted them; and a step by network time
was not seen at all.

The loop tests drive the real device loop (`edge.loop.run`, in a thread) with a live
grabber playing HC18 heads and a clock 60 days behind, one of them with its real page.
`BoxClock` stands in for the machine's clock: the process's `time.time` runs behind, the
system call that sets the clock moves it instead of the machine's (a test may not move the
machine's clock, and as root it would), and the server is told it may set it and that no
network time keeps it. The others pin the parts: `WallSteps`, the tracker's rule,
`Journal.redate` and a failed prune.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

import edge.web.server as server_module
from edge.config import load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSettings, ExamTracker
from edge.loop import run
from edge.store.journal import Journal
from edge.web import clock
from edge.web.auth import write_pin
from edge.web.history import ExamHistory
from edge.web.live import LoopHook
from tests.servers import free_port
from tests.test_unplugged_exam import _outbox_kinds, _unpluggable_grabber
from tests.web_harness import PIN, wait_for

DAY_S = 86400.0
BEHIND_S = 60 * DAY_S
END_GAP_S = 2.0


class BoxClock:
    """The process's wall clock, `behind_s` behind the real one until `clock_settime`."""

    def __init__(self, monkeypatch, behind_s: float):
        self.real = time.time
        self.behind_s = behind_s
        self.sets: list[float] = []
        monkeypatch.setattr(time, "time", lambda: self.real() - self.behind_s)
        monkeypatch.setattr(time, "clock_settime", self.settime)
        monkeypatch.setattr(clock, "clock_synchronised", lambda: False)
        monkeypatch.setattr(server_module, "clock_synchronised", lambda: False)
        monkeypatch.setattr(server_module, "can_set_clock", lambda: True)

    def settime(self, which: int, value: float) -> None:
        self.sets.append(value)
        self.behind_s = self.real() - value


def _start_loop(tmp_path, state, extra: str = "") -> threading.Thread:
    """The real device loop in a thread, on the test's live grabber, no broker."""
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[source]
spec = "v4l2:/dev/video9"
backoff_initial_s = 0.3
backoff_max_s = 0.5
[device]
state_dir = "{state}"
[loop]
log_every = 0
[exam]
end_gap_s = {END_GAP_S}
signal_hold_s = 0  # the cable out is the woman gone here (tests/test_signal_hold.py holds)
{extra}""")
    loop = threading.Thread(target=run, args=(load_settings(cfg),),
                            kwargs={"echo": lambda line: None}, daemon=True)
    loop.start()
    return loop


def _request(base: str, path: str, body: dict | None = None, cookie: str = "") -> tuple[int, dict]:
    headers = {"Origin": base}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if cookie:
        headers["Cookie"] = cookie
    request = urllib.request.Request(base + path, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as res:
            return res.status, {**json.loads(res.read() or b"{}"),
                                "_cookie": res.headers.get("Set-Cookie", "")}
    except urllib.error.HTTPError as exc:
        return exc.code, {"_text": exc.read().decode(errors="replace")}


def _journal_exams(state) -> dict[str, tuple[float, float, dict]]:
    with sqlite3.connect(f"file:{state / 'journal.sqlite'}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute("SELECT exam_id, started_ts, ended_ts, summary FROM exams").fetchall()
    def read(text: str) -> dict | None:
        try:
            return json.loads(text)
        except ValueError:
            return None  # damaged, as a test left it

    return {exam_id: (started, ended, read(summary)) for exam_id, started, ended, summary in rows}


def test_a_clock_set_mid_exam_dates_that_exam_the_queued_one_and_the_journals_copies_alike(
        tmp_path, data_dir, monkeypatch):
    box_clock = BoxClock(monkeypatch, BEHIND_S)
    plugged, grabbers, sources = _unpluggable_grabber(data_dir, 7, monkeypatch)
    monkeypatch.setattr(LoopHook, "linger", lambda self, stopped, poll_s=0.2: None)
    state = tmp_path / "state"
    write_pin(state, PIN)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    loop = _start_loop(tmp_path, state, f'[web]\nlisten = "127.0.0.1:{port}"\ntls = "off"\n')
    exams = lambda: [b for kind, b in _outbox_kinds(state) if kind == "exam"]  # noqa: E731
    try:
        # the first woman, scanned and gone while the clock was 60 days behind: queued
        # (no broker is configured, so nothing is ever tried) and journaled
        wait_for(lambda: grabbers and grabbers[0].i >= 20, 90, "the first woman's heads")
        plugged.clear()
        first = wait_for(exams, END_GAP_S + 10, "her exam in the outbox")[0]
        assert first["started_ts"] < box_clock.real() - BEHIND_S + 60
        # the second woman's scan is running when the midwife taps the clock card
        plugged.set()
        wait_for(lambda: len(grabbers) > 1 and grabbers[-1].i >= 10, 30, "her heads")
        status, answer = _request(base, "/api/login", {"pin": PIN})
        assert status == 200, answer
        cookie = answer["_cookie"].split(";", 1)[0]
        status, answer = _request(base, "/api/clock", {"phone_ms": box_clock.real() * 1000},
                                  cookie)
        assert status == 200, answer
        assert answer["moved_s"] == pytest.approx(BEHIND_S, abs=5)
        assert box_clock.behind_s == pytest.approx(0, abs=5)
        wait_for(lambda: grabbers[-1].i >= 25, 30, "more of her heads after the tap")
        plugged.clear()
        second = wait_for(lambda: exams()[1:], END_GAP_S + 10, "her exam in the outbox")[0]
        now = box_clock.real()
        # both exams by the right clock now: the district counts them today
        for exam in (first, second):
            queued = next(b for b in exams() if b["exam_id"] == exam["exam_id"])
            assert now - 120 < queued["started_ts"] <= queued["ended_ts"] < now + 1, queued
        # the running exam began when it began, not 60 days before it ended
        assert second["ended_ts"] - second["started_ts"] == pytest.approx(
            second["duration_s"], abs=3)
        # the journal's copies (the page's list and reports) date them as the district does
        journaled = wait_for(lambda: (j := _journal_exams(state)) and len(j) == 2 and j,
                             10, "both exams in the journal")
        for exam in exams():
            started, ended, summary = journaled[exam["exam_id"]]
            assert started == pytest.approx(exam["started_ts"], abs=0.01)
            assert ended == pytest.approx(exam["ended_ts"], abs=0.01)
            assert summary["started_ts"] == pytest.approx(exam["started_ts"], abs=0.01)
        status, listed = _request(base, "/api/exams?limit=5", cookie=cookie)
        assert status == 200 and len(listed["exams"]) == 2, listed
        for row in listed["exams"]:
            assert now - 120 < row["started_ts"] < now + 1, row
    finally:
        plugged.clear()
        for source in sources:
            source.close()
        loop.join(60)
    assert not loop.is_alive()


def test_a_clock_set_moves_only_the_times_the_clock_that_was_behind_gave():
    """The tap reaches the loop between frames: a frame already stamped by the clock now
    right (after the tap, before the loop saw it) is not moved a second time."""
    ended: list[dict] = []
    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(end_gap_s=20.0), None,
                          lambda session, body: ended.append(body))
    behind = time.time() - BEHIND_S
    record = {"plane": "Trans-thalamic", "plane_confidence": 0.9, "roi": [0, 0, 10, 10]}
    for n in range(3):
        tracker.feed({**record, "ts": behind + n}, mono=100.0 + n)
    before_ts = time.time() - BEHIND_S / 2
    tracker.feed({**record, "ts": time.time()}, mono=103.0)  # stamped after the tap
    tracker.clock_set(BEHIND_S, before_ts)
    tracker.feed({**record, "ts": time.time() + 1}, mono=104.0)
    body = tracker.end("command")
    assert body["started_ts"] == pytest.approx(behind + BEHIND_S, abs=0.01)
    assert body["ended_ts"] == pytest.approx(time.time() + 1, abs=1)
    assert body["duration_s"] == pytest.approx(4.0)
    tracker.clock_set(BEHIND_S, before_ts)  # no exam running: nothing to move
    assert tracker.current is None


def _exam(journal: Journal, exam_id: str, started: float) -> None:
    from edge.exam.session import ExamSession
    session = ExamSession(find_protocol("biometry"), exam_id=exam_id, started_ts=started)
    assert journal.add_exam(None, session.summary("gap", ended_ts=started + 600,
                                                  ended_mono=session.started_mono + 600), {})


def _run(journal: Journal, run_id: str, started: float, ended: float | None) -> None:
    journal.db.execute("INSERT INTO runs (run_id, source, started_ts, ended_ts, models) "
                       "VALUES (?,?,?,?,?)", (run_id, "live", started, ended, "{}"))
    journal.db.execute("INSERT INTO results (run_id, source, frame, ts, mono_s, record) "
                       "VALUES (?,?,?,?,?,?)", (run_id, "live", 1, started + 1, 1.0,
                                                json.dumps({"ts": started + 1})))


def test_a_step_forward_dates_again_this_boots_rows_and_the_exams_the_outbox_did(tmp_path):
    """The box booted three days ago (by the clock behind) and its clock was set 60 days
    forward now: what it stamped since the boot is off by exactly the step; of earlier
    boots, only the exams whose queued summaries the outbox dated again move, so the page
    and the district agree; the rest, already at the district, stay as they are."""
    journal = Journal(tmp_path / "journal.sqlite")
    now = time.time()
    old_now = now - BEHIND_S  # the clock behind's reading at the step
    boot = old_now - 3 * DAY_S
    before = now - BEHIND_S / 2
    _exam(journal, "this-boot-0001", old_now - 3600)
    _exam(journal, "earlier-queued-0002", boot - 10 * DAY_S)
    _exam(journal, "earlier-sent-0003", boot - 20 * DAY_S)
    _exam(journal, "broken-0004", old_now - 1800)
    _exam(journal, "texty-0005", boot - 5 * DAY_S)
    with journal.db:
        journal.db.execute("UPDATE exams SET summary = '[1, 2' WHERE exam_id = 'broken-0004'")
        # hostile: a text where a time goes, in the column and in the summary
        journal.db.execute("UPDATE exams SET started_ts = 'not a time', summary = "
                           "json_set(summary, '$.started_ts', 'x') WHERE exam_id = 'texty-0005'")
    _run(journal, "this-boot-run", old_now - 7200, old_now - 60)
    _run(journal, "this-run", old_now - 30, None)  # the run going on
    _run(journal, "earlier-run", boot - 40 * DAY_S, boot - 40 * DAY_S + 600)
    assert journal.keep_dates("this-boot-0001", {"lmp": "2026-07-01", "today": "2026-10-07"},
                              entered_ts=old_now - 600)
    assert journal.redate(BEHIND_S, boot, before,
                          ["earlier-queued-0002", "unknown-9", "texty-0005"]) == 3
    assert journal.redate(BEHIND_S, boot, before, []) == 0  # nothing left stamped behind
    rows = _journal_exams(tmp_path)
    assert rows["this-boot-0001"][:2] == (pytest.approx(now - 3600), pytest.approx(now - 3000))
    assert rows["this-boot-0001"][2]["started_ts"] == pytest.approx(now - 3600, abs=0.01)
    assert rows["earlier-queued-0002"][0] == pytest.approx(boot - 10 * DAY_S + BEHIND_S)
    assert rows["earlier-sent-0003"][0] == pytest.approx(boot - 20 * DAY_S)
    assert rows["broken-0004"][0] == pytest.approx(old_now - 1800)  # damaged: as it is
    assert rows["broken-0004"][2] is None
    assert rows["texty-0005"][0] == "not a time"  # left, never made a number
    assert rows["texty-0005"][2]["started_ts"] == "x"
    assert rows["texty-0005"][1] == pytest.approx(boot - 5 * DAY_S + 600 + BEHIND_S)
    runs = {r["run_id"]: r for r in journal.runs()}
    assert runs["this-boot-run"]["ended_ts"] == pytest.approx(now - 60)
    assert runs["this-run"]["started_ts"] == pytest.approx(now - 30)
    assert runs["this-run"]["ended_ts"] is None
    assert runs["earlier-run"]["started_ts"] == pytest.approx(boot - 40 * DAY_S)
    # an exam a kill cut off is rebuilt from its frames: they read by the clock now right
    assert [r["ts"] for _, r in journal.replay("this-boot-run")] == [
        pytest.approx(now - 7199)]
    assert journal.dates_entry("this-boot-0001")[1] == pytest.approx(now - 600)
    # and the next start's prune counts a week's frames a week old, not two months
    assert journal.prune(30) == 1
    assert sorted(r["run_id"] for r in journal.runs()) == ["this-boot-run", "this-run"]
    journal.close()
    # the page reads the journal: its list shows the moved exam by the clock now right
    import asyncio
    history = ExamHistory(tmp_path)
    try:
        listed, readable = asyncio.run(history.recent(10, None))
    finally:
        history.close()
    shown = {row["exam_id"]: row for row in listed}
    assert readable and shown["this-boot-0001"]["started_ts"] == pytest.approx(now - 3600,
                                                                               abs=0.01)


def test_a_prune_that_fails_leaves_no_transaction_open(tmp_path):
    """A prune that raised (a damaged file) left its transaction open: every later write
    of the run went into it, uncommitted."""
    journal = Journal(tmp_path / "journal.sqlite")
    _run(journal, "old", time.time() - 100 * DAY_S, time.time() - 99 * DAY_S)
    journal.db.execute("CREATE TRIGGER damaged BEFORE DELETE ON runs "
                       "BEGIN SELECT RAISE(ABORT, 'database disk image is malformed'); END")
    with pytest.raises(sqlite3.DatabaseError):
        journal.prune(30)
    assert not journal.db.in_transaction
    journal.close()


def test_network_time_stepping_the_clock_mid_exam_moves_that_exams_start(
        tmp_path, data_dir, monkeypatch):
    """The commonest step: a Pi booted at the time it was switched off, scanning begins,
    and the link comes up mid-exam, network time stepping the clock weeks forward. The
    exam's start came from the clock before and its end from the one after: its report
    was dated weeks before the scan. No page is open here; the loop sees the step."""
    box_clock = BoxClock(monkeypatch, BEHIND_S)
    plugged, grabbers, sources = _unpluggable_grabber(data_dir, 8, monkeypatch)
    state = tmp_path / "state"
    loop = _start_loop(tmp_path, state)
    exams = lambda: [b for kind, b in _outbox_kinds(state) if kind == "exam"]  # noqa: E731
    try:
        wait_for(lambda: grabbers and grabbers[0].i >= 15, 90, "the woman's heads")
        box_clock.behind_s = 0.0  # timesyncd steps the clock: no page, no tap
        wait_for(lambda: grabbers[0].i >= 30, 30, "more of her heads after the step")
        plugged.clear()
        exam = wait_for(exams, END_GAP_S + 10, "her exam in the outbox")[0]
        now = box_clock.real()
        assert now - 120 < exam["started_ts"] <= exam["ended_ts"] < now + 1, exam
        assert exam["ended_ts"] - exam["started_ts"] == pytest.approx(exam["duration_s"], abs=3)
        assert not box_clock.sets  # nobody set it from the page
    finally:
        plugged.clear()
        for source in sources:
            source.close()
        loop.join(60)
    assert not loop.is_alive()


def test_a_step_is_a_change_of_the_wall_clock_against_the_boot_clock(monkeypatch):
    from edge.capture.clock import CLOCK_STEP_S, WallSteps

    shift = [0.0]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + shift[0])
    steps = WallSteps()
    assert steps() == 0.0  # the first look only notes where the clock stands
    shift[0] = CLOCK_STEP_S / 2  # network time slewing, or a small set: not a step
    assert steps() == 0.0
    shift[0] += BEHIND_S  # set 60 days forward
    assert steps() == pytest.approx(BEHIND_S, abs=1)
    assert steps() == 0.0  # seen once
    shift[0] -= 3 * 3600  # a clock that ran ahead, pulled back by network time
    assert steps() == pytest.approx(-3 * 3600, abs=1)


def test_a_step_back_moves_only_the_times_the_clock_ahead_gave():
    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(end_gap_s=20.0), None,
                          lambda session, body: None)
    ahead = time.time() + 3 * 3600
    record = {"plane": "Trans-thalamic", "plane_confidence": 0.9, "roi": [0, 0, 10, 10]}
    tracker.feed({**record, "ts": ahead}, mono=100.0)
    tracker.feed({**record, "ts": time.time()}, mono=101.0)  # after the step
    tracker.clock_set(-3 * 3600, time.time() + 3 * 3600 / 2)
    body = tracker.end("command")
    assert body["started_ts"] == pytest.approx(time.time(), abs=2)
    assert body["ended_ts"] == pytest.approx(time.time(), abs=2)


def test_a_frame_captured_as_the_clock_stepped_and_fed_after_it_moves_too():
    """Frames are stamped as they are read (on the read-ahead thread): one captured before
    the step and fed after it kept the clock behind's time, and an exam ending on it said
    it ended 60 days before it began (the review's case)."""
    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(end_gap_s=20.0), None,
                          lambda session, body: None)
    behind = time.time() - BEHIND_S
    record = {"plane": "Trans-thalamic", "plane_confidence": 0.9, "roi": [0, 0, 10, 10]}
    for n in range(3):
        tracker.feed({**record, "ts": behind + n}, mono=100.0 + n)
    tracker.clock_set(BEHIND_S, time.time() - BEHIND_S / 2)
    tracker.feed({**record, "ts": behind + 3}, mono=103.0)  # in flight at the step
    body = tracker.end("gap")
    assert body["started_ts"] == pytest.approx(behind + BEHIND_S, abs=0.01)
    assert body["ended_ts"] == pytest.approx(behind + 3 + BEHIND_S, abs=0.01)
    # a later step back ends the rule: after it the clock may read before the first
    # step's `before_ts` again, and its times are its own
    tracker.clock_set(-BEHIND_S, time.time() + BEHIND_S / 2)
    tracker.feed({**record, "ts": behind + 10}, mono=200.0)
    assert tracker.end("command")["started_ts"] == pytest.approx(behind + 10, abs=0.01)
