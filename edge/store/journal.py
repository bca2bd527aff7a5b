"""The local journal: every scored frame, durable before the next one is read.

SQLite in WAL mode with `synchronous=NORMAL`: each frame is its own committed transaction,
so killing the process (SIGKILL, a crash) loses nothing that was journaled, and the
database is never corrupted. A power cut may lose the last commits not yet checkpointed
(about a second of frame results) but never an older one; exam summaries, which matter
more, go through the outbox with its own, stricter policy. The schema version lives in
`PRAGMA user_version`; upgrades migrate forward and never wipe.

The journal never stops the loop. A full disk sheds the oldest frame results (never an
exam) to make room, says so once in the log and in `stats()`, and a frame that still does
not fit is scored without being journaled. A run whose process was killed stays open
(`ended_ts` NULL) until the next start rebuilds its exams from its results (`replay`) and
closes it.

Nothing already accepted is lost to a corrupt file either. A journal found corrupt, at
start (a quick check of its exams, dates and runs, then of the whole file up to
START_CHECK_BYTES) or by a write that reaches a damaged page, is moved aside and a new
one started, and
everything that can still be read from the old one is copied into it (`_salvage`): the
device reads only the new journal (the history page, the re-queue of the exams an outbox
lost, the replay of a killed run), so a row left in the moved-aside file is as good as lost.
Damage is a page or a few, so the copy goes around it by ranges of rowids, and one bad page
costs the rows on it, not the table. It is bounded (SALVAGE_SECONDS) because it holds up the
start or the loop, so it goes in order of worth: the exams, their dates, the runs, then the
frame results newest first, and what a huge file leaves unread is the oldest frames. A row
is copied only if it reads back as the journal wrote it, through the journal's own decoders
(a damaged page can still yield rows), so no reader meets garbage later. The moved-aside
file is read only and kept, as evidence. One line names both files and gives, per table,
the rows recovered and the rows that could not be read.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.result import FrameResult
from edge.store.scan import DamagedTableScan
from edge.store.state import (
    Reserve,
    StateError,
    is_corrupt,
    is_full,
    move_aside,
    open_making_room,
)
from wire.schema import (
    WITHDRAWAL_REASONS,
    finite_number,
    number_or_none,
    sqlite_uri,
    wall_ts_or_none,
)
from wire.shown import one_line, printable

log = logging.getLogger(__name__)

SCHEMA_VERSION = 8
MAX_DATES_BYTES = 256  # {"lmp": "YYYY-MM-DD", "today": "YYYY-MM-DD"} is 40
JOURNAL_FILE = "journal.sqlite"
REDATE_BATCH = 500  # ids in one statement when a clock step dates rows again
SHED_BATCH = 2000  # frame results dropped at a time when the disk is full
WAL_PAGES = 256  # checkpoint the write-ahead log at this many pages (1 MB of 4 KB pages)
MIN_FREE_PAGES = 64  # on a full disk, shed again before the file's free pages run out
QUOTA_CHECK_EVERY = 200  # frames between two looks at the journal's size against its quota
# The salvage of a corrupt journal (`_salvage`) holds up the start, or the loop, so it stops
# after SALVAGE_SECONDS; what it has not reached by then stays in the moved-aside file only.
# Measured: ~270,000 frame results (~250 MB of journal) in 10 s on a busy 2-core x86 box;
# memory stays within a few MB (a chunk at a time).
SALVAGE_SECONDS = 10.0
# The quick check at each start (`_check_at_start`). SQLite 3.40 (this venv's, Debian
# bookworm's) cannot stop it inside a b-tree's walk, so a time limit alone does not bound
# it: the whole file is checked only up to START_CHECK_BYTES, about 1.6 s of a card read
# at ~40 MB/s (measured: 140 MB in 0.08 s from the page cache on a 2-core x86 box), and the
# exams, their dates and the runs always (small, and the most valuable). What runs past
# START_CHECK_SECONDS, where SQLite can stop it, is stopped there.
START_CHECK_SECONDS = 2.0
START_CHECK_BYTES = 64 << 20
SALVAGE_CHUNK = 500  # rows written in one transaction
SALVAGE_CHUNK_BYTES = 4 << 20  # ... or fewer: at most this much text held at once
SALVAGE_ROW_BYTES = 1 << 20  # a longer row (a real one is ~1 kB) is damage: SQLite refuses it
# Where the old journal's last result id cannot be read, the new one's ids start this far
# above the last it could copy: ids are never handed out twice (an exam's id derives from
# its run and its first frame's row), and 64-bit ids have room for any number of gaps.
SALVAGE_ID_GAP = 1_000_000

_MIGRATIONS = {
    1: """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        started_ts REAL NOT NULL,
        ended_ts REAL,
        frames INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        models TEXT NOT NULL
    );
    CREATE TABLE results (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs(run_id),
        source TEXT NOT NULL,
        frame INTEGER NOT NULL,
        plane TEXT,
        plane_confidence REAL,
        latency_ms REAL,
        ts REAL NOT NULL,
        mono_s REAL NOT NULL,
        error TEXT,
        record TEXT NOT NULL
    );
    CREATE INDEX results_run ON results(run_id, id);
    """,
    # Head biometry: the record holds all of it; the status and HC are columns so a local
    # review can query them. Older rows keep NULL (they were never measured).
    2: """
    ALTER TABLE results ADD COLUMN biometry_status TEXT;
    ALTER TABLE results ADD COLUMN hc_mm REAL;
    """,
    # Exams: the summary that goes to the district and the best frame of every plane (with
    # its thumbnail's path), so a local review can show what was captured. The frame's
    # quality score is a column beside its biometry.
    3: """
    CREATE TABLE exams (
        exam_id TEXT PRIMARY KEY,
        run_id TEXT REFERENCES runs(run_id),
        protocol TEXT NOT NULL,
        started_ts REAL NOT NULL,
        ended_ts REAL NOT NULL,
        ended_by TEXT NOT NULL,
        summary TEXT NOT NULL,
        best_frames TEXT NOT NULL
    );
    CREATE INDEX exams_started ON exams(started_ts);
    ALTER TABLE results ADD COLUMN quality REAL;
    """,
    # Crash recovery: the journal rows of each exam's first and last frame, so the exams of
    # a killed run are rebuilt after the last one it finished, with the ids it gave them.
    4: """
    ALTER TABLE exams ADD COLUMN first_row INTEGER;
    ALTER TABLE exams ADD COLUMN last_row INTEGER;
    """,
    # The dates the midwife entered for an exam (last period, and the day she entered it),
    # for its report's HC-for-dates flag. Kept on the box only: never in the exam summary,
    # which the district gets (nothing there tells of the woman).
    5: """
    ALTER TABLE exams ADD COLUMN dates TEXT;
    """,
    # ... kept in a table of their own from the moment the page sends them, whether the
    # exam has ended or not: a run killed mid-exam has its exams rebuilt under the same ids
    # (`replay`), and the dates the page was told were kept are still there. (Schema 5's
    # column is no longer written.)
    6: """
    CREATE TABLE exam_dates (exam_id TEXT PRIMARY KEY, dates TEXT NOT NULL);
    INSERT INTO exam_dates SELECT exam_id, dates FROM exams WHERE dates IS NOT NULL;
    """,
    # Dates entered or cleared after an exam's summary had left go to the district as a
    # correction (`loop.tell_district_dates`): each entry's number for the exam (its
    # correction's once-only key, so a crash repeats none, whatever the box's clock does),
    # when it was made (for the record, and how far back a start looks), and the age by
    # dates the district was last told by a correction (JSON: a number, or null for none;
    # NULL: only the summary told it). Clearing keeps the row, with "null" as its dates,
    # so what was told is not forgotten.
    7: """
    ALTER TABLE exam_dates ADD COLUMN entered_ts REAL;
    ALTER TABLE exam_dates ADD COLUMN entry INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE exam_dates ADD COLUMN told TEXT;
    CREATE INDEX exam_dates_entered ON exam_dates(entered_ts);
    """,
    # An ended exam the midwife withdrew (started by mistake, a test scan, the wrong woman,
    # two women in one exam), or restored: the latest entry stands, numbered like the dates'
    # (its message's once-only key), and `told` is the last entry queued for the district
    # (`loop.tell_district_withdrawal`). The exam itself is kept, as it was.
    8: """
    CREATE TABLE exam_withdrawals (exam_id TEXT PRIMARY KEY, withdrawn INTEGER NOT NULL,
        reason TEXT NOT NULL, entered_ts REAL NOT NULL, entry INTEGER NOT NULL,
        told INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX exam_withdrawals_entered ON exam_withdrawals(entered_ts);
    """,
}


@dataclass(frozen=True)
class Withdrawal:
    """An exam's latest withdrawal entry, as the journal reads it back (`withdrawal`)."""
    withdrawn: bool
    reason: str
    entered_ts: float
    entry: int  # its number among the exam's entries: its message's once-only key
    told: int  # the last entry queued for the district (0: none)


def read_withdrawal(row: object) -> Withdrawal | None:
    """A row (withdrawn, reason, entered_ts, entry, told) of `exam_withdrawals`, or None
    where it is not as the journal writes one: damage, which every reader takes as no
    withdrawal (the exam stands)."""
    if not isinstance(row, tuple | list) or len(row) != 5:
        return None
    withdrawn, reason, entered, entry, told = row
    entered = wall_ts_or_none(entered)
    if withdrawn not in (0, 1) or isinstance(withdrawn, float) \
            or reason not in WITHDRAWAL_REASONS or entered is None \
            or _entry_number(entry) != entry or entry == 0 \
            or not (told == 0 or _entry_number(told) == told):
        return None
    return Withdrawal(bool(withdrawn), reason, entered, entry, told)


def told_weeks(told: object) -> tuple[bool, float | None]:
    """What a correction told the district, from `exam_dates.told` (JSON text: a number,
    or null for none): (whether one told it, the weeks or None). A value that is no such
    JSON, or longer than one, is damage: read as none told."""
    if not isinstance(told, str) or len(told) > 32:
        return False, None
    try:
        value = json.loads(told)
    except ValueError:
        return False, None
    if value is None:
        return True, None
    weeks = number_or_none(value)
    return weeks is not None, weeks


def _marks(values: list) -> str:
    return ",".join("?" * len(values))


def _json_dict(raw: object) -> dict | None:
    """A JSON object as the journal reads one back (a summary, best frames, a frame's
    record, a run's models), or None where the column holds anything else: damage, which
    the reader skips."""
    try:
        value = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _dates_json(raw: object) -> dict | None:
    """`exam_dates.dates` as `exam_dates` reads it back: the object, or None (cleared, or
    JSON that is no object). ValueError or RecursionError: not JSON, which it says."""
    dates = None if raw is None else json.loads(raw)
    return dates if isinstance(dates, dict) else None


def _entry_number(entry: object) -> int:
    """`exam_dates.entry` as `dates_entry` reads it back: 0 for none, or for damage."""
    return entry if isinstance(entry, int) and 0 < entry < 1 << 31 else 0


def _is_int_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _is_time_or_none(value: object) -> bool:
    return value is None or number_or_none(value) is not None


# A row of a corrupt journal is copied when every column the journal reads back reads as it
# was written (the readers' own decoders above): a damaged page can still give rows, and a
# row that is garbage is left in the moved-aside file, counted as not readable. The new
# table's NOT NULL constraints are checked by the insert itself.
def _sound_exam(row: dict) -> bool:
    summary = _json_dict(row.get("summary"))
    return (isinstance(row.get("exam_id"), str) and summary is not None
            and summary.get("exam_id") == row["exam_id"]  # as the history page reads it
            and _json_dict(row.get("best_frames")) is not None
            and number_or_none(row.get("started_ts")) is not None
            and _is_int_or_none(row.get("first_row"))
            and _is_int_or_none(row.get("last_row")))


def _sound_dates(row: dict) -> bool:
    raw = row.get("dates")
    if not isinstance(row.get("exam_id"), str) or not isinstance(raw, str) \
            or len(raw.encode("utf-8", "surrogatepass")) > MAX_DATES_BYTES:
        return False  # `exam_dates` never reads a longer one
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return False
    entry, entered, told = row.get("entry", 0), row.get("entered_ts"), row.get("told")
    return (_entry_number(entry) == entry and (entered is None or wall_ts_or_none(entered)
                                               is not None)
            and (told is None or told_weeks(told)[0]))


def _sound_withdrawal(row: dict) -> bool:
    return isinstance(row.get("exam_id"), str) and read_withdrawal(tuple(
        row.get(k) for k in ("withdrawn", "reason", "entered_ts", "entry", "told"))) is not None


def _sound_run(row: dict) -> bool:
    return (isinstance(row.get("run_id"), str) and isinstance(row.get("source"), str)
            and _json_dict(row.get("models")) is not None
            and number_or_none(row.get("started_ts")) is not None
            and _is_time_or_none(row.get("ended_ts")))


def _sound_result(row: dict) -> bool:
    return (isinstance(row.get("run_id"), str) and _json_dict(row.get("record")) is not None
            and number_or_none(row.get("ts")) is not None)


# Most valuable first: the exams (what the district gets, the history page, the re-queue
# of exams an outbox lost), their dates, then the runs and frame results a start replays.
_SALVAGED = (("exams", "exams", _sound_exam), ("exam_dates", "exam dates", _sound_dates),
             ("exam_withdrawals", "exam withdrawals", _sound_withdrawal),
             ("runs", "runs", _sound_run), ("results", "frame results", _sound_result))
def _salvage(aside: Path, db: sqlite3.Connection) -> tuple[dict[str, tuple[int, int]], str]:
    """Copy into `db`, a new journal, every sound row still readable in the corrupt journal
    `aside` (left as it was: read only, its write-ahead log included), table by table in
    the order of `_SALVAGED`, within SALVAGE_SECONDS: per table (rows recovered, rows not
    readable), and the end of the log line that says so."""
    deadline = time.monotonic() + SALVAGE_SECONDS
    counts: dict[str, tuple[int, int]] = {}
    stopped = ""

    def unreadable(exc: BaseException) -> tuple[dict, str]:
        _carry_results_sequence(None, db)
        return counts, f"nothing in it could be read ({one_line(exc)}): a new, empty " \
                       "journal is started"

    try:
        # its bytes, quoted: a folder name that is not UTF-8 opens too
        old = sqlite3.connect(sqlite_uri(aside), uri=True, timeout=1.0,
                              isolation_level=None)
    except sqlite3.Error as exc:
        return unreadable(exc)
    try:
        old.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SALVAGE_ROW_BYTES)
        # a single query that runs past the deadline (a long run of damage) is interrupted
        old.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            layouts = {table: [r[1] for r in old.execute(f'PRAGMA table_info("{table}")')]
                       for table, _, _ in _SALVAGED}
        except sqlite3.Error as exc:  # a header or a schema too damaged to read
            return unreadable(exc)
        for table, label, sound in _SALVAGED:
            if not layouts[table]:  # a table an older journal did not have yet
                counts[table] = (0, 0)
                continue
            new = db.execute(f'PRAGMA table_info("{table}")').fetchall()
            alias = {r[1] for r in new if r[5] == 1 and r[2].upper() == "INTEGER"}
            # an older journal's table has fewer columns: the others stay as migrations left
            columns = [r[1] for r in new if r[1] in layouts[table] and r[1] not in alias]
            scan = DamagedTableScan(old, table, columns, deadline)
            copied, refused, stopped = _copy(scan, db, table, label, ["rowid", *columns],
                                             sound)
            counts[table] = (copied, scan.lost + refused)
            if scan.timed_out:
                stopped = f"stopped in {label} after {SALVAGE_SECONDS:g} s (SALVAGE_SECONDS)"
            if stopped:
                stopped = f"; {stopped}: the rest is only in the moved-aside file"
                break
        _carry_results_sequence(old, db)
    finally:
        old.close()
    said = ", ".join(f"{label} {counts[t][0]}/{counts[t][1]}" for t, label, _ in _SALVAGED
                     if t in counts)
    return counts, f"salvaged into a new journal (rows recovered/not readable): {said}{stopped}"


def _carry_results_sequence(old: sqlite3.Connection | None, db: sqlite3.Connection) -> None:
    """Result ids in the new journal go on above every id the old one handed out, copied or
    not: a frame of the running run given an id again would give its exam the id of an
    exam already journaled and queued (`exam_id_for`), and the outbox would refuse it."""
    known = []
    for sql in ("SELECT seq FROM sqlite_sequence WHERE name = 'results'",
                "SELECT MAX(rowid) FROM results"):
        try:
            value = old.execute(sql).fetchone()[0] if old is not None else None
        except (sqlite3.Error, TypeError):
            value = None
        if isinstance(value, int):
            known.append(value)
    copied = db.execute("SELECT MAX(id) FROM results").fetchone()[0] or 0
    top = max([copied, *known]) if known else copied + SALVAGE_ID_GAP
    try:
        with db:
            if not db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = "
                              "'results'", (top,)).rowcount:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('results', ?)",
                           (top,))
    except sqlite3.Error as exc:  # a full disk: said; the ids of a new run cannot collide
        log.warning("journal: the next result id could not be carried over (%s)",
                    one_line(exc))


def _copy(scan: DamagedTableScan, db: sqlite3.Connection, table: str, label: str, names: list[str],
          sound: Callable[[dict], bool]) -> tuple[int, int, str]:
    """Insert the sound rows of `scan` into `db`'s `table`, a transaction per chunk:
    (rows inserted, rows refused, why it stopped early: "" for not)."""
    sql = (f'INSERT OR IGNORE INTO "{table}" ({", ".join(names)}) '
           f'VALUES ({", ".join("?" * len(names))})')
    copied = refused = size = 0
    batch: list[tuple] = []

    def flush() -> None:
        nonlocal copied, refused, size
        before = db.total_changes
        db.execute("BEGIN")
        try:
            db.executemany(sql, batch)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        done = db.total_changes - before
        copied, refused = copied + done, refused + len(batch) - done  # a NOT NULL refused
        batch.clear()
        size = 0

    try:
        for row in scan.rows():
            if not sound(dict(zip(names, row, strict=True))):
                refused += 1
                continue
            batch.append(row)
            size += sum(len(v) for v in row if isinstance(v, str | bytes))
            if len(batch) >= SALVAGE_CHUNK or size >= SALVAGE_CHUNK_BYTES:
                flush()
        if batch:
            flush()
    except sqlite3.Error as exc:  # the new journal's own write: a full disk, say
        return copied, refused, f"stopped in {label}: the new journal cannot take more " \
                                f"({one_line(exc)})"
    return copied, refused, ""


class JournalError(StateError):
    """The journal cannot be used (and is not corrupt): one line naming it."""


def _text(value):
    """A string SQLite can store: file names that are not UTF-8 keep their bytes as \\xNN."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape" if all(
                "\udc80" <= c <= "\udcff" for c in value if "\ud800" <= c <= "\udfff")
                else "backslashreplace").decode("utf-8", "backslashreplace")
    return value


class Journal:
    def __init__(self, path: Path, reserve: Reserve | None = None, quota_bytes: int = 0):
        self.path = Path(path)
        # [journal] quota_mb: past it the oldest frame results go (never an exam), said once
        # per episode in the log, so the journal cannot take the card from the outbox.
        self.quota_bytes = int(quota_bytes)
        self.quota_shed = 0
        self._since_quota = 0
        self._over_said = False
        self.reserve = reserve if reserve is not None else Reserve(self.path.parent)
        self.shed_frames = 0  # frame results deleted to make room on a full disk
        self.skipped_frames = 0  # frames scored but not journaled (no room even so)
        self.disk_full = False
        self.moved_aside: Path | None = None  # where a corrupt journal went
        # what could be copied from it: table -> (rows recovered, rows not readable)
        self.salvaged: dict[str, tuple[int, int]] = {}
        self._runs: dict[str, tuple] = {}  # runs started here, to re-create after a move
        self._failure: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"{self.path}: journal cannot be opened ({exc.strerror or exc})"
                               ) from None
        try:
            open_making_room(self._open, self.reserve)  # then it sheds old frames
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise JournalError(f"{self.path}: journal cannot be opened ({exc})") from None
            self._replace_corrupt(exc)
        self.reserve.ensure()

    def _open(self) -> None:
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # A write-ahead log of at most ~1 MB (the reserve's size): on a full disk it can
            # always be folded back into the file once the reserve is given back.
            self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            self._migrate()
            self.db.execute("SELECT COUNT(*) FROM runs WHERE ended_ts IS NULL").fetchone()
            self.db.execute("SELECT MAX(id) FROM results").fetchone()
            self._check_at_start()
        except BaseException:
            self.db.close()
            raise

    def _check_at_start(self) -> None:
        """Find damage at the start, where the salvage is cheap, not when a write reaches it
        mid-exam: SQLite's quick check of the exams, their dates and the runs, then of the
        whole file when it is at most START_CHECK_BYTES (a 2 GB journal on a slow card takes
        most of a minute: what is not checked is found when a write reaches it, as before).
        """
        if START_CHECK_SECONDS <= 0:
            return
        try:
            whole = self.path.stat().st_size <= START_CHECK_BYTES
        except OSError:
            whole = False
        if not whole:
            log.info("journal %s: its frame results are not checked at start (the file is "
                     "over %d MB, START_CHECK_BYTES); damage there is found when a write "
                     "reaches it", self.path, START_CHECK_BYTES >> 20)
        deadline = time.monotonic() + START_CHECK_SECONDS
        self.db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            for table in ("exams", "exam_dates", "exam_withdrawals", "runs",
                          *((None,) if whole else ())):
                sql = f"PRAGMA quick_check({table})" if table else "PRAGMA quick_check(5)"
                problems = [row[0] for row in self.db.execute(sql)]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError(
                        f"database disk image is malformed ({one_line(problems[0])[:200]})")
        except sqlite3.OperationalError as exc:
            if "interrupted" not in str(exc):
                raise
            log.info("journal %s: the start's check stopped after %g s (START_CHECK_SECONDS); "
                     "damage beyond it is found when a write reaches it", self.path,
                     START_CHECK_SECONDS)
        finally:
            self.db.set_progress_handler(None, 0)

    def _replace_corrupt(self, exc: BaseException) -> None:
        """Move the corrupt journal aside, start a new one and salvage into it what can
        still be read: at start and when a write finds the journal corrupt alike."""
        try:
            self.db.close()
        except Exception:
            pass
        try:
            self.moved_aside = move_aside(self.path)
        except OSError as err:
            raise JournalError(f"{self.path}: journal is corrupt ({one_line(exc)}) and cannot "
                               f"be moved aside ({err.strerror or one_line(err)})") from None
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            raise JournalError(f"{self.path}: journal is corrupt (moved to {self.moved_aside})"
                               f" and a new journal cannot be started ({one_line(err)})") \
                from None
        self.salvaged, said = _salvage(self.moved_aside, self.db)
        log.warning("journal %s is corrupt (%s): moved to %s; %s", self.path, one_line(exc),
                    self.moved_aside, said)
        try:
            for run_id, row in self._runs.items():
                self.db.execute("INSERT OR IGNORE INTO runs (run_id, source, started_ts, "
                                "models) VALUES (?,?,?,?)", (run_id, *row))
        except sqlite3.DatabaseError as err:
            raise JournalError(f"{self.path}: a new journal cannot be started ({err})") \
                from None

    # -- writing that never stops the loop -----------------------------------------------
    def _write(self, what: str, fn: Callable[[], object]):
        """Run one write; on a full disk shed old frames and retry, on corruption move the
        file aside and retry; otherwise (or if that fails too) say so once and give None."""
        # On a full disk, each step in turn until one makes room: fold the write-ahead log
        # back into the file (its pages are then reused), give back the reserve, shed the
        # oldest frames.
        steps = iter((self._checkpoint, self._release_reserve, self._shed, self._shed))
        for attempt in range(6):
            try:
                out = fn()
            except sqlite3.DatabaseError as exc:
                if is_full(exc):
                    self.disk_full = True
                    if any(step() for step in steps):
                        continue
                elif attempt < 3 and is_corrupt(exc):
                    self._replace_corrupt(exc)
                    continue
                self._failed(what, exc)
                return None
            if self.disk_full and self._free_pages() < MIN_FREE_PAGES:
                self._shed()  # room for the next frames, while deleting still fits
            elif self._failure and not self.disk_full:
                self._failure = None
            if self.disk_full and self.reserve.ensure():
                log.warning("journal: disk space is back (%d oldest frames shed, %d frames "
                            "not journaled)", self.shed_frames, self.skipped_frames)
                self.disk_full, self._failure = False, None
            return out
        return None

    def _release_reserve(self) -> bool:
        if not self.reserve.release():
            return False
        self._checkpoint()
        self._shed()  # now, while there is room to delete: free pages for what follows
        return True

    def _free_pages(self) -> int:
        try:
            return int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        except sqlite3.DatabaseError:
            return 0

    def _checkpoint(self) -> bool:
        try:
            busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.DatabaseError:
            return False
        return not busy

    def _delete_oldest(self) -> int:
        """Delete the oldest frame results (of any run; exams are kept); how many went."""
        try:
            # At most half of what is left: the newest frames are the ones worth keeping.
            gone = self.db.execute(
                "DELETE FROM results WHERE id IN (SELECT id FROM results ORDER BY id "
                "LIMIT MIN(?, MAX(1, (SELECT COUNT(*) FROM results) / 2)))",
                (SHED_BATCH,)).rowcount
        except sqlite3.DatabaseError:
            return 0
        if gone <= 0:
            return 0
        self._checkpoint()
        return gone

    def _shed(self) -> bool:
        """Make room in the file on a full disk (counted and said apart from the quota's
        trimming); True when something went."""
        gone = self._delete_oldest()
        if not gone:
            return False
        first = self.shed_frames == 0
        self.shed_frames += gone
        if first:
            log.warning("disk full: shedding the oldest journal frames to keep scoring (%d so "
                        "far); exams are kept", self.shed_frames)
        return True

    def _failed(self, what: str, exc: BaseException) -> None:
        if what == "frame":
            self.skipped_frames += 1
        reason = one_line(exc)
        if is_full(exc):
            self.disk_full = True
        if reason != self._failure:
            log.warning("journal %s: %s not journaled (%s); scoring goes on", self.path, what,
                        reason)
            self._failure = reason

    def stats(self) -> dict:
        """The journal's health for the loop's figures (and so the health message)."""
        return {"journal_shed": self.shed_frames, "journal_skipped": self.skipped_frames,
                "disk_full": self.disk_full, "journal_quota_shed": self.quota_shed}

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer sonoedge (schema {version})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            self.db.executescript(f"BEGIN; {_MIGRATIONS[step]} PRAGMA user_version={step}; COMMIT;")

    def start_run(self, source: str, models: dict[str, str]) -> str:
        run_id = str(uuid.uuid4())
        row = (_text(source), time.time(), json.dumps(models, sort_keys=True))
        self._runs[run_id] = row
        self._write("run", lambda: self.db.execute(
            "INSERT INTO runs (run_id, source, started_ts, models) VALUES (?,?,?,?)",
            (run_id, *row)))
        return run_id

    def append(self, run_id: str, result: FrameResult, held: bool = False,
               record: dict | None = None) -> int | None:
        """Journal one frame result; its row id, or None when it could not be journaled.
        `held`: the page held it back from the exams (after "stop"); its record says so.
        `record`: the result's `to_dict()` where the caller made it already (not changed)."""
        record = result.to_dict() if record is None else record
        if held:
            record = {**record, "held": True}
        biometry = result.biometry or {}
        quality = result.quality or {}
        values = (run_id, _text(result.source), result.frame, result.plane,
                  result.plane_confidence, result.latency_ms, result.ts, result.mono_s,
                  _text(result.error), json.dumps(record, separators=(",", ":")),
                  biometry.get("status"), biometry.get("hc_mm"), quality.get("score"))
        cursor = self._write("frame", lambda: self.db.execute(
            "INSERT INTO results (run_id, source, frame, plane, plane_confidence, latency_ms,"
            " ts, mono_s, error, record, biometry_status, hc_mm, quality)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", values))
        self._since_quota += 1
        if self.quota_bytes and self._since_quota >= QUOTA_CHECK_EVERY:
            self._since_quota = 0
            self.enforce_quota()
        return None if cursor is None else cursor.lastrowid

    def used_bytes(self) -> int:
        """Pages in use (the file less its free pages) plus the write-ahead log."""
        try:
            pages, free, size = (int(self.db.execute(f"PRAGMA {p}").fetchone()[0]) for p in
                                 ("page_count", "freelist_count", "page_size"))
        except sqlite3.DatabaseError:
            return 0
        wal = self.path.with_name(self.path.name + "-wal")
        return (pages - free) * size + (wal.stat().st_size if wal.exists() else 0)

    def enforce_quota(self) -> int:
        """Shed the oldest frame results until the journal is within 90% of its quota;
        how many went. Deleted pages are reused, so the file stops growing there."""
        if not self.quota_bytes or self.used_bytes() <= self.quota_bytes:
            self._over_said = False
            return 0
        gone = 0
        while self.used_bytes() > 0.9 * self.quota_bytes:
            went = self._delete_oldest()
            if not went:
                break
            gone += went
        self.quota_shed += gone
        if not self._over_said:
            log.warning("journal %s over its quota of %d bytes ([journal] quota_mb): shed the "
                        "oldest %d frame results; exams are kept", self.path, self.quota_bytes,
                        gone)
            self._over_said = True
        return gone

    def add_exam(self, run_id: str | None, summary: dict, best_frames: dict,
                 first_row: int | None = None, last_row: int | None = None) -> bool:
        """Keep one finished exam: its summary body, its best frames and its first and last
        frames' journal rows. False when it could not be written (said in the log)."""
        protocol = summary.get("protocol") or {}
        values = (summary["exam_id"], run_id, str(protocol.get("name", "")),
                  summary["started_ts"], summary["ended_ts"], summary.get("ended_by", ""),
                  json.dumps(summary, separators=(",", ":")),
                  json.dumps(best_frames, separators=(",", ":")), first_row, last_row)
        return self._write("exam", lambda: self.db.execute(
            "INSERT OR REPLACE INTO exams (exam_id, run_id, protocol, started_ts, ended_ts,"
            " ended_by, summary, best_frames, first_row, last_row)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)", values)) is not None

    def keep_dates(self, exam_id: str, dates: dict | None,
                   entered_ts: float | None = None) -> bool:
        """The dates the midwife entered for an exam, running or ended ({"lmp", "today"}:
        ISO dates; None clears them), for its report and the district; committed at once,
        like a frame. `entered_ts`: when (now by default). False when the write failed
        (said in the log)."""
        text = json.dumps(dates, separators=(",", ":"))
        when = time.time() if entered_ts is None else float(entered_ts)
        return self._write("exam dates", lambda: self.db.execute(
            "INSERT INTO exam_dates (exam_id, dates, entered_ts, entry) VALUES (?,?,?,1) ON "
            "CONFLICT (exam_id) DO UPDATE SET dates = excluded.dates, entered_ts = "
            "excluded.entered_ts, entry = exam_dates.entry + 1",
            (exam_id, text, when))) is not None

    def exam_dates(self, exam_id: str) -> dict | None:
        """The dates kept for an exam (`keep_dates`), or None: none kept or cleared, or a
        row that is not a small JSON object (said in the log). The caller checks the dates."""
        return self.dates_entry(exam_id)[3]

    def dates_entry(self, exam_id: str) -> tuple[int, float | None, object, dict | None]:
        """The exam's dates row, read once: its last entry's number (0: none since schema
        7, or damage), when it was made (None: not a time the wire takes), what a
        correction last told the district (JSON text; None: none did), and the dates kept
        (as `exam_dates` gives them)."""
        try:
            row = self.db.execute(
                "SELECT entry, entered_ts, told, CASE WHEN length(CAST(dates AS BLOB)) <= ? "
                "THEN dates END FROM exam_dates WHERE exam_id=?",
                (MAX_DATES_BYTES, exam_id)).fetchone()
        except sqlite3.Error as exc:
            log.warning("journal %s: the dates of exam %s cannot be read (%s)", self.path,
                        exam_id, one_line(exc)[:120])
            return 0, None, None, None
        if row is None:
            return 0, None, None, None
        entry, entered, told, raw = row
        try:
            dates = _dates_json(raw)
        except (ValueError, RecursionError) as exc:
            log.warning("journal %s: the dates of exam %s cannot be read (%s); the exam is "
                        "sent without its age by dates", self.path, exam_id, one_line(exc)[:120])
            dates = None
        entry = _entry_number(entry)
        # on the wire it is a time within 1970-2100: anything else is damage, no entry
        entered = wall_ts_or_none(entered)
        return entry, entered, told, dates  # told_weeks reads told, damage included

    def dates_told(self, exam_id: str, weeks: float | None) -> bool:
        """Record what a queued correction tells the district of the exam's age by dates
        (JSON text, as `told_weeks` reads it back)."""
        return self._write("exam dates", lambda: self.db.execute(
            "UPDATE exam_dates SET told=? WHERE exam_id=?",
            (json.dumps(weeks), exam_id))) is not None

    def keep_withdrawal(self, exam_id: str, withdrawn: bool, reason: str,
                        entered_ts: float | None = None) -> bool:
        """The midwife withdrew an ended exam (`withdrawn`, with one of WITHDRAWAL_REASONS)
        or restored it; committed at once, like her dates, each entry numbered. Refused
        (False, one line in the log) for an exam the journal does not hold as ended, or a
        reason not on the list; False also when the write failed (said in the log)."""
        if reason not in WITHDRAWAL_REASONS:
            log.warning("journal %s: withdrawal of exam %s refused: reason %s is not one of "
                        "%s", self.path, exam_id, printable(repr(reason))[:40],
                        ", ".join(WITHDRAWAL_REASONS))
            return False
        when = time.time() if entered_ts is None else float(entered_ts)
        cursor = self._write("exam withdrawal", lambda: self.db.execute(
            "INSERT INTO exam_withdrawals (exam_id, withdrawn, reason, entered_ts, entry) "
            "SELECT ?, ?, ?, ?, 1 WHERE EXISTS (SELECT 1 FROM exams WHERE exam_id = ?) "
            "ON CONFLICT (exam_id) DO UPDATE SET withdrawn = excluded.withdrawn, reason = "
            "excluded.reason, entered_ts = excluded.entered_ts, entry = "
            "exam_withdrawals.entry + 1",
            (exam_id, int(bool(withdrawn)), reason, when, exam_id)))
        if cursor is None:
            return False
        if cursor.rowcount != 1:
            log.warning("journal %s: withdrawal of exam %s refused: no such ended exam in "
                        "the journal", self.path, printable(exam_id)[:64])
            return False
        return True

    def withdrawal(self, exam_id: str) -> Withdrawal | None:
        """The exam's latest withdrawal entry (`read_withdrawal`), or None: never withdrawn,
        or a row that cannot be read (said in the log)."""
        try:
            row = self.db.execute(
                "SELECT withdrawn, reason, entered_ts, entry, told FROM exam_withdrawals "
                "WHERE exam_id = ?", (exam_id,)).fetchone()
        except sqlite3.Error as exc:
            log.warning("journal %s: the withdrawal of exam %s cannot be read (%s)",
                        self.path, exam_id, one_line(exc)[:120])
            return None
        return None if row is None else read_withdrawal(row)

    def withdrawal_told(self, exam_id: str, entry: int) -> bool:
        """Record that the exam's withdrawal entry `entry` is queued for the district."""
        return self._write("exam withdrawal", lambda: self.db.execute(
            "UPDATE exam_withdrawals SET told = MAX(told, ?) WHERE exam_id = ?",
            (int(entry), exam_id))) is not None

    def withdrawn_exams(self, since_ts: float, limit: int = 10_000) -> list[str]:
        """The ended exams withdrawn or restored since `since_ts`, oldest entry first (at
        most `limit`, the newest): those whose message may be owed to the district."""
        rows = self.db.execute(
            "SELECT exam_id FROM (SELECT w.exam_id, w.entered_ts FROM exam_withdrawals w "
            "JOIN exams e ON e.exam_id = w.exam_id WHERE w.entered_ts >= ? ORDER BY "
            "w.entered_ts DESC LIMIT ?) ORDER BY entered_ts", (since_ts, int(limit))).fetchall()
        return [r[0] for r in rows if isinstance(r[0], str)]

    def ended_summary(self, exam_id: str) -> dict | None:
        """The summary an ended exam left with (None while it runs, or if unreadable)."""
        try:
            row = self.db.execute("SELECT summary FROM exams WHERE exam_id=?",
                                  (exam_id,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else _json_dict(row[0])

    def dated_exams(self, since_ts: float, limit: int = 10_000) -> list[str]:
        """The ended exams whose dates were entered or cleared since `since_ts`, oldest
        entry first (at most `limit`, the newest): those a correction may be owed."""
        rows = self.db.execute(
            "SELECT exam_id FROM (SELECT d.exam_id, d.entered_ts FROM exam_dates d JOIN exams e"
            " ON e.exam_id = d.exam_id WHERE d.entered_ts >= ? ORDER BY d.entered_ts DESC "
            "LIMIT ?) ORDER BY entered_ts", (since_ts, int(limit))).fetchall()
        return [r[0] for r in rows if isinstance(r[0], str)]

    # -- crash recovery -------------------------------------------------------------------
    def open_runs(self, exclude: str | None = None) -> list[tuple[str, dict]]:
        """Runs left open by a process that died: (run_id, models), oldest first."""
        rows = self.db.execute("SELECT run_id, models FROM runs WHERE ended_ts IS NULL AND "
                               "run_id IS NOT ? ORDER BY started_ts", (exclude,)).fetchall()
        return [(run_id, _json_dict(models) or {}) for run_id, models in rows]

    def run_exams(self, run_id: str) -> list[tuple[dict, int | None]]:
        """The exams a run finished and journaled: (summary, last journal row)."""
        rows = self.db.execute("SELECT summary, last_row, ended_ts FROM exams WHERE run_id=? "
                               "ORDER BY started_ts", (run_id,)).fetchall()
        out = []
        for summary, last_row, ended_ts in rows:
            if last_row is None:  # written before schema 4: its frames end at its end time
                last_row = self.db.execute(
                    "SELECT MAX(id) FROM results WHERE run_id=? AND ts <= ?",
                    (run_id, ended_ts)).fetchone()[0]
            parsed = _json_dict(summary)
            if parsed is not None:  # damage: skipped, as the other readers skip it
                out.append((parsed, last_row))
        return out

    def exam_ids(self, since_ts: float, limit: int = 100_000) -> list[str]:
        """The ids of the exams started since `since_ts`, oldest first, at most `limit` (the
        newest of them): what an outbox lost can be queued again from here, reading only
        the summaries it lost (`ended_summary`)."""
        rows = self.db.execute("SELECT exam_id FROM (SELECT exam_id, started_ts FROM exams "
                               "WHERE started_ts >= ? ORDER BY started_ts DESC LIMIT ?) "
                               "ORDER BY started_ts", (since_ts, int(limit))).fetchall()
        return [r[0] for r in rows if isinstance(r[0], str)]

    def replay(self, run_id: str, after_row: int = 0) -> Iterator[tuple[int, dict]]:
        """A run's journaled results after `after_row`, in order, as (row id, record). The
        record's time is its row's `ts`, which a step of the clock moves (`redate`)."""
        last = int(after_row or 0)
        while True:
            rows = self.db.execute("SELECT id, record, ts FROM results WHERE run_id=? AND "
                                   "id > ? ORDER BY id LIMIT 500", (run_id, last)).fetchall()
            if not rows:
                return
            for row_id, record, ts in rows:
                last = row_id
                parsed = _json_dict(record)
                if parsed is not None:
                    if finite_number(ts):
                        parsed["ts"] = ts
                    yield row_id, parsed

    def exams(self) -> list[dict]:
        rows = self.db.execute("SELECT summary, best_frames FROM exams ORDER BY started_ts")
        return [{**summary, "best_frames": _json_dict(b) or {}} for s, b in rows
                if (summary := _json_dict(s)) is not None]

    def end_run(self, run_id: str, ended_ts: float | None = None) -> bool:
        """Close a run; False when that could not be written (it stays open, and the next
        start closes it)."""
        self._runs.pop(run_id, None)
        return self._write("end of run", lambda: self.db.execute(
            "UPDATE runs SET ended_ts=?, frames=(SELECT COUNT(*) FROM results WHERE run_id=?),"
            " failed=(SELECT COUNT(*) FROM results WHERE run_id=? AND error IS NOT NULL)"
            " WHERE run_id=?", (time.time() if ended_ts is None else ended_ts, run_id, run_id,
                                run_id))) is not None

    def redate(self, moved_s: float, boot_ts: float, before_ts: float,
               exam_ids: Iterable[str] = ()) -> int | None:
        """The box's clock stepped forward `moved_s` (edge/loop.py follow_clock_steps): what
        it stamped in this boot before the step (from `boot_ts` to `before_ts`, by the
        clock that was behind) moves as much, exactly, since the clock ran on unbroken:
        runs (so a prune does not take a week's frames for two months old), exams (the
        page's list and reports), frames (an exam a kill cut off is rebuilt from them) and
        when dates were entered. So do the exams `exam_ids` whose queued summaries the
        outbox dated again, from earlier boots too, so the district and the page agree.
        Returns how many exams moved; None when that could not be written (said in the
        log). A damaged summary is left as it is (its report says it cannot be read)."""
        ids = list(dict.fromkeys(exam_ids))
        span = (boot_ts, before_ts)

        def redate() -> int:
            changed = 0
            self.db.execute("BEGIN")
            try:
                runs = [r for r, in self.db.execute(
                    "SELECT run_id FROM runs WHERE started_ts >= ? AND started_ts < ?", span)]
                for start in range(0, len(runs), REDATE_BATCH):
                    part = runs[start:start + REDATE_BATCH]
                    self.db.execute(f"UPDATE results SET ts = ts + ? WHERE run_id IN "
                                    f"({_marks(part)}) AND ts < ?", (moved_s, *part, before_ts))
                self.db.execute("UPDATE runs SET started_ts = started_ts + ?, ended_ts = "
                                "CASE WHEN ended_ts < ? THEN ended_ts + ? ELSE ended_ts END "
                                "WHERE started_ts >= ? AND started_ts < ?",
                                (moved_s, before_ts, moved_s, *span))
                for table in ("exam_dates", "exam_withdrawals"):
                    self.db.execute(f"UPDATE {table} SET entered_ts = entered_ts + ? "
                                    "WHERE entered_ts >= ? AND entered_ts < ?",
                                    (moved_s, *span))
                found = [r for r, in self.db.execute(
                    "SELECT exam_id FROM exams WHERE started_ts >= ? AND started_ts < ?", span)]
                chosen = list(dict.fromkeys([*found, *ids]))
                for start in range(0, len(chosen), REDATE_BATCH):
                    part = chosen[start:start + REDATE_BATCH]
                    for exam_id, raw in self.db.execute(
                            f"SELECT exam_id, summary FROM exams WHERE exam_id IN "
                            f"({_marks(part)})", part).fetchall():
                        summary = _json_dict(raw)
                        if summary is None:
                            continue
                        for key in ("started_ts", "ended_ts"):
                            if finite_number(summary.get(key)):
                                summary[key] = round(summary[key] + moved_s, 3)
                        # the columns follow the summary (what the page reads), never
                        # arithmetic on a damaged column's text
                        self.db.execute(
                            "UPDATE exams SET started_ts = COALESCE(?, started_ts), ended_ts "
                            "= COALESCE(?, ended_ts), summary = ? WHERE exam_id = ?",
                            (wall_ts_or_none(summary.get("started_ts")),
                             wall_ts_or_none(summary.get("ended_ts")),
                             json.dumps(summary, separators=(",", ":")), exam_id))
                        changed += 1
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            return changed

        return self._write("times dated again after a clock step", redate)

    def prune(self, keep_days: float) -> int:
        """Forget runs that ended more than `keep_days` ago; returns how many frames went.

        The box has a small disk and the district keeps the summaries; frame-level
        history is for local review and debugging, so it ages out.
        """
        cutoff = time.time() - keep_days * 86400.0
        old = "SELECT run_id FROM runs WHERE ended_ts IS NOT NULL AND ended_ts < ?"
        self.db.execute("BEGIN")
        try:
            gone = self.db.execute(f"DELETE FROM results WHERE run_id IN ({old})",
                                   (cutoff,)).rowcount
            self.db.execute("DELETE FROM runs WHERE ended_ts IS NOT NULL AND ended_ts < ?",
                            (cutoff,))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a later write must not run inside it
                self.db.execute("ROLLBACK")
            raise
        return gone

    def results(self, run_id: str | None = None) -> list[dict]:
        query = "SELECT record FROM results"
        args: tuple = ()
        if run_id is not None:
            query += " WHERE run_id=?"
            args = (run_id,)
        return [record for (raw,) in self.db.execute(query + " ORDER BY id", args)
                if (record := _json_dict(raw)) is not None]

    def runs(self) -> list[dict]:
        cursor = self.db.execute("SELECT * FROM runs ORDER BY started_ts")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def close(self) -> None:
        self.db.close()
