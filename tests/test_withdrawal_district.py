"""A withdrawn exam at the district: the collector stores the `withdrawal` message (once,
by msg_id; receipted), and the dashboard leaves the exam out of every count, rate, figure
and CSV (exams per day and week, completeness, quality, dating, the monthly return, the
clinic page) while the clinic's "withdrawn" figure, by reason, rises. The latest entry wins
by seq, whichever arrives first: a withdrawal stored before its exam keeps the exam out
from the start, a later restore puts it back, an older entry arriving last changes nothing.

Real parts: the collector's own check of each payload, the store and the rollup on SQLite
and a real PostgreSQL, `sonoedge-central serve` on a loopback port, and end to end a real
box's outbox through Mosquitto to a collector process.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid

from central import collector
from central.dashboard import queries
from central.dashboard.store import open_db
from central.db import DeadLetter, Row, Store
from edge.loop import tell_district_withdrawal
from edge.store.journal import Journal
from edge.uplink import messages
from edge.uplink.mqtt import MqttSettings, Uplink
from tests import conftest_mqtt as fx
from tests.dashboard_harness import request
from tests.test_age_by_dates_district import (
    _checked,
    _dates,
    _exam,
    _holes,
    _rebuilt,
    _small_for_25_weeks,
    _stored,
    served,
)
from tests.test_collector_fuzz import reference_valid
from tests.test_dates_correction import journaled_exam

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures
broker, collectors = fx.broker, fx.collectors


def _withdrawal(seq: int, exam_id: str, withdrawn: bool = True, reason: str = "test_scan",
                device: str = "dev-a") -> dict:
    """A `withdrawal` message as the schema has it, with the device's next seq."""
    env = messages.envelope("withdrawal", device, "clinic-1", "boot-1")
    return {**env, "msg_id": str(uuid.uuid4()), "seq": seq, "exam_id": exam_id,
            "withdrawn": withdrawn, "reason": reason, "entered_ts": round(time.time(), 3)}


def _screen(seq: int, exam_id: str, missing: int = 0) -> dict:
    """An exam of a two-slot protocol, its planes' best quality and its faults: what the
    completeness and quality pages count, besides the head the biometry page draws."""
    exam = _exam(seq, _small_for_25_weeks(), 22.6, 25.0, exam_id=exam_id)
    return {**exam, "protocol": {"name": "fetal-biometry", "required": 2,
                                 "captured": 2 - missing, "missing": ["Femur"] * missing},
            "planes": {"Brain (Tv.)": [5, 0.9, 0.72], "Femur": [4, 0.8, 0.31]},
            "deficiencies": {"blur": 3}}


def figures(db_url: str) -> dict[str, object]:
    """Every figure the pages count exams in, for clinic-1 over the last 4 weeks."""
    db = open_db(db_url)
    try:
        scope, per = queries.Scope(None), queries.period(4)
        days = queries.clinics_page(db, scope, per)
        done = queries.completeness_page(db, scope, per)
        quality = queries.quality_page(db, scope, per)
        [clinic] = [c for c in done.clinics if c.clinic_id == "clinic-1"]
        month, _ = queries.monthly_return(db, scope, queries.this_month())
        page = queries.clinic_page(db, queries.Scope(None, clinic="clinic-1"), per)
        [device] = queries.devices_page(db, scope, per)
        return {
            "exams_per_day": sum(c.exams for c in days.cells.values()),
            "completeness": (clinic.exams, clinic.with_protocol, clinic.complete),
            "quality_exams": quality.exams,
            "best_frames": sum(c.exams for c in quality.cells),
            "below_capture": sum(c.below_capture for c in quality.cells),
            "faults": {d.name: (d.exams, d.frames) for d in quality.deficiencies},
            "missed": dict(clinic.missed),
            "measured": len(queries.biometry_exams(db, scope, per)),
            "monthly": sum(r.exams for r in month),
            "clinic_page_exams": page.now.figures()["exams"][0],
            "withdrawn": {k: v for k, v in page.now.figures().items()
                          if k.startswith("withdrawn")},
            "received": device.received,
            "holes": _holes(db_url),
        }
    finally:
        db.close()


def one_fewer(before: dict, after: dict, exam: dict) -> None:
    """`after` counts one exam (`exam`) fewer than `before` in every figure."""
    complete = int(exam["protocol"]["captured"] >= exam["protocol"]["required"])
    assert after["exams_per_day"] == before["exams_per_day"] - 1
    assert after["completeness"] == (before["completeness"][0] - 1,
                                     before["completeness"][1] - 1,
                                     before["completeness"][2] - complete)
    assert after["quality_exams"] == before["quality_exams"] - 1
    assert after["best_frames"] == before["best_frames"] - len(exam["planes"])
    assert after["below_capture"] == before["below_capture"] - 1  # its Femur's 0.31
    assert after["faults"] == {k: (n - 1, f - 3) for k, (n, f) in before["faults"].items()
                               if n > 1}
    assert after["measured"] == before["measured"] - 1
    assert after["monthly"] == before["monthly"] - 1
    assert after["clinic_page_exams"] == before["clinic_page_exams"] - 1


def test_a_withdrawn_exam_leaves_every_count_and_a_restore_puts_it_back(url):
    kept, test = _screen(1, "exam-kept"), _screen(2, "exam-test", missing=1)
    _stored(url, [kept, test])
    both = figures(url)
    assert both["missed"] == {"fetal-biometry: Femur": 1}
    assert (both["exams_per_day"], both["measured"], both["monthly"]) == (2, 2, 2)
    assert both["withdrawn"] == {"withdrawn": (0, None)}
    # the midwife withdraws the test scan: out of every figure, into "withdrawn"
    _stored(url, [_withdrawal(3, "exam-test")])
    one = figures(url)
    one_fewer(both, one, test)
    assert one["missed"] == {}  # the slot only the withdrawn exam missed
    assert one["withdrawn"] == {"withdrawn": (1, None), "withdrawn:test_scan": (1, None)}
    assert one["received"] == 3 and one["holes"] == []  # the message took a seq: no hole
    # the same message again (a redelivery, a resend): stored once, nothing moves
    again = _withdrawal(3, "exam-test")
    _stored(url, [again])
    assert figures(url)["exams_per_day"] == 1
    # she undoes it: back in every figure, as before
    _stored(url, [_withdrawal(4, "exam-test", withdrawn=False)])
    restored = figures(url)
    assert {k: v for k, v in restored.items() if k not in ("received", "withdrawn")} == {
        k: v for k, v in both.items() if k not in ("received", "withdrawn")}
    assert restored["withdrawn"] == {"withdrawn": (0, None)}
    # an older entry arriving last (seq 3's twin, reordered) does not win
    _stored(url, [{**_withdrawal(3, "exam-test", reason="mistake")}])
    assert figures(url)["exams_per_day"] == 2
    # a rebuild of the rollups from every message, in one batch: the same figures
    _rebuilt(url)
    assert {k: v for k, v in figures(url).items() if k != "received"} == {
        k: v for k, v in restored.items() if k != "received"}


def test_a_withdrawal_that_arrives_before_its_exam_keeps_it_out_from_the_start(url):
    """Two collectors sharing the load, or a reorder, store the withdrawal first: it waits,
    and the exam, when it comes, is counted only as withdrawn. Its age by dates, corrected
    while it was withdrawn, stands once a restore puts it back."""
    hc = _small_for_25_weeks()
    kept = _exam(1, hc, 22.6, exam_id="exam-kept")
    late = _exam(2, hc, 22.6, exam_id="exam-late")
    _stored(url, [kept])
    base = figures(url)
    _stored(url, [_withdrawal(3, "exam-late", reason="wrong_woman")])
    assert figures(url)["withdrawn"] == {"withdrawn": (0, None)}  # no exam yet to count
    _stored(url, [late, _dates(4, "exam-late", 25.0, late["ts"] + 600)])
    waited = figures(url)
    assert {k: waited[k] for k in ("exams_per_day", "completeness", "measured", "monthly",
                                   "clinic_page_exams", "quality_exams")} == {
        k: base[k] for k in ("exams_per_day", "completeness", "measured", "monthly",
                             "clinic_page_exams", "quality_exams")}
    assert waited["withdrawn"] == {"withdrawn": (1, None), "withdrawn:wrong_woman": (1, None)}
    assert waited["holes"] == []
    _rebuilt(url)  # all in one batch: the same
    assert figures(url)["withdrawn"] == waited["withdrawn"]
    _stored(url, [_withdrawal(5, "exam-late", withdrawn=False, reason="wrong_woman")])
    back = figures(url)
    assert back["exams_per_day"] == 2 and back["measured"] == 2
    db = open_db(url)
    try:
        [(ga, source)] = db.query("SELECT ga_weeks, ga_source FROM dash.exams WHERE "
                                  "exam_id = 'exam-late'")
    finally:
        db.close()
    assert (ga, source) == (25.0, "dates")  # the correction that stands


def test_the_pages_and_csvs_count_it_out_and_the_clinic_page_says_withdrawn(tmp_path):
    hc = _small_for_25_weeks()
    exams = [_exam(i, hc, 22.6, 25.0, exam_id=f"exam-{i}") for i in (1, 2, 3)]
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [*exams, _withdrawal(4, "exam-2", reason="two_women")], refreshed=False)
    with served(path, tmp_path) as (base, cookie):
        for route, column in (("/api/clinics.csv", "exams"), ("/api/biometry.csv", None)):
            status, _, body = request(base, route, cookie)
            assert status == 200
            rows = list(csv.DictReader(io.StringIO(body.decode())))
            got = sum(int(r[column]) for r in rows) if column else len(rows)
            assert got == 2, (route, rows[:3])
            assert exams[1]["msg_id"] not in body.decode()
        status, _, body = request(base, "/clinic/clinic-1", cookie)
        page = body.decode()
        assert status == 200
        row = re.search(r'<tr data-figure="withdrawn" data-now="1"[^>]*><td>'
                        r"Exams withdrawn by the midwife \(in no figure above\)</td>", page)
        assert row, page[-3000:]
        assert re.search(r'<tr data-figure="withdrawn:two_women" data-now="1"[^>]*><td>'
                         r"of those, two women in one exam</td>", page)
        assert re.search(r'<tr data-figure="exams" data-now="2"', page)


def test_the_clinics_table_and_csv_say_how_many_each_clinic_withdrew(url, tmp_path):
    """The district's overview (the clinics page) counted only the exams that stand, so an
    officer comparing clinics could not see one withdrawing a third of its exams. Its table
    gives each clinic's withdrawn exams beside its exams, in the clinic page's words, and
    the CSV a column per day, after every column it had: clinic-1 ends 6 exams and withdraws
    2 (a third; a third withdrawal undone), clinic-2 ends 3 and withdraws 1."""
    registry = {"dev-a": "clinic-1", "dev-c": "clinic-2"}
    hc = _small_for_25_weeks()
    payloads = [_exam(i, hc, 22.6, exam_id=f"a-{i}") for i in range(1, 7)]
    payloads += [_withdrawal(7, "a-2"), _withdrawal(8, "a-5", reason="mistake"),
                 _withdrawal(9, "a-6", reason="wrong_woman"),
                 _withdrawal(10, "a-6", withdrawn=False, reason="wrong_woman")]
    payloads += [_exam(i, hc, 22.6, device="dev-c", exam_id=f"c-{i}") for i in (1, 2, 3)]
    payloads += [_withdrawal(4, "c-3", reason="wrong_woman", device="dev-c")]
    rows = [collector.check(f"sonoedge/{p['device_id']}/{p['kind']}", json.dumps(p).encode(),
                            4096, "c1", time.time(), registry) for p in payloads]
    assert all(isinstance(r, Row) for r in rows), rows
    st = Store(url)
    try:
        assert st.store(rows, []) == (len(rows), 0)
    finally:
        st.close()
    with served(url, tmp_path) as (base, cookie):
        status, _, body = request(base, "/clinics?weeks=8", cookie)
        assert status == 200
        page = body.decode()
        table = re.search(r'<table class="silent">(.*?)</table>', page, re.S).group(1)
        head = re.findall(r"<th(?: title=\"([^\"]*)\")?>(.*?)</th>", table)
        # a word on the page, as the other heads; the whole sentence in its title
        assert head[:3] == [("", "clinic"), ("", "exams"), (
            "Exams withdrawn by the midwife (in no other figure)", "withdrawn")]
        got = {}
        for clinic in ("clinic-1", "clinic-2"):
            row = re.search(rf'<tr data-clinic="{clinic}">(.*?)</tr>', table).group(1)
            got[clinic] = re.findall(r'<td class="num">(\d+)</td><td class="num withdrawn" '
                                     r'data-withdrawn="(\d+)">([^<]*)</td>', row)[0]
        assert got == {"clinic-1": ("4", "2", "2 (33% of 6)"),
                       "clinic-2": ("2", "1", "1 (33% of 3)")}
        # the plot's words for a clinic's day or week say it too
        svg = re.search(r'<svg [^>]*data-chart="clinics".*?</svg>', page, re.S).group(0)
        tips = re.findall(r'data-clinic="clinic-1"[^>]*><title>([^<]*)</title>', svg)
        said = [re.search(r"; (\d+) exams? withdrawn by the midwife", t) for t in tips]
        assert sum(int(m.group(1)) for m in said if m) == 2, tips  # its day (or two)
        # the CSV: every column where it was, the new one last but the district
        status, _, body = request(base, "/api/clinics.csv?weeks=8", cookie)
        assert status == 200
        csv_rows = list(csv.reader(io.StringIO(body.decode())))
        assert csv_rows[0] == ["clinic_id", "day", "exams", "health", "silent",
                               "sequence_holes", "messages_missing", "clinic_name",
                               "silent_weekday", "before_first_message",
                               "exams_heads_refused_setup", "exams_withdrawn", "district"]
        by = {c: (sum(int(r[2]) for r in csv_rows[1:] if r[0] == c),
                  sum(int(r[11]) for r in csv_rows[1:] if r[0] == c))
              for c in ("clinic-1", "clinic-2")}
        assert by == {"clinic-1": (4, 2), "clinic-2": (2, 1)}
        # the clinic's own page: the same count, in the same words
        own = request(base, "/clinic/clinic-1?weeks=8", cookie)[2].decode()
        assert re.search(r'<tr data-figure="withdrawn" data-now="2"[^>]*><td>Exams withdrawn '
                         r"by the midwife \(in no figure above\)</td>", own)
        # hostile parameters: one line naming the field, on the page and its CSV
        for path in ("/clinics?weeks=abc", "/clinics?district=%3Cscript%3E",
                     "/api/clinics.csv?weeks=%00", "/api/clinics.csv?district=" + "d" * 500):
            status, _, body = request(base, path, cookie)
            assert status == 400, (path, body[:200])
            text = body.decode()
            said = ([json.loads(text)["error"]] if path.startswith("/api/") else
                    re.findall(r'<p class="warn">(.*?)</p>', text))
            assert len(said) == 1 and re.match(r"(weeks|district): ", said[0]), said
            assert "<script>" not in text and "Traceback" not in text and "\n" not in said[0]


def test_hostile_withdrawal_messages_are_dead_letters_naming_the_field(url):
    exam = _exam(1, _small_for_25_weeks(), 22.6, exam_id="exam-1")
    good = _withdrawal(2, "exam-1")
    hostile = [
        (json.dumps({**good, "reason": "bored"}).encode(), "$.reason: 'bored' not one of"),
        (json.dumps({**good, "withdrawn": "yes"}).encode(),
         "$.withdrawn: expected boolean, got str"),
        (json.dumps({k: v for k, v in good.items() if k != "reason"}).encode(),
         "missing reason"),
        (json.dumps({**good, "woman": "Amina"}).encode(), "unexpected property woman"),
        (json.dumps({**good, "exam_id": "x" * 10_240}).encode(), "oversize: "),
        (json.dumps({**good, "reason": "@@"}).encode().replace(
            b'"@@"', b"[" * 1000 + b"]" * 1000), "bad JSON: nested 1001 deep"),
    ]
    dead = []
    for body, reason in hostile:
        assert not reference_valid("sonoedge/dev-a/withdrawal", body), body[:200]
        letter = _checked(body, "withdrawal")
        assert isinstance(letter, DeadLetter), (body[:200], letter)
        assert reason in letter.reason and "\n" not in letter.reason, letter.reason
        dead.append(letter)
    from central.db import Store

    st = Store(url)
    try:
        assert st.store([_checked(p) for p in (exam, good)], dead) == (2, len(hostile))
    finally:
        st.close()
    from tests.test_age_by_dates_district import _refresh

    _refresh(url)
    assert figures(url)["exams_per_day"] == 0 and figures(url)["holes"] == []


def test_a_boxs_withdrawal_travels_through_mosquitto_to_the_collector_and_is_receipted(
        broker, collectors, url, tmp_path):
    """A real box's journal and outbox, a real broker and a collector process: the
    withdrawal is stored once (on SQLite and PostgreSQL), receipted, and the box's outbox
    keeps nothing of it."""
    state = tmp_path / "box"
    journal = Journal(state / "journal.sqlite")
    settings = MqttSettings(url=broker.url("dev-a"), device_id="dev-a", clinic_id="clinic-1",
                            reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=3)
    c = collectors(broker.url("central"), url, tmp_path, "central")
    c.wait_subscribed()
    uplink = Uplink(settings, state, {"plane_student": "1.0.0"})
    uplink.start()
    try:
        body = journaled_exam(journal, "5f0c1d2e-0000-4000-8000-00000000e1e1")
        uplink.enqueue_exam(body, key=body["exam_id"])
        assert journal.keep_withdrawal(body["exam_id"], True, "mistake")
        assert tell_district_withdrawal(journal, uplink, body["exam_id"])
        fx.wait_for(lambda: len(fx.stored(url, "dev-a", ("withdrawal",))) == 1, 20,
                    "the withdrawal stored")
        fx.wait_for(lambda: uplink.outbox.counts()["awaiting_receipt"] == 0
                    and uplink.outbox.pending_count() == 0, 20, "its receipt")
        assert [r[2] for r in fx.stored(url, "dev-a")] == ["exam", "withdrawal"]
    finally:
        uplink.close()
        journal.close()


def test_a_few_withdrawn_among_many_read_under_1_percent_never_0_percent():
    """The seeded clinic-03 withdrew 1 of 225 exams: its cell read "1 (0% of 225)", a share
    saying none beside a count saying one."""
    from central.dashboard.pages import withdrawn_cell
    assert withdrawn_cell(1, 224) == "1 (under 1% of 225)"
    assert withdrawn_cell(1, 99) == "1 (1% of 100)"
    assert withdrawn_cell(2, 4) == "2 (33% of 6)"
    assert withdrawn_cell(0, 224) == "0"


def test_the_report_counts_a_withdrawn_exam_out_as_the_dashboard_does(url):
    """`sonoedge-central report` counted every exam message, withdrawn or not: the seeded
    box-03a had 308 exams there and 304 on the dashboard. Each exam's latest entry (by the
    box's seq) decides, as on the pages."""
    from central.report import build_report

    def exams() -> tuple[int, int, int]:
        st = Store(url)
        try:
            rep = build_report(st)
        finally:
            st.close()
        [device] = rep["devices"]
        [clinic] = rep["clinics"]
        return device["exams"], clinic["exams"], figures(url)["exams_per_day"]

    _stored(url, [_screen(1, "exam-kept"), _screen(2, "exam-test", missing=1)])
    assert exams() == (2, 2, 2)
    _stored(url, [_withdrawal(3, "exam-test")])
    assert exams() == (1, 1, 1)
    _stored(url, [_withdrawal(4, "exam-test", withdrawn=False)])  # restored
    assert exams() == (2, 2, 2)
    _stored(url, [_withdrawal(5, "exam-kept"), _withdrawal(6, "no-such-exam")])
    assert exams() == (1, 1, 1)


def test_a_reason_withdrawn_in_one_period_only_changes_by_its_count_on_the_clinic_page(
        tmp_path):
    """The seeded Clinic 6's page said "of those, the wrong woman: -, 1, -": a reason in
    the period before only read as a share of none, with no change, where the same table
    said "+2" for a reason in this period only."""
    hc = _small_for_25_weeks()
    exams = [_exam(1, hc, 22.6, 25.0, exam_id="exam-now"),
             _exam(2, hc, 22.6, 25.0, days_ago=60, exam_id="exam-before")]
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [*exams, _withdrawal(3, "exam-now", reason="mistake"),
                   _withdrawal(4, "exam-before", reason="wrong_woman")], refreshed=False)
    with served(path, tmp_path) as (base, cookie):
        page = request(base, "/clinic/clinic-1?weeks=8", cookie)[2].decode()
    rows = {key: cells for key, cells in re.findall(
        r'<tr data-figure="(withdrawn[^"]*)"[^>]*><td>[^<]*</td>(.*?)</tr>', page)}
    cells = {k: re.findall(r"<td class=num>([^<]*)</td>", v) for k, v in rows.items()}
    assert cells == {"withdrawn": ["1", "1", "no change"],
                     "withdrawn:mistake": ["1", "0", "+1"],
                     "withdrawn:wrong_woman": ["0", "1", "-1"]}, cells
