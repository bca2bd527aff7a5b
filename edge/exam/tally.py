"""The running totals of one exam, and its compact summary body.

The source is reported only as a short hash, because file and folder names in clinics often
carry patient names.
"""

from __future__ import annotations

import hashlib
import heapq
from array import array
from bisect import bisect_right
from collections import deque
from itertools import accumulate

from edge.models.biometry import (
    HEAD_SCALES,
    HEAD_SHAPES,
    MEASURED,
    SCREEN_STRETCHED,
    SHAPE_CHECKED,
    SHAPE_UNCHECKED,
)
from edge.models.fan import frame_read_back, setting_read_back
from wire.dating import hadlock_ga_weeks
from wire.schema import PLANES, UNCERTAIN, finite_number, floor_digits

# A journal row read back may hold any number; no fetal head measures a metre (Hadlock's
# formula overflows on 1e308).
MAX_HEAD_MM = 1000.0
# HC p10/p90 count every measured HC in bins of 1/HC_BINS_PER_MM mm (0.1 mm: the figures
# are within 0.05 mm of the exact percentiles) over 0-MAX_HEAD_MM, every head `add` takes
# (a value beyond would go to an end bin): 10,001 counters (80 kB) however long the exam.
HC_BINS_PER_MM = 10


def source_id(source: str) -> str:
    """A short stable hash of the source name: groups exams by source without the name."""
    return hashlib.sha256(str(source).encode("utf-8", "replace")).hexdigest()[:12]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    # Linear between the two nearest ranks: the median of two head frames is their mean,
    # not the smaller one (which dated every two-frame exam by its smaller head).
    ordered = sorted(values)
    pos = min(1.0, max(0.0, q)) * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 2)


class HcHistogram:
    """Every measured frame's HC as counts in fixed 0.1 mm bins (`HC_BINS_PER_MM`), so the
    exam's HC spread spans every frame of a scan of any length in a fixed size: a window
    of the last frames forgot the first ones (a 15-minute head scan at 15 fps has 13,500).
    `percentiles` are `percentile`'s of the binned values (linear between the two nearest
    ranks), so each is within half a bin (0.05 mm) of that of the values themselves."""

    def __init__(self) -> None:
        self.counts = array("Q", bytes(8 * (round(MAX_HEAD_MM * HC_BINS_PER_MM) + 1)))

    def add(self, hc: float) -> None:
        self.counts[min(len(self.counts) - 1, max(0, round(hc * HC_BINS_PER_MM)))] += 1

    def percentiles(self, *qs: float) -> list[float | None]:
        """Each q's percentile, the running counts made once for all of them."""
        cumulative = list(accumulate(self.counts))
        if not cumulative[-1]:
            return [None] * len(qs)
        out: list[float | None] = []
        for q in qs:
            pos = min(1.0, max(0.0, q)) * (cumulative[-1] - 1)
            lo = int(pos)
            hi = min(lo + 1, cumulative[-1] - 1)
            # the value of 0-based rank k: the first bin whose cumulative count exceeds k
            v_lo, v_hi = (bisect_right(cumulative, k) / HC_BINS_PER_MM for k in (lo, hi))
            out.append(round(v_lo + (v_hi - v_lo) * (pos - lo), 2))
        return out


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
    per plane instead of every frame. Latency percentiles use the most recent frames.

    Per plane: frames, best confidence and, where the audit ran, best quality score. The
    criteria frames failed are counted (the exam's most frequent deficiencies; a blank
    frame's only once scanning goes on after it), but not those the audit withheld from
    its advice (`not_counted`: "Zoom in" on a box whose scale is a calibration fixed for
    one depth, where an officer coaching it would break every HC after it). Head
    biometry counts every measured frame, keeps its HC in a fixed-size histogram (the
    spread; `HcHistogram`) and keeps the `BEST_HEADS` best-quality measured frames, from
    which the exam's age is given.
    """

    LATENCY_WINDOW = 10_000
    BEST_HEADS = 5
    MAX_CRITERIA = 32

    def __init__(self) -> None:
        self.frames = 0
        self.failed = 0
        self.planes: dict[str, list] = {}
        self.latencies: deque[float] = deque(maxlen=self.LATENCY_WINDOW)
        self.model_tags: dict[str, None] = {}
        self.measured = 0  # head frames measured, every one of the exam
        self.hc_spread = HcHistogram()
        # min-heap of (rank, -frame number, hc, bpd, ofd)
        self.best_heads: list[tuple[float, int, float, float, float]] = []
        self.head_declined: dict[str, int] = {}
        self.deficiencies: dict[str, int] = {}
        # Faults the audit withheld from its advice (`withheld`): seen, not to be coached.
        self.not_counted: dict[str, int] = {}
        # The scales the measured heads were measured at (biometry `scale`): frames by kind
        self.head_scales: dict[str, int] = {}
        # Whether the screen's shape was known when the heads were measured (biometry
        # `shape`): the answers seen
        self.head_shapes: set[str] = set()
        # The `[source] stretch` that undoes the picture's stretch, as the last head refused
        # for it named it (biometry `stretch_setting`); None: none named. The box's own: the
        # exam's card and report say it, its summary to the district does not.
        self.stretch_setting: float | None = None
        # The grabber's frame size that setting is for ("720x576", biometry
        # `stretch_frame`), named by the same head; None: not named (an older box's head)
        self.stretch_frame: str | None = None
        # Faults of frames without ultrasound since the last frame with it: counted when
        # scanning goes on, left out if it does not. An exam ended by a gap ends with
        # `end_gap_s` of the probe in the air, whose "no image" and "washed out" frames
        # were its most frequent faults, to the district, though no one was scanning.
        self._blank_faults: dict[str, int] = {}

    def add(self, r: dict) -> None:
        self.frames += 1
        tag = r.get("model")
        if isinstance(tag, str) and tag and len(self.model_tags) < 16:
            self.model_tags[tag] = None
        if r.get("error"):
            self.failed += 1
            return
        lat = r.get("latency_ms")
        if finite_number(lat):
            self.latencies.append(float(lat))
        plane = r.get("plane")
        if not isinstance(plane, str):
            return
        label = plane if plane in PLANES or plane == UNCERTAIN else "other"
        entry = self.planes.setdefault(label, [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], confidence_of(r))
        score = quality_score(r)
        if score is not None:
            if len(entry) == 2:
                entry.append(score)
            entry[2] = max(entry[2], score)
            self._add_deficiencies(r["quality"].get("criteria"), r["quality"].get("withheld"))
        self._add_biometry(r.get("biometry"), head_rank(r))

    def _add_deficiencies(self, criteria, withheld) -> None:
        if not isinstance(criteria, dict):
            return
        # a replayed journal row may hold anything
        withheld = {w for w in withheld if isinstance(w, str)} \
            if isinstance(withheld, list) else set()
        content = criteria.get("content")
        blank = isinstance(content, dict) and content.get("pass") is False
        if not blank:
            for key, n in self._blank_faults.items():
                self._count_fault(self.deficiencies, key, n)
            self._blank_faults.clear()
        table = self._blank_faults if blank else self.deficiencies
        for name, c in criteria.items():
            if isinstance(c, dict) and c.get("pass") is False and isinstance(name, str):
                self._count_fault(self.not_counted if name in withheld else table,
                                  name[:24], 1)

    def _count_fault(self, table: dict[str, int], key: str, n: int) -> None:
        if key in table or len(table) < self.MAX_CRITERIA:
            table[key] = table.get(key, 0) + n

    def best_head_keys(self) -> set[int]:
        """The best heads' frame keys: the count of frames added when each was added."""
        return {-item[1] for item in self.best_heads}

    def median_head(self) -> tuple[int, float, float, float] | None:
        """(key, HC, BPD, OFD) of the best head whose HC is the exam's (the median of the
        best heads, `biometry`), or the nearest to it where the median falls between two
        (an even number of best heads); of two as near, the better ranked, then the
        earlier. None without a measured head. The report shows this frame: its HC is
        the one reported, where the best frame of the head plane may show another head."""
        if not self.best_heads:
            return None
        median = percentile([item[2] for item in self.best_heads], 0.5)
        _rank, minus_key, hc, bpd, ofd = min(
            self.best_heads, key=lambda item: (abs(item[2] - median), -item[0], -item[1]))
        return -minus_key, hc, bpd, ofd

    def remeasure_head(self, key: int, hc: float, bpd: float, ofd: float) -> None:
        """Put a best head's measurement taken again (the segmenter's own passes) in place
        of its live one; its rank, hence the heap's order, stays."""
        for i, item in enumerate(self.best_heads):
            if -item[1] == key:
                self.best_heads[i] = (item[0], item[1], float(hc), float(bpd), float(ofd))

    def _add_biometry(self, bio, rank: float) -> None:
        if not isinstance(bio, dict) or not isinstance(bio.get("status"), str):
            return
        mm = [bio.get(k) for k in ("hc_mm", "bpd_mm", "ofd_mm")]
        if bio["status"] in MEASURED and all(finite_number(v) and 0 < v < MAX_HEAD_MM for v in mm):
            hc, bpd, ofd = (float(v) for v in mm)
            self.measured += 1
            scale = bio.get("scale")
            if scale in HEAD_SCALES:
                self.head_scales[scale] = self.head_scales.get(scale, 0) + 1
            shape = bio.get("shape")
            if shape in HEAD_SHAPES:
                self.head_shapes.add(shape)
            self.hc_spread.add(hc)
            item = (rank, -self.frames, hc, bpd, ofd)  # equal rank: the earlier frame stays
            if len(self.best_heads) < self.BEST_HEADS:
                heapq.heappush(self.best_heads, item)
            elif item > self.best_heads[0]:
                heapq.heapreplace(self.best_heads, item)
        elif len(self.head_declined) < 8 or bio["status"] in self.head_declined:
            status = bio["status"][:24]
            self.head_declined[status] = self.head_declined.get(status, 0) + 1
            if status == SCREEN_STRETCHED:
                setting = setting_read_back(bio.get("stretch_setting"))
                if setting is not None:  # a head of an older box's journal names none
                    self.stretch_setting = setting
                    self.stretch_frame = frame_read_back(bio.get("stretch_frame"))
                if self.measured:
                    self._void_heads(status)

    def _void_heads(self, status: str) -> None:
        """The heads measured so far come through the same grabber as the frame found
        stretched: the fan is seen only on some frames, after some heads were measured,
        and those are as wrong. They are counted as declined, and their figures dropped."""
        self.head_declined[status] += self.measured
        self.measured = 0
        self.best_heads.clear()
        self.hc_spread = HcHistogram()
        self.head_scales.clear()
        self.head_shapes.clear()

    def biometry(self) -> dict | None:
        """The exam's head biometry. HC, BPD, OFD and the age are the medians of the best
        measured head frames (by quality score, or by confidence without the audit): the
        frames a sonographer would have frozen. The age range is the age of the lowest and
        the highest HC among those frames, i.e. the spread of the measurement, not the
        biological spread of dating by HC. HC p10/p90 span every measured frame."""
        if not self.measured and not self.head_declined:
            return None
        out: dict = {"measured": self.measured,
                     "declined": dict(sorted(self.head_declined.items()))}
        if self.measured:
            hc, bpd, ofd = (sorted(col) for col in zip(*[b[2:] for b in self.best_heads],
                                                       strict=True))
            median_hc = percentile(hc, 0.5)
            ga, low, high = (hadlock_ga_weeks(v) for v in (median_hc, hc[0], hc[-1]))
            p10, p90 = self.hc_spread.percentiles(0.1, 0.9)
            if self.head_scales:  # the kind of most frames (a box uses one kind)
                out["scale"] = min(self.head_scales.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            if self.head_shapes:
                # checked once is checked for the screen's every head: its shape is that of
                # the heads before the verdict too (a stretched one voids them instead)
                out["shape"] = (SHAPE_CHECKED if SHAPE_CHECKED in self.head_shapes
                                else SHAPE_UNCHECKED)
            out.update({"hc_mm": median_hc, "hc_p10_mm": p10, "hc_p90_mm": p90,
                        "bpd_mm": percentile(bpd, 0.5),
                        "ofd_mm": percentile(ofd, 0.5), "best_frames": len(hc),
                        "ga_weeks": None if ga is None else round(ga, 1),
                        "ga_low_weeks": None if low is None else round(low, 1),
                        "ga_high_weeks": None if high is None else round(high, 1)})
        return out

    def top_deficiencies(self, n: int = 3, table: dict[str, int] | None = None
                         ) -> dict[str, int]:
        """The `n` faults of most frames (of `table`, the deficiencies by default)."""
        counts = self.deficiencies if table is None else table
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])

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
        deficiencies = self.top_deficiencies()
        not_counted = self.top_deficiencies(table=self.not_counted)
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
            "planes": {k: [v[0], round(v[1], 3), *[floor_digits(q, 3) for q in v[2:]]]
                       for k, v in sorted(self.planes.items())},
            "latency_ms": {"p50": percentile(latencies, 0.5), "p90": percentile(latencies, 0.9)},
            "models": _model_versions([{"model": t} for t in self.model_tags],
                                      model_versions),
            **({"deficiencies": deficiencies} if deficiencies else {}),
            **({"deficiencies_not_counted": not_counted} if not_counted else {}),
            **({"biometry": head} if head is not None else {}),
        }


def confidence_of(r: dict) -> float:
    """The result's plane confidence, 0 where it is missing or not a number."""
    conf = r.get("plane_confidence")
    return min(1.0, max(0.0, float(conf))) if finite_number(conf) else 0.0


def head_rank(r: dict) -> float:
    """How a measured head ranks among an exam's best heads: the audit's score, or the plane
    confidence where the audit did not run."""
    score = quality_score(r)
    return confidence_of(r) if score is None else score


def quality_score(r: dict) -> float | None:
    """The audit's score of a result dict, or None where the audit did not run."""
    quality = r.get("quality")
    if not isinstance(quality, dict):
        return None
    score = quality.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
        return None
    return float(score)


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

    Per plane: frames classified as that plane, the best confidence and the best quality
    seen. Failed frames (``error`` set) count separately. The result is well under 1 KB as
    JSON (checked, and shed if it must be, in ``edge.uplink.messages.build_exam``).
    """
    tally = ExamTally()
    for r in results:
        tally.add(r)
    return tally.body(source, started_ts, ended_ts, started_mono, ended_mono,
                      model_versions, exam_id)


