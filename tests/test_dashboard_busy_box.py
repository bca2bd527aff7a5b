"""A box that ends far more exams in a day than a clinic scans is flagged on the devices page.

A box that splits one scan into many exams (a flickering image, a loose cable) or sends
exams that are not its clinic's inflated its clinic's figures on every page, and nothing
said so: the clinic simply looked busy. The devices page now flags a box with
`EXAMS_PER_DAY_WARN` or more exams on one day of the period, by the exams' own dates (so
a backlog sent after weeks offline is no burst). Real parts: the collector's own check of
each payload, the store on SQLite and PostgreSQL, the rollup and the page's query.
"""

from __future__ import annotations

import time

from central.dashboard import config as C
from central.dashboard import queries as Q
from central.dashboard.store import open_db
from tests import conftest_mqtt as fx
from tests.test_age_by_dates_district import _stored
from tests.test_central import message

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures


def _exam(device: str, seq: int, day: int) -> dict:
    """An exam of `device` ended at noon UTC of `day` (plus `seq` seconds)."""
    return message("exam", device=device, seq=seq, ts=day * C.DAY_S + 43200 + seq)


def test_a_box_with_more_exams_on_a_day_than_a_clinic_scans_needs_a_visit(url):
    today = int(time.time() // C.DAY_S)
    busy = [_exam("dev-a", seq, today - 2) for seq in range(1, C.EXAMS_PER_DAY_WARN + 21)]
    # dev-b's exams of a week offline, all sent at once today: each dated by its own end
    backlog = [_exam("dev-b", seq, today - 1 - seq % 7)
               for seq in range(1, C.EXAMS_PER_DAY_WARN + 1)]
    _stored(url, busy + backlog)
    db = open_db(url)
    try:
        rows = {d.device_id: d for d in Q.devices_page(db, Q.Scope(None), Q.period(8))}
    finally:
        db.close()
    day = Q.day_text(today - 2)
    (flag,) = [f for f in rows["dev-a"].flags if "exams on" in f]
    assert flag == (f"{C.EXAMS_PER_DAY_WARN + 20} exams on {day}, more than a clinic scans: "
                    "check the box (one scan split into many, or not its clinic's exams)")
    assert not [f for f in rows["dev-b"].flags if "exams on" in f], rows["dev-b"].flags
