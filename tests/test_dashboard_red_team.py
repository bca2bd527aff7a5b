"""District dashboard, red-team review: what one box or a scanner could do to the pages.

1. A box names its exams' deficiencies as it likes (the wire allows any ^[a-z_]{1,24}$): one
   box's 5,000 exams with four made-up names each grew the quality page from 6.7 kB to
   10.8 MB and 20,000 bars, sent to every officer of the district. Names the dashboard does
   not know are now counted as one "other", in the rollup, on the page and in the CSV.
2. "Online but silent" waited a flat 2 h: the rollup never kept the health message's
   `interval_s`, so the "3 of its health intervals" rule never applied, and a box sending
   health hourly was told to restart after 2 h.
3. An empty time in devices.csv read "'-": the formula guard quoted the placeholder.
4. Every answer named the server's software ("Python/3.11 aiohttp/3.14.5"), which the
   device's page already keeps to itself.

Real parts: the collector's own check of each payload, the store, the rollup, the page and
CSV functions, and `sonoedge-central serve` on a free loopback port.
"""

from __future__ import annotations

import csv
import io
import random
import time

from central.dashboard import config as C
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard import store
from central.dashboard.store import open_db
from central.dashboard.svg import text_width
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import _refresh, _stored, served
from tests.test_central import message


# -- 1. deficiency names the dashboard does not know --------------------------------------------
def _made_up_names(rng: random.Random, n: int) -> dict[str, int]:
    return {"".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(24)): 2
            for _ in range(n)}


def _week_deficiencies(path: str) -> dict[str, tuple[int, int]]:
    db = open_db(path)
    try:
        return {name: (int(e), int(f)) for name, e, f in db.query(
            "SELECT name, SUM(exams), SUM(frames) FROM dash.week_deficiency GROUP BY name")}
    finally:
        db.close()


def test_deficiency_names_the_dashboard_does_not_know_are_one_other_row_everywhere(tmp_path):
    """60 exams of one box, each naming four criteria no device's catalogue has (2 frames
    each), and 3 exams naming "zoom", one of them with a made-up name beside it: the rollup,
    the page and the CSV have "zoom" and one "other" row, 61 exams listing it (an exam once,
    however many such names it gave), whatever the box sends."""
    rng = random.Random(1)
    path = str(tmp_path / "central.sqlite3")
    exams = [message("exam", seq=i + 1, deficiencies=_made_up_names(rng, 4))
             for i in range(60)]
    exams += [message("exam", seq=61, deficiencies={"zoom": 5}),
              message("exam", seq=62, deficiencies={"zoom": 7}),
              message("exam", seq=63, deficiencies={"zoom": 1, **_made_up_names(rng, 1)})]
    _stored(path, exams)
    rolled_up = _week_deficiencies(path)
    assert len(rolled_up) == 2, sorted(rolled_up)[:4]  # "zoom" and one row for 241 names
    assert rolled_up == {"zoom": (3, 13), C.DEFICIENCY_OTHER: (61, 60 * 4 * 2 + 2)}
    with served(path, tmp_path) as (base, cookie):
        status, _, body = request(base, "/quality?weeks=8", cookie)
        assert status == 200
        page = body.decode()
        chart = page[page.index('data-chart="deficiencies"'):]
        chart = chart[:chart.index("</svg>")]
        assert chart.count("data-name=") == 2  # two bars, not a bar for each of 242 names
        assert ">Head too small on the screen<" in chart
        assert f">{C.DEFICIENCY_OTHER_LABEL}<" in chart and C.DEFICIENCY_OTHER_WORDS in chart
        assert len(body) < 16_000  # 5.9 kB; with a bar per name it was 134 kB
        status, _, body = request(base, "/api/deficiencies.csv?weeks=8", cookie)
        rows = {r["criterion"]: (r["exams_listing_it"], r["frames_failing"], r["words"])
                for r in csv.DictReader(io.StringIO(body.decode()))}
        assert rows == {"zoom": ("3", "13", "Head too small on the screen"),
                        C.DEFICIENCY_OTHER: ("61", "482", C.DEFICIENCY_OTHER_WORDS)}


def test_the_other_rows_name_is_no_wire_name_and_its_label_fits_the_chart():
    import re

    from wire.schema import load_schema

    pattern = load_schema("exam")["properties"]["deficiencies"]["propertyNames"]["pattern"]
    assert not re.match(pattern, C.DEFICIENCY_OTHER)  # a box cannot send it as a name
    assert C.DEFICIENCY_OTHER not in C.DEFICIENCY_WORDS
    # hbars' label column (pages.deficiencies_svg: label_w 220, right edge 6 px before it)
    assert text_width(C.DEFICIENCY_OTHER_LABEL) <= 220 - 6
    assert all(text_width(words) <= 220 - 6 for words in C.DEFICIENCY_WORDS.values())


def test_the_names_the_dashboard_knows_are_the_devices_criteria():
    """A criterion the device judges but the dashboard does not know would be counted as
    "other": the catalogue and the dashboard's words name the same criteria."""
    import tomllib

    from tests.conftest import REPO

    rules = tomllib.loads((REPO / "edge" / "models" / "quality_rules.toml").read_text())
    assert set(C.DEFICIENCY_WORDS) == set(rules["criteria"])


def test_a_rollup_that_kept_every_made_up_name_is_rebuilt(tmp_path):
    """Rollup schema 15 kept a row per name a box sent: the new version drops and rebuilds
    the rollups from the stored messages, so an existing district loses those rows too."""
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [message("exam", seq=1, deficiencies={"made_up": 4, "zoom": 1})])
    db = open_db(path)
    try:
        with db.tx():  # as schema 15 had made it
            db.execute("DELETE FROM dash.week_deficiency")
            db.execute("INSERT INTO dash.week_deficiency (clinic_id, week, name, exams, frames) "
                       "SELECT clinic_id, week, 'made_up', 1, 4 FROM dash.week_plane LIMIT 1")
            db.execute("UPDATE dash.meta SET value = '15' WHERE key = 'schema'")
    finally:
        db.close()
    _refresh(path)
    assert store.SCHEMA_VERSION != "15"
    assert _week_deficiencies(path) == {"zoom": (1, 1), C.DEFICIENCY_OTHER: (1, 4)}


# -- 2. online but silent: the box's own health interval ----------------------------------------
def test_online_but_silent_waits_three_of_the_boxs_health_intervals(tmp_path):
    """Both boxes said "online" and sent one health message. dev-a sends health hourly: 2.5 h
    without a word is two intervals and a half, no reason to restart it; after 3 intervals
    (3 h) it is flagged. dev-b sends every 5 minutes: flagged after the rule's floor, 2 h
    (3 of its intervals would be 15 min, under it)."""
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [message("status", device="dev-a", seq=1, state="online"),
                   message("health", device="dev-a", seq=1, interval_s=3600.0),
                   message("status", device="dev-b", seq=1, state="online"),
                   message("health", device="dev-b", seq=1, interval_s=300.0)])
    assert C.ONLINE_SILENT_INTERVALS == 3 and C.ONLINE_SILENT_MIN_S == 2 * 3600.0
    db = open_db(path)
    try:
        def stuck(hours: float) -> dict[str, bool]:
            rows = Q.devices_page(db, Q.Scope(None), Q.period(8),
                                  now=time.time() + hours * 3600)
            return {r.device_id: any(f.startswith("online but silent") for f in r.flags)
                    for r in rows}

        assert stuck(1.9) == {"dev-a": False, "dev-b": False}  # under the 2 h floor
        assert stuck(2.1) == {"dev-a": False, "dev-b": True}
        assert stuck(2.5) == {"dev-a": False, "dev-b": True}
        assert stuck(2.9) == {"dev-a": False, "dev-b": True}
        assert stuck(3.1) == {"dev-a": True, "dev-b": True}
        (row,) = [r for r in Q.devices_page(db, Q.Scope(None), Q.period(8),
                                           now=time.time() + 3.2 * 3600)
                  if r.device_id == "dev-a"]
        assert "online but silent 3 h: restart it" in row.flags
        assert {r.device_id: r.health_interval_s for r in Q.devices_page(
            db, Q.Scope(None), Q.period(8))} == {"dev-a": 3600.0, "dev-b": 300.0}
    finally:
        db.close()


# -- 3. an empty time in devices.csv ------------------------------------------------------------
def test_an_empty_time_in_the_devices_csv_reads_a_plain_dash(tmp_path):
    """A box that sent health but no status yet: its uplink has no "since"."""
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [message("health", device="dev-a", seq=1)])
    db = open_db(path)
    try:
        text = P.devices_csv(Q.devices_page(db, Q.Scope(None), Q.period(8)))
    finally:
        db.close()
    (row,) = csv.DictReader(io.StringIO(text))
    assert (row["uplink"], row["uplink_since_utc"]) == ("", "-")
    assert row["last_seen_utc"][:2] == "20"


def test_the_formula_guard_still_quotes_every_cell_that_starts_a_formula():
    cells = ["-", "-1", "--", "-=1", "- ", "=1", "+1", "@SUM(A1)", "\t=1", "\r=1", "a-b", ""]
    text = P.to_csv(["cell"], [[c] for c in cells])
    got = [row[0] for row in csv.reader(io.StringIO(text, newline=""))][1:]
    assert got == ["-", "'-1", "'--", "'-=1", "'- ", "'=1", "'+1", "'@SUM(A1)", "'\t=1",
                   "'\n=1", "a-b", ""]


# -- 4. the server's software ---------------------------------------------------------------------
def test_no_answer_names_the_servers_software(tmp_path):
    """As on the device's page (tests/test_web_security_s19.py). aiohttp's own 400 to a
    request it cannot parse is made before the app sees it: tests.http_raw checks it names
    no version either."""
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [message("health", device="dev-a", seq=1)])
    with served(path, tmp_path) as (base, cookie):
        for where, who in (("/", ""), ("/login", ""), ("/static/dash.css", ""),
                           ("/nothing", ""), ("/api/nothing", cookie), ("/devices", cookie),
                           ("/quality?weeks=8", cookie), ("/api/devices.csv", cookie)):
            status, headers, _ = request(base, where, who)
            assert status in (200, 303, 404), (where, status)
            assert "server" not in headers, (where, headers.get("server"))
