"""Heads the box's set-up refused, at the district: an exam that measured no head and
declined some for a set-up reason (no calibration, an impossible one, the depth scale not
read, the picture stretched by the video grabber: `edge/models/biometry.py`) counts as such
(`dash.exams.setup_refused`, the reason of most frames), and the devices page, the clinics
table, a clinic's page and their CSVs say "heads not measured in N of M exams: <why>, a
set-up fault: send a technician". Heads declined for the scanning (no head, cut off, a poor
fit) are the midwife's, for coaching: no flag. Before this the pages ignored `declined`,
and a clinic whose box refused every head showed 0 heads measured and no reason.

Real parts: the collector's own check of each payload, the store and the rollup on SQLite
and a real PostgreSQL, and `sonoedge-central serve` on a loopback port. Rows the collector
would not write (an old summary, hostile counts) are stored as another writer would.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid

from central import collector
from central.dashboard import config as C
from central.dashboard import queries
from central.dashboard import seed as S
from central.dashboard.store import open_db, refresh
from central.db import Row, Store
from edge.models import biometry as B
from tests import conftest_mqtt as fx
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import _rebuilt, served
from tests.test_central import message
from tests.test_withdrawal_district import _withdrawal

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures

REGISTRY = {"dev-stretched": "clinic-1", "dev-uncal": "clinic-2", "dev-ok": "clinic-3",
            "dev-scan": "clinic-3", "dev-a": "clinic-1"}
STRETCHED = ("heads not measured in 3 of 4 exams: the picture is stretched by the video "
             "grabber, a set-up fault: send a technician")
UNCALIBRATED = ("heads not measured in 2 of 2 exams: the box has no calibration for the "
                "scanner (its pixel size), a set-up fault: send a technician")


def _exam(device: str, seq: int, measured: int, declined: dict, **bio) -> dict:
    """An exam summary as the schema has it, its heads `measured` and `declined`."""
    ts = round(time.time() - 3600 + seq, 3)
    biometry = {"measured": measured, "declined": declined, **bio}
    if measured:
        biometry.update({"hc_mm": 210.0, "ga_weeks": 23.0})
    return message("exam", device=device, seq=seq, ts=ts, exam_id=f"{device}-{seq}",
                   biometry=biometry)


def _stored(db_url: str, payloads: list[dict]) -> None:
    """Check each payload as the collector does (each must pass), store them, roll up."""
    rows = [collector.check(f"sonoedge/{p['device_id']}/{p['kind']}",
                            json.dumps(p).encode(), 4096, "test", time.time(), REGISTRY)
            for p in payloads]
    assert all(isinstance(r, Row) for r in rows), rows
    _store_rows(db_url, rows)


def _raw(payload: dict | object, device: str, seq: int) -> Row:
    """A stored exam row the collector did not check: another writer, a damaged database."""
    return Row(str(uuid.uuid4()), device, REGISTRY[device], "exam", seq, "boot-1",
               time.time() - 3600 + seq, None, time.time(), "other", json.dumps(payload))


def _store_rows(db_url: str, rows: list[Row]) -> None:
    st = Store(db_url)
    try:
        assert st.store(rows, []) == (len(rows), 0)
    finally:
        st.close()
    db = open_db(db_url)
    try:
        refresh(db)
    finally:
        db.close()


def _district(db_url: str) -> dict[str, dict]:
    """The boxes' exams sent: heads refused for the set-up (two reasons), measured, and
    declined only for the scanning."""
    stretched = {"screen_stretched": 40, "no_head": 12}
    _stored(db_url, [
        *(_exam("dev-stretched", s, 0, stretched) for s in (1, 2, 3)),
        _exam("dev-stretched", 4, 6, {"head_cut_off": 2}),  # before the grabber was swapped
        *(_exam("dev-uncal", s, 0, {"pixel_size_missing": 9, "no_head": 30}) for s in (1, 2)),
        # heads measured: a frame or two declined for a stretch is no set-up fault
        *(_exam("dev-ok", s, 5, {"screen_stretched": 2, "head_cut_off": 3}) for s in (1, 2)),
        # no head measured, for the midwife's scanning only: for coaching, not a technician
        *(_exam("dev-scan", s, 0, {"no_head": 30, "head_cut_off": 5, "poor_fit": 2})
          for s in (1, 2, 3))])
    db = open_db(db_url)
    try:
        rows = queries.devices_page(db, queries.Scope(None), queries.period(4))
    finally:
        db.close()
    return {r.device_id: r for r in rows}


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def _csv(base: str, route: str, cookie: str) -> list[dict]:
    status, _, body = request(base, route, cookie)
    assert status == 200, (route, body[:300])
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_a_box_whose_set_up_refuses_every_head_is_flagged_with_what_to_do(url, tmp_path):
    boxes = _district(url)
    assert boxes["dev-stretched"].flags == [STRETCHED]
    assert boxes["dev-uncal"].flags == [UNCALIBRATED]
    # heads measured, or declined only for the scanning: no flag, so no technician sent
    assert boxes["dev-ok"].flags == [] and boxes["dev-scan"].flags == []
    with served(url, tmp_path) as (base, cookie):
        status, _, body = request(base, "/devices?weeks=8", cookie)
        page = body.decode()
        assert status == 200
        flags = dict(re.findall(r'<tr data-device="([^"]+)"[^>]*>.*?<td class="flags">(.*?)'
                                r"</td>", page))
        assert flags == {"dev-stretched": STRETCHED, "dev-uncal": UNCALIBRATED,
                         "dev-ok": "-", "dev-scan": "-"}
        # flagged boxes first, said in the lead as a reason for a visit
        assert re.findall(r'<tr data-device="([^"]+)"', page)[:2] == ["dev-stretched",
                                                                      "dev-uncal"]
        assert "refused by the box's set-up" in _text(page)
        # the CSV: the figures as new last columns (before the district), the words in
        # needs_a_visit; the columns scripts read by position are where they were
        rows = {r["device_id"]: r for r in _csv(base, "/api/devices.csv?weeks=8", cookie)}
        header = list(next(iter(rows.values())))
        assert header[:3] == ["device_id", "clinic_id", "last_seen_utc"]
        assert header[-4:] == ["exams", "exams_heads_refused_setup",
                               "heads_refused_setup_reasons", "district"]
        assert {d: (r["exams"], r["exams_heads_refused_setup"],
                    r["heads_refused_setup_reasons"], r["needs_a_visit"])
                for d, r in rows.items()} == {
            "dev-stretched": ("4", "3", "screen_stretched:3", STRETCHED),
            "dev-uncal": ("2", "2", "pixel_size_missing:2", UNCALIBRATED),
            "dev-ok": ("2", "0", "", ""), "dev-scan": ("3", "0", "", "")}
        # the clinics table: the clinic of each flagged box, in the same words
        status, _, body = request(base, "/clinics", cookie)
        setup = dict(re.findall(r'<tr data-clinic="([^"]+)">.*?<td class="setup">(.*?)</td>',
                                body.decode(), re.S))
        assert {c: _text(v) for c, v in setup.items()} == {
            "clinic-1": STRETCHED[:1].upper() + STRETCHED[1:] + ".",
            "clinic-2": UNCALIBRATED[:1].upper() + UNCALIBRATED[1:] + ".",
            "clinic-3": "-"}
        days = _csv(base, "/api/clinics.csv", cookie)
        # a column added since (the withdrawn exams) comes after it, the district last
        assert list(days[0])[-3:] == ["exams_heads_refused_setup", "exams_withdrawn",
                                      "district"]
        assert {c: sum(int(r["exams_heads_refused_setup"]) for r in days
                       if r["clinic_id"] == c) for c in ("clinic-1", "clinic-2", "clinic-3")} \
            == {"clinic-1": 3, "clinic-2": 2, "clinic-3": 0}
        # the clinic's page: its box flagged, and the figure against the period before
        status, _, body = request(base, "/clinic/clinic-1?weeks=8", cookie)
        page = body.decode()
        assert status == 200 and STRETCHED in page
        assert re.search(r'<tr data-figure="setup_refused" data-now="0.750000"', page), \
            page[-3000:]
        weeks = _csv(base, "/api/clinic.csv?clinic=clinic-1&weeks=8", cookie)
        assert list(weeks[0])[-2:] == ["exams_heads_refused_setup", "district"]
        assert sum(int(r["exams_heads_refused_setup"]) for r in weeks) == 3


def test_one_exam_refused_is_not_yet_a_fault_and_a_withdrawn_one_counts_only_when_restored(
        url):
    """One odd exam (a zoom that hid the depth scale) is no flag; a second is. A withdrawn
    exam is in no figure, and a restore makes its row again with its reason."""
    _stored(url, [_exam("dev-a", 1, 0, {"ruler_unread": 7}),
                  _exam("dev-a", 2, 0, {"ruler_unread": 3, "pixel_size_absurd": 5}),
                  _withdrawal(3, "dev-a-2")])

    def box() -> queries.DeviceRow:
        db = open_db(url)
        try:
            [row] = queries.devices_page(db, queries.Scope(None), queries.period(4))
            return row
        finally:
            db.close()

    def flags() -> list[str]:
        return box().flags

    assert (box().exams, box().setup_refused, flags()) == (1, {"ruler_unread": 1}, [])
    _stored(url, [_withdrawal(4, "dev-a-2", withdrawn=False)])
    # two exams, two reasons of one each (the restored one's, of most frames): neither
    # reason has refused two exams yet
    assert box().setup_refused == {"ruler_unread": 1, "pixel_size_absurd": 1}
    assert flags() == []
    _stored(url, [_exam("dev-a", 5, 0, {"pixel_size_absurd": 2})])
    assert flags() == ["heads not measured in 2 of 3 exams: the box's calibration for the "
                       "scanner (its pixel size) is impossible, a set-up fault: send a "
                       "technician"]
    _rebuilt(url)  # the rollups made again from every message, in one batch: the same
    assert len(flags()) == 1


def test_old_and_hostile_summaries_roll_up_without_failing_the_batch(url):
    """An old summary without `declined`, and counts the schema would refuse (another
    writer, a damaged database): each exam is still counted, none is taken for a set-up
    fault it does not say, and the good rows of the same batch are flagged as ever."""
    good = {"measured": 0, "declined": {"screen_stretched": 9}}
    odd = [
        {"measured": 0},  # an old summary: before `declined`
        {"measured": 4, "hc_mm": 200.0, "ga_weeks": 22.0},
        {"measured": 0, "declined": "screen_stretched"},
        {"measured": 0, "declined": ["screen_stretched", 3]},
        {"measured": 0, "declined": {"screen_stretched": "12"}},
        {"measured": 0, "declined": {"screen_stretched": {"frames": 12}}},
        {"measured": 0, "declined": {"screen_stretched": True}},
        {"measured": 0, "declined": {"screen_stretched": 3.5}},
        {"measured": 0, "declined": {"screen_stretched": -4}},
        {"measured": 0, "declined": {"not_a_status": 99, "no_head": 2}},
        {"measured": 0, "declined": {f"s{i}": i for i in range(5000)}},
        {"measured": "0", "declined": {"screen_stretched": 9}},
        {"measured": False, "declined": {"screen_stretched": 9}},
        {"measured": None, "declined": {"screen_stretched": 9}},
        {"measured": [0], "declined": {"screen_stretched": 9}},
        "biometry", [good], None]
    rows = [_raw({**message("exam", device="dev-a", seq=i), "biometry": bio}, "dev-a", i)
            for i, bio in enumerate(odd, 1)]
    # a huge count is still a count: the reason of most frames wins, whatever the numbers
    huge = {"measured": 0, "declined": {"ruler_unread": 10**30, "screen_stretched": 2**31 - 1}}
    n = len(odd)
    rows += [_raw({**message("exam", device="dev-a", seq=n + 1), "biometry": huge}, "dev-a",
                  n + 1),
             _raw({**message("exam", device="dev-a", seq=n + 2), "biometry": good}, "dev-a",
                  n + 2),
             _raw({**message("exam", device="dev-a", seq=n + 3), "biometry": good}, "dev-a",
                  n + 3)]
    _store_rows(url, rows)
    db = open_db(url)
    try:
        refused = dict(db.query("SELECT seq, e.setup_refused FROM dash.exams e JOIN "
                                "messages m ON m.msg_id = e.msg_id"))
        [box] = queries.devices_page(db, queries.Scope(None), queries.period(4))
    finally:
        db.close()
    # every exam rolled up, but the two whose biometry is no object at all: skipped, as the
    # rollup skips any row not as the collector writes it, and the batch goes on
    assert set(range(1, n + 4)) - set(refused) == {odd.index("biometry") + 1,
                                                   odd.index([good]) + 1}
    assert {s: r for s, r in refused.items() if r is not None} == {
        n + 1: "ruler_unread", n + 2: "screen_stretched", n + 3: "screen_stretched"}
    assert box.exams == n + 3 and box.setup_refused == {"ruler_unread": 1,
                                                       "screen_stretched": 2}
    assert box.flags == [f"heads not measured in 2 of {n + 3} exams: the picture is "
                         "stretched by the video grabber, a set-up fault: send a technician"]


def test_the_dashboard_names_the_statuses_the_box_refuses_heads_for_its_set_up():
    """The district does not import the device's code: the names are repeated in config."""
    assert set(C.SETUP_REFUSALS) == {B.PIXEL_SIZE_MISSING, B.PIXEL_SIZE_ABSURD,
                                     B.RULER_UNREAD, B.SCREEN_STRETCHED}
    assert set(C.SETUP_REFUSALS) <= set(B.STATUSES) - set(B.MEASURED)


def test_the_seeded_district_shows_one_box_with_a_stretched_picture(tmp_path):
    path = str(tmp_path / "seed.sqlite3")
    S.seed(path, S.SeedSettings(clinics=4, districts=1, days=28))
    db = open_db(path)
    try:
        refresh(db)
        rows = queries.devices_page(db, queries.Scope(None), queries.period(8))
    finally:
        db.close()
    faults = {r.device_id: [f for f in r.flags if f.startswith("heads not measured")]
              for r in rows}
    assert [d for d, f in faults.items() if f] == [S.SETUP_FAULT_DEVICE]
    assert "the picture is stretched by the video grabber" in faults[S.SETUP_FAULT_DEVICE][0]
