"""The completeness page ranks clinics, and each clinic's missed slots, protocol by protocol.

An officer's walk of a seeded district (12 clinics, 26 weeks; 6 December): the table's
"worst first" sorted by one share over every protocol together, a share the page no longer
shows, so the order moved with how many screens a clinic did against head measurements
(Clinic 4, 2% of its screens complete, ranked before Clinic 1, none of 33); and the column
"missed most" ranked slots by raw count across protocols: "Head (HC, BPD) (24)", 24 of 114
heads, came before the 3VV, missed by 19 of 55 screens. Now the table is in the order of
the lowest share in a clinic's row (the page says so), and a clinic's missed slots are by
their share of its exams of their protocol: "3VV 35% (19 of 55)".

Real parts: the seeded district on SQLite and the rollup, the page's own functions, and
`sonoedge-central serve` on a free loopback port for a hand-made district.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict

import pytest

from central import collector
from central.dashboard import config as C
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.seed import SeedSettings, seed
from central.dashboard.store import open_db, refresh
from central.db import Row, Store
from tests.dashboard_harness import request, standing_exams
from tests.test_age_by_dates_district import served
from tests.test_central import message

END = 1_796_000_000.0  # a fixed instant: the seeded calendar does not move with the day
UNNAMED = "(not named: shed to fit 1 KB)"


@pytest.fixture(scope="module")
def district(tmp_path_factory):
    """The officer's district, rolled up, and its exams counted from the messages
    themselves: (db, clinic -> protocol -> [exams, complete], (clinic, protocol, slot) ->
    exams that missed it, and -> [of them never found, found not clear enough])."""
    path = str(tmp_path_factory.mktemp("order") / "c.sqlite3")
    seed(path, SeedSettings(clinics=12, districts=3, days=182, end_ts=END))
    st = Store(path)
    try:
        stored = [(clinic, json.loads(p)) for clinic, p in st.query(
            "SELECT clinic_id, payload FROM messages WHERE kind IN ('exam', 'withdrawal')")]
        standing = {id(p) for p in standing_exams([p for _, p in stored])}
        payloads = [(clinic, p) for clinic, p in stored if id(p) in standing]
    finally:
        st.close()
    exams: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    missed: dict[tuple[str, str, str], int] = defaultdict(int)
    kinds: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for clinic, p in payloads:
        pr = p["protocol"]
        exams[clinic][pr["name"]][0] += 1
        exams[clinic][pr["name"]][1] += int(pr["captured"] >= pr["required"])
        for slot in pr["missing"]:
            missed[(clinic, pr["name"], slot)] += 1
            if "missing_seen" in pr:
                kinds[(clinic, pr["name"], slot)][int(slot in pr["missing_seen"])] += 1
        if pr["required"] - pr["captured"] > len(pr["missing"]):
            missed[(clinic, pr["name"], UNNAMED)] += 1
    db = open_db(path)
    try:
        refresh(db)
        yield db, exams, missed, kinds
    finally:
        db.close()


def _page(db) -> Q.CompletenessPage:
    # 104 weeks hold the whole seeded half year: every message counts
    return Q.completeness_page(db, Q.Scope(None), Q.period(104, now=END))


def _percent(complete: int, exams: int) -> int:
    return round(100 * complete / exams)


def _table(html: str) -> list[list[str]]:
    """The completeness table's rows, each its cells' text."""
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(<td.*?)</tr>", html)]


def test_the_table_ranks_clinics_by_the_lowest_share_it_shows(district):
    db, exams, _, _ = district
    page = _page(db)
    assert {c.clinic_id: {pr: list(v) for pr, v in c.protocols.items()}
            for c in page.clinics} == {c: dict(v) for c, v in exams.items()}
    shown = ["biometry", "second-trimester"]  # the table's columns: every protocol here
    assert [p.protocol for p in page.protocols[:C.PROTOCOLS_SHOWN]] == shown

    # the documented rule, from the messages: the row's whole percents, lowest first; a tie
    # by the next lowest; then the more exams of the lowest first
    def rule(clinic: str) -> tuple:
        cells = sorted((_percent(done, n), -n) for pr, (n, done) in exams[clinic].items()
                       if pr in shown and n)
        return ([x for x, _ in cells], [n for _, n in cells], clinic)

    expected = sorted(exams, key=rule)
    assert [c.clinic_id for c in page.clinics] == expected
    # the seed is a district the old order got wrong: one share over every protocol
    overall = sorted(exams, key=lambda c: (sum(d for _, d in exams[c].values())
                                           / sum(n for n, _ in exams[c].values()), c))
    assert expected != overall

    # the table and its CSV are in that order, and each row shows what ranks it
    rows = _table(P.completeness_table(page))
    assert [re.search(r"\((clinic-\d+)\)", r[0]).group(1) for r in rows] == expected
    for r, clinic in zip(rows, expected, strict=True):
        shares = [_percent(exams[clinic][pr][1], exams[clinic][pr][0]) for pr in shown]
        assert r[1:3] == [f"{s}% of {exams[clinic][pr][0]} exams"
                          for s, pr in zip(shares, shown, strict=True)]
    body = list(csv.reader(io.StringIO(P.completeness_csv(page))))
    assert body[0] == ["clinic_id", "exams", "exams_with_protocol", "complete",
                       "share_complete", "clinic_name",  # as before, in their order
                       "least_complete_protocol", "least_complete_share"]
    assert [r[0] for r in body[1:]] == expected
    for r in body[1:]:
        per = exams[r[0]]
        worst = min(per, key=lambda pr: (_percent(per[pr][1], per[pr][0]), -per[pr][0]))
        assert r[6:] == [worst, str(round(per[worst][1] / per[worst][0], 4))]


def test_each_clinics_missed_slots_are_ranked_by_their_share_of_the_protocols_exams(
        district):
    db, exams, missed, kinds = district
    page = _page(db)
    rows = {re.search(r"\((clinic-\d+)\)", r[0]).group(1): r[-1]
            for r in _table(P.completeness_table(page))}
    mixed = 0
    for clinic, cell in rows.items():
        mine = [(pr, slot, n, exams[clinic][pr][0]) for (c, pr, slot), n in missed.items()
                if c == clinic]
        by_share = sorted(mine, key=lambda x: (-x[2] / x[3], -x[2], x[0], x[1]))
        assert cell == ", ".join(f"{slot} {_percent(n, of)}% ({n} of {of})"
                                 for _, slot, n, of in by_share[:3]), clinic
        # a slot of one protocol missed by more exams but a smaller share of them
        top = by_share[:3]
        mixed += any(x[2] > top[-1][2] and x[0] != top[-1][0] for x in by_share[3:])
    assert mixed, "the seed gives no clinic whose raw counts would mix protocols"
    # the CSV of missed slots: its columns as before, then the protocol's exams and share,
    # then how the misses split: never found, found but not clear enough, not said
    body = list(csv.reader(io.StringIO(P.missed_csv(page))))
    assert body[0] == ["clinic_id", "protocol", "slot", "exams_missing_it",
                       "protocol_exams", "share_missing_it", "missed_not_found",
                       "missed_not_clear_enough", "missed_not_said"]
    assert {(r[0], r[1], r[2]): (int(r[3]), int(r[4]), float(r[5]), *map(int, r[6:]))
            for r in body[1:]} == {
        (c, pr, s): (n, exams[c][pr][0], round(n / exams[c][pr][0], 4),
                     *kinds[(c, pr, s)], n - sum(kinds[(c, pr, s)]))
        for (c, pr, s), n in missed.items()}
    assert sum(n for n, _ in kinds.values()) and sum(n for _, n in kinds.values())
    # the district's chart was already by share of the protocol's exams: the head slot,
    # missed by the most exams of any slot, is not first
    bars = re.findall(r'data-protocol="([^"]+)" data-slot="([^"]+)" data-missed="(\d+)" '
                      r'data-exams="(\d+)"', P.missed_svg(page))
    shares = [int(m) / int(n) for _, _, m, n in bars]
    assert shares == sorted(shares, reverse=True)
    most = max(bars, key=lambda b: int(b[2]))
    assert bars[0] != most and most[0] == "biometry"


# -- a hand-made district: clinics of one protocol ------------------------------------------
REGISTRY = {"dev-h": "clinic-heads", "dev-s": "clinic-screens", "dev-b": "clinic-both"}


def _exam(device: str, seq: int, name: str, required: int, captured: int,
          missing: list[str]) -> dict:
    p = message("exam", device=device, seq=seq, protocol={
        "name": name, "required": required, "captured": captured, "missing": missing})
    return {**p, "clinic_id": REGISTRY[device]}


def _heads(device: str, n: int, complete: int, seq: int = 0) -> list[dict]:
    return [_exam(device, seq + i + 1, "biometry", 1, int(i < complete),
                  [] if i < complete else ["Head (HC, BPD)"]) for i in range(n)]


def _screens(device: str, n: int, complete: int, seq: int = 0,
             missing: str = "3VV") -> list[dict]:
    return [_exam(device, seq + i + 1, "second-trimester", 13, 13 if i < complete else 12,
                  [] if i < complete else [missing]) for i in range(n)]


def _store(path: str, payloads: list[dict]) -> None:
    rows = [collector.check(f"sonoedge/{p['device_id']}/exam", json.dumps(p).encode(), 4096,
                            "test", float(p["ts"]), REGISTRY) for p in payloads]
    assert all(isinstance(r, Row) for r in rows), rows
    st = Store(path)
    try:
        assert st.store(rows, []) == (len(rows), 0)
    finally:
        st.close()


def test_a_clinic_of_one_protocol_is_ranked_by_that_protocol_alone(tmp_path):
    """Heads only at 50%, screens only at 30%, and a clinic of both: every head complete
    (10 of 10) and 40% of its screens. One share over both put the clinic of both last
    (14 of 20, 70%); a missing protocol counted as 0% would put the two clinics of one
    protocol first. By the lowest share shown: 30%, 40%, 50%."""
    path = str(tmp_path / "c.sqlite3")
    _store(path, _heads("dev-h", 10, 5) + _screens("dev-s", 10, 3)
           + _heads("dev-b", 10, 10) + _screens("dev-b", 10, 4, seq=10, missing="Lips"))
    with served(path, tmp_path) as (base, cookie):
        status, _, body = request(base, "/completeness?weeks=8", cookie)
        assert status == 200
        html = body.decode()
        table = html[html.index('<table class="missed">'):]
        assert [(r[0], *r[1:]) for r in _table(table)] == [
            ("clinic-screens", "-", "30% of 10 exams", "3VV 70% (7 of 10)"),
            ("clinic-both", "100% of 10 exams", "40% of 10 exams", "Lips 60% (6 of 10)"),
            ("clinic-heads", "50% of 10 exams", "-", "Head (HC, BPD) 50% (5 of 10)")]
        # the page says how it is ordered
        lead = re.sub(r"<[^>]+>", "", html[html.index("Per clinic: complete exams"):
                                            html.index('<table class="missed">')])
        assert "Least complete first: by the lowest share in the clinic's row" in lead
        status, _, body = request(base, "/api/completeness.csv?weeks=8", cookie)
        assert status == 200
        rows = list(csv.reader(io.StringIO(body.decode())))
        # the columns it had, in their order, then the new, then the district (last)
        assert rows[0] == ["clinic_id", "exams", "exams_with_protocol", "complete",
                           "share_complete", "clinic_name", "least_complete_protocol",
                           "least_complete_share", "district"]
        assert [r[0] + "," + r[-3] + "," + r[-2] for r in rows[1:]] == [
            "clinic-screens,second-trimester,0.3", "clinic-both,second-trimester,0.4",
            "clinic-heads,biometry,0.5"]


def test_a_clinics_slot_missed_by_fewer_exams_but_a_larger_share_comes_first(tmp_path):
    """The walk's Clinic 4: 24 of 114 heads unmeasured (21%) was listed before the 3VV,
    missed by 19 of 55 screens (35%)."""
    path = str(tmp_path / "c.sqlite3")
    _store(path, _heads("dev-b", 114, 90) + _screens("dev-b", 55, 36, seq=114))
    with served(path, tmp_path) as (base, cookie):
        html = request(base, "/completeness?weeks=8", cookie)[2].decode()
        (row,) = _table(html[html.index('<table class="missed">'):])
        assert row[-1] == "3VV 35% (19 of 55), Head (HC, BPD) 21% (24 of 114)"
        # none of its exams said how (older boxes): that alone, never "0 not found"
        assert ('<span title="second-trimester screen (13 planes): 19 not said (older '
                'boxes)">3VV 35%') in html
