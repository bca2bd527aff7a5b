"""Dates the midwife enters after an exam's summary has left reach the district as a
correction (a `dates` message): once per entry, never with the date, after a SIGKILL at
any point, and again after an outbox lost it. The real journal and the real uplink's
outbox (no broker: what is queued is what the broker will be sent)."""

from __future__ import annotations

import json
import re

from edge.config import Settings
from edge.loop import tell_district_dates, tell_district_since
from edge.store.journal import Journal
from edge.uplink.mqtt import MqttSettings, Uplink
from tests.test_outbox import exam_body
from wire.schema import validate_payload

DATES = {"lmp": "2026-06-10", "today": "2026-12-04"}  # 25.29 weeks
LATER = {"lmp": "2026-06-03", "today": "2026-12-04"}  # 26.29 weeks
ENVELOPE = ("schema", "kind", "msg_id", "seq", "boot_id", "device_id", "clinic_id", "ts",
            "mono_s")


def journaled_exam(journal: Journal, exam_id: str, ga_dates_weeks: float | None = None,
                   head: bool = True) -> dict:
    """An ended exam as the loop journals it (the summary the outbox was given)."""
    body = {k: v for k, v in exam_body().items() if k not in ENVELOPE}
    body["exam_id"] = exam_id
    if head:
        body["biometry"] = {"measured": 4, "declined": {}, "hc_mm": 231.4, "ga_weeks": 25.1}
        if ga_dates_weeks is not None:
            body["biometry"]["ga_dates_weeks"] = ga_dates_weeks
    assert journal.add_exam("run", body, {})
    return body


def corrections(uplink: Uplink, exam_id: str | None = None) -> list[dict]:
    """The corrections queued, oldest first, each checked valid on the wire and dateless."""
    out = []
    for message in sorted(uplink.outbox.list(1000), key=lambda m: m.seq):
        payload = json.loads(message.payload)
        if message.kind != "dates" or exam_id not in (None, payload["exam_id"]):
            continue
        assert validate_payload(payload) == [], payload
        assert not re.search(r"\d{4}-\d{2}-\d{2}", message.payload.decode()
                             if isinstance(message.payload, bytes) else message.payload)
        out.append(payload)
    return out


def device(tmp_path) -> tuple[Journal, Uplink]:
    return (Journal(tmp_path / "journal.sqlite"),
            Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path))


def test_each_entry_after_the_summary_left_is_one_correction_and_a_repeat_is_none(tmp_path):
    journal, uplink = device(tmp_path)
    journaled_exam(journal, "ended")
    # entered while the exam runs: its summary will carry them, no correction
    assert journal.keep_dates("running", DATES, entered_ts=900.0)
    assert not tell_district_dates(journal, uplink, "running")

    assert journal.keep_dates("ended", DATES, entered_ts=1000.0)
    assert tell_district_dates(journal, uplink, "ended")
    [first] = corrections(uplink)
    assert (first["exam_id"], first["ga_dates_weeks"], first["entered_ts"]) == (
        "ended", 25.29, 1000.0)
    # the same entry again (a second tap, a restart): the district has it, nothing queued
    assert not tell_district_dates(journal, uplink, "ended")
    assert journal.keep_dates("ended", DATES, entered_ts=1100.0)  # the same weeks
    assert not tell_district_dates(journal, uplink, "ended")
    # changed: a second correction; cleared: a third, with no age; cleared again: none
    assert journal.keep_dates("ended", LATER, entered_ts=1200.0)
    assert tell_district_dates(journal, uplink, "ended")
    assert journal.keep_dates("ended", None, entered_ts=1300.0)
    assert tell_district_dates(journal, uplink, "ended")
    assert journal.keep_dates("ended", None, entered_ts=1400.0)
    assert not tell_district_dates(journal, uplink, "ended")
    assert [(c["ga_dates_weeks"], c["entered_ts"]) for c in corrections(uplink)] == [
        (25.29, 1000.0), (26.29, 1200.0), (None, 1300.0)]
    # and back to the first dates: told again, since the district's last word was "none"
    assert journal.keep_dates("ended", DATES, entered_ts=1500.0)
    assert tell_district_dates(journal, uplink, "ended")
    assert corrections(uplink)[-1]["ga_dates_weeks"] == 25.29
    seqs = [c["seq"] for c in corrections(uplink)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_two_entries_at_the_same_clock_are_two_corrections(tmp_path):
    """The box may have no battery-backed clock: after a power cut it can stamp two
    entries alike, or a later one earlier. Each entry is still its own correction (the
    journal numbers them), in the order she made them (the outbox's seq)."""
    journal, uplink = device(tmp_path)
    journaled_exam(journal, "e")
    for dates, when in ((DATES, 1000.0), (LATER, 1000.0), (DATES, 400.0)):
        assert journal.keep_dates("e", dates, entered_ts=when)
        assert tell_district_dates(journal, uplink, "e")
    assert [(c["ga_dates_weeks"], c["entered_ts"]) for c in corrections(uplink)] == [
        (25.29, 1000.0), (26.29, 1000.0), (25.29, 400.0)]
    assert journal.dates_entry("e")[0] == 3 and journal.dates_entry("e")[2] == "25.29"


def test_the_age_by_dates_of_an_entry_made_days_later_is_the_age_at_the_exam():
    """Entered a week after the scan, the age by dates is the baby's at the scan: the
    tablet's date goes back by the whole days the box's clock says have passed since the
    exam ended. A clock that went back (a reboot without one) or jumped beyond 45 weeks
    moves nothing, and what is not a date is left for read_lmp to refuse."""
    from edge.exam.screening import day_of_exam, read_lmp

    ended = 1_790_000_000.0
    assert day_of_exam("2026-12-12", ended, ended + 7 * 86400 + 3600) == "2026-12-05"
    assert day_of_exam("2026-12-05", ended, ended + 3600) == "2026-12-05"  # the same day
    lmp, today, weeks = read_lmp("2026-06-10", day_of_exam("2026-12-10", ended,
                                                           ended + 6.5 * 86400))
    assert (today, round(weeks, 2)) == ("2026-12-04", 25.29)  # not 26.14 at entry
    for now in (ended - 86400, ended + 400 * 86400):  # the clock went back / jumped
        assert day_of_exam("2026-12-12", ended, now) == "2026-12-12"
    assert day_of_exam("0001-01-02", ended, ended + 3 * 86400) == "0001-01-02"  # not 1 BC
    for bad_today in ("12/12/2026", "2026-13-45", "x" * 3000, None, 7, ["2026-12-12"]):
        assert day_of_exam(bad_today, ended, ended + 3 * 86400) == bad_today
    for bad_end in (None, "yesterday", float("nan"), float("inf"), True):
        assert day_of_exam("2026-12-12", bad_end, ended) == "2026-12-12"


def test_dates_the_summary_carried_or_an_exam_without_a_head_owe_no_correction(tmp_path):
    journal, uplink = device(tmp_path)
    journaled_exam(journal, "carried", ga_dates_weeks=25.29)
    journaled_exam(journal, "no-head", head=False)
    for exam_id in ("carried", "no-head"):
        assert journal.keep_dates(exam_id, DATES, entered_ts=1000.0)
        assert not tell_district_dates(journal, uplink, exam_id)
    # a row from before corrections existed (no entry time) is left as it was
    journaled_exam(journal, "older")
    journal.db.execute("INSERT INTO exam_dates (exam_id, dates) VALUES ('older', ?)",
                       (json.dumps(DATES),))
    assert not tell_district_dates(journal, uplink, "older")
    assert corrections(uplink) == []
    # a damaged row (dates and told alike), as the report reads it: no dates entered. The
    # district, whose summary said 25.29 weeks, is told so once, and nothing is raised
    for raw in ("{not json", "[" * 1000, '{"lmp": "' + "9" * 300 + '"}'):
        journal.db.execute("INSERT OR REPLACE INTO exam_dates (exam_id, dates, entered_ts, "
                           "entry, told) VALUES ('carried', ?, 2000.0, 7, ?)", (raw, raw))
        assert tell_district_dates(journal, uplink, "carried")  # queued, or found queued
    assert [(c["exam_id"], c["ga_dates_weeks"]) for c in corrections(uplink)] == [
        ("carried", None)]
    # an entry time that is no time on the wire (past 2100, negative, text), or an entry
    # number that is none: no correction
    journaled_exam(journal, "no-head")  # now with a head: a correction would be owed
    for when, entry in ((float("inf"), 3), (1e300, 3), (-5.0, 3), ("yesterday", 3),
                        (b"\xff", 3), (1000.0, 0), (1000.0, -1), (1000.0, "two"),
                        (1000.0, 1 << 40)):
        journal.db.execute("UPDATE exam_dates SET entered_ts = ?, entry = ?, told = NULL "
                           "WHERE exam_id = 'no-head'", (when, entry))
        assert not tell_district_dates(journal, uplink, "no-head"), (when, entry)
    assert len(corrections(uplink)) == 1


def test_a_correction_a_killed_process_owed_is_queued_at_the_next_start(tmp_path):
    """Killed after the journal kept the dates but before the outbox had the correction,
    or after the outbox had it but before the journal noted it: the next start queues
    each correction owed, once."""
    journal, uplink = device(tmp_path)
    settings = Settings()
    journaled_exam(journal, "a")
    journaled_exam(journal, "b")
    assert journal.keep_dates("a", DATES)  # ... and the process died here
    assert tell_district_since(settings, journal, uplink) == 1
    assert [c["exam_id"] for c in corrections(uplink)] == ["a"]
    assert tell_district_since(settings, journal, uplink) == 0  # told already

    assert journal.keep_dates("b", LATER)
    assert tell_district_dates(journal, uplink, "b")
    journal.db.execute("UPDATE exam_dates SET told = NULL WHERE exam_id = 'b'")  # died here
    assert tell_district_since(settings, journal, uplink) == 1  # found queued
    assert [c["exam_id"] for c in corrections(uplink)] == ["a", "b"]  # not twice
    assert tell_district_since(settings, journal, uplink) == 0
    # a process that outlived a week of keep_days does not look back further than that
    journal.db.execute("UPDATE exam_dates SET entered_ts = 1.0, told = NULL")
    assert tell_district_since(settings, journal, uplink) == 0


def test_a_corrupt_outbox_sends_the_last_correction_again_under_the_same_msg_id(tmp_path):
    journal, uplink = device(tmp_path)
    journaled_exam(journal, "a")
    assert journal.keep_dates("a", DATES)
    assert tell_district_dates(journal, uplink, "a")
    [sent] = corrections(uplink)
    uplink.close()
    (tmp_path / "outbox.sqlite3").write_bytes(b"not a database" * 200)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"outbox.sqlite3{suffix}").unlink(missing_ok=True)
    uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path)
    assert uplink.outbox.moved_aside is not None and corrections(uplink) == []
    assert tell_district_since(Settings(), journal, uplink) == 1
    [again] = corrections(uplink)
    # the collector keys on msg_id: if the first did arrive, this one is absorbed there
    assert again["msg_id"] == sent["msg_id"] and again["ga_dates_weeks"] == 25.29
    uplink.close()


def test_dates_the_page_accepted_as_the_run_stopped_are_kept_and_told(tmp_path, monkeypatch):
    """The real loop on real heads, with the page up: the midwife's dates for the exam that
    has just ended arrive after its summary is queued, as the process stops. The stop keeps
    them in the journal before it closes, and queues the district's correction."""
    import shutil

    from edge.config import load_settings
    from edge.loop import run
    from edge.web.auth import write_pin
    from edge.web.live import LoopHook
    from tests.conftest import DATA
    from tests.servers import free_port

    folder = tmp_path / "heads"
    folder.mkdir()
    for i, name in enumerate(("500_HC.png", "010_HC.png", "502_HC.png")):
        shutil.copy(DATA / "hc18" / "images" / name, folder / f"{i:02d}_{name}")
    state = tmp_path / "state"
    write_pin(state, "4827")
    ended: list[str] = []
    shown = LoopHook.exam_ended

    def then_dates_arrive(self, session, body):  # the page's POST, just after the summary
        shown(self, session, body)
        ended.append(body["exam_id"])
        self.view.dates_to_keep.append((body["exam_id"], DATES))

    monkeypatch.setattr(LoopHook, "exam_ended", then_dates_arrive)
    settings = load_settings(overrides={
        "source": {"spec": str(folder)}, "device": {"state_dir": str(state)},
        "loop": {"log_every": 0}, "biometry": {"pixel_size_mm": 0.15},
        "mqtt": {"device_id": "dev-a", "clinic_id": "c1"},
        "web": {"listen": f"127.0.0.1:{free_port()}"}})
    assert run(settings, once=True, echo=lambda _: None) == 0
    [exam_id] = ended

    journal = Journal(state / "journal.sqlite")
    [(kept,)] = journal.db.execute("SELECT dates FROM exam_dates WHERE exam_id = ?",
                                   (exam_id,)).fetchall()
    assert json.loads(kept) == DATES
    uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), state)
    [told] = corrections(uplink, exam_id)
    assert told["ga_dates_weeks"] == 25.29
    summary = next(json.loads(m.payload) for m in uplink.outbox.list(100) if m.kind == "exam")
    assert summary["exam_id"] == exam_id and summary["biometry"]["hc_mm"] > 0
    assert summary["biometry"].get("ga_dates_weeks") is None  # it left before the dates
    uplink.close()
    journal.close()
