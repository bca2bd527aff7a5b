"""The scan's own time of each frame, which exams measure their length and gaps in; and the
steps of the wall clock, which dates them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge.capture.sources import Frame
from wire.schema import CLOCK_STEP_S  # a change of the wall clock this large is a step


@dataclass
class ScanClock:
    """Seconds on the scan's clock for each frame in turn; it never goes backwards.

    A live frame's time is when it was captured. A recorded video's frame is where it falls
    in the recording (`Frame.t_media`), counted from when the box began to read it. A file
    is read as fast as the box can (unless paced), so on capture times a 10-minute recording
    read in one minute made a 1-minute exam, and 30 s of blank screen between two women read
    in 3 s never ended the first exam: on this clock both are the recording's own.
    """

    _source: str | None = None
    _offset: float = 0.0
    _last_media: float | None = None
    _last: float | None = None

    def __call__(self, frame: Frame) -> float:
        if frame.t_media is None:
            value, self._source = frame.t_mono, None
        else:
            if (frame.source != self._source or self._last_media is None
                    or frame.t_media < self._last_media):  # a new recording begins
                start = frame.t_mono if self._last is None else max(frame.t_mono, self._last)
                self._offset = start - frame.t_media
                self._source = frame.source
            self._last_media = frame.t_media
            value = self._offset + frame.t_media
        if self._last is not None:
            value = max(value, self._last)
        self._last = value
        return value


def _boot_clock() -> float:
    """Seconds since boot, suspend included (the wall clock runs on through a suspend)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


def booted_ts() -> float:
    """When the box booted, by the wall clock now."""
    return time.time() - _boot_clock()


@dataclass
class WallSteps:
    """Each call: how far the wall clock stepped since the last call (0.0 for none), seen
    as a change of its distance from the boot clock. The exam running across a step began
    by the clock before it and ended by the one after: its report's date and its start
    were weeks off (`ExamTracker.clock_set`)."""

    _offset: float = field(default_factory=booted_ts)  # where it stands at the first look

    def __call__(self) -> float:
        offset = booted_ts()
        last, self._offset = self._offset, offset
        return offset - last if abs(offset - last) >= CLOCK_STEP_S else 0.0


def stamped_before_step(ts: float, moved_s: float, before_ts: float) -> bool:
    """Whether a wall time came from the clock before a step of `moved_s`: before
    `before_ts` (the clock now, less half the step) for a step forward, after it for one
    back."""
    return ts < before_ts if moved_s > 0 else ts > before_ts
