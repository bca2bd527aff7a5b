"""Heads measured before a box could check the picture's shape, at the district.

A box checks that its video grabber does not stretch the scanner's picture from the probe's
fan (`edge/models/fan.py`), and only a frame that shows the whole fan can be read: a
scanner kept zoomed in never is. Its exams' heads are measured and their summaries say
`biometry.shape: unchecked`. Each such exam counts (`dash.exams.shape_unchecked`), and a
box with two or more is flagged on the devices page as something to check at the next
visit, with what to do; a box whose shape was checked, an old box that never says, one
exam alone, and an exam whose heads were not measured are not. A withdrawn exam counts in
no figure. Real parts: the collector's own check of each payload, the store and the rollup
on SQLite and a real PostgreSQL, and `sonoedge-central serve`.
"""

from __future__ import annotations

import json
import re
import time

from central import collector
from central.dashboard import config as C
from central.dashboard import queries
from central.dashboard.store import open_db
from central.db import DeadLetter
from tests import conftest_mqtt as fx
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import _rebuilt, served
from tests.test_setup_fault_district import REGISTRY, _exam, _stored
from tests.test_withdrawal_district import _withdrawal

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures

ZOOMED = ("picture shape never checked in 3 of 4 exams with heads measured: at the next "
          "visit show the probe's whole fan once, without zoom (the box then checks the "
          "picture's shape and remembers it)")


def _boxes(db_url: str) -> dict[str, queries.DeviceRow]:
    db = open_db(db_url)
    try:
        return {r.device_id: r for r in queries.devices_page(db, queries.Scope(None),
                                                             queries.period(4))}
    finally:
        db.close()


def test_a_box_that_never_checked_the_picture_s_shape_is_flagged_with_what_to_do(
        url, tmp_path):
    _stored(url, [
        # a scanner kept zoomed in: three exams unchecked, then one whose fan showed
        *(_exam("dev-stretched", s, 5, {}, scale="calibration", shape="unchecked")
          for s in (1, 2, 3)),
        _exam("dev-stretched", 4, 5, {}, scale="calibration", shape="checked"),
        # checked, or a box from before the check (no `shape`): nothing to say
        *(_exam("dev-ok", s, 5, {}, scale="ruler", shape="checked") for s in (1, 2)),
        *(_exam("dev-uncal", s, 5, {}, scale="calibration") for s in (1, 2)),
        # one exam alone is not yet a pattern
        _exam("dev-a", 1, 5, {}, scale="calibration", shape="unchecked"),
        # no head measured: nothing measured unchecked, whatever it says
        *(_exam("dev-scan", s, 0, {"no_head": 30}, shape="unchecked") for s in (1, 2))])
    boxes = _boxes(url)
    assert boxes["dev-stretched"].flags == [ZOOMED]
    assert {d: b.shape_unchecked for d, b in boxes.items()} == {
        "dev-stretched": 3, "dev-ok": 0, "dev-uncal": 0, "dev-a": 1, "dev-scan": 0}
    assert all(b.flags == [] for d, b in boxes.items() if d != "dev-stretched")
    assert C.SETUP_FAULT_MIN_EXAMS == 2  # the threshold the test is written against
    with served(url, tmp_path) as (base, cookie):
        status, _, body = request(base, "/devices?weeks=8", cookie)
        assert status == 200
        flags = dict(re.findall(r'<tr data-device="([^"]+)"[^>]*>.*?<td class="flags">(.*?)'
                                r"</td>", body.decode()))
        assert flags["dev-stretched"] == ZOOMED.replace("'", "&#x27;"), flags
        assert {flags[d] for d in flags if d != "dev-stretched"} == {"-"}


def test_a_withdrawn_exam_counts_in_no_figure_and_a_rebuild_counts_the_same(url):
    _stored(url, [*(_exam("dev-a", s, 5, {}, shape="unchecked") for s in (1, 2)),
                  _withdrawal(3, "dev-a-2")])
    assert (_boxes(url)["dev-a"].shape_unchecked, _boxes(url)["dev-a"].flags) == (1, [])
    _stored(url, [_withdrawal(4, "dev-a-2", withdrawn=False)])
    assert _boxes(url)["dev-a"].shape_unchecked == 2
    assert _boxes(url)["dev-a"].flags[0].startswith("picture shape never checked in 2 of 2 ")
    _rebuilt(url)
    assert _boxes(url)["dev-a"].shape_unchecked == 2


def test_a_shape_the_box_never_writes_is_refused_by_the_collector_naming_it():
    for wrong in ("maybe", "", 1, None, True, ["unchecked"], {"unchecked": 1}):
        payload = _exam("dev-a", 1, 5, {}, shape=wrong)
        row = collector.check("sonoedge/dev-a/exam", json.dumps(payload).encode(), 4096,
                              "test", time.time(), REGISTRY)
        assert isinstance(row, DeadLetter), (wrong, row)
        assert "biometry.shape" in row.reason and "\n" not in row.reason, (wrong, row.reason)
