"""Review of the midwife's page (session 30), against the page's real server
(edge/web/server.py, no models), in plain HTTP."""

from __future__ import annotations

import socket
import time

import pytest

from edge.web import server as web_server
from tests.http_raw import raw_http
from tests.web_harness import PIN, page_alone


@pytest.fixture
def page(tmp_path, monkeypatch):
    monkeypatch.setattr(web_server, "BODY_TIMEOUT_S", 3.0)
    with page_alone(tmp_path) as srv:
        yield srv


def _login(srv, source: str) -> int:
    body = b'{"pin": "%s"}' % PIN.encode()
    head = (b"POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    answer = raw_http(srv.port, head + body, source)
    return int(answer.split(b" ", 2)[1])


def test_logins_whose_pin_never_arrives_do_not_lock_the_device_out(page):
    """Each login was charged as a wrong PIN before its body was read, so 31 requests from
    31 addresses that announce a body and never send it filled the device-wide bucket and
    locked every new browser out for a minute, without a single PIN tried. An attempt is
    charged once its PIN has arrived (its slot still taken before the slow hash, so a race
    from one address is verified once)."""
    held = []
    try:
        for i in range(1, 33):
            conn = socket.create_connection(("127.0.0.1", page.port), timeout=5,
                                            source_address=(f"127.0.2.{i}", 0))
            conn.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 20\r\n\r\n")
            held.append(conn)
        time.sleep(0.5)  # every header read; every body still awaited
        assert _login(page, "127.0.3.1") == 200  # a new phone, the right PIN
    finally:
        for conn in held:
            conn.close()
    assert page.brake.locks == 0


class _Session:
    """What the page's snapshot reads of an exam."""

    def __init__(self, exam_id: str):
        from types import SimpleNamespace

        self.exam_id = exam_id
        self.protocol = SimpleNamespace(name="basic", title="Basic")
        self.started_ts = time.time()
        self.tally = SimpleNamespace(frames=1, biometry=lambda: None, stretch_setting=None)

    def checklist(self) -> list:
        return []


def test_dates_entered_before_any_exam_go_to_the_exam_that_begins_even_unseen():
    """Dates typed before the first exam were attached to an exam only when a page next
    looked: a phone asleep through that exam put them on the one after, another woman's.
    The loop attaches them as the exam begins."""
    from types import SimpleNamespace

    from edge.web.live import LiveView, LoopHook

    view = LiveView()
    hook = LoopHook(view, end_gap_s=5.0)
    dates = {"lmp": "2026-06-10", "today": "2026-12-05"}
    view.ga_dates = {"exam_id": None, **dates, "weeks": 25.0}  # as the page sets them
    tracker = SimpleNamespace(current=None)
    kept = []
    hook.keep_dates = lambda exam_id, d: kept.append((exam_id, d)) or True
    for exam_id in ("first-woman", "second-woman"):  # no page looks meanwhile
        tracker.current = _Session(exam_id)
        for _ in range(3):
            hook.after_frame(None, {"plane": "Brain (Tv.)"}, None, None, time.monotonic(),
                             tracker)
    assert kept == [("first-woman", dates)]
    assert view.ga_dates["exam_id"] == "first-woman"
