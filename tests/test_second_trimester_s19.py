"""A second-trimester screen as a midwife runs it: SonoNet's 13 standard planes, each found
more or less well, through the device's own scorer and the `second-trimester` protocol.

- A plane one of whose frames reaches the protocol's bar is captured, whatever frame the
  learned quality head's discount would have ranked first.
- What the checklist tells her to change on a plane other than a head plane never talks
  about the head: the head criteria measure a skull for biometry.
- A plane model that cannot name one of the protocol's planes is one line, not a checklist
  that says "not found" for ever.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from edge.capture.sources import Frame
from edge.config import load_settings
from edge.exam import protocol as exam_protocol
from edge.exam import session as exam_session
from edge.exam.protocol import ProtocolError, find_protocol
from edge.exam.session import (
    ExamSession,
    ExamSettings,
    ExamTracker,
    format_exam,
    passes_all,
    shows_content,
)
from edge.models.quality import load_rules
from edge.models.roi import find_roi, to_grey
from edge.scorer import make_scorer
from edge.uplink import messages
from quantize.data import read_frame
from quantize.degrade import degrade, degrade_many
from tests.cli_run import one_line_error, sonoedge
from tests.conftest import DATA, MODELS

pytestmark = pytest.mark.skipif(not (DATA / "sononet" / "examples").is_dir(),
                                reason="no shared data")
EXAMPLES = DATA / "sononet" / "examples"
HEAD_PLANES = ("Brain (Tv.)", "Brain (Cb.)")
# What a novice's hand does to a plane she has found: electronic noise, the gain too high, a
# rib's shadow, the anatomy slid past the side of the fan or down off the screen.
FAULTS = (("noise", {}), ("gain", {"direction": 1}), ("shadow", {}),
          ("cutoff", {"direction": "left"}), ("cutoff", {"direction": "down"}))


@pytest.fixture(scope="module")
def scorer():
    return make_scorer(load_settings())


def scored(scorer, image: np.ndarray, source: str, index: int) -> dict:
    scorer._roi_key = None
    return scorer.score(Frame(source, index, image, time.monotonic(), time.time())).to_dict()


@pytest.fixture(scope="module")
def faulty_screens(scorer) -> list[dict]:
    """Each of SonoNet's 13 example screens with each fault at severity 1, no clean one."""
    records = []
    for path in sorted(EXAMPLES.glob("*.tiff")):
        grey = to_grey(read_frame(path))
        roi = find_roi(grey)
        for kind, options in FAULTS:
            image = degrade(grey, roi, kind, 1.0, np.random.default_rng(1), **options)
            name = f"{path.stem}-{kind}{options.get('direction', '')}.png"
            records.append(scored(scorer, image, name, len(records)))
    return records


def reaches_bar(record: dict, plane: str, protocol) -> bool:
    """A frame named `plane` that shows its anatomy and whose score reaches the bar."""
    return (record.get("plane") == plane and shows_content(record)
            and passes_all(record, protocol.anatomy_criteria)
            and record["quality"]["score"] >= protocol.min_quality)


def test_a_plane_with_a_frame_good_enough_is_captured_whatever_the_discount_ranks_first(
        faulty_screens):
    """Every cut-off copy scores 0.40 (sector_cut fails) and is not good enough; a copy with
    a shadow (0.60), the gain too high (0.54) or noise (0.50) is. The learned head's discount
    counts the shadow, gain or noise again (0.60 -> 0.10) and the cut-off less (0.40 ->
    0.16), so the cut-off copy was kept as the plane's best, and 4CH, Lips, Spine (cor.) and
    Femur were told missing, to the midwife and in the summary, beside a frame of each that
    reached the bar (the summary's own `planes` said so: 4CH best quality 0.6, "missing").
    Whatever the order the frames come in."""
    protocol = find_protocol("second-trimester")
    for order in (faulty_screens, faulty_screens[::-1]):
        session = ExamSession(protocol)
        for record in order:
            session.add(record)
        body = session.summary("source_end")
        rows = {row["plane"]: row for row in session.checklist()}
        good = {slot.name for slot in protocol.slots
                if any(reaches_bar(r, slot.name, protocol) for r in faulty_screens)}
        assert {"4CH", "Lips", "Spine (cor.)", "Femur"} <= good
        for name, row in rows.items():
            assert row["captured"] is (name in good), (name, row)
            if row["captured"]:
                assert row["best"]["quality"] >= protocol.min_quality
        assert rows["4CH"]["best"]["source"] == "4CH-shadow.png"
        assert set(body["protocol"]["missing"]) == set(rows) - good
        assert body["protocol"]["captured"] == len(good)
        # The summary agrees with itself: a plane whose best quality reaches the bar is
        # not missing (head planes aside: a frame without one skull is no head's best).
        for plane, entry in body["planes"].items():
            if plane in rows and plane not in HEAD_PLANES and len(entry) > 2 \
                    and entry[2] >= protocol.min_quality:
                assert plane not in body["protocol"]["missing"], plane
        assert session.best_frames().keys() >= good


def test_the_discount_still_keeps_a_clean_frame_over_a_faulty_one_both_good_enough(scorer):
    """The bar comes first only between a frame that reaches it and one that does not: of
    two that both do, the one the learned head finds less faulty is kept, as before."""
    grey = to_grey(read_frame(EXAMPLES / "4CH.tiff"))
    clean = scored(scorer, grey, "clean.png", 0)
    shadow = scored(scorer, degrade(grey, find_roi(grey), "shadow", 1.0,
                                    np.random.default_rng(1)), "shadow.png", 1)
    assert clean["quality"]["score"] >= 0.5 and shadow["quality"]["score"] >= 0.5
    for order in ((clean, shadow), (shadow, clean)):
        session = ExamSession(find_protocol("second-trimester"))
        for record in order:
            session.add(record)
        assert session.best["4CH"].source == "clean.png"


def _result(plane: str, advice: str, failing: dict[str, str]) -> dict:
    criteria = {"content": {"pass": True, "value": 0.8, "message": "Ultrasound image present"}}
    criteria.update({name: {"pass": False, "value": 0.1, "message": message}
                     for name, message in failing.items()})
    return {"source": f"{plane}.png", "frame": 0, "plane": plane, "plane_confidence": 0.95,
            "quality": {"score": 0.3, "advice": advice, "criteria": criteria}}


SKULL = "The skull outline is not a clean oval: rotate the probe slightly to the axial plane"
ZOOM = "Zoom in: the head fills too little of the screen"
SHADOW = "A shadow hides part of the image: tilt or slide the probe a little"
CUT = "The anatomy runs off the edge: slide the probe to bring it into the middle"


def test_the_advice_for_a_plane_other_than_a_head_plane_never_talks_about_the_head():
    """The audit judges the head criteria on any frame that may show a head (the head
    planes together at 10%), so a profile, the lips or a misnamed chest can lead with "Zoom
    in: the head fills too little of the screen", or "rotate the probe slightly to the
    axial plane", which on a profile (a sagittal view) loses the plane. The checklist's
    "to improve it" for such a plane is its leading failing criterion other than the head's,
    by the rules' priority; none when only the head's fail. A head plane keeps it."""
    protocol = find_protocol("second-trimester")
    session = ExamSession(protocol)
    session.add(_result("Profile", "zoom", {"zoom": ZOOM, "ellipse_regular": SKULL,
                                             "shadow": SHADOW, "sector_cut": CUT}))
    session.add(_result("3VV", "ellipse_regular", {"ellipse_regular": SKULL}))
    session.add(_result("Brain (Tv.)", "zoom", {"zoom": ZOOM, "shadow": SHADOW}))
    rows = {row["plane"]: row for row in session.checklist()}
    # sector_cut (priority 10) before shadow (11), whatever their order in the result
    assert rows["Profile"]["best"]["advice"] == {"criterion": "sector_cut", "message": CUT}
    assert "advice" not in rows["3VV"]["best"]
    assert rows["Brain (Tv.)"]["best"]["advice"]["criterion"] == "zoom"
    text = format_exam(session, session.summary("command"))
    for line in text.splitlines():
        if line.lstrip().startswith(("[ ] Profile", "[ ] 3VV")):
            assert "head" not in line and "skull" not in line, line
    # The rules the frames were judged by give the order: a site's own priorities count.
    rules = load_rules(None)
    shadow_first = type(rules)(**{**rules.__dict__, "criteria": tuple(
        type(r)(**{**r.__dict__, "priority": 1}) if r.name == "shadow" else r
        for r in rules.criteria)})
    own = ExamSession(protocol, rules=shadow_first)
    own.add(_result("Profile", "zoom", {"zoom": ZOOM, "shadow": SHADOW, "sector_cut": CUT}))
    assert own.best["Profile"].advice == ("shadow", SHADOW)
    # The head planes are the device's ([biometry] head_planes).
    wide = ExamSession(protocol, head_planes=("Brain (Tv.)", "Brain (Cb.)", "Profile"))
    wide.add(_result("Profile", "zoom", {"zoom": ZOOM, "shadow": SHADOW}))
    assert wide.best["Profile"].advice == ("zoom", ZOOM)
    assert exam_session.advice_order(None)[0] == {"head_found", "head_inside", "zoom",
                                                  "ellipse_regular", "centred"}


def test_a_real_profile_cut_off_under_a_shadow_is_told_to_slide_not_about_the_skull(
        scorer):
    """SonoNet's profile screen cut off and shadowed: the plane student still names it a
    profile (0.86). Before rules 1.3.5 the audit led with "Part of the skull is off the
    screen" (the head criteria were judged, the head planes having 10% of it); now a frame
    named another standard plane is not judged by them, so the live instruction, and the
    checklist from the live tracker as from `sonoedge exam`, say what the profile needs."""
    grey = to_grey(read_frame(EXAMPLES / "PROFILE.tiff"))
    image = degrade_many(grey, find_roi(grey), {"cutoff": 0.9, "shadow": 0.9},
                         np.random.default_rng(0))
    record = scored(scorer, image, "profile.png", 0)
    assert record["plane"] == "Profile"
    head_criteria = exam_session.advice_order(scorer.quality.rules)[0]
    assert not head_criteria & set(record["quality"]["criteria"]), record["quality"]
    assert record["quality"]["advice"] == "sector_cut"
    assert record["quality"]["criteria"]["sector_cut"]["pass"] is False
    ended = []
    tracker = ExamTracker(find_protocol("second-trimester"), ExamSettings(), None,
                          lambda session, body: ended.append(session))
    tracker.feed(record, mono=0.0)
    tracker.end("command")
    session = ExamSession(find_protocol("second-trimester"), rules=scorer.quality.rules)
    session.add(record)
    for exam in (ended[0], session):
        (row,) = [r for r in exam.checklist() if r["plane"] == "Profile"]
        assert row["captured"] is False
        assert row["best"]["advice"]["criterion"] == "sector_cut"
        assert "head" not in row["best"]["advice"]["message"]


def _models_calling_the_lips_face(tmp_path) -> tuple:
    """A copy of the shipped models whose plane model names the lips "Face": a bundle
    trained on other classes, which can never fill the protocol's Lips slot."""
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    manifest = json.loads((models / "plane_student.json").read_text())
    manifest["labels"] = ["Face" if label == "Lips" else label for label in manifest["labels"]]
    (models / "plane_student.json").write_text(json.dumps(manifest))
    return models, manifest


def test_a_plane_model_that_cannot_name_a_protocols_plane_is_one_line(tmp_path):
    """A plane model whose labels lack one of the protocol's planes (here a bundle that
    calls the lips "Face") can never capture that slot: every exam would tell the midwife
    "Lips: not found". `sonoedge exam` says so in one line, exit 2; the biometry protocol,
    whose slot it can fill, runs."""
    models, manifest = _models_calling_the_lips_face(tmp_path)
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("LIPS.tiff", "BRAIN-TV.tiff"):
        shutil.copy(EXAMPLES / name, frames / name)
    proc = sonoedge("exam", str(frames), "--protocol", "second-trimester", "--models-dir",
                    str(models))
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc, "second-trimester", "'Lips'", "plane_student@")
    assert proc.stdout == ""
    proc = sonoedge("exam", str(frames), "--protocol", "biometry", "--models-dir", str(models))
    assert proc.returncode == 0, proc.stderr
    labels = tuple(manifest["labels"])
    exam_protocol.check_named(find_protocol("biometry"),
                              tuple(x for x in labels if x != "Brain (Cb.)"), "m")
    with pytest.raises(ProtocolError, match="2 of its 13 slots"):
        exam_protocol.check_named(find_protocol("second-trimester"),
                                  tuple(x for x in labels if x != "Femur"), "m")


def test_a_screen_of_all_13_planes_fits_the_wire_and_keeps_its_counts(scorer, faulty_screens):
    """Every plane seen, several faults each, frames the model abstains on and Background:
    the summary goes out under 1 KB with the protocol's counts (the names of the missing
    slots may be shed, their count never)."""
    session = ExamSession(find_protocol("second-trimester"))
    for record in faulty_screens:
        session.add(record)
    body = session.summary("source_end", scorer.model_versions())
    assert len(body["planes"]) >= 13
    env = {"schema": 1, "kind": "exam", "device_id": "clinic-7-box-01",
           "clinic_id": "clinic-7", "boot_id": "6db5d402-37e2-4157-ad2c-de8eddf6d7b8",
           "ts": 1796323274.594, "mono_s": 10068.423}
    payload = {**messages.build_exam(env, body),
               "msg_id": "d425a522-9407-5d4f-bd31-82143c5b2769", "seq": 123456}
    assert len(json.dumps(payload, separators=(",", ":")).encode()) <= 1024
    assert payload["protocol"]["required"] == 13
    assert payload["protocol"]["captured"] == body["protocol"]["captured"]


def test_run_says_once_that_its_plane_model_cannot_fill_a_protocol_slot(tmp_path):
    """The long-running loop warns instead of refusing: after a model update the box must
    keep naming the other planes and measuring heads, and say which slot it cannot fill."""
    models, manifest = _models_calling_the_lips_face(tmp_path)
    config = tmp_path / "device.toml"
    config.write_text(f'[exam]\nprotocol = "second-trimester"\n[models]\ndir = "{models}"\n')
    proc = sonoedge("run", "--config", str(config), "--source", str(EXAMPLES / "LIPS.tiff"),
                    "--state-dir", str(tmp_path / "state"), "--once")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "could never be captured" in line]
    assert len(said) == 1 and "'Lips'" in said[0] and "plane_student@" in said[0], proc.stderr


def test_a_screen_that_missed_planes_names_them_to_the_district(scorer, faulty_screens):
    """Every ordinary second-trimester exam is over 1 KB in full. It used to shed the names
    of its missed planes and its deficiencies (the district's completeness and quality
    pages) while it still carried the model list every health message repeats and the
    quality of its Background frames. Now those go first, and the names and deficiencies
    reach the district."""
    session = ExamSession(find_protocol("second-trimester"))
    for record in faulty_screens:
        if record["plane"] not in ("Lips", "Femur"):  # two planes she did not find
            session.add(record)
    body = session.summary("source_end", scorer.model_versions())
    env = {"schema": 1, "kind": "exam", "device_id": "clinic-7-box-01",
           "clinic_id": "clinic-7", "boot_id": "6db5d402-37e2-4157-ad2c-de8eddf6d7b8",
           "ts": 1796323274.594, "mono_s": 10068.423}
    full = len(json.dumps({**env, **body}, separators=(",", ":")).encode())
    assert full > 1024 - 100, full  # it must shed something
    payload = messages.build_exam(env, body)
    assert set(payload["protocol"]["missing"]) >= {"Lips", "Femur"}, payload["protocol"]
    assert payload["protocol"]["missing"] == body["protocol"]["missing"]
    assert payload.get("deficiencies") == body["deficiencies"]
    assert all(len(v) == 3 for k, v in payload["planes"].items()
               if k not in ("Background", "uncertain", "other"))  # every plane's quality
