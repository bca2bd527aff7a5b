"""What the midwife's page says when the box's grabber stretches the scanner's picture:
real HC18 heads that show their probe's fan, on a 4:3 screen filled into a 16:9 frame
(960x720 to 1280x720), through `sonoedge run --web` and headless Chromium. The heads are
found, not measured, and the exam card says why, where before every HC was a third too
wide with status ok; the log tells the installer what to set, and so do the card and the
report (a PAL grabber's 720x576 too), for the grabber's frame size they name."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from tests.test_screen_stretch import _fan_head_clip
from tests.web_harness import _screen, chromium, device, unlocked_page

pytest.importorskip("playwright")

POLL = {"timeout": 90_000, "polling": 200}
# HC18 heads whose fan (sides and far edge) is on the image, read within 1% of round
FAN_HEADS = ("200_HC.png", "250_HC.png", "299_HC.png", "359_HC.png", "438_HC.png",
             "519_HC.png")
# The card's words for a stretched picture where the box knows the setting that undoes it,
# and the grabber's frame size it is for
CARD = ("Head not measured: the picture is stretched or squeezed sideways (the probe's fan "
        "is not the shape it has on the scanner), so every head would measure wrong. For "
        "the video grabber's {frame} frames, the box's set-up needs [source] stretch = "
        "{setting} to undo it: ask for it to be set, or for the box's video grabber to be "
        "set to keep the scanner's picture shape.")


def _stretched_clip(data_dir, dest, rounds: int = 2, per_head: int = 10, black: int = 15):
    """`black` frames of black, then the fan heads stretched to 16:9: the box's verdict
    comes from a few of its first fan frames (every 5th read), long before the second round
    ends."""
    rng = np.random.default_rng(7)
    frames = [np.zeros((720, 1280, 3), np.uint8)] * black
    for _ in range(rounds):
        for name in FAN_HEADS:
            image = cv2.imread(str(data_dir / "hc18" / "images" / name))
            frames += [cv2.resize(_screen(image, rng, k > 0), (1280, 720),
                                  interpolation=cv2.INTER_LINEAR) for k in range(per_head)]
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (1280, 720))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return dest


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium for the module: each test opens its own tab on its own box (a box on
    another port knows no other box's session, so each tab enters the PIN)."""
    with chromium(tmp_path_factory.mktemp("stretch-browser")) as context:
        yield context


def test_heads_on_a_stretched_picture_are_not_measured_and_the_card_says_why(
        tmp_path, data_dir, browser):
    clip = _stretched_clip(data_dir, tmp_path / "stretched.avi")
    with device(tmp_path, clip, pixel_size_mm=0.15) as (base, _):
        page = unlocked_page(browser, base)
        page.wait_for_function(
            "() => { const s = window.sonoedge.lastState, b = s && s.exam && s.exam.biometry;"
            " return b && b.declined && b.declined.screen_stretched > 0 && !b.measured; }",
            **POLL)
        exam = page.evaluate("() => window.sonoedge.lastState.exam")
        assert exam["biometry"].get("hc_mm") is None
        page.wait_for_function(
            "() => document.querySelector('#exam-bio').textContent.includes('stretched')",
            **POLL)
        # the exact setting that undoes it, the scorer's own (the median of the fans read)
        said = re.fullmatch(re.escape(CARD.format(setting="@", frame="1280x720"))
                            .replace("@", "([0-9.]+)"),
                            page.locator("#exam-bio").text_content())
        assert said is not None, page.locator("#exam-bio").text_content()
        assert float(said.group(1)) == pytest.approx(4 / 3, abs=0.03), said.group(1)
        page.close()
    log = (tmp_path / "device.log").read_text()
    assert ("screen shape: checked on the probe's fan every 30 frames (every 5 for a new "
            "screen's first 450)") in log
    assert "the picture is stretched sideways, so heads are not measured" in log
    # kept for the next start, so its first exam is protected before the fan shows again
    kept = json.loads((tmp_path / "state" / "screen_shape.json").read_text())
    [entry] = kept["screens"]
    assert entry["screen"] == "stretched.avi|1280x720", entry
    assert entry["stretch"] == pytest.approx(4 / 3, abs=0.03)
    assert entry["setting"] == 1.0, "kept with the [source] stretch it was read under: none"


def _zoomed_in_clip(data_dir, dest, frames: int = 45):
    """A Voluson transthalamic head whose fan is cut by the image (the scanner zoomed in):
    no frame can show the box the fan's shape. Three seconds of it: its heads are measured
    within the first, and the test waits for the recording's end to end the exam."""
    rng = np.random.default_rng(11)
    image = cv2.imread(str(data_dir / "planes" / "images" / "Patient01715_Plane3_2_of_3.png"))
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (960, 720))
    assert writer.isOpened()
    for frame in [np.zeros((720, 960, 3), np.uint8)] * 15 + [
            _screen(image, rng, k > 0) for k in range(frames)]:
        writer.write(frame)
    writer.release()
    return dest


def test_heads_measured_before_the_shape_could_be_checked_say_so_on_the_card_and_report(
        tmp_path, data_dir, browser):
    """A scanner kept zoomed in never shows its whole fan, so the box cannot see a stretch:
    the heads are measured, and the card and the report say the shape was not checked and
    how to let the box check it, where before the figures looked checked."""
    clip = _zoomed_in_clip(data_dir, tmp_path / "zoomed.avi")
    with device(tmp_path, clip, pixel_size_mm=0.15) as (base, _):
        page = unlocked_page(browser, base)
        page.wait_for_function(
            "() => { const s = window.sonoedge.lastState, b = s && s.exam && s.exam.biometry;"
            " return b && b.measured > 0 && b.shape === 'unchecked'; }", **POLL)
        page.wait_for_function("() => !document.querySelector('#exam-shape').hidden", **POLL)
        assert page.locator("#exam-shape").text_content() == (
            "Picture shape not checked: show the probe's whole fan once, without zoom (the "
            "box then checks it and remembers).")
        assert page.locator("#exam-bio").text_content().startswith("HC ")
        page.wait_for_function(
            "() => { const s = window.sonoedge.lastState;"
            " return s && s.exam && !s.exam.running && s.exam.exam_id; }", **POLL)
        exam_id = page.evaluate("() => window.sonoedge.lastState.exam.exam_id")
        page.goto(f"{base}/report/{exam_id}")
        assert "The picture's shape was not checked for these heads" in page.content()
        page.close()


def test_a_pal_grabber_s_card_and_report_name_the_setting_that_undoes_it(
        tmp_path, data_dir, browser):
    """Real HC18 fan screens drawn 720x576 by a PAL grabber (0.9375 as wide as they are):
    the heads are refused, and the card, after the exam too, and the exam's report, in
    English and in French, name the very setting `run`'s warning names, where they gave
    only "for example 4:3, not 16:9" and the installer had to find the log."""
    pal = tmp_path / "pal.avi"
    _fan_head_clip(data_dir, pal, 720, 576)
    with device(tmp_path, pal, pixel_size_mm=0.15) as (base, _):
        page = unlocked_page(browser, base)
        page.wait_for_function(
            "() => document.querySelector('#exam-bio').textContent.includes('stretched')",
            **POLL)
        assert page.locator("#exam-bio").text_content() == CARD.format(setting="0.9375",
                                                                       frame="720x576")
        page.wait_for_function(
            "() => { const s = window.sonoedge.lastState;"
            " return s && s.exam && !s.exam.running && s.exam.exam_id; }", **POLL)
        exam = page.evaluate("() => window.sonoedge.lastState.exam")
        assert not exam["biometry"]["measured"] and exam["biometry"]["declined"], exam
        assert page.locator("#exam-bio").text_content() == CARD.format(setting="0.9375",
                                                                       frame="720x576")
        page.select_option("#controls select.lang", "fr")
        page.wait_for_function(
            "() => document.querySelector('#exam-bio').textContent.startsWith('Tête')",
            **POLL)
        assert "Pour les images 720x576 de la carte d'acquisition, le réglage du boîtier " \
            "doit comporter [source] stretch = 0.9375 pour la corriger\u202f: " \
            in page.locator("#exam-bio").text_content()
        for lang, said in (("en", CARD.format(setting="0.9375", frame="720x576")),
                           ("fr", "Pour les images 720x576 de la carte d'acquisition, le "
                                  "réglage du boîtier doit comporter [source] stretch = "
                                  "0.9375 pour la corriger")):
            page.goto(f"{base}/report/{exam['exam_id']}?lang={lang}")
            assert said in page.locator("section.bio p.why").text_content(), lang
        page.close()
    log = (tmp_path / "device.log").read_text()
    assert "set [source] stretch = 0.9375 (for the grabber's 720x576 frames) to undo it" in log
