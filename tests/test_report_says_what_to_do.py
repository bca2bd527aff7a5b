"""An exam whose heads were all declined for the box's own set-up (no calibration, a bad
one, the depth scale not read, the picture stretched by the grabber) said on its printed
report only "Not measured: picture out of shape (291 frames)": the live card's sentence,
which says what is wrong and whom to ask, was on the page alone, gone once the exam ended
(a walk of a stretched box). The report now says it too, in both languages."""

from __future__ import annotations

import re
import time

import pytest

from edge.exam.protocol import load_protocols
from edge.exam.session import ExamSession
from edge.models.quality import load_rules
from edge.web.history import present, protocol_titles, read_protocols, render_report
from edge.web.i18n import catalog


def _report(bio: dict, lang: str) -> str:
    session = ExamSession(load_protocols()["biometry"])
    summary = {**session.summary("gap", ended_ts=time.time() - 600), "biometry": bio}
    protocols = read_protocols()
    exam = present(summary, {}, protocols, protocol_titles(protocols))
    html = render_report(exam, catalog(lang, load_rules(None)),
                         {"device_id": "box-1", "clinic_id": "clinic-1"})
    return re.sub(r"[ \t\r\n]+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#x27;", "'")


@pytest.mark.parametrize("status", ["screen_stretched", "ruler_unread", "pixel_size_missing",
                                    "pixel_size_absurd"])
@pytest.mark.parametrize("lang", ["en", "fr"])
def test_a_report_with_no_head_for_the_box_s_set_up_says_what_to_do(status, lang):
    text = catalog(lang, load_rules(None))
    why = re.sub(r"[ \t\r\n]+", " ", text["exam.not_measured_" + status])
    report = _report({"measured": 0, "declined": {"no_head": 4, status: 291}}, lang)
    assert why in report, (why, report)
    assert report.count(why) == 1


def test_a_report_whose_heads_were_not_found_says_no_set_up_sentence():
    report = _report({"measured": 0, "declined": {"no_head": 40}}, "en")
    assert "Ask for" not in report


@pytest.mark.parametrize("lang, live", [("en", "no head measured yet"),
                                        ("fr", "aucune tête mesurée pour l'instant")])
def test_a_finished_report_does_not_say_no_head_measured_yet(lang, live):
    """The page's "no head measured yet" is for a scan going on; a report is of an exam
    that ended."""
    report = _report({"measured": 0, "declined": {"no_head": 40}}, lang)
    assert live not in report
    assert catalog(lang, load_rules(None))["report.no_head"] in report


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_a_head_slot_captured_with_its_heads_refused_for_the_set_up_says_not_measured(lang):
    """The page's head slot says "— not measured" where the box refused every head for its
    set-up; the report ticked it "✓ Head for HC and BPD · Captured" under its own "not
    measured" (a walk). The report says it as the page does; a head measured, heads not
    found (the scan's, not the set-up's), or a box that does not say its head planes keep
    the plain tick."""
    session = ExamSession(load_protocols()["biometry"])
    ended = session.summary("gap", ended_ts=time.time() - 600)
    captured = {**ended["protocol"], "captured": 1, "missing": [], "missing_seen": []}
    protocols = read_protocols()
    text = catalog(lang, load_rules(None))
    slot = text["slot.Head (HC, BPD)"]
    refused = text["exam.slot_not_measured"].format(slot=slot)

    def report(bio: dict, heads: object) -> str:
        exam = present({**ended, "protocol": captured, "biometry": bio}, {}, protocols,
                       protocol_titles(protocols), head_planes=heads)
        html = render_report(exam, text, {"device_id": "box-1", "clinic_id": "clinic-1"})
        return re.sub(r"[ \t\r\n]+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&#x27;", "'")

    heads = ["Brain (Tv.)", "Brain (Cb.)"]
    assert "✓ " + refused in report({"measured": 0, "declined": {"pixel_size_missing": 12}},
                                    heads)
    assert "✓ " + refused in report({"measured": 0, "declined": {"no_head": 2,
                                                                 "screen_stretched": 9}}, heads)
    for bio, given in (({"measured": 0, "declined": {"no_head": 40}}, heads),
                       ({"measured": 0, "declined": {"pixel_size_missing": 12}}, None),
                       ({"measured": 0, "declined": {"pixel_size_missing": 12}}, "Brain"),
                       ({"measured": 0, "declined": {"pixel_size_missing": 12}}, [3, None])):
        said = report(bio, given)
        assert "✓ " + slot in said and refused not in said, (bio, given)
