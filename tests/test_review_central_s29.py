"""Review of the district side (session 29): defects a hostile or demanding user found.

1. ``sonoedge-central report`` printed a device's text as it came: a missing slot's name or a
   model-update error holding a newline forged a row, an ESC drove the officer's terminal,
   and a lone surrogate (valid JSON) made the report end in a traceback.
2. ``?weeks=²`` (a digit to ``str.isdigit``, not to ``int``) or 4,400 ASCII digits (past
   ``int``'s limit) was a 500 with a traceback on every page and CSV.
3. A page went gzipped to a client whose Accept-Encoding refuses gzip (``gzip;q=0``).
4. A box whose clock runs a few hours ahead dated an exam sent late in the evening
   "tomorrow": its week's rollups counted it, the period's days (up to today) did not, so
   the pages disagreed (a clinic's "exams" fewer than its "exams with a protocol", a
   deficiency listed by more exams than the quality page counted, which failed the page).
5. A CSV cell starting with a tab or carriage return and then a formula was not quoted
   away (OWASP's list), and a device's model-update error can start so.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import uuid

import pytest

from central.collector import check
from central.dashboard import auth
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh
from central.db import Row, Store
from tests.dashboard_harness import central, login, request
from tests.test_central import encode, message

ADMIN = ("officer", "admin-password-1")
REGISTRY = {"dev-a": "clinic-1"}


def _store(db: str, payloads: list[tuple[dict, float]]) -> None:
    """Each payload through the collector's own check, received at the time given."""
    store = Store(db)
    try:
        rows = []
        for payload, received in payloads:
            item = check(f"sonoedge/{payload['device_id']}/{payload['kind']}", encode(payload),
                         4096, "c1", received, REGISTRY)
            assert isinstance(item, Row), item
            rows.append(item)
        assert store.store(rows, []) == (len(rows), 0)
    finally:
        store.close()


# -- 1: the report is printable whatever a device sent -----------------------------------------
def test_the_report_shows_a_devices_text_escaped_on_its_own_line_and_never_fails(tmp_path):
    db = str(tmp_path / "c.sqlite3")
    exam = message("exam", seq=1)
    exam["protocol"] = {"name": "second-trimester", "required": 4, "captured": 1,
                        "missing": ["a\x1b[2Jb", "c\nFORGED dev-z", "\ud800"]}
    health = message("health", seq=2, fleet={
        "group": "g", "bundle": "b\x1b[31m", "state": "confirmed", "slot": "a",
        "error": "boom\x1b]0;title\x07\nFORGED dev-y 999"})
    _store(db, [(exam, 1000.0), (health, 1001.0)])
    out = central("report", "--db", db)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not any(ch in out.stdout for ch in "\x1b\x07\x9b"), out.stdout
    # a device's newline adds no line: no row starts with its forged text
    assert not [line for line in out.stdout.splitlines() if line.startswith("FORGED")]
    assert "a\\x1b[2Jb" in out.stdout and "c\\x0aFORGED dev-z" in out.stdout
    assert "\\ud800" in out.stdout and "boom\\x1b]0;title\\x07\\x0aFORGED dev-y" in out.stdout


# -- the dashboard, in this process, on a small seeded district ---------------------------------
@pytest.fixture(scope="module")
def dash_url(tmp_path_factory):
    from central.dashboard.server import Dashboard, ServeSettings
    from tests.dashboard_harness import dashboard_in_thread

    db_path = str(tmp_path_factory.mktemp("s29") / "c.sqlite3")
    seed(db_path, SeedSettings(clinics=2, districts=1, days=10))
    db = open_db(db_path)
    auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
    db.close()
    with dashboard_in_thread(Dashboard(ServeSettings(db_url=db_path))) as port:
        yield f"http://127.0.0.1:{port}"


# -- 2: a weeks that is no plain number is one line naming it, not a 500 -----------------------
# (it was the default period, silently, until an officer's walk of 6 December: a script that
# asked for 12 weeks got 8; tests/test_dashboard_officer_s40.py)
@pytest.mark.parametrize("weeks", ["%C2%B2", "%E2%91%A0", "1" * 4400])
def test_a_weeks_that_is_no_plain_short_number_is_one_line_not_a_500(dash_url, weeks):
    cookie = login(dash_url, ADMIN)
    status, _, body = request(dash_url, f"/clinics?weeks={weeks}", cookie)
    assert status == 400 and b"weeks: " in body and b"Traceback" not in body, body[:300]
    status, headers, body = request(dash_url, f"/api/clinics.csv?weeks={weeks}", cookie)
    assert status == 400, body[:300]
    error = json.loads(body)["error"]
    assert error.startswith("weeks: ") and error.endswith("is not offered; choose 8, 26, 52, "
                                                          "104") and len(error) < 80, error


def test_a_page_or_csv_made_before_midnight_is_made_again_after_it(tmp_path, monkeypatch):
    """Pages and CSVs are cached per rollup generation for up to CACHE_MAX_S, and their
    period ends today: one made at 23:59:55 UTC was served with yesterday's days after
    midnight (a CSV under a name with today's), until the minute ran out."""
    import asyncio
    import time

    from central.dashboard import config as C
    from central.dashboard.server import Dashboard, ServeSettings

    db_path = str(tmp_path / "c.sqlite3")
    seed(db_path, SeedSettings(clinics=1, districts=1, days=2, end_ts=1_790_000_000.0))
    dash = Dashboard(ServeSettings(db_url=db_path))
    midnight = 20_000 * C.DAY_S
    clock = [midnight - 5.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    made: list[Q.Period] = []

    def last_day(db) -> int:
        made.append(Q.period(8))
        return made[-1].last_day

    async def served_at(*instants: float) -> list[int]:
        out = []
        for t in instants:
            clock[0] = t
            out.append(await dash.cached(("page", "clinics"), last_day))
        return out

    try:
        days = asyncio.run(served_at(midnight - 5.0, midnight - 1.0, midnight + 5.0,
                                     midnight + 30.0))
    finally:
        dash.close()
    assert days == [19_999, 19_999, 20_000, 20_000]
    assert len(made) == 2  # cached within each day, made again at the first after midnight


# -- 3: gzip only to a client that takes it ----------------------------------------------------
@pytest.mark.parametrize("accept, gzipped", [
    ("gzip;q=0", False), ("identity, nogzip", False), ("GZIP; q=0.0, identity", False),
    ("gzip", True), ("br, gzip;q=0.5", True), ("*, gzip;q=0", False)])
def test_a_page_is_gzipped_only_for_a_client_whose_accept_encoding_takes_gzip(
        dash_url, accept, gzipped):
    cookie = login(dash_url, ADMIN)
    status, headers, body = request(dash_url, "/clinics", cookie,
                                    headers={"Accept-Encoding": accept})
    assert status == 200
    assert (headers.get("content-encoding") == "gzip") is gzipped, headers
    assert body.startswith(b"\x1f\x8b") is gzipped


# -- 4: no message is dated after it arrived ---------------------------------------------------
def test_a_box_clock_running_ahead_dates_no_exam_after_its_arrival_so_the_pages_agree(tmp_path):
    db_path = str(tmp_path / "c.sqlite3")
    wed_2300 = calendar.timegm((2025, 12, 3, 23, 0, 0))  # a Wednesday, 23:00 UTC
    protocol = {"name": "biometry", "required": 1, "captured": 1, "missing": []}
    sent = []
    for seq, ahead_s in enumerate((-3600.0, 3600.0, 2 * 3600.0), 1):
        exam = message("exam", seq=seq, protocol=protocol, deficiencies={"gain": 2})
        exam["ts"] = wed_2300 + ahead_s  # the box's clock: two of them read Thursday
        sent.append((exam, wed_2300 + seq))
    _store(db_path, sent)
    db = open_db(db_path)
    try:
        refresh(db)
        per = Q.period(8, now=wed_2300 + 1800)  # the officer looks before midnight
        everyone = Q.Scope(None)
        quality = Q.quality_page(db, everyone, per)
        assert quality.exams == 3
        assert [(d.name, d.exams) for d in quality.deficiencies] == [("gain", 3)]
        assert 'data-exams="3"' in P.deficiencies_svg(quality)  # 100%, drawn
        (clinic,) = Q.completeness_page(db, everyone, per).clinics
        assert (clinic.exams, clinic.with_protocol, clinic.complete) == (3, 3, 3)
        days = Q.clinics_page(db, everyone, per).rows()
        assert sum(c.exams for c in days) == 3
        assert [c.exams for c in days if c.day == per.last_day] == [3]
        # dated by the box where it is behind its arrival (a backlog), by arrival where ahead
        rows = db.query("SELECT ts FROM dash.exams ORDER BY ts")
        assert [r[0] for r in rows] == [wed_2300 - 3600.0, wed_2300 + 2, wed_2300 + 3]
    finally:
        db.close()


# -- 5: a spreadsheet runs no formula from a CSV -----------------------------------------------
def test_a_csv_cell_starting_with_a_tab_or_carriage_return_is_no_formula():
    text = P.to_csv(["error"], [["\t=HYPERLINK(\"http://x\",\"y\")"], ["\r=1+1"], ["=1"],
                                ["fine"]])
    cells = [row[0] for row in csv.reader(io.StringIO(text, newline=""))][1:]
    assert cells == ["'\t=HYPERLINK(\"http://x\",\"y\")", "'\n=1+1", "'=1", "fine"]


def test_a_carriage_return_in_a_devices_text_forges_no_csv_row():
    forged = "boom\rdev-z,clinic-9,2025-01-01 00:00,2025-01-01 00:00,999,b,fake"
    text = P.fleet_errors_csv([Q.FleetError("dev-a", "clinic-1", forged, "b1", 0.0, 60.0, 2)])
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 2 and rows[1][0] == "dev-a", rows
    assert rows[1][P.FLEET_ERROR_COLUMNS.index("error")] == forged.replace("\r", "\n")


def test_a_devices_update_error_that_starts_with_a_tab_is_quoted_in_both_csvs(tmp_path):
    db_path = str(tmp_path / "c.sqlite3")
    health = message("health", seq=1, fleet={"group": "g", "bundle": "b1", "state": "confirmed",
                                              "slot": "a", "error": "\t=cmd|' /C calc'!A0"})
    health["msg_id"] = str(uuid.uuid4())
    received = calendar.timegm((2025, 12, 3, 12, 0, 0))
    health["ts"] = received
    _store(db_path, [(health, received)])
    db = open_db(db_path)
    try:
        refresh(db)
        per = Q.period(8, now=received + 60)
        errors_csv = P.fleet_errors_csv(Q.fleet_errors(db, Q.Scope(None), per, shown=None)[0])
        devices_csv = P.devices_csv(Q.devices_page(db, Q.Scope(None), per, now=received + 60))
    finally:
        db.close()
    for text in (errors_csv, devices_csv):
        assert "'\t=cmd" in text and ",\t=cmd" not in text and '"\t=cmd' not in text, text
    assert json.dumps(errors_csv)  # plain text
