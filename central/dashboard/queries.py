"""The numbers behind each page, from the rollups (``store.py``), for one user's scope.

Each page has one function here returning plain rows; the page's plots are drawn from those
rows and its CSV is those rows, so a plot and its CSV cannot disagree. A viewer's scope is
one district: every query that names clinics carries ``clinic_id IN (the district's
clinics)`` as a bound parameter. An admin's scope is every clinic, or one district.
"""

from __future__ import annotations

import calendar
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import NormalDist

from central.dashboard import config as C
from central.dashboard import reference as R
from central.dashboard.store import Db, block_days, clock_offset, seq_block, week_of
from central.db import SEQ_KINDS_SQL, db_clock_sql
from wire.schema import number_or_none, wall_ts_or_none


@dataclass(frozen=True)
class Scope:
    """Whose data: ``district`` None means every clinic (an admin not filtering);
    ``clinic``, one clinic of it (its page), so that each page's query serves it alone."""
    district: str | None
    clinic: str | None = None

    def where(self, column: str = "clinic_id") -> tuple[str, tuple]:
        terms, params = [], []
        if self.district is not None:
            terms.append(f"{column} IN (SELECT clinic_id FROM dash.clinics WHERE district = ?)")
            params.append(self.district)
        if self.clinic is not None:
            terms.append(f"{column} = ?")
            params.append(self.clinic)
        return " AND ".join(terms) or "1 = 1", tuple(params)


@dataclass(frozen=True)
class Period:
    """Whole weeks, Monday to Sunday, the last of them the current one (up to today)."""
    first_day: int
    last_day: int

    @property
    def days(self) -> list[int]:
        return list(range(self.first_day, self.last_day + 1))

    @property
    def first_week(self) -> int:
        return week_of(self.first_day)

    @property
    def last_week(self) -> int:
        return week_of(self.last_day)

    @property
    def weeks(self) -> int:
        return self.last_week - self.first_week + 1

    def previous(self) -> Period:
        """The period of the same length just before: its days as many weeks earlier, so
        this week so far is set against the same weekdays of that week."""
        shift = 7 * self.weeks
        return Period(self.first_day - shift, self.last_day - shift)


# How far this server's clock is ahead of the collector's (seconds; `set_collector_clock`,
# measured by the server at each rollup): 0 until measured, or within COLLECTOR_CLOCK_SKEW_S.
_COLLECTOR_BEHIND_S = 0.0


def set_collector_clock(behind_s: float | None) -> None:
    """The pages count time by the collector's clock from now on where this server's is more
    than COLLECTOR_CLOCK_SKEW_S away from it; None (not known) or less: by their own."""
    global _COLLECTOR_BEHIND_S
    _COLLECTOR_BEHIND_S = behind_s if behind_s is not None and abs(behind_s) > \
        C.COLLECTOR_CLOCK_SKEW_S else 0.0


def district_now() -> float:
    """Now by the clock that stamped every arrival: the collector's (see
    `set_collector_clock`), so that "silent 3 days" and "no collector since" compare like
    with like."""
    return time.time() - _COLLECTOR_BEHIND_S


def collector_clock_behind_s(db: Db) -> float | None:
    """How far the collector's clock (the one last alive) is behind this server's, each
    measured against the database server's clock; None where no collector kept its clock (a
    seed, or a collector older than the table)."""
    if not db.has_collector_table("collector_clocks"):
        return None
    rows = db.query(f"SELECT ahead_s, {db_clock_sql(db.pg)} FROM collector_clocks "
                    "ORDER BY alive_ts DESC LIMIT 1")
    if not rows:
        return None
    ahead, db_now = number_or_none(rows[0][0]), number_or_none(rows[0][1])
    if ahead is None or db_now is None:
        return None
    behind = (time.time() - db_now) - ahead
    # a row no clock could make (its collector's time before 1970 or after 2100) is damage
    return behind if wall_ts_or_none(time.time() - behind) is not None else None


def period(weeks: int, now: float | None = None) -> Period:
    today = int((now if now is not None else district_now()) // C.DAY_S)
    first_week = week_of(today) - weeks + 1
    return Period(first_week * 7 - 3, today)  # week_of(7w - 3) == w: its Monday


def day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * C.DAY_S))


def week_text(week: int) -> str:
    """The Monday that starts a week_of() week."""
    return day_text(week * 7 - 3)


def clinics_in_scope(db: Db, scope: Scope) -> list[str]:
    """Every clinic the scope holds: those with devices, and those the district map lists
    (a clinic whose box never spoke is the most silent of all)."""
    w, p = scope.where()
    rows = db.query(f"SELECT clinic_id FROM dash.device_latest WHERE {w} UNION "
                    f"SELECT clinic_id FROM dash.clinics WHERE {w}", p + p)
    return sorted(r[0] for r in rows)


def clinic_names(db: Db, scope: Scope) -> dict[str, str]:
    """The names the district map gives the scope's clinics (``districts FILE``), by id; a
    clinic loaded without a name (stored under its id) or not loaded at all has none here."""
    w, p = scope.where()
    return {c: n for c, n in db.query(f"SELECT clinic_id, name FROM dash.clinics WHERE {w}", p)
            if n and n != c}


def clinic_districts(db: Db) -> dict[str, str]:
    """Every clinic's district on the map (``districts FILE``), by id."""
    return dict(db.query("SELECT clinic_id, district FROM dash.clinics"))


def first_days(db: Db, scope: Scope) -> dict[str, int]:
    """Each clinic's first day with a message from any of its boxes (a clinic whose boxes
    never sent anything has none). One index lookup per clinic, in one query."""
    w, p = scope.where()
    rows = db.query(
        "SELECT c.clinic_id, (SELECT MIN(d.day) FROM dash.day_device d "
        "WHERE d.clinic_id = c.clinic_id) FROM "
        f"(SELECT clinic_id FROM dash.device_latest WHERE {w} UNION "
        f"SELECT clinic_id FROM dash.clinics WHERE {w}) c", p + p)
    return {c: int(d) for c, d in rows if d is not None}


def clinics_in_no_district(db: Db) -> list[str]:
    """The clinics heard from (a box of theirs is in the rollup) that the district map does
    not list: only a page of every district shows them, with no district, and no viewer
    sees them. Not C.UNREGISTERED: the boxes the registry does not list, not a clinic."""
    return [r[0] for r in db.query(
        "SELECT DISTINCT clinic_id FROM dash.device_latest WHERE clinic_id <> ? AND "
        "clinic_id NOT IN (SELECT clinic_id FROM dash.clinics) ORDER BY clinic_id",
        (C.UNREGISTERED,))]


def districts(db: Db) -> list[str]:
    return [r[0] for r in db.query("SELECT DISTINCT district FROM dash.clinics "
                                   "ORDER BY district")]


# -- sequence gaps ---------------------------------------------------------------------------
@dataclass
class Hole:
    device_id: str
    clinic_id: str
    first_seq: int
    last_seq: int
    after_day: int  # the day of the message before the hole
    before_day: int  # the day of the message after it

    @property
    def size(self) -> int:
        return self.last_seq - self.first_seq + 1


def holes(db: Db, scope: Scope, per: Period, lookback_days: int = C.HOLE_LOOKBACK_DAYS
          ) -> list[Hole]:
    """Holes in each device's sequence (its messages of the SEQ_KINDS: exam, health and
    dates) whose later message falls in the period (holes longer than SEQ_JUMP are broken
    counters, not loss, as the report says). A seq the collector recorded as a re-sent
    duplicate is a row of ``dash.msgs`` too (store.py), so it fills its hole as in the
    report.

    The definition: the device's messages dated from ``lookback_days`` before the period to
    its end, in the scope's clinics, in order of (seq, day, clinic); a hole is between two
    of them next to each other whose seqs are 2 to SEQ_JUMP + 1 apart, the later one dated
    in the period; and before a device's first message here, when that is in the period and
    its seq, 2 to SEQ_JUMP + 1, is the device's lowest ever (a box's first messages lost).

    Only the first and last seq of each run of consecutive seqs count for that, so this
    reads the runs (``dash.seq_runs``: a few per device and week), not every message. A
    block of 7 days the window takes only in part (the current one; another lookback), if
    one of its runs has messages on both sides of the edge, and a block spilled by a box's
    wild seqs are read message by message for that device, as the definition says."""
    first_day, last_day = per.first_day - lookback_days, per.last_day
    if last_day < first_day:
        return []
    w, p = scope.where()
    b0, b1 = seq_block(first_day), seq_block(last_day)
    detail: dict[int, set[str]] = defaultdict(set)  # block -> devices read message by message
    for block, dev in db.query("SELECT block, device_id FROM dash.seq_spill "
                               "WHERE block >= ? AND block <= ?", (b0, b1)):
        detail[int(block)].add(dev)
    runs = []
    for block, dev, clinic, lo, hi, lo_day, hi_day, min_day, max_day in db.query(
            "SELECT block, device_id, clinic_id, lo, hi, lo_day, hi_day, min_day, max_day "
            f"FROM dash.seq_runs WHERE block >= ? AND block <= ? AND {w}", (b0, b1, *p)):
        if max_day < first_day or min_day > last_day:
            continue  # wholly outside the window
        if min_day < first_day or max_day > last_day:
            detail[int(block)].add(dev)  # cut by its edge: its messages decide
        runs.append((int(block), dev, clinic, int(lo), int(hi), int(lo_day), int(hi_day)))
    # per device: (lo, lo_day, clinic, hi, hi_day) of each run, or of each message as a run
    spans: dict[str, list[tuple]] = defaultdict(list)
    for block, dev, clinic, lo, hi, lo_day, hi_day in runs:
        if dev not in detail.get(block, ()):
            spans[dev].append((lo, lo_day, clinic, hi, hi_day))
    for block0, block1 in _ranges(sorted(detail)):
        d0, d1 = max(first_day, block_days(block0)[0]), min(last_day, block_days(block1)[1])
        for dev, seq, day, clinic in db.query(
                "SELECT device_id, seq, day, clinic_id FROM dash.msgs WHERE day >= ? AND "
                f"day <= ? AND kind IN {SEQ_KINDS_SQL} AND {w}", (d0, d1, *p)):
            if dev in detail.get(seq_block(day), ()):
                spans[dev].append((int(seq), int(day), clinic, int(seq), int(day)))
    first_holes, gaps = [], []
    for dev in sorted(spans):
        prev = None
        for lo, lo_day, clinic, hi, hi_day in _seq_components(spans[dev]):
            if lo_day >= per.first_day and prev is None:
                # A box's first messages that never arrived are a hole before its first
                # stored one, as the report counts them (a seq starts at 1): one point query
                # on (device_id, seq) for a box whose first message here is in the period.
                if 1 < lo <= C.SEQ_JUMP + 1 and lo == _lowest_seq(db, dev):
                    first_holes.append(Hole(dev, clinic, 1, lo - 1, lo_day, lo_day))
            elif lo_day >= per.first_day and lo - prev[0] - 1 <= C.SEQ_JUMP:
                gaps.append(Hole(dev, clinic, prev[0] + 1, lo - 1, prev[1], lo_day))
            prev = (hi, hi_day)
    return first_holes + gaps


def _ranges(blocks: list[int]) -> list[tuple[int, int]]:
    """Sorted block numbers as runs of consecutive ones: one read of dash.msgs each."""
    out: list[tuple[int, int]] = []
    for b in blocks:
        if out and b == out[-1][1] + 1:
            out[-1] = (out[-1][0], b)
        else:
            out.append((b, b))
    return out


def _seq_components(spans: list[tuple]) -> list[tuple]:
    """A device's runs (lo, lo_day, clinic, hi, hi_day) merged where they overlap or touch,
    in seq order: each one's first seq with the day and clinic of its first message in
    (seq, day, clinic) order, and its last seq with the day of its last message. Seqs
    inside a run have no hole beside them, so only those ends decide a hole."""
    out: list[tuple] = []
    lo = lo_day = clinic = hi = hi_day = None
    for s_lo, s_lo_day, s_clinic, s_hi, s_hi_day in sorted(spans):
        if lo is not None and s_lo <= hi + 1:
            if s_hi > hi:
                hi, hi_day = s_hi, s_hi_day
            elif s_hi == hi:
                hi_day = max(hi_day, s_hi_day)
            continue
        if lo is not None:
            out.append((lo, lo_day, clinic, hi, hi_day))
        lo, lo_day, clinic, hi, hi_day = s_lo, s_lo_day, s_clinic, s_hi, s_hi_day
    if lo is not None:
        out.append((lo, lo_day, clinic, hi, hi_day))
    return out


def _lowest_seq(db: Db, dev: str) -> int | None:
    first = db.query("SELECT MIN(seq) FROM dash.msgs WHERE device_id = ? "
                     f"AND kind IN {SEQ_KINDS_SQL}", (dev,))[0][0]
    return None if first is None else int(first)


# -- the collectors ---------------------------------------------------------------------------
def collector_alive(db: Db) -> float | None:
    """When a collector last marked itself subscribed to the broker and writing here
    (central/db.py `collectors`); None where none ever has (a collector older than the
    table, or a database no collector wrote)."""
    if not db.has_collector_table("collectors"):
        return None
    return wall_ts_or_none(db.query("SELECT MAX(alive_ts) FROM collectors")[0][0])


def collectors_quiet_since(db: Db, now: float | None = None) -> float | None:
    """When the last collector was alive, where none has been for `COLLECTOR_QUIET_S`:
    nothing a box sent since could have arrived, and a box silent since then may be
    working. None while one runs (or none ever marked itself)."""
    alive = collector_alive(db)
    now = district_now() if now is None else now
    return alive if alive is not None and now - alive > C.COLLECTOR_QUIET_S else None


# -- clinics ---------------------------------------------------------------------------------
@dataclass
class ClinicDay:
    clinic_id: str
    day: int
    exams: int = 0
    health: int = 0
    other: int = 0
    holes: int = 0  # sequence holes whose span touches this day
    missing: int = 0  # messages missing in holes that end this day
    setup_refused: int = 0  # exams ended this day whose heads the box's set-up refused
    withdrawn: int = 0  # exams ended this day the midwife withdrew (in none of the above)

    @property
    def silent(self) -> bool:
        """No message: a withdrawn exam is one (its box was heard), though in no count."""
        return self.exams + self.health + self.other + self.withdrawn == 0


@dataclass
class ClinicsPage:
    period: Period
    clinics: list[str]
    cells: dict[tuple[str, int], ClinicDay]
    devices: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # clinic_names()
    # Each clinic's first day with a message (first_days()); None: not known, every day of
    # the period counts. A clinic missing from a known map has never sent anything.
    first_day: dict[str, int] | None = None
    # The day the collectors went quiet (`collectors_quiet_since`), or None: from that day
    # on the district could not have heard a box, so no day counts as silent.
    quiet_day: int | None = None
    # Each clinic's last day with a message before the period: a silent spell at the
    # period's start began the day after it, not on the period's first day
    last_before: dict[str, int] = field(default_factory=dict)
    # Per clinic, the period's exams whose heads its boxes' set-up refused, by reason
    # (setup_refused)
    setup_refused: dict[str, dict[str, int]] = field(default_factory=dict)
    # Worked out once a clinic: the plot, its hover words and the table under it all read
    # them (three times each over 728 days made a tenth of the two-year page's time).
    _totals: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False,
                                                     compare=False)
    _spells: dict[str, list[SilentSpell]] = field(default_factory=dict, repr=False,
                                                  compare=False)

    def rows(self) -> list[ClinicDay]:
        return [self.cells[(c, d)] for c in self.clinics for d in self.period.days]

    def before_first(self, clinic: str, day: int) -> bool:
        """Before the clinic's first message (its box not yet set up): not silent as a
        working clinic is, so not counted among its silent weekdays."""
        if self.first_day is None:
            return False
        first = self.first_day.get(clinic)
        return first is None or day < first

    def counts(self, clinic: str, day: int) -> bool:
        """A weekday that counts towards silence: weekends are expected to be quiet, today
        may not have begun at the clinic, and before its first message it had no box."""
        return ((day + 3) % 7 < 5 and day != self.period.last_day
                and not self.before_first(clinic, day)
                and (self.quiet_day is None or day < self.quiet_day))

    def silent_weekday(self, clinic: str, day: int) -> bool:
        return self.cells[(clinic, day)].silent and self.counts(clinic, day)

    def totals(self, clinic: str) -> tuple[int, int, int]:
        """(exams, silent weekdays, messages missing) of a clinic over the period."""
        if clinic not in self._totals:
            cells = [self.cells[(clinic, d)] for d in self.period.days]
            self._totals[clinic] = (
                sum(c.exams for c in cells),
                sum(1 for d in self.period.days if self.silent_weekday(clinic, d)),
                sum(c.missing for c in cells))
        return self._totals[clinic]

    def withdrawn(self, clinic: str) -> int:
        """The period's exams of the clinic its midwives withdrew: in no count of the page
        (a withdrawn exam leaves them all), beside them so that a clinic withdrawing many,
        a coaching or misuse signal, shows (dash.withdrawn_exams, as its own page counts)."""
        return sum(self.cells[(clinic, d)].withdrawn for d in self.period.days)

    def setup_faults(self, clinic: str) -> list[str]:
        """`setup_fault_texts` of the clinic's boxes together, over the period."""
        return setup_fault_texts(self.setup_refused.get(clinic, {}), self.totals(clinic)[0])

    def silent_spells(self, clinic: str) -> list[SilentSpell]:
        """The clinic's runs of silent weekdays, oldest first. A weekend inside a run does
        not end it; any message, on any day, does (a box was heard from)."""
        if clinic not in self._spells:
            self._spells[clinic] = self._find_spells(clinic)
        return self._spells[clinic]

    def _find_spells(self, clinic: str) -> list[SilentSpell]:
        spells: list[SilentSpell] = []
        run = None
        heard = False  # a message in the period before this day
        for d in self.period.days:
            if self.silent_weekday(clinic, d):
                if run is None:
                    run = SilentSpell(d, d, 0)
                    if not heard and clinic in self.last_before:
                        run.since_day = self.last_before[clinic] + 1
                run.last_day, run.weekdays = d, run.weekdays + 1
            elif not self.cells[(clinic, d)].silent:
                heard = True
                if run is not None:
                    spells.append(run)
                    run = None
        if run is not None:
            run.ongoing = True
            spells.append(run)
        return spells


@dataclass
class SilentSpell:
    """Weekdays in a row on which no box of a clinic sent anything."""
    first_day: int
    last_day: int
    weekdays: int
    ongoing: bool = False  # no message since: still silent today
    # where it began before the period: the day after the clinic's last message before it
    # (its weekdays count only the period's)
    since_day: int | None = None


@dataclass
class ClinicWeek:
    """A clinic's week, for the plot of a long period (a cell per day would not fit)."""
    clinic_id: str
    week: int
    exams: int = 0
    silent: int = 0  # weekdays with no message, of those that count (ClinicsPage.counts)
    counted: int = 0
    heard: bool = False  # any message that week, weekend included
    before_first: bool = True  # every day before the clinic's first message
    holes: bool = False  # a sequence hole touches one of its days
    missing: int = 0  # messages missing in holes that end that week
    setup_refused: int = 0  # exams whose heads the box's set-up refused (ClinicDay's)


def clinic_weeks(page: ClinicsPage) -> dict[tuple[str, int], ClinicWeek]:
    """The page's days summed per clinic and week (Monday to Sunday, as the period)."""
    out: dict[tuple[str, int], ClinicWeek] = {}
    for clinic in page.clinics:
        for d in page.period.days:
            c = page.cells[(clinic, d)]
            w = out.setdefault((clinic, week_of(d)), ClinicWeek(clinic, week_of(d)))
            w.exams += c.exams
            w.missing += c.missing
            w.setup_refused += c.setup_refused
            w.holes = w.holes or c.holes > 0
            w.heard = w.heard or not c.silent
            w.before_first = w.before_first and page.before_first(clinic, d)
            if page.counts(clinic, d):
                w.counted += 1
                w.silent += int(c.silent)
    return out


def clinics_page(db: Db, scope: Scope, per: Period) -> ClinicsPage:
    clinics = clinics_in_scope(db, scope)
    cells = {(c, d): ClinicDay(c, d) for c in clinics for d in per.days}
    w, p = scope.where()
    for clinic, day, exams, health, other in db.query(
            "SELECT clinic_id, day, SUM(exams), SUM(health), SUM(other) FROM dash.day_device "
            f"WHERE day >= ? AND day <= ? AND {w} GROUP BY clinic_id, day",
            (per.first_day, per.last_day, *p)):
        cell = cells.get((clinic, day))
        if cell is not None:
            cell.exams, cell.health, cell.other = int(exams), int(health), int(other)
    for clinic, day, n in db.query(
            "SELECT clinic_id, day, COUNT(*) FROM dash.withdrawn_exams WHERE day >= ? AND "
            f"day <= ? AND {w} GROUP BY clinic_id, day", (per.first_day, per.last_day, *p)):
        if (clinic, day) in cells:
            cells[(clinic, day)].withdrawn = int(n)
    for h in holes(db, scope, per):
        # the missing messages were made between the messages either side of the hole, on a
        # day the clinic was working: mark those days, not the weekend between them
        span = [cells[(h.clinic_id, d)] for d in range(max(h.after_day, per.first_day),
                                                        h.before_day + 1)
                if (h.clinic_id, d) in cells]
        for cell in [c for c in span if not c.silent] or span[-1:]:
            cell.holes += 1
        if (h.clinic_id, h.before_day) in cells:
            cells[(h.clinic_id, h.before_day)].missing += h.size
    devices: dict[str, list[str]] = defaultdict(list)
    for dev, clinic in db.query(f"SELECT device_id, clinic_id FROM dash.device_latest "
                                f"WHERE {w} ORDER BY device_id", p):
        devices[clinic].append(dev)
    refused: dict[str, dict[str, int]] = defaultdict(dict)
    for clinic, day, reason, n in setup_refused(db, scope, per, "clinic_id"):
        if (clinic, day) in cells:
            cells[(clinic, day)].setup_refused += n
            refused[clinic][reason] = refused[clinic].get(reason, 0) + n
    quiet = collectors_quiet_since(db)
    last_before = {clinic: int(day) for clinic, day in db.query(
        f"SELECT clinic_id, MAX(day) FROM dash.day_device WHERE day < ? AND {w} "
        "GROUP BY clinic_id", (per.first_day, *p)) if day is not None}
    return ClinicsPage(per, clinics, cells, dict(devices), clinic_names(db, scope),
                       first_days(db, scope),
                       None if quiet is None else int(quiet // C.DAY_S), last_before,
                       dict(refused))


def setup_refused(db: Db, scope: Scope, per: Period, by: str) -> list[tuple[str, int, str, int]]:
    """(`by`: a device or clinic id, day, set-up reason, exams) of the exams ended in `per`
    whose heads the box's set-up refused (dash.exams.setup_refused, store.setup_refusal)."""
    w, p = scope.where()
    return [(key, int(day), reason, int(n)) for key, day, reason, n in db.query(
        f"SELECT {by}, day, setup_refused, COUNT(*) FROM dash.exams WHERE day >= ? AND "
        f"day <= ? AND setup_refused IS NOT NULL AND {w} GROUP BY {by}, day, setup_refused",
        (per.first_day, per.last_day, *p))]


def setup_fault_texts(refused: dict[str, int], exams: int) -> list[str]:
    """A sentence per set-up reason that refused the heads of SETUP_FAULT_MIN_EXAMS exams
    or more of `exams` (`refused`: reason -> exams), most first: for a technician, where
    heads declined for the scanning (no head, cut off) are the midwife's, for coaching."""
    return [f"heads not measured in {n} of {max(n, exams)} exams: "
            f"{C.SETUP_REFUSALS.get(reason, reason)}, a set-up fault: send a technician"
            for reason, n in sorted(refused.items(), key=lambda kv: (-kv[1], kv[0]))
            if n >= C.SETUP_FAULT_MIN_EXAMS]


def shape_unchecked_text(n: int, exams: int) -> str:
    """The devices page's flag for a box that measured heads without ever checking the
    picture's shape (a scanner kept zoomed in, or a box that never saw the whole fan)."""
    return (f"picture shape never checked in {n} of {max(n, exams)} exams with heads "
            f"measured: {C.SHAPE_UNCHECKED_ADVICE}")


# -- completeness ----------------------------------------------------------------------------
@dataclass
class ClinicCompleteness:
    clinic_id: str
    exams: int = 0  # every exam received
    with_protocol: int = 0  # exams that name their protocol
    complete: int = 0  # ... and captured every slot of it
    missed: dict[str, int] = field(default_factory=dict)  # "protocol: slot" -> exams
    # "protocol: slot" -> (exams that never found it, exams that found it, never good enough)
    missed_kinds: dict[str, tuple[int, int]] = field(default_factory=dict)
    name: str = ""  # from the district map; "" when it gives none
    # protocol -> [exams, complete]: a one-slot head measurement and a 13-plane screen are
    # complete at very different rates, and one share over both hides the screen's
    protocols: dict[str, list[int]] = field(default_factory=dict)

    @property
    def share(self) -> float | None:
        return self.complete / self.with_protocol if self.with_protocol else None

    def protocol_share(self, protocol: str) -> float | None:
        exams, complete = self.protocols.get(protocol, (0, 0))
        return complete / exams if exams else None

    def least_complete(self, protocols: Iterable[str]) -> list[tuple[int, int, str]]:
        """(whole percent complete, as the page shows it; -exams; protocol) of each of
        `protocols` it did, least complete first (a tie: more exams first). The page's order
        of clinics compares these, as the table's columns show them: a protocol it did not
        do is not among them, so a clinic of head measurements only is ranked by its heads
        alone; and no share over every protocol together, which moves with how many screens
        a clinic does, ranks anything."""
        return sorted((percent(complete / exams), -exams, pr) for pr in protocols
                      for exams, complete in [self.protocols.get(pr, (0, 0))] if exams)

    def slots_missed(self) -> list[SlotMissed]:
        """Its missed slots, by their share of its exams of that slot's protocol, largest
        first: 19 of 55 screens missing the 3VV ranks before 24 of 114 heads unmeasured."""
        out = []
        for key, n in self.missed.items():
            protocol, slot = key.split(": ", 1)
            out.append(SlotMissed(protocol, slot, n, self.protocols.get(protocol, (0, 0))[0],
                                  *self.missed_kinds.get(key, (0, 0))))
        return sorted(out, key=lambda s: (-s.share, -s.missed, s.protocol, s.slot))


@dataclass
class ProtocolCompleteness:
    """One protocol's exams over the page's clinics."""
    protocol: str
    exams: int
    complete: int

    @property
    def share(self) -> float | None:
        return self.complete / self.exams if self.exams else None


@dataclass
class SlotMissed:
    protocol: str
    slot: str
    missed: int
    exams: int  # exams of that protocol: each required the slot
    # Of `missed`: never found (coach where to look), and found but never good enough
    # (coach the image: gain, depth, zoom, steadiness); the rest do not say (`unknown`).
    not_found: int = 0
    poor: int = 0

    @property
    def share(self) -> float:
        return self.missed / self.exams if self.exams else 0.0

    @property
    def unknown(self) -> int:
        """Missed by exams that do not say how: from boxes before they said, or whose
        summary shed it (or the slots' names) to fit 1 KB."""
        return max(0, self.missed - self.not_found - self.poor)


@dataclass
class CompletenessPage:
    period: Period
    clinics: list[ClinicCompleteness]  # by_least_complete(shown)
    slots: list[SlotMissed]
    protocols: list[ProtocolCompleteness] = field(default_factory=list)  # most exams first

    @property
    def shown(self) -> list[ProtocolCompleteness]:
        """The protocols with a chart and a column of their own: the most exams first."""
        return self.protocols[:C.PROTOCOLS_SHOWN]

    def clinics_of(self, protocol: str) -> list[ClinicCompleteness]:
        """The clinics with exams of `protocol`, least complete first."""
        return sorted((c for c in self.clinics if c.protocols.get(protocol, (0,))[0]),
                      key=lambda c: (c.protocol_share(protocol), c.clinic_id))


def completeness_page(db: Db, scope: Scope, per: Period) -> CompletenessPage:
    w, p = scope.where()
    args = (per.first_day, per.last_day, *p)
    wargs = (per.first_week, per.last_week, *p)
    by: dict[str, ClinicCompleteness] = {c: ClinicCompleteness(c)
                                         for c in clinics_in_scope(db, scope)}
    for clinic, exams in db.query(
            "SELECT clinic_id, SUM(exams) FROM dash.day_device "
            f"WHERE day >= ? AND day <= ? AND {w} GROUP BY clinic_id", args):
        by.setdefault(clinic, ClinicCompleteness(clinic)).exams = int(exams)
    per_protocol: dict[str, int] = defaultdict(int)
    per_protocol_complete: dict[str, int] = defaultdict(int)
    for clinic, protocol, exams, complete in db.query(
            "SELECT clinic_id, protocol, SUM(exams), SUM(complete) FROM dash.week_protocol "
            f"WHERE week >= ? AND week <= ? AND {w} GROUP BY clinic_id, protocol", wargs):
        c = by.setdefault(clinic, ClinicCompleteness(clinic))
        c.with_protocol += int(exams)
        c.complete += int(complete)
        c.protocols[protocol] = [int(exams), int(complete)]
        per_protocol[protocol] += int(exams)
        per_protocol_complete[protocol] += int(complete)
    slot_total: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for clinic, protocol, slot, n, not_found, poor in db.query(
            "SELECT clinic_id, protocol, slot, SUM(n), SUM(not_found), SUM(poor) FROM "
            f"dash.week_missing WHERE week >= ? AND week <= ? AND {w} "
            "GROUP BY clinic_id, protocol, slot", wargs):
        c = by.setdefault(clinic, ClinicCompleteness(clinic))
        c.missed[f"{protocol}: {slot}"] = int(n)
        c.missed_kinds[f"{protocol}: {slot}"] = (int(not_found), int(poor))
        for i, v in enumerate((n, not_found, poor)):
            slot_total[(protocol, slot)][i] += int(v)
    slots = sorted((SlotMissed(pr, s, n, per_protocol.get(pr, 0), not_found, poor)
                    for (pr, s), (n, not_found, poor) in slot_total.items()),
                   key=lambda x: (-x.share, x.protocol, x.slot))
    names = clinic_names(db, scope)
    for c in by.values():
        c.name = names.get(c.clinic_id, "")
    protocols = sorted((ProtocolCompleteness(pr, n, per_protocol_complete[pr])
                        for pr, n in per_protocol.items()), key=lambda x: (-x.exams, x.protocol))
    page = CompletenessPage(per, [], slots, protocols)
    page.clinics = by_least_complete(by.values(), [p.protocol for p in page.shown])
    return page


def by_least_complete(clinics: Iterable[ClinicCompleteness], protocols: list[str]
                      ) -> list[ClinicCompleteness]:
    """The completeness table's order: by each clinic's lowest percent complete among
    `protocols` (the table's columns, in whole percent as they show it), least first; the
    same, by its next lowest, and so on; then the more exams of its least complete protocol
    first. A clinic that did none of them comes last. Its id decides the rest."""
    def key(c: ClinicCompleteness) -> tuple:
        least = c.least_complete(protocols)
        return (not least, [x[0] for x in least], [x[1] for x in least], c.clinic_id)
    return sorted(clinics, key=key)


def percent(share: float) -> int:
    """A share in whole percent, rounded as the pages print it ("35%")."""
    return int(f"{share:.0%}"[:-1])


# -- quality ---------------------------------------------------------------------------------
def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval of `k` in `n` at C.QUALITY_FUNNEL_CONFIDENCE: the shares
    that k of n does not rule out. Its low end is above a rate p exactly when k/n is beyond
    the upper control limit of a funnel plot around p at n (Spiegelhalter 2005), so one
    interval says both what the cell's share may be and whether chance explains it."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + C.QUALITY_FUNNEL_CONFIDENCE / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def above_chance(k: int, n: int, rate: float) -> bool:
    """`k` failures in `n` are clearly more than the district's `rate`: enough of them to
    judge (C.QUALITY_CELL_MIN_EXAMS) and their whole interval above it. A share its few
    exams could show by chance at the district's rate is not flagged, however high."""
    return n >= C.QUALITY_CELL_MIN_EXAMS and wilson_interval(k, n)[0] > rate


@dataclass
class PlaneWeek:
    plane: str
    week: int
    exams: int
    mean_quality: float
    below_capture: int  # exams whose best frame of this plane scored under MIN_QUALITY
    district_share: float = 0.0  # QualityPage.district_share: what "above" is judged by

    @property
    def below_share(self) -> float:
        """The share of the exams that found the plane whose best frame of it was not
        captured: what the heatmap colours (a mean of best frames hid them)."""
        return self.below_capture / self.exams if self.exams else 0.0

    @property
    def too_few(self) -> bool:
        """Too few exams found the plane that week for its share to mean anything."""
        return self.exams < C.QUALITY_CELL_MIN_EXAMS

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.below_capture, self.exams)

    @property
    def above(self) -> bool:
        """Clearly above the district's share (`above_chance`): the heatmap's orange."""
        return above_chance(self.below_capture, self.exams, self.district_share)


@dataclass
class Deficiency:
    name: str
    exams: int  # exams that list it among their most failed criteria
    frames: int


@dataclass
class ClinicQuality:
    """A clinic's best frames over the period, every plane: the district's weekly means
    look alike, and which clinic's scans fall short is what the officer acts on."""
    clinic_id: str
    best_frames: int  # exams x planes found: each exam's best frame of each plane it found
    mean_quality: float
    below_capture: int  # of them under MIN_QUALITY: found, but not captured
    worst_plane: str  # the plane with the largest share under MIN_QUALITY
    worst_below: int
    worst_frames: int
    name: str = ""
    district_share: float = 0.0  # QualityPage.district_share: what "above" is judged by

    @property
    def below_share(self) -> float:
        return self.below_capture / self.best_frames if self.best_frames else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.below_capture, self.best_frames)

    @property
    def above(self) -> bool:
        """Clearly above the district's share (`above_chance`): flagged in the table."""
        return above_chance(self.below_capture, self.best_frames, self.district_share)


@dataclass
class QualityPage:
    period: Period
    weeks: list[int]
    planes: list[str]
    cells: list[PlaneWeek]
    deficiencies: list[Deficiency]
    exams: int
    clinics: list[ClinicQuality] = field(default_factory=list)  # most under 0.5 first
    # The district's best frames over the period, every plane and clinic of the scope (a
    # clinic's page: its own district's, whoever looks), and of them under MIN_QUALITY: the
    # rate a cell or a clinic is judged against
    district_frames: int = 0
    district_below: int = 0
    # whose share that is: a district's, or every clinic's (False: an admin not filtering,
    # or a clinic on no district's map)
    of_district: bool = True

    @property
    def district_share(self) -> float:
        return self.district_below / self.district_frames if self.district_frames else 0.0

    @property
    def against(self) -> str:
        """Whose share it is, as the page says it: not "the district's" where it is every
        clinic's."""
        return "the district's" if self.of_district else "all clinics'"


def quality_page(db: Db, scope: Scope, per: Period) -> QualityPage:
    w, p = scope.where()
    w0, w1 = per.first_week, per.last_week
    cells = []
    for plane, week, n, q_sum, q_low in db.query(
            "SELECT plane, week, SUM(n), SUM(q_sum), SUM(q_low) FROM dash.week_plane "
            f"WHERE week >= ? AND week <= ? AND {w} GROUP BY plane, week", (w0, w1, *p)):
        cells.append(PlaneWeek(plane, int(week), int(n), float(q_sum) / int(n), int(q_low)))
    frames, below = sum(c.exams for c in cells), sum(c.below_capture for c in cells)
    district = scope.district
    if scope.clinic is not None:
        # a clinic is judged against its own district, not itself, nor what its viewer sees:
        # an admin's every district flagged a clinic its district's viewer saw within chance
        row = db.query("SELECT district FROM dash.clinics WHERE clinic_id = ?", (scope.clinic,))
        district = row[0][0] if row else None
        dw, dp = Scope(district).where()
        frames, below = (int(x) for x in db.query(
            "SELECT COALESCE(SUM(n), 0), COALESCE(SUM(q_low), 0) FROM dash.week_plane "
            f"WHERE week >= ? AND week <= ? AND {dw}", (w0, w1, *dp))[0])
    rate = below / frames if frames else 0.0
    for c in cells:
        c.district_share = rate
    order = {name: i for i, name in enumerate(PLANE_ORDER)}
    planes = sorted({c.plane for c in cells}, key=lambda x: (order.get(x, 99), x))
    args = (per.first_day, per.last_day, *p)
    defs = [Deficiency(name, int(e), int(f)) for name, e, f in db.query(
        "SELECT name, SUM(exams), SUM(frames) FROM dash.week_deficiency "
        f"WHERE week >= ? AND week <= ? AND {w} GROUP BY name", (w0, w1, *p))]
    defs.sort(key=lambda d: (-d.exams, d.name))
    exams = db.query("SELECT COALESCE(SUM(exams), 0) FROM dash.day_device "
                     f"WHERE day >= ? AND day <= ? AND {w}", args)[0][0]
    cells.sort(key=lambda c: (order.get(c.plane, 99), c.plane, c.week))
    return QualityPage(per, list(range(w0, w1 + 1)), planes, cells, defs, int(exams),
                       _clinic_quality(db, scope, w0, w1, rate), frames, below,
                       district is not None)


def _clinic_quality(db: Db, scope: Scope, w0: int, w1: int, rate: float
                    ) -> list[ClinicQuality]:
    """Flagged first (clearly above the district's `rate`), then by share, worst first."""
    w, p = scope.where()
    per_plane: dict[str, list[tuple[str, int, float, int]]] = defaultdict(list)
    for clinic, plane, n, q_sum, q_low in db.query(
            "SELECT clinic_id, plane, SUM(n), SUM(q_sum), SUM(q_low) FROM dash.week_plane "
            f"WHERE week >= ? AND week <= ? AND {w} GROUP BY clinic_id, plane", (w0, w1, *p)):
        if int(n):
            per_plane[clinic].append((plane, int(n), float(q_sum), int(q_low)))
    names = clinic_names(db, scope) if per_plane else {}
    out = []
    for clinic, rows in per_plane.items():
        n = sum(r[1] for r in rows)
        worst = max(rows, key=lambda r: (r[1] >= C.QUALITY_PLANE_MIN_FRAMES, r[3] / r[1],
                                         r[3], r[0]))
        out.append(ClinicQuality(clinic, n, sum(r[2] for r in rows) / n,
                                 sum(r[3] for r in rows), worst[0], worst[3], worst[1],
                                 names.get(clinic, ""), rate))
    out.sort(key=lambda c: (not c.above, -c.below_share, c.mean_quality, c.clinic_id))
    return out


PLANE_ORDER = ["Brain (Tv.)", "Brain (Cb.)", "Profile", "Lips", "Spine (sag.)", "Spine (cor.)",
               "4CH", "LVOT", "RVOT", "3VV", "Abdominal", "Kidneys", "Femur"]


# -- biometry --------------------------------------------------------------------------------
@dataclass
class MeasuredExam:
    msg_id: str
    device_id: str
    clinic_id: str
    exam_id: str
    day: int
    hc_mm: float
    ga_weeks: float | None
    ga_source: str | None
    z: float | None  # against INTERGROWTH-21st; None outside 14-40 weeks or without GA
    clinic_name: str = ""  # from the district map; "" when it gives none
    # What the midwife's page said of the head against her dates (ACOG's redating tolerance,
    # wire.dating.dates_flag): "small", "large" or None (within it, or no dates).
    dates_flag: str | None = None
    dates_after: bool = False  # its dates came after the exam, by a correction (``dates``)

    @property
    def outside(self) -> str | None:
        """'below 3rd' / 'above 97th' / None."""
        if self.z is None:
            return None
        if self.z < R.CENTILE_Z[3]:
            return "below 3rd"
        if self.z > R.CENTILE_Z[97]:
            return "above 97th"
        return None


@dataclass
class BiometryPage:
    """What the biometry page draws: the density of every measured exam with an age (counts
    per half week and 5 mm, made in SQL), and the exams outside the 3rd-97th centile."""
    period: Period
    bins: list[tuple[int, int, int]]  # (GA bin, HC bin, exams) from GA_MIN/HC_MIN
    outliers: list[MeasuredExam]  # the furthest from the median, first; at most 200
    measured: int  # exams with an HC
    not_comparable: int  # of those drawn, without an age inside INTERGROWTH's 14-40 weeks
    dated: int  # of which with the age by dates (not only the Hadlock age from the same HC)
    # Once any exam has the age by dates, only those are drawn and can be outliers: the
    # others' age is Hadlock's from the same HC, on whose curve they lie by construction.
    only_dated: bool = False
    clinics: list[ClinicDating] = field(default_factory=list)  # fewest dated first
    outside: int = 0  # every drawn exam outside the 3rd-97th centile (the CSV has them)
    # of the dated: those whose dates came after the exam (a ``dates`` correction)
    dated_later: int = 0


@dataclass
class ClinicDating:
    """Per clinic, how often its midwives entered the dates, and how its dated heads sit
    against the standard: a clinic that dates few exams, or whose dated heads are often
    small, is one to visit (training in taking the last period, or a real growth problem)."""
    clinic_id: str
    name: str
    measured: int
    dated: int
    below_3rd: int  # of the dated
    above_97th: int
    flagged_small: int = 0  # of the dated: the midwife's page said smaller than the dates
    flagged_large: int = 0
    dated_after: int = 0  # of the dated: entered after the exam (a ``dates`` correction)

    @property
    def dated_share(self) -> float | None:
        return self.dated / self.measured if self.measured else None


# The density grid: half a week by 5 mm, from 12 weeks and 50 mm.
GA_MIN, HC_MIN, GA_BIN, HC_BIN = 12.0, 50.0, 0.5, 5.0


def biometry_page(db: Db, scope: Scope, per: Period) -> BiometryPage:
    w, p = scope.where()
    args = (per.first_day, per.last_day, *p)
    base = f"FROM dash.exams WHERE hc_mm IS NOT NULL AND day >= ? AND day <= ? AND {w}"
    z3, z97 = R.CENTILE_Z[3], R.CENTILE_Z[97]
    # One pass per clinic gives its table row and, summed, the page's counts: for every
    # measured exam and for the dated ones, those without a comparable age and those out.
    dated_sql = "ga_source = 'dates'"
    out_sql = "(ig_z < ? OR ig_z > ?)"
    rows = db.query(
        "SELECT clinic_id, COUNT(*), "
        f"SUM(CASE WHEN {dated_sql} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {dated_sql} AND ig_z < ? THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {dated_sql} AND ig_z > ? THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN dates_flag = 'small' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN dates_flag = 'large' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN ig_z IS NULL THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {dated_sql} AND ig_z IS NULL THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {out_sql} THEN 1 ELSE 0 END), "
        f"SUM(CASE WHEN {dated_sql} AND dates_corrected = 1 THEN 1 ELSE 0 END) "
        f"{base} GROUP BY clinic_id",
        (z3, z97, z3, z97, *args))
    names = clinic_names(db, scope)
    counts = [(c, [int(v or 0) for v in r]) for c, *r in rows]
    clinics = [ClinicDating(c, names.get(c, ""), *r[:6], dated_after=r[9]) for c, r in counts]
    measured = sum(c.measured for c in clinics)
    dated = sum(c.dated for c in clinics)
    only_dated = dated > 0
    if only_dated:
        base += f" AND {dated_sql}"
        not_comparable = sum(r[7] for _, r in counts)
        outside = sum(c.below_3rd + c.above_97th for c in clinics)
    else:
        not_comparable = sum(r[6] for _, r in counts)
        outside = sum(r[8] for _, r in counts)
    bins = [(int(g), int(h), int(n)) for g, h, n in db.query(
        "SELECT gb, hb, COUNT(*) FROM (SELECT CAST(FLOOR((ga_weeks - ?) / ?) AS INTEGER) AS gb, "
        f"CAST(FLOOR((hc_mm - ?) / ?) AS INTEGER) AS hb {base} AND ga_weeks IS NOT NULL) t "
        "GROUP BY gb, hb", (GA_MIN, GA_BIN, HC_MIN, HC_BIN, *args))]
    outliers = [MeasuredExam(m, dev, clinic, exam, int(day), float(hc), float(ga), src, z,
                             names.get(clinic, ""), flag)
                for m, dev, clinic, exam, day, hc, ga, src, z, flag in db.query(
        "SELECT msg_id, device_id, clinic_id, exam_id, day, hc_mm, ga_weeks, ga_source, ig_z, "
        f"dates_flag {base} AND {out_sql} ORDER BY ABS(ig_z) DESC, day DESC, msg_id LIMIT ?",
        (*args, z3, z97, C.OUTLIERS_SHOWN))]
    clinics.sort(key=lambda c: (c.dated_share or 0.0, c.clinic_id))
    return BiometryPage(per, bins, outliers, int(measured), int(not_comparable), int(dated),
                        only_dated, clinics, int(outside), sum(c.dated_after for c in clinics))


def biometry_exams(db: Db, scope: Scope, per: Period) -> list[MeasuredExam]:
    """Every measured exam of the period: the CSV behind the biometry plot."""
    w, p = scope.where()
    out = [MeasuredExam(m, dev, clinic, exam, int(day), float(hc),
                        None if ga is None else float(ga), src,
                        None if z is None else float(z), dates_flag=flag,
                        dates_after=bool(after))
           for m, dev, clinic, exam, day, hc, ga, src, z, flag, after in db.query(
               "SELECT msg_id, device_id, clinic_id, exam_id, day, hc_mm, ga_weeks, ga_source, "
               f"ig_z, dates_flag, dates_corrected FROM dash.exams WHERE hc_mm IS NOT NULL AND "
               f"day >= ? AND "
               f"day <= ? AND {w} "
               "ORDER BY day, msg_id", (per.first_day, per.last_day, *p))]
    return _name_exams(db, scope, out)


def _name_exams(db: Db, scope: Scope, exams: list[MeasuredExam]) -> list[MeasuredExam]:
    names = clinic_names(db, scope) if exams else {}
    for e in exams:
        e.clinic_name = names.get(e.clinic_id, "")
    return exams


# -- devices ---------------------------------------------------------------------------------
@dataclass
class DeviceRow:
    device_id: str
    clinic_id: str
    last_seen: float | None
    state: str | None  # the latest status: online / offline
    state_since: float | None
    backlog: int | None  # queued on the box, from its latest health
    behind: int | None  # allocated on the box (latest status) beyond what is stored
    missing: int | None  # messages missing in this period's sequence holes
    dead_letters: int | None  # None (as the two above): a box never heard from
    disk_free_mb: float | None
    temp_c: float | None
    models: dict
    bundle: dict
    health_ts: float | None
    received: int = 0  # messages that take a seq (exam, health, dates) received in the period
    clock_behind_s: float | None = None  # clock_offset: negative when the box's is ahead
    clock_set: list | None = None  # [when, seconds moved]: the page set the box's clock
    health_interval_s: float | None = None  # its latest health's interval_s
    flags: list[str] = field(default_factory=list)
    clinic_name: str = ""  # from the district map; "" when it gives none
    listed_ts: float | None = None  # never heard from: in the district's registry since
    busiest_day: tuple[int, int] | None = None  # (day, exams) of its most exams in the period
    urgency: int = 9  # its most urgent flag's rank (ranked_flags; NO_FLAG: none)
    exams: int = 0  # ended in the period (and standing: not withdrawn)
    # of those, the exams whose heads its set-up refused, by reason (setup_refused)
    setup_refused: dict[str, int] = field(default_factory=dict)
    # of those, the exams whose heads were measured with the picture's shape unchecked
    shape_unchecked: int = 0


def devices_page(db: Db, scope: Scope, per: Period, now: float | None = None
                 ) -> list[DeviceRow]:
    now = district_now() if now is None else now
    w, p = scope.where()
    # Dead letters received in the period, like its missing messages: one bad message long
    # ago is no reason to visit the box now.
    dead = {dev: int(n) for dev, n in db.query(
        "SELECT device_id, COUNT(*) FROM dash.dead WHERE received_ts >= ? AND received_ts < ? "
        "GROUP BY device_id", _period_ts(per))}
    names = clinic_names(db, scope)
    missing: dict[str, int] = defaultdict(int)
    for h in holes(db, scope, per):
        missing[h.device_id] += h.size
    quiet = collectors_quiet_since(db, now)
    heard = now if quiet is None else quiet  # a box's silence as far as it could be heard
    received, ended = {}, {}
    for dev, n, standing in db.query(
            "SELECT device_id, SUM(exams + withdrawn + health + corrections), SUM(exams) "
            f"FROM dash.day_device WHERE day >= ? AND day <= ? AND {w} GROUP BY device_id",
            (per.first_day, per.last_day, *p)):
        received[dev], ended[dev] = int(n), int(standing)
    refused: dict[str, dict[str, int]] = defaultdict(dict)
    for dev, _day, reason, n in setup_refused(db, scope, per, "device_id"):
        refused[dev][reason] = refused[dev].get(reason, 0) + n
    unchecked = {dev: int(n) for dev, n in db.query(
        "SELECT device_id, COUNT(*) FROM dash.exams WHERE day >= ? AND day <= ? AND "
        f"shape_unchecked IS NOT NULL AND {w} GROUP BY device_id",
        (per.first_day, per.last_day, *p))}
    busiest: dict[str, tuple[int, int]] = {}
    for dev, day, exams in db.query(
            "SELECT device_id, day, SUM(exams) FROM dash.day_device WHERE day >= ? AND "
            f"day <= ? AND {w} GROUP BY device_id, day HAVING SUM(exams) >= ?",
            (per.first_day, per.last_day, *p, C.EXAMS_PER_DAY_WARN)):
        if int(exams) > busiest.get(dev, (0, 0))[1]:
            busiest[dev] = (int(day), int(exams))
    out = []
    for (dev, clinic, last, max_seq, _hseq, health_ts, health, st_rec, st_state, st_seq,
         _pending, health_lag, online_lag) in db.query(
            "SELECT device_id, clinic_id, last_received, max_seq, health_seq, health_ts, "
            "health, status_received, status_state, status_seq, status_pending, "
            "health_lag_s, online_lag_s "
            f"FROM dash.device_latest WHERE {w} ORDER BY clinic_id, device_id", p):
        h = json.loads(health) if health else {}
        row = DeviceRow(dev, clinic, last, st_state, st_rec, h.get("pending"),
                        max(0, int(st_seq or 0) - int(max_seq or 0)), missing.get(dev, 0),
                        dead.get(dev, 0), h.get("disk_free_mb"), h.get("temp_c"),
                        h.get("models") or {}, h.get("bundle") or {}, health_ts)
        row.received = received.get(dev, 0)
        row.exams, row.setup_refused = ended.get(dev, 0), refused.get(dev, {})
        row.shape_unchecked = unchecked.get(dev, 0)
        row.busiest_day = busiest.get(dev)
        row.clock_behind_s = clock_offset(health_lag, online_lag)
        row.clock_set = h.get("clock_set")
        row.health_interval_s = number_or_none(h.get("interval_s"))
        row.clinic_name = names.get(clinic, "")
        flag_row(row, now, heard)
        out.append(row)
    return out + never_heard(db, scope, names, now)


def never_heard(db: Db, scope: Scope, names: dict[str, str], now: float) -> list[DeviceRow]:
    """The scope's boxes in the district's registry (the collector's copy, central/db.py
    `registry`) that nothing was ever received from, wherever: provisioned, then a wrong
    broker password or address, or never switched on. No message can show them."""
    if not db.has_collector_table("registry"):  # an older collector, or none with --registry
        return []
    w, p = scope.where()
    heard = {dev for (dev,) in db.query("SELECT device_id FROM dash.device_latest")}
    out = []
    for dev, clinic, listed in db.query("SELECT device_id, clinic_id, listed_ts FROM registry "
                                        f"WHERE {w} ORDER BY clinic_id, device_id", p):
        if dev in heard:
            continue
        row = DeviceRow(dev, clinic, None, None, None, None, None, None, None, None, None, {},
                        {}, None)
        row.listed_ts = wall_ts_or_none(listed)
        row.clinic_name = names.get(clinic, "")
        since = ("" if row.listed_ts is None else
                 f", listed {age_text(max(0.0, now - row.listed_ts))} ago")
        row.flags = [f"never heard from (in the registry{since}): check its broker password "
                     "and URL"]
        row.urgency = VISIT
        out.append(row)
    return out


def span(seconds: float) -> str:
    """A duration as the pages say it: hours under two days, days from there."""
    days = seconds / C.DAY_S
    return f"{days:.0f} days" if days >= 2 else f"{seconds / 3600:.0f} h"


def age_text(seconds: float) -> str:
    """How long ago, as the pages say it: minutes under an hour, then `span`."""
    return f"{seconds / 60:.0f} min" if seconds < 3600 else span(seconds)


def _said_s(seconds: float) -> float:
    """The duration `age_text` says for `seconds`, in seconds: its figure once rounded."""
    unit = 60.0 if seconds < 3600 else C.DAY_S if seconds >= 2 * C.DAY_S else 3600.0
    return round(seconds / unit) * unit


def silence_text(seconds: float) -> str:
    """How long a box has not been heard, never across the line that flags it silent.
    Rounded to whole days, 3.2 days said "3 days" on a row flagged "silent" (over
    SILENT_AFTER_S) and 2.8 days said "3 days" on one not flagged: the officer could not
    tell why one box needed a visit and the other not. Over the line, a figure that rounds
    back to it or under says "over 3 days" instead (rounding up would add most of a day to
    a box just past it; a decimal, "3.0 days", still rounds back); at or under the line,
    the rounded figure never goes over it, as round(x) <= 3 for x <= 3."""
    if seconds > C.SILENT_AFTER_S >= _said_s(seconds):
        return f"over {span(C.SILENT_AFTER_S)}"
    return age_text(seconds)


def online_but_silent(d: DeviceRow, heard: float) -> bool:
    """The box's uplink last said "online" and it has sent nothing for longer than a few
    of its health intervals (config.py ONLINE_SILENT_*): a connection without a program."""
    if d.state != "online" or d.last_seen is None:
        return False
    interval = d.health_interval_s if d.health_interval_s and d.health_interval_s > 0 else 0.0
    return heard - d.last_seen > max(C.ONLINE_SILENT_MIN_S,
                                     C.ONLINE_SILENT_INTERVALS * interval)


# How soon a flag needs someone (lower first): the devices page lists the boxes by their most
# urgent flag, then the longest silent, and each box's flags in this order. An officer's walk
# found the box of a clinic silent for 18 weekdays listed last, after "disk low", and every
# flag alike.
VISIT, SOON, CHECK, NOTE = 0, 1, 2, 3  # not heard / may lose data / wrong data / for the record
NO_FLAG = 9


def ranked_flags(d: DeviceRow, now: float, heard: float | None = None
                 ) -> list[tuple[int, str]]:
    """Why this box may need a visit, each with how soon (VISIT..NOTE; thresholds in
    config.py). `heard`: the last moment a box could have been heard (when the collectors
    went quiet; default now): a box silent only since then is no reason to visit it."""
    flags: list[tuple[int, str]] = []
    heard = now if heard is None else heard
    stuck = online_but_silent(d, heard)
    if d.last_seen is None or heard - d.last_seen > C.SILENT_AFTER_S:
        silence = "never" if d.last_seen is None else silence_text(heard - d.last_seen)
        flags.append((VISIT, f"silent {silence}"
                      + ("" if heard == now or d.last_seen is None else
                         " before the collector stopped")
                      # one flag, not two: "silent 26 days, online but silent 26 days"
                      + (" (its link still says online: restart it)" if stuck else "")))
    elif stuck:
        flags.append((SOON, f"online but silent {span(heard - d.last_seen)}: restart it"))
    if d.disk_free_mb is not None and d.disk_free_mb < C.LOW_DISK_MB:
        flags.append((SOON, f"disk low ({d.disk_free_mb:.0f} MB free): free space or replace "
                            "its card"))
    if d.temp_c is not None and d.temp_c >= C.HOT_C:
        flags.append((SOON, f"hot ({d.temp_c:.0f} °C): shade and air around the box"))
    if d.missing and d.missing > C.MISSING_WARN_SHARE * (d.received + d.missing):
        flags.append((SOON, f"{d.missing} message{'' if d.missing == 1 else 's'} lost"))
    # every head lost while the women are scanned, until someone fixes the box: soon, after
    # a box not heard from at all
    flags.extend((SOON, text) for text in setup_fault_texts(d.setup_refused, d.exams))
    if d.shape_unchecked >= C.SETUP_FAULT_MIN_EXAMS:
        # measured, so not lost: but a stretched picture would have made each head wrong
        flags.append((CHECK, shape_unchecked_text(d.shape_unchecked, d.exams)))
    if d.backlog is not None and d.backlog >= C.BACKLOG_WARN:
        flags.append((CHECK, "backlog"))
    if d.dead_letters:
        flags.append((CHECK, f"{d.dead_letters} dead letter{'' if d.dead_letters == 1 else 's'}"))
    if d.busiest_day and d.busiest_day[1] >= C.EXAMS_PER_DAY_WARN:
        flags.append((CHECK, f"{d.busiest_day[1]} exams on {day_text(d.busiest_day[0])}, more "
                             "than a clinic scans: check the box (one scan split into many, or "
                             "not its clinic's exams)"))
    if d.clock_behind_s is not None and abs(d.clock_behind_s) >= C.CLOCK_OFF_FLAG_S:
        way = ("behind (its exams re-dated by that lag): set it on the clinic's page"
               if d.clock_behind_s > 0 else "ahead")
        flags.append((CHECK, f"clock {span(abs(d.clock_behind_s))} {way}"))
    if d.bundle.get("error"):
        flags.append((CHECK, "bundle error"))
    if d.bundle.get("rollback"):
        flags.append((NOTE, "bundle rolled back"))
    if d.bundle.get("unchecked"):
        flags.append((NOTE, "bundle's quality score not checked"))
    if d.clock_set and now - d.clock_set[0] <= C.CLOCK_SET_SHOWN_S:
        flags.append((NOTE, f"clock set {span(d.clock_set[1])} forward from the clinic's page "
                            f"on {day_text(int(d.clock_set[0] // C.DAY_S))}"))
    return sorted(flags, key=lambda f: f[0])


def device_flags(d: DeviceRow, now: float, heard: float | None = None) -> list[str]:
    """`ranked_flags`' words, most urgent first."""
    return [text for _, text in ranked_flags(d, now, heard)]


def flag_row(d: DeviceRow, now: float, heard: float | None = None) -> None:
    """Set the row's flags (most urgent first) and its urgency (`by_urgency` sorts by it)."""
    ranked = ranked_flags(d, now, heard)
    d.flags = [text for _, text in ranked]
    d.urgency = ranked[0][0] if ranked else NO_FLAG


def by_urgency(rows: list[DeviceRow], now: float) -> list[DeviceRow]:
    """Boxes with flags first, the most urgent first, then the longest silent (a box never
    heard from: since it was listed), then by clinic and box; those without a flag by clinic
    and box."""
    def since(r: DeviceRow) -> float:
        if r.urgency == NO_FLAG:
            return 0.0
        last = r.last_seen if r.last_seen is not None else r.listed_ts
        return now - last if last is not None else float("inf")

    return sorted(rows, key=lambda r: (r.urgency, -since(r), r.clinic_id, r.device_id))


@dataclass
class FleetError:
    """One distinct model-update error of a device over the period (``dash.fleet_errors``)."""
    device_id: str
    clinic_id: str
    error: str
    bundle: str  # the bundle installed while it was reported
    first_ts: float
    last_ts: float
    health: int  # health messages that carried it
    clinic_name: str = ""


def fleet_errors(db: Db, scope: Scope, per: Period, shown: int | None = C.FLEET_ERRORS_SHOWN
                 ) -> tuple[list[FleetError], dict[str, int]]:
    """The period's fleet errors reported at the scope's clinics, per device latest first,
    at most ``shown`` a device (None: all, for the CSV); and per device how many more."""
    w, p = scope.where()
    rows = [FleetError(dev, clinic, error, bundle, float(first), float(last), int(n))
            for dev, clinic, error, bundle, first, last, n in db.query(
                "SELECT device_id, clinic_id, error, bundle, MIN(first_ts), MAX(last_ts), "
                "SUM(n) FROM dash.fleet_errors WHERE week >= ? AND week <= ? AND "
                f"{w} GROUP BY device_id, clinic_id, error, bundle",
                (per.first_week, per.last_week, *p))]
    rows.sort(key=lambda e: (e.clinic_id, e.device_id, -e.last_ts, e.error, e.bundle))
    names = clinic_names(db, scope) if rows else {}
    out, more = [], defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for e in rows:
        count[e.device_id] += 1
        if shown is not None and count[e.device_id] > shown:
            more[e.device_id] += 1
            continue
        e.clinic_name = names.get(e.clinic_id, "")
        out.append(e)
    return out, dict(more)


def unattributed_dead_letters(db: Db, per: Period) -> int:
    """Dead letters of the period whose topic names no device (an admin's concern only)."""
    return int(db.query("SELECT COUNT(*) FROM dash.dead WHERE received_ts >= ? AND "
                        "received_ts < ? AND device_id = ''", _period_ts(per))[0][0])


def _period_ts(per: Period) -> tuple[float, float]:
    """The period as receive times: a dead letter has no device clock, only its arrival."""
    return float(per.first_day * C.DAY_S), float((per.last_day + 1) * C.DAY_S)


# -- the monthly return ----------------------------------------------------------------------
@dataclass(frozen=True)
class Month:
    """A calendar month of UTC days: what a district reports upward each month (an HMIS
    return), which the weekly periods cut across."""
    year: int
    month: int

    @property
    def text(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def title(self) -> str:
        return f"{calendar.month_name[self.month]} {self.year}"

    @property
    def first_day(self) -> int:
        return calendar.timegm((self.year, self.month, 1, 0, 0, 0)) // C.DAY_S

    @property
    def last_day(self) -> int:
        return self.first_day + calendar.monthrange(self.year, self.month)[1] - 1

    def before(self) -> Month:
        return Month(self.year - (self.month == 1), 12 if self.month == 1 else self.month - 1)


def this_month(now: float | None = None) -> Month:
    t = time.gmtime(now if now is not None else district_now())
    return Month(t.tm_year, t.tm_mon)


def month_of(text: str, now: float | None = None) -> Month | None:
    """The month a request names ("2026-11"), or None: not that form, before
    MONTHLY_FIRST_YEAR, or after this month (a return of days to come is empty, not 0)."""
    if len(text) != 7 or not text.isascii() or text[4] != "-" \
            or not (text[:4] + text[5:]).isdigit():
        return None
    year, month = int(text[:4]), int(text[5:])
    latest = this_month(now)
    if not 1 <= month <= 12 or year < C.MONTHLY_FIRST_YEAR \
            or (year, month) > (latest.year, latest.month):
        return None
    return Month(year, month)


def recent_months(now: float | None = None) -> list[Month]:
    """This month (so far) and the MONTHLY_SHOWN - 1 before it, latest first."""
    months = [this_month(now)]
    while len(months) < C.MONTHLY_SHOWN:
        months.append(months[-1].before())
    return months


@dataclass
class MonthlyRow:
    """One clinic's exams of one protocol in a month; a clinic with none has one row, its
    protocol "" and its counts 0 (a return lists every clinic, the silent ones most)."""
    clinic_id: str
    protocol: str
    exams: int = 0
    complete: int = 0
    hc_measured: int = 0
    dates_small: int = 0  # the head small for the age by dates (wire.dating.dates_flag)
    dates_large: int = 0
    exam_days: int = 0  # days with at least one exam of this protocol
    heard_days: int = 0  # days the clinic's boxes sent anything (exams, health, status)
    clinic_name: str = ""
    # The clinic's first day with a message (first_days()), None if it never sent one: the
    # days before it (its box not yet set up) are no days of silence or of zero exams.
    first_heard_day: int | None = None
    days_counted: int = 0  # the month's days up to today, from the clinic's first message
    # every day of the month counted: the month is over and the clinic's box was heard on
    # or before its first day (a clinic set up mid-month has a part month, 0)
    complete_month: bool = False


def monthly_return(db: Db, scope: Scope, month: Month, now: float | None = None
                   ) -> tuple[list[MonthlyRow], int]:
    """Every clinic of the scope over `month`: its exams per protocol, from each exam's own
    row (an exam is dated by when it ended on the box, as everywhere), and the days its
    boxes were heard. Each clinic's days count from its first message on (as the clinics
    page's silent weekdays do): a month wholly before it counts no day, and one begun
    before it is not a complete month. Returns the rows, clinic then protocol, and the
    month's last day counted (today, for this month)."""
    today = int((now if now is not None else district_now()) // C.DAY_S)
    first, last = month.first_day, min(month.last_day, today)
    w, p = scope.where()
    rows: dict[tuple[str, str], MonthlyRow] = {}
    for clinic, protocol, exams, complete, hc, small, large, days in db.query(
            "SELECT clinic_id, COALESCE(protocol, ''), COUNT(*), SUM(COALESCE(complete, 0)), "
            "SUM(CASE WHEN hc_mm IS NOT NULL THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN dates_flag = 'small' THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN dates_flag = 'large' THEN 1 ELSE 0 END), COUNT(DISTINCT day) "
            f"FROM dash.exams WHERE day >= ? AND day <= ? AND {w} "
            "GROUP BY clinic_id, COALESCE(protocol, '')", (first, last, *p)):
        rows[(clinic, protocol)] = MonthlyRow(clinic, protocol, int(exams), int(complete or 0),
                                              int(hc or 0), int(small or 0), int(large or 0),
                                              int(days))
    heard = dict(db.query(
        "SELECT clinic_id, COUNT(DISTINCT day) FROM dash.day_device WHERE day >= ? AND "
        f"day <= ? AND {w} GROUP BY clinic_id", (first, last, *p)))
    seen = {clinic for clinic, _ in rows}
    for clinic in clinics_in_scope(db, scope):
        if clinic not in seen:
            rows[(clinic, "")] = MonthlyRow(clinic, "")
    names = clinic_names(db, scope)
    firsts = first_days(db, scope)
    out = [rows[key] for key in sorted(rows)]
    for row in out:
        row.heard_days = int(heard.get(row.clinic_id, 0))
        row.clinic_name = names.get(row.clinic_id, "")
        row.first_heard_day = firsts.get(row.clinic_id)
        if row.first_heard_day is not None:
            row.days_counted = max(0, last - max(first, row.first_heard_day) + 1)
            row.complete_month = row.first_heard_day <= first and last >= month.last_day
    return out, last


def first_heard(days: Iterable[int | None]) -> int | None:
    """The first of the clinics' first days heard (a return's rows' `first_heard_day`, the
    clinics page's `first_day`), None if none was ever heard: a month wholly before it has
    no return, as no box of the scope was set up to make one."""
    return min((d for d in days if d is not None), default=None)


def months_returned(months: list[Month], first_day: int | None) -> list[Month]:
    """Those of `months` not wholly before the scope's first message (`first_heard`)."""
    return [m for m in months if first_day is not None and m.last_day >= first_day]


# -- one clinic ------------------------------------------------------------------------------
def clinics_known(db: Db, scope: Scope) -> set[str]:
    """The clinics whose page the scope can show: those the pages list (`clinics_in_scope`)
    and those whose only box is in the registry, never heard from (the devices page lists
    it under its clinic)."""
    return set(clinics_in_scope(db, scope)) | {
        r.clinic_id for r in never_heard(db, scope, {}, district_now())}


@dataclass
class ClinicFigures:
    """One clinic's figures over one period: the district pages' own, their scope narrowed
    to the clinic (`Scope.clinic`), so that its page and theirs cannot disagree."""
    clinic_id: str
    days: ClinicsPage
    completeness: CompletenessPage
    quality: QualityPage
    biometry: BiometryPage
    withdrawn: dict[str, int] = field(default_factory=dict)  # reason -> exams withdrawn

    def figures(self) -> dict[str, tuple[int, int | None]]:
        """What its page sets against the previous period, each as (count, of what): a
        share's denominator, or None for a count. Completeness per protocol (its key
        `complete:<protocol>`), best frames not captured, and the heads as the biometry
        page's table counts them (below the 3rd centile etc. of the dated ones)."""
        c = self.clinic_id
        exams, silent, missing = self.days.totals(c)
        heard = sum(1 for d in self.days.period.days if not self.days.cells[(c, d)].silent)
        out: dict[str, tuple[int, int | None]] = {
            "exams": (exams, None), "days_heard": (heard, None),
            "silent_weekdays": (silent, None), "messages_missing": (missing, None)}
        for row in self.completeness.clinics:
            for protocol, (n, complete) in sorted(row.protocols.items()):
                out[f"complete:{protocol}"] = (complete, n)
        q = next(iter(self.quality.clinics), None)
        out["not_captured"] = (q.below_capture, q.best_frames) if q else (0, 0)
        h = next(iter(self.biometry.clinics), None) or ClinicDating(c, "", 0, 0, 0, 0)
        out.update({"measured": (h.measured, None), "dated": (h.dated, h.measured),
                    "below_3rd": (h.below_3rd, h.dated), "above_97th": (h.above_97th, h.dated),
                    "told_small": (h.flagged_small, h.dated),
                    "told_large": (h.flagged_large, h.dated),
                    "withdrawn": (sum(self.withdrawn.values()), None),
                    "setup_refused": (sum(self.days.setup_refused.get(c, {}).values()), exams)})
        out.update({f"withdrawn:{reason}": (n, None) for reason, n in self.withdrawn.items()})
        return out


def clinic_figures(db: Db, scope: Scope, per: Period) -> ClinicFigures:
    """`scope.clinic`'s figures over `per`, by the pages' queries."""
    days = clinics_page(db, scope, per)
    if scope.clinic not in days.clinics:  # its one box is in the registry, never heard
        days = ClinicsPage(per, [scope.clinic], {(scope.clinic, d): ClinicDay(scope.clinic, d)
                                                 for d in per.days}, first_day={})
    return ClinicFigures(scope.clinic, days, completeness_page(db, scope, per),
                         quality_page(db, scope, per), biometry_page(db, scope, per),
                         withdrawn_exams(db, scope, per).get(scope.clinic, {}))


def withdrawn_exams(db: Db, scope: Scope, per: Period) -> dict[str, dict[str, int]]:
    """Per clinic, the exams ended in `per` that the midwives withdrew, by reason
    (dash.withdrawn_exams; every other figure leaves them out): a clinic withdrawing many
    is itself a signal, of a box or of training."""
    w, p = scope.where()
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for clinic, reason, n in db.query(
            "SELECT clinic_id, reason, COUNT(*) FROM dash.withdrawn_exams WHERE day >= ? AND "
            f"day <= ? AND {w} GROUP BY clinic_id, reason", (per.first_day, per.last_day, *p)):
        out[clinic][reason] = int(n)
    return dict(out)


@dataclass
class ClinicWeekRow:
    """A week of one clinic's page: its chart's bar and a row of its CSV."""
    week: int
    days: int  # the period's days in it (this week: up to today)
    exams: int
    silent: int  # weekdays with no message, of those that count (ClinicsPage.counts)
    counted: int
    missing: int  # messages missing in holes that end that week
    best_frames: int  # each exam's best frame of each plane it found (the quality page's)
    below_capture: int  # of those, under MIN_QUALITY: found, not captured
    previous_exams: int  # the same week of the previous period (Period.previous)
    setup_refused: int = 0  # exams whose heads the box's set-up refused


@dataclass
class ClinicPage:
    clinic_id: str
    name: str  # from the district map; "" when it gives none
    district: str | None  # on the district map; None for a clinic in none
    now: ClinicFigures
    before: ClinicFigures  # the previous period of the same length
    devices: list[DeviceRow]
    # this calendar month so far, the clinic's rows of the monthly return (`monthly_return`,
    # as its CSV has them), and the month's last day counted (today)
    month: Month | None = None
    month_rows: list[MonthlyRow] = field(default_factory=list)
    month_last_day: int = 0

    @property
    def period(self) -> Period:
        return self.now.days.period

    def weeks(self) -> list[ClinicWeekRow]:
        per, c = self.period, self.clinic_id
        now, was = clinic_weeks(self.now.days), clinic_weeks(self.before.days)
        frames: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for cell in self.now.quality.cells:
            frames[cell.week][0] += cell.exams
            frames[cell.week][1] += cell.below_capture
        out = []
        for week in range(per.first_week, per.last_week + 1):
            w = now[(c, week)]
            out.append(ClinicWeekRow(week, sum(1 for d in per.days if week_of(d) == week),
                                     w.exams, w.silent, w.counted, w.missing, *frames[week],
                                     was[(c, week - per.weeks)].exams, w.setup_refused))
        return out

    @property
    def last_message(self) -> DeviceRow | None:
        """The clinic's box heard from last (None: none ever was)."""
        heard = [d for d in self.devices if d.last_seen is not None]
        return max(heard, key=lambda d: d.last_seen) if heard else None


def clinic_page(db: Db, scope: Scope, per: Period) -> ClinicPage:
    """One clinic (`scope.clinic`, which the caller has found in `clinics_known`) over
    `per` and the period before it, its boxes as the devices page flags them, and this
    calendar month so far as the monthly return counts it (its rows of that CSV)."""
    clinic = scope.clinic
    month = this_month()
    rows, last = monthly_return(db, scope, month)
    return ClinicPage(clinic, clinic_names(db, scope).get(clinic, ""),
                      clinic_districts(db).get(clinic), clinic_figures(db, scope, per),
                      clinic_figures(db, scope, per.previous()), devices_page(db, scope, per),
                      month, rows, last)
