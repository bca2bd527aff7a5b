"""Reading what is left of a corrupt SQLite file: one table's rows, around its damage.

The journal and the outbox both salvage a file that went bad into a new one
(`journal._salvage`, `outbox._read_what_remains`). A damaged page fails any read that
reaches it and everything the same query would have read after it, so a plain scan stops
at the first bad page and a scan from each end loses whatever lies between two of them.
`DamagedTableScan` reads by rowid ranges instead: one bad page costs the rows on it, not the
table. It is bounded by a deadline, by SCAN_PROBES reads per damaged range and, through the
caller's connection, by SQLite's length limit on a row.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

SCAN_CHUNK = 500  # rows read by one query
SCAN_PROBES = 128  # reads spent finding where one damaged range ends (2 x 64: any rowid)
_TOP = (1 << 63) - 1  # the largest rowid


class DamagedTableScan:
    """The rows of one table of a corrupt SQLite file, newest first, read around its damage.

    A damaged page fails any read that reaches it, and everything the same query would
    have read after it. So rows are read in chunks downward from the last (`rowid <= pos
    ORDER BY rowid DESC LIMIT n`); where a chunk fails, single-row reads find the highest
    rowid below the damage from which reading works again, galloping down and then
    halving the gap, at most SCAN_PROBES reads, and the chunks go on from there. The
    first single read is at the failure itself: Python's cursor steps one row ahead, so
    the row just before a damaged page was read but never handed over.

    `lost` counts the rowids the unreadable ranges span, within the table's first and last
    rowid where those can be read: the rows lost there, or more where rows had been deleted
    (the oldest frames shed). A range reaching an end that cannot be read counts one."""

    def __init__(self, db: sqlite3.Connection, table: str, columns: list[str],
                 deadline: float):
        self.db, self.deadline = db, deadline
        names = ", ".join(f'"{c}"' for c in columns)
        self._sql = (f'SELECT rowid, {names} FROM "{table}" WHERE rowid <= ? '
                     "ORDER BY rowid DESC LIMIT ?")
        self.lo = self._bound(f'SELECT MIN(rowid) FROM "{table}"')
        self.hi = self._bound(f'SELECT MAX(rowid) FROM "{table}"')
        if self.hi is None:  # an AUTOINCREMENT table has no rowid above its sequence
            self.hi = self._bound("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        self.lost = 0
        self.timed_out = False

    def _bound(self, sql: str, args: tuple = ()) -> int | None:
        try:
            row = self.db.execute(sql, args).fetchone()
        except sqlite3.Error:
            return None
        value = row[0] if row else None
        return value if isinstance(value, int) else None

    def rows(self) -> Iterator[tuple]:
        pos = _TOP if self.hi is None else self.hi
        while pos >= 0:
            if time.monotonic() > self.deadline:
                self.timed_out = True
                return
            read = 0
            try:
                for row in self.db.execute(self._sql, (pos, SCAN_CHUNK)):
                    if not isinstance(row[0], int) or row[0] > pos:
                        raise sqlite3.DatabaseError("rows out of order")
                    pos, read = row[0] - 1, read + 1
                    yield row
            except sqlite3.Error:
                found = self._past_damage(pos)
                if self.timed_out:
                    return
                below, row = found if found is not None else (None, None)
                self.lost += self._span(below, pos, row is None)
                if row is None:
                    return  # nothing readable below the damage
                pos = row[0] - 1
                yield row
                continue
            if read < SCAN_CHUNK:
                return  # the table's first row

    def _read_one(self, at: int) -> tuple[bool, tuple | None]:
        """(whether a read at `at` works, the row at or below it: None for none)."""
        if time.monotonic() > self.deadline:
            self.timed_out = True
            return False, None
        try:
            rows = self.db.execute(self._sql, (at, 1)).fetchall()
        except sqlite3.Error:
            return False, None
        if rows and (not isinstance(rows[0][0], int) or rows[0][0] > at):
            return False, None
        return True, rows[0] if rows else None

    def _past_damage(self, bad: int) -> tuple[int, tuple | None] | None:
        """Below a read that failed at `bad`: the highest rowid it finds from which a read
        works, with the row read there; None if none does within SCAN_PROBES reads."""
        ok, row = self._read_one(bad)
        if ok:
            return bad, row
        step, good = 1, None
        for _ in range(SCAN_PROBES // 2):
            at = max(bad - step, 0)
            ok, row = self._read_one(at)
            if ok:
                good = at
                break
            if at == 0 or self.timed_out:
                return None
            bad, step = at, step * 2
        if good is None:
            return None
        for _ in range(SCAN_PROBES // 2):
            if bad - good <= 1 or self.timed_out:
                break
            mid = (good + bad) // 2
            ok, found = self._read_one(mid)
            if ok:
                good, row = mid, found
            else:
                bad = mid
        return good, row

    def _span(self, below: int | None, top: int, to_bottom: bool) -> int:
        """Rowids in (below, top] that may have held rows: the unreadable range."""
        if top == _TOP and self.hi is None:
            return 1  # the table's last page: where it ended is not known
        if self.hi is not None:
            top = min(top, self.hi)
        if to_bottom or below is None:
            if self.lo is None:
                return 1  # the table's first page: where it began is not known
            below = self.lo - 1 if below is None else below
        if self.lo is not None:
            below = max(below, self.lo - 1)
        return max(0, top - below)
