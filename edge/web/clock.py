"""The box's clock, set from the midwife's phone.

A Raspberry Pi without its RTC battery and without network time boots at the time it was
switched off (fake-hwclock), so a clinic box offline for weeks dates every exam weeks early:
its report, its age by dates and the district's counts. The phone in her hand has the
network's time. The page shows how far the box's clock is behind the phone's, and a tap
moves it forward (`POST /api/clock`), where the service may (CAP_SYS_TIME:
board/sonoedge.service) and the kernel's clock is not kept by network time already."""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from edge.store.state import write_json
from edge.web.settings import CLOCK_MOVE_DAYS_MAX
from wire.schema import MAX_WALL_TS, finite_number

log = logging.getLogger(__name__)

CAP_SYS_TIME = 25  # linux/capability.h
# The last time the page set the clock, in the state dir: every health message says it
# (edge/loop.py), so the district knows the box's exams before it were dated by a clock behind.
CLOCK_SET_FILE = "clock-set.json"
TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised (no network time disciplines it)
# A phone's time before this software's first release is not a clock that may set the
# box's (stricter than the date form's PHONE_DAYS, edge/exam/screening.py: a period's date
# typed on a phone of 2024 is still a date); past the wire's last time (2100), neither.
EARLIEST_S = 1_735_689_600.0  # 2025-01-01 UTC
LATEST_S = float(MAX_WALL_TS)


class ClockRefused(Exception):
    """Not set: `status` is the HTTP answer, `name` the refusal's (the page's words), the
    text one line in the device's."""

    def __init__(self, status: int, name: str, text: str):
        super().__init__(text)
        self.status = status
        self.name = name


@dataclass(frozen=True)
class ClockRules:
    """What a tap may do (`[web] clock_off_s`, `clock_max_move_days`)."""
    off_min_s: float  # nearer than this the clock is left alone
    max_move_s: float  # a tap moves it at most this far
    settable: bool  # the process holds CAP_SYS_TIME
    not_after: float | None = None  # the page's provisioned certificate ends then


def can_set_clock(status_file: Path = Path("/proc/self/status")) -> bool:
    """Whether this process holds CAP_SYS_TIME (root does; the service is granted it)."""
    try:
        for line in status_file.read_text(errors="replace").splitlines()[:80]:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1][:16], 16) >> CAP_SYS_TIME & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def clock_synchronised() -> bool:
    """Whether network time (systemd-timesyncd, chrony, ntpd) keeps the kernel's clock: then
    it is right, and a phone that disagrees is the one that is wrong (a time zone set by
    hand moves its clock by whole hours). Reading needs no privilege."""
    try:
        state = _libc().adjtimex(ctypes.create_string_buffer(512))
    except (OSError, AttributeError):
        return False
    return 0 <= state < TIME_ERROR


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def read_phone_s(value: object) -> float:
    """The page's `phone_ms` (the phone's Date.now()) as seconds; ValueError naming it."""
    if not finite_number(value) or not EARLIEST_S <= value / 1000 < LATEST_S:
        raise ValueError("phone_ms must be the phone's time in milliseconds since 1970, "
                         "between 2025 and 2100")
    return value / 1000


def set_from_phone(phone_s: float, rules: ClockRules) -> float:
    """Moves the box's clock forward to the phone's when it is `off_min_s` or more behind
    (a phone's network time is seconds off; a nearer clock is left alone, so a tap cannot
    move a right clock by a phone's own error), at most `max_move_s`, never past the page's
    certificate, and never when network time keeps it. Never back: a box without its RTC
    battery boots behind, and a clock set back would leave the page's certificate not yet
    valid and the journal's times out of order. Returns how far it moved, seconds;
    ClockRefused otherwise."""
    moved = phone_s - time.time()
    if clock_synchronised():
        raise ClockRefused(409, "clock-synced", "the box's clock is kept by network time: "
                                                "check the phone's date, time and time zone")
    if abs(moved) < rules.off_min_s:
        raise ClockRefused(409, "clock-near", f"the box's clock is within "
                                              f"{rules.off_min_s / 60:.0f} min of the phone's: "
                                              "left as it is")
    if moved < 0:
        raise ClockRefused(409, "clock-ahead", "the box's clock is ahead of the phone's: it "
                                               "is never set back (its certificate would not "
                                               "be valid yet, its journal out of order): tell "
                                               "the district")
    if moved > rules.max_move_s or (rules.not_after is not None
                                    and phone_s >= rules.not_after):
        raise ClockRefused(409, "clock-far", f"the phone's time is {moved / 86400:.0f} days "
                                             "ahead of the box's, more than a tap may move it "
                                             "(or past the page's certificate): tell the "
                                             "district")
    if not rules.settable:
        raise ClockRefused(403, "clock-denied", "this box may not set its clock (its service "
                                                "lacks CAP_SYS_TIME): tell the district")
    try:
        time.clock_settime(time.CLOCK_REALTIME, phone_s)
    except OSError as exc:
        raise ClockRefused(403, "clock-denied", f"the box could not set its clock: "
                                                f"{exc.strerror or exc}") from None
    log.warning("web: the box's clock was set forward %.0f s (%.1f days) to the page's phone's",
                moved, moved / 86400)
    return moved


def record_set(state_dir: Path, moved_s: float) -> None:
    """Keeps when the clock was set (by the clock now right) and by how much. A full or
    read-only disk loses only this note: the clock is set."""
    path = Path(state_dir) / CLOCK_SET_FILE
    try:
        write_json(path, {"ts": round(time.time(), 3), "moved_s": round(moved_s, 3)})
    except OSError as exc:
        log.warning("web: the clock was set, but %s was not written (%s)", path,
                    exc.strerror or exc)


def last_set(state_dir: Path) -> dict:
    """`{"clock_set_ts", "clock_moved_s"}` of the last set for a health message's figures,
    or {} (none, or a file that is not one `record_set` wrote: read as hostile input)."""
    try:
        with open(Path(state_dir) / CLOCK_SET_FILE, "rb") as f:
            data = json.loads(f.read(1024))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    ts, moved = data.get("ts"), data.get("moved_s")
    if not (finite_number(ts) and EARLIEST_S <= ts < LATEST_S and finite_number(moved)
            and 0 < moved <= CLOCK_MOVE_DAYS_MAX * 86400):
        return {}
    return {"clock_set_ts": float(ts), "clock_moved_s": float(moved)}
