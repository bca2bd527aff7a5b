"""Heads measured before the box could check the picture's shape say so.

The stretch check (`edge.models.fan`) reads the probe's fan, and only a frame that shows
the whole fan can be read: a scanner kept zoomed in, or a fresh box whose first exam
starts on the head, measures heads with no verdict. A stretched grabber then made every
head a third too wide, and the exam, its report and the district saw figures that looked
checked. Each measured head now says whether its screen's shape was known (`shape`:
checked or unchecked; none where the check is off or the frame knows its own scale); the
exam says checked once any of its heads was; the card and the report tell the midwife how
to let the box check; the log tells the installer once a new screen's first frames have
shown no fan; and the summary carries it on the wire. Through the device's scorer on real
FETAL_PLANES_DB screens, and the report as the box renders it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import cv2
import pytest

from edge.capture.sources import Frame
from edge.config import load_settings
from edge.exam.tally import ExamTally
from edge.models.fan import read_fan
from edge.models.quality import load_rules
from edge.models.roi import to_grey
from edge.scorer import make_scorer
from edge.uplink.messages import build_exam, envelope
from edge.web.i18n import catalog
from tests.conftest import DATA
from tests.test_report_says_what_to_do import _report  # the report as text, as rendered
from wire.schema import validate_payload

PLANES = DATA / "planes" / "images"
needs_data = pytest.mark.skipif(not PLANES.is_dir(), reason="no shared data")
# a transthalamic head of a Voluson screen whose fan is cut by the image (no reading), and
# a screen of the same scanner that shows its whole fan (tests/test_screen_stretch.py)
HEAD = PLANES / "Patient01715_Plane3_2_of_3.png"
WHOLE_FAN = PLANES / "Patient01630_Plane1_1_of_3.png"


def _scorer(**fan):
    """The device's scorer at a calibration (a head measured through the grabber), its
    fan read on every frame so that a test needs few."""
    scorer = make_scorer(load_settings(overrides={
        "biometry": {"pixel_size_mm": 0.15}, "loop": {"roi_refresh_frames": 1}}))
    scorer.head = dataclasses.replace(scorer.head, fan=dataclasses.replace(
        scorer.head.fan, fast_every_frames=1, **fan))
    return scorer


def _score(scorer, image, index: int, **frame) -> dict:
    result = scorer.score(Frame("grabber", index, image, time.monotonic(), time.time(),
                                **frame)).to_dict()
    time.sleep(0.02)  # the fan is read beside the loop, as between live frames
    return result


def _measured(results: list[dict]) -> list[dict]:
    return [r["biometry"] for r in results if (r["biometry"] or {}).get("hc_mm")]


@needs_data
def test_a_head_measured_before_any_whole_fan_says_its_shape_was_not_checked():
    head, fan = cv2.imread(str(HEAD)), cv2.imread(str(WHOLE_FAN))
    assert read_fan(to_grey(head)) is None, "the head's own screen must not show its fan"
    scorer = _scorer()
    before = [_score(scorer, head, i) for i in range(4)]
    assert _measured(before), "the head is measured: the check does not hold it back"
    assert {b["shape"] for b in _measured(before)} == {"unchecked"}
    for i in range(4, 20):
        _score(scorer, fan, i)
    # the region is found a frame late (`Scorer._views`): the head's own from its second
    after = [_score(scorer, head, i) for i in range(20, 23)]
    assert _measured(after) and {b["shape"] for b in _measured(after)} == {"checked"}

    tally = ExamTally()
    for result in before:
        tally.add(result)
    assert tally.biometry()["shape"] == "unchecked"
    tally.add(after[-1])
    assert tally.biometry()["shape"] == "checked", "a verdict holds for the screen's heads"


@needs_data
def test_a_screen_remembered_from_the_last_run_counts_as_checked():
    scorer = _scorer()
    scorer.recall_shape = lambda key: (1.01, 1.0)  # read under no [source] stretch
    head = cv2.imread(str(HEAD))
    assert {b["shape"] for b in _measured([_score(scorer, head, i) for i in range(3)])} \
        == {"checked"}


@needs_data
def test_a_recording_that_knows_its_own_scale_carries_no_shape():
    """The demo clip and a CSV of pixel sizes: never through a grabber, nothing to say."""
    scorer = _scorer()
    head = cv2.imread(str(HEAD))
    measured = _measured([_score(scorer, head, i, pixel_size_mm=0.15) for i in range(3)])
    assert measured and all("shape" not in b for b in measured)


@needs_data
def test_with_the_check_off_no_head_carries_a_shape():
    scorer = make_scorer(load_settings(overrides={
        "biometry": {"pixel_size_mm": 0.15, "stretch_tolerance": 0.0}}))
    head = cv2.imread(str(HEAD))
    measured = _measured([_score(scorer, head, i) for i in range(3)])
    assert measured and all("shape" not in b for b in measured)


@needs_data
def test_a_screen_that_shows_no_fan_for_its_first_frames_is_said_unchecked_once(caplog):
    caplog.set_level("INFO", logger="edge.scorer")
    scorer = _scorer(fast_for_frames=6)
    head = cv2.imread(str(HEAD))
    for i in range(12):
        _score(scorer, head, i)
    said = [r.getMessage() for r in caplog.records if "not checked" in r.getMessage()]
    assert said == ["screen shape: not checked: none of this screen's first 6 frames showed "
                    "the probe's whole fan. Heads are measured, and their exams say the "
                    "shape was not checked: zoom out once so the whole fan shows, with black "
                    "below it"], said



@needs_data
@pytest.mark.parametrize("where", ["no pixel size", "own scale"])
def test_the_unchecked_warning_claims_no_head_the_box_does_not_mark(caplog, where):
    """An installer's walk: a fresh box with no pixel size yet (`[biometry] pixel_size_mm =
    0`, no depth scale) logged "Heads are measured, and their exams say the shape was not
    checked" though it measured none; and a recording that knows its own scale (never
    through a grabber: its heads carry no shape) logged it too. The first is told the shape
    still needs the whole fan once; the second is told nothing."""
    caplog.set_level("INFO", logger="edge.scorer")
    scorer = _scorer(fast_for_frames=6)
    if where == "no pixel size":
        scorer.head = dataclasses.replace(scorer.head, pixel_size_mm=0.0)
    head = cv2.imread(str(HEAD))
    own = {"pixel_size_mm": 0.15} if where == "own scale" else {}
    results = [_score(scorer, head, i, **own) for i in range(12)]
    said = [r.getMessage() for r in caplog.records if "not checked" in r.getMessage()]
    if where == "own scale":
        assert _measured(results) and all("shape" not in b for b in _measured(results))
        assert said == [], said
    else:
        assert not _measured(results)
        assert said == ["screen shape: not checked: none of this screen's first 6 frames "
                        "showed the probe's whole fan. No head is measured yet (no pixel "
                        "size or depth scale); once heads are, they are said unchecked until "
                        "a frame shows the whole fan: zoom out once so the whole fan shows, "
                        "with black below it"], said

def test_the_exam_summary_carries_the_shape_and_the_wire_refuses_a_wrong_one():
    tally = ExamTally()
    tally.add({"plane": "Brain (Tv.)", "latency_ms": 9.0,
               "biometry": {"status": "ok", "hc_mm": 240.0, "bpd_mm": 66.0, "ofd_mm": 86.0,
                            "scale": "calibration", "shape": "unchecked"}})
    body = tally.body("grabber", time.time() - 60, time.time())
    assert body["biometry"]["shape"] == "unchecked"

    def message(bio: dict) -> dict:
        payload = build_exam(envelope("exam", "box-1", "clinic-1", "boot-1"),
                             {**body, "biometry": bio})
        return {**payload, "msg_id": str(uuid.uuid4()), "seq": 1}

    assert validate_payload(message(body["biometry"])) == []
    old = {k: v for k, v in body["biometry"].items() if k != "shape"}
    assert validate_payload(message(old)) == [], "a box before it is still valid"
    for wrong in ("maybe", "", 1, None, ["checked"], {"checked": True}):
        errors = validate_payload(message({**body["biometry"], "shape": wrong}))
        assert errors and all("shape" in e for e in errors), (wrong, errors)


def test_heads_of_no_shape_or_of_a_shape_the_box_never_writes_give_the_exam_none():
    """Records journaled before it, or damaged: no claim either way."""
    tally = ExamTally()
    for shape in (None, "CHECKED", 3, ["checked"]):
        bio = {"status": "ok", "hc_mm": 240.0, "bpd_mm": 66.0, "ofd_mm": 86.0}
        if shape is not None:
            bio["shape"] = shape
        tally.add({"plane": "Brain (Tv.)", "latency_ms": 9.0, "biometry": bio})
    assert "shape" not in tally.biometry()


MEASURED = {"measured": 5, "declined": {}, "hc_mm": 240.0, "bpd_mm": 66.0, "ofd_mm": 86.0,
            "ga_weeks": 26.1, "ga_low_weeks": 26.0, "ga_high_weeks": 26.3, "best_frames": 5,
            "hc_p10_mm": 238.0, "hc_p90_mm": 242.0, "scale": "calibration"}


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_the_report_of_heads_measured_unchecked_says_how_to_let_the_box_check(lang):
    said = catalog(lang, load_rules(None))["report.shape_unchecked"]
    assert said in _report({**MEASURED, "shape": "unchecked"}, lang)
    assert said not in _report({**MEASURED, "shape": "checked"}, lang)
    assert said not in _report(MEASURED, lang)
    assert said not in _report({**MEASURED, "shape": "<script>"}, lang)
