"""Durable store-and-forward outbox for MQTT messages (SQLite, WAL).

Every message the device wants to send is written here first and deleted only after the
broker's PUBACK (QoS 1). A process crash, a power cut or days offline lose nothing that was
enqueued: the uplink resends whatever is still here, and the collector deduplicates by
``msg_id``.

Receipts (wire/receipt.py): a broker may drop a message it acknowledged (Mosquitto drops
what overflows an absent collector's queue), so an exam summary or a dates correction is
not deleted on its PUBACK but kept as ``sent`` (with ``sent_ts``) until the collector's
receipt for it (`receipt`), and a sent one without a receipt after ``resend_after_s`` goes
back to ``pending`` and is sent again (`resend_unreceipted`). Only an outbox that has seen
a receipt from its district (``meta`` ``receipts``) keeps them: a box whose collector sends
none deletes on PUBACK, as before receipts. Health is always deleted on its PUBACK. Sent
messages count toward the quota like pending ones.

Unconfirmed: an exam or a correction that leaves the outbox without its receipt (deleted on
its PUBACK before any receipt came, or dropped by the quota) is one nothing proves the
district stored, so its ``msg_id`` is kept in ``unconfirmed`` until its receipt names it
(a collector working off a backlog still sends one). The midwife's uplink chip counts them
as not confirmed (`exam_counts`), never as at the district. At most UNCONFIRMED_MAX ids are
kept; an older one is forgotten into ``meta`` ``unconfirmed_forgotten``, still counted: its
receipt can no longer be matched, so it is never counted as confirmed.

Durability policy: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode FULL fsyncs the
WAL on every commit, so an ``enqueue()`` that returned survives a power cut (NORMAL would be
crash-safe for the process but could lose the last commits on power loss, which is exactly
the failure a field box without a UPS has). Acks are batched into one transaction, so the
fsync cost of draining is per batch, not per message. An ack lost in a crash only means the
message is sent again, which the collector absorbs.

Ordering and identity: each message gets a uuid4 ``msg_id`` and a per-device ``seq`` that is
allocated in the same transaction as the insert and persisted in the ``meta`` table, so it
is strictly increasing across restarts and reboots. With the ``boot_id`` and the monotonic
clock in each payload the collector can order messages even when the wall clock is wrong.

Quota: the outbox holds at most ``quota_bytes`` of payload (plus a fixed per-row overhead).
When a new message does not fit, ``health`` messages are dropped first, oldest first; an
``exam`` or a ``dates`` correction is dropped (oldest first, counted as an exam) only when
no ``health`` is left. Drops are counted in
``meta`` per kind, persistently, and reported in the next ``health`` message. Messages the
broker refused outright (e.g. not authorised) are kept with state ``rejected``: they are never
silently deleted, they show in ``sonoedge outbox`` and stop blocking the queue, and
``sonoedge outbox --retry-rejected`` queues them again once the cause is fixed.

Exactly once: a message may carry a ``key`` (an exam's id; for a correction of its age by
dates, `dates_key`). The keys of everything ever
enqueued are kept, and a key already there is not enqueued again, in the same transaction
that would have stored it: crash recovery may rebuild an exam as often as the device is
killed, and it is still queued once. A keyed message's ``msg_id`` derives from its key, so
an exam queued again after a corrupt outbox lost its key (the loop re-queues every journaled
exam the outbox no longer knows) is the same message to the collector.

Faults: a full disk is ``OutboxFull`` (the uplink holds the message in memory and queues it
as soon as there is room). A corrupt outbox is moved aside with one log line saying where,
and every message that can still be read from it, around its damaged pages
(`DamagedTableScan`) and within SALVAGE_SECONDS, is salvaged into a new one with its
``msg_id`` and ``seq``, in the order it was first queued; the sequence goes on from the
highest seq known.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.capture.clock import stamped_before_step
from edge.store.scan import DamagedTableScan
from edge.store.state import Reserve, is_corrupt, is_full, move_aside, open_making_room
from wire.receipt import RECEIPTED_KINDS
from wire.schema import (
    CLOCK_STEP_S,
    QUEUED_KINDS,
    TIME_FIELDS,
    finite_number,
    load_schema,
    sqlite_uri,
)
from wire.shown import one_line, shown

log = logging.getLogger("sonoedge.outbox")

OUTBOX_FILE = "outbox.sqlite3"
# 2: the state 'sent' and its `sent_ts` (receipts); a layout-1 outbox gains the column at
# open (`_migrate`), and its rows stay as they were. 3: the table `unconfirmed` (made at open
# where it is missing).
LAYOUT_VERSION = 3
ROW_OVERHEAD_BYTES = 96  # rough on-disk cost of a row beside its payload (ids, topic, index)
DEFAULT_QUOTA_BYTES = 64 * 1024 * 1024
# The salvage of a corrupt outbox (`_read_what_remains`) holds up the start: it stops after
# this long (what it has not reached stays in the moved-aside file only).
SALVAGE_SECONDS = 10.0
KINDS = QUEUED_KINDS  # the kinds that travel through the outbox; status is live-only
# Seqs. The wire's schemas bound every message's seq (2^53 - 1: the largest integer a reader
# that keeps numbers as doubles holds exactly); a seq above it broke the schema at the
# collector, and above 2^63 - 1 SQLite could not even store it (OverflowError).
SEQ_MAX = min(load_schema(kind)["properties"]["seq"]["maximum"] for kind in KINDS)
# The most a seq read back from disk may be: the uplink's status file (the floor given to
# an outbox rebuilt after corruption), the outbox's own `meta` row and its rows. Half the
# wire's range: 2^52 seqs stay free above it, more than a device sends in any lifetime
# (140,000 years at 1,000 a second), so a value above it is damage, never history, and
# counting on from it can never pass SEQ_MAX.
SEQ_FLOOR_MAX = 1 << 52
# Kept alike under the quota: an exam's age-by-dates correction, or its withdrawal, is as
# much the district's record as the exam itself, and far smaller.
EXAM_KINDS = RECEIPTED_KINDS  # exam, dates, withdrawal: also the kinds kept until their receipt
# The states a send still takes; any other ('rejected', or one a damaged database holds) is
# refused: counted so by the status and the midwife's chip alike
SENDING_STATES = ("pending", "sent")
# The ids of exams and corrections gone without their receipt (`unconfirmed`) kept to match a
# late receipt: a clinic's exams of a year and more (~100 bytes each, 1 MB in all); beyond,
# the oldest is only counted (`unconfirmed_forgotten`).
UNCONFIRMED_MAX = 10_000
# A receipt is waited for this long after its exam left (a collector down for a week
# still sends one from its backlog); an id older than this is counted apart
# (`exam_counts` unconfirmed_old), not on the midwife's chip as "not yet confirmed": a box
# that sent to a collector older than receipts, then saw its district upgraded, showed
# "300 not yet confirmed" for ever, with nothing for her to do (a walk).
UNCONFIRMED_WAIT_S = 7 * 24 * 3600.0
# A sent message's time ahead of the clock by more than this means the clock stepped back
# since: waiting out resend_after_s from it could take months, so it is sent again now.
SENT_TS_AHEAD_S = CLOCK_STEP_S
# A keyed message's msg_id derives from its key (an exam's id): an exam queued again after
# its outbox was lost (see `loop.requeue_unqueued_exams`) reaches the collector under the
# same msg_id as the first time, and is absorbed there as a duplicate.
KEYED_NAMESPACE = uuid.UUID("5b0e6d1c-3f4a-5e8b-9c2d-7a1f0e4b6c3d")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_ts REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    reason TEXT,
    sent_ts REAL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox(kind, id);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, id);
CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS unconfirmed (msg_id TEXT PRIMARY KEY, kind TEXT NOT NULL,
                                        ts REAL NOT NULL);
"""
_COLUMNS = "msg_id, seq, kind, payload, size, created_ts, attempts, state, reason"


def read_boot_id() -> str:
    """The kernel's boot id, or a per-process uuid where /proc does not offer one."""
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        if text:
            return text
    except OSError:
        pass
    return _FALLBACK_BOOT_ID


_FALLBACK_BOOT_ID = "proc-" + uuid.uuid4().hex


@dataclass(frozen=True)
class Message:
    """One row of the outbox as the uplink needs it."""

    msg_id: str
    seq: int
    kind: str
    payload: bytes
    size: int
    created_ts: float
    attempts: int = 0
    state: str = "pending"
    reason: str | None = None


@dataclass(frozen=True)
class Redated:
    """What a step of the clock dated again (`Outbox.shift_unsent_times`)."""
    messages: int
    exam_ids: tuple[str, ...]  # the exam summaries among them


class OutboxError(Exception):
    """A message that cannot be stored (bad kind, not JSON-serialisable, too large)."""


class OutboxLater(OutboxError):
    """The message cannot be stored now for a reason that may pass: the database is locked
    by another process past the busy timeout, or an I/O error. The caller keeps it."""


class OutboxFull(OutboxLater):
    """No room on the disk for the message now; it may fit later."""


class Outbox:
    """SQLite-backed queue; safe to share between the loop thread and the uplink thread."""

    def __init__(self, path: Path | str, quota_bytes: int = DEFAULT_QUOTA_BYTES,
                 seq_floor: int = 0):
        """``seq_floor``: the highest seq known from elsewhere (the uplink's status file), so
        an outbox rebuilt after corruption never hands out a seq twice. One that is not an
        integer from 0 to SEQ_FLOOR_MAX is damage: ignored, with one log line."""
        self.path = Path(path)
        if not seq_ok(seq_floor):
            log.warning("outbox %s: seq floor %s is not an integer from 0 to %d: ignored",
                        self.path, shown(seq_floor), SEQ_FLOOR_MAX)
            seq_floor = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot open outbox database: "
                              f"{exc.strerror or exc}") from None
        if quota_bytes <= 0:
            raise OutboxError(f"outbox quota must be positive, got {quota_bytes}")
        self.quota_bytes = int(quota_bytes)
        self._lock = threading.RLock()
        # Set by a step of the clock that re-dated the queue: the next batch taken for
        # sending goes after the link says "online" again (`take_for_sending`'s `stepped`)
        self._stepped = False
        self.moved_aside: Path | None = None
        self.salvaged = 0
        try:
            open_making_room(self._open, Reserve(self.path.parent))
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise OutboxError(f"{self.path}: cannot open outbox database: {exc}") from None
            self._salvage(exc, seq_floor)
        self._used = self._count_used()  # an outbox it cannot count is not opened

    def _count_used(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(size), 0) + COUNT(*) * ? FROM outbox",
                                (ROW_OVERHEAD_BYTES,)).fetchone()[0]

    def _recount(self) -> None:
        """Bytes used, from the rows, again after a transaction that did not commit."""
        try:
            self._used = self._count_used()
        except sqlite3.DatabaseError:
            pass  # unreadable now: the count stays as it was

    def _open(self) -> None:
        self._db = sqlite3.connect(
            str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            # The outbox is small (its quota): a full check at start is cheap, and a damaged
            # page must be found now, not when the message on it is due.
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(f"database disk image is malformed ({problems[0]})")
            self._init_meta()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """A layout-1 outbox (before receipts) gains `sent_ts`; ALTER TABLE is one atomic
        change, so a power cut leaves the file as it was or migrated."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "sent_ts" not in columns:
            self._db.execute("ALTER TABLE outbox ADD COLUMN sent_ts REAL")
        # `unconfirmed` of another shape (a hand edit) would fail every PUBACK's delete:
        # made again, its ids lost (counted as forgotten, so none reads as confirmed)
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(unconfirmed)")]
        if columns != ["msg_id", "kind", "ts"]:
            with self._tx() as db:
                lost = db.execute("SELECT COUNT(*) FROM unconfirmed").fetchone()[0]
                log.warning("outbox %s: its table of unconfirmed exams has columns %s: made "
                            "again (%d id(s) counted as unconfirmed, no longer matched)",
                            self.path, shown(columns), lost)
                kind = db.execute("SELECT type FROM sqlite_master WHERE name = "
                                  "'unconfirmed'").fetchone()
                db.execute(f"DROP {'VIEW' if kind == ('view',) else 'TABLE'} unconfirmed")
                db.execute("CREATE TABLE unconfirmed (msg_id TEXT PRIMARY KEY, "
                           "kind TEXT NOT NULL, ts REAL NOT NULL)")
                db.execute("INSERT OR IGNORE INTO meta(key, value) "
                           "VALUES ('unconfirmed_forgotten', 0)")
                db.execute("UPDATE meta SET value = value + ? WHERE key = "
                           "'unconfirmed_forgotten' AND typeof(value) = 'integer'", (lost,))

    def _salvage(self, exc: BaseException, seq_floor: int) -> None:
        """Move the corrupt file aside and rebuild the outbox from what can still be read."""
        try:
            moved = move_aside(self.path)
        except OSError as err:
            raise OutboxError(f"{self.path}: outbox is corrupt ({exc}) and cannot be moved "
                              f"aside ({err.strerror or err})") from None
        rows, meta, keys, gone, unread = _read_what_remains(moved, self.quota_bytes)
        try:
            self._open()
            with self._tx() as db:
                for row in rows:  # a sent one without its time is sent again
                    row = (*row[:7], "pending", *row[8:]) if row[7] == "sent" else row
                    db.execute(f"INSERT OR IGNORE INTO outbox({_COLUMNS}) VALUES "
                               "(?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                for key, seq in keys:
                    db.execute("INSERT OR IGNORE INTO keys(key, seq, ts) VALUES (?, ?, ?)",
                               (key, seq, time.time()))
                for msg_id, kind in reversed(gone[:UNCONFIRMED_MAX]):  # oldest first
                    db.execute("INSERT OR IGNORE INTO unconfirmed(msg_id, kind, ts) "
                               "VALUES (?, ?, ?)", (msg_id, kind, time.time()))
                # the floor is checked (`__init__`); a seq read from the damaged file is
                # taken only within SEQ_FLOOR_MAX (a salvaged row above it keeps its own)
                top = max(v for v in [seq_floor, meta.get("seq", 0)] + [r[1] for r in rows]
                          if seq_ok(v))
                db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (top,))
                for name in ("dropped_health", "dropped_exam", "reported_health",
                             "reported_exam", "receipts", "unconfirmed_forgotten"):
                    if name in meta:
                        db.execute("UPDATE meta SET value = ? WHERE key = ?",
                                   (meta[name], name))
                # and above every seq its salvaged keys hold: messages sent and acknowledged
                # whose seqs the district has, when the old meta was lost
                self._last_seq(db, at_open=True)
        except sqlite3.DatabaseError as err:
            raise OutboxError(f"{self.path}: a new outbox cannot be started ({err})") from None
        self.moved_aside, self.salvaged = moved, len(rows)
        log.warning("outbox %s is corrupt (%s): moved to %s; %d message(s) salvaged into a "
                    "new outbox%s", self.path, one_line(exc), moved, len(rows), unread)

    def _init_meta(self) -> None:
        with self._tx():
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('layout', ?)", (LAYOUT_VERSION,)
            )
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'layout' AND value < ?",
                             (LAYOUT_VERSION, LAYOUT_VERSION))
            # receipts: 1 once a receipt came from the district (`receipt`);
            # unconfirmed_forgotten: ids gone from `unconfirmed` past UNCONFIRMED_MAX
            for key in ("seq", "dropped_health", "dropped_exam", "reported_health",
                        "reported_exam", "receipts", "unconfirmed_forgotten"):
                self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, 0)", (key,))
            for key, value in self._db.execute(
                    "SELECT key, value FROM meta WHERE key IN ('dropped_health', "
                    "'dropped_exam', 'reported_health', 'reported_exam', "
                    "'unconfirmed_forgotten')").fetchall():
                if not count_ok(value):  # else `value + 1` never moves it again (1e300)
                    log.warning("outbox %s: counter %s was %s: reset to 0", self.path,
                                key, shown(value))
                    self._db.execute("UPDATE meta SET value = 0 WHERE key = ?", (key,))
            self._last_seq(self._db, at_open=True)

    def _last_seq(self, db: sqlite3.Connection, at_open: bool = False) -> int:
        """The last seq handed out, from `meta`, in the caller's transaction. A value that
        is not an integer from 0 to SEQ_MAX (a flipped bit, a hand edit: counting on
        from 2^63 - 1 overflowed at the next message, from a text it raised) is mended, with
        one log line, to the highest seq the outbox's messages and keys hold, so no seq is
        handed out twice. At open it is also raised to that when it is below (a lost row:
        the next message would have taken a seq in use and failed its insert)."""
        row = db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        value = row[0] if row is not None else None
        if count_ok(value) and value < SEQ_MAX and not at_open:
            return value
        used = 0
        for table in ("outbox", "keys"):
            top = db.execute(f"SELECT MAX(seq) FROM {table} WHERE typeof(seq) = 'integer' "
                             "AND seq BETWEEN 0 AND ?", (SEQ_MAX,)).fetchone()[0]
            used = max(used, top or 0)
        if count_ok(value) and value >= used:
            return value
        log.warning("outbox %s: its last seq %s is %s: mended to %d, the highest seq its "
                    "messages and keys hold", self.path, shown(value),
                    "below a seq in use" if count_ok(value) else
                    f"not an integer from 0 to {SEQ_MAX}", used)
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('seq', ?)", (used,))
        return used

    # -- transactions -------------------------------------------------------------------
    class _Tx:
        def __init__(self, box: Outbox):
            self.box = box

        def __enter__(self):
            self.box._lock.acquire()
            try:
                self.box._db.execute("BEGIN IMMEDIATE")
            except BaseException:  # no __exit__ comes: held, it hung every other thread
                self.box._lock.release()
                raise
            return self.box._db

        def __exit__(self, exc_type, exc, tb):
            try:
                if exc_type is None:
                    try:
                        self.box._db.execute("COMMIT")
                        return False
                    except sqlite3.Error:
                        self._undo()
                        raise
                self._undo()
            finally:
                self.box._lock.release()
            return False

        def _undo(self) -> None:
            try:
                self.box._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite rolled it back itself (a full disk, an I/O error)
            self.box._recount()  # the rows it dropped or deleted are back: so is their size

    def _tx(self) -> Outbox._Tx:
        return Outbox._Tx(self)

    def _meta(self, *keys: str) -> list[int]:
        """Counters of `meta`, read in one query; 0 for a value that is no integer within
        SEQ_MAX (damage: a text made the health message's drop report raise). `_init_meta`
        resets those."""
        marks = ", ".join("?" * len(keys))
        found = dict(self._db.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})",
                                      keys).fetchall())
        return [found[k] if count_ok(found.get(k)) else 0 for k in keys]

    # -- writing ------------------------------------------------------------------------
    def enqueue(self, kind: str, body: dict, key: str | None = None,
                reports_drops: dict | None = None) -> Message | None:
        """Store one message durably; fills ``msg_id`` and ``seq`` into ``body``.

        ``reports_drops``: the ``drop_report`` this (health) message carries; the "since"
        baseline moves to it in the transaction that stores the message, and only if it is
        stored, so a health message dropped or refused never takes drops with it.

        Returns once the row is fsynced. Makes room by the drop policy when the quota is hit.
        Returns None when the message itself was the one dropped: a ``health`` that finds the
        outbox full of exams is counted as dropped rather than pushing an exam out. Returns
        None, storing nothing, when ``key`` was enqueued before. ``OutboxFull`` when the disk
        has no room for it now.
        """
        if kind not in KINDS:
            raise OutboxError(f"outbox kind must be one of {KINDS}, got {kind!r}")
        for attempt in range(2):
            try:
                return self._enqueue(kind, body, key, reports_drops)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and not is_full(exc) \
                        and not is_corrupt(exc):  # locked, busy, an I/O error: it may pass
                    raise OutboxLater(f"{self.path}: {kind} message not queued yet: {exc}") \
                        from None
                if not is_full(exc):
                    raise OutboxError(f"{self.path}: {kind} message not queued: {exc}") \
                        from None
                # Fold the write-ahead log back: its room is then reused, or given back.
                if attempt == 0 and self._checkpoint():
                    continue
                raise OutboxFull(f"{self.path}: disk full, {kind} message not queued yet") \
                    from None
        raise AssertionError("unreachable")

    def _checkpoint(self) -> bool:
        with self._lock:
            try:
                return not self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.DatabaseError:
                return False

    def has_key(self, key: str) -> bool:
        """Whether `key` was enqueued; False (said in the log) when the outbox cannot be
        read, so a caller on the loop's thread never fails on it: queueing again is safe,
        `enqueue` refuses a known key in its own transaction."""
        with self._lock:
            try:
                return self._db.execute("SELECT 1 FROM keys WHERE key = ?",
                                        (key,)).fetchone() is not None
            except sqlite3.DatabaseError as exc:
                log.warning("outbox %s: key %s not looked up (%s)", self.path, key[:80],
                            one_line(exc))
                return False

    def _enqueue(self, kind: str, body: dict, key: str | None,
                 reports_drops: dict | None = None) -> Message | None:
        msg_id = str(uuid.uuid4() if key is None else uuid.uuid5(KEYED_NAMESPACE, key))
        with self._tx() as db:
            if key is not None and db.execute("SELECT 1 FROM keys WHERE key = ?",
                                              (key,)).fetchone():
                return None
            if key is not None and db.execute("SELECT 1 FROM outbox WHERE msg_id = ?",
                                              (msg_id,)).fetchone():
                # salvaged from a corrupt outbox without its key: queued already
                db.execute("INSERT OR IGNORE INTO keys(key, seq, ts) VALUES (?, 0, ?)",
                           (key, time.time()))
                return None
            seq = self._last_seq(db) + 1  # within SEQ_MAX (2^53 - 1: never reached)
            body = dict(body)
            body["msg_id"] = msg_id
            body["seq"] = seq
            try:
                payload = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise OutboxError(f"{kind} message is not plain JSON: {exc}") from exc
            cost = len(payload) + ROW_OVERHEAD_BYTES
            if cost > self.quota_bytes:
                raise OutboxError(
                    f"{kind} message of {len(payload)} bytes exceeds outbox quota "
                    f"{self.quota_bytes}"
                )
            # The seq is consumed even by a message dropped on arrival, so at the collector
            # every drop is a gap and "gaps - reported drops" counts exactly what was lost.
            db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (seq,))
            if key is not None:
                db.execute("INSERT INTO keys(key, seq, ts) VALUES (?, ?, ?)",
                           (key, seq, time.time()))
            if not self._make_room(db, cost, kind):
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'dropped_health'")
                return None
            db.execute(
                "INSERT INTO outbox(msg_id, seq, kind, payload, size, created_ts) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (msg_id, seq, kind, payload, len(payload), time.time()),
            )
            if reports_drops is not None:
                for counted in ("health", "exam"):
                    db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = ?",
                               (int(reports_drops[counted]), f"reported_{counted}"))
            self._used += cost
        return Message(msg_id, seq, kind, payload, len(payload), time.time())

    def _make_room(self, db: sqlite3.Connection, cost: int, new_kind: str) -> bool:
        """Drop oldest health, then (only if no health is left) the oldest exam or
        correction, until it fits.

        False when the new message is a ``health`` that would need an exam dropped.
        """
        for kinds in (("health",), EXAM_KINDS):
            if kinds == EXAM_KINDS and new_kind == "health" \
                    and self._used + cost > self.quota_bytes:
                return False
            marks = ",".join("?" * len(kinds))
            while self._used + cost > self.quota_bytes:
                # of exams, a sent one first: it has most likely reached the district
                row = db.execute(
                    f"SELECT id, size, kind, msg_id FROM outbox WHERE kind IN ({marks}) "
                    "ORDER BY state = 'sent' DESC, id LIMIT 1", kinds).fetchone()
                if row is None:
                    break
                counted = "health" if row[2] == "health" else "exam"
                db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
                self._unconfirmed(db, row[3], row[2])
                db.execute(
                    "UPDATE meta SET value = value + 1 WHERE key = ?", (f"dropped_{counted}",)
                )
                self._used -= row[1] + ROW_OVERHEAD_BYTES
                if counted == "exam":
                    log.warning("outbox quota %d bytes full: dropped the oldest %s message",
                                self.quota_bytes, row[2])
        return True

    def ack(self, msg_ids: Iterable[str]) -> int:
        """Messages the broker acknowledged, in one transaction: deleted, but an exam or a
        dates correction is kept as sent (its `sent_ts` now) until its receipt once this
        outbox has seen one (`receipts_seen`); before, one deleted is kept in `unconfirmed`
        (nothing proves the district stored it). How many were deleted."""
        ids = list(msg_ids)
        if not ids:
            return 0
        removed = 0
        with self._tx() as db:
            keep = self._meta("receipts")[0] == 1
            for msg_id in ids:
                row = db.execute("SELECT size, kind FROM outbox WHERE msg_id = ?",
                                 (msg_id,)).fetchone()
                if row is None:
                    continue
                if keep and row[1] in EXAM_KINDS:
                    db.execute("UPDATE outbox SET state = 'sent', sent_ts = ? "
                               "WHERE msg_id = ?", (time.time(), msg_id))
                    continue
                self._delete(db, msg_id, row[0])
                self._unconfirmed(db, msg_id, row[1])
                removed += 1
        self._vacuum_if_empty(removed)
        return removed

    def _unconfirmed(self, db: sqlite3.Connection, msg_id: str, kind: str) -> None:
        """An exam or a correction gone from the outbox without its receipt: its id kept
        until its receipt, the oldest past UNCONFIRMED_MAX only counted (module docstring).
        Health is nobody's record: not kept."""
        if kind not in EXAM_KINDS:
            return
        db.execute("INSERT OR REPLACE INTO unconfirmed(msg_id, kind, ts) VALUES (?, ?, ?)",
                   (msg_id, kind, time.time()))
        over = db.execute("SELECT COUNT(*) FROM unconfirmed").fetchone()[0] - UNCONFIRMED_MAX
        if over > 0:
            db.execute("DELETE FROM unconfirmed WHERE rowid IN (SELECT rowid FROM unconfirmed "
                       "ORDER BY rowid LIMIT ?)", (over,))
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'unconfirmed_forgotten' "
                       "AND typeof(value) = 'integer' AND value < ?", (over, SEQ_MAX))

    def _delete(self, db: sqlite3.Connection, msg_id: str, size: int) -> None:
        """One message out of the queue, and its bytes out of the quota's count."""
        db.execute("DELETE FROM outbox WHERE msg_id = ?", (msg_id,))
        self._used -= size + ROW_OVERHEAD_BYTES

    def receipt(self, msg_ids: Iterable[str]) -> int:
        """The district holds these (a receipt, wire/receipt.py): the exams and dates
        corrections among them are deleted, whatever their state (one sent again may be
        queued or in flight: its PUBACK then finds no row), and those gone without a receipt
        are confirmed (out of `unconfirmed`); ids this outbox does not hold are ignored.
        From now on PUBACKed exams are kept until their receipt. How many were deleted."""
        ids = list(msg_ids)
        removed = 0
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('receipts', 1)")
            marks = ",".join("?" * len(EXAM_KINDS))
            for msg_id in ids:
                db.execute("DELETE FROM unconfirmed WHERE msg_id = ?", (msg_id,))
                row = db.execute(f"SELECT size FROM outbox WHERE msg_id = ? AND kind IN "
                                 f"({marks})", (msg_id, *EXAM_KINDS)).fetchone()
                if row is None:
                    continue
                self._delete(db, msg_id, row[0])
                removed += 1
        self._vacuum_if_empty(removed)
        return removed

    def receipts_seen(self) -> bool:
        """Whether a receipt ever came: PUBACKed exams are then kept until theirs."""
        with self._lock:
            return self._meta("receipts")[0] == 1

    def resend_unreceipted(self, after_s: float, now: float | None = None) -> int:
        """Sent messages without a receipt `after_s` after their PUBACK (or sent at a time
        the clock has since stepped back from, SENT_TS_AHEAD_S) go back to pending: the
        broker may have dropped them. How many."""
        now = time.time() if now is None else now
        with self._lock:  # read first: a write transaction (an fsync) only when due
            due = self._db.execute(
                "SELECT 1 FROM outbox WHERE state = 'sent' AND (sent_ts IS NULL OR "
                "sent_ts <= ? OR sent_ts > ?) LIMIT 1",
                (now - after_s, now + SENT_TS_AHEAD_S)).fetchone()
        if due is None:
            return 0
        with self._tx() as db:
            return db.execute(
                "UPDATE outbox SET state = 'pending', sent_ts = NULL WHERE state = 'sent' "
                "AND (sent_ts IS NULL OR sent_ts <= ? OR sent_ts > ?)",
                (now - after_s, now + SENT_TS_AHEAD_S)).rowcount

    def _vacuum_if_empty(self, removed: int) -> None:
        if removed and self._used == 0:
            with self._lock:
                self._db.execute("PRAGMA incremental_vacuum")

    def reject(self, msg_id: str, reason: str) -> None:
        """Park a message the broker refused; it stays on disk and out of the send queue."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = 'rejected', reason = ? WHERE msg_id = ?",
                (reason[:200], msg_id),
            )

    def retry_rejected(self) -> int:
        """Put refused messages back in the queue (after the operator fixed the ACL)."""
        with self._tx() as db:
            return db.execute(
                "UPDATE outbox SET state = 'pending', reason = NULL WHERE state = 'rejected'"
            ).rowcount

    def mark_attempt(self, msg_ids: Iterable[str]) -> bool:
        """Count a send attempt (advisory: on a full disk the count is simply not kept, and
        False says so)."""
        ids = [(m,) for m in msg_ids]
        if ids:
            try:
                with self._tx() as db:
                    db.executemany("UPDATE outbox SET attempts = attempts + 1 "
                                   "WHERE msg_id = ?", ids)
            except sqlite3.DatabaseError as exc:
                log.debug("outbox: attempts not counted: %s", exc)
                return False
        return True

    # -- reading ------------------------------------------------------------------------
    def pending(self, limit: int, exclude: Iterable[str] = ()) -> list[Message]:
        """Oldest pending messages first (seq order), skipping those already in flight."""
        skip = set(exclude)
        out: list[Message] = []
        with self._lock:
            cur = self._db.execute(
                "SELECT msg_id, seq, kind, payload, size, created_ts, attempts, state, reason "
                "FROM outbox WHERE state = 'pending' ORDER BY id LIMIT ?",
                (limit + len(skip),),
            )
            for row in cur:
                if row[0] in skip:
                    continue
                out.append(Message(*row))
                if len(out) >= limit:
                    break
        return out

    def take_for_sending(self, limit: int, exclude: Iterable[str] = (),
                         stepped: Callable[[], object] | None = None) -> list[Message]:
        """`pending`, counted as tried in the same hold of the lock. `stepped()` is called
        first, in the same hold, when the clock's step has re-dated the queue since the last
        batch: the publisher says "online" again then, so the district reads the clock's new
        lag before any message the step moved, and the old lag before a copy that went as it
        was (a batch taken before the step)."""
        with self._lock:
            if self._stepped and stepped is not None:
                self._stepped = False
                stepped()
            batch = self.pending(limit, exclude)
            self.mark_attempt(m.msg_id for m in batch)  # advisory: a full disk loses it
        return batch

    def list(self, limit: int = 100) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT msg_id, seq, kind, payload, size, created_ts, attempts, state, reason "
                "FROM outbox ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Message(*r) for r in rows]

    def counts(self) -> dict:
        """Queue depth per kind and state, bytes used and the persisted counters."""
        with self._lock:
            out = counts_of(self._db)
        out["used_bytes"], out["quota_bytes"] = self._used, self.quota_bytes
        return out

    def pending_count(self) -> int:
        """Messages waiting to go to the broker (not those sent and waiting for a receipt:
        `awaiting_receipt_count`)."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending'"
            ).fetchone()[0]

    def exam_counts(self, now: float | None = None) -> dict:
        """What the midwife's uplink chip counts: her exams and their corrections (dates,
        withdrawals), never health. `pending`: to go to the broker; `awaiting_receipt`: sent,
        kept until the district's receipt; `unconfirmed`: gone without one
        (`_unconfirmed`) within UNCONFIRMED_WAIT_S; `unconfirmed_old`: gone without one
        longer ago, or forgotten past UNCONFIRMED_MAX (never counted as confirmed, no longer
        waited for); `rejected`: refused by the broker (`reject`: most often the box not
        authorised for its topic), never sent again until `retry_rejected`, so none reaches
        the district (a state no send takes counts too, as in `counts_of`);
        `receipts_seen`: whether the district ever sent a receipt. One read."""
        marks = ",".join("?" * len(EXAM_KINDS))
        cutoff = (time.time() if now is None else now) - UNCONFIRMED_WAIT_S
        with self._lock:
            per = dict(self._db.execute(
                f"SELECT state, COUNT(*) FROM outbox WHERE kind IN ({marks}) GROUP BY state",
                EXAM_KINDS).fetchall())
            recent, every = self._db.execute(
                "SELECT COALESCE(SUM(ts >= ?), 0), COUNT(*) FROM unconfirmed",
                (cutoff,)).fetchone()
            forgotten, receipts = self._meta("unconfirmed_forgotten", "receipts")
        return {"pending": per.get("pending", 0), "awaiting_receipt": per.get("sent", 0),
                "unconfirmed": recent, "unconfirmed_old": every - recent + forgotten,
                "rejected": sum(n for st, n in per.items() if st not in SENDING_STATES),
                "receipts_seen": receipts == 1}

    def awaiting_receipt_count(self) -> int:
        """Messages the broker acknowledged, kept until the district's receipt."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'sent'").fetchone()[0]

    def last_seq(self) -> int:
        with self._lock:
            return self._meta("seq")[0]

    def shift_unsent_times(self, moved_s: float, before_ts: float) -> Redated:
        """The box's clock stepped forward `moved_s` (edge/loop.py follow_clock_steps): the
        times of the messages still queued (or refused by the broker) that the clock behind
        stamped (before `before_ts`, by the clock now: `shifted_times`) move by as much, so
        the district dates them right. Tried ones too: one that reached the collector as
        it was (its ack lost) arrives again re-dated, and the collector takes that copy as
        the same message (central/db.py `redated`); it had dated the first by the box's lag
        then. Sent ones waiting for their receipt too: the same, should the broker have
        dropped them and they go again. Returns how many were moved, and the ids of the
        exams among them (the journal dates its copies the same)."""
        moved, exam_ids = 0, []
        with self._tx() as db:
            # refused by the broker too: never arrived, and sent again by `retry_rejected`
            rows = db.execute("SELECT id, kind, payload FROM outbox WHERE state IN "
                              "('pending', 'rejected', 'sent')").fetchall()
            for row_id, kind, payload in rows:
                try:
                    body = json.loads(payload)
                except (ValueError, RecursionError):
                    continue  # not one this outbox wrote: sent as it is
                if not isinstance(body, dict):
                    continue
                shifted = shifted_times(body, moved_s, before_ts)
                if not shifted:
                    continue
                new = json.dumps({**body, **shifted}, separators=(",", ":"),
                                 allow_nan=False).encode()
                db.execute("UPDATE outbox SET payload = ?, size = ? WHERE id = ?",
                           (new, len(new), row_id))
                self._used += len(new) - len(payload)
                moved += 1
                exam_id = body.get("exam_id")
                if kind == "exam" and isinstance(exam_id, str) and len(exam_id) <= 64:
                    exam_ids.append(exam_id)
            self._stepped = True
        return Redated(moved, tuple(exam_ids))

    def drop_report(self) -> dict:
        """Cumulative drop counters plus the increase since the last report stored.

        Read when a ``health`` message is built; the baseline moves only when that message
        is stored (``enqueue(..., reports_drops=...)``), so each drop is reported as new
        exactly once: never lost with a health message that was not stored.
        """
        with self._lock:
            dh, de, rh, re_ = self._meta("dropped_health", "dropped_exam", "reported_health",
                                         "reported_exam")
        return {"health": dh, "exam": de, "health_new": max(0, dh - rh),
                "exam_new": max(0, de - re_)}

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass


def shifted_times(body: dict, moved_s: float, before_ts: float) -> dict:
    """A message's times (TIME_FIELDS) stamped before `before_ts` by a clock that was
    `moved_s` behind, moved by as much: the fields to update."""
    return {k: round(v + moved_s, 3) for k in TIME_FIELDS
            if finite_number(v := body.get(k)) and stamped_before_step(v, moved_s, before_ts)}


def seq_ok(value: object) -> bool:
    """A seq from outside the outbox (the status file's floor, a damaged outbox's rows)
    that may be counted on from: an integer (not a bool, not a float) from 0 to
    SEQ_FLOOR_MAX."""
    return type(value) is int and 0 <= value <= SEQ_FLOOR_MAX


def count_ok(value: object) -> bool:
    """A counter of the outbox's own `meta` (its last seq, the drops): an integer from 0 to
    SEQ_MAX. Its own seq may pass SEQ_FLOOR_MAX by counting; a floor from outside may not."""
    return type(value) is int and 0 <= value <= SEQ_MAX


def entry_key(kind: str, exam_id: str, entry: int) -> str:
    """The once-only key of a later word about an ended exam (`CORRECTION_KINDS`: its age
    by dates, its withdrawal): one per entry the midwife made (the journal numbers them),
    so a later change is a new message and a crash recovery repeats none."""
    return f"{exam_id}/{kind}/{int(entry)}"


def dates_key(exam_id: str, entry: int) -> str:
    """The once-only key of an exam's age-by-dates correction (`entry_key`)."""
    return entry_key("dates", exam_id, entry)


def withdrawal_key(exam_id: str, entry: int) -> str:
    """The once-only key of an exam's withdrawal or restore (`entry_key`)."""
    return entry_key("withdrawal", exam_id, entry)


def counts_of(conn: sqlite3.Connection) -> dict:
    """The outbox's counts from its database: `Outbox.counts` (which gives its own running
    `used_bytes` and its quota), and `sonoedge status` and `outbox` beside a running box,
    read only (the uplink's status file is rewritten at most once a second, so it could
    hold a count from before the last exam was queued). The database may be damaged: a
    text counter is 0, a size of 1e308 counts as none. `used_bytes`: payload and row
    overhead, as the quota counts them; `by_kind`: "state/kind" -> messages;
    `awaiting_receipt`: sent, kept until the district's receipt (`Outbox.receipt`);
    `unconfirmed`: exams and corrections gone without one (`Outbox.exam_counts`);
    `rejected`: messages the broker refused, `rejected_exams` the exams and corrections
    among them (as the midwife's chip counts them)."""
    per: dict[tuple[str, str], tuple[int, int]] = {
        (str(kind), str(state)): (int(n), _bytes(size)) for kind, state, n, size in
        conn.execute("SELECT kind, state, COUNT(*), TOTAL(size) FROM outbox "
                     "GROUP BY kind, state").fetchall()}
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN "
                             "('seq', 'dropped_health', 'dropped_exam', "
                             "'unconfirmed_forgotten')").fetchall())
    try:  # an outbox of layout 2 read before the box opened it: none kept yet
        gone = conn.execute("SELECT COUNT(*) FROM unconfirmed").fetchone()[0]
    except sqlite3.OperationalError:
        gone = 0

    def pending(kind: str | None = None) -> int:
        return sum(n for (k, st), (n, _) in per.items()
                   if st == "pending" and kind in (None, k))

    def counter(key: str) -> int:
        return meta[key] if count_ok(meta.get(key)) else 0

    return {"pending": pending(), "pending_exam": pending("exam"),
            "pending_health": pending("health"),
            "awaiting_receipt": sum(n for (_, st), (n, _) in per.items() if st == "sent"),
            "unconfirmed": gone + counter("unconfirmed_forgotten"),
            "rejected": sum(n for (_, st), (n, _) in per.items()
                            if st not in SENDING_STATES),
            "rejected_exams": sum(n for (k, st), (n, _) in per.items()
                                  if st not in SENDING_STATES and k in EXAM_KINDS),
            "used_bytes": sum(size + n * ROW_OVERHEAD_BYTES for n, size in per.values()),
            "payload_bytes": sum(size for _, size in per.values()),
            "by_kind": {f"{st}/{k}": n for (k, st), (n, _) in sorted(per.items())},
            "last_seq": counter("seq"), "dropped_health": counter("dropped_health"),
            "dropped_exam": counter("dropped_exam")}


def _bytes(total: object) -> int:
    """A byte total read from a database that may be damaged: TOTAL() of sizes stored as
    1e308 is an infinity, of negative ones below 0; either counts as none."""
    return int(total) if isinstance(total, int | float) and 0 <= total < 2 ** 53 else 0


def open_outbox(state_dir: Path | str, quota_bytes: int = DEFAULT_QUOTA_BYTES,
                seq_floor: int = 0) -> Outbox:
    return Outbox(Path(state_dir) / OUTBOX_FILE, quota_bytes=quota_bytes, seq_floor=seq_floor)


def _read_what_remains(path: Path, quota_bytes: int
                       ) -> tuple[list[tuple], dict, list, list, str]:
    """Messages (in the order they were queued), counters, keys and the ids gone without
    a receipt (`unconfirmed`, newest first) still readable in a corrupt outbox, read around
    its damaged pages (`DamagedTableScan`) within SALVAGE_SECONDS; a row longer than the
    quota admits, or whose payload is not the message it claims to be, is left behind. The
    last item says what could not be read. The span of `unconfirmed`'s damaged ranges is
    added to ``unconfirmed_forgotten``: still counted as unconfirmed."""
    found: dict[str, tuple[int, tuple]] = {}  # msg_id -> (its old id, its row)
    meta: dict[str, int] = {}
    keys: list[tuple[str, int]] = []
    gone: list[tuple[str, str]] = []
    deadline = time.monotonic() + SALVAGE_SECONDS
    try:
        # read only: the moved-aside file (and its -wal) stays the evidence it was
        conn = sqlite3.connect(sqlite_uri(path), uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        return [], meta, keys, gone, f"; nothing in it could be read ({one_line(exc)})"
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, min(quota_bytes + 4096, 1 << 30))
        # a single query that runs past the deadline (a long run of damage) is interrupted
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        # first: it is small, and the messages may use up the deadline
        try:  # each counter on its own: one damaged value (1e300, a text) costs only it
            meta = {k: v for k, v in conn.execute("SELECT key, value FROM meta")
                    if isinstance(k, str) and seq_ok(v)}
        except sqlite3.Error:
            meta = {}
        scan = DamagedTableScan(conn, "outbox", _COLUMNS.split(", "), deadline)
        refused = 0
        for row in scan.rows():
            if _sound(row[1:]):
                found.setdefault(row[1], (row[0], row[1:]))
            else:
                refused += 1
        known = DamagedTableScan(conn, "keys", ["key", "seq"], deadline)
        for _, key, seq in known.rows():
            if isinstance(key, str) and isinstance(seq, int):
                keys.append((key, seq))
        unsure = DamagedTableScan(conn, "unconfirmed", ["msg_id", "kind"], deadline)
        for _, msg_id, kind in unsure.rows():
            if isinstance(msg_id, str) and len(msg_id) <= 64 and kind in EXAM_KINDS:
                gone.append((msg_id, kind))
        if unsure.lost:
            meta["unconfirmed_forgotten"] = meta.get("unconfirmed_forgotten", 0) + unsure.lost
    finally:
        conn.close()
    # a damaged range's span counts the ids of messages sent (and deleted) there too
    said = f"; damaged ranges span {scan.lost} message id(s)" if scan.lost else ""
    said += f"; {refused} row(s) not the message they claim left behind" if refused else ""
    if scan.timed_out or known.timed_out or unsure.timed_out:
        said += (f"; stopped after {SALVAGE_SECONDS:g} s (SALVAGE_SECONDS): the rest is only "
                 "in the moved-aside file")
    rows = [row for _, row in sorted(found.values(), key=lambda item: item[0])]
    # An exam's key travels in its payload too. (A correction's need not: its msg_id, kept
    # with it, derives from its key, and `_enqueue` knows a salvaged one by that.)
    for row in rows:
        try:
            body = json.loads(row[3])
            if row[2] == "exam" and isinstance(body.get("exam_id"), str):
                keys.append((body["exam_id"], int(row[1])))
        except (ValueError, TypeError, AttributeError):
            pass
    return rows, meta, keys, gone, said


def _sound(row: tuple) -> bool:
    msg_id, seq, kind, payload = row[:4]
    if kind not in KINDS or not isinstance(seq, int) or not isinstance(payload, bytes | str):
        return False
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and body.get("msg_id") == msg_id and body.get("seq") == seq
