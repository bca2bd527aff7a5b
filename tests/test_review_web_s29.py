"""Review of the midwife's page (session 29): hostile requests the other tests missed,
each against the page's real server (edge/web/server.py, no models), in plain HTTP."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from edge.web import server as web_server
from edge.web.auth import Brake
from tests.http_raw import raw_http
from tests.web_harness import PIN, page_alone


@pytest.fixture
def page(tmp_path, monkeypatch):
    """`WebServer` on a free loopback port, plain HTTP, no loop attached (the view stays
    "loading": nothing drains the dates it queues)."""
    monkeypatch.setattr(web_server, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(web_server, "BODY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(web_server, "DATES_KEPT_WAIT_S", 0.2)
    with page_alone(tmp_path) as srv:
        yield srv


def _call(srv, method: str, path: str, body: bytes | dict | None = None,
          session: str | None = None) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one raw request."""
    data = b"" if body is None else body if isinstance(body, bytes) else \
        json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    if session:
        head += f"Cookie: sonoedge_session={session}\r\n".encode()
    if body is not None:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
    out = raw_http(srv.port, head + b"\r\n" + data)
    top, _, text = out.partition(b"\r\n\r\n")
    return int(top.split(b" ", 2)[1]), top, text


def _session(srv) -> str:
    status, head, _ = _call(srv, "POST", "/api/login", {"pin": PIN})
    assert status == 200
    return re.search(rb"sonoedge_session=([^;]+);", head).group(1).decode()


def test_a_pin_that_is_not_unicode_text_is_one_line_of_400_not_a_500(page, caplog):
    """JSON may escape a lone surrogate ("\\ud800"): valid UTF-8 on the wire, a str
    Python cannot encode. The scrypt hash raised UnicodeEncodeError on the executor: a 500
    with a traceback in the log, and the request counted as a wrong PIN."""
    caplog.set_level(logging.INFO)
    page.brake = Brake(free=1)  # a single counted wrong PIN would brake this address
    status, _, text = _call(page, "POST", "/api/login", b'{"pin": "\\ud800\\udfff12\\ud800"}')
    assert status == 400, text[:300]
    assert b"pin" in text and b"\n" not in text.strip()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
    assert _call(page, "POST", "/api/login", {"pin": PIN})[0] == 200  # not a guess


def test_dates_without_an_lmp_field_are_refused_never_taken_as_clear(page, tmp_path):
    """Only `"lmp": null` clears the dates (what the page and the report send to clear).
    A body with no `lmp` at all (a client's bug, a misspelt key) cleared the dates the
    midwife had entered, on the card, in the journal and at the district."""
    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite")
    done = ExamSession(next(iter(load_protocols().values())))
    assert journal.add_exam(None, {**done.summary("gap"), "ended_ts": time.time() - 60}, {})
    journal.close()
    session = _session(page)
    page.view.exam = {"exam_id": "e-running", "running": True, "biometry": None}
    dates = {"lmp": "2026-06-10", "today": "2026-12-04"}
    assert _call(page, "POST", "/api/lmp", {**dates, "exam_id": "e-running"},
                 session)[0] == 200
    for body in ({"exam_id": "e-running"}, {"LMP": "2026-06-11", "exam_id": "e-running"}):
        status, _, text = _call(page, "POST", "/api/lmp", body, session)
        assert status == 400 and b"lmp" in text and b"\n" not in text.strip(), text
    assert page.view.ga_dates["lmp"] == "2026-06-10"  # still on the card
    assert list(page.view.dates_to_keep) == [("e-running", dates)]
    for body in ({}, {"today": "2026-12-04"}):  # a report's, for an ended exam
        status, _, text = _call(page, "POST", f"/api/exams/{done.exam_id}/lmp", body, session)
        assert status == 400 and b"lmp" in text and b"\n" not in text.strip(), text
    assert list(page.view.dates_to_keep) == [("e-running", dates)]  # no clear queued
    # null, said outright, still clears
    assert _call(page, "POST", "/api/lmp", {"lmp": None, "exam_id": "e-running"},
                 session)[0] == 200
    assert page.view.ga_dates is None


def test_dates_the_loop_has_not_taken_yet_are_never_pushed_out_by_later_ones(page,
                                                                               tmp_path):
    """The loop takes the page's dates between frames; while it has none (the models
    loading, the grabber unplugged) they wait in a queue of 8. The ninth entry pushed the
    first out of it, after the first had been answered 200: dates the box accepted, lost.
    A full queue must refuse the new entry (one line, the page says so), never drop one."""
    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite")
    protocol = next(iter(load_protocols().values()))
    exams = [ExamSession(protocol) for _ in range(10)]
    for exam in exams:
        assert journal.add_exam(None, {**exam.summary("gap"), "ended_ts": time.time() - 60},
                                {})
    journal.close()
    session = _session(page)
    accepted = []
    for exam in exams:
        dates = {"lmp": "2026-06-10", "today": "2026-12-04"}
        status, _, text = _call(page, "POST", f"/api/exams/{exam.exam_id}/lmp", dates,
                                session)
        if status == 200:
            assert json.loads(text)["kept"] is False  # nothing drains the queue here
            accepted.append(exam.exam_id)
        else:
            assert status == 503 and b"\n" not in text.strip() and len(text) < 200, text
    queued = [exam_id for exam_id, _ in page.view.dates_to_keep]
    assert queued == accepted  # every accepted entry is still there for the loop
    assert len(accepted) < len(exams)


def _strict_json(text: bytes):
    def refuse(name: str):
        raise AssertionError(f"{name} in a JSON answer: the browser's JSON.parse refuses it")
    return json.loads(text, parse_constant=refuse)


def test_figures_out_of_any_range_in_a_journal_row_never_take_the_list_or_a_report_down(
        page, tmp_path, caplog):
    """A damaged journal row (a card's bit flips, a foreign writer) may hold any finite
    number. 1e300 as a time, an HC or a quality overflowed the list's and the report's
    arithmetic: a 500 for that exam's report and for the list of every exam, and an OFD
    of 1e-300 put Infinity (not JSON) in the list. The other exams stay listed, and no
    report is a 500."""
    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store.journal import Journal

    caplog.set_level(logging.INFO)
    journal = Journal(tmp_path / "journal.sqlite")
    protocol = next(iter(load_protocols().values()))
    good = ExamSession(protocol)
    assert journal.add_exam(None, {**good.summary("gap"), "ended_ts": time.time() - 60}, {})
    bad_ids = []
    for patch, best in (
            ({"started_ts": 1e300}, {}),
            ({"ended_ts": -1e300, "duration_s": 1e308}, {}),
            ({"biometry": {"hc_mm": 1e308, "bpd_mm": 1e308, "ofd_mm": 1e-308,
                           "ga_weeks": 1e308, "ga_low_weeks": -1e308,
                           "ga_high_weeks": 1e308, "measured": 1, "best_frames": 1}}, {}),
            ({"biometry": {"hc_mm": 180.0, "bpd_mm": 50.0, "ofd_mm": 1e-300,
                           "ga_weeks": 20.0}}, {}),
            ({"planes": {p: [3, 1e308, 1e308] for p in protocol.slots[0].accepts}},
             {protocol.slots[0].accepts[0]: {"frame": 1, "quality": 1e308,
                                             "confidence": -1e308, "hc_mm": 1e308}})):
        exam = ExamSession(protocol)
        summary = {**exam.summary("gap"), "ended_ts": time.time() - 30, **patch}
        assert journal.add_exam(None, summary, best)
        assert journal.keep_dates(exam.exam_id, {"lmp": "2026-06-10", "today": "2026-12-04"})
        bad_ids.append(exam.exam_id)
    journal.close()
    session = _session(page)
    status, _, text = _call(page, "GET", "/api/exams", session=session)
    assert status == 200, text[:300]
    listed = [e["exam_id"] for e in _strict_json(text)["exams"]]
    assert good.exam_id in listed
    for exam_id in [good.exam_id, *bad_ids]:
        status, _, text = _call(page, "GET", f"/report/{exam_id}", session=session)
        assert status in (200, 404), (exam_id, status, text[:300])
        assert b"Traceback" not in text and b"inf mm" not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-3000:]


def test_a_date_that_is_not_one_is_400_naming_its_field_never_a_500(page, tmp_path, caplog):
    """A report's dates for an exam ended days ago move `today` back by those days: for
    "0001-01-02" that raised OverflowError (not a ValueError): a 500 and a traceback,
    for the report's and the live page's routes alike. A date Python refused answered
    its own words ("month must be in 1..12"), naming neither field."""
    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store.journal import Journal

    caplog.set_level(logging.INFO)
    journal = Journal(tmp_path / "journal.sqlite")
    done = ExamSession(next(iter(load_protocols().values())))
    ended_ts = time.time() - 3 * 86400
    assert journal.add_exam(None, {**done.summary("gap"), "ended_ts": ended_ts}, {})
    journal.close()
    session = _session(page)
    page.view.exam = {"exam_id": "e-shown", "running": False, "ended_ts": ended_ts,
                      "biometry": None}
    for dates, field in (({"lmp": "0001-01-01", "today": "0001-01-02"}, b"today"),
                         ({"lmp": "2026-06-01", "today": "2026-13-01"}, b"today"),
                         ({"lmp": "2026-02-30", "today": "2026-12-01"}, b"lmp"),
                         ({"lmp": "2026-06-01", "today": "\ud800"}, b"today")):
        for path, body in ((f"/api/exams/{done.exam_id}/lmp", dates),
                           ("/api/lmp", {**dates, "exam_id": "e-shown"})):
            status, _, text = _call(page, "POST", path, body, session)
            assert status == 400, (path, dates, status, text[:200])
            assert text.startswith(field) and b"\n" not in text.strip(), (dates, text)
    assert not page.view.dates_to_keep and page.view.ga_dates is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-3000:]
