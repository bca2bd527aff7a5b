"""The exam card and the report name the setting that undoes a stretched picture.

A box whose grabber stretches or squeezes the scanner's picture refuses its heads
(`screen_stretched`), and `run`'s log names the exact setting that undoes it ("set [source]
stretch = 0.9375 to undo it" for a PAL grabber's 720x576). The midwife's card and the exam's
report said only a general example ("for example 4:3, not 16:9"), and the installer she
called had to find the log. Now each refused head carries the scorer's own setting
(`StretchWatch.setting`, biometry `stretch_setting`), the exam keeps the last one named,
and the card (during the exam and after it) and the report say it, in both languages. The
box keeps it: the exam's summary to the district is checked against a schema without it. A
number read back damaged (a journal's) is not named, and the general fix is said instead.
Through the device's scorer on real screens drawn as a PAL grabber draws them, the exam
session, the journal and the report as the box renders it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import cv2
import pytest

from edge.exam.protocol import load_protocols
from edge.exam.session import ExamSession
from edge.exam.tally import ExamTally
from edge.exam.thumbs import SET_UP
from edge.models.biometry import SCREEN_STRETCHED
from edge.models.quality import load_rules
from edge.store.journal import JOURNAL_FILE, Journal
from edge.uplink.messages import build_exam, envelope
from edge.web.history import ExamHistory, present, protocol_titles, read_protocols, render_report
from edge.web.i18n import catalog
from edge.web.live import exam_snapshot
from tests.test_screen_stretch import PLANES, _pal, _stretched, _through_scorer, needs_data
from wire.schema import validate_payload

SAID = {
    "en": "Head not measured: the picture is stretched or squeezed sideways (the probe's fan "
          "is not the shape it has on the scanner), so every head would measure wrong. The "
          "box's set-up needs [source] stretch = {setting} to undo it: ask for it to be set, "
          "or for the box's video grabber to be set to keep the scanner's picture shape.",
    "fr": "Tête non mesurée\u202f: l'image est étirée ou écrasée en largeur (l'éventail de la "
          "sonde n'a pas la forme qu'il a sur l'échographe), si bien que chaque tête serait "
          "mal mesurée. Le réglage du boîtier doit comporter [source] stretch = {setting} "
          "pour la corriger\u202f: demandez qu'on l'ajoute, ou qu'on règle la carte "
          "d'acquisition du boîtier pour garder la forme d'image de l'échographe."}
# ... and where the box named the grabber's frame size the setting is for: at another size
# (the grabber set anew) the setting is another
SAID_FRAME = {
    "en": "Head not measured: the picture is stretched or squeezed sideways (the probe's fan "
          "is not the shape it has on the scanner), so every head would measure wrong. For "
          "the video grabber's {frame} frames, the box's set-up needs [source] stretch = "
          "{setting} to undo it: ask for it to be set, or for the box's video grabber to be "
          "set to keep the scanner's picture shape.",
    "fr": "Tête non mesurée\u202f: l'image est étirée ou écrasée en largeur (l'éventail de la "
          "sonde n'a pas la forme qu'il a sur l'échographe), si bien que chaque tête serait "
          "mal mesurée. Pour les images {frame} de la carte d'acquisition, le réglage du "
          "boîtier doit comporter [source] stretch = {setting} pour la corriger\u202f: "
          "demandez qu'on l'ajoute, ou qu'on règle la carte d'acquisition du boîtier pour "
          "garder la forme d'image de l'échographe."}
# frame sizes no screen key writes, and what a damaged journal may hold
DAMAGED_FRAMES = ("0x576", "720x0", "720x576\n", " 720x576", "720×576", "123456x576",
                  "-720x576", "720x576x3", "", 720, 720.0, ["720", "576"], {"w": 720}, True,
                  None)
# what they said before, and still say where the box named no setting
GENERAL = {"en": "Ask for the box's video grabber to be set to keep the scanner's picture "
                 "shape (for example 4:3, not 16:9).",
           "fr": "(par exemple 4:3, pas 16:9)"}
MEASURED = {"status": "ok", "hc_mm": 240.0, "bpd_mm": 66.0, "ofd_mm": 86.0,
            "scale": "calibration", "shape": "checked"}
# numbers no `[source] stretch` takes, and what a damaged journal may hold
DAMAGED = ("0.9375", True, float("nan"), float("inf"), 10**400, -0.9375, 0, 0.49, 2.01, 3.0,
           None, [0.9375], {"stretch_setting": 0.9375})


def _head(bio: dict) -> dict:
    return {"plane": "Brain (Tv.)", "plane_confidence": 0.9, "latency_ms": 9.0,
            "biometry": bio}


def _refused(setting: object = 0.9375, **frame) -> dict:
    return _head({"status": SCREEN_STRETCHED, "scale": "calibration",
                  "stretch_setting": setting, **frame})


def _exam(setting: object = 0.9375, measured_first: int = 2, **frame) -> ExamSession:
    """An exam whose first heads were measured, then refused once the screen was found
    stretched (they are dropped with them: `ExamTally._void_heads`); `stretch_frame=` the
    grabber's frame size its heads named."""
    session = ExamSession(load_protocols()["biometry"])
    for _ in range(measured_first):
        session.add(_head(MEASURED))
    for _ in range(3):
        session.add(_refused(setting, **frame))
    return session


def _text(html: str) -> str:
    """The report's words, its markup's line breaks and indents as one space each (French
    no-break spaces kept: they are the words')."""
    return re.sub(r"[ \t\r\n]+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#x27;", "'")


def _report(exam: dict, lang: str) -> str:
    return _text(render_report(exam, catalog(lang, load_rules(None)),
                               {"device_id": "box-1", "clinic_id": "clinic-1"}))


@needs_data
def test_a_refused_head_carries_the_setting_the_warning_names(caplog):
    """Through the device's scorer, a real fan screen and a transthalamic head drawn 720x576
    by a PAL grabber: the refused head carries the very setting the log's warning names;
    a 4:3 screen filling 16:9 its own, about 1.33; a head measured carries none."""
    caplog.set_level("INFO", logger="edge.scorer")
    refused = _through_scorer(draw=_pal, heads=3)[-1]["biometry"]
    assert refused["status"] == SCREEN_STRETCHED
    [said] = [r.getMessage() for r in caplog.records if "times as wide" in r.getMessage()]
    named = re.search(r"set \[source\] stretch = ([0-9.]+) to undo it", said).group(1)
    assert named == "0.9375" and refused["stretch_setting"] == float(named), refused
    assert refused["stretch_frame"] == "720x576", refused  # the size the setting is for
    wide = _through_scorer(4 / 3)[-1]["biometry"]
    assert wide["status"] == SCREEN_STRETCHED
    assert wide["stretch_setting"] == pytest.approx(4 / 3, abs=0.03), wide
    assert wide["stretch_frame"] == _drawn_size(4 / 3), wide
    measured = _through_scorer(1.0)[-1]["biometry"]
    assert "stretch_setting" not in measured and "stretch_frame" not in measured


def _drawn_size(stretch: float) -> str:
    """The frame size a grabber stretching by `stretch` draws `_through_scorer`'s screens."""
    height, width = _stretched(cv2.imread(str(PLANES / "Patient01630_Plane1_1_of_3.png")),
                               stretch).shape[:2]
    return f"{width}x{height}"


@needs_data
def test_the_frame_size_named_is_the_grabber_s_own_where_a_setting_already_narrows_it():
    """A 16:9 grabber with `[source] stretch = 1.2` set, a part of its 1.33: the frames the
    box reads are narrowed by it, but the setting named (1.2 times the reading) is for the
    frames the grabber sends, and so is the size named with it."""
    refused = _through_scorer(4 / 3, source_stretch=1.2)[-1]["biometry"]
    assert refused["status"] == SCREEN_STRETCHED
    assert refused["stretch_setting"] == pytest.approx(4 / 3, abs=0.03), refused
    width, height = (int(side) for side in refused["stretch_frame"].split("x"))
    drawn_width, drawn_height = (int(side) for side in _drawn_size(4 / 3).split("x"))
    assert height == drawn_height and abs(width - drawn_width) <= 1, refused


def test_the_card_names_the_setting_during_and_after_the_exam_and_the_district_gets_none():
    """The exam's card (`exam_snapshot`, what `/api/state` gives the page) has the setting
    while the exam runs and once it has ended; its summary, which goes to the district,
    does not, and the district's schema would refuse it there: the box keeps it beside
    the exam's best frames (`SET_UP`)."""
    session = _exam()
    running = exam_snapshot(session, True)["biometry"]
    assert running["measured"] == 0 and running["declined"] == {SCREEN_STRETCHED: 5}
    assert running["stretch_setting"] == 0.9375
    body = session.finish("command")
    assert "stretch_setting" not in body["biometry"]
    ended = exam_snapshot(session, False, "command", body)["biometry"]
    assert ended["stretch_setting"] == 0.9375
    assert "stretch_setting" not in body["biometry"], "the summary itself is left alone"
    assert session.kept_frames()[SET_UP] == {"stretch_setting": 0.9375}

    def message(bio: dict) -> dict:
        payload = build_exam(envelope("exam", "box-1", "clinic-1", "boot-1"),
                             {**body, "biometry": bio})
        return {**payload, "msg_id": str(uuid.uuid4()), "seq": 1}

    assert validate_payload(message(body["biometry"])) == []
    assert validate_payload(message({**body["biometry"], "stretch_setting": 0.9375}))


def test_the_last_setting_named_is_the_exam_s_and_an_exam_with_none_names_none():
    """A verdict that moves (a 16:9 screen's median) names the setting of the last refused
    head; an exam of measured heads, or of heads refused for another reason, has none."""
    tally = ExamTally()
    for setting in (1.334, 1.331, 1.336):
        tally.add(_refused(setting))
    assert tally.stretch_setting == 1.336
    tally.add(_head({"status": SCREEN_STRETCHED}))  # a head of an older box's journal
    assert tally.stretch_setting == 1.336
    session = ExamSession(load_protocols()["biometry"])
    session.add(_head(MEASURED))
    session.add(_head({"status": "ruler_unread", "scale": "ruler"}))
    assert "stretch_setting" not in exam_snapshot(session, True)["biometry"]
    assert SET_UP not in session.kept_frames()


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_the_report_names_the_setting_kept_with_the_exam(tmp_path, lang):
    """The exam's report, read from the journal as the page's server reads it, says the
    exact setting (with a dot in French too: it is a line of the config), once, where it
    gave the general example."""
    session = _exam()
    body = session.finish("source_end")
    journal = Journal(tmp_path / JOURNAL_FILE)
    assert journal.add_exam(None, body, session.kept_frames())
    journal.close()
    response = asyncio.run(ExamHistory(tmp_path).report(session.exam_id, lang, None, {},
                                                        True, None))
    assert response.status == 200
    report = _text(response.text)
    said = SAID[lang].format(setting="0.9375")
    assert said in report and report.count(said) == 1, report
    assert GENERAL[lang] not in report


@pytest.mark.parametrize("lang", ["en", "fr"])
@pytest.mark.parametrize("kept", [{"stretch_setting": v} for v in DAMAGED]
                         + [None, "0.9375", [0.9375], 0.9375, {}],
                         ids=lambda kept: repr(kept)[:40])
def test_a_setting_read_back_damaged_is_not_named_and_the_general_fix_is_said(kept, lang):
    """A journal's entry that is not a number `[source] stretch` takes, or not an entry at
    all: the report says the general fix, as for an exam journaled before; a frame's
    damaged number is not taken by the exam either."""
    session = ExamSession(load_protocols()["biometry"])
    summary = {**session.summary("gap", ended_ts=time.time() - 600),
               "biometry": {"measured": 0, "declined": {SCREEN_STRETCHED: 291}}}
    protocols = read_protocols()
    exam = present(summary, {SET_UP: kept}, protocols, protocol_titles(protocols))
    assert "stretch_setting" not in exam["biometry"]
    report = _report(exam, lang)
    assert GENERAL[lang] in report and "[source] stretch" not in report, report
    if isinstance(kept, dict) and "stretch_setting" in kept:
        tally = ExamTally()
        tally.add(_refused(kept["stretch_setting"]))
        assert tally.stretch_setting is None


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_the_card_and_the_report_name_the_grabber_s_frame_size_the_setting_is_for(
        tmp_path, lang):
    """A setting undoes one size's stretch: the grabber set anew, at another size, needs
    another. The card (`exam_snapshot`) and the report, read from the journal, say the frame
    size the setting is for, where the heads named it; the district's summary has neither."""
    session = _exam(stretch_frame="720x576")
    assert exam_snapshot(session, True)["biometry"]["stretch_frame"] == "720x576"
    body = session.finish("source_end")
    assert "stretch_frame" not in body["biometry"]
    assert exam_snapshot(session, False, "source_end", body)["biometry"]["stretch_frame"] \
        == "720x576"
    assert session.kept_frames()[SET_UP] == {"stretch_setting": 0.9375,
                                             "stretch_frame": "720x576"}
    journal = Journal(tmp_path / JOURNAL_FILE)
    assert journal.add_exam(None, body, session.kept_frames())
    journal.close()
    response = asyncio.run(ExamHistory(tmp_path).report(session.exam_id, lang, None, {},
                                                        True, None))
    report = _text(response.text)
    said = SAID_FRAME[lang].format(setting="0.9375", frame="720x576")
    assert said in report and report.count(said) == 1, report


@pytest.mark.parametrize("frame", DAMAGED_FRAMES, ids=lambda frame: repr(frame)[:20])
def test_a_frame_size_read_back_damaged_is_not_named_and_the_setting_alone_is(frame):
    """A frame's, or a journal's, size that no screen key writes: the setting is named as
    before, without a size; a size written with leading zeros is written plainly."""
    tally = ExamTally()
    tally.add(_refused(0.9375, stretch_frame=frame))
    assert tally.stretch_setting == 0.9375 and tally.stretch_frame is None
    session = ExamSession(load_protocols()["biometry"])
    summary = {**session.summary("gap", ended_ts=time.time() - 600),
               "biometry": {"measured": 0, "declined": {SCREEN_STRETCHED: 3}}}
    protocols = read_protocols()
    exam = present(summary, {SET_UP: {"stretch_setting": 0.9375, "stretch_frame": frame}},
                   protocols, protocol_titles(protocols))
    assert "stretch_frame" not in exam["biometry"]
    for lang in ("en", "fr"):
        report = _report(exam, lang)
        assert SAID[lang].format(setting="0.9375") in report, report
    # a size kept without its setting names nothing: the size is the setting's
    exam = present(summary, {SET_UP: {"stretch_frame": "720x576"}}, protocols,
                   protocol_titles(protocols))
    assert "stretch_frame" not in exam["biometry"]
    exam = present(summary, {SET_UP: {"stretch_setting": 0.9375, "stretch_frame": "0720x0576"}},
                   protocols, protocol_titles(protocols))
    assert exam["biometry"]["stretch_frame"] == "720x576"


@pytest.mark.parametrize("setting, shown", [(0.9375, "0.9375"), (1.3334, "1.3334"),
                                            (1.12549, "1.1255"), (0.5, "0.5"), (2, "2")])
def test_the_setting_is_written_as_the_config_takes_it(setting, shown):
    session = ExamSession(load_protocols()["biometry"])
    summary = {**session.summary("gap", ended_ts=time.time() - 600),
               "biometry": {"measured": 0, "declined": {SCREEN_STRETCHED: 3}}}
    protocols = read_protocols()
    exam = present(summary, {SET_UP: {"stretch_setting": setting}}, protocols,
                   protocol_titles(protocols))
    assert f"[source] stretch = {shown} to undo it" in _report(exam, "en")
