"""The district's check of head size for age, from the age by dates the exam summary
carries (`biometry.ga_dates_weeks`, entered by the midwife on the device's page), or a
`dates` message sent after it (dates entered, changed or cleared once the summary had left).

Real parts: the collector's own check of each payload (the wire schema), the store, the
rollup (on SQLite and a real PostgreSQL), the collector's report and `sonoedge-central
serve` on a free loopback port. Before the exam summary had the age by dates, the biometry
page could only plot the device's Hadlock age from the same HC, against which no head is
small or large for its age; before the `dates` message, dates entered after the exam never
reached the district.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from central import collector
from central.dashboard import auth, queries, store
from central.dashboard.reference import ig_hc_mean_sd, ig_z
from central.dashboard.store import open_db, refresh
from central.db import DeadLetter, Row, Store
from central.report import build_report
from edge.uplink import messages
from tests import conftest_mqtt as fx
from tests.dashboard_harness import dashboard, login, request
from tests.test_central import message
from tests.test_collector_fuzz import reference_valid

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures

ADMIN = ("officer", "admin-password-1")
REGISTRY = {"dev-a": "clinic-1", "dev-b": "clinic-1"}
UNDATED = object()


def _exam(seq: int, hc: float, ga_hc: float, dates: object = UNDATED, days_ago: int = 0,
          device: str = "dev-a", exam_id: str | None = None) -> dict:
    bio = {"measured": 5, "declined": {}, "hc_mm": hc, "ga_weeks": ga_hc}
    if dates is not UNDATED:
        bio["ga_dates_weeks"] = dates
    ts = round(time.time() - 3600 - days_ago * 86400 + seq, 3)
    extra = {} if exam_id is None else {"exam_id": exam_id}
    return message("exam", device=device, seq=seq, ts=ts,
                   biometry=bio, **extra)


def _dates(seq: int, exam_id: str, weeks: float | None, entered_ts: float,
           device: str = "dev-a") -> dict:
    """A `dates` message as the schema has it: the exam's age by dates entered (or cleared:
    None) after its summary left, with the device's next seq."""
    env = messages.envelope("dates", device, "clinic-1", "boot-1")
    return {**env, "msg_id": str(uuid.uuid4()), "seq": seq, "exam_id": exam_id,
            "ga_dates_weeks": weeks, "entered_ts": round(entered_ts, 3)}


@contextmanager
def served(path: str, tmp: Path):
    """The collector's database rolled up, an admin added, and the dashboard serving it:
    (base URL, the admin's session cookie)."""
    db = open_db(path)
    try:
        refresh(db)
        auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
    finally:
        db.close()
    with dashboard(path, tmp) as base:
        yield base, login(base, ADMIN)


def _checked(payload: dict | bytes, kind: str | None = None, max_bytes: int = 4096
             ) -> Row | DeadLetter:
    """The collector's own check, on the topic of the payload's kind (or `kind`)."""
    kind = kind or payload["kind"]
    device = "dev-a" if isinstance(payload, bytes) else payload.get("device_id", "dev-a")
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return collector.check(f"sonoedge/{device}/{kind}", body, max_bytes, "test", time.time(),
                           REGISTRY)


def _stored(db_url: str, payloads: list[dict], refreshed: bool = True) -> None:
    """Check and store `payloads` (each must be valid), then roll them up."""
    rows = [_checked(p) for p in payloads]
    assert all(isinstance(r, Row) for r in rows), rows
    st = Store(db_url)
    try:
        assert st.store(rows, []) == (len(rows), 0)
    finally:
        st.close()
    if refreshed:
        _refresh(db_url)


def _refresh(db_url: str) -> None:
    db = open_db(db_url)
    try:
        refresh(db)
    finally:
        db.close()


# dash.exams' columns an age by dates decides, and the rest of an exam's row
DATED = ("ga_weeks", "ga_source", "ig_z", "dates_flag", "dates_corrected")
ROW = ("exam_id", "day", "hc_mm", "ga_low", "ga_high", *DATED)


def _exam_rows(db_url: str, device: str = "dev-a") -> dict[str, dict]:
    """dash.exams' rows of a device's exams, by exam_id."""
    db = open_db(db_url)
    try:
        return {r[0]: dict(zip(ROW, r, strict=True)) for r in db.query(
            f"SELECT {', '.join(ROW)} FROM dash.exams WHERE device_id = ?", (device,))}
    finally:
        db.close()


def _holes(db_url: str) -> list:
    """The dashboard's sequence holes of the last 4 weeks, every clinic."""
    db = open_db(db_url)
    try:
        return queries.holes(db, queries.Scope(None), queries.period(4))
    finally:
        db.close()


def _report(db_url: str) -> dict[str, dict]:
    """The collector's report, by device."""
    st = Store(db_url, create=False)
    try:
        return {d["device_id"]: d for d in build_report(st)["devices"]}
    finally:
        st.close()


def test_a_head_small_for_its_dates_is_flagged_and_undated_exams_are_not_drawn(tmp_path):
    mean_25, sd_25 = ig_hc_mean_sd(25.0)
    mean_22, _ = ig_hc_mean_sd(22.0)
    # 3 SD small for its dates, two days before the others: the furthest out comes first
    small = _exam(1, round(mean_25 - 3 * sd_25, 1), 22.6, 25.0, days_ago=2)
    normal = _exam(2, round(mean_22, 1), 22.0, 22.3)
    undated = _exam(3, round(mean_25 - 3 * sd_25, 1), 22.6)  # the same head, no dates
    large = _exam(4, round(mean_22 + 2.5 * ig_hc_mean_sd(22.0)[1], 1), 23.9, 22.0)
    rows = [_checked(p) for p in (small, normal, undated, large)]
    assert all(isinstance(r, Row) for r in rows), rows
    # the collector refuses an age by dates the page could not have given, naming the field
    for bad in (46, -1, "25", None, [25], 1e308):
        refused = _checked(_exam(9, 200.0, 21.0, bad))
        assert isinstance(refused, DeadLetter) and "ga_dates_weeks" in refused.reason, (
            bad, refused)
    path = str(tmp_path / "central.sqlite3")
    store = Store(path)
    try:
        assert store.store(rows, []) == (4, 0)
    finally:
        store.close()
    with served(path, tmp_path) as (base, cookie):
        status, _, body = request(base, "/biometry", cookie)
        page = body.decode()
        assert status == 200
        cells = re.findall(r'<rect[^>]*data-n="(\d+)"', page)
        assert sum(int(n) for n in cells) == 3, cells  # the dated exams only
        # small and large for their dates, furthest out first; the undated twin is not
        outliers = re.findall(r'<tr data-outlier="([^"]+)"', page)
        assert outliers == [small["msg_id"], large["msg_id"]]
        text = re.sub(r"<[^>]+>", "", page)
        assert "Drawn: the 3 exams with the age by dates" in text, text[-1500:]
        assert "or its dates are wrong" in text
        def cells(row: str) -> list[str]:
            return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]

        clinic = re.search(r'<tr data-clinic="clinic-1">(.*?)</tr>', page).group(1)
        # the small head was 17 days behind its dates, beyond ACOG's 14 at 25 weeks: her page
        # said so; the large one, above the 97th centile, was 12 days ahead, within them
        assert cells(clinic)[1:] == ["4", "3 (75%)", "0 (0%)", "1 (33%)", "1 (33%)",
                                     "1 (33%)", "0 (0%)"]
        told = {m: cells(row)[-1] for m, row in
                re.findall(r'<tr data-outlier="([^"]+)">(.*?)</tr>', page)}
        assert told == {small["msg_id"]: "smaller than the dates", large["msg_id"]: "-"}
        assert "4 measured exams, 3 of them with the age by dates (drawn); 2 of those drawn " \
               "outside the 3rd-97th centile" in text
        assert "Not drawn: the other 1" in text and "Read this first" not in text
        status, _, body = request(base, "/api/biometry.csv", cookie)
        table = {r["msg_id"]: r for r in csv.DictReader(io.StringIO(body.decode()))}
        assert {k: table[m["msg_id"]]["ga_source"] for k, m in
                (("small", small), ("normal", normal), ("undated", undated))} == {
            "small": "dates", "normal": "dates", "undated": "hadlock-hc"}
        assert float(table[small["msg_id"]]["ga_weeks"]) == 25.0
        assert [table[m["msg_id"]]["midwife_told"] for m in (small, normal, undated, large)] \
            == ["small", "", "", ""]
        assert [table[m["msg_id"]]["dates_entered"] for m in (small, normal, undated, large)] \
            == ["during_exam", "during_exam", "", "during_exam"]


# -- dates entered after the exam: the `dates` message -----------------------------------------
def _small_for_25_weeks() -> float:
    """A head 3 SD small for 25 weeks by dates: the midwife's page flags it."""
    mean_25, sd_25 = ig_hc_mean_sd(25.0)
    return round(mean_25 - 3 * sd_25, 1)


def _rebuilt(db_url: str) -> None:
    """The rollups of an older dashboard version dropped and made again from the messages,
    in one batch (as after the schema bump this change makes)."""
    db = open_db(db_url)
    try:
        db.execute("UPDATE dash.meta SET value = ? WHERE key = 'schema'",
                   (str(int(store.SCHEMA_VERSION) - 1),))
    finally:
        db.close()
    _refresh(db_url)


def test_dates_entered_after_the_exam_reach_the_district_and_leave_no_hole(tmp_path):
    """The exam's summary left without dates; ten minutes later the midwife entered them
    and the box sent a `dates` message with its next seq, then a health message. The
    district's row is dated by them (her page's flag with it), the biometry page says one
    drawn exam got its dates after the exam, and the correction's seq is no lost message,
    nor an exam, on the dashboard or the collector's report."""
    hc = _small_for_25_weeks()
    exam = _exam(1, hc, 22.6, exam_id="exam-late")
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [exam])
    assert _exam_rows(path)["exam-late"]["ga_source"] == "hadlock-hc"
    _stored(path, [_dates(2, "exam-late", 25.0, exam["ts"] + 600), message("health", seq=3)],
            refreshed=False)
    with served(path, tmp_path) as (base, cookie):
        status, _, body = request(base, "/api/biometry.csv", cookie)
        assert status == 200
        (row,) = csv.DictReader(io.StringIO(body.decode()))
        assert (row["msg_id"], row["ga_source"], float(row["ga_weeks"]),
                row["midwife_told"], row["dates_entered"]) == (
            exam["msg_id"], "dates", 25.0, "small", "after_exam")
        status, _, body = request(base, "/biometry", cookie)
        page = body.decode()
        text = re.sub(r"<[^>]+>", "", page)
        assert ("Drawn: the 1 exam with the age by dates, which the midwife entered during "
                "the exam or, for 1 of them, after it (the box sent them as a correction).")\
            in text, text[-1500:]
        assert re.findall(r'<tr data-outlier="([^"]+)"', page) == [exam["msg_id"]]
        clinic = re.search(r'<tr data-clinic="[^"]+">(.*?)</tr>', page).group(1)
        assert "1 (100%)" == re.sub(r"<[^>]+>", "", re.findall(r"<td[^>]*>(.*?)</td>",
                                                              clinic)[3])  # after the exam
        status, _, body = request(base, "/api/clinics.csv", cookie)
        days = list(csv.DictReader(io.StringIO(body.decode())))
        assert sum(int(d["exams"]) for d in days) == 1
        assert sum(int(d["sequence_holes"]) + int(d["messages_missing"]) for d in days) == 0
        status, _, body = request(base, "/api/devices.csv", cookie)
        (device,) = csv.DictReader(io.StringIO(body.decode()))
        assert (device["device_id"], device["messages_missing"]) == ("dev-a", "0")
    rep = _report(path)["dev-a"]
    assert (rep["exams"], rep["health"], rep["max_seq"], rep["missing"], rep["lost"],
            rep["gaps"]) == (1, 1, 3, 0, 0, [])
    # the devices page weighs a box's lost messages against those received that take a
    # seq: the correction is one of them
    db = open_db(path)
    try:
        (row,) = queries.devices_page(db, queries.Scope(None), queries.period(4))
    finally:
        db.close()
    assert (row.received, row.missing) == (3, 0)


def test_a_correction_that_arrives_before_its_exam_gives_the_same_row(url):
    """Two collectors sharing the load, or a reorder, can store a `dates` message before its
    exam: the correction waits in dash.exam_dates and the exam is rolled up dated by it.
    dev-a's exam came first, dev-b's (the same head) last; a rebuild of the rollups, one
    batch holding all four messages, gives the same rows again."""
    mean_24, sd_24 = ig_hc_mean_sd(24.0)
    hc = round(mean_24 + 3 * sd_24, 1)  # large for 24 weeks by dates
    first = _exam(1, hc, 26.5, device="dev-a", exam_id="exam-1")
    _stored(url, [first])
    _stored(url, [_dates(2, "exam-1", 24.0, first["ts"] + 600)])
    last = _exam(1, hc, 26.5, device="dev-b", exam_id="exam-1")
    _stored(url, [_dates(2, "exam-1", 24.0, last["ts"] + 600, device="dev-b")])
    assert _exam_rows(url, "dev-b") == {}  # the correction waits for its exam
    _stored(url, [last])
    want = {"exam_id": "exam-1", "hc_mm": hc, "ga_weeks": 24.0, "ga_source": "dates",
            "ig_z": pytest.approx(ig_z(hc, 24.0)), "dates_flag": "large", "dates_corrected": 1}
    rows = [_exam_rows(url, dev)["exam-1"] for dev in ("dev-a", "dev-b")]
    assert rows[0] == rows[1] and {k: rows[0][k] for k in want} == want
    _rebuilt(url)
    assert [_exam_rows(url, dev)["exam-1"] for dev in ("dev-a", "dev-b")] == rows
    assert _holes(url) == []


def test_a_later_clearing_wins_and_an_older_entry_arriving_last_does_not(url):
    """The latest entry of an exam's dates wins, by the box's seq (its wall clock may go
    back: no battery-backed clock), whatever order the messages arrive in. Cleared dates
    (null) put the exam back on Hadlock's age from its HC, the summary's own dates
    included."""
    hc = _small_for_25_weeks()
    undated = _exam(1, hc, 22.6, exam_id="exam-u")
    dated = _exam(2, hc, 22.6, 25.0, exam_id="exam-d")  # dates in its summary
    t = undated["ts"]
    _stored(url, [undated, dated, _dates(3, "exam-u", 25.0, t + 100)])
    rows = _exam_rows(url)
    by_dates = {"ga_weeks": 25.0, "ga_source": "dates", "ig_z": pytest.approx(ig_z(hc, 25.0)),
                "dates_flag": "small"}
    assert {k: rows["exam-u"][k] for k in by_dates} == by_dates
    assert {k: rows["exam-d"][k] for k in by_dates} == by_dates
    assert (rows["exam-u"]["dates_corrected"], rows["exam-d"]["dates_corrected"]) == (1, 0)

    def dated_columns(exam_id: str) -> dict:
        return {k: _exam_rows(url)[exam_id][k] for k in DATED}

    # she cleared both exams' dates: back to the device's Hadlock age from the same HC
    _stored(url, [_dates(5, "exam-u", None, t + 200), _dates(6, "exam-d", None, t + 200)])
    hadlock = {"ga_weeks": 22.6, "ga_source": "hadlock-hc",
               "ig_z": pytest.approx(ig_z(hc, 22.6)), "dates_flag": None, "dates_corrected": 0}
    assert dated_columns("exam-u") == hadlock and dated_columns("exam-d") == hadlock
    # an older entry (seq 4, before the clearing) arriving last does not win, though the
    # box's clock, stepped back since, stamped the clearing earlier
    _stored(url, [_dates(4, "exam-u", 30.0, t + 900)])
    assert dated_columns("exam-u") == hadlock
    # a newer entry wins though the box's clock went back (a power cut, no RTC)
    _stored(url, [_dates(7, "exam-u", 24.0, t - 5000)])
    latest = {**hadlock, "ga_weeks": 24.0, "ga_source": "dates",
              "ig_z": pytest.approx(ig_z(hc, 24.0)), "dates_flag": None, "dates_corrected": 1}
    assert dated_columns("exam-u") == latest
    _rebuilt(url)  # every entry in one batch: the same winners
    assert dated_columns("exam-u") == latest and dated_columns("exam-d") == hadlock
    assert _holes(url) == [] and _report(url)["dev-a"]["missing"] == 0


def test_hostile_dates_messages_are_dead_letters_and_nothing_else_is_lost(url):
    """A `dates` payload the schema refuses is a dead letter whose one-line reason names what
    is wrong (the field, where the payload parses); the reference validator (jsonschema)
    refuses it too. Stored in one batch with the box's valid exam, correction and health
    message, it costs nothing of theirs: the exam is dated, no seq is missing."""
    exam = _exam(1, _small_for_25_weeks(), 22.6, exam_id="exam-1")
    good = _dates(2, "exam-1", 25.0, exam["ts"] + 600)
    no_exam = {k: v for k, v in good.items() if k != "exam_id"}
    deep = b"[" * 1000 + b"]" * 1000
    hostile = [  # (payload, what the reason must say)
        (json.dumps({**good, "ga_dates_weeks": 46}).encode(), "$.ga_dates_weeks: above 45"),
        (json.dumps({**good, "ga_dates_weeks": "25"}).encode(),
         "$.ga_dates_weeks: expected number/null, got str"),
        (json.dumps(no_exam).encode(), "missing exam_id"),
        # the size is checked on the raw bytes, before anything is parsed
        (json.dumps({**good, "exam_id": "x" * 10_240}).encode(), "oversize: "),
        (json.dumps({**good, "ga_dates_weeks": "@@"}).encode().replace(b'"@@"', deep),
         "bad JSON: nested 1001 deep"),
        (json.dumps(good).encode().replace(b'"exam-1"', b'"exam-\xff"'),
         "bad JSON: 'utf-8' codec can't decode"),
    ]
    dead = []
    for body, reason in hostile:
        assert not reference_valid("sonoedge/dev-a/dates", body), body[:200]
        letter = _checked(body, "dates")
        assert isinstance(letter, DeadLetter), (body[:200], letter)
        assert reason in letter.reason and "\n" not in letter.reason, letter.reason
        dead.append(letter)
    # the 10 kB exam_id under a collector that takes bigger messages: the schema names it
    big = _checked(hostile[3][0], "dates", max_bytes=65_536)
    assert isinstance(big, DeadLetter) and big.reason.startswith("schema: $.exam_id: "), big
    rows = [_checked(p) for p in (exam, good, message("health", seq=3))]
    st = Store(url)
    try:
        assert st.store(rows, dead) == (3, len(hostile))
    finally:
        st.close()
    _refresh(url)
    row = _exam_rows(url)["exam-1"]
    assert (row["ga_source"], row["ga_weeks"], row["dates_flag"]) == ("dates", 25.0, "small")
    assert _holes(url) == []
    rep = _report(url)
    assert (rep["dev-a"]["exams"], rep["dev-a"]["missing"]) == (1, 0)
    db = open_db(url)
    try:
        assert db.query("SELECT exam_id, msg_id FROM dash.exam_dates") == [
            ("exam-1", good["msg_id"])]
        assert db.query("SELECT device_id, COUNT(*) FROM dash.dead GROUP BY device_id") == [
            ("dev-a", len(hostile))]
    finally:
        db.close()
