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
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db
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
        # down to the month of the district's first message (exam 5's), none before it
        assert links == [m.text for m in Q.recent_months(now)][:3]
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
        before = Q.day_text(int((first_s - 1.0) // C.DAY_S))  # exam 5's day
        # clinic-9's box never spoke: no day of it counted, and not a complete month
        assert [(r["month"], r["days_counted"], r["complete_month"], r["first_heard_day"])
                for r in rows] == [(last.text, str(days), "1", before)] * 2 + [
                    (last.text, "0", "0", "")]
        assert rows[0]["heard_days"] != "" and rows[2]["heard_days"] == "0"

        # this month so far: counted up to today, and said to be unfinished (today as the
        # server read it: the day the test began, or the next if a UTC midnight fell since)
        rows = _rows(request(base, f"/api/monthly.csv?month={this.text}", cookie)[2])
        today = {int(now // C.DAY_S), int(time.time() // C.DAY_S)}
        counted = {(r["clinic_id"], r["days_counted"], r["complete_month"]) for r in rows}
        assert counted in [{("clinic-1", str(d - this.first_day + 1), "0"),
                            ("clinic-9", "0", "0")} for d in today], (counted, today)

        # a district's officer: only her clinics, and her district in the file's name
        status, headers, _ = request(base, f"/api/monthly.csv?month={last.text}"
                                           "&district=north", cookie)
        assert status == 200 and "monthly-north-" in headers["content-disposition"]


def test_every_csvs_file_name_says_whose_and_which_dates(tmp_path):
    db = str(tmp_path / "central.sqlite3")
    _stored(db, [_exam(1, time.time() - HOUR, "biometry", True)])
    with served(db, tmp_path) as (base, cookie):
        before = Q.period(26)
        status, headers, _ = request(base, "/api/quality.csv?weeks=26", cookie)
        assert status == 200
        # the server's period is one of the two read around its answer: a UTC midnight
        # may fall between them (the period was read before the server started, seconds)
        names = {f'filename="quality-all-{Q.day_text(per.first_day)}-to-'
                 f'{Q.day_text(per.last_day)}.csv"' for per in (before, Q.period(26))}
        assert any(n in headers["content-disposition"] for n in names), (headers, names)


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
        status, _, _ = request(base, f"/api/monthly.csv?month={this.text}", cookie)
        assert status == 200


def test_months_are_calendar_months_of_utc_days():
    assert Q.Month(2024, 2).last_day - Q.Month(2024, 2).first_day == 28  # a leap year
    assert Q.Month(2025, 2).last_day - Q.Month(2025, 2).first_day == 27
    assert Q.Month(2026, 1).before() == Q.Month(2025, 12)
    assert Q.day_text(Q.Month(2026, 12).first_day) == "2026-12-01"
    assert Q.day_text(Q.Month(2026, 12).last_day) == "2026-12-31"
    assert [m.text for m in Q.recent_months(Q.Month(2026, 2).first_day * C.DAY_S)] == [
        "2026-02", "2026-01", "2025-12", "2025-11"][:C.MONTHLY_SHOWN]


# -- a clinic's days count from its first message (an officer's walk: a seed begun on 8 June
# returned every clinic with 0 exams and complete_month 1 for May, and for January 2020) --
JUNE_8 = calendar.timegm((2026, 6, 8, 0, 0, 0)) // 86400
SEED_END = calendar.timegm((2026, 7, 15, 12, 0, 0))  # fixed: the months below are its
SEEDED = SeedSettings(clinics=3, districts=1, days=38, end_ts=SEED_END)  # from 8 June
COLUMNS = ["month", "clinic_id", "clinic_name", "protocol", "protocol_title", "exams",
           "complete", "complete_share", "hc_measured", "dates_small", "dates_large",
           "exam_days", "heard_days", "days_counted", "complete_month"]


def _seeded(tmp_path) -> str:
    """Three clinics seeded from Monday 8 June 2026, and clinic-1, whose box's first message
    is an exam on 9 July (set up then)."""
    db = str(tmp_path / "central.sqlite3")
    seed(db, SEEDED)
    _stored(db, [_exam(1, calendar.timegm((2026, 7, 9, 10, 0, 0)), "biometry", True)])
    return db


def _returned(db: str, month: Q.Month, now: float) -> dict[str, tuple]:
    """Per clinic: (days_counted, complete_month, first_heard_day, exams, heard_days)."""
    store = open_db(db)
    try:
        rows, _ = Q.monthly_return(store, Q.Scope(None), month, now)
    finally:
        store.close()
    out: dict[str, tuple] = {}
    for r in rows:
        first = None if r.first_heard_day is None else Q.day_text(r.first_heard_day)
        got = (r.days_counted, r.complete_month, first, r.heard_days)
        assert out.setdefault(r.clinic_id, got) == got  # the clinic's, on each protocol's row
    return out


def test_a_clinics_days_count_from_its_first_message_and_a_month_it_began_in_is_not_whole(
        tmp_path):
    db = _seeded(tmp_path)
    august = calendar.timegm((2026, 8, 3, 12, 0, 0))  # June and July are over
    seeded = ("clinic-01", "clinic-02", "clinic-03")
    june = _returned(db, Q.Month(2026, 6), august)
    assert {c: june[c][2] for c in seeded} == dict.fromkeys(seeded, "2026-06-08")
    # 8 to 30 June: the 7 days before the boxes were set up are no days of zero exams
    assert {c: june[c][:2] for c in seeded} == dict.fromkeys(seeded, (23, False))
    assert june["clinic-1"] == (0, False, "2026-07-09", 0)  # no box yet in June

    july = _returned(db, Q.Month(2026, 7), august)
    assert {c: july[c][:3] for c in seeded} == dict.fromkeys(seeded, (31, True, "2026-06-08"))
    assert july["clinic-1"] == (23, False, "2026-07-09", 1)  # 9 to 31 July

    # July to date on 20 July: counted to that day, whole for none
    to_date = _returned(db, Q.Month(2026, 7), calendar.timegm((2026, 7, 20, 12, 0, 0)))
    assert {c: to_date[c][:2] for c in seeded} == dict.fromkeys(seeded, (20, False))
    assert to_date["clinic-1"][:2] == (12, False)

    # wholly before every clinic: no day counted, none whole, each saying when it began
    for month in (Q.Month(2026, 5), Q.Month(C.MONTHLY_FIRST_YEAR, 1)):
        before = _returned(db, month, august)
        assert {c: before[c][:3] for c in seeded} == dict.fromkeys(
            seeded, (0, False, "2026-06-08"))
        assert before["clinic-1"][:3] == (0, False, "2026-07-09")


def test_the_served_return_refuses_a_month_before_the_districts_first_message(tmp_path):
    db = _seeded(tmp_path)
    assert int(time.time() // 86400) > JUNE_8 + 60  # June and July are over when served
    with served(db, tmp_path) as (base, cookie):
        for month, where in (("2026-05", ""), (f"{C.MONTHLY_FIRST_YEAR}-01", ""),
                             ("2026-05", "&district=district-1")):
            status, _, body = request(base, f"/api/monthly.csv?month={month}{where}", cookie)
            assert status == 400, (month, where, status)
            text = body.decode()
            assert text.count("\n") == 0 and len(text) < 200, text
            assert f"month: {month} is before the first message from " in text
            assert "(2026-06-08): its first return is 2026-06" in text

        status, _, body = request(base, "/api/monthly.csv?month=2026-06", cookie)
        assert status == 200
        header = body.decode().splitlines()[0].split(",")
        # added last: positions unchanged
        assert header == COLUMNS + ["first_heard_day", "district"]
        got = {(r["clinic_id"], r["days_counted"], r["complete_month"], r["first_heard_day"])
               for r in _rows(body)}
        assert got == {(c, "23", "0", "2026-06-08")
                       for c in ("clinic-01", "clinic-02", "clinic-03")} | {
            ("clinic-1", "0", "0", "2026-07-09")}

        # the district's officer: her three clinics, the same days
        status, _, body = request(base, "/api/monthly.csv?month=2026-07&district=district-1",
                                  cookie)
        assert status == 200
        assert {(r["clinic_id"], r["days_counted"], r["complete_month"], r["first_heard_day"])
                for r in _rows(body)} == {(c, "31", "1", "2026-06-08")
                                          for c in ("clinic-01", "clinic-02", "clinic-03")}


def test_a_district_never_heard_has_no_return_and_the_page_offers_none(tmp_path):
    db = str(tmp_path / "central.sqlite3")
    _stored(db, [_exam(1, time.time() - HOUR, "biometry", True)])
    districts = tmp_path / "districts.csv"
    districts.write_text("clinic-1,north,Mwembe\nclinic-7,south,Chalinze\n")
    assert districts_main([str(districts), "--db", db]) == 0
    this = Q.this_month()
    with served(db, tmp_path) as (base, cookie):
        status, _, body = request(base, f"/api/monthly.csv?month={this.text}&district=south",
                                  cookie)
        assert status == 400
        assert body.decode().count("\n") == 0 and \
            "no box of district south has sent anything yet" in body.decode()
        page = request(base, "/clinics?weeks=8&district=south", cookie)[2].decode()
        assert "/api/monthly.csv" not in page
        assert "Monthly return (CSV): none yet: no box here has sent anything" in page
        assert request(base, f"/api/monthly.csv?month={this.text}&district=north",
                       cookie)[0] == 200


def test_an_admins_district_the_map_does_not_hold_is_refused_naming_it_not_served_as_all(
        tmp_path):
    """As on every other CSV: a garbled district had been served as every district's return
    (the admin filing it as one district's), and a misspelt one was said to have sent
    nothing yet."""
    db = str(tmp_path / "central.sqlite3")
    _stored(db, [_exam(1, time.time() - HOUR, "biometry", True)])
    districts = tmp_path / "districts.csv"
    districts.write_text("clinic-1,north,Mwembe\nclinic-7,south,Chalinze\n")
    assert districts_main([str(districts), "--db", db]) == 0
    this = Q.this_month()
    with served(db, tmp_path) as (base, cookie):
        for district, said in (("nrth", "district: 'nrth' is not in the districts map"),
                               ("%ff%fe", "district: '\\ufffd\\ufffd' is not a district "
                                          "name"),
                               ("n" * 500, "is not a district name")):
            status, _, body = request(
                base, f"/api/monthly.csv?month={this.text}&district={district}", cookie)
            text = body.decode()
            assert status == 400, (district, status, text[:200])
            assert text.count("\n") == 0 and said in text, text
        assert request(base, f"/api/monthly.csv?month={this.text}&district=north",
                       cookie)[0] == 200
