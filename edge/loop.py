"""The device loop: source -> frame -> region -> model -> result -> journal -> outbox.

Data flows one way. The scorer turns a captured frame into a `FrameResult`; the run loop
journals every result before reading the next frame, keeps the run's figures, and hands
compact summaries to the uplink, which publishes them whenever a link exists. Nothing in
here waits on the network.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge.capture.clock import WallSteps, booted_ts
from edge.capture.sources import LiveSettings, Source, SourceError, narrowing, open_source
from edge.config import ONCE_REOPEN_ATTEMPTS, Settings, frame_limits
from edge.exam.feedback import SteadyFeedback
from edge.exam.protocol import (
    ProtocolError,
    check_anatomy,
    check_head_planes,
    check_named,
    find_protocol,
)
from edge.exam.screening import read_dates, same_weeks
from edge.exam.session import ExamSession, ExamTracker, MeasureKept, format_exam
from edge.exam.tally import ExamTally, percentile
from edge.exam.thumbs import THUMBS_DIR, ThumbStore, thumbnails_on_disk
from edge.fleet.agent import RESTART_EXIT, start_fleet
from edge.fleet.watchdog import Watchdog
from edge.models.quality import Rules, load_rules
from edge.models.roi import Roi
from edge.result import FrameResult
from edge.scorer import make_scorer, timed_frames
from edge.store import screen_shape
from edge.store.journal import JOURNAL_FILE, Journal, told_weeks
from edge.store.outbox import dates_key, withdrawal_key
from edge.store.state import StateLock, prepare_state_dir
from edge.uplink.mqtt import Uplink
from edge.web.clock import last_set
from wire.schema import number_or_none
from wire.shown import shown_path

log = logging.getLogger(__name__)


def live_settings(settings: Settings, once: bool = False) -> LiveSettings:
    """The long-running loop's live source: a grabber absent at start is waited for, as one
    unplugged later is. A box often boots before its capture dongle is plugged in; refusing
    to start kept the midwife's page down (systemd restarting the service every 2 s) where
    it should say "no signal". Each wait is at most `backoff_max_s` (validated: an hour).

    `once` (`run --once`) is a run that is to end: a grabber absent at start is one line
    at once (`v4l2:99` waited for ever), and one lost on the way is reopened at most
    ONCE_REOPEN_ATTEMPTS times where the config says for ever."""
    src = settings.source
    attempts = None if src.max_reopen_attempts < 0 else src.max_reopen_attempts
    if once and attempts is None:
        attempts = ONCE_REOPEN_ATTEMPTS
    return LiveSettings(
        wait_for_device=not once,
        backoff_initial_s=src.backoff_initial_s,
        backoff_max_s=max(src.backoff_max_s, src.backoff_initial_s),
        max_reopen_attempts=attempts,
        width=src.width or None, height=src.height or None, fps=src.fps or None,
        limits=frame_limits(settings))


@dataclass
class RunStats:
    """The figures the summary line, the health messages and the exam summary report.

    One tally serves all three, so they cannot disagree, and it holds running totals and a
    bounded latency window rather than every frame: a live run may last days.
    """

    started_mono: float = field(default_factory=time.monotonic)
    tally: ExamTally = field(default_factory=ExamTally)
    journal: Journal | None = None  # its shedding on a full disk is reported too
    # the first and the latest frame taken: the rate is over the frames' own span, not the
    # run's (a file's last exam lingering on the page, a grabber unplugged for an hour)
    first_mono: float | None = None
    last_mono: float | None = None
    _mark: tuple[float, int] | None = None  # (when, frames) at the last health message

    @property
    def frames(self) -> int:
        return self.tally.frames

    @property
    def failed(self) -> int:
        return self.tally.failed

    def add(self, record: dict) -> None:
        self.tally.add(record)
        self.last_mono = time.monotonic()
        if self.first_mono is None:
            self.first_mono = self.last_mono

    def recent_fps(self) -> float:
        """Frames a second since the last health message (the run's start for the first):
        a live box's rate now, 0 while its grabber is out."""
        now = time.monotonic()
        then, frames = self._mark or (self.started_mono, 0)
        self._mark = (now, self.frames)
        return (self.frames - frames) / max(1e-9, now - then)

    def fps(self) -> float:
        """Frames a second over the first to the latest frame, for the run's summary (one
        frame: since the run began); what came after them (a file's last exam lingering
        on the page) does not dilute it."""
        if self.frames >= 2 and self.first_mono is not None and self.last_mono is not None \
                and self.last_mono > self.first_mono:
            return (self.frames - 1) / (self.last_mono - self.first_mono)
        return self.frames / max(1e-9, time.monotonic() - self.started_mono)

    def snapshot(self, source: Source | None = None, recent: bool = False) -> dict:
        """The figures; `recent` (health messages): the rate since the last one."""
        lat = sorted(list(self.tally.latencies)[-1000:])
        return {
            "frames": self.frames,
            "failed": self.failed,
            "fps": self.recent_fps() if recent else self.fps(),
            # as the exam summary computes them: linear between the nearest ranks (the
            # lower rank alone made p90 of two frames the faster one, under the median)
            "latency_p50_ms": percentile(lat, 0.5),
            "latency_p90_ms": percentile(lat, 0.9),
            "source_dropped": getattr(source, "dropped", 0),
            "source_reopens": getattr(source, "reopens", 0),
            **(self.journal.stats() if self.journal is not None else {}),
        }


def health_figures(stats: RunStats, source: Source, state_dir: Path) -> dict:
    """A health message's loop figures: the rate since the last one, and when the page
    last set the box's clock (its exams before were dated by a clock behind: the district
    says so)."""
    return {**stats.snapshot(source, recent=True), **last_set(state_dir)}


def format_line(result: FrameResult) -> str:
    if result.error:
        return f"{result.source} #{result.frame}: error: {result.error}"
    line = (f"{result.source} #{result.frame}: {result.plane} {result.plane_confidence:.2f}"
            f"  {result.latency_ms:.1f} ms (capture {result.capture_ms:.1f},"
            f" prep {result.preprocess_ms:.1f}, infer {result.infer_ms:.1f})")
    bio = result.biometry
    if bio:
        if bio.get("hc_mm") is not None:
            ga = bio.get("ga_weeks")
            age = f", GA {ga:.1f} wk" if ga is not None else ", GA out of the formula's range"
            line += f"  HC {bio['hc_mm']:.1f} mm{age}"
        else:
            line += f"  biometry: {bio.get('status')}"
    quality = result.quality
    if quality:
        advice = quality.get("advice")
        line += f"  quality {quality['score']:.2f}"
        if advice:
            line += f": {quality['criteria'][advice]['message']}"
    return line


def format_summary(stats: RunStats, source: Source) -> str:
    snap = stats.snapshot(source)
    counts = sorted(stats.tally.planes.items(), key=lambda item: -item[1][0])
    planes = ", ".join(f"{name} {entry[0]}" for name, entry in counts) or "none"
    p50 = snap["latency_p50_ms"]
    p90 = snap["latency_p90_ms"]
    latency = f"median {p50:.1f} ms, p90 {p90:.1f} ms" if p50 is not None else "no frames"
    dropped = f", {snap['source_dropped']} stale frames skipped" if snap["source_dropped"] else ""
    frames = f"{stats.frames} frame{'' if stats.frames == 1 else 's'}"
    return (f"summary: {source.name}: {frames}, {stats.failed} failed{dropped}, "
            f"{snap['fps']:.1f} fps, latency {latency}; planes: {planes}")


class _StopFlag:
    """SIGTERM/SIGINT end the run cleanly: the open exam's summary is still written.
    SIGUSR1 is the midwife's "end exam" command (a button on the box, or the web page):
    the exam in progress ends now, and the next ultrasound starts a new one."""

    def __init__(self, source=None) -> None:
        self.stopped = False
        self.end_exam = False
        self._previous: dict = {}
        # a live source waiting for its grabber yields no frame to look at the flag after:
        # closing it wakes the loop (else SIGTERM went unheard until systemd's SIGKILL)
        self._source = source if getattr(source, "live", False) else None

    def __enter__(self) -> _StopFlag:
        for sig, handler in ((signal.SIGTERM, self._stop), (signal.SIGINT, self._stop),
                             (signal.SIGUSR1, self._end_exam)):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests): no signal handling
                pass
        return self

    def _stop(self, *_args: object) -> None:
        self.stopped = True
        if self._source is not None:
            self._source.close()

    def _end_exam(self, *_args: object) -> None:
        self.end_exam = True

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_tracker(settings: Settings, state_dir: Path, models: dict[str, str],
                 on_end: Callable[[ExamSession, dict], None],
                 measure_kept: MeasureKept | None = None,
                 rules: Rules | None = None) -> ExamTracker:
    """The exam tracker of the configured protocol, with thumbnails under the state dir;
    `measure_kept`: the scorer's, for the heads an exam reports (`Scorer.measure_kept`);
    `rules`: the quality rules the frames are judged by (a best frame's advice follows
    their priorities and head criteria), with the site's head planes."""
    cfg = settings.exam
    protocol = find_protocol(cfg.protocol, cfg.protocols_file or None)
    thumbs = ThumbStore(state_dir / THUMBS_DIR, int(cfg.thumbs_quota_mb * 1e6)) \
        if cfg.thumbnails else None
    return ExamTracker(protocol, cfg, thumbs, on_end, models, measure_kept, rules,
                       tuple(settings.biometry.head_planes))


def with_age_by_dates(body: dict, journal: Journal) -> dict:
    """The ended exam's summary with the age by dates, where the midwife entered her last
    period on the page before it ended (`biometry.ga_dates_weeks`).

    Why: the district's HC-for-age plot otherwise has only the device's Hadlock age from
    the same HC, against which no head can be small or large. The weeks go on the wire;
    the date itself stays in the journal on the box (`exam_dates`)."""
    bio = body.get("biometry")
    if not isinstance(bio, dict) or not isinstance(body.get("exam_id"), str):
        return body
    kept = read_dates(journal.exam_dates(body["exam_id"]))
    if kept is None:
        return body
    return {**body, "biometry": {**bio, "ga_dates_weeks": kept["ga_dates_weeks"]}}


def follow_clock_steps(steps: WallSteps, tracker: ExamTracker, uplink: Uplink,
                       journal: Journal, web=None) -> float:
    """A step of the wall clock since the last look: the page's set (edge/web/clock.py), or
    network time reaching a box that booted behind. What the clock before it stamped moves
    with it: the running exam's times (either way), and for a step forward (a box behind
    was put right) the messages queued, tried or not (or held in memory for want of disk
    space), the journal's rows of this boot and its copies of the exams those
    messages hold, and the last exam's card. Looked at before each frame is fed, so an
    exam that ends on it is dated by the clock now right. Returns the step, seconds (0.0
    for none)."""
    step = steps()
    if not step:
        return 0.0
    before_ts = time.time() - step / 2  # stamps by the clock before are on the far side
    log.warning("the box's clock stepped %+.0f s (%.1f days)", step, step / 86400)
    tracker.clock_set(step, before_ts)
    if step < 0:  # a clock ahead pulled back: its stamps cannot be told from the new ones
        return step
    if web is not None:
        web.clock_stepped(step, before_ts)
    redated = uplink.clock_stepped(step, before_ts)
    moved = journal.redate(step, booted_ts() - step, before_ts, redated.exam_ids)
    log.info("clock step: %d queued message(s) dated again; the journal's rows %s",
             redated.messages, "not (see its line)" if moved is None
             else f"of this boot and {moved} exam(s)")
    return step


def restart_due(tracker: ExamTracker, since: float, wait_min: float) -> bool:
    """Whether the loop restarts on new models now: once no exam is open, or when the
    exam in progress has held them back `wait_min` minutes. A restart ends the exam, and
    the woman's one scan reached the district as two exams."""
    return tracker.current is None or time.monotonic() - since >= wait_min * 60.0


def recover_runs(settings: Settings, journal: Journal, uplink: Uplink,
                 exclude: str | None = None) -> int:
    """Close every run a killed process left open, queueing the exams it never sent.

    The exams such a run finished are in the journal: each is queued unless the outbox has
    it already. The frames after the last of them are replayed through the same exam
    tracker the live run used (no thumbnails), and the exam still open at the end ends as
    "recovered". Exam ids come from the run and the first frame's journal row, and the
    outbox queues an id once, so a crash during recovery itself only means doing it again.
    Returns how many exams were queued."""
    queued = 0
    cfg = settings.exam
    protocol = find_protocol(cfg.protocol, cfg.protocols_file or None)
    rules = load_rules(settings.quality.rules or None) if settings.quality.enabled else None
    thumbs_root = Path(settings.device.state_dir) / THUMBS_DIR
    for run_id, models in journal.open_runs(exclude):
        after, frames, exams = 0, 0, 0
        for summary, last_row in journal.run_exams(run_id):
            after = max(after, last_row or 0)
            queued += uplink.enqueue_exam(summary, key=summary["exam_id"]) is not None

        def ended(session: ExamSession, body: dict, run_id: str = run_id) -> None:
            nonlocal queued, exams
            body = with_age_by_dates(body, journal)  # dates survive a kill: kept at once
            best = thumbnails_on_disk(session.kept_frames(), thumbs_root, body["exam_id"])
            journal.add_exam(run_id, body, best, session.first_row, session.last_row)
            exams += 1
            queued += uplink.enqueue_exam(body, key=body["exam_id"]) is not None

        tracker = ExamTracker(protocol, cfg, None, ended, models, rules=rules,
                              head_planes=tuple(settings.biometry.head_planes))
        last_ts = None
        for row, record in journal.replay(run_id, after):
            last_ts = record.get("ts") if isinstance(record.get("ts"), int | float) else last_ts
            if record.get("held") is True:  # held after a "stop": no exam saw it live
                continue
            mono = record.get("mono_s")
            tracker.feed(record, mono=float(mono) if isinstance(mono, int | float) else None,
                         row=row, run_id=run_id)
            frames += 1
        tracker.end("recovered")
        journal.end_run(run_id, ended_ts=last_ts)
        log.warning("recovered run %s left open by a killed process: %d frames replayed, "
                    "%d exam(s) rebuilt", run_id, frames, exams)
    return queued


def journal_since(settings: Settings) -> float:
    """The start of the `[journal] keep_days` the start's checks look back over, by the
    clock now. Where the page set the clock forward, the journal's rows of earlier boots
    were dated by a clock behind (follow_clock_steps moves only this boot's): the window
    reaches back as much further."""
    moved = last_set(settings.device.state_dir).get("clock_moved_s", 0.0)
    return time.time() - settings.journal.keep_days * 86400.0 - moved


def requeue_unqueued_exams(settings: Settings, journal: Journal, uplink: Uplink) -> int:
    """Queue the journaled exams of the last `[journal] keep_days` whose id the outbox has
    never been given: the journal has every exam, the outbox's `keys` every id it took.

    They are those a corrupt outbox lost on its unreadable pages (it is moved aside and
    salvaged), those still held in memory when the process stopped (a full disk, an outbox
    locked by another process or failing to write), and any an outbox error refused. An
    exam the district had already
    received comes under the same msg_id (its key's) and is absorbed there as a duplicate.
    Returns how many were queued. Only the summaries to queue are read (an exam whose
    summary is damaged, or names another id, is skipped, as the history page skips it)."""
    since = journal_since(settings)
    queued = 0
    for exam_id in journal.exam_ids(since):
        if uplink.outbox.has_key(exam_id):
            continue
        summary = journal.ended_summary(exam_id)
        if summary is not None and summary.get("exam_id") == exam_id:
            queued += uplink.enqueue_exam(summary, key=exam_id) is not None
    if uplink.outbox.moved_aside is not None:
        log.warning("outbox was corrupt: %d journaled exam(s) it no longer held queued again",
                    queued)
    elif queued:
        log.warning("%d journaled exam(s) the outbox had never been given (held at the "
                    "last stop, or refused by an outbox error) queued now", queued)
    return queued


def tell_district_dates(journal: Journal, uplink: Uplink, exam_id: str,
                        again: bool = False) -> bool:
    """Queue a correction of an ended exam's age by dates when the district has not been
    told the one now kept: dates entered, changed or cleared after its summary was queued.

    What the district was told is the last correction's (the journal's `told`), else the
    summary's own `biometry.ga_dates_weeks`. A running exam owes none: its summary will
    carry them (`with_age_by_dates`). Each entry's correction is keyed by its number, so
    this can run again after a crash (`tell_district_since`) and queues it once;
    `again` queues the age last told once more, for an outbox that lost it, under the
    current entry's key (where that entry's correction had arrived, the collector keeps
    one; else it holds the same age twice). True when a correction was queued or found
    queued."""
    entry, entered, told, dates = journal.dates_entry(exam_id)
    if not entry or entered is None:
        return False  # entered before corrections existed, never, or a damaged row
    summary = journal.ended_summary(exam_id)
    if summary is None or not isinstance(summary.get("biometry"), dict):
        return False  # running, or no head measured: no age by dates is wanted
    kept = read_dates(dates)
    weeks = kept["ga_dates_weeks"] if kept is not None else None
    was_told, district = told_weeks(told)
    if not was_told:
        district = number_or_none(summary["biometry"].get("ga_dates_weeks"))
    same = same_weeks(district, weeks)
    if same and not (again and was_told):
        return False
    queued = uplink.enqueue_dates(exam_id, weeks, entry, entered) is not None \
        or uplink.outbox.has_key(dates_key(exam_id, entry))
    if queued and not same:
        journal.dates_told(exam_id, weeks)
    return queued


def tell_district_withdrawal(journal: Journal, uplink: Uplink, exam_id: str,
                             again: bool = False) -> bool:
    """Queue the exam's latest withdrawal entry (withdrawn, or restored) for the district
    unless it was queued already: keyed by its number, as a dates correction, so this can
    run again after a crash (`tell_district_since`) and queues it once; `again` queues it
    once more for an outbox that lost it (the same key: the same msg_id). True when it was
    queued or found queued."""
    kept = journal.withdrawal(exam_id)
    if kept is None or (kept.told >= kept.entry and not again):
        return False
    queued = uplink.enqueue_withdrawal(exam_id, kept.withdrawn, kept.reason, kept.entry,
                                       kept.entered_ts) is not None \
        or uplink.outbox.has_key(withdrawal_key(exam_id, kept.entry))
    if queued and kept.told < kept.entry:
        journal.withdrawal_told(exam_id, kept.entry)
    return queued


def tell_district_since(settings: Settings, journal: Journal, uplink: Uplink) -> int:
    """At a start: the corrections and withdrawals a killed process owed (kept in the
    journal, message not yet queued) for the exams entered within `[journal] keep_days`,
    and after a corrupt outbox those it may have lost. Returns how many were queued or
    found queued."""
    since = journal_since(settings)
    again = uplink.outbox.moved_aside is not None
    told = 0
    for what, exam_ids, tell in (
            ("age-by-dates correction(s)", journal.dated_exams, tell_district_dates),
            ("withdrawal(s)", journal.withdrawn_exams, tell_district_withdrawal)):
        count = sum(tell(journal, uplink, exam_id, again) for exam_id in exam_ids(since))
        if count:
            log.info("%d %s owed to the district queued or found queued", count, what)
        told += count
    return told


def run(settings: Settings, once: bool = False, echo: Callable[[str], None] = print) -> int:
    """The long-running loop; returns the process exit code."""
    # Where the wall clock stands at the start: a step while the models load (network
    # time coming up at boot) is followed at the first frame
    clock_steps = WallSteps()
    state_dir = prepare_state_dir(settings.device.state_dir)
    # Held until the process ends, however it ends: one run per state dir.
    lock = StateLock(state_dir).acquire()
    # With [fleet] on, the models are the active slot's; a crash during a trial is counted
    # (and at the limit rolled back) before any model is loaded.
    fleet, models_dir = start_fleet(settings, state_dir, echo)
    # Set when new models are installed: the loop ends and the service starts it again.
    models_switched = fleet.restart if fleet is not None else threading.Event()
    settings = replace(settings, models=replace(settings.models, dir=models_dir))
    web = None
    if settings.web.listen:  # the page is up while the models load, and says so
        from edge.web import start_web

        web = start_web(settings.web, state_dir, settings.exam.end_gap_s,
                        settings.exam.protocols_file)
    scorer = make_scorer(settings)
    # a screen found stretched stays so across a restart, until it gives readings of its own
    scorer.recall_shape = lambda key: screen_shape.remembered(state_dir, key)
    scorer.keep_shape = lambda key, stretch, setting: screen_shape.remember(
        state_dir, key, stretch, setting)
    models = scorer.model_versions()
    mqtt = settings.mqtt
    if settings.device.device_id and not mqtt.device_id:
        mqtt = replace(mqtt, device_id=settings.device.device_id)
    uplink = Uplink(mqtt, state_dir, model_versions=models)
    broker_user = uplink.broker_user
    if broker_user and broker_user != uplink.device_id:
        # board/provision.py makes the broker user the device id and lets it publish only
        # under its own id: every message would be refused, "Not authorized"
        log.warning("mqtt: device id %r is not the broker user %r, so a broker provisioned by "
                    "board/provision.py refuses every message; set [device] device_id = %r",
                    uplink.device_id, broker_user, broker_user)
    uplink.start()
    if fleet is not None:
        fleet.start(uplink)
    journal = Journal(state_dir / JOURNAL_FILE, quota_bytes=int(settings.journal.quota_mb * 1e6))
    try:
        pruned = journal.prune(settings.journal.keep_days)
    except sqlite3.DatabaseError as exc:  # a full disk: pruning can wait for the next start
        log.warning("journal: not pruned (%s)", exc)
        pruned = 0
    if pruned:
        log.info("journal: pruned %d frame results older than %g days", pruned,
                 settings.journal.keep_days)
    recover_runs(settings, journal, uplink)
    requeue_unqueued_exams(settings, journal, uplink)
    tell_district_since(settings, journal, uplink)
    # The demo plays at its own frame rate, as a scanner would; files run as fast as they can.
    spec = settings.source.spec
    source = open_source(spec, live=live_settings(settings, once),
                         pace=spec == "demo" or settings.source.pace)
    if source.demo is not None and source.demo.kind == "phantom":
        echo(f"demo source is a generated phantom: {source.demo.description}")
    run_id = journal.start_run(source.name, models)
    dog = Watchdog(stall_s=settings.loop.stall_s)  # systemd's WatchdogSec (edge/fleet)

    def exam_ended(session: ExamSession, body: dict) -> None:
        if web is not None:
            web.apply_entries()  # the page's last dates, entered while the exam ended
        body = with_age_by_dates(body, journal)
        # The journal first: a crash before the outbox has it is repaired from there.
        journal.add_exam(run_id, body, session.kept_frames(), session.first_row,
                         session.last_row)
        uplink.enqueue_exam(body, key=body["exam_id"])
        echo(format_exam(session, body, " ([biometry] pixel_size_mm)"))
        if web is not None:
            web.exam_ended(session, body)

    rules = scorer.quality.rules if scorer.quality else None
    tracker = make_tracker(settings, state_dir, models, exam_ended, scorer.measure_kept,
                           rules)
    labels, ident = scorer.manifest.labels, scorer.manifest.ident
    for check in (lambda: check_named(tracker.protocol, labels, ident),
                  lambda: check_head_planes(tuple(settings.biometry.head_planes), labels, ident),
                  lambda: check_anatomy(tracker.protocol, rules)):
        try:  # said, not refused: the box still names the planes it knows and measures
            check()
        except ProtocolError as exc:
            log.warning("%s", exc)
    if scorer.head is not None and settings.biometry.ruler_tick_mm:
        log.info("head scale: read on each measured frame from the scanner's depth ruler "
                 "(a tick every %g mm)%s", settings.biometry.ruler_tick_mm,
                 "; this source's heads that know their own scale (the demo clip's) are "
                 "measured at it" if any(source.pixel_sizes) else "")
    elif scorer.head is not None and settings.biometry.pixel_size_mm:
        # said at start: the advice "Zoom in" asks for exactly the change that breaks it
        log.warning("head scale: [biometry] pixel_size_mm %g holds for one depth and zoom "
                    "of the scanner; after a change every HC is wrong by the ratio. Set "
                    "[biometry] ruler_tick_mm to read the scanner's depth ruler instead",
                    settings.biometry.pixel_size_mm)
    if scorer.head is not None and scorer.head.fan is not None:
        fan = scorer.head.fan
        log.info("screen shape: checked on the probe's fan every %d frames (every %d for a "
                 "new screen's first %d); heads are not measured on a picture stretched or "
                 "squeezed sideways by more than %g%% ([biometry] stretch_tolerance)%s",
                 fan.every_frames, fan.fast_every_frames, fan.fast_for_frames,
                 fan.tolerance * 100, "" if fan.undone != 1.0 else
                 ", nor on an SD grabber's frame (720x576 and the like) whose fan reads as it "
                 "squeezes a 4:3 picture")
    elif scorer.head is not None:
        log.warning("screen shape: not checked ([biometry] stretch_tolerance = 0): a "
                    "grabber that stretches the scanner's picture makes every head wrong")
    if settings.source.stretch != 1.0:
        # below 1 the frames are widened (a PAL grabber's 720x576 to 768x576): "narrowed
        # by 0.9375" told the installer the opposite of what the box does
        stretch = settings.source.stretch
        log.info("screen shape: each frame is %s by %g ([source] stretch = %g) before it is "
                 "read, undoing the grabber's %s",
                 "narrowed" if stretch > 1.0 else "widened",
                 stretch if stretch > 1.0 else round(1.0 / stretch, 4), stretch,
                 "stretch" if stretch > 1.0 else "squeeze")
    if (scorer.head is not None and not settings.biometry.pixel_size_mm
            and not settings.biometry.ruler_tick_mm):
        if any(source.pixel_sizes):  # the demo clip knows its heads' scales, and measures
            # them: `make run` warned "not measured until it is set", then gave an HC
            log.info("no [biometry] pixel_size_mm: this source's heads are measured at "
                     "their own scales; a scanner's are not measured until it is set")
        else:
            log.warning("no [biometry] pixel_size_mm (the scanner's mm per pixel at this "
                        "depth): head-plane frames are found but not measured (no HC, BPD "
                        "or age) until it is set")
    if web is not None:
        def keep_dates(exam_id: str, dates: dict | None) -> bool:
            """The page's dates into the journal first, then the district's correction
            where the exam's summary has already been queued."""
            if not journal.keep_dates(exam_id, dates):
                return False
            tell_district_dates(journal, uplink, exam_id)
            return True

        def keep_withdrawal(exam_id: str, withdrawn: bool, reason: str) -> bool:
            """The page's withdrawal (or restore) into the journal first, then the
            district's message."""
            if not journal.keep_withdrawal(exam_id, withdrawn, reason):
                return False
            tell_district_withdrawal(journal, uplink, exam_id)
            return True

        web.attach(scorer, uplink, source, tracker, keep_dates, keep_withdrawal)
    steady = SteadyFeedback(rules.feedback) if rules is not None else None
    advice: str | None = None
    stats = RunStats(journal=journal)
    switch_seen: float | None = None  # when the loop first saw new models installed
    next_health = time.monotonic() + mqtt.health_interval_s
    limit, every = settings.loop.max_frames, settings.loop.log_every
    cut_short = False  # the loop broke off for a restart to new models, not the source
    stop = _StopFlag(source)
    try:
        with stop, source:
            dog.ready(f"scoring {source.name}")
            # A live grabber that hands no frame for a second gives None instead: the
            # exam's gap and the health messages run on the clock, not on the next frame.
            for frame, capture_s in dog.watch(
                    timed_frames(source, scorer.prepare_frame, idle=True,
                                 reshape=narrowing(settings.source.stretch)), source,
                    is_idle=lambda item: item[0] is None):
                follow_clock_steps(clock_steps, tracker, uplink, journal, web)
                if frame is None:
                    if web is not None:  # a Stop or dates tapped while nothing comes
                        web.apply_commands(tracker)
                    now = time.monotonic()
                    tracker.idle(now)
                    if web is not None:
                        web.view.exam_kept_until = tracker.signal_hold_ends(now)
                else:
                    result = scorer.score(frame, capture_s)
                    record = result.to_dict()
                    # Held after the page's "stop": journaled as held, so that a recovery after a
                    # kill replays what the exams saw, not an exam the midwife had stopped.
                    fed = web is None or web.accepts(record, result.mono_s,
                                                     tracker.has_content(record))
                    row = journal.append(run_id, result, held=not fed, record=record)
                    stats.add(record)
                    roi = Roi(*result.roi) if result.roi else None
                    if fed:
                        tracker.feed(record, frame.image, roi, result.mono_s, row=row,
                                     run_id=run_id)
                    if steady is not None:
                        shown = steady.update(record)
                        if shown.message != advice:  # said when it changes, never per frame
                            advice = shown.message
                            echo(f"advice: {advice or 'the image is good'}")
                    if web is not None:
                        web.after_frame(frame.image, record, shown if steady is not None else None,
                                        scorer.last_class_map, frame.t_mono, tracker)
                    if result.error or (every and stats.frames % every == 0):
                        echo(format_line(result))
                if time.monotonic() >= next_health:
                    uplink.enqueue_health(health_figures(stats, source, state_dir))
                    next_health = time.monotonic() + mqtt.health_interval_s
                if stop.end_exam:
                    stop.end_exam = False
                    tracker.end("command")
                if stop.stopped or (limit and stats.frames >= limit):
                    break
                if models_switched.is_set() and restart_due(
                        tracker, switch_seen := switch_seen or time.monotonic(),
                        settings.fleet.restart_wait_min):
                    cut_short = True
                    break
            else:  # the source ended: with the page open, the last exam stays up
                if web is not None and not once and not models_switched.is_set() \
                        and not stop.stopped:
                    tracker.end("source_end")
                    web.source_ended()

                    def lingered() -> bool:  # the page stays up: a set from it still counts
                        follow_clock_steps(clock_steps, tracker, uplink, journal, web)
                        return stop.stopped or models_switched.is_set()

                    web.linger(lingered)
    finally:
        dog.stopping(restarting=models_switched.is_set())
        if fleet is not None:
            fleet.stop()
        follow_clock_steps(clock_steps, tracker, uplink, journal, web)  # the last moment's
        # an exam still running here was cut by the box's stop (a service stop, a shutdown:
        # SIGTERM, which also closes a live source) or a model update's restart, not by the
        # end of its source: its report says so. A source that ended (while new models wait
        # its exam is not ended before) or failed ends it as before.
        tracker.end("stopped" if cut_short or stop.stopped else "source_end")
        if web is not None:
            web.apply_entries()  # dates the page accepted in the last moment: kept, not lost
        journal.end_run(run_id)
        journal.close()
        uplink.enqueue_health(health_figures(stats, source, state_dir))
        echo(format_summary(stats, source))
        if once and uplink.target is not None:
            if not uplink.drain():
                echo(f"outbox not empty after {mqtt.drain_timeout_s:.0f} s: "
                     f"{uplink.outbox.pending_count()} messages wait for the next link")
        uplink.close()
        if web is not None:
            web.close()
        lock.release()
    if fleet is not None:
        fleet.fleet.on_clean_exit()
        if models_switched.is_set():
            echo(f"models switched to bundle {fleet.status()['bundle']}: starting again")
            return RESTART_EXIT
    if once and getattr(source, "gave_up", False):  # a run to end: its grabber was lost
        raise SourceError(f"{shown_path(source.name)}: the grabber was lost and did not "
                          f"come back after {source.settings.max_reopen_attempts} reopens")
    return 0
