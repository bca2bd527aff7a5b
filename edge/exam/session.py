"""One exam: its protocol, its best frame per plane, its checklist and its summary.

An exam keeps running totals (`ExamTally`), and for every standard plane the frame with the
highest quality score, discounted by the learned quality head's fault estimates (the
protocol's `fault_discount`; the plane model's confidence breaks ties, and ranks frames
when the audit is off). A slot marked `unsure_head` also takes the best frame the plane
model abstained on but whose skull the head segmenter outlines whole and regular (never
captured: its plane is not confirmed). The best frame is kept as a thumbnail
(`ThumbStore`), written at most every `thumb_interval_s` per plane while the exam runs and
once more when it ends, so a live stream that keeps improving does not write a JPEG per
frame. A plane is captured when its best frame reaches the protocol's `min_quality`.
The heads the exam reports (its best heads and its planes' best frames) are measured live
on the segmenter's one plain pass like every frame; the exam holds a copy of just those
frames and, when it ends, measures them again with the segmenter's own passes
(`measure_kept`), so no live frame waits for the slower passes. When it ends it also keeps
the frame its HC comes from (`measured_head`: the best head whose HC is the median of the
best heads, or the nearest), with the fitted ellipse and the calipers drawn on its
thumbnail (`thumbs.measured_head_thumbnail`): the report shows where the head was measured,
where the head plane's best frame, ranked by quality, may be another frame, another HC.

`ExamTracker` runs exams in a live stream: an exam starts on the first frame with
ultrasound content, and ends after `end_gap_s` without content, on command (`stop`), or
when the source ends. The same tracker rebuilds the exams of a run that was killed, by
replaying its journaled results (`ended_by` "recovered" for the exam left open). An exam's
id is then derived from the run and its first frame's journal row (`exam_id_for`), so a
replay, however often repeated, gives the ids the live run gave.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from edge.capture.clock import stamped_before_step
from edge.exam.protocol import Protocol, Slot
from edge.exam.tally import ExamTally, confidence_of, quality_score
from edge.exam.thumbs import (
    HEAD_MEASURED,
    MISSED_ADVICE,
    SET_UP,
    ThumbStore,
    make_thumbnail,
    measured_head_thumbnail,
)
from edge.models.biometry import (
    MEASURED,
    PIXEL_SIZE_MISSING,
    REFUSAL_WORDS,
    SCREEN_STRETCHED,
    SET_UP_FIXES,
    SET_UP_STATUSES,
    STRETCH_FRAME_FOR,
    STRETCH_SETTING_FIX,
)
from edge.models.quality import HEAD_MEASURES, Rules, RulesError, load_rules
from edge.models.roi import Roi
from wire.dating import HADLOCK_1984_WEEKS
from wire.schema import PLANES, UNCERTAIN, finite_number, floor_digits
from wire.shown import printable

log = logging.getLogger(__name__)

NOT_A_VIEW = ("Background",)
# The planes whose head the audit's head criteria judge and biometry measures: the default
# of [biometry] head_planes (edge/config.py).
HEAD_PLANES = ("Brain (Tv.)", "Brain (Cb.)")
# Measures a kept frame with the segmenter's own passes: (image, region, mm per pixel) ->
# a biometry dict, or None where that adds nothing (`edge.scorer.Scorer.measure_kept`).
MeasureKept = Callable[[np.ndarray, Roi | None, float], dict | None]
ENDED_BY = ("gap", "command", "source_end", "recovered", "stopped")
_EXAM_NAMESPACE = uuid.UUID("5d0b7c1e-6f1a-4c55-9a0e-7d3c8e2b1f40")


def exam_id_for(run_id: str, first_row: int) -> str:
    """The id of the exam whose first frame is journal row `first_row` of run `run_id`."""
    return str(uuid.uuid5(_EXAM_NAMESPACE, f"{run_id}/{int(first_row)}"))


@dataclass(frozen=True)
class ExamSettings:
    """[exam] in the device config."""

    protocol: str = "biometry"
    protocols_file: str = ""  # "" = the shipped edge/exam/protocols.toml
    end_gap_s: float = 20.0  # an exam ends after this long without ultrasound content
    # No frame at all for longer than `signal_lost_s` (as the page's [web] no_signal_s) is
    # a lost signal: a cable pulled, a grabber or scanner restarted. Such a spell, beyond
    # its first `signal_lost_s`, does not count toward `end_gap_s` while it is shorter than
    # `signal_hold_s`: the same woman's exam goes on when the picture comes back (a
    # midwife's walk: plugging the cable back in started a second exam, her checklist
    # split in two). Longer, the exam ends as by a gap. A box cannot tell the same woman
    # from the next: the hold is short next to a change of women, the page says the exam
    # is kept and its Stop ends it. 0 turns the hold off (every spell counts as a gap).
    signal_lost_s: float = 2.0
    signal_hold_s: float = 90.0
    thumbnails: bool = True
    thumb_width: int = 320  # pixels; the region is scaled down to this width
    thumb_interval_s: float = 0.5  # a plane's thumbnail is rewritten at most this often
    thumbs_quota_mb: float = 200.0  # oldest exams' thumbnails go first


class Kept(NamedTuple):
    """A frame the exam holds until it ends (`ExamSession._kept`)."""

    image: np.ndarray
    roi: Roi | None
    pixel_size_mm: float


@dataclass
class BestFrame:
    plane: str
    source: str
    frame: int
    quality: float | None
    confidence: float
    biometry: dict | None = None
    thumbnail: str | None = None  # path relative to the state dir, once written
    ranked: float | None = None  # quality discounted by the learned head's faults
    # What to change on it (the audit's leading failing criterion and its instruction):
    # a slot whose best frame is not good enough says why, for a blind sweep as live.
    advice: tuple[str, str] | None = None
    key: int | None = None  # the exam's count of frames when it came (`ExamTally.frames`)
    # Whether it reaches the protocol's min_quality on a confirmed plane (not "uncertain"):
    # the slot it fills is then captured.
    captures: bool = False

    def rank(self) -> tuple[bool, float, float, float]:
        """A frame that captures its plane first: the discount ranks, it never takes a
        capture away (a cut-off 4CH at 0.40 ranked over a noisy one at 0.50, because the
        learned head counts the noise again, and a plane with a good-enough frame was told
        missing). Then the discounted quality (so among frames that pass every rule, the one
        the learned head finds least faulty), then the plain quality, then the confidence."""
        quality = -1.0 if self.quality is None else self.quality
        return (self.captures, quality if self.ranked is None else self.ranked, quality,
                self.confidence)

    def to_dict(self) -> dict:
        out = {"source": self.source, "frame": self.frame,
               # cut, not rounded: a frame under the capture bar never shows at it
               "quality": None if self.quality is None else floor_digits(self.quality, 4),
               "confidence": round(self.confidence, 4)}
        if self.ranked is not None and self.ranked != self.quality:
            # What `rank` ranked it by, so a page rebuilt from the journal picks the same
            # best frame of a slot as the live exam did.
            out["ranked"] = round(self.ranked, 4)
        if self.thumbnail:
            out["thumbnail"] = self.thumbnail
        if self.biometry and finite_number(self.biometry.get("hc_mm")):
            out["hc_mm"] = self.biometry["hc_mm"]
        if self.advice:
            out["advice"] = {"criterion": self.advice[0], "message": self.advice[1]}
        return out


@dataclass
class ExamSession:
    protocol: Protocol
    thumbs: ThumbStore | None = None
    settings: ExamSettings = field(default_factory=ExamSettings)
    exam_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    source: str = ""
    started_ts: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    tally: ExamTally = field(default_factory=ExamTally)
    best: dict[str, BestFrame] = field(default_factory=dict)
    last_content: tuple[float, float] | None = None  # (wall, monotonic) of the last content
    last_frame: tuple[float, float] | None = None  # (wall, monotonic) of the last frame fed
    first_row: int | None = None  # journal rows of its first and last frame, where journaled
    last_row: int | None = None
    # The segmenter's own passes, for the heads the exam reports; None: the live pass is final.
    measure_kept: MeasureKept | None = None
    # The quality rules the frames were judged by (their head criteria and priorities, for
    # a best frame's advice; None: the shipped rules) and the head planes ([biometry]).
    rules: Rules | None = None
    head_planes: tuple[str, ...] = HEAD_PLANES
    _pending: dict[str, np.ndarray] = field(default_factory=dict)
    _written: dict[str, float] = field(default_factory=dict)
    # The frames whose heads the exam reports, until it ends: key -> (image, region, mm/px)
    _kept: dict[int, Kept] = field(default_factory=dict)
    # The best heads' plane, frame number and fitted ellipse (frame pixels): key -> those
    _heads: dict[int, tuple[str, int | None, object]] = field(default_factory=dict)
    # Where the exam's HC was measured, once it has ended (`finish`); None: no head measured
    measured_head: dict | None = None

    def add(self, result: dict, image: np.ndarray | None = None, roi: Roi | None = None,
            now: float | None = None) -> None:
        """Count one frame's result dict; keep it if it is its plane's best so far."""
        if not self.source and isinstance(result.get("source"), str):
            self.source = result["source"]
        self.tally.add(result)
        candidate = self._better_frame(result)
        if candidate is not None:
            current = self.best.get(candidate.plane)
            # only for the frame kept, not every frame
            candidate.advice = advice_of(result, *self._advice_order(candidate.plane))
            candidate.key = self.tally.frames
            if current is not None:
                candidate.thumbnail = current.thumbnail
            self.best[candidate.plane] = candidate
            if self.thumbs is not None and self.settings.thumbnails and image is not None:
                self._pending[candidate.plane] = make_thumbnail(image, roi,
                                                                self.settings.thumb_width)
        if self._pending:
            # On every frame, not only when a plane improves: a best frame that came within
            # `thumb_interval_s` of its plane's last write waited, showing the frame before
            # it, until another plane improved or the exam ended.
            self._flush(time.monotonic() if now is None else now, force=False)
        self._note_head(result)
        if self.measure_kept is not None or self._draws_head():
            self._keep_for_measuring(result, image, roi)

    def _draws_head(self) -> bool:
        """Whether the exam ends by drawing where its head was measured (`measured_head`)."""
        return self.thumbs is not None and self.settings.thumbnails

    def _note_head(self, result: dict) -> None:
        """Remember the plane, frame number and ellipse of a frame that entered the best
        heads (a few numbers, for at most `ExamTally.BEST_HEADS` frames)."""
        best = self.tally.best_head_keys()
        key = self.tally.frames
        if key in best:
            bio = result.get("biometry")
            plane, frame = result.get("plane"), result.get("frame")
            self._heads[key] = (plane[:32] if isinstance(plane, str) else "",
                                frame if type(frame) is int else None,
                                bio.get("ellipse") if isinstance(bio, dict) else None)
            for old in [k for k in self._heads if k not in best]:
                del self._heads[old]

    def _advice_order(self, plane: str) -> tuple[frozenset[str], dict[str, int]]:
        """(criteria not to advise on, the rules' priorities) for a best frame of `plane`.
        The head criteria judge a head, and SonoNet's profile or lips can show enough of one
        to be judged: on a frame of a plane other than a head plane, "zoom in: the head
        fills too little of the screen" is not what would make it good enough."""
        head, priority = advice_order(self.rules)
        if plane in self.head_planes or plane == UNCERTAIN:
            return frozenset(), priority
        return head, priority

    def _keep_for_measuring(self, result: dict, image: np.ndarray | None,
                            roi: Roi | None) -> None:
        """Hold a copy of this frame while its head is one the exam reports (a best head,
        or a plane's best frame), and let go of frames that no longer are: at most
        `ExamTally.BEST_HEADS` plus one per plane, whatever the exam's length."""
        key = self.tally.frames
        reported = self.tally.best_head_keys()
        if self.measure_kept is not None:  # else only the best heads, for `measured_head`
            reported |= {b.key for b in self.best.values()}
        if key not in reported:  # nothing entered, so nothing left the reported heads
            return
        bio = result.get("biometry")
        if (image is not None and isinstance(bio, dict)
                and bio.get("status") in MEASURED and isinstance(bio.get("pixel_size_mm"),
                                                                 int | float)):
            # A copy: a live grabber may hand over its buffer, refilled on the next frame.
            self._kept[key] = Kept(np.array(image, copy=True), roi, float(bio["pixel_size_mm"]))
        for old in [k for k in self._kept if k not in reported]:
            del self._kept[old]

    def measure_kept_heads(self) -> int:
        """Measure the heads the exam reports again with the segmenter's own passes (its
        best heads, its planes' best frames), in place of their live measurement; returns
        how many. Called when the exam ends, so no live frame waits for the slower passes.
        The copies stay until `finish` has drawn where the exam's head was measured."""
        done = 0
        if self.measure_kept is None:
            return done
        for key, (image, roi, pixel_size_mm) in list(self._kept.items()):
            bio = self.measure_kept(image, roi, pixel_size_mm)
            if bio is None or bio.get("status") not in MEASURED:
                continue  # the live measurement stands
            self.tally.remeasure_head(key, bio["hc_mm"], bio["bpd_mm"], bio["ofd_mm"])
            if key in self._heads:  # the ellipse drawn is the one measured
                self._heads[key] = (*self._heads[key][:2], bio.get("ellipse"))
            for best in self.best.values():
                if best.key == key:
                    best.biometry = bio
            done += 1
        return done

    def _measure_head_shown(self) -> dict | None:
        """Where the exam's HC was measured (`ExamTally.median_head`): that frame's plane,
        number and HC, BPD and OFD, how many best heads it is the median of, and, where
        thumbnails are written, its thumbnail with the fitted ellipse and the calipers
        drawn on it (`thumbnail`, and `ellipse` in the thumbnail's pixels). Written by the
        same store as the planes' thumbnails, within their quota; a thumbnail that cannot
        be drawn or written leaves the figures alone. None without a measured head."""
        found = self.tally.median_head()
        if found is None or found[0] not in self._heads:
            return None
        key, hc, bpd, ofd = found
        plane, frame, ellipse = self._heads[key]
        entry: dict = {"plane": plane, "frame": frame, "hc_mm": round(hc, 2),
                       "bpd_mm": round(bpd, 2), "ofd_mm": round(ofd, 2),
                       "of": len(self.tally.best_heads)}
        kept = self._kept.get(key)
        if self._draws_head() and kept is not None:
            drawn = measured_head_thumbnail(kept.image, kept.roi, self.settings.thumb_width,
                                            ellipse)
            path = None if drawn is None else self.thumbs.save(self.exam_id, HEAD_MEASURED,
                                                               drawn[0])
            if path:
                entry.update(thumbnail=path, ellipse=drawn[1])
        return entry

    def _better_frame(self, result: dict) -> BestFrame | None:
        """The frame as its plane's new best, or None where it is not better (or no view)."""
        plane = result.get("plane")
        if result.get("error") or not shows_content(result):
            return None
        if plane == UNCERTAIN:
            if self.protocol.unsure_head_slot is None or not outlines_one_head(result):
                return None
        elif plane not in PLANES or plane in NOT_A_VIEW:
            return None
        if not passes_all(result, self.protocol.anatomy_criteria):
            return None  # not the plane's anatomy at all, whatever the plane model named it
        quality = quality_score(result)
        frame, bio = result.get("frame"), result.get("biometry")
        candidate = BestFrame(plane, str(result.get("source", "")),
                              frame if type(frame) is int else -1, quality,
                              confidence_of(result), bio if isinstance(bio, dict) else None,
                              ranked=discounted(quality, result, self.protocol.fault_discount))
        candidate.captures = self._reaches_bar(candidate)
        current = self.best.get(plane)
        if current is not None and candidate.rank() <= current.rank():
            return None
        return candidate

    def _flush(self, now: float, force: bool) -> None:
        for plane in list(self._pending):
            if not force and now - self._written.get(plane, -1e9) < self.settings.thumb_interval_s:
                continue
            path = self.thumbs.save(self.exam_id, plane, self._pending.pop(plane))
            self._written[plane] = now
            # Unwritten (a full disk, the quota): the file there shows an older frame, and
            # must not be shown as this one's.
            self.best[plane].thumbnail = path

    def captured(self, plane: str) -> bool:
        best = self.best.get(plane)
        return best is not None and self._reaches_bar(best)

    def _reaches_bar(self, best: BestFrame) -> bool:
        if best.plane == UNCERTAIN:  # an unconfirmed plane is never captured
            return False
        score = best.quality if best.quality is not None else best.confidence
        return score >= self.protocol.min_quality

    def slot_best(self, slot: Slot) -> BestFrame | None:
        found = [self.best[p] for p in slot.accepts if p in self.best]
        if slot.unsure_head and UNCERTAIN in self.best:
            found.append(self.best[UNCERTAIN])
        return max(found, key=BestFrame.rank) if found else None

    def slot_seen(self, slot: Slot) -> bool:
        """Whether a frame of one of the slot's planes was seen: named so by the plane model
        (not an abstention), with ultrasound and the plane's anatomy (`_better_frame`). A
        slot seen but not captured was found and never good enough (coach the image: gain,
        depth, zoom, steadiness); one not seen was never found (coach where to look). An
        unsure head alone is not seen: its plane is not confirmed."""
        return any(plane in self.best for plane in slot.accepts)

    def checklist(self) -> list[dict]:
        """The protocol's slots in order: captured or not, the best frame found, and for a
        slot not captured whether it was seen (`slot_seen`)."""
        rows = []
        for slot in self.protocol.slots:
            best = self.slot_best(slot)
            row = {"plane": slot.name, "captured": best is not None
                   and self.captured(best.plane)}
            if not row["captured"]:
                row["seen"] = self.slot_seen(slot)
            if len(slot.accepts) > 1:
                row["accepts"] = list(slot.accepts)
            if best is not None:
                row["best"] = {"plane": best.plane, **best.to_dict()}
            rows.append(row)
        return rows

    def best_frames(self) -> dict[str, dict]:
        """Every standard plane whose best frame is good enough to keep (the protocol's
        `min_quality`); a plane with no such frame is absent: "none"."""
        return {plane: best.to_dict() for plane, best in sorted(self.best.items())
                if self.captured(plane)}

    def kept_frames(self) -> dict[str, dict]:
        """What the journal keeps of the exam's frames: `best_frames`, and under
        `HEAD_MEASURED` (no plane's name, so never taken for one) where its head was
        measured (`measured_head`), once it has ended, under `MISSED_ADVICE` what the
        checklist advised on each slot found but never good enough, and under `SET_UP` the
        setting its heads refused for a stretched picture named (`ExamTally.stretch_setting`),
        with the grabber's frame size it is for where they named it (`stretch_frame`)."""
        kept = self.best_frames()
        if self.measured_head is not None:
            kept[HEAD_MEASURED] = dict(self.measured_head)
        if self.tally.stretch_setting is not None:
            kept[SET_UP] = {"stretch_setting": self.tally.stretch_setting}
            if self.tally.stretch_frame is not None:
                kept[SET_UP]["stretch_frame"] = self.tally.stretch_frame
        # the advice the card gave each slot found but never good enough: the report says it
        advice = {row["plane"]: row["best"]["advice"] for row in self.checklist()
                  if row.get("seen") and (row.get("best") or {}).get("advice")}
        if advice:
            kept[MISSED_ADVICE] = advice
        return kept

    def finish(self, ended_by: str, model_versions: dict[str, str] | None = None,
               ended_ts: float | None = None, ended_mono: float | None = None) -> dict:
        """Measure its reported heads with the segmenter's own passes, write the last
        thumbnails, then where its HC was measured (the planes' first, where the quota is
        short); return the exam summary body (see `summary`)."""
        self.measure_kept_heads()
        if self.thumbs is not None and self._pending:
            self._flush(time.monotonic(), force=True)
        self.measured_head = self._measure_head_shown()
        self._kept.clear()
        return self.summary(ended_by, model_versions, ended_ts, ended_mono)

    def summary(self, ended_by: str, model_versions: dict[str, str] | None = None,
                ended_ts: float | None = None, ended_mono: float | None = None) -> dict:
        """The compact exam body for the journal and the outbox."""
        if ended_by not in ENDED_BY:
            raise ValueError(f"ended_by {ended_by!r} is not one of {ENDED_BY}")
        body = self.tally.body(self.source, self.started_ts,
                               time.time() if ended_ts is None else ended_ts,
                               self.started_mono,
                               time.monotonic() if ended_mono is None else ended_mono,
                               model_versions, self.exam_id)
        rows = [row for row in self.checklist() if not row["captured"]]
        missing = [row["plane"] for row in rows]
        body["protocol"] = {"name": self.protocol.name,
                            "required": len(self.protocol.slots),
                            "captured": len(self.protocol.slots) - len(missing),
                            "missing": missing}
        if missing:
            # [] too: the district counts a missing slot not in it as never found, and one
            # of a summary without it (an older box, or shed to fit 1 KB) as not said. A
            # complete exam has nothing to say: its 18 bytes cost a busy screen its
            # per-plane qualities on the wire.
            body["protocol"]["missing_seen"] = [row["plane"] for row in rows if row["seen"]]
        body["ended_by"] = ended_by
        return body


class ExamTracker:
    """Exams in a live stream: started by ultrasound content, ended by a gap, a command
    or the end of the source. `on_end(session, body)` receives each finished exam."""

    def __init__(self, protocol: Protocol, settings: ExamSettings, thumbs: ThumbStore | None,
                 on_end: Callable[[ExamSession, dict], None],
                 model_versions: dict[str, str] | None = None,
                 measure_kept: MeasureKept | None = None, rules: Rules | None = None,
                 head_planes: tuple[str, ...] = HEAD_PLANES):
        self.protocol = protocol
        self.measure_kept = measure_kept  # see ExamSession.measure_kept
        self.rules, self.head_planes = rules, tuple(head_planes)  # see ExamSession.rules
        self.settings = settings
        self.thumbs = thumbs
        self.on_end = on_end
        self.model_versions = model_versions
        self.current: ExamSession | None = None
        self._last_content: float | None = None
        # the scan's clock at the last frame fed, and the time without any frame since the
        # current exam's last ultrasound (lost-signal spells, see ExamSettings.signal_hold_s)
        self._last_frame: float | None = None
        self._dark_s = 0.0
        # The last step of the wall clock (moved_s, before_ts; `clock_set`): a frame stamped
        # before it but fed after (captured as the clock stepped) is moved as it comes.
        self._step: tuple[float, float] | None = None

    @staticmethod
    def has_content(result: dict) -> bool:
        if result.get("error"):
            return False
        criteria = _audit(result).get("criteria")
        if isinstance(criteria, dict) and isinstance(criteria.get("content"), dict):
            return criteria["content"].get("pass") is True
        return result.get("roi") is not None

    def feed(self, result: dict, image: np.ndarray | None = None, roi: Roi | None = None,
             mono: float | None = None, row: int | None = None,
             run_id: str | None = None) -> ExamSession | None:
        """One frame; returns the exam it joined, or None between exams. `row` is the
        frame's journal row and `run_id` its run: an exam they start gets the id
        `exam_id_for(run_id, row)` (a random one when the frame was not journaled)."""
        now = time.monotonic() if mono is None else mono
        content = self.has_content(result)
        # The gap is measured on every frame, the first with ultrasound again included: a
        # grabber unplugged or a scanner switched off sends no frames at all, and the next
        # woman's first frames would otherwise have joined the last woman's exam.
        self.idle(now)
        self._dark_s += self._spell(now)  # an exam held through a lost signal goes on
        self._last_frame = now
        wall = self._after_step(wall_time_of(result))
        if self.current is None:
            self._dark_s = 0.0
            if not content:
                return None
            ids = {"exam_id": exam_id_for(run_id, row)} if row is not None and run_id else {}
            self.current = ExamSession(self.protocol, self.thumbs, self.settings,
                                       measure_kept=self.measure_kept, rules=self.rules,
                                       head_planes=self.head_planes,
                                       started_ts=wall, started_mono=now,
                                       first_row=row, **ids)
            log.info("exam %s started (protocol %s)", self.current.exam_id, self.protocol.name)
        self.current.last_frame = (wall, now)
        if content:
            self._last_content, self._dark_s = now, 0.0
            self.current.last_content = self.current.last_frame
        self.current.add(result, image, roi, now)
        if row is not None:
            self.current.last_row = row
        return self.current

    def clock_set(self, moved_s: float, before_ts: float) -> None:
        """The box's clock stepped `moved_s` (the midwife's page, or network time reaching
        a box that booted behind: edge/capture/clock.py `WallSteps`) while this exam ran:
        its wall times stamped by the clock before (before `before_ts` by the clock now,
        for a step forward; after it, for one back) move with it. Else its summary and
        report said it began weeks before it ended. Its length and gaps run on the scan's
        own clock."""
        if not moved_s:
            return
        session = self.current
        if session is not None:
            session.started_ts = self._moved(session.started_ts, moved_s, before_ts)
            for name in ("last_content", "last_frame"):
                pair = getattr(session, name)
                if pair is not None:
                    setattr(session, name, (self._moved(pair[0], moved_s, before_ts), pair[1]))
        # Forward only: the clock now never reads before `before_ts` again, so the rule
        # holds for good; after a step back its new times pass `before_ts` within minutes.
        self._step = (moved_s, before_ts) if moved_s > 0 else None

    @staticmethod
    def _moved(ts: float, moved_s: float, before_ts: float) -> float:
        return ts + moved_s if stamped_before_step(ts, moved_s, before_ts) else ts

    def _after_step(self, ts: float) -> float:
        """A frame's wall time by the clock now: stamped before the last step forward (it
        was captured as the clock stepped, and fed after), it moves with it."""
        return ts if self._step is None else self._moved(ts, *self._step)

    def idle(self, now: float) -> dict | None:
        """The scan's clock at `now` with or without a frame: an exam whose last ultrasound
        is `end_gap_s` old ends ("gap"), dated by that ultrasound, not counting lost-signal
        spells it was held through (`signal_hold_s`), and so does one whose signal has
        been lost for `signal_hold_s`. The loop calls it while a live grabber hands no
        frames (unplugged, scanner off), so the exam's summary goes to the journal and the
        district then, not when the next woman is scanned."""
        if self.current is None or self._last_content is None:
            return None
        spell = self._spell(now)
        held = self.settings.signal_hold_s
        if spell >= held > 0 or \
                now - self._last_content - self._dark_s - spell >= self.settings.end_gap_s:
            return self.end("gap")
        return None

    def _spell(self, now: float) -> float:
        """How long the signal has been lost by `now`: the time without any frame beyond
        the first `signal_lost_s` (a box scoring slowly hands frames seconds apart, and
        their gap must still count), 0 where the exam is not held through such spells."""
        last, cfg = self._last_frame, self.settings
        if last is None or cfg.signal_hold_s <= 0:
            return 0.0
        return max(0.0, now - last - cfg.signal_lost_s)

    def signal_hold_ends(self, now: float) -> float | None:
        """While the running exam is held through a lost signal, when (on the scan's
        clock) the hold runs out and the exam ends: the page says it is kept, and for how
        long. None when no exam is held so."""
        spell = self._spell(now)
        if self.current is None or spell <= 0:
            return None
        return now - spell + self.settings.signal_hold_s

    def end(self, ended_by: str) -> dict | None:
        """End the current exam, if any; returns its summary body."""
        session, self.current, self._last_content = self.current, None, None
        self._dark_s = 0.0
        if session is None:
            return None
        # An exam that ran out of content ended with its last content frame, not 20 s later;
        # so, as far as the journal tells, did an exam whose run was killed. Any other ends
        # with the last frame it saw, on the frames' clock (a recording's own, see
        # edge/capture/clock.py), not when the box got round to ending it.
        last = session.last_content if ended_by in ("gap", "recovered") else session.last_frame
        body = session.finish(ended_by, self.model_versions, *(last or (None, None)))
        log.info("exam %s ended (%s): %d frames, %d/%d planes captured", session.exam_id,
                 ended_by, body["frames"], body["protocol"]["captured"],
                 body["protocol"]["required"])
        self.on_end(session, body)
        return body


MAX_ADVICE_CHARS = 200
HEAD_OUTLINE_CRITERIA = ("head_found", "head_inside", "ellipse_regular")


def _audit(result: dict) -> dict:
    """The result's audit, or {} where it is missing or not a mapping (a replayed journal
    row is read back from disk)."""
    quality = result.get("quality")
    return quality if isinstance(quality, dict) else {}


def wall_time_of(result: dict) -> float:
    """The result's wall-clock time, or now where it is missing or not a finite number (a
    replayed journal row may hold anything; NaN would make the summary invalid JSON)."""
    ts = result.get("ts")
    return float(ts) if finite_number(ts) else time.time()


def outlines_one_head(result: dict) -> bool:
    """Whether the head segmenter outlined one whole, regular skull on this frame: the
    audit judged the head criteria and every one of them passed."""
    criteria = _audit(result).get("criteria")
    if not isinstance(criteria, dict):
        return False
    return all(isinstance(criteria.get(name), dict) and criteria[name].get("pass") is True
               for name in HEAD_OUTLINE_CRITERIA)


def shows_content(result: dict) -> bool:
    """False only where the audit found no ultrasound on the frame (`content` failed): a
    blank screen or the probe in the air is nobody's best frame, whatever a plane model
    calls it (a class-map student named a black frame a head plane)."""
    criteria = _audit(result).get("criteria")
    content = criteria.get("content") if isinstance(criteria, dict) else None
    return not (isinstance(content, dict) and content.get("pass") is False)


def discounted(quality: float | None, result: dict, discount: float) -> float | None:
    """`quality` times (1 - discount * s) for each fault severity s of the learned head."""
    if quality is None:
        return None
    learned = _audit(result).get("learned")
    if not isinstance(learned, dict):
        return quality
    for severity in learned.values():
        if isinstance(severity, int | float) and not isinstance(severity, bool) \
                and math.isfinite(severity):
            quality *= 1.0 - discount * min(1.0, max(0.0, float(severity)))
    return quality


def passes_all(result: dict, names: tuple[str, ...]) -> bool:
    """No criterion in `names` failed on the result (one not judged does not fail)."""
    criteria = _audit(result).get("criteria")
    if not names or not isinstance(criteria, dict):
        return True
    return not any(isinstance(criteria.get(n), dict) and criteria[n].get("pass") is False
                   for n in names)


@lru_cache(maxsize=8)
def advice_order(rules: Rules | None) -> tuple[frozenset[str], dict[str, int]]:
    """(the head criteria, every criterion's priority) of `rules`, or of the shipped rules."""
    if rules is None:
        try:
            rules = load_rules(None)
        except RulesError:  # checked at start-up wherever frames are judged
            return frozenset(), {}
    return (frozenset(r.name for r in rules.criteria if r.measure in HEAD_MEASURES),
            {r.name: r.priority for r in rules.criteria})


def advice_of(result: dict, skip: frozenset[str] = frozenset(),
              priority: dict[str, int] | None = None) -> tuple[str, str] | None:
    """(criterion, instruction) of a result's leading failing criterion, or None. A
    criterion in `skip` is not advised on: the leading failing criterion among the others
    is, by the rules' `priority` (then their order), or none."""
    quality = result.get("quality")
    if not isinstance(quality, dict) or not isinstance(quality.get("advice"), str):
        return None
    name = quality["advice"]
    criteria = quality.get("criteria")
    if name in skip and isinstance(criteria, dict):
        order = priority or {}
        failing = [(order.get(n, len(order) + 1), i, n) for i, (n, c) in
                   enumerate(criteria.items()) if isinstance(n, str) and n not in skip
                   and isinstance(c, dict) and c.get("pass") is False]
        if not failing:
            return None
        name = min(failing)[2]
    entry = criteria.get(name) if isinstance(criteria, dict) else None
    message = entry.get("message") if isinstance(entry, dict) else None
    if not isinstance(message, str):
        return None
    return name[:40], message[:MAX_ADVICE_CHARS]


def format_exam(session: ExamSession, body: dict, set_scale: str = "") -> str:
    """The checklist and the summary as a few lines for a terminal or a log. `set_scale`:
    how to give the pixel size, said after "the pixel size is unknown"."""
    protocol = body.get("protocol") or {}
    frames = body["frames"]
    lines = [f"exam {session.exam_id} ({session.protocol.title}): {frames} "
             f"frame{'' if frames == 1 else 's'}, "
             f"{body['duration_s']:.0f} s, ended by {body.get('ended_by')}; "
             f"{protocol.get('captured', 0)}/{protocol.get('required', 0)} planes captured"]
    for row in session.checklist():
        best = row.get("best")
        mark = "[x]" if row["captured"] else "[ ]"
        if best is None:
            lines.append(f"  {mark} {row['plane']}: not found")
            continue
        q = best["quality"]
        which = f"{best['plane']}, " if row.get("accepts") else ""
        # a missed slot: found but not good enough, or not found (only a head the plane
        # model is unsure of: shown, with its advice, but its plane is not confirmed)
        kind = "" if row["captured"] else \
            "found, not clear enough: " if row.get("seen") else "not found (plane unsure): "
        lines.append(f"  {mark} {row['plane']}: {kind}best quality "
                     f"{'-' if q is None else f'{q:.2f}'} ({which}{best['source']}, "
                     f"frame {best['frame']})"
                     + (f", thumbnail {best['thumbnail']}" if best.get("thumbnail") else "")
                     + (f"; to improve it: {best['advice']['message']}"
                        if not row["captured"] and best.get("advice") else ""))
    bio = body.get("biometry")
    if bio and bio.get("hc_mm") is not None:
        ga = bio.get("ga_weeks")
        # a bound of the range may be outside Hadlock's span (a best head under 89 mm)
        low, high = bio.get("ga_low_weeks"), bio.get("ga_high_weeks")
        low = f"under {HADLOCK_1984_WEEKS[0]:g}" if low is None else f"{low}"
        high = f"over {HADLOCK_1984_WEEKS[1]:g}" if high is None else f"{high}"
        age = (f"GA {ga:.1f} weeks (range {low} to {high})"
               if ga is not None else "GA outside Hadlock's 14-42 weeks")
        shown = session.measured_head or {}
        where = "" if shown.get("frame") is None else \
            f", nearest their median: frame {shown['frame']}" + (
                f" (thumbnail {shown['thumbnail']})" if shown.get("thumbnail") else "")
        lines.append(f"  head: HC {bio['hc_mm']:.1f} mm, BPD {bio['bpd_mm']:.1f} mm, "
                     f"OFD {bio['ofd_mm']:.1f} mm from the {bio.get('best_frames')} best of "
                     f"{bio['measured']} measured frames{where}; {age}")
    elif bio:
        declined = bio.get("declined", {})
        if set(declined) == {PIXEL_SIZE_MISSING}:  # a box whose calibration is not set
            n = declined[PIXEL_SIZE_MISSING]
            lines.append(f"  head: not measured on its {n} head-plane frame"
                         f"{'' if n == 1 else 's'}: "
                         + SET_UP_FIXES[PIXEL_SIZE_MISSING].format(set_scale=set_scale))
        else:
            # each refusal in words, and what undoes the set-up ones, as the page's card
            # says: a bare "ruler_unread 12" left the exam's heads unexplained
            setting = session.tally.stretch_setting  # as the card names it, where known
            frame = session.tally.stretch_frame
            for_frame = "" if frame is None else STRETCH_FRAME_FOR.format(frame=frame)
            fixes = [STRETCH_SETTING_FIX.format(setting=setting, frame=for_frame)
                     if k == SCREEN_STRETCHED and setting is not None
                     else SET_UP_FIXES[k].format(set_scale=set_scale)
                     for k in SET_UP_STATUSES if declined.get(k)]
            lines.append("  head: not measured ("
                         + (", ".join(_refused(k, v) for k, v in declined.items())
                            or "no head frames") + ")"
                         + (": " + "; ".join(fixes) if fixes else ""))
    if body.get("deficiencies"):
        lines.append("  most frequent deficiencies: " + _frames_list(body["deficiencies"]))
    if body.get("deficiencies_not_counted"):
        lines.append("  not counted, never advised at a calibration fixed for one depth: "
                     + _frames_list(body["deficiencies_not_counted"]))
    return "\n".join(lines)


def _refused(status: object, frames: object) -> str:
    """One refusal of the summary's heads in words, with its count (`REFUSAL_WORDS`); a
    status the box does not give (a damaged journal's) as it came, escaped."""
    words = REFUSAL_WORDS.get(status) if isinstance(status, str) else None
    count = (f"{frames} frame{'' if frames == 1 else 's'}" if type(frames) is int
             else f"{printable(str(frames)[:20])} frames")
    return f"{words or printable(str(status)[:40])} on {count}"


def _frames_list(faults: dict[str, int]) -> str:
    return ", ".join(f"{name} ({n} frame{'' if n == 1 else 's'})" for name, n in faults.items())
