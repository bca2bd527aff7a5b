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

from edge.exam.feedback import Hysteresis
from edge.models.biometry import SET_UP_STATUSES, STEADY_SET_UP_STATUSES
from edge.models.quality import Feedback
from edge.store.outbox import shifted_times
from wire.schema import UNCERTAIN

log = logging.getLogger(__name__)

EXAM_SNAPSHOT_S = 1.0  # the checklist and exam biometry are copied for the page this often
# The named plane's confidence as the page shows it (SteadyConfidence): an average over the
# frames that name that plane (this weight for the newest), in steps of CONFIDENCE_STEP
# points, moved only once the average is CONFIDENCE_MARGIN points past the step shown, and
# never above CONFIDENCE_MAX.
CONFIDENCE_SMOOTHING = 0.2
CONFIDENCE_STEP = 5
CONFIDENCE_MARGIN = 2.0
CONFIDENCE_MAX = 95
# The shown plane is held against the frames (the hysteresis keeps its name a few frames
# after the probe has left it) once this many frames in a row have named another plane: one
# odd frame changes nothing, two are a change of view. Held, its name stays, marked as such
# on the page, and its percentage is not shown (it is the average of frames of the view the
# probe has left: "Femur 95%" stood over a skull, with the head's HC beside it).
PLANE_HELD_FRAMES = 2


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
    confidence: int | None = None  # the shown plane's steady confidence, percent (or None)
    held: bool = False  # the shown plane is held against the frames (SteadyConfidence)
    # the set-up status refusing the shown head plane's heads (SteadySetUp), or None
    set_up: str | None = None


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
    # {"name", "title", "head_planes"}: the planes the exam measures the head on, over which
    # alone the page's image shows the head's figures
    protocol: dict = field(default_factory=dict)
    latest: Published | None = None
    exam: dict | None = None  # the running exam, or the last one (see ExamSnapshot)
    fps: float | None = None
    frames: int = 0
    last_frame_mono: float | None = None
    started_mono: float = field(default_factory=time.monotonic)
    viewers: int = 0
    ga_dates: dict | None = None  # {"exam_id", "lmp", "today", "weeks"} from the page
    holding: bool = False  # the next exam is held back after the page's "stop" (LoopHook)
    # the monotonic time a running exam's hold through a lost signal runs out (the loop's
    # idle tick, ExamTracker.signal_hold_ends), None when none is held; a frame clears it
    exam_kept_until: float | None = None
    stopping: bool = False  # the loop is ending an exam on the page's "stop"
    commands: deque = field(default_factory=lambda: deque(maxlen=8))
    # (exam_id, {"lmp", "today"} or None) for the loop to keep with that exam (the
    # journal's); apart from `commands`, so that dates typed again and again never push
    # a "stop" out of its queue
    dates_to_keep: deque = field(default_factory=lambda: deque(maxlen=8))
    # (exam_id, withdrawn, reason) of an ended exam the page withdrew or restored, for the
    # loop to keep (the journal's), beside the dates and bounded alike
    withdrawals_to_keep: deque = field(default_factory=lambda: deque(maxlen=8))
    notify: Callable[[], None] | None = None  # set by the server: wakes its streamer
    # `ga_dates` is set on the server's thread and attached to an exam on the loop's
    _dates_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    hook_s: float = 0.0  # time the loop spent in the web hook (the page's per-frame cost)
    _seq: int = 0

    def publish(self, image: np.ndarray | None, record: dict, shown: object | None,
                class_map: np.ndarray | None, mono: float,
                confidence: int | None = None, held: bool = False,
                set_up: str | None = None) -> None:
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
                                time.time(), confidence, held, set_up)
        notify = self.notify
        if notify is not None and self.viewers:
            notify()

    def command(self, name: str) -> None:
        """Server thread: queue a command for the loop."""
        self.commands.append(name)

    def set_dates(self, dates: dict | None) -> None:
        """Server thread: the dates the page entered (`ga_dates`), or None."""
        with self._dates_lock:
            self.ga_dates = dates

    def queue_dates(self, exam_id: str, dates: dict | None) -> bool:
        """Either thread: queue an exam's dates for the loop to journal. False when the
        queue (bounded) is full: appending would push out an entry the box had accepted."""
        with self._dates_lock:
            return self._queue_dates(exam_id, dates)

    def _queue_dates(self, exam_id: str, dates: dict | None) -> bool:
        return _append_bounded(self.dates_to_keep, (exam_id, dates))

    def queue_withdrawal(self, exam_id: str, withdrawn: bool, reason: str) -> bool:
        """Server thread: queue an ended exam's withdrawal (or restore) for the loop to
        journal; False when the queue is full, as `queue_dates`."""
        with self._dates_lock:
            return _append_bounded(self.withdrawals_to_keep, (exam_id, withdrawn, reason))

    def attach_waiting_dates(self, exam_id: str) -> None:
        """Loop thread, each frame of an exam: dates entered before any exam began are
        that woman's, so they belong to the first exam that begins, attached to it and
        queued for the journal as it begins. When the page did it at its next look, a
        phone asleep through the exam put them on the one after. If the queue is full,
        at the next frame."""
        waiting = self.ga_dates  # read without the lock: each frame, nothing waits
        if waiting is None or waiting.get("exam_id") is not None:
            return
        with self._dates_lock:  # read again: the page may have changed them meanwhile
            dates = self.ga_dates
            if dates is None or dates.get("exam_id") is not None:
                return
            if self._queue_dates(exam_id, {"lmp": dates["lmp"], "today": dates["today"]}):
                self.ga_dates = {**dates, "exam_id": exam_id}


def _append_bounded(queue: deque, item: tuple) -> bool:
    """Append to a bounded queue only where there is room: a full one would push out an
    entry the box had already accepted."""
    if len(queue) >= queue.maxlen:
        return False
    queue.append(item)
    return True


class SteadyConfidence:
    """The shown plane's confidence, steady enough to read at arm's length.

    Per frame the model's confidence jumps by several points, and the frame often names
    another plane than the one shown (the shown plane is held by `edge.exam.feedback`'s
    hysteresis), where the shown plane's own probability is not known. A number taken from
    each frame therefore came and went and jumped. Here it is an average of the frames that
    do name the shown plane, held over those that do not (they are at most a few in a row:
    the plane shown changes after `plane_change_frames` of them), started afresh from the
    recent frames that named it when the shown plane changes. It is shown in steps of
    CONFIDENCE_STEP points, rounded down (it never claims more than the model gave), moved
    only when the average is CONFIDENCE_MARGIN points past the step shown, and at most
    CONFIDENCE_MAX: a calibrated 0.999 is not certainty. No number for an abstention.

    Nor while the shown plane is held against the frames (`held`: the last
    PLANE_HELD_FRAMES frames all named another plane): its name then trails a change of
    view by the hold, and its average, of the view the probe has left, would read as
    certain of the one it is on. The average is kept, and shown again if the plane is.
    """

    RECENT = 8  # frames remembered to start the average when the shown plane changes

    def __init__(self, smoothing: float = CONFIDENCE_SMOOTHING):
        self.smoothing = smoothing
        self.plane: str | None = None
        self.mean: float | None = None
        self.shown: int | None = None
        self.held = False  # the shown plane held against the last PLANE_HELD_FRAMES frames
        self._against = 0  # frames in a row that named another plane than the shown one
        self._recent: deque = deque(maxlen=self.RECENT)

    def update(self, shown_plane: str | None, frame_plane: str | None,
               confidence: float | None) -> int | None:
        """Feed one frame; returns the percentage to show beside `shown_plane`, or None."""
        usable = isinstance(confidence, int | float) and 0.0 <= confidence <= 1.0
        if frame_plane is not None and usable:
            self._recent.append((frame_plane, float(confidence)))
        if shown_plane != self.plane:
            self.plane, self.shown, self._against = shown_plane, None, 0
            seen = [c for p, c in self._recent if p == shown_plane]
            self.mean = sum(seen) / len(seen) if seen else None
        elif frame_plane == shown_plane and usable:
            a = self.smoothing
            self.mean = float(confidence) if self.mean is None else \
                (1 - a) * self.mean + a * float(confidence)
        if frame_plane is not None:  # a frame that could not be scored says nothing
            self._against = 0 if frame_plane == shown_plane else self._against + 1
        self.held = shown_plane is not None and self._against >= PLANE_HELD_FRAMES
        if self.mean is None or shown_plane in (None, UNCERTAIN):
            self.shown = None
            return None
        if self.held:  # the step shown is kept for when the plane is named again
            return None
        value = 100.0 * self.mean
        step = min(CONFIDENCE_MAX, CONFIDENCE_STEP * int(value // CONFIDENCE_STEP))
        if self.shown is None or value < self.shown - CONFIDENCE_MARGIN or \
                (value >= self.shown + CONFIDENCE_STEP + CONFIDENCE_MARGIN
                 and step > self.shown):
            self.shown = step
        return self.shown


class SteadySetUp:
    """Whether the shown head plane's heads are refused for the box's set-up (a status of
    SET_UP_STATUSES: no calibration, a wrong one, the depth ruler unread, the picture
    stretched), steady as the instruction is.

    A frame carries its head's biometry only where it names a head plane itself, so a frame
    of another plane, or none, under a head plane still shown says nothing and the verdict
    holds. A verdict on the set-up (`STEADY_SET_UP_STATUSES`: no calibration, a wrong one,
    the picture stretched) is said on the first frame that carries it, over a verdict of
    measured: held like an instruction (`needed` frames), "Good image: hold still" stood
    for a second over the heads a fresh box refused once it had seen its picture
    stretched, while nothing was measured. Any other change (back to measured, from one
    refusal to another, or to a depth ruler unread, which is read on each frame) is the
    quality audit's instruction's (`edge.exam.feedback`): once the verdict has been absent
    from the last `needed` frames that say, the most common of theirs is taken. So a ruler
    missed on one frame among read ones does not turn the instruction yellow for a second,
    and one read on a frame in a few does not turn the refusal back to "hold still"."""

    def __init__(self, needed: int = Feedback.message_change_frames):
        self._status = Hysteresis(needed)

    def update(self, shown_plane: str | None, record: dict,
               head_planes: list | tuple | None) -> str | None:
        """Feed one frame's result dict; returns the set-up status refusing the heads of
        `shown_plane`, or None (its heads measured, or not a head plane)."""
        bio = record.get("biometry")
        if isinstance(bio, dict) and not record.get("error"):
            status = bio.get("status")
            refused = status if status in SET_UP_STATUSES else None
            self._status.update(refused, at_once=refused in STEADY_SET_UP_STATUSES
                                and self._status.shown is None)
        heads = head_planes if isinstance(head_planes, list | tuple) else ()
        return self._status.shown if shown_plane in heads else None


def instruction(plane: str | None, message: str | None, key: str | None, held: bool,
                exam: dict | None, set_up: str | None = None) -> dict:
    """What the instruction under the image says, decided here for the page to render:
    {"key": a catalog key or None, "text": its English words (the quality rules'),
    "class": "fix" | "good" | "idle"}, and for a plane off the exam's list that "plane"
    and the "slots" still to find (plane labels: the page names them in its language); for
    a head refused for the set-up a "detail", the catalog key of a smaller line under it.

    The quality audit's instruction (`message`, its catalog `key`) comes first. Then a name
    held against the frames (`held`, SteadyConfidence: the probe has left that view) gets
    no verdict: "Good image: hold still" stood beside a dimmed name of a view already left.
    A good image of a plane on none of the running exam's slots, while slots are still to
    capture, is not what the exam needs: it says which are ("Good image: hold still" over
    an abdomen in a head exam kept her still on the wrong view, a user's walk). A good
    image of a head plane whose heads the box refuses for its set-up (`set_up`, SteadySetUp)
    says that the head is not measured, and beneath, smaller, why and what to ask for:
    "Good image: hold still" in green over it had her take the exam as measured, while only
    the card said otherwise; said in one sentence it took six lines of a 360x640 phone and
    pushed the exam's card below the fold. Else the image is good to hold."""
    if message:
        return {"key": key, "text": message, "class": "fix"}
    if held and plane not in (None, UNCERTAIN):
        return {"key": "instruction.moving", "text": None, "class": "idle"}
    if plane in (None, UNCERTAIN):
        # no view named (the plane model abstains: "Searching..."): not a good image to
        # hold, whatever its quality; the slots still to find where an exam runs
        wanted = slots_to_capture(exam)
        if wanted:
            return {"key": "instruction.find", "text": None, "class": "idle", "slots": wanted}
        return {"key": "instruction.searching", "text": None, "class": "idle"}
    wanted = slots_still_wanted(plane, exam)
    if wanted:
        return {"key": "instruction.off_list", "text": None, "class": "fix", "plane": plane,
                "slots": wanted}
    if set_up in SET_UP_STATUSES:
        return {"key": "instruction.not_measured", "detail": "instruction.not_measured_" + set_up,
                "text": None, "class": "fix"}
    return {"key": "instruction.good", "text": None, "class": "good"}


def slots_to_capture(exam: dict | None) -> list[str]:
    """The running exam's slots still to capture (their plane labels, in the checklist's
    order); none where no exam runs."""
    if not exam or not exam.get("running"):
        return []
    return [row["plane"] for row in _checklist(exam)
            if not row.get("captured") and isinstance(row.get("plane"), str)]


def slots_still_wanted(plane: str | None, exam: dict | None) -> list[str]:
    """The running exam's slots still to capture when `plane` is on none of its slots;
    else none."""
    if not plane or plane == UNCERTAIN or any(
            plane in (row.get("accepts") or [row.get("plane")]) for row in _checklist(exam)):
        return []
    return slots_to_capture(exam)


def _checklist(exam: dict | None) -> list[dict]:
    return [row for row in (exam or {}).get("checklist") or () if isinstance(row, dict)]


def exam_snapshot(session, running: bool, ended_by: str | None = None,
                  body: dict | None = None) -> dict:
    """A plain copy of an exam for the page: its checklist with each plane's best frame,
    the exam's biometry (medians of the best head frames) and how far it got. Its biometry
    is the summary's (`body`, the district's once ended) with one thing more, kept on the
    box: the `[source] stretch` its heads refused for a stretched picture named
    (`stretch_setting`), and the grabber's frame size it is for (`stretch_frame`), which
    the card says where it says why no head was measured."""
    checklist = session.checklist()
    biometry = (body or {}).get("biometry") if body else session.tally.biometry()
    setting = session.tally.stretch_setting
    if isinstance(biometry, dict) and setting is not None:
        biometry = {**biometry, "stretch_setting": setting}
        if session.tally.stretch_frame is not None:
            biometry["stretch_frame"] = session.tally.stretch_frame
    return {"exam_id": session.exam_id, "running": running, "ended_by": ended_by,
            "protocol": session.protocol.name, "title": session.protocol.title,
            "started_ts": session.started_ts, "frames": session.tally.frames,
            "ended_ts": (body or {}).get("ended_ts"),
            "checklist": checklist,
            "captured": sum(1 for row in checklist if row["captured"]),
            "required": len(checklist),
            "biometry": biometry}


class LoopHook:
    """The loop's side of the web view: called between frames, on the loop's thread.

    It publishes each frame, applies the page's commands, and after the page's "stop"
    holds the next exam back: the tracker starts exams on ultrasound content, so without
    the hold an exam stopped with the probe still on the belly would restart at once and
    wipe the checklist the midwife just finished. The hold ends on "start", or once the
    probe has been off for the exam's end gap (the next woman).

    "start" never ends an exam: a midwife who taps Start again during an exam (she thought
    the first tap did not take) keeps her exam. Ending one is "stop"'s, and only its.
    """

    def __init__(self, view: LiveView, end_gap_s: float, server=None):
        self.view = view
        self.keep_dates: Callable[[str, dict | None], bool] | None = None  # the journal's
        self.keep_withdrawal: Callable[[str, bool, str], bool] | None = None  # the journal's
        self.end_gap_s = end_gap_s
        self.server = server  # edge.web.server.WebServer, stopped by close()
        self.confidence = SteadyConfidence()
        self.set_up = SteadySetUp()  # steadied as the rules' instruction is, once attached
        self._last_content: float | None = None  # the scan's clock at the last ultrasound
        self._next_snapshot = 0.0
        self.stop_requested = threading.Event()  # ends `linger` (tests; signals do it live)

    @property
    def holding(self) -> bool:
        """Whether the next exam is held back; kept in the view, so the page shows it."""
        return self.view.holding

    @holding.setter
    def holding(self, value: bool) -> None:
        self.view.holding = value

    def attach(self, scorer, uplink, source, tracker,
               keep_dates: Callable[[str, dict | None], bool] | None = None,
               keep_withdrawal: Callable[[str, bool, str], bool] | None = None) -> None:
        """The loop's parts are ready (models loaded, source open): the page goes live.
        `keep_dates(exam_id, dates)` writes an exam's dates into the journal, and
        `keep_withdrawal(exam_id, withdrawn, reason)` an exam's withdrawal."""
        view = self.view
        self.keep_dates = keep_dates
        self.keep_withdrawal = keep_withdrawal
        view.models = dict(scorer.model_versions())
        view.has_class_maps = bool(getattr(scorer, "has_class_maps", False))
        view.source_name = source.name
        view.source_live = bool(source.live)
        view.protocol = {"name": tracker.protocol.name, "title": tracker.protocol.title,
                         "head_planes": list(tracker.head_planes)}
        view.started_mono = time.monotonic()
        if self.server is not None:
            self.server.uplink = uplink
            self.server.rules = scorer.quality.rules if scorer.quality else None
        if scorer.quality:
            self.set_up = SteadySetUp(scorer.quality.rules.feedback.message_change_frames)
        view.phase = "running"

    def accepts(self, record: dict, mono: float, has_content: bool) -> bool:
        """Whether this frame goes to the exam tracker (False while held after "stop").
        The hold ends `end_gap_s` after the last frame with ultrasound, on any frame (blank
        frames, or none at all while a grabber is unplugged or the scanner off): unlike
        the tracker's end of an exam, a lost signal counts here, since after Stop the
        woman is done and the next frames are the next woman's. `mono` is the scan's
        clock, the one the tracker counts on (a recording read faster than it was made
        passes 30 s of its blank screen in 3 s of the box's)."""
        last = self._last_content
        if self.holding and last is not None and mono - last >= self.end_gap_s:
            self.holding = False
        if has_content or last is None:
            self._last_content = mono
        return not self.holding

    def apply_entries(self) -> None:
        """The dates the page entered, into the journal under their exam's id (running or
        ended: a killed run's exams are rebuilt under the same ids), and the withdrawals
        of ended exams."""
        for queue, keep, what in ((self.view.dates_to_keep, self.keep_dates, "dates"),
                                  (self.view.withdrawals_to_keep, self.keep_withdrawal,
                                   "withdrawal")):
            while queue:
                exam_id, *entry = queue.popleft()
                if keep is not None and not keep(exam_id, *entry):
                    log.warning("web: the %s for exam %s could not be kept (see the "
                                "journal's line)", what, exam_id)

    def clock_stepped(self, moved_s: float, before_ts: float) -> None:
        """Loop thread: the box's clock stepped forward `moved_s` (edge/loop.py
        follow_clock_steps). The last exam's card, ended before the step, moves with the
        journal's copy; a running exam's is drawn again from the exam itself."""
        shown = self.view.exam
        if shown is None or shown.get("running"):
            return
        self.view.exam = {**shown, **shifted_times(shown, moved_s, before_ts)}

    def apply_commands(self, tracker) -> None:
        self.apply_entries()
        commands = self.view.commands
        while commands:
            # A "stop" counts as queued until its exam has ended (measuring its heads and
            # journaling it take a moment): a "start" tapped right after it is the next
            # exam's, not a repeat to refuse (WebServer._stop_queued).
            self.view.stopping = commands[0] == "stop"
            name = commands.popleft()
            if name == "stop":
                try:
                    tracker.end("command")
                finally:
                    self.view.stopping = False
                self.holding = True
            elif name == "start":
                if tracker.current is not None:  # a repeated tap: the exam goes on
                    log.info("web: start ignored: exam %s is running (stop it first)",
                             getattr(tracker.current, "exam_id", "?"))
                    continue
                self.holding = False
            log.info("web: %s exam", name)

    def after_frame(self, image: np.ndarray | None, record: dict, shown: object | None,
                    class_map: np.ndarray | None, mono: float, tracker) -> None:
        t0 = time.perf_counter()
        self._after_frame(image, record, shown, class_map, mono, tracker)
        self.view.hook_s += time.perf_counter() - t0

    def _after_frame(self, image, record, shown, class_map, mono, tracker) -> None:
        self.view.exam_kept_until = None  # the signal is back
        self.apply_commands(tracker)
        if record.get("error"):
            class_map = None
        confidence = self.confidence.update(getattr(shown, "plane", None), record.get("plane"),
                                            record.get("plane_confidence"))
        set_up = self.set_up.update(getattr(shown, "plane", None), record,
                                    self.view.protocol.get("head_planes"))
        self.view.publish(image, record, shown, class_map, mono, confidence,
                          self.confidence.held, set_up)
        now = time.monotonic()
        current = tracker.current
        if current is not None:
            self.view.attach_waiting_dates(current.exam_id)
        # a new exam is on the page at once (its Start and Stop follow it), then every second
        if current is not None and (now >= self._next_snapshot or (self.view.exam or {}).get(
                "exam_id") != current.exam_id):
            self._next_snapshot = now + EXAM_SNAPSHOT_S
            self.view.exam = exam_snapshot(current, True)

    def exam_ended(self, session, body: dict) -> None:
        self.view.exam = exam_snapshot(session, False, body.get("ended_by"), body)

    def source_ended(self) -> None:
        self.view.phase = "ended"

    def linger(self, stopped: Callable[[], bool], poll_s: float = 0.2) -> None:
        """After a file source ends: keep the page up, with the last exam on it, until the
        process is told to stop."""
        while not stopped() and not self.stop_requested.wait(poll_s):
            self.view.commands.clear()  # no frames to apply them to
            self.apply_entries()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
