"""The scorer's checks beside the loop (the screen region searched again, the probe's fan
read) start once a frame's models have run, never while they run: on the box's two cores
such a job took one of the models' two threads' cores, and made that frame slower. At a
live frame rate they now run in the pause before the next frame.

Real screens through the real scorer and models; the order of events is recorded, not
timed."""

from __future__ import annotations

import dataclasses
import time

import cv2
import pytest

from edge import scorer as scorer_module
from edge.capture.sources import Frame
from edge.config import load_settings
from edge.scorer import make_scorer
from tests.conftest import DATA

PLANES = DATA / "planes" / "images"
FAN_SCREEN = PLANES / "Patient01630_Plane1_1_of_3.png"  # shows the probe's whole fan
HEAD_SCREEN = PLANES / "Patient01715_Plane3_2_of_3.png"  # a transthalamic head

pytestmark = pytest.mark.skipif(not PLANES.is_dir(), reason="no shared data")


def _recorded_run(monkeypatch, frames: int = 12) -> list[tuple[int, str]]:
    scorer = make_scorer(load_settings(overrides={
        "biometry": {"pixel_size_mm": 0.15}, "loop": {"roi_refresh_frames": 3}}))
    scorer.head = dataclasses.replace(
        scorer.head, fan=dataclasses.replace(scorer.head.fan, fast_every_frames=2))
    events: list[tuple[int, str]] = []
    current = [-1]

    def recorded(name, run):
        def wrapper(*args, **kwargs):
            events.append((current[0], f"model {name}"))
            return run(*args, **kwargs)
        return wrapper

    models = [scorer.model, scorer.head.model]
    if scorer.quality is not None and scorer.quality.learned is not None:
        models.append(scorer.quality.learned)
    for model in models:
        for method in ("run", "run_all"):
            monkeypatch.setattr(model, method, recorded(model.manifest.name,
                                                        getattr(model, method)))
    for job in ("find_roi_aside", "read_fan_aside"):
        started = getattr(scorer_module, job)

        def starting(*args, _job=job, _started=started):
            events.append((current[0], _job))
            return _started(*args)
        monkeypatch.setattr(scorer_module, job, starting)

    screens = [cv2.imread(str(FAN_SCREEN)), cv2.imread(str(HEAD_SCREEN))]
    assert screens[0].shape == screens[1].shape  # one scanner, one screen size
    for index in range(frames):
        current[0] = index
        result = scorer.score(Frame("grabber", index, screens[index % 2], time.monotonic(),
                                    time.time()))
        events.append((index, "result"))
        assert result.error is None
        time.sleep(0.02)  # as between live frames
    return events


def test_a_job_beside_the_loop_starts_after_every_model_of_its_frame(monkeypatch):
    events = _recorded_run(monkeypatch)
    jobs = [(i, kind) for i, (frame, kind) in enumerate(events) if kind.endswith("_aside")]
    assert {kind for _, kind in jobs} == {"find_roi_aside", "read_fan_aside"}, events
    # the head frames ran the segmenter too: a job's frame had all its models before it
    assert any(kind == "model head_segmenter" for _, kind in events)
    for position, _ in jobs:
        frame = events[position][0]
        later_models = [e for e in events[position + 1:]
                        if e[0] == frame and e[1].startswith("model")]
        assert later_models == [], (frame, events)
        assert any(e[0] == frame and e[1].startswith("model") for e in events[:position])
