"""The dating references the device and the district both compute with, so that they give
one answer: Hadlock 1984's age from HC (the `ga_weeks` of every exam summary) with its
inverse, and ACOG's tolerance before a scan overrules the dates (the HC-for-dates flag the
midwife sees, which the district lists beside its own centiles).

Hadlock FP, Deter RL, Harrist RB, Park SK. "Estimating fetal age: computer-assisted
analysis of multiple fetal growth parameters." Radiology 1984;152(2):497-501: a
cross-sectional study of 361 fetuses between 14 and 42 menstrual weeks; HC-only model
GA (weeks) = 8.96 + 0.540 HC + 0.0003 HC^3 with HC in cm. Sources checked: the paper's
abstract (the full text is paywalled and was not read); Hadlock's HC-for-age table as
reproduced by medicalalgorithms.com ("from Hadlock (1984)": HC 17.0 cm at 19.5 weeks, 34.6
cm at 40 weeks; the formula gives 19.6 and 40.1); and independent implementations quoting
the same coefficients.

ACOG Committee Opinion 700 (2017), "Methods for estimating the due date": redate when the
scan's age differs from the dates by more than 7 days at 14-15 6/7 weeks, 10 days at
16-21 6/7, 14 days at 22-27 6/7 and 21 days from 28 weeks.
"""

from __future__ import annotations

import math

HADLOCK_1984 = (8.96, 0.540, 0.0, 0.0003)  # c0 + c1 x + c2 x^2 + c3 x^3, x = HC in cm
HADLOCK_1984_WEEKS = (14.0, 42.0)  # the study's age span: no estimate outside it
# By the age from dates (weeks, from), the days beyond which the scan overrules the dates.
ACOG_REDATE_DAYS = ((14.0, 7), (16.0, 10), (22.0, 14), (28.0, 21))


def _hadlock(hc_mm: float) -> float:
    x = hc_mm / 10.0
    c0, c1, c2, c3 = HADLOCK_1984
    return c0 + c1 * x + c2 * x * x + c3 * x ** 3


def hadlock_ga_weeks(hc_mm: float | None) -> float | None:
    """Menstrual age in weeks from HC in mm; None outside the study's 14-42 weeks (HC about
    89-358 mm), where it says nothing, rather than an extrapolation."""
    if hc_mm is None or not math.isfinite(hc_mm) or hc_mm <= 0:
        return None
    weeks = _hadlock(hc_mm)
    low, high = HADLOCK_1984_WEEKS
    return weeks if low <= weeks <= high else None


def hadlock_hc_mm(weeks: float) -> float:
    """The HC (mm) at which Hadlock 1984's formula gives `weeks`: its inverse, by bisection
    (the formula is increasing over 1-1000 mm). The caller keeps `weeks` in the formula's
    span where that matters (`hadlock_hc_range_mm`)."""
    lo, hi = 1.0, 1000.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _hadlock(mid) < weeks:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def hadlock_hc_range_mm() -> tuple[float, float]:
    """The HC span (mm) over which `hadlock_ga_weeks` answers (the formula is increasing)."""
    return hadlock_hc_mm(HADLOCK_1984_WEEKS[0]), hadlock_hc_mm(HADLOCK_1984_WEEKS[1])


def redate_days(weeks: float) -> int | None:
    """ACOG's tolerance (days) at this age from dates; None before 14 weeks."""
    found = None
    for start, days in ACOG_REDATE_DAYS:
        if weeks >= start:
            found = days
    return found


def dates_flag(hc_mm: float | None, ga_dates_weeks: float | None) -> str | None:
    """"small" or "large" where the head's age differs from the dates by more than ACOG's
    tolerance, None where it does not or cannot be said (no HC). A head beyond Hadlock's
    span is flagged by which side of the expected HC it lies.

    Dates outside 14-42 weeks have no expected HC, but a head whose own age is past the
    span's near end by more than the tolerance there still disagrees with them: a last
    period 10 weeks ago and a head of 19 weeks said "no reference" and flagged nothing (a
    midwife's walk). A head within the tolerance of the span's end, or beyond it on the
    dates' side, cannot be told apart from them, and is not flagged."""
    if (not hc_mm or ga_dates_weeks is None or not math.isfinite(hc_mm)
            or not math.isfinite(ga_dates_weeks)):
        return None
    low, high = HADLOCK_1984_WEEKS
    if not low <= ga_dates_weeks <= high:
        return _flag_beyond_span(hc_mm, ga_dates_weeks)
    tolerance = redate_days(ga_dates_weeks)
    if tolerance is None:
        return None
    ga_hc = hadlock_ga_weeks(hc_mm)
    if ga_hc is None:
        return "small" if hc_mm < hadlock_hc_mm(ga_dates_weeks) else "large"
    diff = (ga_hc - ga_dates_weeks) * 7.0
    return None if abs(diff) <= tolerance else "small" if diff < 0 else "large"


def _flag_beyond_span(hc_mm: float, ga_dates_weeks: float) -> str | None:
    """`dates_flag` for dates outside Hadlock's 14-42 weeks: measured from the span's end
    nearest the dates, with ACOG's tolerance there."""
    low, high = HADLOCK_1984_WEEKS
    ga_hc = hadlock_ga_weeks(hc_mm)
    if ga_dates_weeks < low:  # the head can only be too large for such dates
        if ga_hc is None:
            return "large" if hc_mm > hadlock_hc_mm(high) else None
        return "large" if (ga_hc - low) * 7.0 > redate_days(low) else None
    if ga_hc is None:
        return "small" if hc_mm < hadlock_hc_mm(low) else None
    return "small" if (high - ga_hc) * 7.0 > redate_days(high) else None
