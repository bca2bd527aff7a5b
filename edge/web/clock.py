"""The box's clock, set from the midwife's phone.

A Raspberry Pi without its RTC battery and without network time boots at the time it was
switched off (fake-hwclock), so a clinic box offline for weeks dates every exam weeks early:
its report, its age by dates and the district's counts. The phone in her hand has the
network's time. The page shows how far the box's clock is off the phone's, and a tap sets it
(`POST /api/clock`), where the service may (CAP_SYS_TIME: board/sonoedge.service)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

log = logging.getLogger(__name__)

CAP_SYS_TIME = 25  # linux/capability.h
# A phone's time before the first release of this software or past 2100 is not a clock.
EARLIEST_S = 1_735_689_600.0  # 2025-01-01 UTC
LATEST_S = 4_102_444_800.0  # 2100-01-01 UTC


class ClockRefused(Exception):
    """Not set: `status` is the HTTP answer, the text one line for the page."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


def can_set_clock(status_file: Path = Path("/proc/self/status")) -> bool:
    """Whether this process holds CAP_SYS_TIME (root does; the service is granted it)."""
    try:
        for line in status_file.read_text(errors="replace").splitlines()[:80]:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1][:16], 16) >> CAP_SYS_TIME & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def read_phone_s(value: object) -> float:
    """The page's `phone_ms` (the phone's Date.now()) as seconds; ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not EARLIEST_S <= value / 1000 < LATEST_S:
        raise ValueError("phone_ms must be the phone's time in milliseconds since 1970, "
                         "between 2025 and 2100")
    return value / 1000


def set_from_phone(phone_s: float, off_min_s: float, settable: bool) -> float:
    """Moves the box's clock forward to the phone's when it is `off_min_s` or more behind
    (a phone's network time is seconds off at most; a nearer clock is left alone, so a tap
    cannot move a right clock by a phone's own error). Never back: a box without its RTC
    battery boots behind, and a clock set back would leave the page's certificate not yet
    valid and the journal's times out of order. Returns how far it moved, seconds;
    ClockRefused otherwise."""
    moved = phone_s - time.time()
    if abs(moved) < off_min_s:
        raise ClockRefused(409, f"the box's clock is within {off_min_s / 60:.0f} min of the "
                                "phone's: left as it is")
    if moved < 0:
        raise ClockRefused(409, "the box's clock is ahead of the phone's: it is never set "
                                "back (its certificate would not be valid yet, its journal "
                                "out of order): tell the district")
    if not settable:
        raise ClockRefused(403, "this box may not set its clock (its service lacks "
                                "CAP_SYS_TIME): ask the district to set it")
    try:
        time.clock_settime(time.CLOCK_REALTIME, phone_s)
    except OSError as exc:
        raise ClockRefused(403, f"the box could not set its clock: "
                                f"{exc.strerror or exc}") from None
    log.warning("web: the box's clock was set from the page's phone, %+.0f s (%s days)",
                moved, f"{moved / 86400:+.1f}")
    return moved
