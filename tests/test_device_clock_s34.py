"""A box whose clock runs behind is named on the devices page (left since the sixth
session of 5 December). A Raspberry Pi without its RTC battery and no network time boots at
the time it was switched off: its exams are dated weeks early and its clinic looks silent
while it works, and nothing told the district why."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest

from central import collector
from central.dashboard import config as C
from central.dashboard import pages, queries
from central.dashboard.store import open_db, refresh
from central.db import Store
from central.report import build_report, format_report
from tests import conftest_mqtt as fx
from tests.test_central import message

postgres = fx.postgres  # fixture
REGISTRY = dict.fromkeys(("box-late", "box-backlog", "box-retained", "box-ahead", "box-right",
                          "box-ahead-backlog", "box-set"), "clinic-1")
HOUR = 3600.0


def _row(kind: str, device: str, seq: int, device_ts: float, received: float,
         **extra) -> collector.Row:
    if kind == "exam":  # an exam that ended a minute before it was queued, by the box
        extra = {"started_ts": round(device_ts - 600, 3), "ended_ts": round(device_ts - 60, 3),
                 "exam_id": f"{device}-{seq}", **extra}
    payload = message(kind, device=device, seq=seq, ts=round(device_ts, 3), **extra)
    row = collector.check(f"sonoedge/{device}/{kind}", json.dumps(payload).encode(), 4096,
                          "test", received, REGISTRY)
    assert isinstance(row, collector.Row), row
    return row


def _district(url: str, now: float) -> None:
    late = 60 * C.DAY_S
    rows = [
        # 60 days behind: every message arrives 60 days "after" it was made; an exam it
        # sent before the collector had any of its clock's signals is dated as it says
        _row("exam", "box-late", 9, now - late - 3 * HOUR, now - 3 * HOUR + 1),
        _row("status", "box-late", 10, now - late - 2 * HOUR - 1, now - 2 * HOUR,
             state="online"),
        _row("health", "box-late", 11, now - late - 2 * HOUR + 60, now - 2 * HOUR + 61),
        _row("exam", "box-late", 12, now - late - 2 * HOUR + 100, now - 2 * HOUR + 101),
        # a right clock, five days offline: the backlog's latest health arrives late, its
        # connect's status at once; its last will, made at that connect, arrives later
        _row("status", "box-backlog", 20, now - HOUR, now - HOUR + 0.5, state="online"),
        _row("health", "box-backlog", 21, now - 5 * C.DAY_S, now - HOUR + 3),
        _row("exam", "box-backlog", 22, now - 5 * C.DAY_S + 60, now - HOUR + 4),
        _row("status", "box-backlog", 21, now - HOUR, now - 60, state="offline"),
        # a right clock whose connect the collector missed: the retained status read 3 days on
        _row("status", "box-retained", 30, now - 3 * C.DAY_S, now, state="online"),
        _row("health", "box-retained", 31, now - 30, now - 28),
        # three hours ahead
        _row("status", "box-ahead", 40, now + 3 * HOUR, now, state="online"),
        _row("health", "box-ahead", 41, now + 3 * HOUR - 60, now - 59),
        _row("exam", "box-ahead", 42, now + 3 * HOUR - 30, now - 29),
        # three hours ahead, back after five days offline: its backlog's latest health
        # is late, the connect's status is not
        _row("status", "box-ahead-backlog", 60, now + 3 * HOUR, now, state="online"),
        _row("health", "box-ahead-backlog", 61, now + 3 * HOUR - 5 * C.DAY_S, now),
        # set forward 60 days from the midwife's page yesterday: right now, and said
        _row("status", "box-set", 70, now - 60, now - 59, state="online"),
        _row("health", "box-set", 71, now - 30, now - 29,
             loop={"fps": 15.0, "clock_set_ts": now - C.DAY_S,
                   "clock_moved_s": 60 * C.DAY_S}),
        _row("exam", "box-set", 72, now - 20, now - 19),
        # no connect seen yet: unknown, not flagged
        _row("health", "box-right", 50, now - 5 * C.DAY_S, now),
    ]
    store = Store(url)
    try:
        assert store.store(rows, []) == (len(rows), 0)
    finally:
        store.close()


def _devices(url: str, now: float, exams: dict | None = None
             ) -> dict[str, queries.DeviceRow]:
    db = open_db(url)
    try:
        while refresh(db).messages:  # every batch
            pass
        if exams is not None:  # exam id -> (ts, day) as the rollup dated it
            exams.update({exam_id: (ts, day) for exam_id, ts, day in db.query(
                "SELECT exam_id, ts, day FROM dash.exams")})
        return {d.device_id: d for d in queries.devices_page(
            db, queries.Scope(None), queries.period(8), now=now)}
    finally:
        db.close()


def _clock_flags(d: queries.DeviceRow) -> list[str]:
    return [f for f in d.flags if f.startswith("clock ")]


def _clock_lines(report_text: str) -> dict[str, str]:
    """Device -> the clock line the report prints under the device's own line."""
    lines = report_text.splitlines()
    return {lines[i - 1].split()[0]: line.strip() for i, line in enumerate(lines)
            if line.strip().startswith("clock ")}


def _check(url: str) -> None:
    now = time.time()
    _district(url, now)
    exams: dict[str, tuple[float, int]] = {}
    devices = _devices(url, now, exams)
    late = devices["box-late"]
    assert _clock_flags(late) == [
        "clock 60 days behind (its exams re-dated by that lag): set it on the clinic's page"]
    assert late.clock_behind_s == pytest.approx(60 * C.DAY_S + 1, abs=1)
    assert _clock_flags(devices["box-ahead"]) == ["clock 3 h ahead"]
    assert _clock_flags(devices["box-ahead-backlog"]) == ["clock 3 h ahead"]
    for right in ("box-backlog", "box-retained"):  # late for another reason: not the clock
        assert _clock_flags(devices[right]) == [], devices[right].flags
        assert abs(devices[right].clock_behind_s) < 5
    assert devices["box-right"].clock_behind_s is None and not _clock_flags(devices["box-right"])
    yesterday = queries.day_text(int((now - C.DAY_S) // C.DAY_S))
    assert _clock_flags(devices["box-set"]) == [
        f"clock set 60 days forward from the clinic's page on {yesterday}"]
    # Each exam counted on the day it was done: a box online with its clock 60 days
    # behind had its exams dated 60 days early, and its clinic looked silent while it
    # worked. Its lag (the smaller of its live signals') is added to its exams' ends.
    day = lambda ts: int(ts // C.DAY_S)  # noqa: E731
    done = now - 2 * HOUR + 40  # the box's exam ended a minute before it was queued
    assert exams["box-late-12"] == (pytest.approx(done, abs=3), day(done))
    # an exam that came before any of the box's clock signals is dated as the box said
    assert exams["box-late-9"][0] == pytest.approx(now - 60 * C.DAY_S - 3 * HOUR - 60, abs=1)
    # a right clock's backlog keeps its own days: five days back, not when it arrived
    assert exams["box-backlog-22"][0] == pytest.approx(now - 5 * C.DAY_S, abs=1)
    # a clock ahead is held to the exam's arrival, never moved into the past
    assert exams["box-ahead-42"][0] == pytest.approx(now - 29, abs=1)
    # a clock set right from the page: its new exams as they say (its lag is small now)
    assert exams["box-set-72"][0] == pytest.approx(now - 80, abs=1)
    table = {r["device_id"]: r for r in csv.DictReader(io.StringIO(
        pages.devices_csv(list(devices.values()))))}
    assert float(table["box-late"]["clock_behind_s"]) == pytest.approx(late.clock_behind_s)
    assert "clock 60 days behind" in table["box-late"]["needs_a_visit"]
    assert table["box-right"]["clock_behind_s"] == ""
    assert float(table["box-set"]["clock_set_moved_s"]) == 60 * C.DAY_S
    assert table["box-set"]["clock_set_utc"].startswith(yesterday)
    # `sonoedge-central report` reads each box's clock as the devices page does, and says
    # under a box off by an hour or more that its exams' times are its clock's: it listed
    # them as the box stamped them, 60 days early, without a word
    store = Store(url)
    try:
        report = build_report(store)
    finally:
        store.close()
    by = {d["device_id"]: d for d in report["devices"]}
    for dev, row in devices.items():
        assert by[dev]["clock_behind_s"] == (None if row.clock_behind_s is None else
                                             pytest.approx(row.clock_behind_s, abs=0.01)), dev
    text = format_report(report)
    said = {line.split()[0]: line for line in text.splitlines() if line[:1].strip()}
    under = _clock_lines(text)
    assert under == {
        "box-late": "clock 60 days behind the collector's: its exams' ended times below "
                    "are its clock's",
        "box-ahead": "clock 3 h ahead of the collector's: its exams' ended times below are "
                     "its clock's",
        "box-ahead-backlog": "clock 3 h ahead of the collector's: its exams' ended times "
                             "below are its clock's"}, under
    assert "box-backlog" in said and "box-set" in said


def test_a_clock_behind_or_ahead_is_flagged_and_a_backlog_or_a_late_status_is_not(tmp_path):
    _check(str(tmp_path / "c.sqlite3"))


def test_the_report_reads_a_damaged_time_as_no_clock(tmp_path):
    """A row the collector did not write (another writer, a damaged file) with a text
    where the box's time goes: SQLite's difference was the arrival itself, a clock
    20,000 days behind. It is no clock at all."""
    import sqlite3

    url = str(tmp_path / "c.sqlite3")
    _district(url, time.time())
    with sqlite3.connect(url) as conn:
        conn.execute("UPDATE messages SET device_ts = 'not a time' "
                     "WHERE device_id = 'box-late' AND kind = 'health'")
    store = Store(url)
    try:
        report = build_report(store)
    finally:
        store.close()
    late = next(d for d in report["devices"] if d["device_id"] == "box-late")
    assert late["clock_behind_s"] is None
    assert "box-late" not in _clock_lines(format_report(report))


def test_the_clock_is_read_alike_on_postgresql(postgres):
    import psycopg

    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS dash CASCADE")
        conn.execute("DROP TABLE IF EXISTS messages, dead_letters, resent")
    _check(postgres.url)


def test_the_demo_district_whose_clocks_are_all_right_flags_no_clock(tmp_path):
    """The seed's boxes keep right clocks, and some lose their link for days: a day without
    a link says "online" when the link comes back, as the uplink does, and no box of six
    seeded districts is flagged (one was, when the seed dated that status at opening)."""
    from central.dashboard.seed import SeedSettings, seed

    now = time.time()
    for k in range(6):
        url = str(tmp_path / f"seed{k}.sqlite3")
        seed(url, SeedSettings(clinics=20, days=60, seed=k, end_ts=now))
        devices = _devices(url, now)
        assert devices and not [(d.device_id, d.flags) for d in devices.values()
                                if _clock_flags(d)]
