"""Session 32: seven defects a review found on the midwife's page, each driven on the real
page in headless Chromium against the real server (`edge.web.server.WebServer` and its
`LiveView`, the view's fields set by hand as the loop sets them; no models, no loop).

1. Dates typed for one woman went to the next woman's exam: the page sent the id of the
   exam on the card when Set was tapped, not the one she typed them for. Now it sends the
   one she typed for, and the device refuses them (409) if it has another now.
2. Cleared dates came back into the date field (the field copied in a date, never an
   empty value), on the tablet that cleared them and on every other one.
3. During the hold after Stop, the live image showed the woman before's HC, BPD and GA
   over the next woman's head.
4. An HC outside Hadlock's 14-42 weeks against the dates read "0 days smaller than the
   dates (more than 10)" (there is no age, so no difference in days).
5. "cephalic index 70, below the usual 70-87": flagged unrounded (69.9), shown rounded.
6. An HC outside 14-42 weeks showed no age and no reason on the page (the image, the card,
   the earlier exams) while the report said why.
7. A tablet whose clock was never set (1970) was told the period was out of range, while
   the device had said the tablet's date was not set.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import numpy as np
import pytest

from edge.exam.protocol import load_protocols
from edge.exam.session import ExamSession
from edge.models.quality import load_rules
from edge.store.journal import JOURNAL_FILE, Journal
from edge.web.auth import read_pin, write_pin
from edge.web.live import LiveView
from edge.web.server import WebServer
from edge.web.settings import WebSettings
from tests.servers import free_port
from tests.web_harness import PIN, chromium

pytest.importorskip("playwright.sync_api")
WAIT = {"timeout": 10_000, "polling": 100}
FLAGS = "els => els.map(e => e.textContent)"
TV = "Brain (Tv.)"
BIO_20W = {"measured": 3, "declined": {}, "hc_mm": 175.0, "bpd_mm": 47.0, "ofd_mm": 60.0,
           "best_frames": 3, "ga_weeks": 20.0, "ga_low_weeks": 19.8, "ga_high_weeks": 20.2}
# a head smaller than Hadlock's formula covers (about 13 weeks): no age; CI 69.89, "low"
BIO_SMALL = {"measured": 3, "declined": {}, "hc_mm": 80.0, "bpd_mm": 22.0, "ofd_mm": 30.0,
             "best_frames": 3, "ga_weeks": None, "ga_low_weeks": None, "ga_high_weeks": None}


def day(plus: int = 0) -> str:
    return (dt.date.today() + dt.timedelta(days=plus)).isoformat()


def exam(exam_id: str, running: bool = True, bio: dict | None = None,
         ended_by: str | None = None) -> dict:
    now = time.time()
    return {"exam_id": exam_id, "running": running, "ended_by": ended_by,
            "protocol": "biometry", "title": "Fetal biometry: head",
            "started_ts": now - 900, "ended_ts": None if running else now - 30, "frames": 100,
            "checklist": [{"slot": "Head (HC, BPD)", "plane": "Head (HC, BPD)",
                           "captured": bool(bio), "best": None}],
            "captured": 1 if bio else 0, "required": 1, "biometry": bio}


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """The real server on a free port over TLS, a view set by hand, one Chromium, and a
    journal holding one ended exam whose head is too small for Hadlock's formula."""
    tmp = tmp_path_factory.mktemp("s32page")
    state = tmp / "state"
    write_pin(state, PIN)
    journal = Journal(state / JOURNAL_FILE)
    done = ExamSession(load_protocols()["biometry"])
    summary = {**done.summary("gap", ended_ts=time.time() - 600),
               "biometry": {k: v for k, v in BIO_SMALL.items() if v is not None}}
    assert journal.add_exam(None, summary, {})
    assert journal.keep_dates(done.exam_id, {"lmp": day(-140), "today": day()})
    journal.close()
    view = LiveView()
    server = WebServer(WebSettings(listen=f"127.0.0.1:{free_port()}"), view, state,
                       read_pin(state), load_rules(None))
    server.start()
    view.models = {"plane_student": "x"}
    view.protocol = {"name": "biometry", "title": "Fetal biometry: head",
                     "head_planes": [TV, "Brain (Cb.)"]}
    view.source_name, view.source_live, view.phase = "script", True, "running"
    try:
        with chromium(tmp) as context:
            yield {"view": view, "server": server, "context": context,
                   "base": f"https://localhost:{server.port}", "journaled": done.exam_id}
    finally:
        server.stop()


@pytest.fixture()
def view(box):
    """The view as a test leaves it for the next: no exam, no dates, no frame, and no page
    of its own left open (a session watches at most 3 streams: a failed test's pages
    would starve the next test's)."""
    v = box["view"]
    opened = len(box["context"].pages)
    yield v
    for page in box["context"].pages[opened:]:
        page.close()
    v.exam, v.holding, v.latest = None, False, None
    v.set_dates(None)
    v.dates_to_keep.clear()


def publish(view: LiveView, record: dict, shown: object | None = None) -> None:
    image = np.full((200, 300, 3), 60, np.uint8)
    view.publish(image, {"ts": time.time(), "source": "s", "frame": 1, **record}, shown, None,
                 time.monotonic())


def open_page(box, clock: dt.datetime | None = None):
    page = box["context"].new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    if clock is not None:
        page.clock.set_fixed_time(clock)
    page.goto(box["base"] + "/")
    page.wait_for_selector("#login:not([hidden]), #app:not([hidden])")
    if page.is_visible("#login"):
        page.fill("#pin", PIN)
        page.click("#unlock")
    page.wait_for_selector("#app:not([hidden])")
    page.wait_for_function("window.sonoedge.lastState !== null", **WAIT)
    return page, errors


def shows_exam(page, exam_id: str) -> None:
    page.wait_for_function(f"(window.sonoedge.lastState.exam || {{}}).exam_id === '{exam_id}'",
                           **WAIT)


def flags(page) -> list[str]:
    return page.eval_on_selector_all("#flags li", FLAGS)


def say(page, key: str, **values) -> str:
    """The page's own words for a catalog key (its t(), the language it shows)."""
    return page.evaluate("([k, v]) => window.sonoedge.t(k, v)", [key, values])


def stays(pages, condition: str, seconds: float = 2.5) -> bool:
    """`condition` holds through several state messages (one a second), not just once: on
    a page, or on each of a list of pages (tablets) watched through the same seconds."""
    pages = pages if isinstance(pages, list | tuple) else [pages]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not all(page.evaluate(condition) for page in pages):
            return False
        time.sleep(0.1)
    return True


# -- 1 ---------------------------------------------------------------------------------------
def test_dates_typed_for_one_exam_never_land_on_the_exam_begun_as_she_typed(box, view):
    """She types the last period for the ended exam on her card; the next woman's exam
    begins as she types; she taps Set. The device keeps nothing and the page says so; the
    field then shows the new exam's (none), and dates entered for it are kept with it."""
    view.exam = exam("exam-a", running=False, bio=BIO_20W, ended_by="gap")
    page, errors = open_page(box)
    shows_exam(page, "exam-a")
    page.click("#lmp")
    page.fill("#lmp", day(-140))  # typed for exam A, the field still focused
    view.exam = exam("exam-b")  # the next woman's exam begins as she types
    shows_exam(page, "exam-b")
    assert page.evaluate("document.activeElement.id") == "lmp"
    page.click("#lmp-form button")
    refused = say(page, "screen.lmp_refused_changed")
    page.wait_for_function(f"[...document.querySelectorAll('#flags li')]"
                           f".some(li => li.textContent === {refused!r})", **WAIT)
    assert view.ga_dates is None, view.ga_dates  # not on the next woman's exam
    assert list(view.dates_to_keep) == []  # nor queued for her journal entry
    assert page.input_value("#lmp") == ""  # the field shows exam B's dates: none yet
    # entered again, now for the exam on the card: kept with it
    page.fill("#lmp", day(-100))
    page.click("#lmp-form button")
    page.wait_for_function(f"window.sonoedge.lastState.screening.lmp === '{day(-100)}'",
                           **WAIT)
    assert view.ga_dates["exam_id"] == "exam-b"
    assert list(view.dates_to_keep) == [("exam-b", {"lmp": day(-100), "today": day()})]
    assert not errors


# -- 2 ---------------------------------------------------------------------------------------
def test_cleared_dates_leave_every_tablets_field_empty(box, view):
    """Dates set on tablet A show on tablet B; cleared on A, both fields are empty and stay
    so through the next states (they came back from the state before the clear)."""
    view.exam = exam("exam-c", bio=BIO_20W)
    publish(view, {"plane": TV, "plane_confidence": 0.9, "roi": None,
                   "quality": {"score": 0.8}})
    a, errors_a = open_page(box)
    b, errors_b = open_page(box)
    shows_exam(a, "exam-c")
    shows_exam(b, "exam-c")
    a.fill("#lmp", day(-140))
    a.click("#lmp-form button")
    for page in (a, b):
        page.wait_for_function(f"document.querySelector('#lmp').value === '{day(-140)}'",
                               **WAIT)
    for round_ in range(2):  # cleared, set again, cleared: each time the field stays empty
        # Tablet A's page in front, as on its own screen: a page behind another gets no
        # animation frames, and a click's wait for a steady button took 1-2 s each.
        a.bring_to_front()
        a.fill("#lmp", "")
        a.click("#lmp-form button")
        for page in (a, b):
            page.wait_for_function("window.sonoedge.lastState.screening.lmp === null", **WAIT)
        # both tablets watched through the same states (not one after the other)
        assert stays((a, b), "document.querySelector('#lmp').value === ''"), \
            (round_, a.input_value("#lmp"), b.input_value("#lmp"))
        for page in (a, b):
            assert flags(page)[-1] == say(page, "screen.enter_lmp")
        assert view.ga_dates is None
        a.fill("#lmp", day(-140))
        a.click("#lmp-form button")
        a.wait_for_function(f"window.sonoedge.lastState.screening.lmp === '{day(-140)}'",
                            **WAIT)
    assert not errors_a and not errors_b


# -- 3 ---------------------------------------------------------------------------------------
def test_the_ended_exams_figures_never_sit_over_the_next_head(box, view):
    """After Stop (the hold), the probe on the next woman's head: the image shows the
    frame's own HC, BPD and GA, never the ended exam's; the card keeps the ended exam's.
    While an exam runs, the image shows that exam's figures (one source for all three)."""
    view.exam = exam("exam-d", running=False, bio=BIO_20W, ended_by="command")
    view.holding = True  # what LoopHook sets after the page's Stop
    page, errors = open_page(box)
    shows_exam(page, "exam-d")
    frame = {"plane": TV, "plane_confidence": 0.9, "roi": None, "quality": {"score": 0.8},
             "head": {"status": "ok", "ellipse": [150, 100, 60, 45, 0]},
             "biometry": {"status": "ok", "hc_mm": 260.0, "bpd_mm": 70.0, "ofd_mm": 90.0,
                          "ga_weeks": 28.3}}

    def image_lines() -> list[str]:
        end = time.monotonic() + 5
        while time.monotonic() < end:  # frames until the page has drawn this one
            publish(view, frame)
            time.sleep(0.1)
            header = page.evaluate("window.sonoedge.lastHeader")
            if header and (header.get("biometry") or {}).get("hc_mm") == 260.0:
                break
        page.evaluate("new Promise(r => setTimeout(r, 1200))")  # a state after that frame
        return [s.text_content() for s in page.query_selector_all("#ga .line")]

    lines = image_lines()
    assert say(page, "overlay.hc", mm="260") in lines, lines
    assert say(page, "overlay.hc", mm="175") not in lines, lines
    assert not any("20w 0d" in line for line in lines), lines
    assert say(page, "overlay.hc", mm="175") in page.text_content("#exam-bio")  # the card
    # the next exam runs and has measured: its figures on the image
    view.holding = False
    view.exam = exam("exam-e", bio=BIO_20W)
    shows_exam(page, "exam-e")
    lines = image_lines()
    assert say(page, "overlay.hc", mm="175") in lines, lines
    assert not errors


# -- 4, 5, 6 on the page -----------------------------------------------------------------------
def test_a_head_outside_hadlocks_span_is_said_so_on_the_page(box, view):
    """HC 80 mm (about 13 weeks, below Hadlock's 14-42): the image, the card and the
    earlier exams say why there is no age; against dates of 20 weeks the flag says it is
    smaller than any age the formula covers (no "0 days"); the cephalic index (69.89,
    flagged low) reads 69.9, never "70, below the usual 70-87"."""
    view.exam = exam("exam-f", bio=BIO_SMALL)
    publish(view, {"plane": TV, "plane_confidence": 0.9, "roi": None,
                   "quality": {"score": 0.8},
                   "head": {"status": "ga_out_of_range", "ellipse": [150, 100, 40, 30, 0]},
                   "biometry": {"status": "ga_out_of_range", "hc_mm": 80.0, "bpd_mm": 22.0,
                                "ofd_mm": 30.0, "ga_weeks": None}})
    page, errors = open_page(box)
    shows_exam(page, "exam-f")
    page.fill("#lmp", day(-140))
    page.click("#lmp-form button")
    page.wait_for_function("(window.sonoedge.lastState.screening.hc_dates || {}).flag "
                           "=== 'small'", **WAIT)
    page.wait_for_function("window.sonoedge.lastHeader !== null", **WAIT)
    page.evaluate("new Promise(r => setTimeout(r, 300))")
    ci_line, dates_line = flags(page)
    assert ci_line == say(page, "screen.ci_low", ci="69.9", low=70, high=87), ci_line
    assert dates_line == say(page, "screen.hc_small_beyond", ga="20w 0d", mm="175", hc="80",
                             tol=10), dates_line
    assert "0 days" not in dates_line
    outside = say(page, "report.ga_outside")
    assert outside != "report.ga_outside"
    assert outside in page.text_content("#exam-bio")  # the card
    assert outside in page.text_content("#ga")  # the image
    page.wait_for_selector(f'#earlier-list a[data-exam="{box["journaled"]}"]')
    row = page.text_content(f'#earlier-list a[data-exam="{box["journaled"]}"]')
    assert outside in row, row  # the earlier exams
    # a CI of 69.96 (70.0 to one decimal, flagged low) still reads below its bound
    view.exam = exam("exam-g", bio={**BIO_20W, "bpd_mm": 43.63, "ofd_mm": 60.0})
    shows_exam(page, "exam-g")
    page.wait_for_function("window.sonoedge.lastState.screening.cephalic_index.ci === 70",
                           **WAIT)
    assert flags(page)[0] == say(page, "screen.ci_low", ci="69.9", low=70, high=87)
    assert not errors


# -- 4, 5 on the report --------------------------------------------------------------------------
def test_the_report_says_the_same_of_a_head_outside_hadlocks_span(box, view):
    """The journaled exam's report (HC 80 mm, dates of 20 weeks): the CI to one decimal
    and the HC-for-dates flag without a difference in days, as the page says them."""
    page, errors = open_page(box)
    page.goto(f"{box['base']}/report/{box['journaled']}?lang=en")
    lines = page.eval_on_selector_all("section.screen li", FLAGS)
    assert lines[0].startswith("Head shape: cephalic index 69.9, below the usual 70–87"), lines
    assert "0 days" not in lines[1] and "smaller than Hadlock's formula gives at any age" \
        in lines[1], lines
    assert page.is_visible("section.screen li.flag")
    page.goto(f"{box['base']}/report/{box['journaled']}?lang=fr")
    lines = page.eval_on_selector_all("section.screen li", FLAGS)
    assert "indice céphalique 69,9" in lines[0] and "0 jours" not in lines[1] \
        and "Hadlock" in lines[1], lines
    assert not errors


# -- 7 -----------------------------------------------------------------------------------------
def test_a_tablet_whose_clock_is_not_set_is_told_so(box, view):
    """A tablet at 1970: the device refuses its date (not the period), and the page and
    the report say that, not that the period is out of range; its date in words, as every
    date they show (1970-01-02 was a third form beside 02/01/1970 and 2 January 1970)."""
    view.exam = exam("exam-h", bio=BIO_20W)
    page, errors = open_page(box, clock=dt.datetime(1970, 1, 2, 12, 0))
    shows_exam(page, "exam-h")
    page.fill("#lmp", "1969-10-01")
    page.click("#lmp-form button")
    expected = say(page, "screen.lmp_refused_phone_date", today="2 January 1970")
    assert expected != "screen.lmp_refused_phone_date" and "(2 January 1970)" in expected
    page.wait_for_function(f"[...document.querySelectorAll('#flags li')]"
                           f".some(li => li.textContent === {expected!r})", **WAIT)
    assert view.ga_dates is None
    # the report's own date field says the same
    page.goto(f"{box['base']}/report/{box['journaled']}?lang=en")
    page.fill("#report-lmp-date", "1969-10-01")
    page.click("#lmp-keep")
    page.wait_for_function("document.querySelector('#report-lmp-error').textContent !== ''",
                           **WAIT)
    said = page.text_content("#report-lmp-error")
    assert said == expected, said
    assert not errors


def test_the_new_words_are_in_every_catalog():
    """Each key the fixes added, in every language shipped, with its placeholders."""
    import json
    catalogs = Path(__file__).resolve().parents[1] / "edge" / "web" / "i18n"
    for path in sorted(catalogs.glob("*.json")):
        text = json.loads(path.read_text())
        for key in ("screen.hc_small_beyond", "screen.hc_large_beyond"):
            assert all(v in text[key] for v in ("{ga}", "{mm}", "{hc}")), (path.name, key)
        assert "{today}" in text["screen.lmp_refused_phone_date"], path.name
        assert "{status}" in text["screen.lmp_failed_status"], path.name
        assert text["screen.lmp_refused_origin"], path.name


def test_dates_the_box_refuses_as_cross_origin_or_never_gets_are_said_in_the_page_s_words(
        box, view):
    """A page opened through another address than the box's (a proxy that rewrites the
    name) is refused 403 by the real server: the page showed its English line, "cross-origin
    request refused". A box out of reach as she taps Set: the page said nothing at all."""
    view.exam = exam("exam-o", bio=BIO_20W)
    # today's date: the context keeps the clock the test before gave it (1970)
    page, errors = open_page(box, clock=dt.datetime.now())
    shows_exam(page, "exam-o")

    def elsewhere(route):  # the request as a proxy would pass it on, another origin, sent
        # to the real server (Chromium keeps its own Origin on a continued request)
        answer = route.fetch(headers={**route.request.headers,
                                      "origin": "https://clinic.example"})
        assert answer.status == 403, answer.status
        route.fulfill(response=answer)

    def said(expected: str) -> None:
        page.wait_for_function(f"[...document.querySelectorAll('#flags li')]"
                               f".some(li => li.textContent === {expected!r})", **WAIT)

    page.route("**/api/lmp", elsewhere)
    page.fill("#lmp", day(-100))
    page.click("#lmp-form button")
    origin = say(page, "screen.lmp_refused_origin")
    assert origin != "screen.lmp_refused_origin"
    said(origin)
    assert view.ga_dates is None
    page.unroute("**/api/lmp")
    page.route("**/api/lmp", lambda route: route.abort("connectionrefused"))
    page.fill("#lmp", day(-101))
    page.click("#lmp-form button")
    said(say(page, "report.lmp_failed"))
    page.unroute("**/api/lmp")
    # the report's date field says the same of a page opened elsewhere
    page.route("**/api/exams/*/lmp", elsewhere)
    page.goto(f"{box['base']}/report/{box['journaled']}?lang=en")
    page.fill("#report-lmp-date", day(-100))
    page.click("#lmp-keep")
    page.wait_for_function("document.querySelector('#report-lmp-error').textContent !== ''",
                           **WAIT)
    assert page.text_content("#report-lmp-error") == origin
    assert not errors


# -- a midwife's walk, 6 December: after Stop, the page said "Good image: hold still" -----------
def test_after_stop_the_instruction_says_nothing_is_kept_until_start(box, view):
    """After Stop the next exam waits for Start (the hold), and nothing she scans is kept;
    a good live image said "Good image: hold still" in green, as while recording, and she
    scanned on. While held, the instruction says so; once an exam runs, the image's own
    advice again."""
    from edge.exam.feedback import Shown

    good = Shown(TV, 0.9, None, None)
    frame = {"plane": TV, "plane_confidence": 0.9, "roi": None, "quality": {"score": 0.9}}
    view.exam = exam("exam-h", running=False, bio=BIO_20W, ended_by="command")
    view.holding = True
    page, errors = open_page(box)
    shows_exam(page, "exam-h")
    held, good_words = say(page, "instruction.held"), say(page, "instruction.good")
    assert held and held != "instruction.held"

    def instruction_becomes(words: str) -> str:
        end = time.monotonic() + 8
        while time.monotonic() < end:
            publish(view, frame, good)
            time.sleep(0.15)
            if page.text_content("#instruction") == words:
                break
        return page.text_content("#instruction")

    assert instruction_becomes(held) == held
    seen = set()
    for _ in range(15):
        publish(view, frame, good)
        time.sleep(0.2)
        seen.add(page.text_content("#instruction"))
    assert seen == {held}, seen
    assert "good" not in page.get_attribute("#instruction", "class")
    view.holding = False  # Start pressed: a new exam runs
    view.exam = exam("exam-i", bio=BIO_20W)
    shows_exam(page, "exam-i")
    assert instruction_becomes(good_words) == good_words
    assert not errors


def test_a_running_exam_with_every_slot_captured_says_she_may_stop(box, view):
    """Nothing told her the checklist was done: the hint said only that Start is off while
    an exam runs (a midwife's walk). With every slot captured it says the next step."""
    view.exam = exam("exam-j", bio=None)  # running, its head not captured yet
    page, errors = open_page(box)
    shows_exam(page, "exam-j")
    page.wait_for_function("document.querySelector('#exam-hint').textContent === "
                           f"{say(page, 'exam.hint_running')!r}", **WAIT)
    view.exam = exam("exam-j", bio=BIO_20W)  # the head captured: 1 of 1
    page.wait_for_function("document.querySelector('#exam-hint').textContent === "
                           f"{say(page, 'exam.hint_complete')!r}", **WAIT)
    assert say(page, "exam.hint_complete") != "exam.hint_complete"
    assert not errors


def test_a_stop_the_box_did_not_take_is_said_not_dropped(box, view):
    """The page sent Stop and dropped any failure (`.catch(() => {})`): a Stop lost on the
    way left her scanning, the exam still running, with nothing said (a midwife's walk)."""
    view.exam = exam("exam-k", bio=None)
    view.holding = False
    page, errors = open_page(box)
    shows_exam(page, "exam-k")
    page.wait_for_function("!document.querySelector('#stop').disabled", **WAIT)
    page.route("**/api/exam", lambda route: route.abort())  # the network lost it
    page.click("#stop")
    failed = say(page, "exam.command_failed")
    assert failed != "exam.command_failed"
    page.wait_for_function(f"document.querySelector('#exam-hint').textContent === {failed!r}",
                           **WAIT)
    # and Stop is back on for the second try
    page.wait_for_function("!document.querySelector('#stop').disabled", **WAIT)
    page.unroute("**/api/exam")
    assert not errors


def test_the_page_and_the_report_say_what_the_box_does_not_check(box, view):
    """Its only stated limit was four brain anomalies: with twins both heads were mixed
    into one result, and nothing said the heartbeat, the number of babies, the position,
    the placenta or the fluid were hers to check. And the printout had no line for the
    woman's name, so two sheets printed the same afternoon could go into the wrong card
    (a midwife's walk)."""
    page, errors = open_page(box)
    words = say(page, "screen.not_checked")
    assert "number of babies" in words and page.is_visible("[data-i18n='screen.not_checked']")
    assert page.text_content("[data-i18n='screen.not_checked']") == words
    for lang in ("en", "fr"):
        page.goto(f"{box['base']}/report/{box['journaled']}?lang={lang}")
        fine = page.eval_on_selector_all("p.fine", "els => els.map(e => e.textContent)")
        assert any(("number of babies" if lang == "en" else "nombre de bébés") in f
                   for f in fine), fine
        write_in = page.text_content("p.write-in")
        assert write_in.strip() == ("Woman's name or record number:" if lang == "en" else
                                    "Nom de la femme ou numéro de dossier\u202f:"), write_in
        line = page.eval_on_selector("p.write-in .blank",
                                     "e => getComputedStyle(e).borderBottomStyle")
        assert line == "solid"  # a line to write on
    assert not errors


def test_the_best_frames_range_on_the_image_wraps_in_french_on_a_phone(box, view):
    """On a 390 px phone in French, "meilleures images 24 S 2 j – 24 S 3 j" ran past the
    figures' box and was cut ("meilleures images 24 S…", a midwife's walk)."""
    view.exam = exam("exam-l", bio={**BIO_20W, "ga_low_weeks": 24.29, "ga_high_weeks": 24.43,
                                    "ga_weeks": 24.43, "hc_mm": 223.3})
    page, errors = open_page(box)
    try:
        _best_frames_range_in_french(page, view)
    finally:  # the language is kept in the browser: the next test's page is in English
        page.evaluate("localStorage.removeItem('sonoedge.lang')")
    assert not errors


def _best_frames_range_in_french(page, view) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    page.select_option("select.lang >> nth=-1", "fr")
    page.wait_for_function("window.sonoedge.t('overlay.ga_range', {range: 'x'}) !== "
                           "'best frames x'", **WAIT)
    shows_exam(page, "exam-l")
    frame = {"plane": TV, "plane_confidence": 0.9, "roi": None, "quality": {"score": 0.8},
             "head": {"status": "ok", "ellipse": [150, 100, 60, 45, 0]},
             "biometry": {"status": "ok", "hc_mm": 223.3, "bpd_mm": 58.0, "ofd_mm": 80.0,
                          "ga_weeks": 24.43}}
    end = time.monotonic() + 8
    while time.monotonic() < end:
        publish(view, frame)
        time.sleep(0.15)
        if page.query_selector("#ga .line.small"):
            break
    cut = page.eval_on_selector_all(
        "#ga .line", "els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
                     ".map(e => e.textContent)")
    assert page.query_selector("#ga .line.small"), page.inner_html("#ga")
    assert cut == [], cut


def test_whose_figures_they_are_fits_one_line_over_the_image_on_a_phone(box, view):
    """Over a head during an exam, the figures are the exam's (its best heads), said by a
    label above them: on a 390 px phone in French it wrapped to "Examen, meilleures /
    têtes :", two lines of the figures' box over the image. One line in every language
    ("Meilleures têtes :": the best heads are the exam's, against "Cette image :")."""
    view.exam = exam("exam-o", bio=BIO_20W)
    page, errors = open_page(box)
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        for lang in ("en", "fr"):
            page.select_option("select.lang >> nth=-1", lang)
            page.wait_for_function("lang => document.documentElement.lang === lang", arg=lang,
                                   **WAIT)
            label = say(page, "overlay.of_exam")
            shows_exam(page, "exam-o")
            lines = _label_lines(page, view, label)
            assert lines == 1, (lang, label, lines)
    finally:  # the language is kept in the browser: the next test's page is in English
        page.evaluate("localStorage.removeItem('sonoedge.lang')")
    assert not errors


def test_the_exam_s_age_over_the_image_is_said_give_or_take_and_never_cut(box, view):
    """The exam's age over the image said "GA 20w 0d" where its card said "GA 20w 0d ± 10
    days" (ACOG's redating threshold): the image now says "± 10 d" too, on the small line
    under the age, which wraps: on a 390 px phone "AG 24 SA 3 j ± 14 j" on the age's own
    line was cut at the image's edge."""
    view.exam = exam("exam-t", bio=BIO_20W)
    page, errors = open_page(box)
    page.set_viewport_size({"width": 390, "height": 844})
    frame = {"plane": TV, "plane_confidence": 0.9, "roi": None, "quality": {"score": 0.8},
             "head": {"status": "ok", "ellipse": [150, 100, 60, 45, 0]},
             "biometry": {"status": "ok", "hc_mm": 175.0, "bpd_mm": 47.0, "ofd_mm": 60.0,
                          "ga_weeks": 20.0}}
    try:
        for lang in ("en", "fr"):
            page.select_option("select.lang >> nth=-1", lang)
            page.wait_for_function("lang => document.documentElement.lang === lang", arg=lang,
                                   **WAIT)
            shows_exam(page, "exam-t")
            give_or_take = say(page, "overlay.ga_tolerance", days=10)
            end = time.monotonic() + 8
            while time.monotonic() < end and give_or_take not in page.inner_text("#ga"):
                publish(view, frame)
                time.sleep(0.15)
            assert give_or_take in page.inner_text("#ga"), (lang, page.inner_html("#ga"))
            cut = page.eval_on_selector_all(
                "#ga .line", "els => els.filter(e => e.scrollWidth > e.clientWidth + 1)"
                             ".map(e => e.textContent)")
            assert cut == [], (lang, cut)
    finally:  # the language is kept in the browser: the next test's page is in English
        page.evaluate("localStorage.removeItem('sonoedge.lang')")
    assert not errors


def _label_lines(page, view, label: str) -> int:
    """How many lines `label` takes over the image, once a head frame shows the figures."""
    frame = {"plane": TV, "plane_confidence": 0.9, "roi": None, "quality": {"score": 0.8},
             "head": {"status": "ok", "ellipse": [150, 100, 60, 45, 0]},
             "biometry": {"status": "ok", "hc_mm": 175.0, "bpd_mm": 47.0, "ofd_mm": 60.0,
                          "ga_weeks": 20.0}}
    find = ("l => [...document.querySelectorAll('#ga .line')]"
            ".find(e => e.textContent === l)")
    end = time.monotonic() + 8
    while time.monotonic() < end and not page.evaluate(f"l => !!({find})(l)", label):
        publish(view, frame)
        time.sleep(0.15)
    return page.evaluate(f"""l => {{ const e = ({find})(l); if (!e) return 0;
        const r = document.createRange(); r.selectNodeContents(e);
        return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; }}""",
                         label)


# every state of the uplink chip, with counts longer than a clinic's outbox holds (and
# than the exams a box sends in years, gone without a receipt: `unconfirmed`)
UPLINK_STATES = [dict(enabled=False, connected=False, pending=9999),
                 dict(enabled=True, connected=False, pending=9999),
                 dict(enabled=True, connected=True, pending=9999),
                 # her exams the broker refused (the box not authorised): said in red
                 dict(enabled=True, connected=True, pending=0, rejected=9999),
                 dict(enabled=True, connected=True, pending=0, receipts_seen=False),
                 dict(enabled=True, connected=True, pending=0, awaiting_receipt=9999,
                      receipts_seen=True),
                 dict(enabled=True, connected=True, pending=0, awaiting_receipt=9999,
                      unconfirmed=90000, receipts_seen=True),
                 dict(enabled=True, connected=True, pending=0, awaiting_receipt=0,
                      receipts_seen=True),
                 # only exams gone over a week ago without a receipt (before the district
                 # sent any): not waited for, not claimed as all at the district
                 dict(enabled=True, connected=True, pending=0, awaiting_receipt=0,
                      unconfirmed=0, unconfirmed_old=99999, receipts_seen=True)]


def test_every_uplink_chip_fits_the_strip_of_a_phone_in_every_language(box, view):
    """The uplink chip says whether her exams are at the district ("En ligne · 9999 non
    confirmés par le district", the longest): on a 390 px phone each of its texts, drawn
    as the page draws it, ends inside the strip, never cut at its edge."""
    page, errors = open_page(box)
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        for lang in ("en", "fr"):
            page.select_option("select.lang >> nth=-1", lang)
            page.wait_for_function("lang => document.documentElement.lang === lang", arg=lang,
                                   **WAIT)
            drawn = page.evaluate("""states => states.map(up => {
                const el = document.querySelector('#uplink');
                const [text, cls] = window.sonoedge.uplinkChip(up);
                el.textContent = text; el.className = 'chip' + (cls ? ' ' + cls : '');
                const strip = document.querySelector('#status');
                const pad = parseFloat(getComputedStyle(strip).paddingRight);
                const fits = el.getBoundingClientRect().right
                    <= strip.getBoundingClientRect().right - pad + 0.5;
                el.textContent = '';
                return [text, fits]; })""", UPLINK_STATES)
            assert len({text for text, _ in drawn}) == len(UPLINK_STATES), drawn
            assert not [text for text, _ in drawn if text.startswith("status.")], drawn
            assert [text for text, fits in drawn if not fits] == [], (lang, drawn)
            assert drawn[-1][0] == say(page, "status.uplink_confirmed_recent"), drawn[-1]
            title = page.evaluate("up => window.sonoedge.uplinkChip(up)[2]", UPLINK_STATES[-1])
            assert say(page, "status.uplink_counts_old", o=99999) in title, title
    finally:  # the language is kept in the browser: the next test's page is in English
        page.evaluate("localStorage.removeItem('sonoedge.lang')")
    assert not errors


def test_the_report_gives_whole_millimetres_and_a_french_decimal_comma(box, view):
    """The report gave "HC 80.0 mm" where the page gives 80, and "indice céphalique 73.3"
    in French, where a decimal point is not how she writes a number (a midwife's walk)."""
    page, errors = open_page(box)
    for lang, word in (("en", "cephalic index"), ("fr", "indice céphalique")):
        page.goto(f"{box['base']}/report/{box['journaled']}?lang={lang}")
        bio = page.text_content("section.bio")
        assert "80 mm" in bio and "80.0" not in bio and "80,0" not in bio, bio
        body = page.text_content("main")
        ci = re.search(word + r" (\d+[.,]\d)", body)
        assert ci, body
        assert ci.group(1)[-2] == ("." if lang == "en" else ","), ci.group(0)
    assert not errors


def test_the_bpd_she_copies_says_it_is_outer_to_outer(box, view):
    """The card gave "BPD 47 mm" in large type, and only the report's fine print said it is
    measured outer to outer: on an outer-to-inner BPD chart (Hadlock's) it reads a few
    days old (a midwife's walk)."""
    view.exam = exam("exam-m", bio=BIO_20W)
    page, errors = open_page(box)
    shows_exam(page, "exam-m")
    page.wait_for_function("document.querySelector('#exam-bio').textContent.includes('BPD')",
                           **WAIT)
    assert "BPD 47 mm (outer to outer)" in page.text_content("#exam-bio")
    page.goto(f"{box['base']}/report/{box['journaled']}?lang=en")
    assert "Biparietal diameter (BPD), outer to outer" in page.text_content("section.bio")
    assert not errors


def test_the_last_period_kept_is_said_in_words_beside_the_field(box, view):
    """The date field shows the phone's own order: 07/05/2026 is 5 July on one tablet and
    7 May to a midwife who reads it the other way, and nothing repeated the date kept
    (a midwife's walk). Once kept, it is said with the month's name."""
    view.exam = exam("exam-n")
    page, errors = open_page(box)
    shows_exam(page, "exam-n")
    assert page.is_hidden("#lmp-words")
    lmp = dt.date.today() - dt.timedelta(days=100)
    page.fill("#lmp", lmp.isoformat())
    page.click("#lmp-form button")
    page.wait_for_function(f"window.sonoedge.lastState.screening.lmp === '{lmp.isoformat()}'",
                           **WAIT)
    want = say(page, "screen.lmp_words", date=f"{lmp.day} {lmp.strftime('%B')} {lmp.year}")
    page.wait_for_function(f"document.querySelector('#lmp-words').textContent === {want!r}",
                           **WAIT)
    assert page.is_visible("#lmp-words")
    assert not errors
