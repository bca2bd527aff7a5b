"""One clinic's page, `/clinic/<clinic_id>` (an officer's walk, 7 December).

An officer who saw on the devices or completeness page that a clinic was behind could not
open it: its boxes, exams, completeness, quality, heads and silences were spread over five
district pages, each among every other clinic, and nothing said whether this period was
better or worse than the one before. The clinic's page gathers them, each figure the one
the district pages give for that clinic, beside the previous period of the same length;
every clinic the district pages show links to it; a viewer asking for a clinic outside her
district is told it is not found, as for one that does not exist.

Real parts: the seeded district (`sonoedge-central seed`: 6 clinics in 2 districts, 130
days) on SQLite and on PostgreSQL, the rollup, and `sonoedge-central serve` on a free
loopback port with an admin's and a viewer's sessions.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import re
import time
import uuid
from collections import defaultdict

import pytest

from central.dashboard import auth
from central.dashboard import config as C
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, clinic_ids, seed
from central.dashboard.store import open_db, refresh
from central.db import Store
from tests import conftest_mqtt as fx
from tests.dashboard_harness import dashboard, login, request
from tests.test_age_by_dates_district import served
from tests.test_dashboard_officer_s40 import _period_words

postgres = fx.postgres  # fixture
ADMIN = ("officer", "a-long-pass-phrase-1")
VIEWER = ("nurse-d1", "a-long-pass-phrase-2")  # district-1: clinic-01 to clinic-03
SETTINGS = SeedSettings(clinics=6, districts=2, days=130)  # 8 weeks and the 8 before them
CLINICS = clinic_ids(SETTINGS.clinics)
PAGES = ("clinics", "completeness", "quality", "biometry", "devices")


def _served(url: str, tmp):
    seed(url, SETTINGS)
    db = open_db(url)
    try:
        refresh(db)
        auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
        auth.add_user(db, VIEWER[0], "viewer", "district-1", VIEWER[1])
    finally:
        db.close()
    with dashboard(url, tmp) as base:
        yield {"base": base, "url": url, "admin": login(base, ADMIN),
               "viewer": login(base, VIEWER)}


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clinic-page")
    yield from _served(str(tmp / "c.sqlite3"), tmp)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request, tmp_path_factory):
    """The seeded district served from each database."""
    if request.param == "sqlite":
        yield request.getfixturevalue("lite")
        return
    import psycopg
    from psycopg import sql

    pg = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield from _served(pg.url.rsplit("/", 1)[0] + "/" + name,
                           tmp_path_factory.mktemp("clinic-page-pg"))
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def _get(site, path: str, who: str = "admin") -> str:
    status, _, body = request(site["base"], path, site[who])
    assert status == 200, (path, status, body[:300])
    return body.decode()


def _csv(site, name: str, query: str = "weeks=8", who: str = "admin") -> list[dict]:
    return list(csv.DictReader(io.StringIO(_get(site, f"/api/{name}.csv?{query}", who))))


def _attrs(tag: str) -> dict[str, str]:
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


def _device_rows(page: str) -> list[tuple[str, str]]:
    """(device, its flags) of each row of the devices table, in the table's order."""
    return re.findall(r'<tr data-device="([^"]+)" class="[^"]*">.*?<td class="flags">(.*?)</td>',
                      page, re.S)


def _bars(page: str) -> list[dict[str, str]]:
    """The weekly chart's bars: their data-* attributes, in the chart's order."""
    chart = re.search(r'<svg [^>]*data-chart="clinic-weeks".*?</svg>', page, re.S)
    assert chart, "no weekly chart"
    return [_attrs(tag) for tag in re.findall(r"<rect [^>]*data-week=[^>]*>", chart.group(0))]


def _figures(page: str) -> dict[str, tuple[str, str]]:
    """The comparison table: figure -> (this period, the previous one), as data-*."""
    return {a["data-figure"]: (a["data-now"], a["data-before"])
            for a in map(_attrs, re.findall(r"<tr data-figure=[^>]*>", page))}


def _silent_row(page: str, clinic: str) -> str:
    table = re.search(r'<table class="silent">.*?</table>', page, re.S)
    row = re.search(rf'<tr data-clinic="{clinic}">.*?</tr>', table.group(0), re.S)
    return row.group(0)


def _share(n: int, of: int) -> float | None:
    return n / of if of else None


def _close(said: str, want: float | int | None) -> bool:
    if want is None:
        return said == ""
    return abs(float(said) - want) < 5e-5


def _day(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d")) // C.DAY_S


def _week(day: str) -> int:
    return Q.week_of(_day(day))


# -- what the page gathers ---------------------------------------------------------------------
def test_a_clinics_page_shows_what_the_district_pages_say_of_it_beside_the_period_before(site):
    per = Q.period(8)
    before = Q.Period(per.first_day - 7 * 8, per.last_day - 7 * 8)
    devices_page = _get(site, "/devices?weeks=8")
    clinics_page = _get(site, "/clinics?weeks=8")
    clinic_of = {r["device_id"]: r["clinic_id"] for r in _csv(site, "devices")}
    days = _csv(site, "clinics", "weeks=26")  # both periods' days
    protocols = _csv(site, "completeness_protocols")
    quality = {r["clinic_id"]: r for r in _csv(site, "quality_clinics")}
    heads = _csv(site, "biometry")
    db = open_db(site["url"])
    try:  # the previous period, by the district pages' own queries
        was = {"completeness": Q.completeness_page(db, Q.Scope(None), before),
               "quality": Q.quality_page(db, Q.Scope(None), before),
               "biometry": Q.biometry_page(db, Q.Scope(None), before)}
    finally:
        db.close()
    flagged = 0
    for clinic in CLINICS:
        page = _get(site, f"/clinic/{clinic}?weeks=8")
        assert "<script" not in page
        # its boxes, in the devices page's order (the most urgent first), with its flags
        boxes = _device_rows(page)
        assert boxes and boxes == [r for r in _device_rows(devices_page)
                                   if clinic_of[r[0]] == clinic]
        flagged += sum(1 for _, flags in boxes if flags != "-")
        # its exams each week, and the same week of the period before
        exams: dict[int, int] = defaultdict(int)
        for r in days:
            day = _day(r["day"])
            # the period before is the same weekdays (Period.previous): this week so far
            # is set against the same days of its week, not the whole of it (this failed
            # on every day but a Sunday)
            if r["clinic_id"] == clinic and (before.first_day <= day <= before.last_day
                                             or per.first_day <= day <= per.last_day):
                exams[Q.week_of(day)] += int(r["exams"])
        bars = _bars(page)
        assert [b["data-week"] for b in bars] == \
            [Q.week_text(w) for w in range(per.first_week, per.last_week + 1)]
        for b in bars:
            w = _week(b["data-week"])
            assert (int(b["data-exams"]), int(b["data-previous"])) == (exams[w], exams[w - 8])
            assert b["data-previous-week"] == Q.week_text(w - 8)
        # its silent spells, as the clinics page says them
        assert _silent_row(page, clinic) == _silent_row(clinics_page, clinic)

        # this period against the one before, each figure as the district pages count it
        fig = _figures(page)
        assert fig["exams"] == (str(sum(exams[w] for w in range(per.first_week,
                                                                   per.last_week + 1))),
                                str(sum(exams[w - 8] for w in range(per.first_week,
                                                                       per.last_week + 1))))
        then = {c.clinic_id: c for c in was["completeness"].clinics}.get(clinic)
        for r in (r for r in protocols if r["clinic_id"] == clinic):
            now, prev = fig[f"complete:{r['protocol']}"]
            assert _close(now, int(r["complete"]) / int(r["exams"])), (clinic, r)
            assert _close(prev, then.protocol_share(r["protocol"]) if then else None)
        q = quality.get(clinic)
        q_then = {c.clinic_id: c for c in was["quality"].clinics}.get(clinic)
        assert _close(fig["not_captured"][0], _share(
            int(q[f"best_frames_below_{C.MIN_QUALITY}"]), int(q["best_frames"]))
            if q else None)
        assert _close(fig["not_captured"][1], q_then.below_share if q_then else None)
        measured = [r for r in heads if r["clinic_id"] == clinic]
        dated = [r for r in measured if r["ga_source"] == "dates"]
        assert fig["measured"][0] == str(len(measured))
        assert _close(fig["dated"][0], _share(len(dated), len(measured)))
        for key, column, value in (("below_3rd", "outside_3rd_97th", "below 3rd"),
                                   ("above_97th", "outside_3rd_97th", "above 97th"),
                                   ("told_small", "midwife_told", "small"),
                                   ("told_large", "midwife_told", "large")):
            n = sum(1 for r in dated if r[column] == value)
            assert _close(fig[key][0], _share(n, len(dated))), (clinic, key)
        d_then = {c.clinic_id: c for c in was["biometry"].clinics}.get(clinic)
        assert fig["measured"][1] == str(d_then.measured if d_then else 0)
        assert _close(fig["below_3rd"][1],
                      _share(d_then.below_3rd, d_then.dated) if d_then else None)
    assert flagged, "the seed flags no box: choose another"


def test_a_clinics_page_says_its_period_as_every_page_does_and_the_period_before(lite):
    for weeks in (8, 26):
        per = Q.period(weeks)
        page = _get(lite, f"/clinic/clinic-02?weeks={weeks}")
        line = re.search(r'<p class="period">(.*?)</p>', page)
        assert re.sub(r"<[^>]+>", "", line.group(1)).startswith(_period_words(per, weeks))
        assert len(_bars(page)) == weeks
        table = _attrs(re.search(r'<table class="compare"[^>]*>', page).group(0))
        assert (table["data-previous-first"], table["data-previous-last"]) == \
            (Q.day_text(per.first_day - 7 * weeks), Q.day_text(per.last_day - 7 * weeks))
        # the period links keep the clinic
        for w in C.PERIODS_WEEKS:
            assert f'href="/clinic/clinic-02?weeks={w}' in page


def test_the_clinics_csv_is_the_weekly_rows_of_its_chart(lite):
    status, headers, body = request(lite["base"], "/api/clinic.csv?clinic=clinic-02&weeks=8",
                                    lite["admin"])
    assert status == 200, body[:300]
    per = Q.period(8)
    assert headers["content-disposition"] == (
        f'attachment; filename="clinic-clinic-02-{Q.day_text(per.first_day)}-to-'
        f'{Q.day_text(per.last_day)}.csv"')
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    header = body.decode().splitlines()[0].split(",")
    assert header[0] == "clinic_id" and header[-1] == "district"
    assert {r["clinic_id"] for r in rows} == {"clinic-02"}
    assert {r["district"] for r in rows} == {"district-1"}
    bars = _bars(_get(lite, "/clinic/clinic-02?weeks=8"))
    assert [(r["week_starting"], r["exams"], r["previous_period_exams"]) for r in rows] == \
        [(b["data-week"], b["data-exams"], b["data-previous"]) for b in bars]
    assert "/api/clinic.csv?clinic=clinic-02&amp;weeks=8" in _get(lite, "/clinic/clinic-02")


# -- links from the district pages ---------------------------------------------------------
def test_every_clinic_the_district_pages_show_links_to_its_page(lite):
    for name in PAGES:
        page = _get(lite, f"/{name}?weeks=26")
        cells = [c for c in re.findall(r"<td[^>]*>(.*?)</td>", page, re.S)
                 if re.search(r"clinic-\d\d", c)]
        assert cells, name
        for cell in cells:
            for clinic in set(re.findall(r"clinic-\d\d", cell)):
                assert f'<a href="/clinic/{clinic}?weeks=26">' in cell, (name, cell)
        # a clinic's name in a plot links to its page too
        for link, clinic in re.findall(r'(<a href="[^"]*">)?<text [^>]*><title>[^<]*'
                                       r"\((clinic-\d\d)\)[^<]*</title>", page):
            assert link == f'<a href="/clinic/{clinic}?weeks=26">', (name, clinic)
    devices = _get(lite, "/devices?weeks=26")
    href = re.search(r'<a href="(/clinic/clinic-05\?weeks=26)">', devices).group(1)
    page = _get(lite, href)
    assert "Clinic 5" in re.search(r"<h2[^>]*>(.*?)</h2>", page).group(1)
    assert "Last 26 weeks" in page


def test_a_clinic_whose_only_box_was_never_heard_from_has_a_page_saying_so(tmp_path):
    """The devices page lists a box the registry holds and nothing was received from under
    its clinic: that clinic's link opens a page too, not a 404."""
    url = str(tmp_path / "c.sqlite3")
    seed(url, SeedSettings(clinics=2, districts=1, days=14))
    store = Store(url)
    try:
        store.set_registry({"box-01a": "clinic-01", "box-02a": "clinic-02",
                            "box-zz": "clinic-zz"}, time.time() - 3 * C.DAY_S)
    finally:
        store.close()
    with served(url, tmp_path) as (base, admin):
        devices = request(base, "/devices", admin)[2].decode()
        assert '<a href="/clinic/clinic-zz?weeks=8">clinic-zz</a>' in devices
        status, _, body = request(base, "/clinic/clinic-zz?weeks=8", admin)
        assert status == 200, body[:300]
        page = body.decode()
        assert "No box of the clinic has sent anything yet." in page
        assert [d for d, _ in _device_rows(page)] == ["box-zz"]
        assert "never heard from" in _device_rows(page)[0][1]
        assert {b["data-exams"] for b in _bars(page)} == {"0"}
        assert "Nothing this month: no box of the clinic was heard." in page


# -- scope, and what a URL may hold ----------------------------------------------------------
def _warn(body: bytes) -> list[str]:
    return re.findall(r'<p class="warn">(.*?)</p>', body.decode())


def test_a_clinic_outside_a_viewers_district_is_not_found_as_one_that_does_not_exist(lite):
    base, viewer, admin = lite["base"], lite["viewer"], lite["admin"]
    assert request(base, "/clinic/clinic-02", viewer)[0] == 200
    said = {}
    for clinic in ("clinic-05", "clinic-99"):  # district-2's, and none
        for query in ("", "?district=district-2"):  # a viewer's district is her own
            status, _, body = request(base, f"/clinic/{clinic}{query}", viewer)
            assert status == 404, (clinic, query, body[:300])
            said[clinic] = _warn(body)
            assert len(said[clinic]) == 1 and said[clinic][0].startswith("clinic: ")
        status, _, body = request(base, f"/api/clinic.csv?clinic={clinic}", viewer)
        assert status == 404
        said[clinic + ".csv"] = json.loads(body)["error"]
    # the same words for both: nothing tells her which clinics other districts have
    assert said["clinic-05"] == [s.replace("clinic-99", "clinic-05") for s in said["clinic-99"]]
    assert said["clinic-05.csv"] == said["clinic-99.csv"].replace("clinic-99", "clinic-05")
    rows = list(csv.DictReader(io.StringIO(request(
        base, "/api/clinic.csv?clinic=clinic-02", viewer)[2].decode())))
    assert rows and {r["clinic_id"] for r in rows} == {"clinic-02"}
    # an admin sees every clinic, but not under a district that does not hold it
    assert request(base, "/clinic/clinic-05", admin)[0] == 200
    assert request(base, "/clinic/clinic-05?district=district-2", admin)[0] == 200
    assert request(base, "/clinic/clinic-05?district=district-1", admin)[0] == 404
    assert request(base, "/api/clinic.csv?clinic=clinic-05&district=district-1",
                   admin)[0] == 404
    # and nobody without a session
    assert request(base, "/clinic/clinic-02")[0] == 303
    assert request(base, "/api/clinic.csv?clinic=clinic-02")[0] == 401


@pytest.mark.parametrize("clinic", [
    "x" * 65, "x" * 4000, "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "clinic-01%00",
    "clinic-01%0D%0ASet-Cookie:%20a=b", "%E2%80%AEclinic-01", "clinic%2F01", "..%2F..%2Fetc",
    "clinic-01'%20OR%20'1'='1", "clinic-0%EF%BC%91", "%25", "clinic-01%20"])
def test_a_clinic_id_no_clinic_could_have_is_one_line_not_found(lite, clinic):
    for who in ("admin", "viewer"):
        status, headers, body = request(lite["base"], f"/clinic/{clinic}", lite[who])
        assert status == 404, (clinic, status, body[:300])
        said = _warn(body)
        assert len(said) == 1 and said[0].startswith("clinic: ") and len(said[0]) < 160, said
        text = body.decode()
        assert "<script>" not in text and "Traceback" not in text and "x" * 100 not in text
        assert headers["set-cookie"] == ""  # no header made of the id
        status, _, body = request(lite["base"], f"/api/clinic.csv?clinic={clinic}", lite[who])
        assert status == 404, (clinic, status, body[:300])
        error = json.loads(body)["error"]
        assert error.startswith("clinic: ") and len(error) < 160, error
    assert request(lite["base"], "/api/clinic.csv", lite["admin"])[0] == 404
    assert request(lite["base"], "/clinic/clinic-01", lite["admin"])[0] == 200


@pytest.mark.parametrize("query, field", [
    ("weeks=12", "weeks"), ("weeks=abc", "weeks"), ("weeks=" + "9" * 5000, "weeks"),
    ("district=nosuch", "district"), ("district=%3Cscript%3E", "district")])
def test_a_period_or_district_not_offered_on_a_clinics_page_is_one_line_naming_it(
        lite, query, field):
    status, _, body = request(lite["base"], f"/clinic/clinic-01?{query}", lite["admin"])
    assert status == 400, body[:300]
    said = _warn(body)
    assert len(said) == 1 and said[0].startswith(f"{field}: "), said
    assert "<script>" not in body.decode()
    status, _, body = request(lite["base"], f"/api/clinic.csv?clinic=clinic-01&{query}",
                              lite["admin"])
    assert status == 400
    assert json.loads(body)["error"].startswith(f"{field}: ")


# -- this month so far -----------------------------------------------------------------------
def _month_rows(page: str) -> list[dict[str, str]]:
    """The month table's rows: their data-* attributes (the monthly CSV's columns)."""
    table = re.search(r'<table class="month">.*?</table>', page, re.S)
    assert table, "no month table"
    return [{k.removeprefix("data-").replace("-", "_"): v for k, v in _attrs(tag).items()}
            for tag in re.findall(r"<tr data-[^>]*>", table.group(0))]


def test_a_clinics_page_shows_this_months_figures_as_the_monthly_return_counts_them(site):
    """The monthly return's CSV had each clinic's month so far and no page showed it (a
    fresh-eyes walk, 7 December): an officer asked "how many exams has clinic 2 done this
    month, how many complete?" had to download the district's CSV and find its rows. The
    clinic's page has them, a row per protocol, the CSV's own rows (`monthly_return`)."""
    month = Q.this_month()
    # the CSV's rows, but for the district column it ends with (the page says its district)
    returned = [{k: v for k, v in r.items() if k != "district"}
                for r in _csv(site, "monthly", f"month={month.text}")]
    assert sum(int(r["exams"]) for r in returned), "the seed did no exam this month"
    for clinic in CLINICS:
        page = _get(site, f"/clinic/{clinic}?weeks=8")
        assert f"<h2>This month so far: {month.title}</h2>" in page
        rows = _month_rows(page)
        want = [r for r in returned if r["clinic_id"] == clinic]
        assert rows == want, clinic
        table = re.search(r'<table class="month">.*?</table>', page, re.S).group(0)
        for r in want:
            cells = re.search(rf'<tr data-month="{month.text}" data-clinic-id="{clinic}" '
                              rf'[^>]*data-protocol="{r["protocol"]}"[^>]*>(.*?)</tr>',
                              table, re.S).group(1)
            said = re.findall(r"<td[^>]*>(.*?)</td>", cells)
            n, done = int(r["exams"]), int(r["complete"])
            assert said[1:3] == [r["exams"], f"{round(100 * done / n)}% ({done} of {n})"
                                 if n else "-"], (clinic, said)
        lead = re.search(r'<h2>This month so far[^<]*</h2><p class="lead">(.*?)</p>',
                         page).group(1)
        assert f"heard on {want[0]['heard_days']} day" in lead, lead
        assert f"of {want[0]['days_counted']} day" in lead, lead
        assert f'href="/api/monthly.csv?month={month.text}"' in page
    # a viewer's page is her district's, and links her district's return
    page = _get(site, "/clinic/clinic-02", who="viewer")
    assert _month_rows(page) == [r for r in returned if r["clinic_id"] == "clinic-02"]
    assert f'href="/api/monthly.csv?month={month.text}&amp;district=district-1"' in page
