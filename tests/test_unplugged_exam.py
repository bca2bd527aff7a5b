"""An exam ends on the clock, not on the next frame: a grabber unplugged (or a scanner
switched off) hands the loop no frames at all, and until it did the exam stayed open,
its summary unsent and the district blind, until the next woman's first frame came.

The real device loop (`edge.loop.run`, in a thread) reads a `LiveSource` whose capture
device plays real HC18 heads until the test unplugs it (reads fail, reopens find nothing).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import cv2
import numpy as np

import edge.loop
import edge.web
from edge.capture.sources import LiveSettings, LiveSource
from edge.config import load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSettings, ExamTracker
from edge.loop import RESTART_EXIT, run
from edge.web.auth import write_pin
from edge.web.live import LoopHook
from tests.servers import free_port
from tests.test_fleet import device_config, fleet_kit  # noqa: F401
from tests.test_web_live import _Grabber
from tests.web_harness import HEADS, PIN, _screen, wait_for

END_GAP_S = 2.0


def _outbox_kinds(state) -> list[tuple[str, dict]]:
    path = state / "outbox.sqlite3"
    if not path.is_file():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        rows = db.execute("SELECT kind, payload FROM outbox ORDER BY id").fetchall()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def _unpluggable_grabber(data_dir, seed: int, monkeypatch):
    """The loop's source, a `LiveSource` whose device plays real HC18 heads at 15 fps while
    `plugged` is set; cleared, its reads fail and its reopens find nothing."""
    rng = np.random.default_rng(seed)
    frames = [_screen(cv2.imread(str(data_dir / "hc18" / "images" / name)), rng, True)
              for name in HEADS for _ in range(3)]
    plugged = threading.Event()
    plugged.set()
    grabbers: list[_Grabber] = []
    sources: list[LiveSource] = []

    def opener():
        if not plugged.is_set():
            return None
        grabbers.append(_Grabber(frames, plugged))
        return grabbers[-1]

    def open_live(spec, live=None, pace=False):
        sources.append(LiveSource(spec, opener, live))
        return sources[-1]

    monkeypatch.setattr(edge.loop, "open_source", open_live)
    return plugged, grabbers, sources


def _web_hooks(monkeypatch) -> list[LoopHook]:
    """The loop's page hooks as `run` makes them (the real page), and no lingering on the
    last exam once the source ends."""
    hooks: list[LoopHook] = []
    real_start_web = edge.web.start_web

    def start_web(*args, **kwargs):
        hooks.append(real_start_web(*args, **kwargs))
        return hooks[-1]

    monkeypatch.setattr(edge.web, "start_web", start_web)
    monkeypatch.setattr(LoopHook, "linger", lambda self, stopped, poll_s=0.2: None)
    return hooks


def test_an_unplugged_grabbers_exam_ends_after_the_gap_and_its_summary_is_queued(
        tmp_path, data_dir, monkeypatch):
    plugged, grabbers, sources = _unpluggable_grabber(data_dir, 5, monkeypatch)
    state = tmp_path / "state"
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[source]
spec = "v4l2:/dev/video9"
backoff_initial_s = 0.5
backoff_max_s = 1.0
[device]
state_dir = "{state}"
[loop]
log_every = 0
[exam]
end_gap_s = {END_GAP_S}
signal_hold_s = 0  # the cable out is the woman gone here (tests/test_signal_hold.py holds)
[mqtt]
health_interval_s = 1.0
""")
    said: list[tuple[float, str]] = []
    loop = threading.Thread(target=run, args=(load_settings(cfg),),
                            kwargs={"echo": lambda line: said.append((time.monotonic(), line))},
                            daemon=True)
    loop.start()
    try:
        wait_for(lambda: grabbers and grabbers[0].i >= 30, 90, "two seconds of heads")
        plugged.clear()
        unplugged = time.monotonic()
        # no frame comes again in this test: the exam must end on the clock alone
        ended = wait_for(lambda: [(t, line) for t, line in said if "ended by gap" in line],
                         END_GAP_S + 10, "the exam to end while the grabber is out")
        assert ended[0][0] - unplugged < END_GAP_S + 3
        exams = wait_for(lambda: [body for kind, body in _outbox_kinds(state)
                                  if kind == "exam"], 10, "the exam's summary in the outbox")
        # every frame the loop took (the grabber keeps only the newest, a busy box drops some)
        assert len(exams) == 1 and exams[0]["ended_by"] == "gap" and exams[0]["frames"] >= 10
        # health goes on being sent while nothing comes, not only after the next frame
        healths = len([k for k, _ in _outbox_kinds(state) if k == "health"])
        wait_for(lambda: len([k for k, _ in _outbox_kinds(state) if k == "health"])
                 >= healths + 2, 10, "health messages while the grabber is out")
        assert not plugged.is_set()
    finally:
        plugged.clear()
        for source in sources:
            source.close()
        loop.join(60)
    assert not loop.is_alive()


def test_the_pages_stop_tapped_while_nothing_comes_ends_that_exam_not_the_next_womans(
        tmp_path, data_dir, monkeypatch):
    """A Stop tapped on the page while the grabber is out was applied only with the next
    frame: the next woman's exam then ended after its first frame, the rest of her scan
    held back. It is applied on the loop's idle tick, to the exam it was tapped for."""
    plugged, grabbers, sources = _unpluggable_grabber(data_dir, 6, monkeypatch)
    hooks = _web_hooks(monkeypatch)
    state = tmp_path / "state"
    write_pin(state, PIN)
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[source]
spec = "v4l2:/dev/video9"
backoff_initial_s = 0.3
backoff_max_s = 0.5
[device]
state_dir = "{state}"
[loop]
log_every = 0
[exam]
end_gap_s = {END_GAP_S}
signal_hold_s = 0  # the cable out is the woman gone here (tests/test_signal_hold.py holds)
[web]
listen = "127.0.0.1:{free_port()}"
""")
    said: list[str] = []
    loop = threading.Thread(target=run, args=(load_settings(cfg),),
                            kwargs={"echo": said.append}, daemon=True)
    loop.start()
    ended = lambda: [line for line in said if ", ended by " in line]  # noqa: E731
    try:
        wait_for(lambda: grabbers and grabbers[0].i >= 20, 90, "the first woman's heads")
        plugged.clear()
        time.sleep(0.3)
        hooks[0].view.command("stop")  # what the page's Stop posts
        first = wait_for(ended, END_GAP_S, "the stop to end the exam while nothing comes")
        assert "ended by command" in first[0] and not hooks[0].view.commands
        time.sleep(END_GAP_S + 0.5)  # the hold after Stop ends with the gap
        plugged.set()  # the next woman
        wait_for(lambda: len(grabbers) > 1 and grabbers[-1].i >= 20, 30, "her heads")
        plugged.clear()
        second = wait_for(lambda: ended()[1:], END_GAP_S + 10, "her exam's end")
        assert "ended by gap" in second[0], second[0]
        assert int(second[0].split("): ")[1].split(" frame")[0]) >= 10  # her whole scan
    finally:
        plugged.clear()
        for source in sources:
            source.close()
        loop.join(60)
    assert not loop.is_alive()


def test_the_trackers_clock_ends_an_exam_only_once_its_gap_has_passed():
    ended: list[dict] = []
    tracker = ExamTracker(find_protocol("biometry"),
                          ExamSettings(end_gap_s=20.0, signal_hold_s=0.0), None,
                          lambda _session, body: ended.append(body))
    frame = {"source": "live", "frame": 0, "plane": "Brain (Tv.)", "error": None,
             "roi": [0, 0, 10, 10], "ts": 1.7e9,
             "quality": {"score": 0.8, "criteria": {"content": {"pass": True}}}}
    assert tracker.idle(100.0) is None  # no exam: nothing to end
    tracker.feed(frame, mono=100.0)
    assert tracker.idle(119.9) is None and tracker.current is not None
    body = tracker.idle(120.0)
    assert body is not None and body["ended_by"] == "gap" and tracker.current is None
    assert ended == [body]
    assert tracker.idle(500.0) is None  # ended once


def test_a_live_grabber_with_idle_ticks_hands_none_each_tick_without_a_frame():
    settings = LiveSettings(backoff_initial_s=0.05, backoff_max_s=0.1, poll_s=0.01,
                            idle_tick_s=0.2)
    source = LiveSource("test:silent", lambda: None, settings)
    try:
        items, t0 = [], time.monotonic()
        for item in source.frames(idle=True):
            items.append(item)
            if len(items) == 3:
                break
        took = time.monotonic() - t0
        assert items == [None, None, None] and 0.5 <= took < 3.0
    finally:
        source.close()
    assert list(source) == []  # closed: the plain iterator ends, it never hands None


def test_new_models_wait_for_an_unplugged_exams_gap_then_the_loop_restarts(
        tmp_path, data_dir, monkeypatch, fleet_kit):  # noqa: F811
    """New models installed mid-exam, then the grabber unplugged: the fleet thread closed
    the silent grabber to wake the loop, which ended her exam at once as "source_end". The
    loop's idle ticks see the restart themselves: the exam ends by its gap, then the loop
    restarts on the new models."""
    plugged, grabbers, sources = _unpluggable_grabber(data_dir, 7, monkeypatch)
    agents = []
    real_start_fleet = edge.loop.start_fleet

    def start_fleet(*args, **kwargs):
        agent, models_dir = real_start_fleet(*args, **kwargs)
        agents.append(agent)
        return agent, models_dir

    monkeypatch.setattr(edge.loop, "start_fleet", start_fleet)
    cfg = device_config(tmp_path, fleet_kit)
    cfg.write_text(cfg.read_text() + f"""
[source]
spec = "v4l2:/dev/video9"
backoff_initial_s = 0.3
backoff_max_s = 0.5
[exam]
end_gap_s = {END_GAP_S}
signal_hold_s = 0  # the cable out is the woman gone here (tests/test_signal_hold.py holds)
""")
    said: list[tuple[float, str]] = []
    exit_code: list[int] = []
    loop = threading.Thread(
        target=lambda: exit_code.append(run(load_settings(cfg), echo=lambda line: said.append(
            (time.monotonic(), line)))), daemon=True)
    loop.start()
    try:
        wait_for(lambda: grabbers and grabbers[0].i >= 20, 90, "the woman's heads")
        agents[0].request_restart()  # what a bundle installed now does
        time.sleep(1.5)  # frames still come: her exam goes on
        assert loop.is_alive() and not [line for _, line in said if " ended " in line]
        plugged.clear()
        unplugged = time.monotonic()
        wait_for(lambda: exit_code, END_GAP_S + 15, "the loop to restart")
    finally:
        plugged.clear()
        for source in sources:
            source.close()
        loop.join(60)
    ended = [(t, line) for t, line in said if ", ended by " in line]
    assert len(ended) == 1 and "ended by gap" in ended[0][1], ended
    assert ended[0][0] - unplugged >= END_GAP_S - 0.5  # not cut before its gap
    assert exit_code == [RESTART_EXIT]
