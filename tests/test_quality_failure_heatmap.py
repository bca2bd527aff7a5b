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

Real parts: the seeded district on SQLite and its rollup (the expected counts come from the
stored messages, not from the rollup), and `sonoedge-central serve` with exams checked by
the collector for the officer's own cases.
"""

from __future__ import annotations

import calendar
import csv
import io
import re
from collections import Counter

import pytest

from central import collector
from central.dashboard import config as C
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, clinic_ids, district_of, seed
from central.dashboard.store import exam_day_of, open_db, refresh, week_of
from central.db import Row, Store
from tests.dashboard_harness import messages, request, standing_exams
from tests.test_age_by_dates_district import served
from tests.test_central import encode, message

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
    colours = Counter()
    for c in cells:
        exams, below = want[(c["data-plane"], week_of_text(c["data-week"]))]
        assert int(c["data-exams"]) == exams
        if exams >= MIN_EXAMS:
            assert c["fill"] == colour_of(exams, below), c
            assert (c["fill"] in ALARM) == (round(100 * below / exams) >= 20)
        assert int(c["data-below"]) == below
        assert float(c["data-share"]) == pytest.approx(below / exams, abs=1e-4)
        if exams < MIN_EXAMS:
            continue
        assert f"{below} of {exams} exams ({round(100 * below / exams)}%) under 0.5" \
            in c["title"], c["title"]
        assert "mean best-frame quality" in c["title"]  # the mean stays, in words
        colours[c["fill"]] += 1
    # the officer's district over 8 weeks took two colours by its mean; by its failures
    # it spreads over the scale
    assert len(colours) >= 4, colours
    # a sequential scale: each class darker than the one before
    assert [luminance(x) for x in ORANGES] == sorted((luminance(x) for x in ORANGES),
                                                    reverse=True)


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
    texts = re.findall(r"<text [^>]*>([^<]*)</text>", svg)
    assert "Share of exams with the plane's best frame under 0.5 (not captured):" in [
        t.replace("&#x27;", "'") for t in texts]
    words = ["under 5%", "5-10%", "10-15%", "15-20%", "20-30%", "30% or more",
             f"fewer than {MIN_EXAMS} exams: too few to judge"]
    assert [t for t in texts if t in words] == words
    # each key's swatch is its class's colour, just before its words
    swatches = {(float(a["x"]), float(a["y"])): a["fill"] for a in
                (_attrs(r) for r in re.findall(r'<rect ([^>]*width="10" height="10"[^>]*)>',
                                               svg))}
    keys = {t: (float(x), float(y)) for x, y, t in
            re.findall(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)</text>', svg)
            if t in words}
    assert [swatches[(keys[w][0] - 14, keys[w][1] - 9)] for w in words] == [
        *ORANGES, "url(#too-few)"]
    assert "<title>Share of exams with the best frame under 0.5, per plane and week" in svg


def test_the_csv_keeps_its_columns_first_and_adds_the_share_after(district):
    db, sent = district
    per = Q.period(26, END)
    body = P.quality_csv(Q.quality_page(db, Q.Scope("district-1"), per))
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0][:5] == OLD_COLUMNS  # scripts read them by position
    assert rows[0][5:] == ["share_below_0.5", "too_few_to_judge"]
    want = expected(sent, "district-1", per)
    assert len(rows) - 1 == len(want)
    for plane, week, exams, mean, below, share, few in rows[1:]:
        assert (int(exams), int(below)) == want[(plane, week_of_text(week))]
        assert 0 < float(mean) <= 1
        assert float(share) == round(int(below) / int(exams), 4)
        assert few == str(int(int(exams) < MIN_EXAMS))


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
    """This week: heads found 20 times, 6 under 0.5 and the rest near perfect (mean 0.81, the
    old page's best blue); hearts 20 times, all at 0.55 (mean 0.55, none failed); LVOT 4
    times, 3 under 0.5 (mean 0.48: the old page's only orange)."""
    db = str(tmp_path / "central.sqlite3")
    rows = []
    for i in range(20):
        planes = {"Brain (Tv.)": [10, 0.9, 0.45 if i < 6 else 0.97], "4CH": [6, 0.8, 0.55]}
        if i < 4:
            planes["LVOT"] = [5, 0.8, 0.4 if i < 3 else 0.72]
        rows.append(_exam(i + 1, planes))
    store = Store(db)
    try:
        assert store.store(rows, []) == (20, 0)
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
        assert "6 of 20 exams (30%) under 0.5" in heads["title"]
        assert "mean best-frame quality 0.81" in heads["title"]
        assert hearts["fill"] == ORANGES[0]  # none failed, however low the mean
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
        assert got[0] == [*OLD_COLUMNS, "share_below_0.5", "too_few_to_judge"]
        by_plane = {r[0]: r[2:] for r in got[1:]}
        assert by_plane["Brain (Tv.)"] == ["20", "0.814", "6", "0.3", "0"]
        assert by_plane["4CH"] == ["20", "0.55", "0", "0.0", "0"]
        assert by_plane["LVOT"] == ["4", "0.48", "3", "0.75", "1"]
