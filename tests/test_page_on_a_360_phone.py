"""The midwife's page on a 360x640 phone, in English and in French (a walk, 7 December):

1. Over a good head image the box refuses for its set-up (no calibration, a wrong one, the
   depth scale unread, a picture out of shape), the yellow instruction "Good image, but the
   head is not measured: the picture is out of shape. Ask for the box to be set up." took
   six lines at its arm's-length size and pushed the exam's card below the fold. It is now
   "Head not measured", as large, and under it, smaller, the fault and what to ask for: at
   most three lines, and the card's heading on the screen.
2. In French "Arrêter l'examen" ran out of its card: "Commencer" and "l'examen" were each
   too wide for half of it. Start and Stop now stay inside the card, side by side where
   they fit, one under the other where they do not; in English and on a tablet as before.

The real server (`edge.web.server.WebServer`, its `LiveView` set by hand as the loop sets
it, frames published as the loop publishes them, the exam a real `ExamSession`'s snapshot)
in headless Chromium. What is measured is read in one go, in the frame the page drew.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from edge.exam.feedback import Shown
from edge.exam.protocol import load_protocols
from edge.exam.session import ExamSession
from edge.models.biometry import SCREEN_STRETCHED, SET_UP_STATUSES
from edge.web.live import LiveView, exam_snapshot
from tests.web_harness import page_on_view, scanning_view

pytest.importorskip("playwright.sync_api")
WAIT = {"timeout": 10_000, "polling": 100}
PHONE, SMALL, TABLET = (360, 640), (320, 568), (1280, 800)
HEAD = "Brain (Tv.)"

# The instruction's lines (the line boxes of its words, the headline's and the detail's),
# its headline's type size, and the boxes of the exam card, its heading and its buttons.
LAYOUT = """() => {
  const box = (s) => { const r = document.querySelector(s).getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; };
  const said = document.querySelector('#instruction');
  const tops = [];
  const walk = document.createTreeWalker(said, NodeFilter.SHOW_TEXT);
  for (let node = walk.nextNode(); node; node = walk.nextNode()) {
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const r of range.getClientRects()) {
      if (r.width > 1 && !tops.some((t) => Math.abs(t - r.top) < 4)) tops.push(r.top);
    }
  }
  const head = said.querySelector('.head') || said;
  return {text: said.textContent, lines: tops.length,
          headPx: parseFloat(getComputedStyle(head).fontSize), screen: window.innerHeight,
          card: box('#exam'), heading: box('#exam .row'), start: box('#start'),
          stop: box('#stop')};
}"""


def _refused_exam(status: str) -> dict:
    """A running head exam whose every head the box refused for `status`, as the card has
    it (a stretched picture's with the setting that undoes it and its frame size)."""
    session = ExamSession(load_protocols()["biometry"])
    bio = {"status": status, "scale": "calibration"}
    if status == SCREEN_STRETCHED:
        bio.update(stretch_setting=0.9375, stretch_frame="720x576")
    for _ in range(3):
        session.add({"plane": HEAD, "plane_confidence": 0.9, "latency_ms": 9.0,
                     "biometry": bio})
    return exam_snapshot(session, True)


@contextmanager
def scanning(view: LiveView, status: str):
    """Good frames of a head plane, its heads refused for `status`, about ten a second, as
    the loop publishes them (its steadied set-up verdict with each)."""
    stop = threading.Event()
    image = np.full((480, 640, 3), 60, np.uint8)

    def run() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            record = {"ts": time.time(), "source": "s", "frame": n, "plane": HEAD,
                      "plane_confidence": 0.9, "roi": None, "quality": {"score": 0.9},
                      "head": {"status": "ok", "ellipse": [320, 240, 120, 90, 0]},
                      "biometry": {"status": status}}
            view.publish(image, record, Shown(HEAD, 0.9, None, None), None,
                         time.monotonic(), 90, False, status)
            stop.wait(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@pytest.fixture
def page(tmp_path):
    """The page unlocked on a box whose view is set by hand; (page, view, errors)."""
    view = scanning_view({"plane_student": "1.5.0"}, [HEAD, "Brain (Cb.)"])
    with page_on_view(tmp_path, view, PHONE) as (page, errors):
        yield page, view, errors


def _in_language(page, lang: str) -> None:
    page.select_option("#controls select.lang", lang)
    page.wait_for_function(f"document.documentElement.lang === '{lang}'", **WAIT)


def _layout(page, size: tuple[int, int]) -> dict:
    """LAYOUT at `size`, at the page's top, once the instruction is the yellow one of the
    page's language and two reads 100 ms apart agree."""
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function(
        "() => { const i = document.querySelector('#instruction');"
        " return i.className === 'instruction fix' && i.textContent !== ''; }", **WAIT)
    last = None
    for _ in range(30):
        now = page.evaluate(LAYOUT)
        if now == last:
            return now
        last = now
        page.wait_for_timeout(100)
    return last


@pytest.mark.parametrize("status", SET_UP_STATUSES)
def test_on_a_360_phone_the_set_up_instruction_is_three_lines_and_the_card_shows(page, status):
    page, view, errors = page
    view.exam = _refused_exam(status)
    with scanning(view, status):
        for lang in ("en", "fr"):
            _in_language(page, lang)
            head, detail = page.evaluate(
                f"[window.sonoedge.t('instruction.not_measured'),"
                f" window.sonoedge.t('instruction.not_measured_{status}')]")
            seen = _layout(page, PHONE)
            # what is wrong and what to do, in three lines at most
            assert seen["lines"] <= 3, (lang, seen["lines"], seen["text"])
            assert seen["text"] == f"{head} {detail}", (lang, seen["text"])
            assert seen["headPx"] >= 27, (lang, seen["headPx"])  # read at arm's length
            # the exam's card, its title and its count ("1 of 1", yellow), on the screen
            assert seen["heading"]["bottom"] <= seen["screen"], (lang, seen)
    assert not errors, errors


def test_start_and_stop_stay_inside_their_card_in_french_and_in_english(page):
    page, view, errors = page
    view.exam = _refused_exam("pixel_size_missing")
    with scanning(view, "pixel_size_missing"):
        for lang in ("fr", "en"):
            _in_language(page, lang)
            for size in (PHONE, SMALL, TABLET):
                seen = _layout(page, size)
                card = seen["card"]
                for button in ("start", "stop"):
                    inside = seen[button]
                    assert card["left"] <= inside["left"] and inside["right"] <= card["right"] \
                        and card["top"] <= inside["top"] and inside["bottom"] <= card["bottom"], \
                        (lang, size, button, inside, card)
                # side by side on a 360 px phone and on a tablet, in both languages
                if size != SMALL:
                    assert abs(seen["start"]["top"] - seen["stop"]["top"]) < 1, (lang, size)
    assert not errors, errors
