"""The instruction under the image is decided on the box (`edge.web.live.instruction`), as
the quality audit's own instruction always was: the page only puts it in its language.

Before, whether the plane shown was on the exam's list, and which slots were still to find,
was worked out in the page's script, from its own copy of the exam a second old; and once
every slot was captured any plane got "Good image: hold still", a name held against the
frames too (the probe had left that view, its name dimmed): green words beside a stale name.

On real exams (`ExamSession` on the shipped protocols, their page snapshot) and the real
frame header the server streams; no browser.
"""

from __future__ import annotations

import json
import time

from edge.exam.feedback import Shown, SteadyFeedback
from edge.exam.protocol import load_protocols
from edge.exam.session import ExamSession
from edge.models.biometry import SET_UP_STATUSES
from edge.models.quality import load_rules
from edge.web.i18n import CATALOG_DIR
from edge.web.live import LiveView, LoopHook, exam_snapshot, instruction, slots_still_wanted
from edge.web.server import frame_header

HEAD = "Head (HC, BPD)"  # the biometry protocol's one slot, filled by either head plane


def head_exam(captured: bool = False, running: bool = True) -> dict:
    """The page's copy of a running head exam (protocol `biometry`)."""
    exam = exam_snapshot(ExamSession(load_protocols()["biometry"]), running=running)
    if captured:
        exam["checklist"] = [{**row, "captured": True} for row in exam["checklist"]]
    return exam


def test_a_good_image_of_a_plane_off_the_exams_list_names_the_slots_still_to_find():
    said = instruction("Abdominal", None, None, False, head_exam())
    assert said == {"key": "instruction.off_list", "text": None, "class": "fix",
                    "plane": "Abdominal", "slots": [HEAD]}
    # a second-trimester screen: every slot not yet captured, in the checklist's order
    exam = exam_snapshot(ExamSession(load_protocols()["second-trimester"]), running=True)
    wanted = [row["plane"] for row in exam["checklist"]]
    assert slots_still_wanted("Background", exam) == wanted
    exam["checklist"][0] = {**exam["checklist"][0], "captured": True}
    assert slots_still_wanted("Background", exam) == wanted[1:]


def test_a_good_image_of_a_plane_the_exam_takes_is_good_to_hold():
    for plane in ("Brain (Tv.)", "Brain (Cb.)"):  # either fills the head slot
        assert instruction(plane, None, None, False, head_exam())["key"] == "instruction.good"
    good = {"key": "instruction.good", "text": None, "class": "good"}
    # every slot captured: nothing more to ask for
    assert instruction("Abdominal", None, None, False, head_exam(captured=True)) == good
    # no exam running (none yet, or the last one ended): no list to hold the plane to
    assert instruction("Abdominal", None, None, False, head_exam(running=False)) == good
    assert instruction("Abdominal", None, None, False, None) == good


def test_no_view_named_is_never_a_good_image_to_hold():
    """The plane model abstaining ("Searching...") over a clean image said "Good image: hold
    still" under a name that names nothing: she held a view the box could not name. Now it
    asks her to move slowly, naming what the running exam still wants."""
    for plane in ("uncertain", None):
        assert instruction(plane, None, None, False, head_exam()) == {
            "key": "instruction.find", "text": None, "class": "idle", "slots": [HEAD]}
        for exam in (head_exam(captured=True), head_exam(running=False), None):
            assert instruction(plane, None, None, False, exam) == {
                "key": "instruction.searching", "text": None, "class": "idle"}
    # the quality audit's own instruction still comes first
    said = instruction("uncertain", "Zoom in", "quality.size.low", False, head_exam())
    assert said == {"key": "quality.size.low", "text": "Zoom in", "class": "fix"}


def test_the_quality_audits_instruction_comes_first():
    said = instruction("Abdominal", "Zoom in", "quality.size.low", False, head_exam())
    assert said == {"key": "quality.size.low", "text": "Zoom in", "class": "fix"}
    said = instruction("Brain (Tv.)", "Zoom in", None, True, head_exam(captured=True))
    assert said == {"key": None, "text": "Zoom in", "class": "fix"}


def test_a_name_held_against_the_frames_never_has_good_image_beside_it():
    """Every slot captured, the probe moved off the view it named: its name is held,
    dimmed, for a few frames. Before, "Good image: hold still" stood beside it."""
    for exam in (head_exam(captured=True), head_exam(), None):
        for plane in ("Femur", "Brain (Tv.)"):
            said = instruction(plane, None, None, True, exam)
            assert said == {"key": "instruction.moving", "text": None, "class": "idle"}, \
                (plane, exam and exam["captured"], said)


def test_a_hostile_exam_copy_asks_for_nothing_rather_than_failing():
    for exam in ({"running": True}, {"running": True, "checklist": None},
                 {"running": True, "checklist": ["x", 3, None]},
                 {"running": True, "checklist": [{"captured": False}]}):
        said = instruction("Abdominal", None, None, False, exam)
        assert said["key"] == "instruction.good", said
    said = instruction("Abdominal", None, None, False,
                       {"running": True, "checklist": [{"plane": "Femur", "captured": False}]})
    assert said["slots"] == ["Femur"]


def test_the_frame_header_the_page_reads_carries_the_instruction_with_its_catalog_key():
    """The server's header (the stream's and the state's alike) sends the decision."""
    view = LiveView()
    view.exam = head_exam()
    record = {"ts": time.time(), "plane": "Abdominal", "plane_confidence": 1.0,
              "quality": {"score": 0.9}}
    header = frame_header(record, Shown("Abdominal", 0.9, None, None), 1, 90, False,
                          None, view.exam)
    assert header["shown"]["instruction"]["key"] == "instruction.off_list"
    assert header["shown"]["instruction"]["slots"] == [HEAD]
    rules = load_rules()
    gain = next(rule for rule in rules.criteria if rule.name == "gain")
    header = frame_header(record, Shown("Abdominal", 0.3, "gain", gain.message_high), 2,
                          None, True, rules, view.exam)
    said = header["shown"]["instruction"]
    assert said == {"key": header["shown"]["key"], "text": gain.message_high, "class": "fix"}
    assert said["key"] == "quality.gain.high"
    header = frame_header(record, Shown("Femur", 0.9, None, None), 3, None, True, rules,
                          head_exam(captured=True))
    assert header["shown"]["instruction"]["key"] == "instruction.moving"


def test_every_instruction_the_box_sends_is_in_every_catalog_shipped():
    """The page's catalog check (tests/test_page_s19.py) reads the keys in app.js; these
    are the box's now, so they are checked here: a key missing would show the key."""
    said = [instruction("Abdominal", None, None, False, head_exam()),
            instruction("Brain (Tv.)", None, None, False, head_exam()),
            instruction("Femur", None, None, True, head_exam()),
            instruction("uncertain", None, None, False, head_exam()),
            instruction(None, None, None, False, None)]
    said += [instruction("Brain (Tv.)", None, None, False, head_exam(), status)
             for status in SET_UP_STATUSES]
    keys = {s["key"] for s in said} | {s["detail"] for s in said if "detail" in s}
    assert keys == {"instruction.off_list", "instruction.good", "instruction.moving",
                    "instruction.find", "instruction.searching", "instruction.not_measured",
                    *(f"instruction.not_measured_{s}" for s in SET_UP_STATUSES)}
    for path in sorted(CATALOG_DIR.glob("*.json")):
        catalog = json.loads(path.read_text())
        assert keys <= set(catalog), (path.name, keys - set(catalog))
        assert "{plane}" in catalog["instruction.off_list"] and \
            "{slots}" in catalog["instruction.off_list"], path.name
        assert "{slots}" in catalog["instruction.find"], path.name


# -- a good head image the box cannot measure for its set-up ------------------------------

def test_a_good_head_image_refused_for_the_set_up_says_the_head_is_not_measured_and_why():
    """A box with no calibration (or a wrong one, the depth ruler unread, a stretched
    picture) measures no head; over a good image of the head plane the instruction said
    "Good image: hold still" in green, and she took the exam as measured. Now it says the
    head is not measured, and under it why, in the fix-needed style."""
    for status in SET_UP_STATUSES:
        for exam in (head_exam(), head_exam(captured=True), head_exam(running=False), None):
            said = instruction("Brain (Cb.)", None, None, False, exam, status)
            assert said == {"key": "instruction.not_measured",
                            "detail": f"instruction.not_measured_{status}", "text": None,
                            "class": "fix"}, (status, said)
    # what the image needs comes first, and a name held against the frames gets no verdict
    said = instruction("Brain (Tv.)", "Zoom in", "quality.size.low", False, head_exam(),
                       "pixel_size_missing")
    assert said == {"key": "quality.size.low", "text": "Zoom in", "class": "fix"}
    said = instruction("Brain (Tv.)", None, None, True, head_exam(), "pixel_size_missing")
    assert said["key"] == "instruction.moving"
    # a head measured, refused for the scan itself (no head, cut off), or a hostile status:
    # the image is good to hold
    for status in (None, "ok", "no_head", "head_cut_off", "", 3, ["ruler_unread"],
                   "instruction.good"):
        said = instruction("Brain (Tv.)", None, None, False, head_exam(), status)
        assert said["key"] == "instruction.good" and "detail" not in said, status
    for path in sorted(CATALOG_DIR.glob("*.json")):
        catalog = json.loads(path.read_text())
        for status in SET_UP_STATUSES:
            words = catalog[f"instruction.not_measured_{status}"]
            assert words != catalog["instruction.good"], (path.name, status)


def test_the_head_not_measured_instruction_asks_her_what_the_card_asks_in_its_words():
    """A user's walk (7 December) on a fresh box and a PAL grabber: the yellow instruction
    ended "See the box's set-up." ("Voir le réglage du boîtier."), a set-up the midwife has
    no way into, while the card beneath told her to ask for it to be set; and over a PAL
    grabber's squeezed picture it said "the picture is stretched", where the image's own
    line said "picture out of shape" and the card "stretched or squeezed". Now it asks as
    the card asks, and names the fault as the image's line does (`bio.*`), on the smaller
    line under "Head not measured"."""
    asks = {"en": {"pixel_size_missing": "ask for it to be set.",
                   "pixel_size_absurd": "ask for it to be checked.",
                   "screen_stretched": "ask for the box to be set up."},
            "fr": {"pixel_size_missing": "demandez qu'on le règle.",
                   "pixel_size_absurd": "demandez qu'on le vérifie.",
                   "screen_stretched": "demandez qu'on règle le boîtier."}}
    for lang in ("en", "fr"):
        catalog = json.loads((CATALOG_DIR / f"{lang}.json").read_text(encoding="utf-8"))
        colon = ": " if lang == "en" else "\u202f: "
        for status in SET_UP_STATUSES:
            said = catalog[f"instruction.not_measured_{status}"]
            # the image's line's words for the fault ("Not measured: picture out of shape")
            fault = catalog[f"bio.{status}"].split(colon, 1)[1]
            assert said.lower().startswith(fault.lower() + colon), (lang, status, said)
            assert "set-up" not in said and "Voir" not in said, (lang, status, said)
            if status in asks[lang]:
                assert said.endswith(colon + asks[lang][status]), (lang, status, said)
        for status in ("pixel_size_missing", "pixel_size_absurd"):  # the card's own ask
            assert catalog[f"exam.not_measured_{status}"].lower().endswith(
                " " + asks[lang][status])


class _NoExam:
    current = None


def _head_frame(rules, plane: str, bio_status: str | None, frame: int) -> dict:
    """A frame's result as the scorer gives it: every criterion passing (a good image),
    with a head's biometry only where the frame itself names a head plane."""
    criteria = {r.name: {"pass": True, "value": 0.0, "message": r.ok} for r in rules.criteria}
    return {"source": "script", "frame": frame, "ts": time.time(), "error": None,
            "plane": plane, "plane_confidence": 0.9, "roi": None, "head": None,
            "biometry": None if bio_status is None else {"status": bio_status},
            "quality": {"score": 0.9, "advice": None, "criteria": criteria}}


def _play(frames: list[tuple[str, str | None]]) -> list[str]:
    """The instruction key the page reads after each frame, through the real steady
    feedback, loop hook and frame header, on a running head exam."""
    rules = load_rules()
    view = LiveView()
    view.protocol = {"name": "biometry", "head_planes": ["Brain (Tv.)", "Brain (Cb.)"]}
    view.exam = head_exam()
    hook = LoopHook(view, end_gap_s=5.0)
    steady = SteadyFeedback(rules.feedback)
    keys = []
    for n, (plane, status) in enumerate(frames):
        record = _head_frame(rules, plane, status, n)
        hook.after_frame(None, record, steady.update(record), None, float(n), _NoExam())
        latest = view.latest
        header = frame_header(latest.record, latest.shown, latest.seq, latest.confidence,
                              latest.held, rules, view.exam, latest.set_up)
        said = header["shown"]["instruction"]
        keys.append(said.get("detail") or said["key"])
    return keys


def test_the_head_not_measured_instruction_is_said_at_once_and_held_as_any_instruction():
    """Played through the loop's hook: a verdict on the set-up (here the picture found
    stretched) is said on the first frame that carries it under a head plane shown, where
    it waited as long as an instruction must (message_change_frames, a second), the
    previous instruction ("Good image: hold still") standing over heads the box refused.
    It then holds over a frame that names another plane under the head plane still shown
    (it carries no biometry), over one measured, and over one whose plane model named
    nothing. A depth ruler unread, read on each frame, is held as any instruction: one
    frame that missed it among read ones does not turn the instruction yellow."""
    rules = load_rules()
    needed, plane_change = (rules.feedback.message_change_frames,
                            rules.feedback.plane_change_frames)
    tv, cb = "Brain (Tv.)", "Brain (Cb.)"
    stretched = "screen_stretched"
    said = "instruction.not_measured_screen_stretched"
    good = "instruction.good"
    cycle = [(tv, stretched), ("Abdominal", None), (tv, stretched), (tv, "ok"),
             (cb, stretched), (tv, stretched), ("uncertain", None), (tv, stretched),
             (tv, "no_head")]
    keys = _play([(tv, stretched)] * needed + cycle * 4)
    # the head plane is named once the plane's own hold has passed: said from that frame
    assert keys[:plane_change - 1] == ["instruction.find"] * (plane_change - 1), keys
    assert keys[plane_change - 1:] == [said] * (len(keys) - plane_change + 1), keys
    # measured heads first (a fresh box before it has seen its picture stretched), then
    # refused: said on the first refused frame, never "hold still" over one
    keys = _play([(tv, "ok")] * needed + [(tv, stretched)] + cycle * 2)
    assert keys[needed - 1] == good and keys[needed:] == [said] * (len(keys) - needed), keys
    # heads read again on every frame: measured, after an instruction's hold, and good to
    # hold; refused again: said at once
    keys = _play([(tv, stretched)] * needed + [(tv, "ok")] * (needed + 1) + [(tv, stretched)])
    assert keys[plane_change - 1:2 * needed - 1] == [said] * (2 * needed - plane_change), keys
    assert keys[2 * needed - 1:] == [good, good, said], keys
    # the depth ruler, read on each frame: one missed among read ones changes nothing;
    # unread on every frame, said once it has held as an instruction must, and then held
    unread, unread_said = "ruler_unread", "instruction.not_measured_ruler_unread"
    keys = _play([(tv, "ok")] * needed + [(tv, unread)] + [(tv, "ok")] * needed)
    assert keys[needed - 1:] == [good] * (needed + 2), keys
    keys = _play([(tv, "ok")] * needed + [(tv, unread)] * needed
                 + [(tv, unread), (tv, "ok"), (tv, unread), ("Abdominal", None)] * 4)
    assert keys[needed - 1:2 * needed - 1] == [good] * needed, keys
    assert keys[2 * needed - 1:] == [unread_said] * (len(keys) - 2 * needed + 1), keys
    # a status that is none of the set-up's (hostile or garbled) refuses nothing at once
    keys = _play([(tv, "ok")] * needed + [(tv, [stretched]), (tv, 3), (tv, ""),
                                          (tv, {"status": stretched}), (tv, stretched.upper())])
    assert keys[needed - 1:] == [good] * 6, keys
    # from one refusal to another: a refusal is said either way, the reason held as any
    # instruction (it does not blink between the two)
    missing = "instruction.not_measured_pixel_size_missing"
    keys = _play([(tv, stretched)] * needed + [(tv, "pixel_size_missing"), (tv, stretched)] * 3
                 + [(tv, "pixel_size_missing")] * needed)
    assert keys[plane_change - 1:-1] == [said] * (len(keys) - plane_change), keys
    assert keys[-1] == missing, keys
    # not on a plane the exam does not measure the head on, whatever the head frames said
    keys = _play([(tv, "pixel_size_missing")] * needed + [("Femur", None)] * 10)
    assert keys[plane_change - 1] == missing
    assert keys[-1] == "instruction.off_list", keys
    # a head plane named after another plane, over heads refused all along: said as soon
    # as the head plane is shown
    keys = _play([("Femur", None)] * needed + [(tv, "pixel_size_missing")] * needed)
    shown = keys.index(missing)
    assert keys[shown:] == [missing] * (len(keys) - shown) and good not in keys, keys
