"""A user's walk, 7 December: in a head exam (protocol `biometry`) with the head not yet
found, the probe on the abdomen gave a clean, confidently named image, and the page said
"Good image: hold still" in green: she held still on a view the exam does not need. The
instruction now names what the exam still needs when the plane shown is on none of its
slots, and says "Good image" again on a plane of the list. The box decides it
(`edge.web.live.instruction`, unit-tested in tests/test_instruction_on_the_box.py); the
page puts it in its language. A name held against the frames (the probe has left its view)
never has "Good image" beside it.

Driven on the real page in headless Chromium against the real server
(`edge.web.server.WebServer` and its `LiveView`, the exam a real `ExamSession`'s snapshot,
the frames published by hand as the loop publishes them; no models, no loop).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge.exam.feedback import Shown
from edge.exam.protocol import load_protocols
from edge.exam.session import ExamSession
from edge.web.live import LiveView, exam_snapshot
from tests.web_harness import page_on_view, scanning_view

pytest.importorskip("playwright.sync_api")
WAIT = {"timeout": 10_000, "polling": 100}


def publish(view: LiveView, plane: str, held_by: str | None = None) -> None:
    """A frame showing `plane`; with `held_by`, a frame of that plane while the name shown
    is still `plane`'s, held against the frames (edge/web/live.py SteadyConfidence)."""
    image = np.full((200, 300, 3), 60, np.uint8)
    record = {"ts": time.time(), "source": "s", "frame": 1, "plane": held_by or plane,
              "plane_confidence": 1.0, "roi": None, "quality": {"score": 1.0}}
    view.publish(image, record, Shown(plane, 1.0, None, None), None, time.monotonic(),
                 None if held_by else 95, held=held_by is not None)


def instruction_after(view: LiveView, page, plane: str, words: str,
                      held_by: str | None = None) -> tuple[str, str]:
    """Publish `plane` as a live scan does until the instruction reads `words` (or 8 s)."""
    end = time.monotonic() + 8
    while time.monotonic() < end:
        publish(view, plane, held_by)
        time.sleep(0.15)
        if page.text_content("#instruction") == words:
            break
    return page.text_content("#instruction"), page.get_attribute("#instruction", "class")


def test_a_good_image_of_a_plane_off_the_exams_list_says_what_the_exam_still_needs(
        tmp_path):
    view = scanning_view({"plane_student": "x"}, ["Brain (Tv.)", "Brain (Cb.)"])
    view.exam = exam_snapshot(ExamSession(load_protocols()["biometry"]), running=True)
    with page_on_view(tmp_path, view) as (page, errors):
        page.wait_for_function("(window.sonoedge.lastState || {}).exam != null", **WAIT)

        def say(key: str, **values) -> str:
            return page.evaluate("([k, v]) => window.sonoedge.t(k, v)", [key, values])

        off = say("instruction.off_list", plane=say("plane.Abdominal"),
                  slots=say("slot.Head (HC, BPD)"))
        assert off == "Abdomen is not on this exam's list. Find: Head for HC and BPD"
        text, cls = instruction_after(view, page, "Abdominal", off)
        assert text == off and "good" not in cls, (text, cls)
        # the bar beside it is not green either: green sits beside "Good image" only
        assert page.get_attribute("#quality", "class") == "qline fair"
        # a head, the exam's own plane: a good image of it is to hold
        good = say("instruction.good")
        text, cls = instruction_after(view, page, "Brain (Tv.)", good)
        assert text == good and "good" in cls, (text, cls)
        # in French, the same words from its own catalog
        page.select_option("#controls select.lang", "fr")
        page.wait_for_function("window.sonoedge.t('instruction.good') !== "
                               f"{good!r}", **WAIT)
        fr = say("instruction.off_list", plane=say("plane.Abdominal"),
                 slots=say("slot.Head (HC, BPD)"))
        assert fr == ("Abdomen n'est pas sur la liste de cet examen. Cherchez\u202f: "
                      "Tête pour PC et BIP")
        text, _ = instruction_after(view, page, "Abdominal", fr)
        assert text == fr, text
        # once every slot is captured, nothing more is asked for
        session = ExamSession(load_protocols()["biometry"])
        done = exam_snapshot(session, running=True)
        done["checklist"] = [{**row, "captured": True} for row in done["checklist"]]
        view.exam = done
        good_fr = say("instruction.good")
        text, cls = instruction_after(view, page, "Abdominal", good_fr)
        assert text == good_fr and "good" in cls, (text, cls)
        # the probe has left the view it named, whose name is held (dimmed) a few frames:
        # no "Good image" beside it (before: green words beside a stale name)
        moving = say("instruction.moving")
        assert moving == "Recherche de la nouvelle vue…"
        text, cls = instruction_after(view, page, "Femur", moving, held_by="Brain (Tv.)")
        assert text == moving and "idle" in cls, (text, cls)
        assert page.get_attribute("#plane", "class") == "tag held"
        assert page.get_attribute("#quality", "class") != "qline good"
        assert not errors, errors
