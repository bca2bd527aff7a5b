"""The state directory: checked before use, held by one run at a time, and what to do with
a SQLite file that is corrupt or cannot grow.

`sonoedge run` keeps its journal, outbox and uplink status in one folder. A folder that is
a file, cannot be created or cannot be written is one clear error (`StateError`) before
anything else starts. A running loop holds an exclusive `flock` on `run.lock` in it: the
kernel drops the lock when the process dies, however it dies, so a second run on the same
folder is refused, crash recovery never touches the run of a live process, and `sonoedge
status` can tell a live uplink from the stale state of a dead one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from wire.shown import shown_path

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"

# SQLite's primary result codes (sqlite3.h) for the failures the device handles itself.
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_NOTADB = 10, 11, 13, 26


class StateError(ValueError):
    """The state directory or a file in it cannot be used; one line naming it."""


def sqlite_code(exc: BaseException) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_corrupt(exc: BaseException) -> bool:
    """The file is not a (sound) SQLite database: move it aside, never retry it."""
    text = str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and (
        sqlite_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB)
        or "malformed" in text or "not a database" in text)


def is_full(exc: BaseException) -> bool:
    """The disk (or the file's size limit) is full: free space, then try again."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        sqlite_code(exc) == SQLITE_FULL or "disk is full" in str(exc))


def no_room(exc: BaseException, folder: Path | str) -> bool:
    """Opening a database failed for want of space: SQLite says "full", or (when the shared
    memory file of its write-ahead log cannot grow) "disk I/O error" on a disk that is full."""
    if is_full(exc):
        return True
    if not (isinstance(exc, sqlite3.DatabaseError) and sqlite_code(exc) == SQLITE_IOERR):
        return False
    try:
        return shutil.disk_usage(folder).free < (256 << 10)
    except OSError:
        return False


def open_making_room(open_db: Callable[[], None], reserve: Reserve) -> None:
    """`open_db()`; on a disk already full at start (a box that filled up and rebooted),
    give back the state dir's reserve and try once more, rather than never start again.
    The journal and the outbox open through here."""
    try:
        open_db()
    except sqlite3.DatabaseError as exc:
        if not (no_room(exc, reserve.path.parent) and reserve.release()):
            raise
        open_db()


def prepare_state_dir(path: Path | str) -> Path:
    """The state directory, created if missing and proven writable; `StateError` if not."""
    if not str(path):  # Path("") is the current folder: the state would land wherever
        raise StateError("state dir is empty (--state-dir or [device] state_dir)")
    path = Path(path)
    shown = shown_path(path)
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as exc:  # a name longer than the file system takes, and the like
        raise StateError(f"state dir {shown}: cannot use it ({exc.strerror or exc})") from None
    if is_file:
        raise StateError(f"state dir {shown}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(f"state dir {shown}: cannot create it ({exc.strerror or exc})") \
            from None
    probe = path / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
    except OSError as exc:
        if exc.errno not in (28,):  # ENOSPC: writable, only full (the loop copes with that)
            raise StateError(f"state dir {shown}: not writable ({exc.strerror or exc})") \
                from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return path


class StateLock:
    """An exclusive `flock` on `<state dir>/run.lock`, held while a run lives."""

    def __init__(self, state_dir: Path | str):
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(self.path.parent)
            os.close(fd)
            who = f" (pid {holder['pid']})" if holder else ""
            raise StateError(f"state dir {self.path.parent} is in use by another sonoedge "
                             f"run{who}") from None
        info = json.dumps({"pid": os.getpid(), "started_ts": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError:
            pass  # a full disk: the lock itself holds; the pid is only for messages
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    def __del__(self) -> None:  # a run that raised before its `finally` still lets go
        self.release()

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def lock_holder(state_dir: Path | str) -> dict | None:
    """The live run holding the state dir (`{"pid": ...}`), or None when no process does.

    Asks the kernel, not a file's contents: a lock held by a process that was killed is
    gone with it."""
    path = Path(state_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 256, 0) or b"{}")
            except ValueError:
                info = {}
            return info if isinstance(info, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class Reserve:
    """A file of `size` bytes kept in the state dir as room to give back on a full disk.

    When the disk fills, SQLite cannot even delete old rows: a delete writes to the
    write-ahead log first. Releasing the reserve gives the journal the room to shed its
    oldest frames and the outbox the room for the exams; it is made again once there is
    space to spare."""

    FILE = "reserve.bin"

    def __init__(self, state_dir: Path | str, size: int = 1 << 20):
        self.path = Path(state_dir) / self.FILE
        self.size = int(size)

    def ensure(self) -> bool:
        """Make the reserve if it is missing and the disk has 4 times its size free."""
        if self.path.exists():
            return True
        try:
            if shutil.disk_usage(self.path.parent).free < 4 * self.size:
                return False
            tmp = self.path.with_name(self.FILE + ".tmp")
            with open(tmp, "wb") as handle:
                handle.write(b"\0" * self.size)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            return True
        except OSError:
            return False

    def release(self) -> bool:
        """Give the room back; True when there was a reserve to give."""
        try:
            self.path.unlink()
        except OSError:
            return False
        log.warning("disk full: released the %d KB reserve in %s", self.size // 1024,
                    self.path.parent)
        return True


def move_aside(path: Path) -> Path:
    """Rename a corrupt database (with its -wal and -shm) out of the way; returns where."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, dest)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            try:
                os.replace(side, dest.with_name(dest.name + suffix))
            except OSError:
                pass
    return dest


def fsync_dir(path: Path) -> None:
    """A folder's entries made durable (a rename in it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: dict) -> None:
    """Replace a small JSON file whole: write, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
