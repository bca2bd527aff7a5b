"""A box whose clock is off says so on the midwife's page, and her phone's time sets it.

A Raspberry Pi without its RTC battery and without network time boots at the time it was
switched off: offline for weeks, it dated every exam weeks early, on its reports and at the
district, and nobody at the clinic could know. Driven on the real page in headless Chromium
against the real server; the system call that sets the clock is the one thing replaced (a
test may not move the machine's clock, and as root it would)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
import urllib.error
import urllib.request

import pytest

from edge.web import clock
from edge.web import server as server_module
from edge.web.server import STATUS_EVERY_S
from tests.test_page_review_s32 import WAIT, box, open_page, say, stays, view  # noqa: F401

pytest.importorskip("playwright.sync_api")
DAY_S = 86400.0


class SetTimeCalls(list):
    """The clock_settime calls made, and whether network time keeps the box's clock."""
    synced = False


@pytest.fixture
def settime(monkeypatch):
    """The clock_settime calls the server makes, recorded instead of made; and a box whose
    clock no network time keeps unless a test says so (the kernel's answer differs from
    machine to machine)."""
    calls = SetTimeCalls()
    monkeypatch.setattr(time, "clock_settime", lambda which, value: calls.append((which, value)))
    monkeypatch.setattr(clock, "clock_synchronised", lambda: calls.synced)
    monkeypatch.setattr(server_module, "clock_synchronised", lambda: calls.synced)
    return calls


def _phone(days_ahead: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() + days_ahead * DAY_S, dt.UTC)


def _post(rig, body: object, cookie: str | None, origin: str | None = None,
          raw: bytes | None = None, path: str = "/api/clock") -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    headers = {"Content-Type": "application/json", "Origin": origin or rig["base"]}
    if cookie:
        headers["Cookie"] = cookie
    request = urllib.request.Request(f"{rig['base']}{path}", method="POST",
                                     data=raw if raw is not None else json.dumps(body).encode(),
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as res:
            return res.status, res.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _cookie(page) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())


def test_a_box_60_days_behind_the_phone_says_so_and_is_set_to_the_phones_time(
        box, view, settime, monkeypatch):  # noqa: F811
    monkeypatch.setattr(box["server"], "clock_settable", True)
    phone = _phone(60)
    page, errors = open_page(box, clock=phone)
    page.wait_for_selector("#clock:not([hidden])", timeout=10_000)
    assert page.text_content("#clock-text") == say(page, "clock.behind",
                                                   span=say(page, "clock.days", n=60))
    assert "60 days behind" in page.text_content("#clock-text")
    assert str(phone.year) in page.text_content("#clock-set")  # the time it will set
    page.click("#clock-set")
    page.wait_for_function(
        f"document.querySelector('#clock-note').textContent === "
        f"{json.dumps(say(page, 'clock.set_done'))}", **WAIT)
    assert len(settime) == 1 and settime[0][0] == time.CLOCK_REALTIME
    assert settime[0][1] == pytest.approx(phone.timestamp(), abs=1)
    assert errors == []
    # every health message says it from now on, so the district knows the exams before
    kept = clock.last_set(box["server"].state_dir)
    assert kept["clock_moved_s"] == pytest.approx(60 * DAY_S, abs=5)
    (box["server"].state_dir / clock.CLOCK_SET_FILE).unlink()


def test_a_box_that_may_not_set_its_clock_says_whom_to_tell_and_offers_no_button(
        box, view, settime, monkeypatch):  # noqa: F811
    monkeypatch.setattr(box["server"], "clock_settable", False)  # a service without the grant
    page, _ = open_page(box, clock=_phone(0.25))  # the box 6 hours behind the phone
    page.wait_for_selector("#clock:not([hidden])", timeout=10_000)
    assert "6 hours behind" in page.text_content("#clock-text")
    assert page.is_hidden("#clock-set")
    assert page.text_content("#clock-note") == say(page, "clock.ask_district")
    status, text = _post(box, {"phone_ms": (time.time() + 6 * 3600) * 1000}, _cookie(page))
    assert status == 403 and "CAP_SYS_TIME" in text and "\n" not in text.strip()
    assert settime == []


def test_a_box_ahead_of_the_phone_is_never_set_back(box, view, settime,  # noqa: F811
                                                    monkeypatch):
    """Set back, the page's certificate would not be valid yet and the journal's times
    would run backwards: the card says to tell the district, and the box refuses."""
    monkeypatch.setattr(box["server"], "clock_settable", True)
    page, _ = open_page(box, clock=_phone(-3))
    page.wait_for_selector("#clock:not([hidden])", timeout=10_000)
    assert "3 days ahead" in page.text_content("#clock-text")
    assert page.is_hidden("#clock-set")
    assert page.text_content("#clock-note") == say(page, "clock.ask_district")
    status, text = _post(box, {"phone_ms": (time.time() - 3 * DAY_S) * 1000}, _cookie(page))
    assert status == 409 and "never set back" in text
    assert settime == []


def test_a_box_kept_by_network_time_is_right_whatever_the_phone_says(  # noqa: F811
        box, view, settime, monkeypatch):  # noqa: F811
    """A phone whose time zone was set by hand is whole hours off: a box whose clock
    network time keeps is never moved by it, nor told it is wrong."""
    monkeypatch.setattr(box["server"], "clock_settable", True)
    settime.synced = True
    page, _ = open_page(box, clock=_phone(3 / 24))
    time.sleep(STATUS_EVERY_S + 0.5)  # the box reads its clock's sync with its status
    assert stays(page, "document.querySelector('#clock').hidden")
    status, text = _post(box, {"phone_ms": (time.time() + 3 * 3600) * 1000}, _cookie(page))
    assert status == 409 and "network time" in text
    assert settime == []


def test_a_phone_years_ahead_is_not_offered_and_cannot_move_the_clock(  # noqa: F811
        box, view, settime, monkeypatch):  # noqa: F811
    """A tap moves the clock at most [web] clock_max_move_days (730) forward: a phone set
    to 2099 by mistake would have put the box past its certificates, for good (it is never
    set back)."""
    monkeypatch.setattr(box["server"], "clock_settable", True)
    page, _ = open_page(box, clock=_phone(3 * 365))
    page.wait_for_selector("#clock:not([hidden])", timeout=10_000)
    assert page.is_hidden("#clock-set")
    assert page.text_content("#clock-note") == say(page, "clock.too_far")
    status, text = _post(box, {"phone_ms": (time.time() + 3 * 365 * DAY_S) * 1000},
                         _cookie(page))
    assert status == 409 and "more than a tap may move it" in text
    assert settime == []


def test_a_right_clock_shows_nothing_and_is_never_moved(  # noqa: F811
        box, view, settime, monkeypatch):  # noqa: F811
    monkeypatch.setattr(box["server"], "clock_settable", True)
    page, _ = open_page(box, clock=_phone(20 / 1440))  # a phone 20 min off: not the box
    time.sleep(1.5)  # a state message or two
    assert page.is_hidden("#clock")
    status, text = _post(box, {"phone_ms": (time.time() + 1200) * 1000}, _cookie(page))
    assert status == 409 and "left as it is" in text
    assert settime == []


def test_a_phone_whose_own_clock_was_never_set_does_not_offer_its_time(box, view):  # noqa: F811
    page, _ = open_page(box, clock=dt.datetime(1970, 1, 2, tzinfo=dt.UTC))
    time.sleep(1.5)
    assert page.is_hidden("#clock")


def test_the_clock_is_set_only_by_a_logged_in_page_with_a_real_time(  # noqa: F811
        box, view, settime, monkeypatch):  # noqa: F811
    monkeypatch.setattr(box["server"], "clock_settable", True)
    page, _ = open_page(box)
    cookie = _cookie(page)
    later = (time.time() + 30 * DAY_S) * 1000
    assert _post(box, {"phone_ms": later}, None)[0] == 401
    assert _post(box, {"phone_ms": later}, cookie, origin="https://elsewhere.example")[0] \
        == 403
    for bad in ({}, {"phone_ms": None}, {"phone_ms": "1790000000000"}, {"phone_ms": True},
                {"phone_ms": 0}, {"phone_ms": -5}, {"phone_ms": 1e300},
                {"phone_ms": 4_200_000_000_000}, {"phone_ms": [later]}):
        status, text = _post(box, bad, cookie)
        assert status == 400 and text.startswith("phone_ms must be"), (bad, status, text)
    for raw in (b"NaN", b'{"phone_ms": NaN}', b'{"phone_ms": Infinity}', b"[" * 5000, b"",
                b'{"phone_ms": "\xff\xfe"}', b"\xff\xfe\x00{", b"{" + b" " * 100_000 + b"}"):
        status, text = _post(box, None, cookie, raw=raw)
        assert status in (400, 413) and "\n" not in text.strip(), (raw[:20], status, text)
    assert settime == []
    assert _post(box, {"phone_ms": later}, cookie)[0] == 200 and len(settime) == 1


def test_the_capability_is_read_from_the_process_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapEff:\t0000000002000000\n")
    assert clock.can_set_clock(status)
    status.write_text("Name:\tpython\nCapEff:\t0000000000000000\n")
    assert not clock.can_set_clock(status)
    for junk in ("CapEff:\n", "CapEff:\tzz\n", "", "\x00" * 100):
        status.write_text(junk)
        assert not clock.can_set_clock(status)
    assert not clock.can_set_clock(tmp_path / "missing")


def test_a_refusal_the_page_did_not_expect_is_said_in_its_own_words(  # noqa: F811
        box, view, settime, monkeypatch):  # noqa: F811
    """Network time came back between the card and the tap: the box refuses, by name."""
    monkeypatch.setattr(box["server"], "clock_settable", True)
    page, _ = open_page(box, clock=_phone(60))
    page.wait_for_selector("#clock-set:not([hidden])", timeout=10_000)
    settime.synced = True
    page.click("#clock-set")
    page.wait_for_function(
        f"document.querySelector('#clock-note').textContent === "
        f"{json.dumps(say(page, 'clock.synced'))}", **WAIT)
    assert settime == []


def test_a_set_refused_as_cross_origin_or_failing_is_said_in_the_page_s_words(  # noqa: F811
        box, view, settime, monkeypatch):  # noqa: F811
    """A page opened through another address than the box's (a proxy that rewrites the
    name): the real server refuses the set, 403, without a name the page knows, and the
    card showed its English line, "cross-origin request refused"; a proxy's error page
    would have been shown whole."""
    monkeypatch.setattr(box["server"], "clock_settable", True)
    page, errors = open_page(box, clock=_phone(60))
    page.wait_for_selector("#clock-set:not([hidden])", timeout=10_000)

    def elsewhere(route):  # as a proxy passes it on, another origin, to the real server
        answer = route.fetch(headers={**route.request.headers,
                                      "origin": "https://clinic.example"})
        assert answer.status == 403, answer.status
        route.fulfill(response=answer)

    page.route("**/api/clock", elsewhere)
    page.click("#clock-set")
    said = say(page, "clock.refused_origin")
    assert said != "clock.refused_origin"
    page.wait_for_function(f"document.querySelector('#clock-note').textContent === "
                           f"{json.dumps(said)}", **WAIT)
    page.unroute("**/api/clock")
    page.route("**/api/clock", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>"))
    page.click("#clock-set")
    said = say(page, "clock.failed_status", status=502)
    page.wait_for_function(f"document.querySelector('#clock-note').textContent === "
                           f"{json.dumps(said)}", **WAIT)
    assert settime == [] and errors == []


def test_a_move_past_the_provisioned_certificate_is_refused(settime):
    """With [web] tls = "files" the page would not start again with its certificate
    expired, and the clock is never set back."""
    now = time.time()
    rules = clock.ClockRules(3600.0, 730 * DAY_S, True, not_after=now + 30 * DAY_S)
    with pytest.raises(clock.ClockRefused) as refused:
        clock.set_from_phone(now + 60 * DAY_S, rules)
    assert refused.value.name == "clock-far" and settime == []
    assert clock.set_from_phone(now + 20 * DAY_S, rules) == pytest.approx(20 * DAY_S, abs=5)
    assert len(settime) == 1


def test_the_note_of_the_last_set_is_read_as_hostile_input(tmp_path):
    from edge.loop import RunStats, health_figures

    clock.record_set(tmp_path, 3 * DAY_S)
    assert health_figures(RunStats(), None, tmp_path)["clock_moved_s"] == 3 * DAY_S
    note = tmp_path / clock.CLOCK_SET_FILE
    for junk in (b"", b"[]", b"{", b"\xff\xfe", b'{"ts": 1e999, "moved_s": 5}',
                 b'{"ts": 1, "moved_s": 5}', b'{"ts": 1800000000, "moved_s": -5}',
                 b'{"ts": 1800000000, "moved_s": true}', b"[" * 5000, b" " * 2000 + b"{}"):
        note.write_bytes(junk)
        assert clock.last_set(tmp_path) == {}, junk
        assert "clock_moved_s" not in health_figures(RunStats(), None, tmp_path)
    note.unlink()
    note.mkdir()  # not a file at all
    assert clock.last_set(tmp_path) == {}


def _queued_by_a_clock_behind(state_dir, behind_s: float, monkeypatch):
    """A real uplink's outbox (never connected) with two exams and a health message queued
    while the box's clock was `behind_s` behind, the second exam tried once."""
    import edge.store.outbox as outbox_module
    from edge.exam import tally
    from edge.uplink.mqtt import MqttSettings, Uplink
    from tests.device_sim import frame_result

    real_time = time.time
    monkeypatch.setattr(outbox_module.time, "time", lambda: real_time() - behind_s)
    up = Uplink(MqttSettings(device_id="dev-a", clinic_id="clinic-1"), state_dir)
    old = real_time() - behind_s
    for n in (1, 2):
        summary = tally.summarize_exam([frame_result(i) for i in range(5)], "live", old - 600,
                                       old - 60)
        up.enqueue_exam(summary, key=f"exam-{n}")
    up.enqueue_health({"fps": 15.0})
    monkeypatch.setattr(outbox_module.time, "time", real_time)
    with up.outbox._tx() as db:  # the second exam's publish was tried: it may have arrived
        db.execute("UPDATE outbox SET attempts = 1 WHERE seq = 2")
    return up


def test_messages_queued_while_behind_are_dated_again_when_the_clock_steps(
        tmp_path, monkeypatch):
    """Offline for weeks with its clock behind, the box's queue held weeks of exams dated
    early: setting the clock dated only what came after. What it has not tried to send is
    dated again by the clock now right, when the loop sees the step (edge/loop.py
    follow_clock_steps), and so is an exam held in memory for want of disk space. A message
    tried once is dated again too: it stayed early when it went on after the step (its
    first try lost), and the collector takes the re-dated copy of one that did arrive as
    the same message."""
    from central.db import same_content
    from edge.exam.protocol import find_protocol
    from edge.exam.session import ExamSettings, ExamTracker
    from edge.loop import follow_clock_steps
    from edge.store.journal import Journal
    from wire import schema as wire_schema

    behind = 60 * DAY_S
    up = _queued_by_a_clock_behind(tmp_path / "uplink", behind, monkeypatch)
    journal = Journal(tmp_path / "journal.sqlite")
    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(), None, lambda *a: None)
    before = {m.seq: json.loads(m.payload) for m in up.outbox.pending(10)}
    # and one exam held in memory: the outbox could not take it (a full disk)
    from edge.exam import tally
    from edge.store.outbox import OutboxLater
    from tests.device_sim import frame_result

    old = time.time() - behind
    held = tally.summarize_exam([frame_result(i) for i in range(5)], "live", old - 300,
                                old - 30)

    def refuse(*args, **kwargs):
        raise OutboxLater("database or disk is full")

    with monkeypatch.context() as full:
        full.setattr(up.outbox, "enqueue", refuse)
        assert up.enqueue_exam(held, key="exam-held") is None and up.held == 1
    try:
        assert follow_clock_steps(lambda: behind, tracker, up, journal) == behind
        assert up.flush_held() == 0  # the disk has room again
        queued = [json.loads(m.payload) for m in up.outbox.pending(10)
                  if json.loads(m.payload).get("exam_id") == held["exam_id"]]
        assert queued[0]["started_ts"] == pytest.approx(old - 300 + behind, abs=1)
        after = {m.seq: json.loads(m.payload) for m in up.outbox.pending(10) if m.seq in before}
        for seq in (1, 2, 3):  # the exams, tried or not, and the health message
            for key in ("ts", "started_ts", "ended_ts"):
                if key in before[seq]:
                    assert after[seq][key] == pytest.approx(before[seq][key] + behind, abs=1)
            assert wire_schema.validate_payload(after[seq]) == []
        # the tried exam's first copy may have arrived: the re-dated one is the same message
        assert same_content(json.dumps(before[2]), json.dumps(after[2]))
        counts = up.outbox.counts()
        assert counts["used_bytes"] == up.outbox._count_used()
        # a step back (a clock ahead pulled back by network time) re-dates nothing queued
        assert follow_clock_steps(lambda: -3600.0, tracker, up, journal) == -3600.0
        assert {m.seq: json.loads(m.payload) for m in up.outbox.pending(10)
                if m.seq in before} == after
    finally:
        up.close()
        journal.close()


def test_the_clock_is_not_set_while_the_box_is_starting(box, view, settime,  # noqa: F811
                                                       monkeypatch):
    """While the models load the loop does not run, so it would not see the step: the
    exams its start recovers and queues would keep their early dates. The page asks to
    wait, in its own words."""
    monkeypatch.setattr(box["server"], "clock_settable", True)
    page, errors = open_page(box, clock=_phone(60))
    page.wait_for_selector("#clock:not([hidden])", timeout=10_000)
    monkeypatch.setattr(view, "phase", "loading")
    status, text = _post(box, {"phone_ms": (time.time() + 60 * DAY_S) * 1000}, _cookie(page))
    assert status == 409 and "starting" in text and not settime  # not set
    page.click("#clock-set")
    page.wait_for_function(
        f"document.querySelector('#clock-note').textContent === "
        f"{json.dumps(say(page, 'clock.starting'))}", **WAIT)
    assert not settime and errors == []
    # once a file source has ended the page stays up and the loop still follows the
    # clock (edge/loop.py lingered): a set counts; an exam can no longer be started
    monkeypatch.setattr(view, "phase", "ended")
    status, text = _post(box, {"phone_ms": (time.time() + 60 * DAY_S) * 1000}, _cookie(page))
    assert status == 200 and len(settime) == 1, text
    (box["server"].state_dir / clock.CLOCK_SET_FILE).unlink()
    status, text = _post(box, {"action": "start"}, _cookie(page), path="/api/exam")
    assert status == 409 and "ended" in text
