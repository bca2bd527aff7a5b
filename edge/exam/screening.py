"""Head-shape flags for the midwife: a screening aid, never a diagnosis.

Two signals that the device's own head biometry supports:

- **Cephalic index** CI = 100 x BPD / OFD. Hadlock, Deter, Carpenter and Park, "Estimating
  fetal age: effect of head shape on BPD", AJR 1981;137:83-85: mean 78.3 in 316 scans at
  14-40 weeks, and a CI more than 1 SD from the mean (below 74, above 83) "may be associated
  with a significant alteration in the BPD" (so 1 SD is about 4.4). We flag outside the
  mean +/- 2 SD (70-87), where about 1 normal head in 20 falls, not at 1 SD, where one in
  three would: a flag the midwife sees on every third woman would soon be ignored.
  The device's BPD is outer-to-outer (see README, "Head biometry"); the usual BPD of the
  era is outer-to-inner, about one skull wall shorter. We convert with Wong et al.,
  Australas J Ultrasound Med 2018;21:161-168 (543 fetuses, 14-40 weeks):
  BPDoi = -0.403 + 0.9714 BPDoo (mm), before taking the ratio. Without it our CI would read
  about 2-3 points higher than Hadlock's. Whether Hadlock's OFD was outer-to-outer is not
  stated in the abstract; ours is, so a small bias may remain.
- **HC against the age from dates** (the last menstrual period, entered by the midwife).
  The age the head size gives (Hadlock et al., Radiology 1984;152:497-501, the device's
  formula) is compared with the age from dates. The flag is raised where ACOG Committee
  Opinion 700 (2017), "Methods for estimating the due date", would have the scan overrule
  the dates: a difference of more than 7 days at 14-15 weeks, 10 days at 16-21, 14 days at
  22-27, 21 days from 28 weeks. A difference that large means the dates are wrong or the
  head is small or large for its age: either way the woman needs a closer look.

What this data does not support is said in the README: the CNS anomalies of the study this
product cites (anencephaly, encephalocele, holoprosencephaly, rachischisis) were classified
from labelled cases, and we have none.
"""

from __future__ import annotations

import datetime as dt
import math

from edge.models.biometry import SCALE_FRAME, SCALE_RULER
from wire.dating import HADLOCK_1984_WEEKS, dates_flag, hadlock_ga_weeks, hadlock_hc_mm, redate_days
from wire.schema import finite_number, number_or_none

CI_MEAN, CI_SD = 78.3, 4.4  # Hadlock et al. 1981; SD from the abstract's 1 SD bounds 74/83
CI_LOW, CI_HIGH = round(CI_MEAN - 2 * CI_SD), round(CI_MEAN + 2 * CI_SD)  # 70, 87
# Wong et al. 2018: outer-to-inner BPD from outer-to-outer (mm)
BPD_OI_FROM_OO = (-0.403458, 0.9714153)
MAX_LMP_DAYS = 45 * 7  # a date further back is a typing slip, not a pregnancy
# The exam's measured head frames disagree when their HC's 10th-90th percentile spans more
# than this share of its median. Ours, a judgement: one head's frames measured by the box
# agree to a few percent (the walk's still head: 165.4-165.5 mm), while a change of the
# scanner's depth after calibration rescales every HC by the depth ratio (the walk's
# 1/0.7 moved 165 mm to 236 mm, +43%), and so does a second head (another woman).
HC_FRAMES_SPREAD = 0.10


def cephalic_index(bpd_mm: float | None, ofd_mm: float | None) -> dict | None:
    """The CI with the outer-to-inner conversion, and whether it is outside 70-87."""
    if not bpd_mm or not ofd_mm or bpd_mm <= 0 or ofd_mm <= 0:
        return None
    a, b = BPD_OI_FROM_OO
    bpd_oi = a + b * float(bpd_mm)
    ci = 100.0 * bpd_oi / float(ofd_mm)
    flag = "low" if ci < CI_LOW else "high" if ci > CI_HIGH else None
    return {"ci": round(ci, 1), "ci_outer_outer": round(100.0 * bpd_mm / ofd_mm, 1),
            "low": CI_LOW, "high": CI_HIGH, "flag": flag}


def hc_for_weeks(weeks: float) -> float | None:
    """The HC (mm) at which Hadlock 1984's formula gives `weeks` (its inverse)."""
    lo_w, hi_w = HADLOCK_1984_WEEKS
    if not lo_w <= weeks <= hi_w:
        return None
    return hadlock_hc_mm(weeks)


# The days a phone's date can be: one whose clock was never set may say 1970,
# and a day moved back by the days since an exam must stay a date (not before year 1).
PHONE_DAYS = (dt.date(2000, 1, 1), dt.date(2099, 12, 31))


def _date(name: str, value: object) -> dt.date:
    """One of the page's dates, or ValueError naming it (not Python's own words)."""
    try:
        return dt.date.fromisoformat(value if isinstance(value, str) and len(value) <= 10
                                     else "")
    except ValueError:
        raise ValueError(f"{name} must be a date, YYYY-MM-DD") from None


def _weeks_between(first: dt.date, now: dt.date) -> float:
    days = (now - first).days
    if not 0 <= days <= MAX_LMP_DAYS:
        raise ValueError("the last menstrual period must be within the last 45 weeks")
    return days / 7.0


def ga_from_lmp(lmp: str, today: str) -> float:
    """Weeks from the last menstrual period to today (both ISO dates, from the midwife's
    phone: the box may have no real-time clock). ValueError for an impossible pair."""
    return _weeks_between(dt.date.fromisoformat(lmp), dt.date.fromisoformat(today))


class PhoneDateError(ValueError):
    """The tablet's own date is not one a phone's can be (a clock never set: 1970): the
    page says so in the midwife's language, not that the period she typed is wrong."""


def read_lmp(lmp: object, today: object) -> tuple[str, str, float]:
    """The page's two dates, checked (strings of at most 10 characters, ISO dates, a phone's
    date within PHONE_DAYS, a period within MAX_LMP_DAYS before it): (lmp, today) as
    YYYY-MM-DD and the weeks between. ValueError, with a message for the midwife's page
    that names the field, for anything else; PhoneDateError, a ValueError, for the phone's
    own date (the page names it apart: edge/web/server.py's REFUSED header)."""
    first, now = _date("lmp", lmp), _date("today", today)
    if not PHONE_DAYS[0] <= now <= PHONE_DAYS[1]:
        raise PhoneDateError(f"today must be a date from {PHONE_DAYS[0].year} to "
                             f"{PHONE_DAYS[1].year}: is the phone's date set?")
    return first.isoformat(), now.isoformat(), _weeks_between(first, now)


def day_of_exam(today: object, ended_ts: object, now: float) -> object:
    """The day the age by dates is taken on for an exam that has ended: the tablet's date
    (`today`, YYYY-MM-DD; the box may have no real-time clock), moved back by the whole
    days since the exam ended by the box's own clock, which keeps time between the two
    even when it is wrong. Entered a week late on the report, the age is the baby's at the
    scan, not a week older. A box clock that puts the exam in the future or more than
    MAX_LMP_DAYS back (a reboot without a clock) moves nothing; anything but a date is
    returned as it came, for `read_lmp` to refuse."""
    if not isinstance(today, str) or len(today) > 10 or not finite_number(ended_ts):
        return today
    days = math.floor((now - ended_ts) / 86400.0)
    if not 0 < days <= MAX_LMP_DAYS:
        return today
    try:
        return (dt.date.fromisoformat(today) - dt.timedelta(days=days)).isoformat()
    except (ValueError, OverflowError):  # not a date, or one the days would move before 1 AD
        return today


def read_dates(dates: dict | None) -> dict | None:
    """The dates kept with an exam (`{"lmp", "today"}`, from the journal), if they are two
    ISO dates the page would accept, with the age by dates on their `today` (the exam's day);
    None otherwise."""
    if not isinstance(dates, dict):
        return None
    try:
        lmp, today, weeks = read_lmp(dates.get("lmp"), dates.get("today"))
    except ValueError:
        return None
    return {"lmp": lmp, "today": today, "ga_dates_weeks": round(weeks, 2)}


# Two ages by dates are the same age when they round alike: the page, the summary and a
# correction all give them to 0.01 week (read_dates), so closer than that is one entry.
SAME_WEEKS = 0.005


def same_weeks(a: float | None, b: float | None) -> bool:
    """Whether two ages by dates (None: none) are the same: what the district was told
    against what the box now keeps (`loop.tell_district_dates`, the report's line)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) < SAME_WEEKS


def hc_against_dates(hc_mm: float | None, ga_dates_weeks: float | None) -> dict | None:
    """HC against the age from dates: the expected HC, the age the HC gives, the
    difference in days, ACOG's tolerance at that age, and `small`/`large` when beyond it."""
    if ga_dates_weeks is None:
        return None
    out: dict = {"ga_dates_weeks": round(ga_dates_weeks, 1), "flag": None}
    expected = hc_for_weeks(ga_dates_weeks)
    out["hc_expected_mm"] = None if expected is None else round(expected, 1)
    tolerance = redate_days(ga_dates_weeks)
    out["tolerance_days"] = tolerance
    if tolerance is None or expected is None:
        out["status"] = "dates_out_of_range"  # Hadlock 1984 covers 14-42 weeks
        if hc_mm:  # no expected HC, but a head far past the span's end still disagrees
            out["hc_mm"] = float(hc_mm)
            out["flag"] = dates_flag(hc_mm, ga_dates_weeks)
            ga_hc = hadlock_ga_weeks(hc_mm)
            out["ga_hc_weeks"] = None if ga_hc is None else round(ga_hc, 1)
        return out
    if not hc_mm:
        out["status"] = "no_hc"
        return out
    ga_hc = hadlock_ga_weeks(hc_mm)
    out["hc_mm"] = float(hc_mm)  # rounded once, where it is shown (a 0.1 mm step first
    # made 200.49 mm read "201" in the flag and "200" beside it)
    # the flag is the one rule the district lists too (wire.dating.dates_flag)
    out["flag"] = dates_flag(hc_mm, ga_dates_weeks)
    if ga_hc is None:  # HC outside the formula's 14-42 weeks: far from any expected HC
        out.update(status="ok", ga_hc_weeks=None)
        return out
    diff = (ga_hc - ga_dates_weeks) * 7.0
    out.update(status="ok", ga_hc_weeks=round(ga_hc, 1), difference_days=round(diff))
    return out


def hc_frames(bio: dict) -> dict | None:
    """Whether the exam's measured head frames agree (`HC_FRAMES_SPREAD`): their HC's
    10th-90th percentile and its share of the median. A box's calibration holds for one
    depth of the scanner: after a change of depth its HC jumped from 165 to 236 mm between
    neighbouring frames without a word, and the exam's median mixed both (a midwife's
    walk). `depth_read`: each head's scale was read on its own frame (the scanner's depth
    ruler, or a recording's own scale), so a change of depth does not explain a spread and
    the flag must not tell her to set the depth back; False for a fixed calibration, and for
    an exam journaled before its summary said its scale (every box had a calibration)."""
    hc, p10, p90 = (bio.get(k) for k in ("hc_mm", "hc_p10_mm", "hc_p90_mm"))
    if not all(finite_number(v) and v > 0 for v in (hc, p10, p90)):
        return None
    spread = (p90 - p10) / hc
    return {"p10_mm": round(p10, 1), "p90_mm": round(p90, 1), "spread": round(spread, 3),
            "flag": spread > HC_FRAMES_SPREAD,
            "depth_read": bio.get("scale") in (SCALE_RULER, SCALE_FRAME)}


def dating_tolerance_days(ga_weeks: object) -> int | None:
    """How many days either way a scan at this age dates a pregnancy to, or None where no
    age was given: ACOG Committee Opinion 700's redating thresholds (`wire.dating`), the
    discrepancy within which the scan is not trusted over the dates. "GA 19w 4d" alone
    read as exact to the day; it is 19w 4d give or take 10 days."""
    weeks = number_or_none(ga_weeks)
    if weeks is None:
        return None
    # the band of the age as it is said, to the day (half up, as the card and the report
    # round it): 21.95 weeks is said "22w 0d", and ACOG's band from 22w 0d is 14 days, not
    # the 10 of 21.95 weeks ("22w 0d ± 10 days" read against the rule it cites)
    return redate_days(math.floor(weeks * 7 + 0.5) / 7)


def screening(biometry: dict | None, ga_dates_weeks: float | None) -> dict:
    """The flags from an exam's biometry (medians of its best head frames): head shape,
    head size against the dates, and whether its head frames agree; and how far its age
    by HC may be from the true one."""
    bio = biometry or {}
    return {"cephalic_index": cephalic_index(bio.get("bpd_mm"), bio.get("ofd_mm")),
            "hc_dates": hc_against_dates(bio.get("hc_mm"), ga_dates_weeks),
            "hc_frames": hc_frames(bio),
            "ga_tolerance_days": dating_tolerance_days(bio.get("ga_weeks"))}
