"""The pages count time by the collector's clock, and say so when this server's differs.

The collector stamps every arrival with its own clock, and the pages compared those stamps
with their own server's. A dashboard on another host whose clock ran 30 minutes ahead of
the collector's said on every page "No collector has received anything since ..." while
the collector ran, and counted each box 30 minutes more silent than it was. At each mark
the collector now keeps how far its clock is from the database server's; the dashboard
measures its own distance from that same clock, counts time by the collector's clock where
the two differ by more than `COLLECTOR_CLOCK_SKEW_S`, and says so above every page. Real
parts: Mosquitto, the collector as a process on SQLite and PostgreSQL, the seeded
district, the rollup and `sonoedge-central serve` on a free loopback port.
"""

from __future__ import annotations

import re
import time

from central.dashboard import config as C
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh
from central.db import Store
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import wait_for
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import served

postgres, pg_url, url, broker, collectors = (fx.postgres, fx.pg_url, fx.url, fx.broker,
                                             fx.collectors)  # fixtures
PAGES = ("clinics", "completeness", "quality", "biometry", "devices")


def _clock_rows(db_url: str) -> dict[str, float]:
    store = Store(db_url, create=False)
    try:
        return {c: float(a) for c, a in store.query(
            "SELECT client_id, ahead_s FROM collector_clocks")}
    finally:
        store.close()


def _caveats(page: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", m) for m in
            re.findall(r'<p class="caveat (?:quiet|clock)">(.*?)</p>', page, re.S)]


def test_a_running_collector_keeps_its_clock_beside_the_databases_and_no_page_warns(
        broker, collectors, tmp_path, url):
    c = collectors(broker.url("central"), url, tmp_path, "central",
                   extra=("--alive-every-s", "1"))
    c.wait_subscribed()
    ahead = wait_for(lambda: _clock_rows(url).get("central"), 15, "the collector's clock")
    # one host's clock against the database server's on the same host: no gap to speak of
    assert abs(ahead) < 5.0, ahead
    dash = open_db(url)
    try:
        refresh(dash)
        behind = Q.collector_clock_behind_s(dash)
        assert behind is not None and abs(behind) < 5.0, behind
    finally:
        dash.close()
    with served(url, tmp_path) as (base, cookie):
        for name in PAGES:
            page = request(base, f"/{name}?weeks=8", cookie)[2].decode()
            assert _caveats(page) == [], (name, _caveats(page))
    c.stop()


def test_a_collector_whose_clock_is_half_an_hour_behind_is_not_taken_for_stopped(tmp_path,
                                                                                url):
    """This server's clock 30 min ahead of the collector's, as on another host: the
    collector marked itself alive a moment ago by its clock, which this server reads as 30
    min ago, past the quarter hour after which the pages say no collector runs."""
    behind = 1800.0
    seed(url, SeedSettings(clinics=3, districts=1, days=20, end_ts=time.time() - behind))
    store = Store(url)
    try:  # what the collector writes at its mark, by its own clock
        store.mark_alive("central", time.time() - behind - 3600, time.time() - behind,
                         its_clock=True)
    finally:
        store.close()
    assert abs(_clock_rows(url)["central"] + behind) < 5.0
    dash = open_db(url)
    try:
        refresh(dash)
        measured = Q.collector_clock_behind_s(dash)
        assert abs(measured - behind) < 5.0, measured
        Q.set_collector_clock(measured)
        try:
            assert abs(Q.district_now() - (time.time() - behind)) < 5.0
            assert Q.collectors_quiet_since(dash) is None
            for d in Q.devices_page(dash, Q.Scope(None), Q.period(8)):
                # each box's silence counted by the collector's clock: its last message
                # was received at most a day before the seed's end, and none is reported
                # silent "before the collector stopped"
                assert not any("collector stopped" in f for f in d.flags), d.flags
        finally:
            Q.set_collector_clock(None)
    finally:
        dash.close()
    with served(url, tmp_path) as (base, cookie):
        for name in PAGES:
            page = request(base, f"/{name}?weeks=8", cookie)[2].decode()
            said = _caveats(page)
            assert len(said) == 1, (name, said)
            assert said[0].startswith("This server's clock is 30 min ahead of the "
                                      "collector's"), said
            assert "No collector has received anything" not in page


def test_a_seeded_district_has_no_collector_clock_and_counts_by_this_servers(tmp_path):
    """A seed (or a collector older than the clock's table) marks itself alive with a
    made-up time: no clock is kept for it, and the pages count by their own."""
    db = str(tmp_path / "central.sqlite3")
    seed(db, SeedSettings(clinics=2, districts=1, days=10, end_ts=time.time() - 3600))
    dash = open_db(db)
    try:
        refresh(dash)
        assert Q.collector_clock_behind_s(dash) is None
    finally:
        dash.close()


def test_a_clock_row_no_clock_could_write_is_ignored(tmp_path):
    db = str(tmp_path / "central.sqlite3")
    seed(db, SeedSettings(clinics=2, districts=1, days=10, end_ts=time.time() - 3600))
    store = Store(db)
    try:
        store.mark_alive("central", time.time() - 60, time.time(), its_clock=True)
        for bad in (1e300, -1e300, "soon", 5e9):
            store.conn.execute("UPDATE collector_clocks SET ahead_s = ?", (bad,))
            store.conn.commit()
            dash = open_db(db)
            try:
                assert Q.collector_clock_behind_s(dash) is None, bad
            finally:
                dash.close()
    finally:
        store.close()


def test_the_skew_the_pages_correct_is_more_than_network_jitter():
    assert 10.0 <= C.COLLECTOR_CLOCK_SKEW_S <= C.COLLECTOR_QUIET_S / 5
