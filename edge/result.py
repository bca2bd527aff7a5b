"""The per-frame result: one JSON-serialisable record that score, journal and summaries share.

Optional keys were added without a schema bump, so records without them, and readers that
ignore them, stay valid: `biometry` (head biometry on head-plane frames,
`edge.models.biometry.Biometry.to_dict()` plus its time `ms`), `quality` (the audit,
`edge.models.quality.QualityResult.to_dict()` plus its time `ms`) and `head` (the head the
segmenter found on a frame that may show one, even without a pixel size).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

RESULT_SCHEMA = 1
ROUNDED = {"plane_confidence": 4, "latency_ms": 3, "capture_ms": 3, "preprocess_ms": 3,
           "infer_ms": 3}  # key -> decimals in the record


@dataclass(frozen=True)
class FrameResult:
    source: str
    frame: int
    plane: str | None  # None when the frame could not be scored (see `error`)
    plane_confidence: float | None
    latency_ms: float  # capture wait excluded: preprocess + infer + bookkeeping
    capture_ms: float
    preprocess_ms: float
    infer_ms: float
    roi: list[int] | None  # [x, y, w, h] in frame pixels
    model: str  # name@version
    ts: float  # wall clock at capture (advisory: the box may have no RTC)
    # The scan's clock (edge/capture/clock.py): monotonic at capture for a live frame, the
    # recording's own time for a video's; what exams count their length and gaps in.
    mono_s: float
    error: str | None = None
    biometry: dict | None = None  # head-plane frames with a known pixel size and a segmenter
    quality: dict | None = None  # the audit: score, advice, criteria (edge.models.quality)
    head: dict | None = None  # the head the segmenter found: status and ellipse (frame px)
    head_ms: float | None = None  # time spent segmenting (and measuring) the head
    schema: int = RESULT_SCHEMA

    def to_dict(self) -> dict:
        """The record, a deep copy: whoever keeps or changes it cannot touch the result.
        Copied as the JSON tree it is: `dataclasses.asdict`'s generic walk took 0.09 ms a
        frame on a Zen 5 core, six times this (the loop copies each frame once, for the
        journal and the exam alike)."""
        return _rounded({name: _tree_copy(getattr(self, name)) for name in _FIELD_NAMES})


_FIELD_NAMES = tuple(f.name for f in fields(FrameResult))


def _tree_copy(value):
    """A deep copy of JSON-like data (dicts, lists, tuples, scalars). The nested dicts are
    the scorer's own audit and biometry, a few levels deep, never outside input."""
    kind = type(value)
    if kind is dict:
        return {k: _tree_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return kind(_tree_copy(v) for v in value)
    return value


def _rounded(data: dict) -> dict:
    for key, digits in ROUNDED.items():
        if data[key] is not None:
            data[key] = round(data[key], digits)
    return data
