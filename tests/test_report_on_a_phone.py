"""The printable report on a phone (a user's walk, 7 December): its head figures sat in
45% of the column beside their names, so on a 320-390 px phone "223 mm" broke between the
number and the unit and the age ran down the screen a word a line ("24w / 3d ± / 14 /
days / (best / frames / ..."). On a phone each name now stands above its figure.

The real server (`edge.web.server.WebServer`) over a journal holding one ended exam, in
headless Chromium at phone widths; printed on A4 the table is as before.
"""

from __future__ import annotations

import time

import pytest

from edge.exam.protocol import load_protocols
from edge.exam.session import ExamSession
from edge.store.journal import JOURNAL_FILE, Journal
from edge.web.auth import read_pin, write_pin
from edge.web.live import LiveView
from edge.web.server import WebServer
from edge.web.settings import WebSettings
from tests.servers import free_port
from tests.web_harness import PIN, chromium

pytest.importorskip("playwright.sync_api")
BIO = {"measured": 142, "declined": {}, "hc_mm": 223.0, "bpd_mm": 58.0, "ofd_mm": 83.0,
       "best_frames": 5, "ga_weeks": 24.43, "ga_low_weeks": 24.3, "ga_high_weeks": 24.43}
# each figure's text, and on how many lines it lies
LINES = """() => [...document.querySelectorAll('.figures td')].map(td => {
  const range = document.createRange(); range.selectNodeContents(td);
  const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
  return [td.textContent, tops.size]; })"""


def test_on_a_phone_no_head_figure_breaks_between_its_number_and_unit(tmp_path):
    state = tmp_path / "state"
    write_pin(state, PIN)
    journal = Journal(state / JOURNAL_FILE)
    done = ExamSession(load_protocols()["biometry"])
    assert journal.add_exam(None, {**done.summary("gap", ended_ts=time.time() - 600),
                                   "biometry": BIO}, {})
    journal.close()
    server = WebServer(WebSettings(listen=f"127.0.0.1:{free_port()}"), LiveView(), state,
                       read_pin(state))
    server.start()
    try:
        with chromium(tmp_path) as context:
            page = context.new_page()
            base = f"https://localhost:{server.port}"
            page.goto(base + "/")
            page.fill("#pin", PIN)
            page.click("#unlock")
            page.wait_for_selector("#app:not([hidden])")
            for width in (320, 390):
                page.set_viewport_size({"width": width, "height": 800})
                page.goto(f"{base}/report/{done.exam_id}?lang=en")
                page.wait_for_selector(".figures td")
                figures = dict(page.evaluate(LINES))
                assert len(figures) == 4, figures
                for text, lines in figures.items():
                    if text.endswith(" mm"):
                        assert lines == 1, (width, text, lines)
                    else:  # the age, its tolerance and its best frames' range
                        assert text.startswith("24w 3d ± 14 days (best frames"), text
                        assert lines <= 3, (width, text, lines)
            # printed on A4: names and figures side by side, as before
            page.set_viewport_size({"width": 794, "height": 1123})
            page.emulate_media(media="print")
            th, td = (page.eval_on_selector(f".figures tr:first-child {cell}",
                                            "e => e.getBoundingClientRect().top")
                      for cell in ("th", "td"))
            assert th == td
    finally:
        server.stop()
