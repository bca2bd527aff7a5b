"""The district's monthly return: each clinic's exams over a calendar month.

A district reports upward each month; the dashboard's periods were whole weeks, which cut
across months, and its CSVs were named "clinics-8w.csv" whatever weeks they held (an
officer's first week). Now the clinics page links a CSV per calendar month, every clinic
in it (the silent ones with zeros), and every CSV's name carries its district and dates.
Real parts: the collector's own check of each payload, the store, the rollup and
`sonoedge-central serve` on a free loopback port.
"""

from __future__ import annotations

import calendar
import csv
import io
import re
import time

from central.dashboard import config as C
from central.dashboard import queries as Q
from central.dashboard.cli import districts_main
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import _stored, served
from tests.test_central import message

HOUR = 3600.0


def _exam(seq: int, ended_ts: float, protocol: str, complete: bool) -> dict:
    """An exam done at `ended_ts`, queued now (a box offline for weeks sends it late)."""
    missing = [] if complete else ["Head"]
    return message("exam", seq=seq, started_ts=ended_ts - 600.0, ended_ts=ended_ts,
                   protocol={"name": protocol, "required": 1, "captured": int(complete),
                             "missing": missing})


def _rows(body: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_a_months_return_counts_its_exams_by_the_day_each_ended_and_lists_silent_clinics(
        tmp_path):
    now = time.time()
    this = Q.this_month(now)
    last = this.before()
    first_s, last_s = last.first_day * C.DAY_S, (last.last_day + 1) * C.DAY_S
    exams = [
        _exam(1, first_s + 1.0, "biometry", True),  # the month's first second
        _exam(2, first_s + 12 * HOUR, "biometry", False),
        _exam(3, last_s - 1.0, "biometry", True),  # its last second
        _exam(4, last_s - 2 * HOUR, "second-trimester", False),
        _exam(5, first_s - 1.0, "biometry", True),  # the month before: not in it
    ]
    if this.first_day * C.DAY_S + 60.0 < now:  # this month's first minute has passed
        exams.append(_exam(6, this.first_day * C.DAY_S + 60.0, "biometry", True))
    db = str(tmp_path / "central.sqlite3")
    _stored(db, exams)
    districts = tmp_path / "districts.csv"
    districts.write_text("clinic-1,north,Mwembe\nclinic-9,north,Kibaha Ward\n")
    assert districts_main([str(districts), "--db", db]) == 0
    with served(db, tmp_path) as (base, cookie):
        page = request(base, "/clinics?weeks=8", cookie)[2].decode()
        links = re.findall(r'href="/api/monthly\.csv\?month=(\d{4}-\d\d)"', page)
        assert links[:2] == [this.text, last.text] and len(links) == C.MONTHLY_SHOWN
        assert f"{calendar.month_name[this.month]} {this.year} (to date)" in page

        status, headers, body = request(base, f"/api/monthly.csv?month={last.text}", cookie)
        assert status == 200
        assert f'filename="monthly-all-{last.text}.csv"' in headers["content-disposition"]
        rows = _rows(body)
        got = [(r["clinic_id"], r["clinic_name"], r["protocol"], r["exams"], r["complete"],
                r["complete_share"], r["exam_days"]) for r in rows]
        assert got == [("clinic-1", "Mwembe", "biometry", "3", "2", "0.6667", "2"),
                       ("clinic-1", "Mwembe", "second-trimester", "1", "0", "0.0", "1"),
                       ("clinic-9", "Kibaha Ward", "", "0", "0", "", "0")]
        days = last.last_day - last.first_day + 1
        assert {(r["month"], r["days_counted"], r["complete_month"]) for r in rows} == {
            (last.text, str(days), "1")}
        assert rows[0]["heard_days"] != "" and rows[2]["heard_days"] == "0"

        # this month so far: counted up to today, and said to be unfinished
        rows = _rows(request(base, f"/api/monthly.csv?month={this.text}", cookie)[2])
        today = int(now // C.DAY_S)
        assert {(r["days_counted"], r["complete_month"]) for r in rows} == {
            (str(today - this.first_day + 1), "0")}

        # a district's officer: only her clinics, and her district in the file's name
        status, headers, _ = request(base, f"/api/monthly.csv?month={last.text}"
                                           "&district=north", cookie)
        assert status == 200 and "monthly-north-" in headers["content-disposition"]


def test_every_csvs_file_name_says_whose_and_which_dates(tmp_path):
    db = str(tmp_path / "central.sqlite3")
    _stored(db, [_exam(1, time.time() - HOUR, "biometry", True)])
    per = Q.period(26)
    with served(db, tmp_path) as (base, cookie):
        status, headers, _ = request(base, "/api/quality.csv?weeks=26", cookie)
        assert status == 200
        assert (f'filename="quality-all-{Q.day_text(per.first_day)}-to-'
                f'{Q.day_text(per.last_day)}.csv"') in headers["content-disposition"]


def test_a_month_that_is_not_one_is_refused_in_one_line(tmp_path):
    db = str(tmp_path / "central.sqlite3")
    _stored(db, [_exam(1, time.time() - HOUR, "biometry", True)])
    this = Q.this_month()
    after = Q.Month(this.year + 1, this.month)
    with served(db, tmp_path) as (base, cookie):
        for month in ("", "2026-13", "2026-00", "26-11", "2026-1", "2026-11x",
                      "1999-12", f"{C.MONTHLY_FIRST_YEAR - 1}-12", after.text, "9" * 5000,
                      "2026-11%0a", "%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-11"):
            status, _, body = request(base, f"/api/monthly.csv?month={month}", cookie)
            assert status == 400, (month, status)
            text = body.decode()
            assert text.count("\n") == 0 and "month" in text and len(text) < 200, text
        status, _, _ = request(base, f"/api/monthly.csv?month={C.MONTHLY_FIRST_YEAR}-01",
                               cookie)
        assert status == 200


def test_months_are_calendar_months_of_utc_days():
    assert Q.Month(2024, 2).last_day - Q.Month(2024, 2).first_day == 28  # a leap year
    assert Q.Month(2025, 2).last_day - Q.Month(2025, 2).first_day == 27
    assert Q.Month(2026, 1).before() == Q.Month(2025, 12)
    assert Q.day_text(Q.Month(2026, 12).first_day) == "2026-12-01"
    assert Q.day_text(Q.Month(2026, 12).last_day) == "2026-12-31"
    assert [m.text for m in Q.recent_months(Q.Month(2026, 2).first_day * C.DAY_S)] == [
        "2026-02", "2026-01", "2025-12", "2025-11"][:C.MONTHLY_SHOWN]
