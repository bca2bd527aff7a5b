"""The quality heatmap shows how often a plane's best frame is not captured, not the mean.

An officer's walk of a seeded district (12 clinics, 3 districts, 26 weeks): over 8 weeks
the district's 104 cells, each the mean best-frame quality of a plane and week, took two
colours (70 in 0.6-0.7, 34 in 0.7-0.8) while 5-15% of each clinic's best frames fell under
the protocols' 0.5; and the one alarm of a viewer's 26 weeks was "LVOT, week of 2026-06-29:
mean 0.48 over 4 exams". A mean of best frames hides the failures the page is there to
show. Now each cell is the share of the exams that found the plane whose best frame of it
scored under 0.5, on a sequential orange with a legend in words; a cell with fewer than
C.QUALITY_CELL_MIN_EXAMS exams is hatched "too few to judge", never orange; the mean and
the counts stay in the title and the CSV, whose first five columns are as before.

And a cell takes its orange only when its share is clearly above the district's own, as a
funnel plot decides (Spiegelhalter 2005): at 20 exams a true 12% reaches 20% by chance in
about a cell in five, and a fixed orange from 20% sent the officer to coach those. A cell
whose 95% Wilson interval holds the district's share is muted grey, whatever its share;
its title gives its exams and interval. The clinics' table is flagged by the same rule.

Real parts: the seeded district on SQLite and its rollup (the expected counts come from the
stored messages, not from the rollup), and `sonoedge-central serve` with exams checked by
the collector for the officer's own cases.
"""

from __future__ import annotations

import calendar
import csv
import html
import io
import json
import math
import re
import time
from collections import Counter

import pytest

from central import collector
from central.dashboard import config as C
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, clinic_ids, district_of, seed
from central.dashboard.store import exam_day_of, open_db, refresh, week_of
from central.dashboard.svg import legend_width
from central.db import Row, Store
from tests import conftest_mqtt as fx
from tests.dashboard_harness import messages, request, standing_exams
from tests.test_age_by_dates_district import served
from tests.test_central import encode, message

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures

# Wednesday 1 July 2026, 00:00 UTC: the seed's last instant and the pages' "now", so the
# weeks and their cells do not move with the day the test runs
END = 1782864000.0
CLINICS, DISTRICTS = 12, 3
# the scale the heatmap must draw, in whole percent: under 5 | 5-10 | 10-15 | 15-20 | 20-30 | 30+,
# in ColorBrewer's 6-class Oranges, whose fifth is the pages' alarm orange
EDGES_PCT = (5, 10, 15, 20, 30)
ORANGES = ["#feedde", "#fdd0a2", "#fdae6b", "#fd8d3c", "#e6550d", "#a63603"]
ALARM = ORANGES[4:]  # from 20%, the clinics' table flag
MIN_EXAMS = 10  # a cell with fewer is too few to judge (C.QUALITY_CELL_MIN_EXAMS)
WITHIN = "#ebebeb"  # muted: a share chance explains at the district's rate
Z95 = 1.959963984540054  # the normal's 97.5th centile: a two-sided 95% interval
FUNNEL = ["interval_low", "interval_high", "compared_with", "compared_share", "above_compared"]
OLD_COLUMNS = ["plane", "week_starting", "exams", "mean_best_quality", "exams_below_0.5"]
RECT = re.compile(r"<rect ([^>]*data-plane=[^>]*)>(?:<title>([^<]*)</title>)?</rect>")


@pytest.fixture(scope="module")
def district(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("failures") / "central.sqlite3")
    seed(path, SeedSettings(clinics=CLINICS, districts=DISTRICTS, days=182, end_ts=END))
    db = open_db(path)
    refresh(db)
    yield db, messages(path)
    db.close()


def _attrs(text: str) -> dict[str, str]:
    return dict(re.findall(r'([a-z-]+)="([^"]*)"', text))


def cells_drawn(svg: str) -> list[dict]:
    out = []
    for attrs, title in RECT.findall(svg):
        a = _attrs(attrs)
        a["title"] = title.replace("&#x27;", "'")
        out.append(a)
    return out


def week_of_text(text: str) -> int:
    """The week of a "week_starting" date."""
    y, m, d = (int(x) for x in text.split("-"))
    return week_of(calendar.timegm((y, m, d, 0, 0, 0)) // C.DAY_S)


def expected(sent: list[dict], district: str | None, per: Q.Period) -> dict:
    """(plane, week) -> (exams that found it, of them with its best frame under 0.5), from
    the stored exams themselves, dated as the dashboard dates an exam."""
    clinics = {c for i, c in enumerate(clinic_ids(CLINICS))
               if district is None or district_of(i, CLINICS, DISTRICTS) == district}
    n: Counter = Counter()
    low: Counter = Counter()
    standing = {id(p) for p in standing_exams([m["payload"] for m in sent])}
    for m in sent:
        if id(m["payload"]) not in standing or m["clinic_id"] not in clinics:
            continue
        p = m["payload"]
        week = week_of(exam_day_of(p.get("ended_ts"), m["device_ts"], m["received_ts"])[1])
        if not per.first_week <= week <= per.last_week:
            continue
        for plane, e in (p.get("planes") or {}).items():
            if plane in C.NOT_A_VIEW or not e or e[0] <= 0 or len(e) < 3:
                continue
            n[(plane, week)] += 1
            low[(plane, week)] += e[2] < C.MIN_QUALITY
    return {k: (n[k], low[k]) for k in n}


def colour_of(exams: int, below: int) -> str:
    percent = round(100 * below / exams)
    return ORANGES[sum(percent >= e for e in EDGES_PCT)]


def wilson(below: int, exams: int) -> tuple[float, float]:
    """The 95% Wilson score interval: the shares p with |below/exams - p| <= z sqrt(p (1 -
    p) / exams), the roots of that quadratic in p."""
    n, z2 = exams, Z95 ** 2
    a, b, c = 1 + z2 / n, -(2 * below / n + z2 / n), (below / n) ** 2
    root = math.sqrt(b * b - 4 * a * c)
    return max(0.0, (-b - root) / (2 * a)), min(1.0, (-b + root) / (2 * a))


def beyond_funnel(exams: int, below: int, rate: float) -> bool:
    """Above the upper 95% control limit of a funnel plot around `rate` at `exams`
    (Spiegelhalter 2005's normal limits, rate + z sqrt(rate (1 - rate) / n)): the same
    judgement as a Wilson interval wholly above `rate`, worked out the other way round."""
    return (exams >= MIN_EXAMS
            and below / exams > rate + Z95 * math.sqrt(rate * (1 - rate) / exams))


def luminance(colour: str) -> float:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@pytest.mark.parametrize("district_id, weeks", [(None, 8), ("district-1", 26)])
def test_each_cell_is_coloured_by_its_share_of_best_frames_not_captured(district,
                                                                       district_id, weeks):
    db, sent = district
    per = Q.period(weeks, END)
    cells = cells_drawn(P.quality_svg(Q.quality_page(db, Q.Scope(district_id), per)))
    want = expected(sent, district_id, per)
    assert len(cells) == len(want) > 8 * 12
    # the district's own share, every plane and week of the period: what chance is judged by
    rate = sum(b for _, b in want.values()) / sum(n for n, _ in want.values())
    above = old_alarm = 0
    for c in cells:
        exams, below = want[(c["data-plane"], week_of_text(c["data-week"]))]
        assert int(c["data-exams"]) == exams
        flagged = beyond_funnel(exams, below, rate)
        if exams >= MIN_EXAMS:
            assert c["fill"] == (colour_of(exams, below) if flagged else WITHIN), c
            assert ("data-above" in c) == flagged
            above += flagged
            old_alarm += round(100 * below / exams) >= 20
        assert int(c["data-below"]) == below
        assert float(c["data-share"]) == pytest.approx(below / exams, abs=1e-4)
        if exams < MIN_EXAMS:
            continue
        low, high = wilson(below, exams)
        assert (float(c["data-low"]), float(c["data-high"])) == (
            pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4))
        assert low <= below / exams <= high and (low > rate) == flagged
        assert (f"{below} of {exams} exams ({round(100 * below / exams)}%) under 0.5, not "
                f"captured (95% interval {low:.0%}"[:-1] + f"-{high:.0%})") \
            in c["title"], c["title"]
        whose = "the district's" if district_id else "all clinics'"  # an admin's all
        assert (f"clearly above {whose} {round(100 * rate)}%" if flagged else
                f"within chance of {whose} {round(100 * rate)}%") in c["title"]
        assert "mean best-frame quality" in c["title"]  # the mean stays, in words
    # the seeded clinics differ (some fail more), so some cells are clearly above; far
    # fewer than a fixed orange from 20% drew, most of which chance explained
    assert 0 < above < old_alarm, (above, old_alarm)
    # a sequential scale: each class darker than the one before
    assert [luminance(x) for x in ORANGES] == sorted((luminance(x) for x in ORANGES),
                                                    reverse=True)


def test_the_lead_says_what_the_colour_means_as_drawn(district):
    """"The darker, the more often" sat above a viewer's heatmap all grey (a walk): with no
    cell beyond chance the lead says so."""
    db, _ = district
    page = Q.quality_page(db, Q.Scope("district-1"), Q.period(26, END))
    assert any(c.above for c in page.cells)
    assert P.shading_words(page) == "The darker orange, the more often. "
    for c in page.cells:  # the same cells against a district failing every frame
        c.district_share = 1.0
    assert not any(c.above for c in page.cells)
    assert P.shading_words(page) == "No cell is clearly above: all are grey. "


def test_a_cell_with_too_few_exams_is_hatched_never_orange_and_says_so(district):
    db, _ = district
    # a viewer's 26 weeks: the seed's first week has few exams in her four clinics
    svg = P.quality_svg(Q.quality_page(db, Q.Scope("district-1"), Q.period(26, END)))
    cells = cells_drawn(svg)
    few = [c for c in cells if int(c["data-exams"]) < MIN_EXAMS]
    assert few, "the seeded viewer's district has weeks with few exams of a plane"
    for c in few:
        assert c["fill"] == "url(#too-few)", c
        assert c["fill"] not in ORANGES
        assert "too few to judge" in c["title"], c["title"]
        assert "data-too-few" in c
    assert 'id="too-few"' in svg  # the hatch is defined in the drawing
    assert any(int(c["data-below"]) for c in few)  # some did fail: still not judged
    for c in cells:
        if int(c["data-exams"]) >= MIN_EXAMS:
            assert "too few" not in c["title"] and "data-too-few" not in c
    assert C.QUALITY_CELL_MIN_EXAMS == MIN_EXAMS  # named, with its reason, in config.py


def test_the_legend_names_the_scale_in_words(district):
    db, _ = district
    svg = P.quality_svg(Q.quality_page(db, Q.Scope(None), Q.period(8, END)))
    texts = [html.unescape(t) for t in re.findall(r"<text [^>]*>([^<]*)</text>", svg)]
    assert "Share of exams with the plane's best frame under 0.5 (not captured):" in [
        t.replace("&#x27;", "'") for t in texts]
    page = Q.quality_page(db, Q.Scope(None), Q.period(8, END))
    within = (f"any share within chance of all clinics' {round(100 * page.district_share)}% "
              "(95%)")  # an admin's every district: whose share it is
    # all clinics' 11%: the classes under 10% can take no orange (the next test), so the
    # legend starts at 10-15%
    assert 0.1 < page.district_share < 0.15
    words = ["10-15%", "15-20%", "20-30%", "30% or more", within,
             f"fewer than {MIN_EXAMS} exams: too few to judge"]
    assert [t for t in texts if t in words] == words
    # each key's swatch is its class's colour, just before its words
    swatches = {(float(a["x"]), float(a["y"])): a["fill"] for a in
                (_attrs(r) for r in re.findall(r'<rect ([^>]*width="10" height="10"[^>]*)>',
                                               svg))}
    keys = {t: (float(x), float(y)) for x, y, t in
            re.findall(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)</text>',
                       html.unescape(svg)) if t in words}
    assert [swatches[(keys[w][0] - 14, keys[w][1] - 9)] for w in words] == [
        *ORANGES[2:], WITHIN, "url(#too-few)"]
    assert not {"under 5%", "5-10%"} & set(texts)
    assert "<title>Share of exams with the best frame under 0.5, per plane and week" in svg


def legend_oranges(svg: str) -> list[str]:
    """The orange classes the legend lists: its swatches' fills, in order."""
    return [f for f in re.findall(r'<rect [^>]*width="10" height="10" fill="([^"]+)"', svg)
            if f in ORANGES]


def could_take(rate: float) -> list[str]:
    """The oranges a cell could take at the district's share `rate`, by brute force over
    the exams a cell may have (every count to 200, then up to a million, where a share
    just above the rate is beyond the funnel): the class of each share, of so many
    failing of them, that is clearly above the rate (`beyond_funnel`)."""
    out = set()
    for n in [*range(MIN_EXAMS, 201), 10 ** 3, 10 ** 4, 10 ** 5, 10 ** 6]:
        k = max(0, math.floor(rate * n))
        while k <= n and not beyond_funnel(n, k, rate):
            k += 1
        if k > n:
            continue
        if n <= 200:
            out.update(colour_of(n, below) for below in range(k, n + 1))
        else:  # every whole percent from the least above: a step of 0.1% or less
            out.update(colour_of(100, p) for p in range(round(100 * k / n), 101))
    return [c for c in ORANGES if c in out]


@pytest.mark.parametrize("rate", [0.0, 0.03, 0.0942, 0.095, 0.114, 0.149, 0.1657, 0.22,
                                  0.35, 0.995, 1.0])
def test_the_legend_lists_only_the_classes_a_cell_can_take(district, rate):
    """Orange needs a cell's interval wholly above the district's share, so its share above
    it: beside a district's 11% the legend listed "under 5%" and "5-10%", oranges no cell
    could ever take. Now it lists exactly the classes some cell could take at that share
    (9.5%: a share above it is written 10% or more, so not 5-10%; 100%: none), and every
    orange drawn is one of them. The seeded admin's page, its district's share set to each."""
    db, _ = district
    page = Q.quality_page(db, Q.Scope(None), Q.period(8, END))
    page.district_frames, page.district_below = 10 ** 6, round(rate * 10 ** 6)
    for c in page.cells:
        c.district_share = page.district_share
    svg = P.quality_svg(page)
    listed = legend_oranges(svg)
    assert listed == could_take(rate), (rate, listed)
    assert {c["fill"] for c in cells_drawn(svg)} & set(ORANGES) <= set(listed)
    texts = set(re.findall(r"<text [^>]*>([^<]*)</text>", svg))
    keys = dict(zip(ORANGES, ["under 5%", "5-10%", "10-15%", "15-20%", "20-30%",
                              "30% or more"], strict=True))
    assert {w for c, w in keys.items() if c in listed} <= texts
    assert not {w for c, w in keys.items() if c not in listed} & texts
    width = float(re.search(r'<svg [^>]*width="(\d+)"', svg).group(1))
    assert width >= 100 + legend_width([("", keys[c]) for c in listed], measured=True)


def test_the_csv_keeps_its_columns_first_and_adds_the_share_after(district):
    db, sent = district
    per = Q.period(26, END)
    body = P.quality_csv(Q.quality_page(db, Q.Scope("district-1"), per))
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][:5] == OLD_COLUMNS  # scripts read them by position
    assert rows[0][5:] == ["share_below_0.5", "too_few_to_judge", *FUNNEL]
    want = expected(sent, "district-1", per)
    assert len(rows) - 1 == len(want)
    rate = sum(b for _, b in want.values()) / sum(n for n, _ in want.values())
    for plane, week, exams, mean, below, share, few, low, high, whose, district, above \
            in rows[1:]:
        assert whose == "district"  # a district's own page: its own share
        assert (int(exams), int(below)) == want[(plane, week_of_text(week))]
        assert 0 < float(mean) <= 1
        assert float(share) == round(int(below) / int(exams), 4)
        assert few == str(int(int(exams) < MIN_EXAMS))
        assert float(low) <= float(share) <= float(high) and float(district) == round(rate, 4)
        assert above == str(int(beyond_funnel(int(exams), int(below), rate)))


# -- the officer's own cases, through the collector and the served page ----------------------
REGISTRY = {"dev-a": "clinic-a"}


def _exam(seq: int, planes: dict) -> Row:
    payload = message("exam", device="dev-a", seq=seq,
                      planes={**planes, "Background": [50, 0.9, 0.0]})
    row = collector.check("sonoedge/dev-a/exam", encode(payload), 4096, "c1", payload["ts"],
                          REGISTRY)
    assert isinstance(row, Row), row
    return row


def test_the_served_page_alarms_on_failures_a_mean_hid_and_not_on_four_exams(tmp_path):
    """This week: heads found 60 times, 18 under 0.5 and the rest near perfect (mean 0.81,
    the old page's best blue); hearts 60 times, all at 0.55 (mean 0.55, none failed); LVOT 4
    times, 3 under 0.5 (mean 0.48: the old page's only orange). The district's share is 21
    of 124 (17%), and the heads' 30% of 60 is clearly above it."""
    db = str(tmp_path / "central.sqlite3")
    rows = []
    for i in range(60):
        planes = {"Brain (Tv.)": [10, 0.9, 0.45 if i < 18 else 0.97], "4CH": [6, 0.8, 0.55]}
        if i < 4:
            planes["LVOT"] = [5, 0.8, 0.4 if i < 3 else 0.72]
        rows.append(_exam(i + 1, planes))
    store = Store(db)
    try:
        assert store.store(rows, []) == (60, 0)
    finally:
        store.close()
    with served(db, tmp_path) as (base, cookie):
        page = request(base, "/quality?weeks=8", cookie)[2].decode()
        svg = page[page.index('data-chart="quality"'):]
        svg = svg[:svg.index("</svg>")]
        cells = {c["data-plane"]: c for c in cells_drawn(svg)}
        assert set(cells) == {"Brain (Tv.)", "4CH", "LVOT"}
        heads, hearts, lvot = cells["Brain (Tv.)"], cells["4CH"], cells["LVOT"]
        assert heads["fill"] == ORANGES[-1]  # 30%: the darkest
        assert "clearly above all clinics' 17%" in heads["title"]  # the admin's, unfiltered
        assert "18 of 60 exams (30%) under 0.5" in heads["title"]
        assert "mean best-frame quality 0.81" in heads["title"]
        assert hearts["fill"] == WITHIN  # none failed, however low the mean: no alarm
        assert lvot["fill"] == "url(#too-few)"
        assert lvot["fill"] not in ORANGES
        # the current week's cells say "so far" (these exams are an hour old: this week's
        # but for the first hour of a Monday)
        so_far = (" (this week so far)" if lvot["data-week"] == Q.week_text(Q.period(8).last_week)
                  else "")
        assert lvot["title"].startswith(f"LVOT, week of {lvot['data-week']}{so_far}: too few "
                                        "to judge"), lvot["title"]
        assert "3 of 4 exams (75%) under 0.5" in lvot["title"]
        assert "mean best-frame quality 0.48" in lvot["title"]
        lead = re.search(r'<p class="lead">Each cell is the share(.*?)</p>', page)
        assert lead and "too few to judge" in lead.group(1)

        body = request(base, "/api/quality.csv?weeks=8", cookie)[2].decode()
        got = list(csv.reader(io.StringIO(body)))
        assert got[0] == [*OLD_COLUMNS, "share_below_0.5", "too_few_to_judge", *FUNNEL]
        by_plane = {r[0]: r[2:7] + r[-2:] for r in got[1:]}
        assert by_plane["Brain (Tv.)"] == ["60", "0.814", "18", "0.3", "0", "0.1694", "1"]
        assert by_plane["4CH"] == ["60", "0.55", "0", "0.0", "0", "0.1694", "0"]
        assert by_plane["LVOT"] == ["4", "0.48", "3", "0.75", "1", "0.1694", "0"]


# -- chance: a funnel plot's limits, on SQLite and PostgreSQL --------------------------------
# Five clinics, each box scanning one plane, every exam on last week's Thursday. The district
# fails 60 of 500 (12%): clinic-chance 4 of 20 (20%, what 20 exams at 12% show by chance),
# clinic-poor 18 of 60 (30%, clearly more), and three clinics 38 of 420 between them.
FUNNEL_DISTRICT = {  # device: (clinic, plane, exams, under 0.5)
    "dev-chance": ("clinic-chance", "LVOT", 20, 4),
    "dev-poor": ("clinic-poor", "4CH", 60, 18),
    "dev-b1": ("clinic-b1", "Brain (Tv.)", 140, 13),
    "dev-b2": ("clinic-b2", "Brain (Tv.)", 140, 13),
    "dev-b3": ("clinic-b3", "Brain (Tv.)", 140, 12),
}


def _funnel_district(db_url: str) -> None:
    """FUNNEL_DISTRICT's exams, each checked by the collector as it arrives, stored and
    rolled up."""
    from central.dashboard.store import open_db as open_dash

    day = int(time.time() // C.DAY_S)
    thursday = (day - (day + 3) % 7 - 4) * C.DAY_S + 12 * 3600.0  # last week's
    registry = {dev: clinic for dev, (clinic, *_) in FUNNEL_DISTRICT.items()}
    rows = []
    for dev, (_, plane, exams, failed) in FUNNEL_DISTRICT.items():
        for i in range(exams):
            ts = thursday + i
            payload = message("exam", device=dev, seq=i + 1, ts=ts, ended_ts=ts,
                              planes={plane: [8, 0.9, 0.4 if i < failed else 0.8],
                                      "Background": [50, 0.9, 0.0]})
            row = collector.check(f"sonoedge/{dev}/exam", encode(payload), 4096, "c1",
                                  time.time(), registry)
            assert isinstance(row, Row), row
            rows.append(row)
    store = Store(db_url)
    try:
        assert store.store(rows, []) == (500, 0)
    finally:
        store.close()
    db = open_dash(db_url)
    try:
        refresh(db)
    finally:
        db.close()


def test_chance_is_not_flagged_and_a_clinic_clearly_worse_is(url, tmp_path):
    """20 exams at 20% is what a district failing 12% shows by chance: not flagged, in the
    table or the heatmap, where a fixed 20% flagged it; 60 at 30% is clearly worse: flagged,
    and first. Each says its interval; the page says the rule in one line."""
    _funnel_district(url)
    with served(url, tmp_path) as (base, cookie):
        status, _, body = request(base, "/quality?weeks=8", cookie)
        assert status == 200
        page = html.unescape(body.decode())
        # the clinics' table: only the clinic clearly above all clinics' 12% is flagged
        table = page[page.index('<table class="quality-clinics">'):]
        table = table[:table.index("</table>")]
        rows = re.findall(r'<tr( class=flag)?><td><a href="/clinic/([^?"]+)[^>]*>.*?</tr>',
                          table)
        assert rows[0] == (" class=flag", "clinic-poor")
        assert [c for flag, c in rows if flag] == ["clinic-poor"]
        assert {c for _, c in rows} == {x[0] for x in FUNNEL_DISTRICT.values()}
        assert re.search(r'<tr><td><a href="/clinic/clinic-chance[^>]*>.*?title="95% interval '
                         r"8-42%: within chance of all clinics' 12%\">20% \(4\)</td>", table)
        assert re.search(r'<tr class=flag><td><a href="/clinic/clinic-poor[^>]*>.*?title="95% '
                         r"interval 20-43%: clearly above all clinics' 12%\">30% \(18\)</td>",
                         table)
        # the heatmap: a plane per clinic here, so the same judgement cell by cell
        svg = page[page.index('data-chart="quality"'):]
        cells = {c["data-plane"]: c for c in cells_drawn(svg[:svg.index("</svg>")])}
        lvot, hearts, heads = cells["LVOT"], cells["4CH"], cells["Brain (Tv.)"]
        assert lvot["fill"] == WITHIN and "data-above" not in lvot  # 20%: was ALARM
        assert lvot["title"].startswith("LVOT, week of ") and (
            "within chance of all clinics' 12%; 4 of 20 exams (20%) under 0.5, not captured "
            "(95% interval 8-42%)") in lvot["title"], lvot["title"]
        assert hearts["fill"] == ALARM[1] and hearts["data-above"] == "1"  # 30%
        assert "clearly above all clinics' 12%; 18 of 60 exams (30%)" in hearts["title"]
        assert heads["fill"] == WITHIN  # 9%: under the district's
        assert "The darker orange, the more often." in page  # one cell is orange
        assert "all are grey" not in page
        assert "Orange only where a share is clearly above all clinics' own 12% (its 95% " \
            "Wilson interval wholly above it, the limits of a funnel plot)" in page
        # the CSVs say the same, after the columns they had
        body = request(base, "/api/quality_clinics.csv?weeks=8", cookie)[2].decode()
        got = {r["clinic_id"]: r for r in csv.DictReader(io.StringIO(body))}
        assert list(got["clinic-poor"])[-6:] == [*FUNNEL, "district"]
        assert {c: r["above_compared"] for c, r in got.items()} == {
            "clinic-poor": "1", "clinic-chance": "0", "clinic-b1": "0", "clinic-b2": "0",
            "clinic-b3": "0"}
        # served to an admin not filtering: every clinic's share, and said so beside the
        # row's own `district` column (a walk read it as that district's)
        assert {r["compared_with"] for r in got.values()} == {"all clinics"}
        assert got["clinic-chance"]["compared_share"] == "0.12"
        # a clinic's own page judges it against its district, not against itself
        for clinic, flagged in (("clinic-poor", True), ("clinic-chance", False)):
            own = request(base, f"/clinic/{clinic}?weeks=8", cookie)[2].decode()
            own = own[own.index('<table class="quality-clinics">'):]
            assert own.startswith('<table class="quality-clinics"><tr><th>')
            assert ("<tr class=flag>" in own[:own.index("</table>")]) == flagged, clinic
        # hostile parameters on the page and its CSVs: one line naming the field, still
        for path in ("/quality?weeks=abc", "/quality?district=%3Cscript%3E",
                     "/quality?weeks=8&district=" + "d" * 500,
                     "/api/quality.csv?weeks=-1", "/api/quality_clinics.csv?weeks=1e9",
                     "/clinic/clinic-poor?weeks=%00"):
            status, _, body = request(base, path, cookie)
            assert status == 400, (path, body[:200])
            text = body.decode()
            said = (re.findall(r'<p class="warn">(.*?)</p>', text) if path[1] != "a"
                    else [json.loads(text)["error"]])
            assert len(said) == 1 and re.match(r"(weeks|district): ", said[0]), said
            assert "<script>" not in text and "Traceback" not in text and "\n" not in said[0]
    assert C.QUALITY_FUNNEL_CONFIDENCE == 0.95  # named, with its source, in config.py


def test_the_wilson_interval_is_the_textbook_one():
    """Against the worked values (Newcombe, Stat Med 1998;17:857-872, table I: 81 of 263,
    0.2553-0.3662; 15 of 148, 0.0624-0.1605; 0 of 20, 0-0.1611) and this file's own roots."""
    for k, n, low, high in ((81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                            (0, 20, 0.0, 0.1611)):
        assert Q.wilson_interval(k, n) == (pytest.approx(low, abs=1e-4),
                                           pytest.approx(high, abs=1e-4))
    for k, n in ((4, 20), (18, 60), (1, 10), (10, 10), (0, 1000)):
        assert Q.wilson_interval(k, n) == pytest.approx(wilson(k, n), abs=1e-9)
    assert not Q.above_chance(9, 9, 0.12)  # under C.QUALITY_CELL_MIN_EXAMS: never judged
    assert Q.wilson_interval(0, 0) == (0.0, 1.0)


def test_a_clinic_is_judged_against_its_own_district_whoever_looks(district):
    """An officer's walk of a seeded district: clinic-04's page flagged it orange for the
    admin ("clearly above the district's 12%": every clinic's share, 11.5%) and not for its
    district's viewer ("within chance of the district's 14%"). A clinic's page judges it
    against its own district's share for everyone; the admin's page of every district says
    whose share it is: all clinics'."""
    db, _ = district
    per = Q.period(26, now=END)
    everyone = Q.quality_page(db, Q.Scope(None), per)
    assert everyone.against == "all clinics'"
    assert f"clearly above all clinics' own {P.pct(everyone.district_share)}" in \
        P.funnel_rule(everyone)
    assert "the district's" not in P.quality_clinics_table(everyone)
    differ = 0
    for i, clinic in enumerate(clinic_ids(CLINICS)):
        home = district_of(i, CLINICS, DISTRICTS)
        own = Q.quality_page(db, Q.Scope(home), per)
        admin, viewer = (Q.quality_page(db, Q.Scope(d, clinic), per) for d in (None, home))
        [a], [v] = admin.clinics, viewer.clinics
        assert (a.above, a.district_share) == (v.above, v.district_share) == (
            a.above, own.district_share), clinic
        assert [c.above for c in admin.cells] == [c.above for c in viewer.cells], clinic
        table = P.quality_clinics_table(admin)
        assert f"the district's {P.pct(own.district_share)}" in html.unescape(table), clinic
        # the seed has clinics its district's share and every district's judge apart
        differ += Q.above_chance(a.below_capture, a.best_frames, everyone.district_share) \
            != a.above
    assert differ, "no clinic the two shares judge apart: the seed no longer tests this"
