"""A district with nothing to count in the period says so in words.

A district whose boxes sent their health but no exam in the period (new boxes, or clinics
closed) put its shares and counts in sentences about nothing: "0 measured exams; 0 of those
drawn outside the 3rd-97th centile", "0 exams.", and a share with nothing to take it of
reads "- of 0 exams" (a district health officer's report). Each page says "No exams in this
period." (or, on the biometry page, that no head was measured) and no page counts anything
out of zero. Real parts: the seeded district's boxes, the rollup and `sonoedge-central
serve` on a free loopback port.
"""

from __future__ import annotations

import html
import re
import time

import pytest

from central.dashboard import pages as P
from central.dashboard.seed import SeedSettings, seed
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import served

PAGES = ("clinics", "completeness", "quality", "biometry", "devices")
# a share or count of nothing: "- of 0 exams", "0 of those", "of 0"
OF_NOTHING = re.compile(r"(?<![\w%])-\s+of\b|\bof 0\b|\b0 of\b")


@pytest.fixture()
def district_without_exams(tmp_path):
    """Three clinics whose boxes sent health and status for 30 days, and no exam."""
    db = str(tmp_path / "central.sqlite3")
    made = seed(db, SeedSettings(clinics=3, districts=1, days=30, exams_per_clinic_day=0.0,
                                 end_ts=time.time()))
    assert made.exam == 0 and made.health > 0
    return db


def _text(page: str) -> str:
    """What a reader sees, hover titles included."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def test_a_district_without_exams_says_so_and_counts_nothing_out_of_zero(
        district_without_exams, tmp_path):
    with served(district_without_exams, tmp_path) as (base, cookie):
        text = {}
        for name in PAGES:
            status, _, body = request(base, f"/{name}?weeks=8", cookie)
            assert status == 200, name
            text[name] = _text(body.decode())
            assert not OF_NOTHING.search(text[name]), (
                name, OF_NOTHING.search(text[name]).group(0),
                text[name][max(0, OF_NOTHING.search(text[name]).start() - 200):][:400])
    assert "Clinic 2" in text["clinics"] and "box-02a" in text["devices"]  # boxes it has
    for name in ("completeness", "quality"):
        assert "No exams in this period." in text[name], (name, text[name][:1500])
    assert "No head measured in this period." in text["biometry"], text["biometry"][:1500]


def test_a_share_of_no_exams_is_said_in_words():
    assert P.share_of(None, 0) == "no exams in this period"
    assert P.share_of(0.25, 4) == "25% of 4 exams"
    assert P.share_of(1.0, 1) == "100% of 1 exam"
