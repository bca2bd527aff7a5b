"""The collector's store: SQLite by default, PostgreSQL (psycopg 3) for scale.

Exactly-once storage rests on one database constraint: ``messages.msg_id`` is the primary
key and every insert is ``ON CONFLICT (msg_id) DO NOTHING``. A message redelivered by the
broker, resent by a device after a crash, or received by two collectors that share the
load is therefore stored once, whichever collector commits first. Malformed messages go to
``dead_letters`` with their reason, keyed by a digest of topic and payload so that a
redelivered bad message is also kept once.

A device whose outbox was too corrupt to salvage queues its journaled exams again: each
comes under its old ``msg_id`` (its exam key's) but a new ``seq``. The collector keeps the
message it has, and records the new ``seq`` in ``resent`` (device, seq): that seq was
allocated and did arrive, so the report's and the dashboard's hole counts must not call it
lost. A plain redelivery (same ``msg_id``, same ``seq``) records nothing; the same
``msg_id`` from another device is not that device's seq, so it records nothing either.

SQLite runs in WAL mode with ``synchronous=FULL``: the collector acknowledges a message to
the broker only after the commit, so a commit must survive a power cut.

A row the database refuses (a value out of its range, a character it cannot hold) costs
that row alone: the batch is retried row by row and the refused row becomes a dead letter
with the database's reason. Only an unusable database (gone, full, locked) is a ``DbError``,
and then nothing of the batch is acknowledged.

First wins, but a conflict is seen: a message whose ``msg_id`` is stored already is kept
out, and when its content differs from the stored message's (``same_content``: parsed
JSON, so neither key order nor white space counts, and without the envelope fields a
re-send gives anew, ``RESENT_FIELDS``; nor a copy its box re-dated after a step of its
clock, ``redated``) ``Store.store_batch`` records it as a dead letter whose reason names
the ``msg_id``, in the same transaction. An identical redelivery stays a silent
duplicate. ``store`` and ``store_checked`` write only what they are given.

The collector bounds what each device may write (``RowRoom``): a valid message that does not
fit is kept out, written nowhere (``Stored.withheld``), unless the database holds it
already. Only a write is asked about, so a redelivery costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wire.mqtt import redact_url, topic_for
from wire.schema import CLOCK_STEP_S, QUEUED_KINDS, TIME_FIELDS, finite_number, wall_ts_or_none
from wire.shown import one_line, printable, read_failure, shown_path

DEFAULT_DB = "sonoedge-central.sqlite3"
DEAD_PREVIEW_CHARS = 2048

_TABLES = [
    """CREATE TABLE IF NOT EXISTS messages (
        msg_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        clinic_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        seq BIGINT NOT NULL,
        boot_id TEXT NOT NULL,
        device_ts DOUBLE PRECISION,
        mono_s DOUBLE PRECISION,
        received_ts DOUBLE PRECISION NOT NULL,
        collector TEXT NOT NULL,
        payload TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS messages_device_kind_seq ON messages(device_id, kind, seq)",
    """CREATE TABLE IF NOT EXISTS resent (
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        msg_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        clinic_id TEXT NOT NULL,
        device_ts DOUBLE PRECISION,
        received_ts DOUBLE PRECISION NOT NULL,
        collector TEXT NOT NULL,
        PRIMARY KEY (device_id, seq)
    )""",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        digest TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        reason TEXT NOT NULL,
        size INTEGER NOT NULL,
        preview TEXT NOT NULL,
        received_ts DOUBLE PRECISION NOT NULL,
        collector TEXT NOT NULL
    )""",
    # Each collector's last sign of life while subscribed to the broker and able to write
    # here (every `alive_every_s`): the dashboard tells a collector that stopped from boxes
    # that went silent, which look the same in the messages alone.
    """CREATE TABLE IF NOT EXISTS collectors (
        client_id TEXT PRIMARY KEY,
        subscribed_ts DOUBLE PRECISION NOT NULL,
        alive_ts DOUBLE PRECISION NOT NULL
    )""",
    # How far each collector's clock is ahead of the database server's (seconds, negative
    # behind), kept at each of its marks: the dashboard, maybe on another host, measures its
    # own clock against the same one and counts time by the collector's, which stamped every
    # arrival (a dashboard 30 min ahead called a running collector stopped).
    """CREATE TABLE IF NOT EXISTS collector_clocks (
        client_id TEXT PRIMARY KEY,
        ahead_s DOUBLE PRECISION NOT NULL,
        alive_ts DOUBLE PRECISION NOT NULL
    )""",
    # The district's registry (``--registry``) as a collector last read it, and since when
    # each box has been listed: the dashboard lists a box provisioned and never heard from
    # (a wrong password, a wrong broker, never switched on), which no message can show.
    """CREATE TABLE IF NOT EXISTS registry (
        device_id TEXT PRIMARY KEY,
        clinic_id TEXT NOT NULL,
        listed_ts DOUBLE PRECISION NOT NULL
    )""",
]

_INSERT_MSG = (
    "INSERT INTO messages (msg_id, device_id, clinic_id, kind, seq, boot_id, device_ts, "
    "mono_s, received_ts, collector, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (msg_id) DO NOTHING"
)
# Run when a row's insert conflicted: records its seq only when the message stored under its
# msg_id is the same device's under another seq (a re-sent duplicate, not a redelivery).
# Run when a queued kind's msg_id is stored already from the same device under another
# seq (`_SELECT_STORED` read it): a re-send after a lost outbox, whose seq is no hole.
_INSERT_RESENT = (
    "INSERT INTO resent (device_id, seq, msg_id, kind, clinic_id, device_ts, received_ts, "
    "collector) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, seq) DO NOTHING"
)
# The kinds that take a seq from the device's counter (status repeats the last one): the
# wire's one list, so that a new queued kind is no hole in the report's and the dashboard's
# sequences. SEQ_KINDS_SQL is the same list for ``kind IN (...)`` (constants, not input).
SEQ_KINDS = QUEUED_KINDS
SEQ_KINDS_SQL = "(" + ", ".join(f"'{kind}'" for kind in SEQ_KINDS) + ")"
def db_clock_sql(pg: bool) -> str:
    """The database server's clock now, in seconds since the epoch, as SQL: PostgreSQL's
    own host's; SQLite's is the host of the process that opened the file."""
    return ("EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION" if pg else
            "((julianday('now') - 2440587.5) * 86400.0)")


_INSERT_DEAD = (
    "INSERT INTO dead_letters (digest, topic, reason, size, preview, received_ts, collector) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING"
)
# Run when a row's insert conflicted: the message kept under its msg_id, to compare with.
_SELECT_STORED = "SELECT device_id, seq, payload FROM messages WHERE msg_id = ?"
# What a device gives anew when it queues a message again under its old msg_id (its outbox
# lost, the exam re-queued from the journal: ``resent``): a new seq, and the envelope of the
# boot that queued it. Not the message's content: a difference there is no conflict.
# The payload's clinic and schema too: the collector reads the clinic from its registry,
# and a device re-provisioned or updated before the re-send gives them anew.
RESENT_FIELDS = ("seq", "boot_id", "ts", "mono_s", "clinic_id", "schema")


@dataclass(frozen=True)
class Row:
    msg_id: str
    device_id: str
    clinic_id: str
    kind: str
    seq: int
    boot_id: str
    device_ts: float | None
    mono_s: float | None
    received_ts: float
    collector: str
    payload: str


@dataclass(frozen=True)
class DeadLetter:
    digest: str
    topic: str
    reason: str
    size: int
    preview: str
    received_ts: float
    collector: str


@dataclass
class Stored:
    """What ``Store.store_batch`` did with a batch."""

    rows: int = 0  # new messages
    # new dead letters; not one the database held already (a redelivery stores nothing)
    written: list[DeadLetter] = field(default_factory=list)
    refused: list[DeadLetter] = field(default_factory=list)  # rows the database refused
    # valid messages whose msg_id was stored with other content (the first is kept)
    conflicts: list[DeadLetter] = field(default_factory=list)
    # valid messages kept out by the ``RowRoom``: new, or a re-send under a new seq, and
    # nothing of them written
    withheld: list[Row] = field(default_factory=list)

    @property
    def dead(self) -> int:
        """How many new dead letters."""
        return len(self.written)


class RowRoom(Protocol):
    """What ``Store.store_batch`` asks before it writes a valid message: the collector's
    quota on each device's messages (central/collector.py ``MessageQuota``)."""

    def fits(self, row: Row) -> bool:
        """Whether ``row`` may be written (stored, or its seq kept in ``resent``). Asked
        again about a row when its batch is retried row by row, a row it ``took`` must
        fit again."""

    def took(self, row: Row) -> None:
        """``row`` was written (in the transaction under way)."""


class _NoBound:
    """Every message fits (``store`` and ``store_checked``, reports, seeds)."""

    def fits(self, row: Row) -> bool:
        return True

    def took(self, row: Row) -> None:
        pass


class DbError(Exception):
    """The database cannot be opened or written; the message names the URL."""


def dead_letter(topic: str, payload: bytes, reason: str, collector: str,
                now: float) -> DeadLetter:
    """A dead letter that any database takes: printable text, no NUL, bounded sizes. Its
    topic and reason are one line each (a control character, a newline, as \\xNN): they
    are logged, and a device chooses its topic's last level and its JSON's keys. Keyed by a
    digest of topic and payload, so that the same bad message is kept once."""
    topic = str(topic)
    digest = hashlib.sha256(topic.encode("utf-8", "backslashreplace") + b"\0"
                            + payload).hexdigest()
    preview = payload[:DEAD_PREVIEW_CHARS].decode("utf-8", "replace").replace("\x00", "")
    return DeadLetter(digest, printable(topic)[:255], printable(reason)[:500], len(payload),
                      preview, now, collector)


def same_content(stored: str, payload: str) -> bool:
    """Whether two payloads under one msg_id are the same message: the same JSON value
    (key order and white space do not count, nor 1 against 1.0), ``RESENT_FIELDS`` apart,
    or the same message re-dated by its box after a step of its clock (``redated``).
    Both were checked as messages when they arrived; text that does not parse is compared
    as it is."""
    if stored == payload:
        return True
    try:
        return _canonical(stored) == _canonical(payload) or redated(stored, payload)
    except (ValueError, RecursionError, OverflowError):
        return False


_MISSING = object()  # a time one copy has and the other lacks: no match


def redated(stored: str, payload: str) -> bool:
    """Whether one copy is the other with some of its wall-clock times (``TIME_FIELDS``)
    moved by one step of the box's clock (``CLOCK_STEP_S`` or more), every moved time by
    the same amount, and nothing else changed: a box whose clock was behind re-dates the
    messages still in its outbox (those it stamped before the step) when the clock is set,
    and a copy may have arrived already (sent, its ack lost). Either order: with several
    collectors sharing the subscription, the re-dated copy may be stored first. The first
    copy stored is kept, as for any redelivery; the dashboard dated it by the box's lag
    when it arrived."""
    old, new = json.loads(stored), json.loads(payload)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return False
    shifts = []
    for key in TIME_FIELDS:
        if key in RESENT_FIELDS or (key not in old and key not in new):
            continue
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if not finite_number(a) or not finite_number(b):
            return False
        if a != b:
            shifts.append(float(b) - float(a))
    # one move for all (each moved time is rounded to the millisecond), and a step's
    if not shifts or max(shifts) - min(shifts) > 0.01 or min(abs(d) for d in shifts) \
            < CLOCK_STEP_S or (min(shifts) < 0 < max(shifts)):
        return False
    return _canonical(stored, TIME_FIELDS) == _canonical(payload, TIME_FIELDS)


def _canonical(text: str, also_apart: tuple[str, ...] = ()) -> str:
    data = json.loads(text)
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in RESENT_FIELDS + also_apart}
    # dumped again, not compared as Python values: True == 1 there
    return json.dumps(_whole_floats(data), sort_keys=True, separators=(",", ":"))


def _whole_floats(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats(v) for v in value]
    return value


def conflict_letter(row: Row, stored: tuple) -> DeadLetter:
    """The dead letter of a valid message whose msg_id is stored with other content;
    ``stored`` is the kept message's (device_id, seq, payload)."""
    device, seq, _ = stored
    return dead_letter(topic_for(row.device_id, row.kind), row.payload.encode("utf-8"),
                       f"conflict: msg_id {row.msg_id} is stored with other content (from "
                       f"{device}, seq {seq}); the first is kept", row.collector,
                       row.received_ts)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def sqlite_path(url: str) -> str:
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            return url[len(prefix):]
    return url


class Store:
    """Thin wrapper that hides the two drivers' parameter styles."""

    def __init__(self, url: str = DEFAULT_DB, create: bool = True):
        """``create=False`` (reports) opens an existing collector database only: a mistyped
        path or a database without the collector's tables is a ``DbError``, never a new,
        empty database."""
        self.url = url
        self.pg = is_postgres(url)
        try:
            if self.pg:
                import psycopg

                self._errors = (psycopg.Error,)
                # What a row's values cause. Not ProgrammingError: a table gone or a privilege
                # revoked refuses every row, and they would be acknowledged as dead letters.
                self._row_errors = (psycopg.DataError, psycopg.IntegrityError, OverflowError,
                                    ValueError, TypeError, UnicodeError)
                self.conn = self._connect_pg()
            else:
                self._errors = (sqlite3.Error,)
                self._row_errors = (sqlite3.DataError, sqlite3.IntegrityError,
                                    sqlite3.InterfaceError, sqlite3.ProgrammingError,
                                    OverflowError, ValueError, TypeError, UnicodeError)
                path = sqlite_path(url)
                if path != ":memory:":
                    if not create and not Path(path).is_file():
                        raise DbError(f"{path}: no such database (is --db right?)")
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(path, timeout=30.0)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
            with self.tx() as cur:
                if not create:
                    cur.execute("SELECT to_regclass('messages') IS NOT NULL" if self.pg else
                                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages'")
                    if not cur.fetchall()[0][0]:
                        raise DbError(f"{self.shown()}: not a sonoedge collector database "
                                      "(no messages table)")
                    return
                if self.pg:
                    # Two collectors starting together would race on CREATE TABLE IF NOT
                    # EXISTS (a duplicate pg_type row); serialise it for this transaction.
                    cur.execute("SELECT pg_advisory_xact_lock(727274)")
                for stmt in _TABLES:
                    cur.execute(stmt)
        except ImportError:
            raise DbError(f"{url}: PostgreSQL needs psycopg: pip install 'sonoedge[central]'") \
                from None
        except DbError:
            raise
        except Exception as exc:
            raise DbError(f"{self.shown()}: cannot open database: {read_failure(exc)[:300]}") \
                from None

    def shown(self) -> str:
        return redact(self.url)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.pg else sql

    class _Tx:
        def __init__(self, store: Store):
            self.store = store

        def __enter__(self):
            self.store._reopen_if_lost()
            self.cur = self.store.conn.cursor()
            return _Cursor(self.cur, self.store)

        def __exit__(self, exc_type, exc, tb):
            try:
                if exc_type is None:
                    self.store.conn.commit()
                else:
                    self.store.conn.rollback()
            finally:
                self.cur.close()
            return False

    def _reopen_if_lost(self) -> None:
        """A PostgreSQL connection the server closed (a restart, a failover, an ended
        backend) stays closed: open a new one, or else nothing is ever stored again."""
        if not self.pg or not self.conn.closed:
            return
        import psycopg

        try:
            self.conn = self._connect_pg()
        except psycopg.Error as exc:
            raise DbError(f"{self.shown()}: cannot reconnect: {one_line(exc)}") from None

    def _connect_pg(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=False, connect_timeout=10)

    def tx(self) -> Store._Tx:
        return Store._Tx(self)

    def store(self, rows: list[Row], dead: list[DeadLetter]) -> tuple[int, int]:
        """Insert a batch in one transaction; returns (new messages, new dead letters)."""
        new_rows, new_dead, _ = self.store_checked(rows, dead)
        return new_rows, new_dead

    def store_checked(self, rows: list[Row], dead: list[DeadLetter]
                      ) -> tuple[int, int, list[DeadLetter]]:
        """Insert a batch; a row the database refuses goes to the dead letters instead.

        Returns (new messages, new dead letters, the rows refused as dead letters). Raises
        ``DbError`` only when the database itself cannot be written."""
        done = self.store_batch(rows, dead, find_conflicts=False)
        return done.rows, done.dead, done.refused

    def store_batch(self, rows: list[Row], dead: list[DeadLetter],
                    admit: Callable[[DeadLetter], bool] | None = None,
                    find_conflicts: bool = True, room: RowRoom | None = None) -> Stored:
        """Insert a batch as ``store_checked`` does; with ``find_conflicts``, a row whose msg_id
        is stored with other content is a dead letter too (``Stored.conflicts``).

        Each dead letter (given, refused row, conflict) is written only when ``admit``
        takes it (the collector's quota; asked again about a letter when the batch is
        retried row by row, it must answer the same); ``Stored.written`` lists those the
        database did not hold already. A row that would be written (new, or a re-send
        under a new seq) and that does not fit ``room`` is kept out (``Stored.withheld``);
        one the database holds already is a duplicate (or a conflict) as ever. Raises
        ``DbError`` only when the database itself cannot be written."""
        admit = admit or (lambda _letter: True)
        room = room or _NoBound()
        try:
            return self._insert(rows, dead, admit, find_conflicts, room)
        except self._row_errors:
            pass  # one of the rows: find it, one row per transaction
        except self._errors as exc:
            raise DbError(f"{self.shown()}: write failed: {one_line(exc)}") from None
        done = Stored()
        refused = done.refused
        for r in rows:
            try:
                one = self._insert([r], [], admit, find_conflicts, room)
                done.rows += one.rows
                done.written += one.written
                done.conflicts += one.conflicts
                done.withheld += one.withheld
            except self._row_errors as exc:
                refused.append(DeadLetter(
                    digest=r.msg_id, topic=topic_for(r.device_id, r.kind)[:255],
                    reason=f"database refused it: {one_line(exc)}"[:500],
                    size=len(r.payload), preview=r.payload[:DEAD_PREVIEW_CHARS],
                    received_ts=r.received_ts, collector=r.collector))
            except self._errors as exc:
                raise DbError(f"{self.shown()}: write failed: {one_line(exc)}") from None
        for d in dead + refused:
            try:
                done.written += self._insert([], [d], admit, find_conflicts, room).written
            except self._errors as exc:
                raise DbError(f"{self.shown()}: write failed: {one_line(exc)}") from None
        return done

    def _insert(self, rows: list[Row], dead: list[DeadLetter],
                admit: Callable[[DeadLetter], bool], find_conflicts: bool,
                room: RowRoom) -> Stored:
        done = Stored()
        with self.tx() as cur:
            for r in rows:
                fits = room.fits(r)
                if fits:
                    cur.execute(_INSERT_MSG, (r.msg_id, r.device_id, r.clinic_id, r.kind,
                                              r.seq, r.boot_id, r.device_ts, r.mono_s,
                                              r.received_ts, r.collector, r.payload))
                    if cur.rowcount > 0:
                        done.rows += 1
                        room.took(r)
                        continue
                    if r.kind not in SEQ_KINDS and not find_conflicts:
                        continue
                # the kept message, read once (over quota: whether there is one)
                cur.execute(_SELECT_STORED, (r.msg_id,))
                stored = cur.fetchall()
                if not stored:
                    if not fits:  # new: not written
                        done.withheld.append(r)
                    continue
                device, seq, payload = stored[0]
                if r.kind in SEQ_KINDS and device == r.device_id and seq != r.seq:
                    if not fits:  # its seq would be written in `resent`: not now
                        done.withheld.append(r)
                        continue
                    cur.execute(_INSERT_RESENT, (
                        r.device_id, r.seq, r.msg_id, r.kind, r.clinic_id, r.device_ts,
                        r.received_ts, r.collector))
                    if cur.rowcount > 0:
                        room.took(r)
                if find_conflicts and not same_content(payload, r.payload):
                    done.conflicts.append(conflict_letter(r, stored[0]))
            for d in dead + done.conflicts:
                if admit(d):
                    cur.execute(_INSERT_DEAD, (d.digest, d.topic, d.reason, d.size,
                                               d.preview, d.received_ts, d.collector))
                    if cur.rowcount > 0:
                        done.written.append(d)
        return done

    def mark_alive(self, client_id: str, subscribed_ts: float, now: float, *,
                   its_clock: bool = False) -> None:
        """This collector is subscribed (since `subscribed_ts`) and writes here at `now`.
        `its_clock`: `now` is the collector's own clock, so its distance from the database
        server's is kept too (`collector_clocks`); a seed's made-up time is not.
        Raises ``DbError`` when the database cannot be written."""
        try:
            with self.tx() as cur:
                cur.execute("INSERT INTO collectors (client_id, subscribed_ts, alive_ts) "
                            "VALUES (?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET "
                            "subscribed_ts = excluded.subscribed_ts, "
                            "alive_ts = excluded.alive_ts", (client_id, subscribed_ts, now))
                if its_clock:
                    cur.execute(f"INSERT INTO collector_clocks (client_id, ahead_s, alive_ts) "
                                f"VALUES (?, ? - {db_clock_sql(self.pg)}, ?) "
                                "ON CONFLICT (client_id) DO UPDATE SET "
                                "ahead_s = excluded.ahead_s, alive_ts = excluded.alive_ts",
                                (client_id, now, now))
        except self._errors as exc:
            raise DbError(f"{self.shown()}: write failed: {one_line(exc)}") from None

    def set_registry(self, devices: dict[str, str], now: float) -> None:
        """The registry's devices (device: clinic) in place of those written before, in one
        transaction; a box listed before keeps its `listed_ts` (moved to another clinic too).
        Raises ``DbError`` when the database cannot be written."""
        try:
            with self.tx() as cur:
                cur.execute("SELECT device_id, clinic_id FROM registry")
                had = dict(cur.fetchall())
                # many at once: a registry of 100,000 boxes is one round trip, not 100,000
                cur.executemany("DELETE FROM registry WHERE device_id = ?",
                                [(d,) for d in had.keys() - devices.keys()])
                cur.executemany("INSERT INTO registry (device_id, clinic_id, listed_ts) "
                                "VALUES (?, ?, ?)",
                                [(d, c, now) for d, c in devices.items() if d not in had])
                cur.executemany("UPDATE registry SET clinic_id = ? WHERE device_id = ?",
                                [(c, d) for d, c in devices.items()
                                 if d in had and had[d] != c])
        except self._errors as exc:
            raise DbError(f"{self.shown()}: write failed: {one_line(exc)}") from None

    def has_table(self, name: str) -> bool:
        """Whether the collector's database has this table (an older collector made no
        ``resent``)."""
        return bool(self.query(
            "SELECT to_regclass(?) IS NOT NULL" if self.pg else
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
            (name,))[0][0])

    def recent_writes(self, since: float) -> list[tuple[str, str, int, float]]:
        """(device, kind, writes, the first one's received time) of the writes received
        since `since`: messages stored, and re-sent seqs kept in ``resent`` (what the
        collector's ``MessageQuota`` counts), so that a restarted collector goes on from
        the database's count (``MessageQuota.seed``). One query at a collector's start
        (it reads the dashboard's index on ``received_ts`` where one was made)."""
        writes = ("SELECT device_id, kind, received_ts FROM messages WHERE received_ts >= ? "
                  "UNION ALL SELECT device_id, kind, received_ts FROM resent "
                  "WHERE received_ts >= ?")
        out = []
        for dev, kind, n, first in self.query(
                f"SELECT device_id, kind, COUNT(*), MIN(received_ts) FROM ({writes}) w "
                "GROUP BY device_id, kind", (since, since)):
            # a received time that is no time (a damaged row: SQLite keeps a text where a
            # number was) leaves its box's count at none, as before the seed, not the
            # collector down with a traceback
            if (first := wall_ts_or_none(first)) is not None:
                out.append((dev, kind, int(n), first))
        return out

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with self.tx() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        except self._errors as exc:
            raise DbError(f"{self.shown()}: query failed: {one_line(exc)}") from None

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


class _Cursor:
    def __init__(self, cur, store: Store):
        self._cur = cur
        self._store = store

    def execute(self, sql: str, params: tuple = ()):
        return self._cur.execute(self._store._sql(sql), params)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self._cur.executemany(self._store._sql(sql), rows)

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def fetchall(self):
        return self._cur.fetchall()


def redact(url: str) -> str:
    """The database URL with its password hidden, as one line of at most about 200
    characters (a 5,000-character path was echoed whole, twice), for messages and logs."""
    return shown_path(redact_url(url))


