"""Why an exam's heads were not measured, in the installer's words. The summary that
`sonoedge exam` and `run` print said "head: not measured (ruler_unread 12)" or
"(pixel_size_absurd 3)": the box's status codes, which an installer at a clinic cannot
read, and only a missing calibration or a stretched picture said what undoes it. Each
refusal the biometry gives now reads as words with its count, and each set-up refusal
says what undoes it, as the page's card does ("exam.not_measured_*"). The frames reach the
summary as `run` replays its journal after a crash, so a status from a damaged journal is
shown as it came, escaped, on the same one line."""

from __future__ import annotations

import re

import pytest

from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSettings, ExamTracker, format_exam
from edge.models import biometry as B

SET_SCALE = " ([biometry] pixel_size_mm)"  # as `run` gives it


def _head_line(statuses: list[str], **biometry) -> str:
    """The summary's head line of an exam of transthalamic frames refused for `statuses`
    (each frame's biometry with `biometry` besides), fed as `run`'s journal replay feeds
    them."""
    bodies = []
    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(), None,
                          lambda session, body: bodies.append((session, body)))
    for i, status in enumerate(statuses):
        tracker.feed({"source": "j", "frame": i, "plane": "Brain (Tv.)",
                      "plane_confidence": 0.9, "latency_ms": 5.0, "ts": 1.7e9 + i,
                      "roi": [0, 0, 10, 10], "biometry": {"status": status, **biometry}},
                     mono=float(i), row=i + 1, run_id="run")
    tracker.end("recovered")
    ((session, body),) = bodies
    text = format_exam(session, body, SET_SCALE)
    heads = [line for line in text.splitlines() if line.startswith("  head:")]
    assert len(heads) == 1, ascii(text)
    return heads[0]


def test_every_refusal_reads_as_words_with_its_count():
    line = _head_line([B.HEAD_CUT_OFF] * 3 + [B.POOR_FIT, B.SEVERAL_HEADS, B.NO_HEAD] * 2
                      + [B.RULER_UNREAD])
    assert line.startswith(
        "  head: not measured (head cut off by the image's edge on 3 frames, "
        "no head found on 2 frames, head outline unclear on 2 frames, "
        "depth scale not read on 1 frame, more than one head-like region on 2 frames): "), line
    assert not re.search(r"[a-z]_[a-z]", line.split("[biometry] ")[0]), line  # no code
    # what undoes the set-up one, as the page's card: keep the scale on the screen
    assert line.endswith(": the depth scale beside the image could not be read: keep it on "
                         "the screen, uncovered, or set the box up for this scanner "
                         "([biometry] ruler_tick_mm, its tick in mm, or 0 to use a pixel "
                         "size)"), line
    # a missing calibration alone says it as before, in the one place's words
    assert _head_line([B.PIXEL_SIZE_MISSING] * 3) == (
        "  head: not measured on its 3 head-plane frames: the pixel size is unknown "
        "([biometry] pixel_size_mm)")
    # a refusal of the scan alone has nothing for the installer to undo
    assert _head_line([B.HEAD_CUT_OFF, B.POOR_FIT]) == (
        "  head: not measured (head cut off by the image's edge on 1 frame, "
        "head outline unclear on 1 frame)")


def test_each_status_the_biometry_refuses_with_has_words_and_each_set_up_one_its_fix():
    assert set(B.REFUSAL_WORDS) == set(B.STATUSES) - set(B.MEASURED)
    assert set(B.SET_UP_FIXES) == set(B.SET_UP_STATUSES)


@pytest.mark.parametrize("status,words,fix", [
    (B.PIXEL_SIZE_ABSURD, "bad calibration (pixel size impossible) on 2 frames",
     "the pixel size is impossible for a scanner (outside [biometry] pixel_size_min_mm to "
     "pixel_size_max_mm): check it ([biometry] pixel_size_mm)"),
    (B.RULER_UNREAD, "depth scale not read on 2 frames",
     "the depth scale beside the image could not be read: keep it on the screen"),
    (B.SCREEN_STRETCHED, "picture out of shape on 2 frames",
     "the picture is stretched or squeezed sideways, so every head would measure wrong; "
     "the 'screen shape' warning names the setting that undoes it"),
    (B.PIXEL_SIZE_MISSING, "no calibration (pixel size unknown) on 2 frames",
     "the pixel size is unknown ([biometry] pixel_size_mm)"),
])
def test_a_set_up_refusal_says_what_undoes_it(status, words, fix):
    line = _head_line([status, status, B.HEAD_CUT_OFF])
    assert line.startswith(f"  head: not measured ({words}, head cut off by the image's "
                           f"edge on 1 frame): {fix}") \
        or line.startswith(f"  head: not measured (head cut off by the image's edge on 1 "
                           f"frame, {words}): {fix}"), line


def test_two_set_up_refusals_each_say_their_fix_on_the_one_line():
    line = _head_line([B.RULER_UNREAD, B.SCREEN_STRETCHED])
    assert "could not be read: keep it on the screen" in line, line
    assert line.endswith("; the picture is stretched or squeezed sideways, so every head "
                         "would measure wrong; the 'screen shape' warning names the setting "
                         "that undoes it"), line


def test_a_stretched_picture_s_line_names_the_setting_its_heads_named():
    """A user's walk (7 December), a PAL grabber: the card and the report named "[source]
    stretch = 0.9375", while the summary `run` and `sonoedge exam` print beneath the same
    exam sent the installer up the log for "the 'screen shape' warning", which a long run
    had scrolled away. It names the setting, as the card does, where the heads named one."""
    line = _head_line([B.SCREEN_STRETCHED] * 3, stretch_setting=0.9375)
    assert line == ("  head: not measured (picture out of shape on 3 frames): the picture is "
                    "stretched or squeezed sideways, so every head would measure wrong; set "
                    "[source] stretch = 0.9375 to undo it, or set the grabber to keep the "
                    "scanner's own shape"), line
    assert _head_line([B.RULER_UNREAD, B.SCREEN_STRETCHED], stretch_setting=1.3333).endswith(
        "; set [source] stretch = 1.3333 to undo it, or set the grabber to keep the "
        "scanner's own shape")
    # with the grabber's frame size the heads named (as the card says it): a setting made
    # for another size misleads; a size the tally does not take back is left out
    line = _head_line([B.SCREEN_STRETCHED] * 2, stretch_setting=0.9375, stretch_frame="720x576")
    assert line.endswith("set [source] stretch = 0.9375 (for the grabber's 720x576 frames) to "
                         "undo it, or set the grabber to keep the scanner's own shape"), line
    for hostile in ("720x576\n", "0x576", "720×576", 720, None, ["720x576"]):
        line = _head_line([B.SCREEN_STRETCHED], stretch_setting=0.9375, stretch_frame=hostile)
        assert "set [source] stretch = 0.9375 to undo it" in line, (hostile, line)
    # a setting no `[source] stretch` takes (a damaged journal) is not named: the warning is
    for hostile in (0.1, 7.0, float("nan"), float("inf"), True, "0.9375", [0.9375], 10**400):
        assert _head_line([B.SCREEN_STRETCHED], stretch_setting=hostile).endswith(
            "the 'screen shape' warning names the setting that undoes it"), hostile


@pytest.mark.parametrize("status,shown", [
    ("evil\x1b[2J\nforged line", "evil\\x1b[2J\\x0aforged line on 1 frame"),
    ("\ud800\x9b", "\\ud800\\x9b on 1 frame"),
    ("ruler_unread_v2", "ruler_unread_v2 on 1 frame"),
    ("__class__", "__class__ on 1 frame"),
], ids=["terminal-escape-and-newline", "lone-surrogate-and-c1", "unknown-code", "dunder"])
def test_a_status_from_a_damaged_journal_is_shown_as_it_came_escaped(status, shown):
    line = _head_line([status, B.RULER_UNREAD])
    # (said as ascii: a lone surrogate cannot even be reported as it is)
    assert shown in line and "depth scale not read on 1 frame" in line, ascii(line)
    assert "\n" not in line and "\x1b" not in line, ascii(line)
    line.encode("utf-8")  # printable: no lone surrogate reaches the terminal
