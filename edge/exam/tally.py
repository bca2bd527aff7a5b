"""The running totals of one exam, and its compact summary body.

The source is reported only as a short hash, because file and folder names in clinics often
carry patient names.
"""

from __future__ import annotations

import hashlib
from collections import deque

from edge.models.biometry import MEASURED, hadlock_ga_weeks
from wire.schema import PLANES, UNCERTAIN


def source_id(source: str) -> str:
    """A short stable hash of the source name: groups exams by source without the name."""
    return hashlib.sha256(str(source).encode("utf-8", "replace")).hexdigest()[:12]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[idx], 2)


def _model_versions(results: list[dict], extra: dict[str, str] | None) -> dict[str, str]:
    models: dict[str, str] = {}
    for name, version in (extra or {}).items():
        models[str(name)[:32]] = str(version)[:16]
    for r in results:
        tag = r.get("model")
        if isinstance(tag, str) and tag:
            name, _, version = tag.partition("@")
            models.setdefault(name[:32], (version or "?")[:16])
    return dict(sorted(models.items())[:4])


class ExamTally:
    """The running totals of one exam, so a loop that runs for days holds a few numbers
    per plane instead of every frame. Latency percentiles use the most recent frames."""

    LATENCY_WINDOW = 10_000

    def __init__(self) -> None:
        self.frames = 0
        self.failed = 0
        self.planes: dict[str, list] = {}
        self.latencies: deque[float] = deque(maxlen=self.LATENCY_WINDOW)
        self.model_tags: dict[str, None] = {}
        self.head_mm: deque[tuple[float, float, float]] = deque(maxlen=self.LATENCY_WINDOW)
        self.head_declined: dict[str, int] = {}

    def add(self, r: dict) -> None:
        self.frames += 1
        tag = r.get("model")
        if isinstance(tag, str) and tag and len(self.model_tags) < 16:
            self.model_tags[tag] = None
        if r.get("error"):
            self.failed += 1
            return
        lat = r.get("latency_ms")
        if isinstance(lat, int | float):
            self.latencies.append(float(lat))
        plane = r.get("plane")
        if not isinstance(plane, str):
            return
        label = plane if plane in PLANES or plane == UNCERTAIN else "other"
        conf = r.get("plane_confidence")
        conf = float(conf) if isinstance(conf, int | float) else 0.0
        entry = self.planes.setdefault(label, [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], conf)
        self._add_biometry(r.get("biometry"))

    def _add_biometry(self, bio) -> None:
        if not isinstance(bio, dict) or not isinstance(bio.get("status"), str):
            return
        mm = [bio.get(k) for k in ("hc_mm", "bpd_mm", "ofd_mm")]
        if bio["status"] in MEASURED and all(isinstance(v, int | float) for v in mm):
            self.head_mm.append(tuple(float(v) for v in mm))
        elif len(self.head_declined) < 8 or bio["status"] in self.head_declined:
            status = bio["status"][:24]
            self.head_declined[status] = self.head_declined.get(status, 0) + 1

    def biometry(self) -> dict | None:
        """The exam's head biometry: medians over every measured head-plane frame (robust to
        the odd bad frame), the spread of HC, and the age from the median HC."""
        if not self.head_mm and not self.head_declined:
            return None
        out: dict = {"measured": len(self.head_mm),
                     "declined": dict(sorted(self.head_declined.items()))}
        if self.head_mm:
            hc, bpd, ofd = (sorted(col) for col in zip(*self.head_mm, strict=True))
            median_hc = _pct(hc, 0.5)
            ga = hadlock_ga_weeks(median_hc)
            out.update({"hc_mm": median_hc, "hc_p10_mm": _pct(hc, 0.1),
                        "hc_p90_mm": _pct(hc, 0.9), "bpd_mm": _pct(bpd, 0.5),
                        "ofd_mm": _pct(ofd, 0.5),
                        "ga_weeks": None if ga is None else round(ga, 1)})
        return out

    def body(self, source: str, started_ts: float, ended_ts: float,
             started_mono: float | None = None, ended_mono: float | None = None,
             model_versions: dict[str, str] | None = None, exam_id: str | None = None) -> dict:
        """The compact exam body; see `summarize_exam`."""
        if started_mono is not None and ended_mono is not None:
            duration = max(0.0, ended_mono - started_mono)
        else:
            duration = max(0.0, ended_ts - started_ts)
        latencies = list(self.latencies)
        head = self.biometry()
        return {
            "exam_id": exam_id or hashlib.sha256(
                f"{source}|{started_ts}|{started_mono}".encode()).hexdigest()[:16],
            "source_id": source_id(source),
            "started_ts": round(float(started_ts), 3),
            "ended_ts": round(float(ended_ts), 3),
            "duration_s": round(duration, 3),
            "frames": self.frames,
            "frames_scored": self.frames - self.failed,
            "frames_failed": self.failed,
            "planes": {k: [v[0], round(v[1], 3)] for k, v in sorted(self.planes.items())},
            "latency_ms": {"p50": _pct(latencies, 0.5), "p90": _pct(latencies, 0.9)},
            "models": _model_versions([{"model": t} for t in self.model_tags],
                                      model_versions),
            **({"biometry": head} if head is not None else {}),
        }


def summarize_exam(
    results: list[dict],
    source: str,
    started_ts: float,
    ended_ts: float,
    started_mono: float | None = None,
    ended_mono: float | None = None,
    model_versions: dict[str, str] | None = None,
    exam_id: str | None = None,
) -> dict:
    """The compact body of one exam from the loop's per-frame result dicts.

    Until the exam workflow exists one exam is one run over a source. Per plane: frames
    classified as that plane and the best confidence seen. Failed frames (``error`` set)
    count separately. The result is well under 1 KB as JSON (checked in ``build_exam``).
    """
    tally = ExamTally()
    for r in results:
        tally.add(r)
    return tally.body(source, started_ts, ended_ts, started_mono, ended_mono,
                      model_versions, exam_id)


