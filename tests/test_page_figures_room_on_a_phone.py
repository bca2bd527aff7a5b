"""On a phone the head's figures sit under the image (tests/test_page_scan_screen_s41.py),
in a room kept so that the instruction under them does not jump as they come and go. The
room was kept whatever the image showed: under an abdomen, a femur, a heart, an empty band
with no head in view and nothing to show in it (a fresh-eyes walk). It is now kept while a
head is shown (the steadied plane's name, not each frame's: the segmenter missing a skull
on one frame moves nothing), and a few seconds after, and goes with no head and no figures.

The real server (`edge.web.server.WebServer`, its `LiveView` set by hand as the loop sets
it, frames published as the loop publishes them) in headless Chromium at 320x568. Every
drawn frame's layout is read in one go, in the frame the page drew it (a read per call
could straddle a redraw).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge.exam.feedback import Shown
from edge.web.live import LiveView
from tests.web_harness import page_on_view, scanning_view

pytest.importorskip("playwright.sync_api")
WAIT = {"timeout": 10_000, "polling": 100}
HEAD = "Brain (Tv.)"
BIOMETRY = {"status": "ok", "hc_mm": 172.0, "bpd_mm": 46.0, "ofd_mm": 60.0,
            "ga_weeks": 19.4}

# Each frame the page draws: the plane it names, whether the figures are there, and the
# room between the image's foot and the instruction's top, read in one animation frame.
RECORD = """() => {
  window.__rows = [];
  let last = -1;
  const tick = () => {
    const h = window.sonoedge.lastHeader;
    if (h && h.seq !== last) {
      last = h.seq;
      const video = document.querySelector('#video').getBoundingClientRect();
      const said = document.querySelector('#instruction').getBoundingClientRect();
      window.__rows.push({seq: h.seq, plane: h.shown ? h.shown.plane : null,
        figures: document.querySelectorAll('#ga .line.bio').length,
        gap: Math.round(said.top - video.bottom)});
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def publish(view: LiveView, plane: str, measured: bool) -> None:
    image = np.full((240, 320, 3), 60, np.uint8)
    record = {"ts": time.time(), "source": "s", "frame": 1, "plane": plane,
              "plane_confidence": 0.9, "roi": None, "quality": {"score": 0.9}}
    if measured:
        record["head"] = {"status": "ok", "ellipse": [160, 120, 60, 45, 0]}
        record["biometry"] = BIOMETRY
    view.publish(image, record, Shown(plane, 0.9, None, None), None, time.monotonic(), 90)


def scan(view: LiveView, page, plane: str, seconds: float, measured_every: int = 0) -> list:
    """Publish `plane` for `seconds` at about 12 frames a second (a head measured on one
    frame in `measured_every`); the rows the page drew meanwhile."""
    page.evaluate("window.__rows = []")
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        publish(view, plane, bool(measured_every) and n % measured_every == 0)
        n += 1
        time.sleep(0.08)
    page.wait_for_timeout(300)
    return page.evaluate("window.__rows")


def test_on_a_phone_the_figures_room_goes_with_no_head_and_stays_through_a_heads_frames(
        tmp_path):
    view = scanning_view({"plane_student": "x"}, [HEAD, "Brain (Cb.)"])
    with page_on_view(tmp_path, view, (320, 568)) as (page, errors):
        page.wait_for_function("(window.sonoedge.lastState || {}).protocol != null",
                               **WAIT)
        page.evaluate(RECORD)
        # an abdomen, no head in view: no empty band between the image and the words
        rows = scan(view, page, "Abdominal", 2.0)
        assert rows and all(r["figures"] == 0 for r in rows), rows[-3:]
        bare = {r["gap"] for r in rows}
        assert len(bare) == 1 and max(bare) < 20, bare
        # a head, its figures on one frame in three (the segmenter missing the others):
        # the room stays as it is, the instruction under it does not move
        rows = scan(view, page, HEAD, 3.0, measured_every=3)
        drawn = rows[2:]  # the first frames open the room
        assert any(r["figures"] for r in drawn) and not all(r["figures"] for r in drawn)
        gaps = {r["gap"] for r in drawn}
        assert len(gaps) == 1 and min(gaps) > max(bare) + 20, (gaps, bare)
        # back on the abdomen: the room a moment longer (a head may come back), then it
        # goes, once, and stays gone
        rows = scan(view, page, "Abdominal", 4.0)
        changes = [b["gap"] for a, b in zip(rows, rows[1:], strict=False)
                   if a["gap"] != b["gap"]]
        assert changes == [max(bare)], [r["gap"] for r in rows]
        assert rows[0]["gap"] == min(gaps) and rows[-1]["gap"] == max(bare)
        # one frame of a head measured in an abdomen's scan (an odd frame): its figures
        # are shown, and their room kept a while, not closed on the next frame
        publish(view, "Abdominal", True)
        page.wait_for_function("window.sonoedge.lastHeader.biometry != null", **WAIT)
        rows = scan(view, page, "Abdominal", 1.0)
        assert all(r["gap"] > max(bare) + 20 for r in rows), [r["gap"] for r in rows]
        assert not errors, errors
