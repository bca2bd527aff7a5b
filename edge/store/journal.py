"""The local journal: every scored frame, durable before the next one is read.

SQLite in WAL mode with `synchronous=NORMAL`: each frame is its own committed transaction,
so killing the process (SIGKILL, a crash) loses nothing that was journaled, and the
database is never corrupted. A power cut may lose the last commits not yet checkpointed
(about a second of frame results) but never an older one; exam summaries, which matter
more, go through the outbox with its own, stricter policy. The schema version lives in
`PRAGMA user_version`; upgrades migrate forward and never wipe.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

from edge.result import FrameResult

SCHEMA_VERSION = 3
JOURNAL_FILE = "journal.sqlite"

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
}


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: journal cannot be opened ({exc})") from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer sonoedge (schema {version})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            self.db.executescript(f"BEGIN; {_MIGRATIONS[step]} PRAGMA user_version={step}; COMMIT;")

    def start_run(self, source: str, models: dict[str, str]) -> str:
        run_id = str(uuid.uuid4())
        self.db.execute("INSERT INTO runs (run_id, source, started_ts, models) VALUES (?,?,?,?)",
                        (run_id, source, time.time(), json.dumps(models, sort_keys=True)))
        return run_id

    def append(self, run_id: str, result: FrameResult) -> None:
        record = result.to_dict()
        biometry = result.biometry or {}
        quality = result.quality or {}
        self.db.execute(
            "INSERT INTO results (run_id, source, frame, plane, plane_confidence, latency_ms,"
            " ts, mono_s, error, record, biometry_status, hc_mm, quality)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, result.source, result.frame, result.plane, result.plane_confidence,
             result.latency_ms, result.ts, result.mono_s, result.error,
             json.dumps(record, separators=(",", ":")), biometry.get("status"),
             biometry.get("hc_mm"), quality.get("score")))

    def add_exam(self, run_id: str | None, summary: dict, best_frames: dict) -> None:
        """Keep one finished exam: its summary body and its best frames."""
        protocol = summary.get("protocol") or {}
        self.db.execute(
            "INSERT OR REPLACE INTO exams (exam_id, run_id, protocol, started_ts, ended_ts,"
            " ended_by, summary, best_frames) VALUES (?,?,?,?,?,?,?,?)",
            (summary["exam_id"], run_id, str(protocol.get("name", "")),
             summary["started_ts"], summary["ended_ts"], summary.get("ended_by", ""),
             json.dumps(summary, separators=(",", ":")),
             json.dumps(best_frames, separators=(",", ":"))))

    def exams(self) -> list[dict]:
        rows = self.db.execute("SELECT summary, best_frames FROM exams ORDER BY started_ts")
        return [{**json.loads(s), "best_frames": json.loads(b)} for s, b in rows]

    def end_run(self, run_id: str) -> None:
        self.db.execute(
            "UPDATE runs SET ended_ts=?, frames=(SELECT COUNT(*) FROM results WHERE run_id=?),"
            " failed=(SELECT COUNT(*) FROM results WHERE run_id=? AND error IS NOT NULL)"
            " WHERE run_id=?", (time.time(), run_id, run_id, run_id))

    def prune(self, keep_days: float) -> int:
        """Forget runs that ended more than `keep_days` ago; returns how many frames went.

        The box has a small disk and the district keeps the summaries; frame-level
        history is for local review and debugging, so it ages out.
        """
        cutoff = time.time() - keep_days * 86400.0
        old = "SELECT run_id FROM runs WHERE ended_ts IS NOT NULL AND ended_ts < ?"
        self.db.execute("BEGIN")
        gone = self.db.execute(f"DELETE FROM results WHERE run_id IN ({old})",
                               (cutoff,)).rowcount
        self.db.execute("DELETE FROM runs WHERE ended_ts IS NOT NULL AND ended_ts < ?",
                        (cutoff,))
        self.db.execute("COMMIT")
        return gone

    def results(self, run_id: str | None = None) -> list[dict]:
        query = "SELECT record FROM results"
        args: tuple = ()
        if run_id is not None:
            query += " WHERE run_id=?"
            args = (run_id,)
        return [json.loads(row[0]) for row in self.db.execute(query + " ORDER BY id", args)]

    def runs(self) -> list[dict]:
        cursor = self.db.execute("SELECT * FROM runs ORDER BY started_ts")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def close(self) -> None:
        self.db.close()
