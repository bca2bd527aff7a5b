"""What the midwife's page says when the box reads each head's scale from the scanner's
depth ruler (`[biometry] ruler_tick_mm`) and finds none on the screen: the head is found,
not measured, and the card says why, even where a calibration is also set (it may belong
to another depth). Real parts: `sonoedge run --web` on a clip of HC18's bare heads (no
ruler drawn), headless Chromium."""

from __future__ import annotations

import pytest

from tests.web_harness import chromium, device, make_clip, unlocked_page

pytest.importorskip("playwright")

POLL = {"timeout": 90_000, "polling": 200}


def test_heads_on_a_screen_with_no_ruler_are_not_measured_and_the_card_says_why(
        tmp_path, data_dir):
    clip = make_clip(data_dir, tmp_path / "clip.avi", black_s=2.0, rounds=1, per_example=0)
    with chromium(tmp_path) as context, device(tmp_path, clip, pixel_size_mm=0.15,
                                               ruler_tick_mm=5.0) as (base, _):
        page = unlocked_page(context, base)
        page.wait_for_function(
            "() => { const s = window.sonoedge.lastState, b = s && s.exam && s.exam.biometry;"
            " return b && b.declined && b.declined.ruler_unread > 0; }", **POLL)
        exam = page.evaluate("() => window.sonoedge.lastState.exam")
        assert exam["biometry"]["measured"] == 0 and exam["biometry"].get("hc_mm") is None
        page.wait_for_function("() => document.querySelector('#exam-bio').textContent",
                               **POLL)
        assert page.locator("#exam-bio").text_content() == (
            "Head not measured: the depth scale beside the image could not be read. Keep "
            "the scale on the screen, uncovered, or ask for the box to be set up for this "
            "scanner.")
        page.wait_for_function(
            "() => document.querySelector('#ga').innerText"
            ".includes('Not measured: depth scale not read')", **POLL)
    log = (tmp_path / "device.log").read_text()
    assert "head scale: read on each measured frame from the scanner's depth ruler" in log
