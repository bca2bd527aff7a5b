"""An exam's head biometry counts every measured head frame, however long the scan, in a
fixed amount of memory: `measured` is the number of head frames measured and HC p10/p90
span all of them (they were taken from the last 10,000 frames only, so a 15-minute head
scan at 15 fps reported 10,000 of its 13,500 frames and forgot its first minutes)."""

import sys

import numpy as np
import pytest

from edge.exam.tally import ExamTally, percentile

# 15 minutes of head scanning at 15 fps
LONG_SCAN = 15 * 60 * 15
# The spread is counted in 0.1 mm bins: within half a bin of the exact percentile, plus the
# summary's rounding to 0.01 mm.
BIN_PRECISION_MM = 0.05 + 0.01


def head_frame(i: int, hc: float, latency_ms: float | None = 10.0) -> dict:
    """A scored head-plane frame whose head was measured at `hc` mm."""
    r = {"source": "live", "frame": i, "plane": "Brain (Tv.)", "plane_confidence": 0.9,
         "error": None, "model": "plane@1",
         "quality": {"score": 0.7, "criteria": {"content": {"pass": True, "value": 0.8}}},
         "biometry": {"status": "ok", "hc_mm": round(hc, 2), "bpd_mm": round(hc / 3.4, 2),
                      "ofd_mm": round(hc / 2.9, 2)}}
    if latency_ms is not None:
        r["latency_ms"] = latency_ms
    return r


def tally_of(hcs) -> ExamTally:
    tally = ExamTally()
    for i, hc in enumerate(hcs):
        tally.add(head_frame(i, float(hc)))
    return tally


def test_a_15_minute_head_scan_counts_all_13500_frames_and_its_spread_spans_them_all():
    rng = np.random.default_rng(32)
    # a head measured a little differently frame by frame, drifting over the scan
    hcs = np.round(rng.normal(240.0, 12.0, LONG_SCAN) + np.linspace(-15, 15, LONG_SCAN), 2)

    bio = tally_of(hcs).biometry()

    assert bio["measured"] == LONG_SCAN == 13_500
    assert bio["hc_p10_mm"] == pytest.approx(np.percentile(hcs, 10), abs=BIN_PRECISION_MM)
    assert bio["hc_p90_mm"] == pytest.approx(np.percentile(hcs, 90), abs=BIN_PRECISION_MM)


def test_the_first_frames_of_a_long_scan_count_in_the_spread():
    """The reviewer's case: 3,500 small heads first (say, another level), then 10,000 at
    250 mm. A quarter of the frames are 150 mm, so p10 is 150 mm, not 250."""
    hcs = [150.0] * 3_500 + [250.0] * 10_000

    bio = tally_of(hcs).biometry()

    assert bio["measured"] == 13_500
    assert bio["hc_p10_mm"] == pytest.approx(150.0, abs=BIN_PRECISION_MM)
    assert bio["hc_p90_mm"] == pytest.approx(250.0, abs=BIN_PRECISION_MM)


def test_the_spread_is_linear_between_ranks_like_percentile():
    """p10/p90 keep `percentile`'s definition: two heads of 170 and 190 mm have p10 172 and
    p90 188 (not 170 and 190); a single head is its own p10 and p90."""
    bio = tally_of([170.0, 190.0]).biometry()
    assert (bio["hc_p10_mm"], bio["hc_p90_mm"]) == (172.0, 188.0)
    assert (bio["hc_p10_mm"], bio["hc_p90_mm"]) == (percentile([170.0, 190.0], 0.1),
                                                    percentile([170.0, 190.0], 0.9))
    one = tally_of([183.4]).biometry()
    assert one["measured"] == 1 and one["hc_p10_mm"] == one["hc_p90_mm"] == 183.4


def test_the_extremes_of_what_a_tally_takes_stay_in_the_spread():
    """Heads near either end of what a tally accepts (0 < HC < 1000 mm) keep their value to
    the bin precision: the bins span the whole range, nothing is cut at a "plausible" HC."""
    bio = tally_of([0.5] * 5 + [999.99] * 5).biometry()
    assert bio["measured"] == 10
    assert bio["hc_p10_mm"] == pytest.approx(0.5, abs=BIN_PRECISION_MM)
    assert bio["hc_p90_mm"] == pytest.approx(999.99, abs=BIN_PRECISION_MM)


def test_memory_does_not_grow_with_the_number_of_frames():
    """After 100,000 head frames, each of a different HC, the tally holds exactly what it
    held after 10: the spread's bins are fixed, the best heads are `BEST_HEADS`, and the
    latencies (the one window kept on purpose: the most recent frames) stop at
    `LATENCY_WINDOW`."""
    def sizes(n: int) -> tuple[ExamTally, dict]:
        tally = ExamTally()
        for i in range(n):
            tally.add(head_frame(i, 50.0 + (i * 0.37) % 350.0))
        held = {name: (len(v), sys.getsizeof(v)) for name, v in vars(tally).items()
                if hasattr(v, "__len__") and name != "latencies"}
        held["hc_spread"] = (len(tally.hc_spread.counts), sys.getsizeof(tally.hc_spread.counts))
        return tally, held

    few, few_held = sizes(10)
    many, many_held = sizes(100_000)

    assert many.measured == 100_000 and few.measured == 10
    assert many_held == few_held
    assert len(many.best_heads) == ExamTally.BEST_HEADS
    assert len(many.latencies) == ExamTally.LATENCY_WINDOW
