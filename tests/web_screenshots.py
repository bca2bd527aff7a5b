"""`make screenshots`: the midwife's page at phone and tablet sizes, under build/screenshots/.

The device loop plays a clip of real frames (tests/web_harness.py); two browser pages watch
it at once, a phone (390x844, portrait) and a tablet (1280x800, landscape). Each is saved
while a head is on screen (with the heatmap where the model has one), the tablet also on
another plane after it (`tablet-not-head.png`: the head's figures off the image), in French on the
phone (with dates the device refused, `phone-fr-refused.png`, and dates it could not take
yet, `phone-fr-busy.png`), and after the clip has
ended; plus the login screen. The first exam is stopped
after those shots and the next one begins, so the "Earlier exams" panel lists two
(`*-earlier.png`), and the first exam's printable report is saved at both sizes and as
printed on A4 (`report.png`, `phone-report.png`, `report-print.png`), with its dates form
refused by a busy device (`report-busy.png`). Not committed.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from pathlib import Path

from tests.conftest import DATA, REPO
from tests.web_harness import DATES_REFUSED, PIN, chromium, device, make_clip

OUT = REPO / "build" / "screenshots"
SIZES = {"phone": {"width": 390, "height": 844}, "tablet": {"width": 1280, "height": 800}}


# a plane the exam does not measure the head on, shown live after the exam measured one
NOT_A_HEAD = """() => { const h = window.sonoedge.lastHeader, s = window.sonoedge.lastState;
  return !!(h && h.shown && h.shown.plane && !h.shown.held && !h.ellipse && s && s.exam &&
            s.exam.biometry &&
            s.status.phase === "running" && !s.protocol.head_planes.includes(h.shown.plane)); }"""


def _login(page, base: str) -> None:
    page.goto(base + "/")
    page.wait_for_selector("#login:not([hidden]), #app:not([hidden])")
    if page.is_visible("#login"):  # the context shares cookies: the second page is in
        page.fill("#pin", PIN)
        page.click("#unlock")
    page.wait_for_selector("#app:not([hidden])")


def _next_exam(page) -> None:
    """Stop the exam on screen and let the next one begin (the next woman)."""
    page.bring_to_front()
    page.wait_for_function("window.sonoedge.lastState.exam && "
                           "window.sonoedge.lastState.exam.running", timeout=60_000, polling=200)
    first = page.evaluate("window.sonoedge.lastState.exam.exam_id")
    page.click("#stop")
    page.wait_for_function("!document.querySelector('#start').disabled", timeout=30_000,
                           polling=200)
    page.click("#start")
    page.wait_for_function(f"window.sonoedge.lastState.exam.exam_id !== '{first}'",
                           timeout=30_000, polling=200)


def _earlier_and_report(context, pages) -> None:
    """The "Earlier exams" panel at both sizes, and the oldest exam's report."""
    for name, page in pages.items():
        page.bring_to_front()
        page.wait_for_function("document.querySelectorAll('#earlier-list a').length >= 2",
                               timeout=30_000, polling=200)
        if name == "phone":  # one column: the panel is below the exam, scrolled to
            page.eval_on_selector("#earlier", "el => window.scrollTo(0, el.getBoundingClientRect()"
                                  ".top + scrollY - document.querySelector('#status')"
                                  ".offsetHeight - 8)")
            page.wait_for_timeout(300)
            page.screenshot(path=str(OUT / "phone-earlier.png"))
            page.evaluate("window.scrollTo(0, 0)")
        else:
            page.screenshot(path=str(OUT / "tablet-earlier.png"), full_page=True)
    href = pages["tablet"].get_attribute("#earlier-list li:last-child a", "href")
    report = context.new_page()
    for name, size in (("report", SIZES["tablet"]), ("phone-report", SIZES["phone"])):
        report.set_viewport_size(size)
        report.goto(pages["tablet"].url.rstrip("/") + href)
        report.wait_for_function("[...document.images].every(i => i.complete)",
                                 timeout=30_000, polling=200)
        report.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
    # the report's dates refused by a device whose queue of dates is full: 503
    report.route("**/lmp", lambda route: route.fulfill(status=503, body="busy"))
    report.fill("#report-lmp-date", (dt.date.today() - dt.timedelta(days=7 * 20)).isoformat())
    report.click("#lmp-keep")
    report.wait_for_function("document.querySelector('#report-lmp-error').textContent",
                             timeout=30_000, polling=200)
    report.locator("#report-lmp").screenshot(path=str(OUT / "report-busy.png"))
    report.unroute("**/lmp")
    report.reload()
    report.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
    report.emulate_media(media="print")
    report.screenshot(path=str(OUT / "report-print.png"), full_page=True)
    report.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sonoedge-shots-") as tmp_name:
        tmp = Path(tmp_name)
        # a midwife holds the probe on a view for a while: 2 s per head
        # two rounds: the exam begun by Start after the dates still meets a head, then another
        # plane, however long the steps before it took (one round ran out on a slow hour)
        clip = make_clip(DATA, tmp / "clip.avi", per_head=30, per_example=15, rounds=2)
        with device(tmp, clip) as (base, _proc), chromium(tmp) as context:
            pages = {}
            for name, size in SIZES.items():
                page = context.new_page()
                page.set_viewport_size(size)
                pages[name] = page
            pages["phone"].goto(base + "/")
            pages["phone"].wait_for_selector("#login:not([hidden])")
            pages["phone"].screenshot(path=str(OUT / "phone-login.png"))
            for page in pages.values():
                _login(page, base)
                if not page.is_disabled("#heatmap-toggle"):
                    page.check("#heatmap-toggle")
                    # checking it scrolled the page down to the switch; a full-page shot
                    # of a scrolled page draws the sticky status bar mid-page
                    page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
            # a head the name has settled on: the first frames of a head after another
            # view still bear the name the hold keeps (held, dimmed, from the second)
            head = "window.sonoedge.lastHeader && window.sonoedge.lastHeader.ellipse " \
                   "&& window.sonoedge.lastHeader.biometry && window.sonoedge.lastHeader" \
                   ".shown && window.sonoedge.lastHeader.shown.plane === " \
                   "window.sonoedge.lastHeader.plane"
            for name, page in pages.items():
                page.bring_to_front()  # a page in the background draws nothing (no rAF)
                page.wait_for_function(head, timeout=60_000, polling=200)
                page.wait_for_timeout(300)
                page.screenshot(path=str(OUT / f"{name}-head.png"), full_page=True)
            phone = pages["phone"]
            phone.bring_to_front()
            phone.select_option("#controls select.lang", "fr")
            phone.wait_for_timeout(400)
            phone.screenshot(path=str(OUT / "phone-fr.png"), full_page=True)
            # dates the device refused (here: another exam had begun), said in French
            phone.route("**/api/lmp", lambda route: route.fulfill(
                status=409, body=DATES_REFUSED))
            phone.fill("#lmp", (dt.date.today() - dt.timedelta(days=7 * 20)).isoformat())
            phone.click("#lmp-form button")
            phone.wait_for_selector("#flags li.flag", timeout=30_000)
            phone.locator("#screening").screenshot(path=str(OUT / "phone-fr-refused.png"))
            phone.unroute("**/api/lmp")
            # a device whose queue of dates is full (models loading, no signal): 503
            phone.route("**/api/lmp", lambda route: route.fulfill(status=503, body="busy"))
            phone.click("#lmp-form button")
            phone.wait_for_function("document.querySelector('#flags').textContent"
                                    ".includes(\"pas encore gard\")", timeout=30_000)
            phone.locator("#screening").screenshot(path=str(OUT / "phone-fr-busy.png"))
            phone.unroute("**/api/lmp")
            phone.fill("#lmp", "")
            phone.select_option("#controls select.lang", "en")
            # the midwife enters the last period for this exam: its report prints it
            tablet = pages["tablet"]
            tablet.bring_to_front()
            tablet.fill("#lmp", (dt.date.today() - dt.timedelta(days=7 * 22)).isoformat())
            tablet.press("#lmp", "Enter")
            tablet.wait_for_function("window.sonoedge.lastState.screening.hc_dates",
                                     timeout=30_000, polling=200)
            _next_exam(tablet)
            # the next exam's head, then another plane (the clip's heart, abdomen or femur):
            # its figures in the card, none on the image
            tablet.wait_for_function(NOT_A_HEAD, timeout=60_000, polling=100)
            tablet.wait_for_function("[...document.images].every(i => i.complete)",
                                     timeout=10_000)  # the captured head's thumbnail
            tablet.evaluate("window.scrollTo(0, 0)")  # see the heatmap switch above
            tablet.wait_for_timeout(300)
            tablet.screenshot(path=str(OUT / "tablet-not-head.png"), full_page=True)
            for name, page in pages.items():
                page.bring_to_front()
                page.wait_for_function("window.sonoedge.lastState && "
                                       "window.sonoedge.lastState.status.phase === 'ended'",
                                       timeout=90_000, polling=200)
                page.wait_for_timeout(1200)
                page.screenshot(path=str(OUT / f"{name}-ended.png"), full_page=True)
            _earlier_and_report(context, pages)
    for path in sorted(OUT.glob("*.png")):
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
