"""What a new district's health officer reads on the dashboard, on real servers (Mosquitto,
the collector on SQLite, `sonoedge-central serve`) filled by real `sonoedge run --once`
devices on HC18 heads.

Two boxes, set up today: box-ambo at clinic-ambo (district north, named "Ambo clinic" in the
district map) and box-bora at clinic-bora (district south, no name in the map). clinic-cana is
on the map (north) with a name that is not safe HTML, and has no box yet. box-ambo's first
message is dated 12 days ago (its clock says so: it came up then and has sent nothing since
until today's exams), and a message of its was refused by the collector 100 days ago (a dead
letter, written into the collector's table with that arrival time); box-bora sends one
malformed message now.
"""

from __future__ import annotations

import csv
import datetime as dt
import html as html_text
import io
import json
import re
import sqlite3
import time

import pytest

from central.dashboard import config as C
from central.dashboard import pages, queries
from tests.conftest_mqtt import outbox_last_seq, wait_for
from tests.dashboard_harness import (
    HEADS,
    _device_run,
    central,
    dashboard,
    dead_letter_count,
    district_servers,
    login,
    messages,
    request,
    wait_rolled_up,
)

BOXES = {"box-ambo": "clinic-ambo", "box-bora": "clinic-bora"}
CANA = "Cana <St Mary's> & \"Co\""  # a name from the district map, shown as text, not markup
ADMIN = ("officer", "admin-password-1")
SOUTH = ("south-viewer", "viewer-password-1")
FIRST_MESSAGE_DAYS_AGO = 12
OLD_DEAD_LETTER_DAYS_AGO = 100


@pytest.fixture(scope="module")
def district(tmp_path_factory, data_dir):
    from tests.test_central import message

    tmp = tmp_path_factory.mktemp("officer")
    with district_servers(tmp, BOXES) as servers:
        db = servers.db
        servers.collector()
        _device_run(tmp, servers.broker, 0, "box-ambo", "biometry", (), HEADS[:2], data_dir)
        _device_run(tmp, servers.broker, 1, "box-bora", "biometry", (), HEADS[2:4], data_dir)

        def seqs(dev: str) -> set[int]:
            return {m["seq"] for m in messages(db) if m["device_id"] == dev
                    and m["kind"] != "status"}

        wait_for(lambda: all(seqs(dev) == set(range(1, outbox_last_seq(tmp / f"state-{dev}")
                                                     + 1)) for dev in BOXES),
                 30, "every message the boxes queued, at the collector")
        # box-ambo's clock dates a health message 12 days back: its first day in the district
        first_ts = time.time() - FIRST_MESSAGE_DAYS_AGO * C.DAY_S
        first = message("health", device="box-ambo", seq=max(seqs("box-ambo")) + 1,
                        ts=round(first_ts, 3))
        assert not servers.publish_raw("box-ambo", "health",
                                       json.dumps(first).encode()).is_failure
        servers.publish_raw("box-bora", "exam", b'{"not": "an exam"')
        wait_for(lambda: dead_letter_count(db) == 1 and any(
            m["payload"]["msg_id"] == first["msg_id"] for m in messages(db)), 30,
            "box-ambo's first message and box-bora's dead letter at the collector")
        conn = sqlite3.connect(db, timeout=10)
        try:  # the collector's own row, as it writes one (central/db.py), 100 days old
            with conn:
                conn.execute(
                    "INSERT INTO dead_letters (digest, topic, reason, size, preview, "
                    "received_ts, collector) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ("0" * 64, "sonoedge/box-ambo/exam", "not JSON", 5, "{oops",
                     time.time() - OLD_DEAD_LETTER_DAYS_AGO * C.DAY_S, "central"))
        finally:
            conn.close()
        clinics = tmp / "clinics.csv"
        clinics.write_text(f"clinic-ambo,north,Ambo clinic\nclinic-bora,south\n"
                           f"clinic-cana,north,{CANA}\n")
        for args, stdin in ((["districts", str(clinics)], ""),
                            (["users", "add", ADMIN[0], "--role", "admin"], ADMIN[1]),
                            (["users", "add", SOUTH[0], "--role", "viewer", "--district",
                              "south"], SOUTH[1])):
            out = central(*args, "--db", db, stdin=stdin + "\n")
            assert out.returncode == 0, out.stderr
        with dashboard(db, tmp) as base:
            cookie = login(base, ADMIN)
            sent = messages(db)
            wait_rolled_up(base, cookie, sum(1 for m in sent if m["kind"] == "exam"))
            yield {"db": db, "base": base, "cookie": cookie, "sent": sent,
                   "first_day": dt.datetime.fromtimestamp(first["ts"], dt.UTC).date()}


def _get(district, path: str, cookie: str | None = None) -> str:
    status, _, body = request(district["base"], path, cookie or district["cookie"])
    assert status == 200, (path, status, body[:300])
    return body.decode()


def _csv(district, name: str, weeks: int = 8) -> dict[str, list[dict]]:
    """A CSV's rows by their first column."""
    out: dict[str, list[dict]] = {}
    for row in csv.DictReader(io.StringIO(_get(district, f"/api/{name}.csv?weeks={weeks}"))):
        out.setdefault(next(iter(row.values())), []).append(row)
    return out


def _devices(district, weeks: int) -> dict[str, dict]:
    return {dev: rows[0] for dev, rows in _csv(district, "devices", weeks).items()}


# -- 1: dead letters count in the page's period -----------------------------------------------
def test_a_dead_letter_counts_and_flags_a_box_only_in_the_period_it_arrived(district):
    recent = _devices(district, 8)
    # box-ambo's one bad message, 100 days ago, is no reason to visit it in these 8 weeks
    assert recent["box-ambo"]["dead_letters"] == "0"
    assert "dead letter" not in recent["box-ambo"]["needs_a_visit"]
    # box-bora's bad message of today is
    assert recent["box-bora"]["dead_letters"] == "1"
    assert "1 dead letter" in recent["box-bora"]["needs_a_visit"].split("; ")
    # over 26 weeks, box-ambo's falls in the period and counts again
    half_year = _devices(district, 26)
    assert half_year["box-ambo"]["dead_letters"] == "1"
    assert "1 dead letter" in half_year["box-ambo"]["needs_a_visit"].split("; ")
    html = _get(district, "/devices?weeks=8")
    row = re.search(r'<tr data-device="box-ambo"[^>]*>(.*?)</tr>', html).group(1)
    assert "dead letter" not in row
    assert "in the last 8 weeks, a dead letter" in html  # the page says which period counts
    assert "dead letters are counted over the last 8 weeks" in html


# -- 2: clinic names from the district map ----------------------------------------------------
def test_clinics_are_shown_by_their_district_map_name_with_the_id_beside_it(district):
    escaped = "Cana &lt;St Mary&#x27;s&gt; &amp; &quot;Co&quot;"
    clinics = _get(district, "/clinics")
    labels = re.findall(r"<text [^>]*><title>([^<]*)</title>([^<]*)</text>", clinics)
    # the plot's row labels: the name, its id in the hover title; no name: the id as before;
    # a name wider than the label column cut there, whole in the title
    assert ("Ambo clinic (clinic-ambo)", "Ambo clinic") in labels
    assert ("clinic-bora", "clinic-bora") in labels
    cana = [label for title, label in labels if title == f"{escaped} (clinic-cana)"]
    assert cana and all(label.endswith("\u2026") and escaped.startswith(label[:-1])
                        for label in cana), cana
    assert "<St Mary's>" not in clinics  # the name is text, never markup
    completeness = _get(district, "/completeness")
    assert 'Ambo clinic <span class="small">(clinic-ambo)</span>' in completeness
    assert f'{escaped} <span class="small">(clinic-cana)</span>' in completeness
    # each a link to the clinic's page, for the period shown
    assert '<td><a href="/clinic/clinic-bora?weeks=8">clinic-bora</a></td>' in completeness
    assert "<St Mary's>" not in completeness
    devices = _get(district, "/devices")
    row = re.search(r'<tr data-device="box-ambo"[^>]*>(.*?)</tr>', devices).group(1)
    assert ('<td><a href="/clinic/clinic-ambo?weeks=8">clinic-ambo</a></td>'
            '<td class="name">Ambo clinic</td>') in row
    # every CSV that names a clinic keeps its id and gives its name in clinic_name
    for name, key in (("clinics", "clinic_id"), ("completeness", "clinic_id"),
                      ("devices", "clinic_id"), ("biometry", "clinic_id")):
        rows = [r for group in _csv(district, name).values() for r in group]
        assert rows, name
        named = {r[key]: r["clinic_name"] for r in rows}
        assert named.get("clinic-ambo") == "Ambo clinic", (name, named)
        assert named.get("clinic-bora", "") == "", (name, named)
    assert {r["clinic_name"] for r in _csv(district, "clinics")["clinic-cana"]} == {CANA}
    # a viewer of the south district is shown no north clinic, by id or by name
    cookie = login(district["base"], SOUTH)
    for page in ("clinics", "completeness", "devices", "biometry"):
        html = _get(district, f"/{page}", cookie)
        assert "Ambo" not in html and "Cana" not in html, page
        assert page == "biometry" or "clinic-bora" in html, page


# -- 3: silent weekdays start at a clinic's first message -------------------------------------
def _weekdays_column(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-silent-weekdays="([^"]+)">([^<]*)<', html))


def test_silent_weekdays_count_only_from_the_clinics_first_message_on(district):
    html = _get(district, "/clinics")
    cells = re.findall(r'<rect [^>]*data-clinic="([^"]+)" data-day="([^"]+)" '
                       r'data-exams="\d+" data-silent="(\d)"', html)
    today = max(d for _, d, _ in cells)
    first = district["first_day"].isoformat()

    def weekday(day: str) -> bool:
        return dt.date.fromisoformat(day).weekday() < 5

    # box-bora was set up today: the weeks before it are not silence at its clinic
    silent = _weekdays_column(html)
    assert silent["clinic-bora"] == ""
    # clinic-ambo's box came up 12 days ago and was quiet until today: those weekdays count
    quiet_since = [d for c, d, s in cells if c == "clinic-ambo" and s == "1" and weekday(d)
                   and first < d < today]
    assert quiet_since, "weekdays between box-ambo's first message and today"
    assert silent["clinic-ambo"] == str(len(quiet_since))
    # the days before are still drawn as days with no message (the CSV says so too), in
    # the light grey of an expected silence
    before = [d for c, d, s in cells if c == "clinic-ambo" and d < first]
    assert before and all(s == "1" for c, d, s in cells if c == "clinic-ambo" and d < first)
    tip = re.search(rf'data-clinic="clinic-ambo" data-day="{before[0]}"[^>]*><title>'
                    r"([^<]*)</title>", html)
    assert tip and "before the clinic's first message" in html_text.unescape(tip.group(1))
    # a clinic on the map whose box never spoke has sent nothing in the last 7 days, but
    # has no silent weekdays to count yet
    assert silent["clinic-cana"] == ""
    assert re.search(r"<strong>1</strong> sent nothing in the last 7 days", html), \
        re.search(r'<p class="lead">.*?</p>', html).group(0)


# -- 4: labels --------------------------------------------------------------------------------
def test_a_count_of_one_reads_in_the_singular():
    per = queries.period(1, now=C.DAY_S * (19_004 + 0.6))  # a Wednesday afternoon, UTC
    day = per.first_day  # Monday
    cells = {("clinic-1", d): queries.ClinicDay("clinic-1", d) for d in per.days}
    cells[("clinic-1", day)] = queries.ClinicDay("clinic-1", day, exams=1, health=1, holes=1,
                                                 missing=1)
    svg = pages.clinics_svg(queries.ClinicsPage(per, ["clinic-1"], cells))
    assert (f"clinic-1 {queries.day_text(day)}: 1 exam, 1 health message; "
            "1 sequence hole, 1 message missing") in svg
    assert pages.plural(1, "exam") == "1 exam" and pages.plural(3, "exam") == "3 exams"
    assert pages.plural(1, "box", "boxes") == "1 box"
    assert pages.plural(2, "box", "boxes") == "2 boxes"
    row = queries.DeviceRow("box-1", "clinic-1", time.time(), "online", None, 0, 0, 1, 1,
                            None, None, {}, {}, None, received=10)
    # most urgent first (queries.ranked_flags): a message lost, then a dead letter
    assert queries.device_flags(row, time.time()) == ["1 message lost", "1 dead letter"]


def test_the_devices_page_says_which_period_its_counts_cover(district):
    html = _get(district, "/devices?weeks=26")
    assert re.search(r'<p class="lead">2 boxes; ', html)
    head = re.search(r'<table class="devices"><tr>(.*?)</tr>', html).group(1)
    assert "messages missing<br><span class=\"small\">last 26 weeks</span>" in head
    assert "dead letters<br><span class=\"small\">last 26 weeks</span>" in head
