"""An officer's walk of the district pages (6 December), and what it mended.

1. "Last 8 weeks" never said which days: whole weeks from a Monday, this one so far, so on a
   Monday it is 50 days; only a CSV's file name gave the dates. Every page now says them.
2. A `weeks` or `district` the pages do not offer was replaced in silence: a script asking
   for 12 weeks got 8 with a 200, an admin's unknown district an empty page. Now one line
   naming the parameter, 400.
3. The devices page listed flagged boxes by clinic, all alike: a box whose clinic had sent
   nothing for 18 weekdays came last, after "disk low", and a box silent 26 days said
   "silent 26 days, online but silent 26 days: restart it". Now the most urgent first, the
   longest silent first among them, one flag for one fault, and the figure in the flag.
4. A silent spell running into the period was said to start on the period's first day
   ("since 2026-10-12" for a clinic last heard in January 2025). Now it says when it began.

Real parts: the seeded district on SQLite, the rollup, `sonoedge-central serve` on a free
loopback port with an admin's and a viewer's sessions.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from central.dashboard import auth
from central.dashboard import config as C
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh
from tests.dashboard_harness import dashboard, login, request

ADMIN = ("officer", "a-long-pass-phrase-1")
VIEWER = ("nurse-d1", "a-long-pass-phrase-2")
PAGES = ("clinics", "completeness", "quality", "biometry", "devices")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("s40")
    db_path = str(tmp / "c.sqlite3")
    seed(db_path, SeedSettings(clinics=6, districts=2, days=60))
    db = open_db(db_path)
    try:
        refresh(db)
        auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
        auth.add_user(db, VIEWER[0], "viewer", "district-1", VIEWER[1])
        districts = Q.districts(db)
    finally:
        db.close()
    with dashboard(db_path, tmp) as base:
        yield {"base": base, "admin": login(base, ADMIN), "viewer": login(base, VIEWER),
               "districts": districts}


# -- 1. the days a period covers ---------------------------------------------------------------
def _period_words(per: Q.Period, weeks: int) -> str:
    first = time.gmtime(per.first_day * C.DAY_S)
    last = time.gmtime(per.last_day * C.DAY_S)
    assert first.tm_wday == 0  # whole weeks from a Monday
    start = time.strftime("%a %d %b" + ("" if first.tm_year == last.tm_year else " %Y"), first)
    return (f"Last {weeks} weeks: {start} to today, {time.strftime('%a %d %b %Y', last)} "
            f"(UTC days; {len(per.days)} days")


@pytest.mark.parametrize("weeks", [8, 26])
def test_every_page_says_the_days_its_weeks_cover(site, weeks):
    for name in PAGES:
        before = Q.period(weeks)
        page = request(site["base"], f"/{name}?weeks={weeks}", site["admin"])[2].decode()
        line = re.search(r'<p class="period">(.*?)</p>', page)
        assert line, name
        text = re.sub(r"<[^>]+>", "", line.group(1))
        # the server's period is the one read before or after its answer (a UTC midnight
        # may fall between them)
        said = {_period_words(per, weeks) for per in (before, Q.period(weeks))}
        assert text.startswith(tuple(said)), (text, said)


def test_the_weekly_plot_says_its_last_week_is_not_over():
    per = Q.period(26)
    cells = {("clinic-1", d): Q.ClinicDay("clinic-1", d, exams=3) for d in per.days}
    svg = P.clinics_svg(Q.ClinicsPage(per, ["clinic-1"], cells))
    assert ">this week so far</text>" in svg


# -- 2. a parameter not offered is one line naming it -----------------------------------------
@pytest.mark.parametrize("query, field", [
    ("weeks=12", "weeks"), ("weeks=-1", "weeks"), ("weeks=99999", "weeks"),
    ("weeks=abc", "weeks"), ("district=nosuch", "district"),
    ("district=%3Cscript%3E", "district"), ("district=" + "d" * 500, "district")])
def test_a_period_or_district_not_offered_is_one_line_naming_it(site, query, field):
    status, _, body = request(site["base"], f"/clinics?{query}", site["admin"])
    assert status == 400, body[:300]
    text = body.decode()
    said = re.findall(r'<p class="warn">(.*?)</p>', text)
    assert len(said) == 1 and said[0].startswith(f"{field}: "), said
    assert "<script>" not in text and "Traceback" not in text
    status, _, body = request(site["base"], f"/api/clinics.csv?{query}", site["admin"])
    assert status == 400, body[:300]
    error = json.loads(body)["error"]
    assert error.startswith(f"{field}: ") and len(error) < 120, error


def test_what_the_pages_offer_is_answered_and_a_viewer_keeps_her_district(site):
    for query in ("", "weeks=", "weeks=52", f"district={site['districts'][-1]}", "district="):
        status, _, body = request(site["base"], f"/clinics?{query}", site["admin"])
        assert status == 200, (query, body[:300])
        assert request(site["base"], f"/api/devices.csv?{query}", site["admin"])[0] == 200
    # a viewer asking for another district sees her own, as before: no error to tell her
    # which districts exist
    status, _, body = request(site["base"], "/clinics?district=nosuch", site["viewer"])
    assert status == 200 and "district-1" in body.decode()


# -- 3. the devices page: the most urgent box first ---------------------------------------------
def _box(device: str, clinic: str, last_seen: float | None, **kw) -> Q.DeviceRow:
    row = Q.DeviceRow(device, clinic, last_seen, kw.pop("state", "offline"), last_seen, 0, 0,
                      0, 0, kw.pop("disk", 5000.0), kw.pop("temp", 50.0), {},
                      kw.pop("bundle", {}), last_seen)
    row.received = 100
    for key, value in kw.items():
        setattr(row, key, value)
    return row


def test_the_devices_page_lists_the_most_urgent_box_first_and_says_what_to_do():
    now = time.time()
    h = 3600.0
    boxes = [
        _box("box-01a", "clinic-01", now - 1 * h, bundle={"rollback": {"from": "2.0"}}),
        _box("box-02a", "clinic-02", now - 2 * h, disk=5.0),
        _box("box-03a", "clinic-03", now - 0.5 * h),
        _box("box-04a", "clinic-04", now - 26 * 24 * h, state="online", health_interval_s=60.0),
        _box("box-05a", "clinic-05", now - 2 * h, temp=C.HOT_C + 3),
        _box("box-06a", "clinic-06", now - 4 * 24 * h),
        _box("box-00a", "clinic-00", now - 0.1 * h),
    ]
    for b in boxes:
        Q.flag_row(b, now)
    flags = {b.device_id: b.flags for b in boxes}
    # one fault, one flag, and what to do about it
    assert flags["box-04a"] == ["silent 26 days (its link still says online: restart it)"]
    assert flags["box-02a"] == ["disk low (5 MB free): free space or replace its card"]
    assert flags["box-05a"] == [f"hot ({C.HOT_C + 3:.0f} °C): shade and air around the box"]
    assert flags["box-01a"] == ["bundle rolled back"] and flags["box-03a"] == []
    order = [b.device_id for b in Q.by_urgency(boxes, now)]
    # not heard from, longest first; then what may lose data; a note; then the well
    assert order[:2] == ["box-04a", "box-06a"]
    assert set(order[2:4]) == {"box-02a", "box-05a"}
    assert order[4:] == ["box-01a", "box-00a", "box-03a"]  # the well: by clinic
    table = P.devices_table(boxes, now)
    rows = re.findall(r'<tr data-device="([^"]+)" class="([^"]*)">', table)
    assert [d for d, _ in rows] == order
    looks = dict(rows)
    assert looks["box-04a"] == "flag visit" and looks["box-02a"] == "flag"
    assert looks["box-01a"] == "flag note" and looks["box-03a"] == ""
    # the link still says online beside 26 days of silence: not drawn as a healthy link
    assert re.search(r'data-device="box-04a".*?<td class="stuck">online<br>', table, re.S)


def test_a_box_never_heard_from_is_among_those_to_visit_and_a_note_never_outranks_a_fault():
    now = time.time()
    never = _box("box-09a", "clinic-09", None, disk=None, temp=None)
    never.flags, never.urgency, never.listed_ts = ["never heard from"], Q.VISIT, now - 86400
    noted = _box("box-01a", "clinic-01", now - 60, bundle={"rollback": {"from": "2.0"}})
    lost = _box("box-02a", "clinic-02", now - 60, missing=40)
    for b in (noted, lost):
        Q.flag_row(b, now)
    assert [b.device_id for b in Q.by_urgency([noted, lost, never], now)] == \
        ["box-09a", "box-02a", "box-01a"]


# -- 4. a silent spell that began before the period ------------------------------------------
def test_a_silent_spell_running_into_the_period_says_when_it_began(tmp_path):
    end = 1_796_000_000.0  # a fixed instant: the seeded calendar does not move with the day
    db_path = str(tmp_path / "c.sqlite3")
    seed(db_path, SeedSettings(clinics=8, districts=1, days=150, seed=3, end_ts=end))
    db = open_db(db_path)
    try:
        refresh(db)
        per = Q.period(8, now=end)
        page = Q.clinics_page(db, Q.Scope(None), per)
        # the last day each clinic was heard before the period, from the rollup itself
        last_before = {c: max(d for (cc, d), n in _days(db).items() if cc == c
                              and d < per.first_day and n)
                       for c in page.clinics}
        cut = []
        for clinic in page.clinics:
            heard = False
            for spell in page.silent_spells(clinic):
                before = [d for d in per.days if d < spell.first_day
                          and not page.cells[(clinic, d)].silent]
                heard = bool(before)
                if not heard:
                    assert spell.since_day == last_before[clinic] + 1, (clinic, spell)
                    cut.append((clinic, spell))
                else:
                    assert spell.since_day is None, (clinic, spell)
        assert cut, "the seed gives no spell that runs into the period: choose another"
        clinic, spell = cut[0]
        words = P.spell_text(spell)
        assert words.startswith(f"since {Q.day_text(spell.since_day)} (") or \
            words.startswith(f"{Q.day_text(spell.since_day)} to "), words
        assert "in this period" in words
    finally:
        db.close()


def _days(db) -> dict[tuple[str, int], int]:
    return {(c, int(d)): int(n) for c, d, n in db.query(
        "SELECT clinic_id, day, SUM(exams + health + other) FROM dash.day_device "
        "GROUP BY clinic_id, day")}


# -- 5. the district of each row in the downloads -----------------------------------------------
def test_every_download_with_a_clinic_names_its_district_last(site):
    import csv
    import io

    from central.dashboard.server import CSVS

    clinics_page = request(site["base"], "/clinics?weeks=8", site["admin"])[2].decode()
    assert "district-1" in clinics_page
    names = sorted(CSVS) + ["monthly"]
    for name in names:
        query = f"month={Q.this_month().text}" if name == "monthly" else "weeks=8"
        status, _, body = request(site["base"], f"/api/{name}.csv?{query}", site["admin"])
        assert status == 200, (name, body[:200])
        rows = list(csv.reader(io.StringIO(body.decode())))
        if "clinic_id" not in rows[0]:
            continue
        assert rows[0][-1] == "district", (name, rows[0])
        at = rows[0].index("clinic_id")
        got = {r[at]: r[-1] for r in rows[1:]}
        assert got or name == "fleet_errors", name  # the seed makes no update errors
        assert all(re.fullmatch(r"district-[12]", d) for d in got.values()), (name, got)
        # a viewer's download names her district on every row
        status, _, body = request(site["base"], f"/api/{name}.csv?{query}", site["viewer"])
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert {r[-1] for r in rows[1:]} <= {"district-1"}, name


def test_the_quality_heatmaps_last_week_says_it_is_not_over():
    per = Q.period(8)
    now_week, earlier = per.last_week, per.last_week - 1
    cells = [Q.PlaneWeek("LVOT", w, 12, 0.7, 3) for w in (earlier, now_week)]
    page = Q.QualityPage(per, [earlier, now_week], ["LVOT"], cells, [], 24)
    tips = re.findall(r"<title>([^<]*)</title>", P.quality_svg(page))
    assert any(t.startswith(f"LVOT, week of {Q.week_text(now_week)} (this week so far):")
               for t in tips), tips
    assert not any("so far" in t for t in tips if Q.week_text(earlier) in t), tips


def test_the_last_seen_age_never_contradicts_the_silent_flag():
    """A box flagged "silent" (not heard for over SILENT_AFTER_S, 3 days) and one not
    flagged both read "3 days ago" on the devices page (an officer's walk, 7 December): the
    age was rounded to whole days, the flag was not. A row that says "3 days" or less is
    never flagged; one flagged says more than 3 days, in the flag and in the last-seen cell
    alike; the clinic page's last message is said the same way."""
    now = time.time()
    day = C.DAY_S
    ages = (2.4, 2.6, 2.9, 3.0, 3.001, 3.2, 3.49, 3.5, 4.4, 26.0)
    boxes = [_box(f"box-{i:02d}a", f"clinic-{i:02d}", now - a * day)
             for i, a in enumerate(ages)]
    for b in boxes:
        Q.flag_row(b, now)
    table = P.devices_table(boxes, now)
    for age, b in zip(ages, boxes, strict=True):
        flagged = [f for f in b.flags if f.startswith("silent")]
        cell = re.search(rf'data-device="{b.device_id}".*?<td title="[^"]*">([^<]*)</td>',
                         table, re.S).group(1)
        said = re.fullmatch(r"(over )?(\d+) days ago", cell)
        assert said, (age, cell)
        over, figure = bool(said.group(1)), int(said.group(2))
        limit = C.SILENT_AFTER_S / day
        assert bool(flagged) == (age > limit), (age, b.flags)
        if flagged:  # the flag and the cell say the same, and it is over the line
            assert flagged[0] == f"silent {cell.removesuffix(' ago')}", (flagged, cell)
            assert over or figure > limit, (age, cell)
        else:
            assert not over and figure <= limit, (age, cell)
        assert abs(figure - age) <= 0.5, (age, cell)  # still the nearest whole day
    assert P.seen_ago(now - 3.2 * day, now) == "over 3 days ago"
    assert P.seen_ago(now - 3 * day, now) == "3 days ago"
    assert P.seen_ago(now - 5 * 60, now) == "5 min ago" and P.seen_ago(None, now) == "never"
