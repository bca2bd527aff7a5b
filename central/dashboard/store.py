"""The dashboard's view of the collector's database, and the rollups that keep it fast.

The collector's tables are only ever read. What the dashboard writes (its rollups, users,
sessions and the clinic-to-district map) lives apart from them, so it never takes the lock
the collector needs to store a message:

- SQLite: the collector's file is opened read-only (``mode=ro``; WAL lets a reader and the
  writer work at once) and the dashboard's tables live in a file beside it
  (``central.sqlite3`` -> ``central.dashboard.sqlite3``), ATTACHed as ``dash``. A write
  there locks that file only.
- PostgreSQL: the dashboard's tables live in the schema ``dash`` of the same database; MVCC
  means its reads and writes never wait for the collector's inserts, nor these for them.

Either way the SQL says ``dash.<table>``, and every value is a bound parameter.

Rollups. Parsing every exam's JSON on each page view would cost seconds at 100,000 exams,
so ``refresh`` reads each message once, after it is stored, and adds it to small tables: a
row per message (``dash.msgs``), the runs of consecutive seqs each device's messages make
(``dash.seq_runs``, for the sequence holes: see ``_add_seq_runs``), a row per exam with the
figures the pages plot (``dash.exams``), messages per device and day (``dash.day_device``),
exam figures per clinic and week (``dash.week_protocol``, ``dash.week_missing``,
``dash.week_deficiency``, ``dash.week_plane``), each exam's latest correction of its age by
dates (``dash.exam_dates``: see ``_add_corrections``),
the latest health and status of each device (``dash.device_latest``), the model-update
errors its health messages carried, per week (``dash.fleet_errors``: a later health message
overwrites the device's error, so the latest alone loses the history), and dead letters per
device (``dash.dead``). A message is added only when its ``msg_id`` is new to ``dash.msgs``,
inside the same transaction as the counts, so the counts never count a message twice, even
with two dashboards refreshing the same database.

A message is dated by its box's clock when plausible (``day_of``), an exam's figures (its row,
its count per day, its weeks) by when the exam ended (``exam_day_of``), not when it was
queued. A message stored without a clinic (its box not yet in the collector's registry)
counts under the first clinic the registry listed its box at, or C.UNREGISTERED until it is,
when what the rollups hold of it moves to its clinic (``_move_unregistered``).

A seq the collector recorded in ``resent`` (a message it already had, sent again under a new
seq after the device lost its outbox) is a row of ``dash.msgs`` too, under the synthetic id
``resent/<device>/<seq>``, and a seq of ``dash.seq_runs``, so that ``queries.holes`` does not
count it lost; it is no new message, so no count includes it. A collector database older
than ``resent`` has none.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from central.dashboard import config as C
from central.dashboard.reference import ig_z
from central.db import SEQ_KINDS, DbError, is_postgres, redact, sqlite_path
from wire.dating import dates_flag
from wire.schema import (
    CORRECTION_KINDS,
    finite_number,
    number_or_none,
    sqlite_uri,
    wall_ts_or_none,
)
from wire.shown import one_line, read_failure

log = logging.getLogger(__name__)

SCHEMA_VERSION = "20"  # a change drops the rollups and rebuilds them from the messages
# (16: deficiency names the dashboard does not know counted as one, C.DEFICIENCY_OTHER;
# the health digest keeps the box's health interval; 17: withdrawn exams, counted in no
# exam figure, and day_device's corrections of either kind; 18: each exam's set-up reason
# that refused its heads, dash.exams.setup_refused; 19: a missed slot never found or found
# but not good enough, dash.week_missing.not_found and .poor; 20: an exam whose heads were
# measured before the box could check the picture's shape, dash.exams.shape_unchecked)
# The tables the rollup fills (users, sessions and the district map are kept on a rebuild).
ROLLUP_TABLES = ("msgs", "exams", "day_device", "day_protocol", "day_missing",
                 "day_deficiency", "week_protocol", "week_missing", "week_deficiency",
                 "week_plane", "device_latest", "dead", "fleet_errors", "seq_runs",
                 "seq_spill", "exam_dates", "exam_withdrawals", "withdrawn_exams")

_DASH_TABLES = [
    "CREATE TABLE IF NOT EXISTS dash.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS dash.msgs (
        msg_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, clinic_id TEXT NOT NULL,
        kind TEXT NOT NULL, seq BIGINT NOT NULL, ts DOUBLE PRECISION NOT NULL,
        day INTEGER NOT NULL, received_ts DOUBLE PRECISION NOT NULL)""",
    # covering the few days the hole search reads message by message (queries.holes: a
    # block the period cuts, a spilled one), from the index alone
    "CREATE INDEX IF NOT EXISTS dash.msgs_day ON msgs (day, device_id, seq, kind, clinic_id)",
    "CREATE INDEX IF NOT EXISTS dash.msgs_device_seq ON msgs (device_id, seq)",
    """CREATE TABLE IF NOT EXISTS dash.exams (
        msg_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, clinic_id TEXT NOT NULL,
        exam_id TEXT, day INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL, protocol TEXT,
        required INTEGER, captured INTEGER, complete INTEGER, best_quality DOUBLE PRECISION,
        hc_mm DOUBLE PRECISION, ga_weeks DOUBLE PRECISION, ga_low DOUBLE PRECISION,
        ga_high DOUBLE PRECISION, ga_source TEXT, missing TEXT, ig_z DOUBLE PRECISION,
        dates_flag TEXT, dates_corrected INTEGER NOT NULL, setup_refused TEXT,
        shape_unchecked INTEGER)""",
    "CREATE INDEX IF NOT EXISTS dash.exams_day ON exams (day)",
    # the few exams whose heads the box's set-up refused, per box and clinic (the devices
    # and clinics pages' flags), from the index alone
    "CREATE INDEX IF NOT EXISTS dash.exams_setup_refused ON exams (day, device_id, "
    "clinic_id, setup_refused) WHERE setup_refused IS NOT NULL",
    # likewise the few whose heads were measured with the picture's shape unchecked
    "CREATE INDEX IF NOT EXISTS dash.exams_shape_unchecked ON exams (day, device_id, "
    "clinic_id) WHERE shape_unchecked IS NOT NULL",
    # covering the biometry page: its density, outliers and clinics come from the index alone
    "CREATE INDEX IF NOT EXISTS dash.exams_hc_day ON exams (day, ga_weeks, hc_mm, ig_z, "
    "clinic_id, ga_source, dates_flag, dates_corrected) WHERE hc_mm IS NOT NULL",
    # an exam's rows, found by a correction of its age by dates (_add_corrections)
    "CREATE INDEX IF NOT EXISTS dash.exams_device_exam ON exams (device_id, exam_id)",
    # Each exam's latest correction of its age by dates (a ``dates`` message; weeks NULL:
    # the midwife cleared them): the greatest seq wins, in whatever order the corrections
    # and their exam arrive. One waiting for an exam never stored costs a row.
    """CREATE TABLE IF NOT EXISTS dash.exam_dates (
        device_id TEXT NOT NULL, exam_id TEXT NOT NULL, ga_dates_weeks DOUBLE PRECISION,
        entered_ts DOUBLE PRECISION NOT NULL, seq BIGINT NOT NULL, msg_id TEXT NOT NULL,
        PRIMARY KEY (device_id, exam_id))""",
    # a batch's exams look up their corrections by id alone (_stored_by_exam)
    "CREATE INDEX IF NOT EXISTS dash.exam_dates_exam ON exam_dates (exam_id)",
    # Each exam's latest withdrawal entry (a ``withdrawal`` message: withdrawn, or restored),
    # the greatest seq winning as for the dates, in whatever order it and its exam arrive.
    """CREATE TABLE IF NOT EXISTS dash.exam_withdrawals (
        device_id TEXT NOT NULL, exam_id TEXT NOT NULL, withdrawn INTEGER NOT NULL,
        reason TEXT NOT NULL, entered_ts DOUBLE PRECISION NOT NULL, seq BIGINT NOT NULL,
        msg_id TEXT NOT NULL, PRIMARY KEY (device_id, exam_id))""",
    "CREATE INDEX IF NOT EXISTS dash.exam_withdrawals_exam ON exam_withdrawals (exam_id)",
    # The exams that stand withdrawn, out of dash.exams and every count (_withdraw_exams):
    # what the district sees of them is how many, where, when, and why.
    """CREATE TABLE IF NOT EXISTS dash.withdrawn_exams (
        msg_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, clinic_id TEXT NOT NULL,
        exam_id TEXT NOT NULL, day INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS dash.withdrawn_exams_day ON withdrawn_exams (day, clinic_id)",
    "CREATE INDEX IF NOT EXISTS dash.withdrawn_exams_device_exam ON withdrawn_exams "
    "(device_id, exam_id)",
    # messages per day and device: exams that stand, health, the others (status and the
    # later words about an exam), of those others the corrections (dates, withdrawals),
    # which take a seq, and the exams withdrawn (received, counted in no exam figure): the
    # devices page's received share counts every message that takes a seq
    """CREATE TABLE IF NOT EXISTS dash.day_device (
        device_id TEXT NOT NULL, clinic_id TEXT NOT NULL, day INTEGER NOT NULL,
        exams INTEGER NOT NULL, health INTEGER NOT NULL, other INTEGER NOT NULL,
        corrections INTEGER NOT NULL, withdrawn INTEGER NOT NULL,
        PRIMARY KEY (day, device_id, clinic_id)) WITHOUT ROWID""",
    # a clinic's first day (the clinics page counts silent weekdays from it on): one index
    # lookup per clinic rather than a scan of every day of its history
    "CREATE INDEX IF NOT EXISTS dash.day_device_clinic ON day_device (clinic_id, day)",
    # Exam figures are kept per week (pages show whole weeks): 2 years of a 50-clinic
    # district is then ~5,000 rows per table and protocol, not ~36,000.
    """CREATE TABLE IF NOT EXISTS dash.week_protocol (
        clinic_id TEXT NOT NULL, week INTEGER NOT NULL, protocol TEXT NOT NULL,
        exams INTEGER NOT NULL, complete INTEGER NOT NULL,
        PRIMARY KEY (week, clinic_id, protocol)) WITHOUT ROWID""",
    # n exams missed the slot: not_found of them never found it, poor found it but never
    # good enough (the summary's missing_seen); the rest do not say (older boxes, or the
    # names shed to fit 1 KB)
    """CREATE TABLE IF NOT EXISTS dash.week_missing (
        clinic_id TEXT NOT NULL, week INTEGER NOT NULL, protocol TEXT NOT NULL,
        slot TEXT NOT NULL, n INTEGER NOT NULL, not_found INTEGER NOT NULL,
        poor INTEGER NOT NULL, PRIMARY KEY (week, clinic_id, protocol, slot))
        WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS dash.week_deficiency (
        clinic_id TEXT NOT NULL, week INTEGER NOT NULL, name TEXT NOT NULL,
        exams INTEGER NOT NULL, frames BIGINT NOT NULL, PRIMARY KEY (week, clinic_id, name))
        WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS dash.week_plane (
        clinic_id TEXT NOT NULL, week INTEGER NOT NULL, plane TEXT NOT NULL,
        n INTEGER NOT NULL, q_sum DOUBLE PRECISION NOT NULL, q_low INTEGER NOT NULL,
        PRIMARY KEY (week, clinic_id, plane)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS dash.device_latest (
        device_id TEXT PRIMARY KEY, clinic_id TEXT NOT NULL,
        last_received DOUBLE PRECISION, max_seq BIGINT NOT NULL,
        health_seq BIGINT, health_ts DOUBLE PRECISION, health TEXT,
        status_received DOUBLE PRECISION, status_state TEXT, status_seq BIGINT,
        status_pending BIGINT, health_lag_s DOUBLE PRECISION,
        online_received DOUBLE PRECISION, online_lag_s DOUBLE PRECISION)""",
    # A device's model-update errors (health.fleet.error), one row per week, device, clinic,
    # error and the bundle installed then: how many health messages carried it, the first
    # and last. Counts add up, so a rebuild from the messages gives the same rows.
    """CREATE TABLE IF NOT EXISTS dash.fleet_errors (
        week INTEGER NOT NULL, device_id TEXT NOT NULL, clinic_id TEXT NOT NULL,
        error TEXT NOT NULL, bundle TEXT NOT NULL, n INTEGER NOT NULL,
        first_ts DOUBLE PRECISION NOT NULL, last_ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (week, device_id, clinic_id, error, bundle)) WITHOUT ROWID""",
    # A device's seqs (its SEQ_KINDS messages), as runs of consecutive seqs per block of 7 days
    # (seq_block), device and clinic: what queries.holes needs of them (_add_seq_runs).
    # Stored in block order: a period's runs are one contiguous read.
    """CREATE TABLE IF NOT EXISTS dash.seq_runs (
        block INTEGER NOT NULL, device_id TEXT NOT NULL, clinic_id TEXT NOT NULL,
        lo BIGINT NOT NULL, hi BIGINT NOT NULL, lo_day INTEGER NOT NULL,
        hi_day INTEGER NOT NULL, min_day INTEGER NOT NULL, max_day INTEGER NOT NULL,
        PRIMARY KEY (block, device_id, clinic_id, lo)) WITHOUT ROWID""",
    # A device's block that made more than SEQ_RUNS_PER_BLOCK runs: its runs are dropped and
    # the hole search reads that block's messages from dash.msgs instead.
    """CREATE TABLE IF NOT EXISTS dash.seq_spill (
        block INTEGER NOT NULL, device_id TEXT NOT NULL, PRIMARY KEY (block, device_id))
        WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS dash.dead (
        digest TEXT PRIMARY KEY, device_id TEXT NOT NULL, received_ts DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS dash.dead_device ON dead (device_id)",
    # the devices page counts a period's dead letters: read from this index alone
    "CREATE INDEX IF NOT EXISTS dash.dead_received ON dead (received_ts, device_id)",
    """CREATE TABLE IF NOT EXISTS dash.clinics (
        clinic_id TEXT PRIMARY KEY, district TEXT NOT NULL, name TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dash.users (
        username TEXT PRIMARY KEY, role TEXT NOT NULL, district TEXT NOT NULL,
        pw TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dash.sessions (
        token_hash TEXT PRIMARY KEY, username TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION NOT NULL)""",
]
# The one index the dashboard adds to the collector's own table: without it, finding the
# messages not yet rolled up would scan the whole table every few seconds.
_MAIN_INDEX_SQLITE = ("CREATE INDEX IF NOT EXISTS messages_received "
                      "ON messages (received_ts)")
_MAIN_INDEX_PG = ("CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_received "
                  "ON messages (received_ts)")


def sidecar_path(db_path: str) -> str:
    """The SQLite file holding the dashboard's tables, beside the collector's."""
    p = Path(db_path)
    return str(p.with_name(p.stem + ".dashboard.sqlite3"))


class Db:
    """One connection, SQLite or PostgreSQL, with ``?`` placeholders either way."""

    def __init__(self, url: str):
        self.url = url
        self.pg = is_postgres(url)
        self._tables: set[str] = set()  # the collector's tables found so far
        try:
            if self.pg:
                import psycopg

                self._errors: tuple = (psycopg.Error,)
                self.conn = psycopg.connect(url, autocommit=True, connect_timeout=10,
                                            options="-c statement_timeout=30000")
            else:
                self._errors = (sqlite3.Error,)
                path = sqlite_path(url)
                if path == ":memory:" or not Path(path).is_file():
                    raise DbError(f"{path}: no such database (is --db right?)")
                uri = sqlite_uri(path)
                self.conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
                self.conn.execute("ATTACH DATABASE ? AS dash",
                                  (sqlite_uri(sidecar_path(str(Path(path).resolve())), "rwc"),))
                self.conn.execute("PRAGMA dash.journal_mode=WAL")
                self.conn.execute("PRAGMA dash.synchronous=NORMAL")
                try:
                    self.conn.execute("SELECT floor(1.5)")
                except sqlite3.OperationalError:  # a build without SQLite's math functions
                    self.conn.create_function("floor", 1, math.floor, deterministic=True)
            if not self.has_collector_table("messages"):
                raise DbError(f"{self.shown()}: not a sonoedge collector database "
                              "(no messages table)")
        except ImportError:
            raise DbError(f"{url}: PostgreSQL needs psycopg: pip install 'sonoedge[central]'") \
                from None
        except DbError:
            raise
        except Exception as exc:
            raise DbError(f"{self.shown()}: cannot open database: {read_failure(exc)[:300]}") \
                from None

    def has_collector_table(self, name: str) -> bool:
        """Whether the collector's database has this table (an older collector made no
        ``resent``). A table found is remembered, since a collector never drops one: the
        rollup, every few seconds, asks once."""
        if name not in self._tables and self.query(
                "SELECT to_regclass(?) IS NOT NULL" if self.pg else
                "SELECT COUNT(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                (name,))[0][0]:
            self._tables.add(name)
        return name in self._tables

    def shown(self) -> str:
        return redact(self.url)

    def _sql(self, sql: str) -> str:
        if not self.pg:
            return sql
        # dash.<name> in an index statement means "index of table dash.<name>" in SQLite;
        # PostgreSQL puts an index in its table's schema and names it without one.
        sql = re.sub(r"INDEX IF NOT EXISTS dash\.(\w+) ON (\w+)",
                     r"INDEX IF NOT EXISTS \1 ON dash.\2", sql)
        # WITHOUT ROWID makes SQLite store a rollup in its key's order (a day range is one
        # contiguous read); PostgreSQL has no such clause.
        sql = sql.replace(" WITHOUT ROWID", "").replace("\n        WITHOUT ROWID", "")
        return sql.replace("?", "%s")

    def query(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        try:
            cur = self.conn.execute(self._sql(sql), tuple(params))
            return list(cur.fetchall())
        except self._errors as exc:
            raise DbError(f"{self.shown()}: query failed: {_one_line(exc)}") from None

    def execute(self, sql: str, params: tuple | list = ()) -> int:
        try:
            return self.conn.execute(self._sql(sql), tuple(params)).rowcount
        except self._errors as exc:
            raise DbError(f"{self.shown()}: write failed: {_one_line(exc)}") from None

    def many(self, sql: str, rows: list) -> None:
        if not rows:
            return
        try:
            if self.pg:
                with self.conn.cursor() as cur:
                    cur.executemany(self._sql(sql), rows)
            else:
                self.conn.executemany(sql, rows)
        except self._errors as exc:
            raise DbError(f"{self.shown()}: write failed: {_one_line(exc)}") from None

    class _Tx:
        def __init__(self, db: Db):
            self.db = db

        def __enter__(self):
            if self.db.pg:
                self._tx = self.db.conn.transaction()
                self._tx.__enter__()
            else:
                self.db.conn.execute("BEGIN IMMEDIATE")  # the dash file only: main is ro
            return self.db

        def __exit__(self, exc_type, exc, tb):
            if self.db.pg:
                return self._tx.__exit__(exc_type, exc, tb)
            self.db.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
            return False

    def tx(self) -> Db._Tx:
        """A write transaction on the dashboard's tables (never the collector's)."""
        return Db._Tx(self)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def open_db(url: str, setup: bool = True) -> Db:
    """Open the collector's database for the dashboard; ``setup`` makes the dashboard's
    tables when missing. A missing or foreign database is a ``DbError`` (one line)."""
    db = Db(url)
    if setup:
        try:
            ensure_schema(db)
        except DbError:
            db.close()
            raise
    return db


def ensure_schema(db: Db) -> None:
    _drop_stale_rollups(db)
    if db.pg:
        with db.tx():
            db.execute("SELECT pg_advisory_xact_lock(727275)")
            db.execute("CREATE SCHEMA IF NOT EXISTS dash")
            for stmt in _DASH_TABLES:
                db.execute(stmt)
        # CONCURRENTLY: the collector goes on inserting while the index is built.
        db.execute(_MAIN_INDEX_PG)
    else:
        with db.tx():
            for stmt in _DASH_TABLES:
                db.execute(stmt)
        if not db.query("SELECT 1 FROM main.sqlite_master WHERE name = 'messages_received'"):
            _sqlite_main_index(db)
    with db.tx():
        db.execute("INSERT INTO dash.meta (key, value) VALUES ('schema', ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (SCHEMA_VERSION,))


def _drop_stale_rollups(db: Db) -> None:
    """Rollups made by another version of this module are dropped (and rebuilt by the next
    refresh from the collector's messages, which are never touched)."""
    try:
        rows = db.query("SELECT value FROM dash.meta WHERE key = 'schema'")
    except DbError:
        return  # no dashboard tables yet
    if not rows or rows[0][0] == SCHEMA_VERSION:
        return
    with db.tx():
        for table in ROLLUP_TABLES:
            db.execute(f"DROP TABLE IF EXISTS dash.{table}")
        db.execute("DELETE FROM dash.meta WHERE key IN ('received_ts', 'dead_ts', "
                   "'resent_ts')")


def _sqlite_main_index(db: Db) -> None:
    """The collector's file is read-only to the dashboard: build the index once through a
    short-lived writable connection (the collector waits for it, once, with its 30 s busy
    timeout; on a large database say so first)."""
    conn = sqlite3.connect(sqlite_path(db.url), timeout=60.0)
    try:
        conn.execute(_MAIN_INDEX_SQLITE)
        conn.commit()
    except sqlite3.Error as exc:
        raise DbError(f"{db.shown()}: cannot add the dashboard's index: {_one_line(exc)}") \
            from None
    finally:
        conn.close()


# -- refresh ---------------------------------------------------------------------------------
def day_of(device_ts: float | None, received_ts: float) -> tuple[float, int]:
    """(ts, UTC day number) dating a message: the device's clock when plausible, and never
    after the message arrived. A box whose clock runs a few hours ahead had dated an exam
    sent at 23:00 "tomorrow": counted in its week's rollups but in no day of the period
    up to today, so a page's exam count left it out while its deficiencies or protocols
    counted it (a share over 100% failed the quality page)."""
    ts = received_ts
    if device_ts is not None and math.isfinite(device_ts) and (
            received_ts - C.DEVICE_CLOCK_BEHIND_S <= device_ts):
        ts = min(device_ts, received_ts)
    return ts, int(ts // C.DAY_S)


def _lag(device_ts: float | None, received_ts: float) -> float | None:
    """How long after the box's clock the collector received a message: its queueing
    and the link, plus how far the box's clock is behind (clock_offset)."""
    if device_ts is None or not math.isfinite(device_ts):
        return None
    return round(received_ts - device_ts, 3)


def clock_offset(health_lag_s: float | None, online_lag_s: float | None) -> float | None:
    """How far the box's clock is behind the collector's (negative: ahead), from two lags
    (received minus the box's time): of its latest health message, and of its latest
    "online" status, sent at a connect and never queued. Each lag is a delay (never
    negative) plus the clock's error, so the smaller is the nearer to the error, ahead as
    well as behind: a backlog delays only the first, the retained status a collector reads
    after an outage only the second (its health queued at the broker meanwhile delays the
    first too, until the box's next live health). None while either is unknown."""
    if health_lag_s is None or online_lag_s is None:
        return None
    return min(float(health_lag_s), float(online_lag_s))


def exam_day_of(ended_ts: object, device_ts: float | None, received_ts: float,
                behind_s: float = 0.0) -> tuple[float, int]:
    """(ts, UTC day number) dating an exam: when it ended by the box's clock (the summary's
    ``ended_ts``, which the exam schema requires), not when it was queued (the envelope's
    ``ts``): a run a power cut killed is rebuilt and queued at the next start, and the
    journal's exams the outbox lost are queued again then, days later. Under ``day_of``'s
    rules (never after the exam arrived); the envelope's ``ts`` when ``ended_ts`` is none or
    older than a backlog can be. ``behind_s``: how far the box's clock was behind when the
    exam arrived (``_ClockLags``), added: its exam is counted on the day it was done."""
    ended = wall_ts_or_none(ended_ts)
    if ended is not None and received_ts - C.DEVICE_CLOCK_BEHIND_S <= ended:
        return day_of(ended + behind_s, received_ts)
    return day_of(None if device_ts is None else device_ts + behind_s, received_ts)


class _ClockLags:
    """Each box's two clock lags (``clock_offset``) as of the message the rollup is at: the
    stored ``dash.device_latest`` ones, then each of the batch's health and online messages
    in turn, by the rules ``_upsert_latest`` keeps them by. A box online with its clock
    behind (no RTC battery, no network time on its link: a district's own broker) sent its
    exams dated weeks early, and the clinic looked silent while it worked: each is counted
    where it was done. Only behind: a clock ahead is already held to the exam's arrival
    (``day_of``), and an "ahead" read from one stale lag would move exams into the past."""

    def __init__(self, db: Db, devices: list[str]):
        # device -> [health seq, its lag, online status received, its lag]
        self.lags: dict[str, list] = {}
        for part in _chunks(devices):
            for dev, *row in db.query(
                    "SELECT device_id, health_seq, health_lag_s, online_received, online_lag_s "
                    f"FROM dash.device_latest WHERE device_id IN ({_marks(part)})", part):
                self.lags[dev] = list(row)

    def _of(self, dev: str) -> list:
        return self.lags.setdefault(dev, [None, None, None, None])

    def health(self, dev: str, seq: int, lag: float | None) -> None:
        row = self._of(dev)
        if row[0] is None or row[0] <= seq:
            row[0], row[1] = seq, lag

    def online(self, dev: str, received: float, lag: float | None) -> None:
        row = self._of(dev)
        if row[2] is None or row[2] <= received:
            row[2], row[3] = received, lag

    def behind_s(self, dev: str) -> float:
        row = self.lags.get(dev)
        offset = None if row is None else clock_offset(number_or_none(row[1]),
                                                       number_or_none(row[3]))
        return offset if offset is not None and offset >= C.CLOCK_OFF_FLAG_S else 0.0


def week_of(day: int) -> int:
    """Monday-based week number (day 0, 1970-01-01, was a Thursday)."""
    return (day + 3) // 7


def seq_block(day: int) -> int:
    """The block of ``dash.seq_runs`` a day is in: 7 days from a Saturday (day 2). A period
    starts on a Monday and the hole search looks C.HOLE_LOOKBACK_DAYS (30) before it
    (queries.holes), so its window starts on a Saturday too: whole blocks but for the
    current one."""
    return (day - 2) // 7


def block_days(block: int) -> tuple[int, int]:
    """The first and last day of a ``seq_block``."""
    return block * 7 + 2, block * 7 + 8


@dataclass
class RefreshStats:
    messages: int = 0
    dead: int = 0
    seconds: float = 0.0
    resent: int = 0
    more: bool = False  # it stopped at its batch limit: more messages wait


_refresh_lock = threading.Lock()


def refresh(db: Db, max_batches: int | None = None) -> RefreshStats:
    """Roll up the stored messages not yet rolled up, all of them or at most `max_batches`
    batches (the dashboard's steps: its pages say while more wait, `RefreshStats.more`);
    returns what was added."""
    t0 = time.perf_counter()
    stats = RefreshStats()
    with _refresh_lock:
        stats.more = max_batches is not None
        for _ in range(max_batches) if max_batches is not None else itertools.count():
            n = _refresh_batch(db)
            stats.messages += n
            if n < C.REFRESH_BATCH:
                stats.more = False
                break
        stats.more = _refresh_all_resent(db, stats) or stats.more
        stats.dead = _refresh_dead(db)
    stats.seconds = time.perf_counter() - t0
    return stats


def _refresh_all_resent(db: Db, stats: RefreshStats) -> bool:
    """The resent seqs, at most RESENT_MAX_BATCHES batches a refresh; True if more wait."""
    for _ in range(RESENT_MAX_BATCHES):
        n = _refresh_resent(db)
        stats.resent += n
        if n < C.REFRESH_BATCH:
            return False
    return True


def rolled_up_to(db: Db) -> float | None:
    """When the newest message the rollup has taken in was received (its watermark, kept in
    the database): how far a catching-up rollup has come, across restarts."""
    ts = _watermark(db, "received_ts")
    return ts if ts > 0 else None


def _watermark(db: Db, key: str) -> float:
    rows = db.query("SELECT value FROM dash.meta WHERE key = ?", (key,))
    return float(rows[0][0]) if rows else 0.0


def _set_watermark(db: Db, key: str, value: float) -> None:
    db.execute("INSERT INTO dash.meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
               "DO UPDATE SET value = excluded.value", (key, repr(float(value))))


def _since(db: Db, key: str) -> float:
    """In a refresh's transaction: one refresher at a time (PostgreSQL; SQLite's write lock
    does it there), and the watermark `key`, less the overlap that catches late commits."""
    if db.pg:
        db.execute("SELECT pg_advisory_xact_lock(727276)")
    return _watermark(db, key) - C.REFRESH_OVERLAP_S


def _advance(db: Db, key: str, since: float, received: list[float]) -> None:
    """Move the watermark `key` to the newest row read, once that is past the overlap."""
    if received and max(received) > since + C.REFRESH_OVERLAP_S:
        _set_watermark(db, key, max(received))


def _refresh_batch(db: Db) -> int:
    with db.tx():
        since = _since(db, "received_ts")
        rows = db.query(
            "SELECT m.msg_id, m.device_id, m.clinic_id, m.kind, m.seq, m.device_ts, "
            "m.received_ts, m.payload FROM messages m WHERE m.received_ts >= ? AND NOT EXISTS "
            "(SELECT 1 FROM dash.msgs d WHERE d.msg_id = m.msg_id) "
            "ORDER BY m.received_ts LIMIT ?", (since, C.REFRESH_BATCH))
        if not rows:
            return 0
        _add(db, rows)
        _advance(db, "received_ts", since, [r[6] for r in rows])
    return len(rows)


def _add(db: Db, rows: list[tuple]) -> None:
    msgs, exams, seqs = [], [], []
    gone: list[tuple] = []  # rows of dash.withdrawn_exams: this batch's exams withdrawn
    batch_exams: list[tuple] = []  # (msg_id, dev, clinic, day, ts, data): rows made below
    corrections: dict[tuple[str, str], Correction] = {}  # (device, exam_id): the latest
    withdrawals: dict[tuple[str, str], Withdrawal] = {}  # (device, exam_id): the latest
    day_device: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    weeks = _Weeks()
    fleet_errors: dict[tuple, list[float]] = {}
    latest: dict[str, dict] = {}
    skipped = 0
    known = _known_clinics(db, rows)
    clocks = _ClockLags(db, sorted({r[1] for r in rows}))
    for msg_id, dev, clinic, kind, seq, device_ts, received, payload in rows:
        try:
            clinic = clinic or known[dev]
            ts, day = day_of(device_ts, received)
            # the message (its seq, the holes) is dated when it was queued; an exam's
            # figures by when the exam ended (exam_day_of)
            msgs.append((msg_id, dev, clinic, kind, int(seq), ts, day, received))
            if kind in SEQ_KINDS:
                seqs.append((dev, clinic, int(seq), day))
            lat = latest.setdefault(dev, {"clinic": clinic, "received": received, "max_seq": 0})
            if received >= lat["received"]:
                lat["clinic"], lat["received"] = clinic, received
            try:
                data = json.loads(payload)
            except ValueError:  # the collector stored it, so it parsed once; be safe anyway
                data = None
            if kind == "exam" and isinstance(data, dict):
                ts, day = exam_day_of(data.get("ended_ts"), device_ts, received,
                                      clocks.behind_s(dev))
            counts = day_device[(day, dev, clinic)]
            counts[0 if kind == "exam" else 1 if kind == "health" else 2] += 1
            counts[3] += kind in CORRECTION_KINDS
            if data is None:
                continue
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            if kind in SEQ_KINDS:
                lat["max_seq"] = max(lat["max_seq"], int(seq))
            if kind == "health" and (err := _fleet_error(data)) is not None:
                e = fleet_errors.setdefault((week_of(day), dev, clinic, *err), [0, ts, ts])
                e[0], e[1], e[2] = e[0] + 1, min(e[1], ts), max(e[2], ts)
            if kind == "health":
                clocks.health(dev, int(seq), _lag(device_ts, received))
            if kind == "health" and int(seq) >= lat.get("health_seq", -1):
                lat["health_seq"], lat["health_ts"] = int(seq), ts
                lat["health_lag_s"] = _lag(device_ts, received)
                lat["health"] = json.dumps(_health_digest(data), separators=(",", ":"))
            elif kind == "status" and received >= lat.get("status_received", -1.0):
                lat["status_received"], lat["status_state"] = received, str(data.get("state"))
                lat["status_seq"] = int(seq)
                lat["status_pending"] = int(data.get("pending") or 0)
            if (kind == "status" and data.get("state") == "online"
                    and received >= lat.get("online_received", -1.0)):
                # sent at the connect it announces, never queued: its lag is the clock's
                lat["online_received"] = received
                lat["online_lag_s"] = _lag(device_ts, received)
                clocks.online(dev, received, lat["online_lag_s"])
            if kind == "dates" and (c := _correction(data, int(seq), msg_id, ts)) is not None:
                keep_latest(corrections, (dev, c.exam_id), c)
            if kind == "withdrawal" and (
                    w := withdrawal_entry(data, int(seq), msg_id, ts)) is not None:
                keep_latest(withdrawals, (dev, w.exam_id), w)
            if kind != "exam":
                continue
            batch_exams.append((msg_id, dev, clinic, day, ts, data))
            weeks.add(week_of(day), clinic, data)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError,
                RecursionError, OverflowError):
            # not as the collector writes a message (another writer, a damaged
            # database): skipped, so one such row cannot stop every rollup; and marked
            # seen if it never reached dash.msgs, else a batch of such rows within the
            # watermark's overlap was read again by every batch, for ever, and nothing
            # after them was ever rolled up
            skipped += 1
            if not msgs or msgs[-1][0] != msg_id:
                msgs.append(_skipped_row(msg_id, dev, received))
    for dev, clinic in known.moves.items():
        _move_unregistered(db, dev, clinic)
    db.many("INSERT INTO dash.msgs (msg_id, device_id, clinic_id, kind, seq, ts, day, "
            "received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", msgs)
    dated = _add_corrections(db, corrections, batch_exams)
    withdrawn = _add_withdrawals(db, withdrawals, batch_exams, weeks, day_device)
    for msg_id, dev, clinic, day, ts, data in batch_exams:
        key = (dev, exam_key(data.get("exam_id")))
        try:
            if key in withdrawn:  # withdrawn before it arrived: out of every count
                _count_exam(weeks, day_device, dev, clinic, day, data, -1)
                gone.append((msg_id, dev, clinic, key[1], day, ts, withdrawn[key]))
                continue
            exams.append(_exam_row(msg_id, dev, clinic, day, ts, data,
                                   dated.get(key, FROM_SUMMARY)))
        except (TypeError, ValueError, AttributeError, KeyError, IndexError,
                OverflowError):  # as above: a row the collector did not write
            skipped += 1
    if skipped:
        log.warning("dashboard: %d stored message(s) not as the collector writes them "
                    "skipped in this rollup", skipped)
    db.many(f"INSERT INTO dash.exams ({', '.join(EXAM_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(EXAM_COLUMNS))})", exams)
    db.many(_INSERT_WITHDRAWN, gone)
    _add_seq_runs(db, seqs)
    db.many(_UPSERT_DAY_DEVICE, [(*k, *v) for k, v in day_device.items()])
    weeks.write(db)
    _drop_empty_weeks(db, sorted(weeks.taken_off))
    _add_fleet_errors(db, fleet_errors)
    for dev, lat in latest.items():
        _upsert_latest(db, dev, lat)


SKIPPED_KIND = "(skipped)"  # a dash.msgs row of a message no rollup can read: no counts


def _skipped_row(msg_id: object, dev: object, received: object) -> tuple:
    """dash.msgs' row for a message `_add` could not read: in no count (its kind is none
    of the collector's, its clinic none, its seq -1), only seen."""
    when = float(received) if isinstance(received, int | float) and math.isfinite(
        received) else 0.0
    return (str(msg_id), str(dev)[:64], "", SKIPPED_KIND, -1, when, int(when // C.DAY_S), when)


_UPSERT_DAY_DEVICE = (
    "INSERT INTO dash.day_device (day, device_id, clinic_id, exams, health, other, "
    "corrections, withdrawn) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, device_id, "
    "clinic_id) DO UPDATE SET exams = dash.day_device.exams + excluded.exams, "
    "health = dash.day_device.health + excluded.health, "
    "other = dash.day_device.other + excluded.other, "
    "corrections = dash.day_device.corrections + excluded.corrections, "
    "withdrawn = dash.day_device.withdrawn + excluded.withdrawn")


class _Weeks:
    """Exam figures per week and clinic (``dash.week_protocol``, ``week_missing``,
    ``week_deficiency``, ``week_plane``), summed in memory over a batch, then added."""

    def __init__(self) -> None:
        self.protocol: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        # exams that missed the slot: [n, of them never found it, found it not good enough]
        self.missing: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.deficiency: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
        self.plane: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0])
        self.taken_off: set[str] = set()  # clinics an exam was taken off (`_drop_empty_weeks`)

    def add(self, week: int, clinic: str, data: dict, sign: int = 1) -> None:
        """One exam's figures (``sign`` -1: taken off, as when its clinic changes or it is
        withdrawn)."""
        if sign < 0:
            self.taken_off.add(clinic)
        protocol = data.get("protocol") or {}
        name = str(protocol.get("name") or "")
        if name:
            pc = self.protocol[(week, clinic, name)]
            pc[0] += sign
            pc[1] += sign * _complete(protocol)
            named = [_text(slot, 32) for slot in protocol.get("missing") or []]
            seen = missing_seen(protocol)
            for slot in named:
                m = self.missing[(week, clinic, name, slot)]
                m[0] += sign
                if seen is not None:  # else of unknown kind
                    m[2 if slot in seen else 1] += sign
            if _unnamed(protocol, named):  # one exam, however many names it shed
                self.missing[(week, clinic, name, UNNAMED_SLOT)][0] += sign
        other = None  # frames under criteria the dashboard does not know (C.DEFICIENCY_OTHER)
        for crit, frames in (data.get("deficiencies") or {}).items():
            if str(crit) not in C.DEFICIENCY_WORDS:
                other = (other or 0) + int(frames)
                continue
            d = self.deficiency[(week, clinic, str(crit))]
            d[0] += sign
            d[1] += sign * int(frames)
        if other is not None:  # one exam, however many such names it gave
            d = self.deficiency[(week, clinic, C.DEFICIENCY_OTHER)]
            d[0] += sign
            d[1] += sign * other
        for plane, entry in (data.get("planes") or {}).items():
            if plane in C.NOT_A_VIEW or not entry or entry[0] <= 0 or len(entry) < 3:
                continue
            q = number_or_none(entry[2])
            if q is None:
                continue
            wp = self.plane[(week, clinic, str(plane))]
            wp[0] += sign
            wp[1] += sign * q
            wp[2] += sign * int(q < C.MIN_QUALITY)

    def write(self, db: Db) -> None:
        db.many("INSERT INTO dash.week_protocol (week, clinic_id, protocol, exams, complete) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (week, clinic_id, protocol) DO UPDATE SET "
                "exams = dash.week_protocol.exams + excluded.exams, "
                "complete = dash.week_protocol.complete + excluded.complete",
                [(*k, *v) for k, v in self.protocol.items()])
        db.many("INSERT INTO dash.week_missing (week, clinic_id, protocol, slot, n, "
                "not_found, poor) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (week, clinic_id, "
                "protocol, slot) DO UPDATE SET n = dash.week_missing.n + excluded.n, "
                "not_found = dash.week_missing.not_found + excluded.not_found, "
                "poor = dash.week_missing.poor + excluded.poor",
                [(*k, *v) for k, v in self.missing.items()])
        db.many("INSERT INTO dash.week_deficiency (week, clinic_id, name, exams, frames) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (week, clinic_id, name) DO UPDATE SET "
                "exams = dash.week_deficiency.exams + excluded.exams, "
                "frames = dash.week_deficiency.frames + excluded.frames",
                [(*k, *v) for k, v in self.deficiency.items()])
        db.many("INSERT INTO dash.week_plane (week, clinic_id, plane, n, q_sum, q_low) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (week, clinic_id, plane) DO UPDATE SET "
                "n = dash.week_plane.n + excluded.n, "
                "q_sum = dash.week_plane.q_sum + excluded.q_sum, "
                "q_low = dash.week_plane.q_low + excluded.q_low",
                [(*k, *v) for k, v in self.plane.items()])


# -- messages stored without a clinic --------------------------------------------------------
class _Known(dict):
    """Device -> the clinic its messages stored without one (clinic "": the collector's
    registry did not list it yet) count under: the first clinic the registry listed it at
    (`_first_clinics`), else C.UNREGISTERED. ``moves``: devices counted under
    C.UNREGISTERED so far that this batch names a clinic for: what the rollups hold of them
    moves to the first clinic it names (``_move_unregistered``)."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: dict[str, str] = {}


def _first_clinics(db: Db, devices: list[str], batch: dict[str, tuple[float, str]]
                   ) -> dict[str, str]:
    """Each device's first clinic the registry listed it at: its earliest message the
    rollup holds under a clinic, else `batch`'s earliest ((received, clinic) per device).
    The first, not the latest: a box's messages from before it was listed were sent where
    it was first put, and where they count then depends neither on how the rows were
    batched (a rebuild takes them in one) nor on a later move; the report counts alike."""
    out: dict[str, str] = {}
    # Only a box the rollup counts under a clinic now has messages under one: a box never
    # listed (under C.UNREGISTERED, or new) skips reading all its messages at every
    # refresh (10 ms a refresh for a box of 100,000 messages, and growing).
    counted: set[str] = set()
    for i in range(0, len(devices), 500):
        part = devices[i:i + 500]
        counted |= {dev for dev, in db.query(
            f"SELECT device_id FROM dash.device_latest WHERE device_id IN "
            f"({', '.join('?' * len(part))}) AND clinic_id NOT IN ('', ?)",
            (*part, C.UNREGISTERED))}
    for dev in devices:
        found = dev in counted and db.query(
            "SELECT clinic_id FROM dash.msgs WHERE device_id = ? AND clinic_id NOT IN "
            "('', ?) ORDER BY received_ts LIMIT 1", (dev, C.UNREGISTERED))
        if found:
            out[dev] = found[0][0]
        elif dev in batch:
            out[dev] = batch[dev][1]
    return out


def _known_clinics(db: Db, rows: list[tuple]) -> _Known:
    out = _Known()
    earliest: dict[str, tuple[float, str]] = {}  # this batch's first clinic of each device
    for _, dev, clinic, _, _, _, received, _ in rows:
        if clinic and (dev not in earliest or received < earliest[dev][0]):
            earliest[dev] = (received, clinic)
    unregistered = {r[0] for r in db.query(
        "SELECT device_id FROM dash.device_latest WHERE clinic_id = ?", (C.UNREGISTERED,))}
    out.moves = {dev: earliest[dev][1] for dev in unregistered if dev in earliest}
    nameless = sorted({r[1] for r in rows if not r[2]})
    first = _first_clinics(db, nameless, earliest)
    for dev in nameless:
        out[dev] = first.get(dev, C.UNREGISTERED)
    return out


def _move_unregistered(db: Db, dev: str, clinic: str) -> None:
    """A device counted under C.UNREGISTERED is now known by ``clinic`` (the registry lists
    it): what the rollups hold of it moves there, so that every page counts its earlier
    exams where it counts its later ones, as the report does. Once per device; it costs what
    the device sent before it was listed. The weekly exam tables have no device column:
    its exams' figures are made again from their payloads, taken off one clinic and added
    to the other."""
    old = C.UNREGISTERED
    found = db.query("SELECT msg_id, day FROM dash.exams WHERE device_id = ? AND clinic_id = ?",
                     (dev, old))
    payloads: dict[str, str] = {}
    for part in _chunks([m for m, _ in found]):
        payloads.update(db.query(
            f"SELECT msg_id, payload FROM messages WHERE msg_id IN ({_marks(part)})", part))
    weeks = _Weeks()
    for msg_id, day in found:
        try:
            data = json.loads(payloads.get(msg_id, ""))
            if isinstance(data, dict):
                for c, sign in ((old, -1), (clinic, 1)):  # as _add did: the same either way
                    weeks.add(week_of(int(day)), c, data, sign)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError,
                RecursionError, OverflowError):
            continue
    weeks.write(db)
    _drop_empty_weeks(db, sorted(weeks.taken_off))
    seqs = [(dev, clinic, int(seq), int(day)) for seq, day, kind in db.query(
        "SELECT seq, day, kind FROM dash.msgs WHERE device_id = ? AND clinic_id = ?",
        (dev, old)) if kind in SEQ_KINDS]
    for table in ("msgs", "exams", "withdrawn_exams"):
        db.execute(f"UPDATE dash.{table} SET clinic_id = ? WHERE device_id = ? AND "
                   "clinic_id = ?", (clinic, dev, old))
    # its runs of seqs: made again under the clinic, with the runs already there
    db.execute("DELETE FROM dash.seq_runs WHERE device_id = ? AND clinic_id = ?", (dev, old))
    _add_seq_runs(db, seqs)
    db.many(_UPSERT_DAY_DEVICE, [(day, dev, clinic, *counts) for day, *counts in db.query(
        "SELECT day, exams, health, other, corrections, withdrawn FROM dash.day_device "
        "WHERE device_id = ? AND clinic_id = ?", (dev, old))])
    db.execute("DELETE FROM dash.day_device WHERE device_id = ? AND clinic_id = ?", (dev, old))
    db.many(_UPSERT_FLEET_ERRORS, [(week, dev, clinic, *rest) for week, *rest in db.query(
        "SELECT week, error, bundle, n, first_ts, last_ts FROM dash.fleet_errors "
        "WHERE device_id = ? AND clinic_id = ?", (dev, old))])
    db.execute("DELETE FROM dash.fleet_errors WHERE device_id = ? AND clinic_id = ?",
               (dev, old))
    db.execute("UPDATE dash.device_latest SET clinic_id = ? WHERE device_id = ?", (clinic, dev))


def _drop_empty_weeks(db: Db, clinics: list[str]) -> None:
    """The weekly figures of `clinics` that taking exams off (a move, a withdrawal) emptied:
    deleted, as a figure never counted has no row (no protocol of 0 exams on a page)."""
    for part in _chunks(clinics):
        for table, count in (("week_protocol", "exams"), ("week_missing", "n"),
                             ("week_deficiency", "exams"), ("week_plane", "n")):
            db.execute(f"DELETE FROM dash.{table} WHERE clinic_id IN ({_marks(part)}) AND "
                       f"{count} <= 0", part)


# -- sequence runs ---------------------------------------------------------------------------
# A run: consecutive seqs lo..hi that a device's SEQ_KINDS messages stored at one clinic
# in one block (seq_block) carry, [lo, hi, lo_day, hi_day, min_day, max_day]: the day of the
# run's first seq (the earliest, when that seq came more than once) and of its last (the
# latest), and the first and last day of any of its messages.
_RUN_COLUMNS = "lo, hi, lo_day, hi_day, min_day, max_day"


def merge_runs(runs: list[list[int]]) -> list[list[int]]:
    """Runs (or single seqs, as runs of one) that overlap or touch, merged into the runs
    they make together; the days as ``_RUN_COLUMNS`` says. Adding a seq twice changes
    nothing, so a message read again (the refresh's overlap, a resend) is harmless."""
    out: list[list[int]] = []
    for r in sorted(runs):
        if not out or r[0] > out[-1][1] + 1:
            out.append(list(r))
            continue
        c = out[-1]
        if r[0] == c[0]:
            c[2] = min(c[2], r[2])
        if r[1] > c[1]:
            c[1], c[3] = r[1], r[3]
        elif r[1] == c[1]:
            c[3] = max(c[3], r[3])
        c[4], c[5] = min(c[4], r[4]), max(c[5], r[5])
    return out


def _add_seq_runs(db: Db, seqs: list[tuple[str, str, int, int]]) -> None:
    """Add (device, clinic, seq, day) of SEQ_KINDS messages to ``dash.seq_runs``.

    A seq extends a run, joins two (a late message that fills a hole of one seq), or starts
    one of its own (a hole before it, or a late message inside a hole: the hole is split).
    queries.holes finds the holes between runs at read time, so no hole is stored that a
    later message must find and shrink. A device's block holds at most
    C.SEQ_RUNS_PER_BLOCK runs: one more (a box sending wild seqs, each a run of its own)
    drops them for a row in ``dash.seq_spill``, and the search reads that block's messages
    from ``dash.msgs``, as it read every block before (exact, and that week costs the
    search what it did then)."""
    if not seqs:
        return
    by_block: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for dev, clinic, seq, day in seqs:
        by_block[seq_block(day)][dev].append((clinic, [seq, seq, day, day, day, day]))
    deletes, upserts, spills = [], [], []
    for block, devs in by_block.items():
        names = sorted(devs)
        have: dict[str, dict[tuple[str, int], tuple]] = defaultdict(dict)
        spilled: set[str] = set()
        for part in _chunks(names):
            marks = _marks(part)
            spilled.update(r[0] for r in db.query(
                f"SELECT device_id FROM dash.seq_spill WHERE block = ? AND device_id IN ({marks})",
                (block, *part)))
            for dev, clinic, *run in db.query(
                    f"SELECT device_id, clinic_id, {_RUN_COLUMNS} FROM dash.seq_runs "
                    f"WHERE block = ? AND device_id IN ({marks})", (block, *part)):
                have[dev][(clinic, int(run[0]))] = tuple(int(x) for x in run)
        for dev in names:
            if dev in spilled:
                continue
            old = have.get(dev, {})
            per_clinic: dict[str, list] = defaultdict(list)
            for (clinic, _), run in old.items():
                per_clinic[clinic].append(list(run))
            for clinic, run in devs[dev]:
                per_clinic[clinic].append(run)
            new = {(clinic, run[0]): tuple(run) for clinic, runs in per_clinic.items()
                   for run in merge_runs(runs)}
            if len(new) > C.SEQ_RUNS_PER_BLOCK:
                spills.append((block, dev))
                deletes.extend((block, dev, clinic, lo) for clinic, lo in old)
                continue
            deletes.extend((block, dev, clinic, lo) for clinic, lo in old.keys() - new.keys())
            upserts.extend((block, dev, clinic, *run) for (clinic, _), run in new.items()
                           if old.get((clinic, run[0])) != run)
    db.many("DELETE FROM dash.seq_runs WHERE block = ? AND device_id = ? AND clinic_id = ? "
            "AND lo = ?", deletes)
    db.many(f"INSERT INTO dash.seq_runs (block, device_id, clinic_id, {_RUN_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (block, device_id, clinic_id, lo) "
            "DO UPDATE SET hi = excluded.hi, lo_day = excluded.lo_day, "
            "hi_day = excluded.hi_day, min_day = excluded.min_day, max_day = excluded.max_day",
            upserts)
    db.many("INSERT INTO dash.seq_spill (block, device_id) VALUES (?, ?) "
            "ON CONFLICT (block, device_id) DO NOTHING", spills)


# Past this many distinct errors a device's week, its further ones are counted under this
# one: a box sending a new error text in every health message cannot grow the table, or
# the devices page, beyond it (which errors keep their own row then depends on the order
# they arrived in; every health message is still counted).
FLEET_ERRORS_MORE = "(more distinct errors that week: counted here)"


def _fleet_error(data: dict) -> tuple[str, str] | None:
    """(error, bundle installed) of a health message reporting a failed or refused model
    update (edge/fleet: it stays until the next install), None without one."""
    fleet = data.get("fleet")
    if not isinstance(fleet, dict) or not fleet.get("error"):
        return None
    return _text(fleet["error"], C.FLEET_ERROR_CHARS), _text(fleet.get("bundle", ""), 40)


def _add_fleet_errors(db: Db, rows: dict[tuple, list[float]]) -> None:
    """Add a batch's fleet errors, holding each device's week to FLEET_ERRORS_PER_WEEK
    distinct ones (and FLEET_ERRORS_MORE)."""
    kept: dict[tuple, set] = {}
    out: dict[tuple, list[float]] = {}
    for key in sorted(rows, key=lambda k: rows[k][1]):  # the earliest take the free places
        week, dev, clinic, error, bundle = key
        have = kept.get((week, dev))
        if have is None:
            have = kept[(week, dev)] = {tuple(r) for r in db.query(
                "SELECT clinic_id, error, bundle FROM dash.fleet_errors WHERE week = ? AND "
                "device_id = ? AND error <> ?", (week, dev, FLEET_ERRORS_MORE))}
        if (clinic, error, bundle) not in have:
            if len(have) >= C.FLEET_ERRORS_PER_WEEK:
                key = (week, dev, clinic, FLEET_ERRORS_MORE, "")
            else:
                have.add((clinic, error, bundle))
        n, first, last = rows[(week, dev, clinic, error, bundle)]
        e = out.setdefault(key, [0, first, last])
        e[0], e[1], e[2] = e[0] + n, min(e[1], first), max(e[2], last)
    db.many(_UPSERT_FLEET_ERRORS, [(*k, *v) for k, v in out.items()])


_UPSERT_FLEET_ERRORS = (
    "INSERT INTO dash.fleet_errors (week, device_id, clinic_id, error, bundle, n, "
    "first_ts, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (week, device_id, "
    "clinic_id, error, bundle) DO UPDATE SET n = dash.fleet_errors.n + excluded.n, "
    "first_ts = CASE WHEN excluded.first_ts < dash.fleet_errors.first_ts "
    "THEN excluded.first_ts ELSE dash.fleet_errors.first_ts END, "
    "last_ts = CASE WHEN excluded.last_ts > dash.fleet_errors.last_ts "
    "THEN excluded.last_ts ELSE dash.fleet_errors.last_ts END")


def _text(value, chars: int) -> str:
    """A device's string as every database stores it: cut to ``chars``, without NUL (which
    PostgreSQL refuses) or a lone surrogate (valid in JSON, not in UTF-8: SQLite's driver
    refuses it), either of which failed the whole rollup batch, again at every refresh."""
    text = str(value)[:chars].replace("\x00", "")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:chars]


# A busy exam sheds the names of its missing slots to fit 1 KB on the wire, keeping their
# count (edge/uplink/messages.py): such an exam is counted once under this name, like every
# named slot (the page's shares are of exams: "9 of 1" would read as 900%).
UNNAMED_SLOT = "(not named: shed to fit 1 KB)"


def _complete(protocol: dict) -> int:
    """Every slot captured: the counts decide, since the names may have been shed."""
    req, cap = protocol.get("required"), protocol.get("captured")
    if isinstance(req, int) and isinstance(cap, int):
        return int(cap >= req)
    return int(not protocol.get("missing"))


def missing_seen(protocol: dict) -> set[str] | None:
    """The missed slots an exam found but never good enough (`missing_seen`, as stored,
    cut as `missing` is), or None where the summary does not say: a box before it, or a
    summary that shed it to fit 1 KB. Its missed slots are then of unknown kind."""
    seen = protocol.get("missing_seen")
    if not isinstance(seen, list):
        return None
    return {_text(slot, 32) for slot in seen}


def _unnamed(protocol: dict, named: list) -> int:
    req, cap = protocol.get("required"), protocol.get("captured")
    if isinstance(req, int) and isinstance(cap, int):
        return max(0, req - cap - len(named))
    return 0


# dash.exams' columns, in the order _exam_row gives them.
EXAM_COLUMNS = ("msg_id", "device_id", "clinic_id", "exam_id", "day", "ts", "protocol",
                "required", "captured", "complete", "best_quality", "hc_mm", "ga_weeks",
                "ga_low", "ga_high", "ga_source", "missing", "ig_z", "dates_flag",
                "dates_corrected", "setup_refused", "shape_unchecked")
EXAM_ID_AT = EXAM_COLUMNS.index("exam_id")
EXAM_DEVICE_AT = EXAM_COLUMNS.index("device_id")
# What a correction of the age by dates changes in an exam's row.
DATED_COLUMNS = ("ga_weeks", "ga_source", "ig_z", "dates_flag", "dates_corrected")
EXAM_ID_CHARS = 40  # the schema allows 36
# _exam_row's ga_dates when no correction stands: the age by dates the summary carried
FROM_SUMMARY = object()


def exam_key(value) -> str:
    """An exam's id as dash.exams and dash.exam_dates both keep it, so that they match."""
    return _text(value or "", EXAM_ID_CHARS)


def _exam_row(msg_id: str, dev: str, clinic: str, day: int, ts: float, data: dict,
              ga_dates: float | None | object = FROM_SUMMARY) -> tuple:
    """dash.exams' row of an exam (EXAM_COLUMNS). ``ga_dates``: the age by dates of the
    exam's latest correction (dash.exam_dates; None: the midwife cleared them), which
    stands in place of the summary's."""
    protocol = data.get("protocol") or {}
    planes = data.get("planes") or {}
    qualities = [number_or_none(v[2]) for k, v in planes.items()
                 if k not in C.NOT_A_VIEW and v and v[0] > 0 and len(v) > 2]
    qualities = [q for q in qualities if q is not None]
    bio = data.get("biometry") or {}
    # The age by dates (entered by the midwife during the exam, or after it: a correction)
    # makes HC-for-age a real check; without it the device's Hadlock age from the same HC
    # is kept (and not drawn where the period has dated exams: see queries.biometry_page).
    corrected = ga_dates is not FROM_SUMMARY
    if not corrected:
        ga_dates = number_or_none(bio.get("ga_dates_weeks"))
    ga = ga_dates if ga_dates is not None else number_or_none(bio.get("ga_weeks"))
    missing = protocol.get("missing") or []
    hc = number_or_none(bio.get("hc_mm"))
    z = None if hc is None or ga is None else ig_z(hc, ga)
    return (msg_id, dev, clinic, exam_key(data.get("exam_id")), day, ts,
            str(protocol.get("name") or "") or None,
            protocol.get("required"), protocol.get("captured"),
            None if not protocol else _complete(protocol),
            max(qualities) if qualities else None, hc, ga,
            number_or_none(bio.get("ga_low_weeks")), number_or_none(bio.get("ga_high_weeks")),
            None if ga is None else ("dates" if ga_dates is not None else "hadlock-hc"),
            "|".join(_text(s, 32) for s in missing) or None, z,
            # what the midwife's page said of this head against her dates (the same rule)
            None if hc is None or ga_dates is None else dates_flag(hc, ga_dates),
            int(corrected and ga_dates is not None), setup_refusal(bio),
            shape_unchecked(bio))


def shape_unchecked(bio: object) -> int | None:
    """1 for an exam whose heads were measured before its box could check the picture's
    shape (the summary's `biometry.shape`, edge/models/fan.py): a grabber that stretches
    the picture would have made every head wrong unseen. None for any other exam, and for
    any other shape of summary (a box before it, a check turned off)."""
    if not isinstance(bio, dict):
        return None
    measured = bio.get("measured")
    return 1 if type(measured) is int and measured > 0 and bio.get("shape") == "unchecked" \
        else None


def setup_refusal(bio: object) -> str | None:
    """The set-up reason (C.SETUP_REFUSALS) that refused an exam's heads: none measured,
    and of the statuses its declined frames name, the set-up one of most frames (a tie: by
    name); None for any other exam. Any other shape (a summary from before `declined`, a row
    the collector did not write: a count not an integer, a list, a nested object) is None,
    never an error: a row `_exam_row` cannot make fails its exam, and a restore
    (`_withdraw_exams`) has no such guard."""
    if not isinstance(bio, dict):
        return None
    measured, declined = bio.get("measured"), bio.get("declined")
    # type(...) is int: a JSON false, or 0.0, is not "no head measured"
    if type(measured) is not int or measured != 0 or not isinstance(declined, dict):
        return None
    found = [(n, reason) for reason, n in declined.items()
             if reason in C.SETUP_REFUSALS and type(n) is int and n > 0]
    return min(found, key=lambda f: (-f[0], f[1]))[1] if found else None


# -- corrections of the age by dates ---------------------------------------------------------
# The latest correction of an exam wins: the greatest seq, whichever arrives last (a
# reorder, two collectors sharing the load). A box queues an exam's entries in the order
# they were made, and its seq never goes back; its wall clock can (no battery-backed clock),
# so entered_ts is kept for the record, not for the order.
_UPSERT_EXAM_DATES = (
    "INSERT INTO dash.exam_dates (device_id, exam_id, ga_dates_weeks, entered_ts, seq, "
    "msg_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, exam_id) DO UPDATE SET "
    "ga_dates_weeks = excluded.ga_dates_weeks, entered_ts = excluded.entered_ts, "
    "seq = excluded.seq, msg_id = excluded.msg_id "
    "WHERE excluded.seq > dash.exam_dates.seq")
IN_CHUNK = 500  # values bound in one IN (...): well under either database's limit


class Correction(NamedTuple):
    """A ``dates`` message: an exam's age by dates entered, changed or cleared (weeks
    None) after its summary left; a row of dash.exam_dates but for the device."""
    exam_id: str
    weeks: float | None
    entered_ts: float
    seq: int
    msg_id: str


def _correction(data: dict, seq: int, msg_id: str, ts: float) -> Correction | None:
    """A ``dates`` message's correction; None when it names no exam. The collector
    checked it against the schema; the fallbacks (weeks that are no number read as
    cleared, a missing entered_ts as the message's date) keep a bad row from failing the
    batch."""
    exam_id = exam_key(data.get("exam_id"))
    if not exam_id:
        return None
    entered = number_or_none(data.get("entered_ts"))
    return Correction(exam_id, number_or_none(data.get("ga_dates_weeks")),
                      ts if entered is None else entered, seq, msg_id)


def _chunks(values: list) -> list[list]:
    return [values[i:i + IN_CHUNK] for i in range(0, len(values), IN_CHUNK)]


def _marks(values: list) -> str:
    return ", ".join("?" * len(values))


def _stored_by_exam(db: Db, table: str, columns: str, keys: set[tuple[str, str]]
                    ) -> dict[tuple[str, str], tuple]:
    """The rows of `table` (dash.exam_dates, dash.exam_withdrawals: keyed by device and
    exam_id, indexed on exam_id) of these (device, exam_id): -> its `columns`. One read per
    500 exams on the exam_id index, matched in Python: its cost follows the batch, not how
    many corrections the devices have sent over the years."""
    out: dict[tuple[str, str], tuple] = {}
    for part in _chunks(sorted({exam_id for _, exam_id in keys})):
        for dev, exam_id, *rest in db.query(
                f"SELECT device_id, exam_id, {columns} FROM dash.{table} "
                f"WHERE exam_id IN ({_marks(part)})", part):
            if (dev, exam_id) in keys:
                out[(dev, exam_id)] = tuple(rest)
    return out


def _entries_to_read(db: Db, table: str, entries: dict, batch_exams: list[tuple]
                     ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(this batch's exams, the (device, exam_id) whose stored entries of `table` matter):
    those the batch's entries name, and the batch's exams too once any entry was ever
    stored (an entry may come before its exam). Nothing is read while none was."""
    in_batch = {(dev, exam_key(data.get("exam_id"))) for _, dev, _, _, _, data in batch_exams}
    wanted = set(entries)
    if in_batch and (entries or db.query(f"SELECT 1 FROM dash.{table} LIMIT 1")):
        wanted |= in_batch
    return in_batch, wanted


def _stored_dates(db: Db, keys: set[tuple[str, str]]) -> dict[tuple[str, str], float | None]:
    """The stored corrections of these (device, exam_id): -> age by dates."""
    return {key: None if weeks is None else float(weeks) for key, (weeks,) in
            _stored_by_exam(db, "exam_dates", "ga_dates_weeks", keys).items()}


def _add_corrections(db: Db, corrections: dict[tuple[str, str], Correction],
                     batch_exams: list[tuple]) -> dict[tuple[str, str], float | None]:
    """Store a batch's corrections, each exam's latest, and apply the one that stands (an
    earlier batch's may be later still) to the exams dash.exams holds from earlier
    batches. Returns the corrections that stand for this batch's exams (device, exam_id)
    -> age by dates, which their rows are made with (`_exam_row`), parsed once: those
    whose correction came in this batch, or first (a reorder, two collectors sharing the
    load). Nothing is read for them while no correction was ever stored."""
    if corrections:
        db.many(_UPSERT_EXAM_DATES, [(dev, *c) for (dev, _), c in corrections.items()])
    in_batch, wanted = _entries_to_read(db, "exam_dates", corrections, batch_exams)
    if not wanted:
        return {}
    stored = _stored_dates(db, wanted)
    # the rows earlier batches made of the exams this batch's corrections name (this
    # batch's own rows are not inserted yet: they are made dated)
    earlier = {key: weeks for key, weeks in stored.items() if key in corrections}
    if earlier:
        _redate_exams(db, earlier)
    return {key: weeks for key, weeks in stored.items() if key in in_batch}


def _redate_exams(db: Db, weeks: dict[tuple[str, str], float | None]) -> None:
    """Apply corrections (device, exam_id) -> age by dates to the exams dash.exams holds:
    each row's dated columns recomputed by _exam_row from the exam's payload in
    ``messages``."""
    by_device: dict[str, list[str]] = defaultdict(list)
    for dev, exam_id in weeks:
        by_device[dev].append(exam_id)
    found = []
    for dev, exam_ids in by_device.items():
        for part in _chunks(sorted(exam_ids)):
            found += [(m, dev, *rest) for m, *rest in db.query(
                "SELECT msg_id, clinic_id, day, ts, exam_id FROM dash.exams WHERE device_id = ? "
                f"AND exam_id IN ({_marks(part)})", (dev, *part))]
    payloads: dict[str, str] = {}
    for part in _chunks([f[0] for f in found]):
        payloads.update(db.query(
            f"SELECT msg_id, payload FROM messages WHERE msg_id IN ({_marks(part)})", part))
    updates = []
    for msg_id, dev, clinic, day, ts, exam_id in found:
        try:
            data = json.loads(payloads.get(msg_id, ""))
        except (ValueError, RecursionError):  # the collector parsed it once; be safe anyway
            continue
        if not isinstance(data, dict):
            continue
        row = dict(zip(EXAM_COLUMNS, _exam_row(msg_id, dev, clinic, int(day), float(ts), data,
                                               weeks[(dev, exam_id)]), strict=True))
        updates.append((*(row[c] for c in DATED_COLUMNS), msg_id))
    db.many(f"UPDATE dash.exams SET {', '.join(f'{c} = ?' for c in DATED_COLUMNS)} "
            "WHERE msg_id = ?", updates)


# -- withdrawn exams --------------------------------------------------------------------------
# An exam the midwife withdrew (started by mistake, a test scan, the wrong woman, two women
# in one exam) is no exam done: it leaves dash.exams for dash.withdrawn_exams and every
# count (the day's exams, the weekly figures), and a restore puts it back. So the pages'
# queries count what stands and need no filter of their own. Its latest entry wins by
# seq, as a correction of the dates, whichever of it and its exam arrives first.
_UPSERT_EXAM_WITHDRAWALS = (
    "INSERT INTO dash.exam_withdrawals (device_id, exam_id, withdrawn, reason, entered_ts, "
    "seq, msg_id) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, exam_id) DO UPDATE SET "
    "withdrawn = excluded.withdrawn, reason = excluded.reason, entered_ts = "
    "excluded.entered_ts, seq = excluded.seq, msg_id = excluded.msg_id "
    "WHERE excluded.seq > dash.exam_withdrawals.seq")
_INSERT_WITHDRAWN = (
    "INSERT INTO dash.withdrawn_exams (msg_id, device_id, clinic_id, exam_id, day, ts, "
    "reason) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (msg_id) DO UPDATE SET "
    "reason = excluded.reason")
WITHDRAWAL_REASON_CHARS = 16  # the schema's enum's longest is 11


class Withdrawal(NamedTuple):
    """A ``withdrawal`` message: an exam withdrawn (or restored) after it ended; a row of
    dash.exam_withdrawals but for the device."""
    exam_id: str
    withdrawn: bool
    reason: str
    entered_ts: float
    seq: int
    msg_id: str


def withdrawal_entry(data: dict, seq: int, msg_id: str, ts: float) -> Withdrawal | None:
    """A ``withdrawal`` message's entry; None when it names no exam or says neither
    withdrawn nor restored (the collector checked the schema: a bad row must not fail the
    batch)."""
    exam_id = exam_key(data.get("exam_id"))
    withdrawn = data.get("withdrawn")
    if not exam_id or not isinstance(withdrawn, bool):
        return None
    entered = number_or_none(data.get("entered_ts"))
    return Withdrawal(exam_id, withdrawn, _text(data.get("reason") or "",
                                                WITHDRAWAL_REASON_CHARS),
                      ts if entered is None else entered, seq, msg_id)


def keep_latest(latest: dict, key: tuple[str, str], entry: Correction | Withdrawal) -> None:
    """A batch's entries of one kind per exam: the later (greater seq) stays."""
    before = latest.get(key)
    if before is None or entry.seq > before.seq:
        latest[key] = entry


def _count_exam(weeks: _Weeks, day_device: dict, dev: str, clinic: str, day: int,
                data: dict, sign: int) -> None:
    """One exam into (sign 1) or out of (-1) the counts, as withdrawn (out) or restored:
    its weekly figures, and the day's exams against the day's withdrawn."""
    weeks.add(week_of(day), clinic, data, sign)
    counts = day_device[(day, dev, clinic)]
    counts[0] += sign
    counts[4] -= sign


def _add_withdrawals(db: Db, withdrawals: dict[tuple[str, str], Withdrawal],
                     batch_exams: list[tuple], weeks: _Weeks, day_device: dict
                     ) -> dict[tuple[str, str], str]:
    """Store a batch's withdrawal entries, each exam's latest, and apply the one that stands
    (an earlier batch's may be later still) to the exams earlier batches rolled up: out of
    the counts, or back in. Returns this batch's exams that stand withdrawn (device,
    exam_id) -> reason, which `_add` keeps out. Nothing is read while none was ever
    stored."""
    if withdrawals:
        db.many(_UPSERT_EXAM_WITHDRAWALS, [
            (dev, w.exam_id, int(w.withdrawn), w.reason, w.entered_ts, w.seq, w.msg_id)
            for (dev, _), w in withdrawals.items()])
    in_batch, wanted = _entries_to_read(db, "exam_withdrawals", withdrawals, batch_exams)
    if not wanted:
        return {}
    standing = {key: reason for key, (flag, reason) in _stored_by_exam(
        db, "exam_withdrawals", "withdrawn, reason", wanted).items() if flag}
    if withdrawals:
        _withdraw_exams(db, set(withdrawals), standing, weeks, day_device)
    return {key: standing[key] for key in in_batch if key in standing}


def _withdraw_exams(db: Db, keys: set[tuple[str, str]], standing: dict[tuple[str, str], str],
                    weeks: _Weeks, day_device: dict) -> None:
    """Earlier batches' exams of `keys` moved to where their standing entry puts them: out
    of dash.exams and the counts when withdrawn (`standing`: -> reason), back when
    restored (their row made again from the payload, dated by the correction that stands)."""
    by_device: dict[str, list[str]] = defaultdict(list)
    for dev, exam_id in keys:
        by_device[dev].append(exam_id)
    moving: list[tuple] = []  # (msg_id, dev, clinic, day, ts, exam_id, reason or None)
    for dev, exam_ids in by_device.items():
        for part in _chunks(sorted(exam_ids)):
            for table, reason in (("exams", "NULL"), ("withdrawn_exams", "reason")):
                for msg_id, clinic, day, ts, exam_id, was in db.query(
                        f"SELECT msg_id, clinic_id, day, ts, exam_id, {reason} FROM "
                        f"dash.{table} WHERE device_id = ? AND exam_id IN ({_marks(part)})",
                        (dev, *part)):
                    now = standing.get((dev, exam_id))
                    if (was is None) != (now is None):
                        moving.append((msg_id, dev, clinic, int(day), float(ts), exam_id, now))
                    elif now is not None and now != was:  # withdrawn still, for another reason
                        db.execute("UPDATE dash.withdrawn_exams SET reason = ? WHERE msg_id = ?",
                                   (now, msg_id))
    if not moving:
        return
    payloads: dict[str, str] = {}
    for part in _chunks([m[0] for m in moving]):
        payloads.update(db.query(
            f"SELECT msg_id, payload FROM messages WHERE msg_id IN ({_marks(part)})", part))
    dated = _stored_dates(db, {(m[1], m[5]) for m in moving if m[6] is None})
    for msg_id, dev, clinic, day, ts, exam_id, reason in moving:
        try:
            data = json.loads(payloads.get(msg_id, ""))
        except (ValueError, RecursionError):  # the collector parsed it once; be safe anyway
            continue
        if not isinstance(data, dict):
            continue
        if reason is not None:
            db.execute("DELETE FROM dash.exams WHERE msg_id = ?", (msg_id,))
            db.execute(_INSERT_WITHDRAWN, (msg_id, dev, clinic, exam_id, day, ts, reason))
            _count_exam(weeks, day_device, dev, clinic, day, data, -1)
        else:
            try:
                row = _exam_row(msg_id, dev, clinic, day, ts, data,
                                dated.get((dev, exam_id), FROM_SUMMARY))
            except (TypeError, ValueError, AttributeError, KeyError, IndexError,
                    OverflowError):  # as in `_add`: a row the collector did not write must
                # not fail every refresh; it stays withdrawn
                log.warning("dashboard: exam %s could not be restored from its payload; it "
                            "stays out of the figures", one_line(str(msg_id))[:40])
                continue
            db.execute("DELETE FROM dash.withdrawn_exams WHERE msg_id = ?", (msg_id,))
            db.execute(f"INSERT INTO dash.exams ({', '.join(EXAM_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(EXAM_COLUMNS))})", row)
            _count_exam(weeks, day_device, dev, clinic, day, data, 1)


def _health_digest(data: dict) -> dict:
    """What the devices page shows of a health message (bounded: the schema bounds it)."""
    queue = data.get("queue") or {}
    dropped = data.get("dropped") or {}
    out = {"pending": queue.get("pending"), "rejected": queue.get("rejected"),
           "dropped": int(dropped.get("health", 0) or 0) + int(dropped.get("exam", 0) or 0),
           "disk_free_mb": data.get("disk_free_mb"), "temp_c": data.get("temp_c"),
           "models": data.get("models") or {}, "uptime_s": data.get("uptime_s"),
           "fps": (data.get("loop") or {}).get("fps"),
           # how often the box sends health: "online but silent" waits a few of them
           # (queries.online_but_silent); the schema requires it, 0-1e8 s
           "interval_s": number_or_none(data.get("interval_s"))}
    loop = data.get("loop") if isinstance(data.get("loop"), dict) else {}
    set_ts, moved = wall_ts_or_none(loop.get("clock_set_ts")), loop.get("clock_moved_s")
    if set_ts is not None and finite_number(moved) and 0 < moved <= C.CLOCK_SET_MAX_S:
        out["clock_set"] = [set_ts, float(moved)]  # the page set the box's clock (edge/web)
    fleet = data.get("fleet")  # the signed model bundle (edge/fleet, issue 16)
    if isinstance(fleet, dict):
        b = {"bundle": str(fleet.get("bundle", ""))[:40], "state": str(fleet.get("state", "")),
             "group": str(fleet.get("group", ""))[:64]}
        rollback = fleet.get("rollback")
        if isinstance(rollback, dict):
            b["rollback"] = (f"{rollback.get('from')} -> {rollback.get('to')}: "
                             f"{rollback.get('reason')}")[:200]
            b["rollback_ts"] = number_or_none(rollback.get("ts"))
        if fleet.get("error"):
            b["error"] = _text(fleet["error"], C.FLEET_ERROR_CHARS)
        if fleet.get("download"):
            b["download"] = str(fleet["download"])[:80]
        if fleet.get("unchecked"):  # what its self-test did not compare (edge/fleet)
            b["unchecked"] = _text(fleet["unchecked"], C.FLEET_ERROR_CHARS)
        out["bundle"] = b
    return out


def _upsert_latest(db: Db, dev: str, lat: dict) -> None:
    db.execute("INSERT INTO dash.device_latest (device_id, clinic_id, last_received, max_seq) "
               "VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO NOTHING",
               (dev, lat["clinic"], lat["received"], lat["max_seq"]))
    db.execute("UPDATE dash.device_latest SET clinic_id = ?, last_received = ? "
               "WHERE device_id = ? AND last_received <= ?",
               (lat["clinic"], lat["received"], dev, lat["received"]))
    db.execute("UPDATE dash.device_latest SET max_seq = ? WHERE device_id = ? AND max_seq < ?",
               (lat["max_seq"], dev, lat["max_seq"]))
    if "health_seq" in lat:
        db.execute("UPDATE dash.device_latest SET health_seq = ?, health_ts = ?, health = ?, "
                   "health_lag_s = ? WHERE device_id = ? AND (health_seq IS NULL OR "
                   "health_seq <= ?)", (lat["health_seq"], lat["health_ts"], lat["health"],
                                        lat["health_lag_s"], dev, lat["health_seq"]))
    if "status_received" in lat:
        db.execute("UPDATE dash.device_latest SET status_received = ?, status_state = ?, "
                   "status_seq = ?, status_pending = ? WHERE device_id = ? AND "
                   "(status_received IS NULL OR status_received <= ?)",
                   (lat["status_received"], lat["status_state"], lat["status_seq"],
                    lat["status_pending"], dev, lat["status_received"]))
    if "online_received" in lat:
        db.execute("UPDATE dash.device_latest SET online_received = ?, online_lag_s = ? "
                   "WHERE device_id = ? AND (online_received IS NULL OR online_received <= ?)",
                   (lat["online_received"], lat["online_lag_s"], dev, lat["online_received"]))


RESENT_MAX_BATCHES = 100  # per refresh; the next refresh goes on from the watermark


def _refresh_resent(db: Db) -> int:
    """Roll up the collector's ``resent`` seqs into ``dash.msgs`` (for the holes only: no
    count, since the message itself was stored and counted once) and the device's max seq
    (its status's seq is measured against it)."""
    if not db.has_collector_table("resent"):
        return 0  # a collector older than the table
    with db.tx():
        since = _since(db, "resent_ts")
        rows = db.query(
            "SELECT device_id, seq, kind, clinic_id, device_ts, received_ts FROM resent r "
            "WHERE received_ts >= ? AND NOT EXISTS (SELECT 1 FROM dash.msgs d WHERE d.msg_id "
            "= 'resent/' || r.device_id || '/' || CAST(r.seq AS TEXT)) "
            "ORDER BY received_ts LIMIT ?", (since, C.REFRESH_BATCH))
        msgs, seqs, max_seq = [], [], {}
        # as _add counts a message stored without a clinic (_known_clinics)
        known = _first_clinics(db, sorted({r[0] for r in rows if not r[3]}), {})
        for dev, seq, kind, clinic, device_ts, received in rows:
            clinic = clinic or known.get(dev, C.UNREGISTERED)
            ts, day = day_of(device_ts, received)
            msgs.append((f"resent/{dev}/{int(seq)}", dev, clinic, kind, int(seq), ts, day,
                         received))
            if kind in SEQ_KINDS:
                seqs.append((dev, clinic, int(seq), day))
            max_seq[dev] = max(max_seq.get(dev, 0), int(seq))
        db.many("INSERT INTO dash.msgs (msg_id, device_id, clinic_id, kind, seq, ts, day, "
                "received_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (msg_id) DO NOTHING",
                msgs)
        _add_seq_runs(db, seqs)  # a seq already there changes no run: adding is idempotent
        for dev, seq in max_seq.items():
            db.execute("UPDATE dash.device_latest SET max_seq = ? WHERE device_id = ? "
                       "AND max_seq < ?", (seq, dev, seq))
        _advance(db, "resent_ts", since, [r[5] for r in rows])
    return len(rows)


_TOPIC_DEVICE = re.compile(r"^sonoedge/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/")


def _refresh_dead(db: Db) -> int:
    """Dead letters per device (the device named in the topic; '' when there is none)."""
    with db.tx():
        since = _since(db, "dead_ts")
        rows = db.query(
            "SELECT digest, topic, received_ts FROM dead_letters l WHERE received_ts >= ? "
            "AND NOT EXISTS (SELECT 1 FROM dash.dead d WHERE d.digest = l.digest) "
            "ORDER BY received_ts LIMIT ?", (since, 50_000))
        out = []
        for digest, topic, received in rows:
            m = _TOPIC_DEVICE.match(topic or "")
            out.append((digest, m.group(1) if m else "", received))
        db.many("INSERT INTO dash.dead (digest, device_id, received_ts) VALUES (?, ?, ?)", out)
        _advance(db, "dead_ts", since, [r[2] for r in rows])
    return len(rows)


def _one_line(exc: BaseException) -> str:
    return one_line(exc)[:300]
