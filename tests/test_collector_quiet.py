"""The district tells a stopped collector from silent boxes.

In the messages alone the two look the same: a collector stopped for three and a half days
made the devices page flag 9 of 11 boxes "silent 4 days ... may need a visit" and the
clinics page count the outage as silent weekdays, with nothing on any page to say the
collector itself had gone quiet (an officer's walk, 6 December). A subscribed collector
now marks itself alive in its database every `alive_every_s`; with no mark for
`COLLECTOR_QUIET_S` every page says so, and no box or clinic is counted silent after the
last mark. Real parts: Mosquitto, the collector as a process on SQLite and PostgreSQL, the
seeded district, the rollup and `sonoedge-central serve` on a free loopback port.
"""

from __future__ import annotations

import calendar
import csv
import io
import re
import time

import pytest

from central.dashboard import config as C
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.pages import WEEKEND, devices_table
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh
from central.dashboard.svg import BLUES, GREY
from central.db import Store
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import wait_for
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import served

postgres, pg_url, url, broker, collectors = (fx.postgres, fx.pg_url, fx.url, fx.broker,
                                             fx.collectors)  # fixtures
DAY = 86400.0


def _marks(db_url: str) -> dict[str, tuple[float, float]]:
    store = Store(db_url, create=False)
    try:
        return {c: (float(s), float(a)) for c, s, a in store.query(
            "SELECT client_id, subscribed_ts, alive_ts FROM collectors")}
    finally:
        store.close()


def test_a_subscribed_collector_marks_itself_alive_until_it_stops(broker, collectors,
                                                                  tmp_path, url):
    started = time.time()
    c = collectors(broker.url("central"), url, tmp_path, "central",
                   extra=("--alive-every-s", "1"))
    c.wait_subscribed()
    first = wait_for(lambda: _marks(url).get("central"), 15, "the first mark")
    assert started <= first[0] <= first[1] <= time.time()
    later = wait_for(lambda: (m := _marks(url)["central"])[1] >= first[1] + 1 and m, 15,
                     "a later mark")
    assert later[0] == first[0]  # the same subscription
    c.stop()
    stopped = _marks(url)["central"][1]
    time.sleep(2.5)
    assert _marks(url)["central"][1] == stopped


def test_the_collectors_mark_is_bounded_on_the_command_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.conftest_mqtt import py_env

    for bad in ("0", "nan", "301", "-5"):
        proc = subprocess.run(
            [sys.executable, "-m", "central.cli", "--mqtt-url", "mqtt://127.0.0.1:1",
             "--db", str(tmp_path / "c.sqlite3"), "--alive-every-s", bad],
            capture_output=True, text=True, env=py_env(), cwd=str(REPO), timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"sonoedge-central: --alive-every-s {float(bad)}: must be within 1-300 seconds"], \
            proc.stderr


@pytest.fixture()
def stopped_district(tmp_path):
    """Four clinics seeded for 60 days up to 3.4 days ago, when its collector stopped."""
    db = str(tmp_path / "central.sqlite3")
    stopped = time.time() - 3.4 * DAY
    seed(db, SeedSettings(clinics=4, districts=1, days=60, end_ts=stopped))
    return db, stopped


def test_a_stopped_collector_is_said_on_every_page_and_no_box_is_silent_after_it(
        stopped_district, tmp_path):
    db, stopped = stopped_district
    with served(db, tmp_path) as (base, cookie):
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(stopped))
        for name in ("clinics", "completeness", "quality", "biometry", "devices"):
            page = request(base, f"/{name}?weeks=8", cookie)[2].decode()
            banner = re.search(r'<p class="caveat quiet">(.*?)</p>', page)
            assert banner, (name, page[:1500])
            text = re.sub(r"<[^>]+>", "", banner.group(1))
            assert text.startswith(f"No collector has received anything since {stamp} UTC "
                                   "(3 days ago).")
            assert "start the collector before sending anyone to a clinic" in text

        devices = list(csv.DictReader(io.StringIO(
            request(base, "/api/devices.csv?weeks=8", cookie)[2].decode())))
        assert devices
        silent = {}
        for d in devices:
            # the CSV gives the minute: the box last spoke within the 60 s after it
            last = calendar.timegm(time.strptime(d["last_seen_utc"], "%Y-%m-%d %H:%M"))
            flag = [f for f in d["needs_a_visit"].split("; ") if f.startswith("silent")]
            # silent by the stop (True), not (False), or within that minute of the line
            was = (True if stopped - last > C.SILENT_AFTER_S + 60 else
                   False if stopped - last <= C.SILENT_AFTER_S else None)
            silent[d["device_id"]] = (was, flag)
        # a box is silent for what it had not sent by the time the collector stopped
        assert [dev for dev, (was, _) in silent.items() if was is False] != []
        for dev, (was, flag) in silent.items():
            assert was is None or bool(flag) == was, (dev, flag)
            assert all(f.endswith(" before the collector stopped") for f in flag)

        page = request(base, "/clinics?weeks=8", cookie)[2].decode()
        assert re.search(r"<strong>\d+</strong> sent nothing in the last 7 days before the "
                         r"collector stopped\.", page), page[:3000]
        stop_day = time.strftime("%Y-%m-%d", time.gmtime(stopped))
        after_stop = re.findall(r'<rect [^>]*fill="([^"]+)"[^>]*><title>[^<]* (\d{4}-\d\d-\d\d): '
                                r'([^<]*)</title>', page)
        # the days after the stop's: hatched, "not heard", never a silent day's grey
        unheard = [(fill, tip) for fill, day, tip in after_stop if day > stop_day]
        assert unheard and all(fill == "url(#not-heard)" for fill, _ in unheard), unheard[:5]
        assert {tip for _, tip in unheard} == {"not heard: the collector had stopped"}
        days = list(csv.DictReader(io.StringIO(
            request(base, "/api/clinics.csv?weeks=8", cookie)[2].decode())))
        quiet_day = time.strftime("%Y-%m-%d", time.gmtime(stopped))
        after = [d for d in days if d["day"] >= quiet_day]
        assert after and all(d["silent"] == "1" for d in after if d["day"] > quiet_day)
        assert not [d for d in after if d["silent_weekday"] == "1"]


def _legend(svg: str) -> dict[str, str]:
    """The plot's legend: each key's words and its swatch's fill."""
    return {label: fill for fill, label in re.findall(
        r'<rect [^>]*width="10" height="10" fill="([^"]+)"[^>]*></rect>\n'
        r'<text [^>]*>([^<]+)</text>', svg)}


def _day_fills(svg: str) -> dict[str, set[str]]:
    """The fills of the daily cells, by what their hover says of the day."""
    out: dict[str, set[str]] = {}
    for fill, tip in re.findall(r'<rect [^>]*fill="([^"]+)"[^>]*data-day="[^"]+"[^>]*>'
                                r'<title>[^<]* \d{4}-\d\d-\d\d: ([^<;,]*)', svg):
        out.setdefault(tip, set()).add(fill)
    return out


def test_days_not_heard_look_unlike_a_day_without_exams_and_the_legend_names_them(
        stopped_district):
    """After the collector stopped, the days the district could not hear were drawn white
    with a 0-exam day's outline, and the legend had no key for them: they read as days
    every clinic scanned no one (a district health officer's report). They are hatched, a
    texture rather than a colour (it prints, and needs no colour vision), and the legend
    names them, on a plot that has them only."""
    db, _ = stopped_district
    dash = open_db(db)
    try:
        refresh(dash)
        stopped_svg = P.clinics_svg(Q.clinics_page(dash, Q.Scope(None), Q.period(8)))
        store = Store(db)
        try:  # a collector back: every day was heard
            store.mark_alive("central", time.time(), time.time())
        finally:
            store.close()
        heard_svg = P.clinics_svg(Q.clinics_page(dash, Q.Scope(None), Q.period(8)))
    finally:
        dash.close()

    fills, legend = _day_fills(stopped_svg), _legend(stopped_svg)
    (not_heard,) = fills["not heard: the collector had stopped"]
    assert legend["0 exams"] == "#fff" and not_heard != "#fff"
    assert not_heard not in fills.get("0 exams", set()) | {GREY, WEEKEND, *BLUES}
    keys = [k for k in legend if k.startswith("not heard")]
    assert keys == ["not heard: the collector had stopped"] and legend[keys[0]] == not_heard
    # the fill is a pattern of lines drawn in the plot itself
    pattern = re.fullmatch(r"url\(#([\w-]+)\)", not_heard)
    assert pattern, not_heard
    defs = re.search(rf'<pattern [^>]*id="{pattern.group(1)}"[^>]*>(.*?)</pattern>',
                     stopped_svg, re.S)
    assert defs and "<line " in defs.group(1), stopped_svg[:2000]

    assert "not heard" not in heard_svg and "<pattern" not in heard_svg
    assert not any(k.startswith("not heard") for k in _legend(heard_svg))


def test_once_a_collector_marks_itself_again_the_silence_counts_to_now(stopped_district):
    db, stopped = stopped_district
    store = Store(db)
    try:  # a collector back (the first test shows a real one marks itself so)
        store.mark_alive("central", time.time(), time.time())
    finally:
        store.close()
    dash = open_db(db)
    try:
        refresh(dash)
        assert Q.collectors_quiet_since(dash) is None
        rows = Q.devices_page(dash, Q.Scope(None), Q.period(8))
        now = time.time()
        # every box spoke last before the stop, 3.4 days ago: each is silent, counted to
        # now, and none "before the collector stopped"
        assert rows
        for d in rows:
            silences = [f for f in d.flags if f.startswith("silent")]
            days = (now - d.last_seen) / DAY
            said = re.fullmatch(  # "over 3 days" just past the line (Q.silence_text)
                r"silent (over )?(\d+) days( \(its link still says online: restart it\))?",
                silences[0])
            assert len(silences) == 1 and said, d.flags
            assert abs(int(said.group(2)) - days) <= 0.51, (d.flags, days)
    finally:
        dash.close()


def test_a_district_no_collector_ever_marked_says_nothing_of_its_collector(tmp_path):
    """A collector older than its mark: the pages cannot tell, and do not guess."""
    db = str(tmp_path / "central.sqlite3")
    seed(db, SeedSettings(clinics=4, districts=1, days=10, end_ts=time.time() - 5 * DAY))
    store = Store(db)
    try:
        store.conn.execute("DELETE FROM collectors")
        store.conn.commit()
    finally:
        store.close()
    dash = open_db(db)
    try:
        refresh(dash)
        assert Q.collector_alive(dash) is None and Q.collectors_quiet_since(dash) is None
        rows = Q.devices_page(dash, Q.Scope(None), Q.period(8))
        # every box spoke last before the seed's end, five days ago, so each is silent
        # that long or longer (some were switched off before), counted to now
        silences = [f for d in rows for f in d.flags if f.startswith("silent")]
        assert rows and len(silences) == len(rows), [d.flags for d in rows]
        assert all(re.fullmatch(r"silent ([5-9]|1[0-5]) days( \(its link still says online: "
                                r"restart it\))?", f) for f in silences), silences
    finally:
        dash.close()


def test_the_quiet_threshold_is_many_marks_long():
    from central.collector import CollectorSettings

    assert C.COLLECTOR_QUIET_S >= 10 * CollectorSettings.alive_every_s


def test_a_box_online_but_silent_for_hours_is_flagged_not_green(tmp_path):
    """Its uplink last said "online" (a box that goes away says "offline", or the broker
    says it for it) and it sent nothing for 39 h: connected with its program stuck. The
    devices page showed a green "online" beside "last seen 39 h ago" (an officer's walk)."""
    from tests.test_age_by_dates_district import _stored
    from tests.test_central import message

    db = str(tmp_path / "central.sqlite3")
    health = message("health", seq=1)
    assert health["interval_s"] > 0
    _stored(db, [message("status", seq=1, state="online"), health])
    dash = open_db(db)
    try:
        def flags(hours: float) -> list[str]:
            (row,) = Q.devices_page(dash, Q.Scope(None), Q.period(8),
                                    now=time.time() + hours * 3600)
            return [f for f in row.flags if f.startswith("online")]

        assert flags(1.5) == []  # within the 2 h: a health message may be on its way
        assert flags(39) == ["online but silent 39 h: restart it"]
        later = time.time() + 39 * 3600
        table = devices_table(Q.devices_page(dash, Q.Scope(None), Q.period(8), now=later),
                              later)
        assert '<td class="stuck">online<br>' in table and 'class="online"' not in table
    finally:
        dash.close()


def test_a_collector_stopped_under_an_hour_ago_is_said_in_minutes():
    from central.dashboard.server import _quiet

    assert "(20 min ago)" in _quiet(time.time() - 1200)  # it said "(0 h ago)"
    assert "(2 h ago)" in _quiet(time.time() - 2 * 3600)
    assert _quiet(None) == ""


def test_weeks_after_the_collector_stopped_are_hatched_on_the_weekly_plot(tmp_path):
    """The 26-week plot drew a week after the stop white, a week of 0 exams (as the daily
    plot did); the weeks that began after it are hatched, and the legend names them."""
    db = str(tmp_path / "central.sqlite3")
    stopped = time.time() - 16 * DAY  # at least one whole week since
    seed(db, SeedSettings(clinics=3, districts=1, days=80, end_ts=stopped))
    dash = open_db(db)
    try:
        refresh(dash)
        page = Q.clinics_page(dash, Q.Scope(None), Q.period(26))
        svg = P.clinics_svg(page)
    finally:
        dash.close()
    legend = _legend(svg)
    hatch = legend.get("not heard: the collector had stopped")
    assert hatch and hatch.startswith("url(#"), legend
    (path,) = re.findall(rf'<path fill="{re.escape(hatch)}"[^>]* d="([^"]+)"', svg)
    weeks = range(page.period.first_week, page.period.last_week + 1)
    weeks_after = [w for w in weeks if w * 7 - 3 > page.quiet_day]  # nothing heard in them
    assert len(weeks_after) >= 1 and len(page.clinics) == 3
    # a week that began the day the collector stopped (a Monday) is hatched too where no
    # box of the clinic spoke before the stop; one that did was heard that week (the test
    # counted it as after the stop, and failed on Wednesdays from 8 in the morning UTC)
    on_stop_day = [w for w in weeks if w * 7 - 3 == page.quiet_day]
    unheard_then = [c for c in page.clinics for w in on_stop_day
                    if all(page.cells[(c, d)].silent for d in range(w * 7 - 3, w * 7 + 4)
                           if (c, d) in page.cells)]
    # a box per clinic and week after the stop
    assert path.count("z") == 3 * len(weeks_after) + len(unheard_then)
    assert legend["0 exams a week"] == "#fff"
