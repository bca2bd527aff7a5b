"""The quality plot is readable at every period: its week dates never run into each
other, and the drawing is as wide as its legend. At 8 weeks (the period the menu's links
carry) the cells were 22 px under 55 px dates, which ran into one smear, and the 296 px
drawing cut its own legend off at "0.5" (an officer's walk, 6 December). Its legend, the
failure-rate scale and the "too few to judge" key, fits too. Real parts: the seeded
district and its rollup."""

from __future__ import annotations

import re
import time

import pytest

from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh
from central.dashboard.svg import legend_width, text_width

DATE_PX = 6.2 * len("2026-10-12") * 10 / 11  # the pages' width per character, at 10 px


@pytest.fixture(scope="module")
def district(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("quality") / "central.sqlite3")
    seed(db, SeedSettings(clinics=3, districts=1, days=120, end_ts=time.time()))
    dash = open_db(db)
    refresh(dash)
    yield dash
    dash.close()


@pytest.mark.parametrize("weeks", [8, 26, 52, 104])
def test_the_week_dates_never_overlap_and_the_legend_fits(district, weeks):
    page = Q.quality_page(district, Q.Scope(None), Q.period(weeks))
    svg = P.quality_svg(page)
    drawn = [k for _, k in P.failed_keys_drawn(page)]  # the classes a cell can take
    width = float(re.search(r'<svg [^>]*width="(\d+)"', svg).group(1))
    dates = [float(x) for x, _ in re.findall(
        r'<text x="([\d.]+)" y="22"[^>]*>(\d{4}-\d\d-\d\d)</text>', svg)]
    assert "no exams in this period" not in svg
    assert len(dates) >= min(weeks, 4)
    assert min(b - a for a, b in zip(dates, dates[1:], strict=False)) >= DATE_PX
    if weeks == 8:
        assert len(dates) == 8  # the menu's period: every week named
    assert dates[-1] + DATE_PX <= width
    labels = drawn + [P.TOO_FEW, P.NOT_FOUND]
    keys = re.findall(r'<text x="([\d.]+)" y="\d+"[^>]*>([^<]*)</text>', svg)
    shown = [(float(x), k) for x, k in keys if k in labels]
    assert [k for _, k in shown] == labels
    for x, k in shown:  # every key's words inside the drawing
        assert x + text_width(k) <= width, k
    assert width >= 100 + legend_width([("", k) for k in drawn], measured=True)
