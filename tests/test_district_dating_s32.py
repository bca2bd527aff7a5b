"""The district's rollup dates an exam by when it ended and counts a box's messages under one
clinic, whatever the order its box, its clock and the collector's registry made them in.

- An exam is dated by its summary's ``ended_ts`` (the exam schema requires it), under the
  rules ``day_of`` applies to a message's ``ts`` (never after it arrived, never older than a
  backlog can be), the envelope's ``ts`` otherwise: the envelope is stamped when the exam is
  queued, and a run a power cut killed on Friday is rebuilt and queued at Monday's start.
- A rollup made by a schema before that is rebuilt from the stored messages.
- Messages the collector stored before its registry listed their box (clinic "") count
  under the clinic the box is known by now, on every page and in the report; a box never
  listed counts under "(unregistered)", the same on every page.

Each a specification on a real collector database (``collector.check`` and ``Store`` as the
collector stores, ``open_db`` and ``refresh`` as the dashboard reads), SQLite and PostgreSQL.
"""

from __future__ import annotations

import calendar
import json
import uuid

import pytest

from central import collector
from central.dashboard import config as C
from central.dashboard import queries as Q
from central.dashboard import store
from central.dashboard.store import open_db, refresh, week_of
from central.db import Store
from central.report import build_report, format_report
from tests import conftest_mqtt as fx

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures

DAY = C.DAY_S
FRI = calendar.timegm((2026, 12, 4, 16, 0, 0))  # a Friday, 16:00 UTC
MON = calendar.timegm((2026, 12, 7, 8, 0, 0))  # the Monday after, 08:00 UTC


def day(ts: float) -> int:
    return int(ts // DAY)


class Box:
    """A device's messages as the uplink sends them (an envelope stamped when queued, a seq
    that counts on), through the collector's own check and store."""

    def __init__(self, central: Store, device_id: str = "box-1", boot_id: str = "boot-1"):
        self.central, self.device_id, self.boot_id, self.seq = central, device_id, boot_id, 0

    def envelope(self, kind: str, ts: float) -> dict:
        self.seq += 1
        return {"schema": 1, "kind": kind, "msg_id": str(uuid.uuid4()), "seq": self.seq,
                "boot_id": self.boot_id, "device_id": self.device_id, "clinic_id": "clinic-1",
                "ts": ts, "mono_s": 100.0 + self.seq}

    def exam(self, exam_id: str, ended: float, queued: float, received: float,
             registry: dict[str, str] | None = None, protocol: str = "biometry") -> None:
        body = {"exam_id": exam_id, "source_id": "0123456789ab", "started_ts": ended - 600,
                "ended_ts": ended, "duration_s": 600.0, "frames": 100, "frames_scored": 100,
                "frames_failed": 0,
                "planes": {"Brain (Tv.)": [10, 0.9, 0.8], "Background": [90, 0.9, 0.0]},
                "latency_ms": {"p50": 30.0, "p90": 60.0}, "models": {"plane_student": "1.5.0"},
                "protocol": {"name": protocol, "required": 2, "captured": 1,
                             "missing": ["HC"]},
                "deficiencies": {"gain": 4}, "ended_by": "gap"}
        self.send({**self.envelope("exam", queued), **body}, received, registry)

    def health(self, ts: float, received: float, registry: dict[str, str] | None = None):
        queue = dict.fromkeys(("pending", "pending_exam", "pending_health", "rejected",
                               "used_bytes"), 0)
        dropped = dict.fromkeys(("health", "exam", "health_new", "exam_new"), 0)
        body = {"loop": {"fps": 30.0}, "queue": queue, "dropped": dropped,
                "disk_free_mb": 9000.0, "temp_c": 50.0, "models": {}, "uptime_s": 100.0,
                "interval_s": 60.0}
        self.send({**self.envelope("health", ts), **body}, received, registry)

    def send(self, payload: dict, received: float, registry: dict[str, str] | None) -> None:
        registry = {self.device_id: "clinic-1"} if registry is None else registry
        item = collector.check(f"sonoedge/{self.device_id}/{payload['kind']}",
                               json.dumps(payload).encode(), 4096, "c1", received, registry)
        assert isinstance(item, collector.Row), item
        self.central.store_batch([item], [])


def dashboard(db_url: str):
    db = open_db(db_url)
    refresh(db)
    return db


def exam_days(db) -> dict[str, str]:
    return {exam_id: Q.day_text(d) for exam_id, d in
            db.query("SELECT exam_id, day FROM dash.exams ORDER BY exam_id")}


# -- an exam is dated by when it ended ------------------------------------------------------
def test_an_exam_recovered_after_a_power_cut_counts_on_the_day_it_ended(url):
    central = Store(url)
    box = Box(central)
    thu = FRI - DAY
    box.exam("run1-3", ended=thu, queued=thu, received=thu + 5)
    # Friday's run was killed by a power cut; Monday's start rebuilds it and queues it
    box.exam("run1-17", ended=FRI, queued=MON, received=MON + 60)
    db = dashboard(url)
    assert exam_days(db) == {"run1-17": "2026-12-04", "run1-3": "2026-12-03"}
    # every page: the clinics page's cells and silent days, the weekly tables of the
    # completeness and quality pages, all on Friday's week (the period ends on its Sunday)
    per = Q.period(8, now=FRI + 2 * DAY)
    page = Q.clinics_page(db, Q.Scope(None), per)
    assert page.cells[("clinic-1", day(FRI))].exams == 1
    assert not page.silent_weekday("clinic-1", day(FRI))
    later = Q.clinics_page(db, Q.Scope(None), Q.period(8, now=MON + 3600))
    assert later.cells[("clinic-1", day(MON))].exams == 0
    assert later.totals("clinic-1")[0] == 2
    (clinic,) = Q.completeness_page(db, Q.Scope(None), per).clinics
    assert (clinic.exams, clinic.with_protocol, clinic.missed) == (2, 2, {"biometry: HC": 2})
    quality = Q.quality_page(db, Q.Scope(None), per)
    assert quality.exams == 2
    assert {(c.plane, c.week, c.exams) for c in quality.cells} == {
        ("Brain (Tv.)", week_of(day(FRI)), 2)}
    assert [(d.name, d.exams) for d in quality.deficiencies] == [("gain", 2)]
    # nothing of it in Monday's week
    assert db.query("SELECT COUNT(*) FROM dash.week_protocol WHERE week = ?",
                    (week_of(day(MON)),))[0][0] == 0
    # the message itself (its seq, the holes) is still dated when it was queued
    assert sorted(Q.day_text(d) for d, in db.query("SELECT day FROM dash.msgs")) == [
        "2026-12-03", "2026-12-07"]
    assert Q.holes(db, Q.Scope(None), Q.period(8, now=MON + 3600)) == []


def test_an_exams_end_is_read_under_the_rules_of_the_envelopes_time(url):
    central = Store(url)
    box = Box(central)
    box.exam("recovered", ended=FRI, queued=MON, received=MON + 60)
    # a box that booted in 1970 and set its clock before it queued the exam: its end is
    # older than any backlog, so the envelope's time dates it
    box.exam("no-rtc", ended=600.0, queued=MON + 100, received=MON + 160)
    # a clock running ahead: never dated after the exam arrived
    box.exam("ahead", ended=MON + 5 * DAY, queued=MON + 5 * DAY, received=MON + 200)
    db = dashboard(url)
    assert exam_days(db) == {"ahead": "2026-12-07", "no-rtc": "2026-12-07",
                             "recovered": "2026-12-04"}
    ts = dict(db.query("SELECT exam_id, ts FROM dash.exams"))
    assert ts == {"ahead": MON + 200, "no-rtc": MON + 100, "recovered": FRI}
    assert store.exam_day_of(FRI, MON, MON + 60) == (FRI, day(FRI))
    assert store.exam_day_of(None, MON, MON + 60) == (MON, day(MON))
    assert store.exam_day_of("Friday", MON, MON + 60) == (MON, day(MON))
    assert store.exam_day_of(float("nan"), MON, MON + 60) == (MON, day(MON))


def test_a_rollup_made_before_exams_were_dated_by_their_end_is_rebuilt(url):
    central = Store(url)
    box = Box(central)
    box.exam("recovered", ended=FRI, queued=MON, received=MON + 60)
    db = dashboard(url)
    # as the schema before had made it: the exam on the day it was queued
    with db.tx():
        db.execute("UPDATE dash.exams SET day = ?, ts = ?", (day(MON), MON))
        db.execute("UPDATE dash.meta SET value = '11' WHERE key = 'schema'")
    db.close()
    db = dashboard(url)
    assert exam_days(db) == {"recovered": "2026-12-04"}
    assert db.query("SELECT value FROM dash.meta WHERE key = 'schema'")[0][0] \
        == store.SCHEMA_VERSION


# -- a box heard before the registry listed it ----------------------------------------------
def test_exams_received_before_the_box_was_registered_count_under_its_clinic_everywhere(url):
    now = calendar.timegm((2026, 12, 4, 12, 0, 0))
    central = Store(url)
    box = Box(central)
    nobody = {"someone-else": "clinic-9"}
    for i in range(5):  # listed in the registry from the fourth exam on
        ts = now - (6 - i) * DAY
        box.exam(f"e{i}", ended=ts, queued=ts, received=ts + 5,
                 registry=nobody if i < 3 else None)
        box.health(ts + 60, ts + 65, registry=nobody if i < 3 else None)
        if i == 1:
            refresh(open_db(url))  # the first ones rolled up while it was not listed
    db = dashboard(url)
    per = Q.period(8, now=now)
    cp = Q.clinics_page(db, Q.Scope(None), per)
    assert cp.clinics == ["clinic-1"]
    assert cp.totals("clinic-1")[0] == 5
    assert [(c.clinic_id, c.exams, c.with_protocol) for c in
            Q.completeness_page(db, Q.Scope(None), per).clinics] == [("clinic-1", 5, 5)]
    assert Q.quality_page(db, Q.Scope(None), per).exams == 5
    assert [(d.device_id, d.clinic_id, d.received) for d in
            Q.devices_page(db, Q.Scope(None), per, now=now)] == [("box-1", "clinic-1", 10)]
    assert Q.holes(db, Q.Scope(None), per) == []
    assert [(c["clinic_id"], c["exams"]) for c in build_report(central)["clinics"]] == [
        ("clinic-1", 5)]
    # no row of any rollup is left without its clinic, or under a name that is none
    for table in ("msgs", "exams", "day_device", "week_protocol", "week_missing",
                  "week_deficiency", "week_plane", "device_latest", "fleet_errors", "seq_runs"):
        assert db.query(f"SELECT COUNT(*) FROM dash.{table} WHERE clinic_id IN ('', ?)",
                        (C.UNREGISTERED,))[0][0] == 0, table
    # a district's officer sees them once the district map lists the clinic
    with db.tx():
        db.execute("INSERT INTO dash.clinics (clinic_id, district, name) VALUES "
                   "('clinic-1', 'north', 'Bora')")
    assert Q.clinics_page(db, Q.Scope("north"), per).totals("clinic-1")[0] == 5


def test_a_box_never_registered_is_one_clinic_named_unregistered_on_every_page(url):
    now = calendar.timegm((2026, 12, 4, 12, 0, 0))
    central = Store(url)
    box, other = Box(central, "box-1"), Box(central, "box-2")
    for i in range(3):
        ts = now - (3 - i) * DAY
        box.exam(f"e{i}", ended=ts, queued=ts, received=ts + 5, registry={})
        other.exam(f"f{i}", ended=ts, queued=ts, received=ts + 5)
    db = dashboard(url)
    per = Q.period(8, now=now)
    cp = Q.clinics_page(db, Q.Scope(None), per)
    assert cp.clinics == ["(unregistered)", "clinic-1"]
    assert [cp.totals(c)[0] for c in cp.clinics] == [3, 3]
    assert [(c.clinic_id, c.exams, c.with_protocol) for c in
            Q.completeness_page(db, Q.Scope(None), per).clinics] == [
        ("(unregistered)", 3, 3), ("clinic-1", 3, 3)]
    assert [(d.device_id, d.clinic_id) for d in
            Q.devices_page(db, Q.Scope(None), per, now=now)] == [
        ("box-1", "(unregistered)"), ("box-2", "clinic-1")]
    text = format_report(build_report(central))
    assert "(unregistered)" in text
    # a box heard from again still unlisted stays there; listed later, it moves whole
    box.exam("e3", ended=now, queued=now, received=now + 5, registry={})
    refresh(db)
    assert Q.clinics_page(db, Q.Scope(None), per).totals("(unregistered)")[0] == 4
    box.exam("e4", ended=now + 60, queued=now + 60, received=now + 65,
             registry={"box-1": "clinic-2"})
    refresh(db)
    cp = Q.clinics_page(db, Q.Scope(None), per)
    assert cp.clinics == ["clinic-1", "clinic-2"]
    assert [cp.totals(c)[0] for c in cp.clinics] == [3, 5]
    assert {c.clinic_id: c.missed for c in
            Q.completeness_page(db, Q.Scope(None), per).clinics} == {
        "clinic-1": {"biometry: HC": 3}, "clinic-2": {"biometry: HC": 5}}
    assert [(c["clinic_id"], c["exams"]) for c in build_report(central)["clinics"]] == [
        ("clinic-1", 3), ("clinic-2", 5)]
    assert Q.holes(db, Q.Scope(None), per) == []


@pytest.mark.parametrize("batch", ["one batch", "one at a time"])
def test_a_rebuild_counts_what_the_rollup_counted_as_it_came(url, batch):
    """The rollup as it came (a refresh after every message) and rebuilt from the stored
    messages (a schema change) give the same rows."""
    now = calendar.timegm((2026, 12, 4, 12, 0, 0))
    central = Store(url)
    box = Box(central)
    db = open_db(url)
    for i in range(4):
        ts = now - (4 - i) * DAY
        box.exam(f"e{i}", ended=ts - DAY * (i == 2), queued=ts, received=ts + 5,
                 registry={} if i < 2 else None)
        if batch == "one at a time":
            refresh(db)
    refresh(db)
    tables = ("exams", "day_device", "week_protocol", "week_missing", "week_deficiency",
              "week_plane", "seq_runs", "msgs", "device_latest")

    def rows():
        return {t: sorted(map(repr, db.query(f"SELECT * FROM dash.{t}"))) for t in tables}

    before = rows()
    with db.tx():
        db.execute("UPDATE dash.meta SET value = 'old' WHERE key = 'schema'")
    db.close()
    db = dashboard(url)
    assert rows() == before
    assert {c for c, in db.query("SELECT DISTINCT clinic_id FROM dash.week_protocol")} == {
        "clinic-1"}
    assert exam_days(db)["e2"] == "2026-12-01"  # ended the day before it was queued


@pytest.mark.parametrize("batch", ["one batch", "one at a time"])
def test_a_box_listed_then_moved_keeps_its_earlier_exams_at_its_first_clinic(url, batch):
    """Two exams before the registry listed the box, one at clinic A where it was first
    listed, one after it moved to B: the first three count at A, on the dashboard however
    its rows were batched (as they came, or all at once in a rebuild), and in the report."""
    now = calendar.timegm((2026, 12, 4, 12, 0, 0))
    central = Store(url)
    box = Box(central)
    db = open_db(url)
    plan = [({}, "e0"), ({}, "e1"), ({"box-1": "clinic-A"}, "e2"), ({"box-1": "clinic-B"}, "e3")]
    for i, (registry, exam_id) in enumerate(plan):
        ts = now - (4 - i) * DAY
        box.exam(exam_id, ended=ts, queued=ts, received=ts + 5, registry=registry)
        if batch == "one at a time":
            refresh(db)
    refresh(db)
    assert dict(db.query("SELECT exam_id, clinic_id FROM dash.exams")) == {
        "e0": "clinic-A", "e1": "clinic-A", "e2": "clinic-A", "e3": "clinic-B"}
    assert [(c["clinic_id"], c["exams"]) for c in build_report(central)["clinics"]] == [
        ("clinic-A", 3), ("clinic-B", 1)]
