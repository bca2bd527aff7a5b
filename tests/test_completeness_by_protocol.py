"""The district's completeness page gives each exam protocol its own share.

A head measurement has one checklist slot and is usually complete; a second-trimester
screen has 13 and rarely is. One share per clinic over both read "61% complete" for a
district whose screens were 6% complete, and a clinic none of whose 42 screens was
complete showed 53% (a district officer's walk, 6 December). Real parts: the collector's
own check of each payload, the store, the rollup and `sonoedge-central serve` on a free
loopback port.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib

from central.dashboard import config as C
from tests.conftest import REPO
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import _stored, served
from tests.test_central import message


def _protocol_exam(seq: int, name: str, required: int, captured: int, missing: list[str],
                   device: str = "dev-a") -> dict:
    return message("exam", device=device, seq=seq, protocol={
        "name": name, "required": required, "captured": captured, "missing": missing})


def _screens_and_heads(heads: int, screens: int) -> list[dict]:
    """One clinic: `heads` complete head measurements, `screens` screens that missed a
    plane."""
    return ([_protocol_exam(i + 1, "biometry", 1, 1, []) for i in range(heads)]
            + [_protocol_exam(heads + i + 1, "second-trimester", 13, 12, ["Lips"])
               for i in range(screens)])


def _bars(page: str) -> dict[tuple[str, str], tuple[int, int]]:
    return {(c, p): (int(done), int(n)) for c, p, done, n in re.findall(
        r'<rect [^>]*data-clinic="([^"]+)" data-protocol="([^"]+)" data-complete="(\d+)" '
        r'data-exams="(\d+)"', page)}


def test_a_clinic_whose_screens_all_missed_a_plane_is_not_shown_mostly_complete(tmp_path):
    db = str(tmp_path / "central.sqlite3")
    _stored(db, _screens_and_heads(heads=10, screens=4))  # 10 of 14 complete: 71%
    with served(db, tmp_path) as (base, cookie):
        status, _, body = request(base, "/completeness?weeks=8", cookie)
        assert status == 200
        page = body.decode()
        assert "71%" not in page  # the share over both protocols is said nowhere
        assert _bars(page) == {("clinic-1", "biometry"): (10, 10),
                               ("clinic-1", "second-trimester"): (0, 4)}
        lead = re.sub(r"<[^>]+>", "", page[page.index('<ul class="lead">'):])
        assert lead.startswith("head measurement: 100% of 10 exams complete"
                               "second-trimester screen (13 planes): 0% of 4 exams complete")
        # the screen's bar is orange: under half of the clinic's screens are complete
        screen = re.search(r'<rect [^>]*fill="([^"]+)"[^>]*data-protocol="second-trimester"',
                           page)
        head = re.search(r'<rect [^>]*fill="([^"]+)"[^>]*data-protocol="biometry"', page)
        assert screen and head and screen.group(1) != head.group(1)
        # the table under them: a column per protocol
        row = re.search(r"<tr><td><a [^>]*>clinic-1</a></td>(.*?)</tr>", page)  # its page
        cells = re.sub(r"</?span[^>]*>", "", row.group(1)) if row else ""  # a slot's hover
        assert re.sub(r"<[^>]+>", "|", cells).split("|")[1:-1:2] == [
            "100% of 10 exams", "0% of 4 exams", "Lips 100% (4 of 4)"]

        status, _, body = request(base, "/api/completeness_protocols.csv?weeks=8", cookie)
        assert status == 200
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert [(r["clinic_id"], r["protocol"], r["exams"], r["complete"],
                 r["share_complete"]) for r in rows] == [
            ("clinic-1", "biometry", "10", "10", "1.0"),
            ("clinic-1", "second-trimester", "4", "0", "0.0")]
        # the CSV of a row per clinic is as it was, every protocol together
        status, _, body = request(base, "/api/completeness.csv?weeks=8", cookie)
        (row,) = csv.DictReader(io.StringIO(body.decode()))
        assert (row["exams_with_protocol"], row["complete"]) == ("14", "10")


def test_protocols_beyond_those_charted_are_counted_and_kept_in_the_csv(tmp_path):
    """A box names its protocol: a district sent many names gets a chart for the
    `PROTOCOLS_SHOWN` with the most exams, one line for the rest, and all in the CSV."""
    db = str(tmp_path / "central.sqlite3")
    names = [f"p{i:02d}" for i in range(C.PROTOCOLS_SHOWN + 3)]
    exams, seq = [], 0
    for rank, name in enumerate(names):
        for _ in range(len(names) - rank):  # p00 most, the last fewest
            seq += 1
            exams.append(_protocol_exam(seq, name, 1, 1, []))
    _stored(db, exams)
    with served(db, tmp_path) as (base, cookie):
        page = request(base, "/completeness?weeks=8", cookie)[2].decode()
        charted = sorted({p for _, p in _bars(page)})
        assert charted == names[:C.PROTOCOLS_SHOWN]
        assert "3 other protocols, 6 exams: in the CSV by protocol" in page
        body = request(base, "/api/completeness_protocols.csv?weeks=8", cookie)[2].decode()
        assert sorted(r["protocol"] for r in csv.DictReader(io.StringIO(body))) == names


def test_every_protocol_a_box_ships_has_the_districts_words():
    shipped = tomllib.loads((REPO / "edge" / "exam" / "protocols.toml").read_text())
    assert set(shipped["protocols"]) == set(C.PROTOCOL_TITLES)


def test_on_a_phone_each_clinics_share_is_in_view_beside_its_name(tmp_path):
    """A phone shows a plot's left end: the share after each bar was off the screen, and
    every clinic's bar looked the same (an officer's walk). Each bar's share is said beside
    its label too, inside the first 390 px."""
    from tests.web_harness import chromium

    db = str(tmp_path / "central.sqlite3")
    _stored(db, _screens_and_heads(heads=3, screens=4)[:5])  # heads 3 of 3, screens 0 of 2
    with served(db, tmp_path) as (base, _cookie), chromium(tmp_path) as context:
        page = context.new_page()
        page.goto(base + "/login")
        page.fill("input[name=username]", "officer")
        page.fill("input[name=password]", "admin-password-1")
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.goto(base + "/completeness?weeks=8")
        shown = page.evaluate("""() => [...document.querySelectorAll(
            'svg[data-chart=completeness] text[data-value-shown]')].map((t) => {
              const r = t.getBoundingClientRect();
              return [t.textContent, r.left >= 0 && r.right <= window.innerWidth];
            })""")
        assert shown == [["100%", True], ["0%", True]], shown
