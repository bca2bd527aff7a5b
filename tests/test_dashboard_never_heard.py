"""The devices page lists the boxes the district provisioned and never heard from.

A box in the registry that never connected (a wrong broker password or address, a box
never switched on) sent nothing, so no page showed it: the officer could not tell a
clinic's box was never set up (the last note's leftover; `report --registry` lists them
since af22ebb). The collector now keeps the registry it reads in its database, with since
when each box is listed, and the devices page and its CSV list each such box under its
clinic, flagged. Real parts: Mosquitto, the collector as a process with `--registry`, on
SQLite and PostgreSQL, `sonoedge-central districts`, and `sonoedge-central serve`.
"""

from __future__ import annotations

import csv
import io
import os
import time

from central.dashboard import auth
from central.dashboard.store import open_db, refresh
from central.db import Store
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import wait_for
from tests.dashboard_harness import ADMIN, VIEWER, central, dashboard, login, request
from tests.test_central import message, row

postgres, pg_url, url, broker, collectors = (fx.postgres, fx.pg_url, fx.url, fx.broker,
                                             fx.collectors)  # fixtures
NEVER = "never heard from (in the registry, listed "


def _registry(db_url: str) -> dict[str, tuple[str, float]]:
    store = Store(db_url, create=False)
    try:
        if not store.has_table("registry"):
            return {}
        return {d: (c, float(t)) for d, c, t in store.query(
            "SELECT device_id, clinic_id, listed_ts FROM registry")}
    finally:
        store.close()


def test_a_registered_box_never_heard_from_is_flagged_on_the_devices_page(
        broker, collectors, tmp_path, url):
    store = Store(url)
    try:
        store.store([row(message("exam", seq=1))], [])  # dev-a, of clinic-1, has sent
    finally:
        store.close()
    registry = tmp_path / "devices.csv"
    registry.write_text("# device,clinic\ndev-a,clinic-1\ndev-z,clinic-1\ndev-s,clinic-2\n")
    started = time.time()
    c = collectors(broker.url("central"), url, tmp_path, "central",
                   extra=("--registry", str(registry), "--alive-every-s", "1"))
    c.wait_subscribed()
    listed = wait_for(lambda: r if len(r := _registry(url)) == 3 else None, 20,
                      "the registry in the collector's database")
    assert {d: v[0] for d, v in listed.items()} == {
        "dev-a": "clinic-1", "dev-z": "clinic-1", "dev-s": "clinic-2"}
    assert all(started <= v[1] <= time.time() for v in listed.values())

    places = tmp_path / "districts.csv"
    places.write_text("clinic-1,district-n,Kibera\nclinic-2,district-s,Mbale\n")
    assert central("districts", str(places), "--db", url).returncode == 0
    db = open_db(url)
    try:
        refresh(db)
        auth.add_user(db, ADMIN[0], "admin", "", ADMIN[1])
        auth.add_user(db, VIEWER[0], "viewer", "district-n", VIEWER[1])
    finally:
        db.close()
    with dashboard(url, tmp_path) as base:
        admin, viewer = login(base, ADMIN), login(base, VIEWER)
        rows = {d["device_id"]: d for d in csv.DictReader(io.StringIO(
            request(base, "/api/devices.csv?weeks=8", admin)[2].decode()))}
        assert set(rows) == {"dev-a", "dev-z", "dev-s"}
        for dev, clinic in (("dev-z", "clinic-1"), ("dev-s", "clinic-2")):
            assert rows[dev]["clinic_id"] == clinic and rows[dev]["last_seen_utc"] == "-"
            # nothing is known of it: no figure says 0 messages missing or 0 dead letters
            assert rows[dev]["messages_missing"] == rows[dev]["dead_letters"] == "", rows[dev]
            assert rows[dev]["needs_a_visit"] == (
                NEVER + "0 min ago): check its broker password and URL"), rows[dev]
        assert "never heard" not in rows["dev-a"]["needs_a_visit"]

        page = request(base, "/devices?weeks=8", admin)[2].decode()
        assert page.count("never heard from (in the registry") == 2
        # dev-a too: its one message is from long ago
        assert ("<strong>3</strong> may need a visit (listed in the district's registry and "
                "never heard from, silent over 3 days") in page
        # a district's viewer sees her own district's box, not the other district's
        page = request(base, "/devices?weeks=8", viewer)[2].decode()
        assert 'data-device="dev-z"' in page and 'data-device="dev-s"' not in page
        assert page.count("never heard from (in the registry") == 1

    # the registry edited while the collector runs: dev-z taken out, dev-s moved; the
    # database follows, and a box listed before keeps since when it is listed
    registry.write_text("dev-a,clinic-1\ndev-s,clinic-1\n")
    os.utime(registry, (time.time() + 5, time.time() + 5))  # a new mtime, however coarse
    now = wait_for(lambda: r if len(r := _registry(url)) == 2 else None, 20,
                   "the edited registry in the database")
    assert now == {"dev-a": listed["dev-a"], "dev-s": ("clinic-1", listed["dev-s"][1])}

    # run again without a registry, the collector empties its copy: else the boxes of an
    # old registry would be listed as never heard from for ever
    c.stop()
    c = collectors(broker.url("central"), url, tmp_path, "central2",
                   extra=("--alive-every-s", "1"))
    c.wait_subscribed()
    wait_for(lambda: _registry(url) == {}, 20, "the registry emptied")
