"""The district's check of head size for age, from the age by dates the exam summary
carries (`biometry.ga_dates_weeks`, entered by the midwife on the device's page).

Real parts: the collector's own check of each payload (the wire schema), the store, the
rollup and `sonoedge-central serve` on a free loopback port. Before the exam summary had
the age by dates, the biometry page could only plot the device's Hadlock age from the same
HC, against which no head is small or large for its age.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from contextlib import contextmanager
from pathlib import Path

from central import collector
from central.dashboard import auth
from central.dashboard.reference import ig_hc_mean_sd
from central.dashboard.store import open_db, refresh
from central.db import DeadLetter, Row, Store
from tests.dashboard_harness import dashboard, login, request
from tests.test_central import message

ADMIN = ("officer", "admin-password-1")
REGISTRY = {"dev-a": "clinic-1"}
UNDATED = object()


def _exam(seq: int, hc: float, ga_hc: float, dates: object = UNDATED, days_ago: int = 0
          ) -> dict:
    bio = {"measured": 5, "declined": {}, "hc_mm": hc, "ga_weeks": ga_hc}
    if dates is not UNDATED:
        bio["ga_dates_weeks"] = dates
    ts = round(time.time() - 3600 - days_ago * 86400 + seq, 3)
    return message("exam", device="dev-a", seq=seq, ts=ts,
                   biometry=bio)


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


def _checked(payload: dict) -> Row | DeadLetter:
    return collector.check("sonoedge/dev-a/exam", json.dumps(payload).encode(), 4096, "test",
                           time.time(), REGISTRY)


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
        assert cells(clinic)[1:] == ["4", "3 (75%)", "1 (33%)", "1 (33%)", "1 (33%)", "0 (0%)"]
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


def test_the_two_year_biometry_page_stays_light_however_many_heads_are_out(tmp_path):
    """The seeded 50-clinic district dates 30-95% of its exams with a remembered period a
    week out, so about a fifth of its dated heads fall outside the 3rd-97th centile:
    thousands over two years. A dot for each made `/biometry?weeks=104` 582 kB gzipped (73 s
    on a 64 kbit/s clinic link); the plot marks the table's 200 furthest out, and every
    head stays in the density cells and the CSV."""
    import gzip

    from central.dashboard.seed import SeedSettings, seed

    path = str(tmp_path / "central.sqlite3")
    seed(path, SeedSettings(health_every_s=4 * 3600, end_ts=time.time()))
    with served(path, tmp_path) as (base, cookie):
        status, headers, body = request(base, "/biometry?weeks=104", cookie,
                                        headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("content-encoding") == "gzip"
        page = gzip.decompress(body).decode()
        lead = re.search(r'<p class="lead">(\d+) measured exams, (\d+) of them with the age '
                         r"by dates \(drawn\); (\d+) of those drawn outside", page)
        assert lead, page[:3000]
        measured, dated, out = (int(g) for g in lead.groups())
        assert 0.3 * measured < dated < 0.95 * measured and out > 1000
        dots = re.findall(r'<circle[^>]*data-outlier="([^"]+)"', page)
        rows = re.findall(r'<tr data-outlier="([^"]+)"', page)
        assert dots == rows and len(rows) == 200  # the same 200, furthest out
        cells = sum(int(n) for n in re.findall(r'<rect[^>]*data-n="(\d+)"', page))
        assert cells >= dated - 100  # every dated head in the cells (but off-chart ones)
        assert len(body) < 60_000, f"{len(body):,} bytes gzipped"
        status, _, csv_body = request(base, "/api/biometry.csv?weeks=104", cookie)
        assert csv_body.decode().count("\n") - 1 == measured
