"""The scan's own time of each frame, which exams measure their length and gaps in."""

from __future__ import annotations

from dataclasses import dataclass

from edge.capture.sources import Frame


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
