"""What passes between the device loop and the web server: latest values, never a queue.

The loop is the only writer. Per frame it hands over references (the frame's image, its
result dict, the steady instruction, the named plane's class map): no copy, no encoding,
no lock held while anything slow happens. The web server reads the newest whenever it is
ready, and encodes a JPEG only while someone is watching, at a capped rate. The only thing
that goes the other way is a short queue of the midwife's commands (start or stop the
exam), which the loop applies between frames: the web view never drives or blocks it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

EXAM_SNAPSHOT_S = 1.0  # the checklist and exam biometry are copied for the page this often


@dataclass(frozen=True)
class Published:
    """One frame as the loop left it; the server must not modify anything in it."""

    seq: int
    image: np.ndarray | None
    record: dict
    shown: object | None  # edge.exam.feedback.Shown
    class_map: np.ndarray | None
    mono: float
    published: float  # wall clock when the loop handed it over (the latency's middle point)


@dataclass
class LiveView:
    """Latest values shared by the loop thread (writer) and the server thread (reader).

    Each attribute is replaced whole (an atomic store in CPython), never mutated in place,
    so a reader sees either the old or the new value.
    """

    phase: str = "loading"  # loading | running | ended
    source_name: str = ""
    source_live: bool = False
    models: dict = field(default_factory=dict)
    has_class_maps: bool = False
    protocol: dict = field(default_factory=dict)  # {"name", "title"}
    latest: Published | None = None
    exam: dict | None = None  # the running exam, or the last one (see ExamSnapshot)
    fps: float | None = None
    frames: int = 0
    last_frame_mono: float | None = None
    started_mono: float = field(default_factory=time.monotonic)
    viewers: int = 0
    ga_dates: dict | None = None  # {"exam_id", "lmp", "today", "weeks"} from the page
    commands: deque = field(default_factory=lambda: deque(maxlen=8))
    notify: Callable[[], None] | None = None  # set by the server: wakes its streamer
    hook_s: float = 0.0  # time the loop spent in the web hook (the page's per-frame cost)
    _seq: int = 0

    def publish(self, image: np.ndarray | None, record: dict, shown: object | None,
                class_map: np.ndarray | None, mono: float) -> None:
        """Loop thread, per frame: a few stores and, with a viewer, one wake-up."""
        self._seq += 1
        now = time.monotonic()
        if self.last_frame_mono is not None:
            dt = now - self.last_frame_mono
            if dt > 0:
                rate = 1.0 / dt
                self.fps = rate if self.fps is None else 0.9 * self.fps + 0.1 * rate
        self.last_frame_mono = now
        self.frames += 1
        self.latest = Published(self._seq, image, record, shown, class_map, mono,
                                time.time())
        notify = self.notify
        if notify is not None and self.viewers:
            notify()

    def command(self, name: str) -> None:
        """Server thread: queue a command for the loop."""
        self.commands.append(name)


def exam_snapshot(session, running: bool, ended_by: str | None = None,
                  body: dict | None = None) -> dict:
    """A plain copy of an exam for the page: its checklist with each plane's best frame,
    the exam's biometry (medians of the best head frames) and how far it got."""
    checklist = session.checklist()
    return {"exam_id": session.exam_id, "running": running, "ended_by": ended_by,
            "protocol": session.protocol.name, "title": session.protocol.title,
            "started_ts": session.started_ts, "frames": session.tally.frames,
            "checklist": checklist,
            "captured": sum(1 for row in checklist if row["captured"]),
            "required": len(checklist),
            "biometry": (body or {}).get("biometry") if body else session.tally.biometry()}


class LoopHook:
    """The loop's side of the web view: called between frames, on the loop's thread.

    It publishes each frame, applies the page's commands, and after the page's "stop"
    holds the next exam back: the tracker starts exams on ultrasound content, so without
    the hold an exam stopped with the probe still on the belly would restart at once and
    wipe the checklist the midwife just finished. The hold ends on "start", or once the
    probe has been off for the exam's end gap (the next woman).
    """

    def __init__(self, view: LiveView, end_gap_s: float, server=None):
        self.view = view
        self.end_gap_s = end_gap_s
        self.server = server  # edge.web.server.WebServer, stopped by close()
        self.holding = False
        self._no_content_since: float | None = None
        self._next_snapshot = 0.0
        self.stop_requested = threading.Event()  # ends `linger` (tests; signals do it live)

    def attach(self, scorer, uplink, source, tracker) -> None:
        """The loop's parts are ready (models loaded, source open): the page goes live."""
        view = self.view
        view.models = dict(scorer.model_versions())
        view.has_class_maps = bool(getattr(scorer, "has_class_maps", False))
        view.source_name = source.name
        view.source_live = bool(source.live)
        view.protocol = {"name": tracker.protocol.name, "title": tracker.protocol.title}
        view.started_mono = time.monotonic()
        if self.server is not None:
            self.server.uplink = uplink
            self.server.rules = scorer.quality.rules if scorer.quality else None
        view.phase = "running"

    def accepts(self, record: dict, mono: float, has_content: bool) -> bool:
        """Whether this frame goes to the exam tracker (False while held after "stop")."""
        if not self.holding:
            return True
        if has_content:
            self._no_content_since = None
        elif self._no_content_since is None:
            self._no_content_since = mono
        elif mono - self._no_content_since >= self.end_gap_s:
            self.holding = False
            self._no_content_since = None
        return not self.holding

    def apply_commands(self, tracker) -> None:
        commands = self.view.commands
        while commands:
            name = commands.popleft()
            if name == "stop":
                tracker.end("command")
                self.holding = True
                self._no_content_since = None
            elif name == "start":
                tracker.end("command")
                self.holding = False
            log.info("web: %s exam", name)

    def after_frame(self, image: np.ndarray | None, record: dict, shown: object | None,
                    class_map: np.ndarray | None, mono: float, tracker) -> None:
        t0 = time.perf_counter()
        self._after_frame(image, record, shown, class_map, mono, tracker)
        self.view.hook_s += time.perf_counter() - t0

    def _after_frame(self, image, record, shown, class_map, mono, tracker) -> None:
        self.apply_commands(tracker)
        if record.get("error"):
            class_map = None
        self.view.publish(image, record, shown, class_map, mono)
        now = time.monotonic()
        if now >= self._next_snapshot and tracker.current is not None:
            self._next_snapshot = now + EXAM_SNAPSHOT_S
            self.view.exam = exam_snapshot(tracker.current, True)

    def exam_ended(self, session, body: dict) -> None:
        self.view.exam = exam_snapshot(session, False, body.get("ended_by"), body)

    def source_ended(self) -> None:
        self.view.phase = "ended"

    def linger(self, stopped: Callable[[], bool], poll_s: float = 0.2) -> None:
        """After a file source ends: keep the page up, with the last exam on it, until the
        process is told to stop."""
        while not stopped() and not self.stop_requested.wait(poll_s):
            self.view.commands.clear()  # no frames to apply them to

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
