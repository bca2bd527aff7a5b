"""Earlier exams on the midwife's page, and a printable report of any exam the box keeps.

An exam ends after a gap in the ultrasound and the next begins as soon as the probe shows
content, so the page's exam card soon shows the next woman. Every finished exam is in the
journal (`edge/store/journal.py`: table `exams`, its summary and its best frames, with the
thumbnails' paths), and the thumbnails stay under `<state_dir>/thumbs/` within their quota
(`edge/exam/thumbs.py`). From there the page lists the recent exams (`GET /api/exams`), shows
the thumbnails of any of them (`GET /api/thumb/<exam>/<file>.jpg`) and prints a report of
one (`GET /report/<exam>`).

The web thread never touches the loop's journal connection. It opens its own, read-only
(`mode=ro`), for each request, on a thread of its own (one: requests queue, never pile up
connections), with a busy timeout, a bounded number of rows and bounded JSON per row
(`wire.schema.loads_bounded`): the event loop never waits on the disk, and the loop's
writes never wait on the page (WAL readers do not block the writer). A journal that is
missing, locked or corrupt gives an empty list and one log line (once per cause, said
again only after it was readable in between), never a 500.

An exam is presented as `/api/state` presents the exam on screen (`edge.web.live.
exam_snapshot`: its checklist of the protocol's slots with each one's best frame, captured
and required, the biometry), plus what the journal adds: when it ended and how, the
deficiencies seen most often, the model versions, and the flags of `edge.exam.screening`:
the cephalic index (from the exam's BPD and OFD) and HC against the dates, where the
midwife entered the last period for that exam on the page (the journal keeps it under the
exam's id, table `exam_dates`; the date stays on the box, and the district gets the age
by dates in weeks only: with the exam's summary where they were entered before it ended,
else by a correction, `loop.tell_district_dates`). An exam the midwife withdrew (table
`exam_withdrawals`: started by mistake, a test scan, ...) stays listed, marked so with its
reason, and its report says so at the top; the district counts it in no figure.

The journal keeps a slot's best frame only where it captured the slot; for a slot it
missed, the best quality any frame of its planes reached comes from the summary's per-plane
totals, with no image; whether it was found but never good enough or never found from the
summary's `protocol.missing_seen` (an exam journaled before it says neither), and the
advice the card gave a slot found from the journal's `MISSED_ADVICE` entry.

Beside the best frames the journal keeps where the exam's head was measured (`measured_head`,
`ExamSession.measured_head`): the frame whose HC is the exam's, its figures, and its
thumbnail with the fitted ellipse drawn on it, which the report shows beside the figures.
An exam journaled before has none, and the report says nothing more. Beside them too, under
`SET_UP`, the `[source] stretch` that undoes a stretched picture, as its refused heads named
it: the card and the report say it where they say why no head was measured.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import logging
import math
import re
import sqlite3
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from edge.exam.protocol import Protocol, ProtocolError, load_protocols
from edge.exam.screening import (
    MAX_LMP_DAYS,
    cephalic_index,
    dating_tolerance_days,
    hc_against_dates,
    hc_frames,
    read_dates,
    same_weeks,
)
from edge.exam.thumbs import HEAD_MEASURED, MISSED_ADVICE, SET_UP, THUMBS_DIR
from edge.models.biometry import (
    HEAD_SCALES,
    HEAD_SHAPES,
    SCREEN_STRETCHED,
    SET_UP_STATUSES,
    SHAPE_UNCHECKED,
)
from edge.models.fan import frame_read_back, setting_read_back
from edge.store.journal import (
    JOURNAL_FILE,
    MAX_DATES_BYTES,
    Withdrawal,
    read_withdrawal,
    told_weeks,
)
from edge.web import i18n
from wire.dating import HADLOCK_1984_WEEKS
from wire.schema import (
    PLANES,
    PayloadError,
    finite_number,
    loads_bounded,
    number_or_none,
    sqlite_uri,
    wall_ts_or_none,
)

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 20
MAX_LIMIT = 50
BUSY_TIMEOUT_S = 1.0  # a read waits this long on a locked journal, then the list is empty
MAX_JSON_BYTES = 64 * 1024  # per summary or best-frames column (a real exam's: about 1 kB)
MAX_TEXT = 64  # a name, id or version read back from the journal, shown at most this long
# Exam ids: the loop's are UUIDs (uuid4, or uuid5 from the run and the first frame's row);
# a 16-hex id is the tally's own. Nothing else is looked up, so no id reaches a path.
EXAM_ID_RE = re.compile(r"^[0-9a-f](?:[0-9a-f-]{14,34})[0-9a-f]$")
THUMB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\.jpg$")  # thumbs.plane_slug + .jpg
ENDED = ("gap", "command", "source_end", "recovered", "stopped")
# A figure beyond these is no figure (`_number`): a head of 1e5 mm, a quality of 1e-6
MIN_FIGURE, MAX_FIGURE = 1e-6, 1e5
BIOMETRY_KEYS = ("hc_mm", "bpd_mm", "ofd_mm", "ga_weeks", "ga_low_weeks", "ga_high_weeks",
                 "hc_p10_mm", "hc_p90_mm")


# an exam's withdrawal row as `read_withdrawal` reads it (all NULL: never withdrawn)
_WITHDRAWAL_COLUMNS = "w.withdrawn, w.reason, w.entered_ts, w.entry, w.told"


class BadQuery(ValueError):
    """A query value the page never sends: one line, answered 400."""


def parse_limit(given: list[str]) -> int:
    """`?limit=` (every value given): DEFAULT_LIMIT when absent, else once, 1-MAX_LIMIT in
    plain digits."""
    if not given:
        return DEFAULT_LIMIT
    if len(given) > 1:
        raise BadQuery("limit is given more than once")
    raw = given[0]
    if not (0 < len(raw) <= 3 and raw.isascii() and raw.isdigit()) \
            or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def report_lang(raw: str | None, accept: str | None) -> str:
    """`?lang=` (a language code; one the box has no catalog for is shown in English), or
    the browser's first language when it is one the box has, or English."""
    if raw is not None:
        if len(raw) > 12 or not i18n.LANG_RE.match(raw):
            raise BadQuery("lang must be a language code such as en or fr")
        return raw if raw in i18n.languages() else i18n.DEFAULT
    first = (accept or "")[:64].split(",", 1)[0].split(";", 1)[0].strip()[:2].lower()
    return first if first in i18n.languages() else i18n.DEFAULT


def _text(value: object, limit: int = MAX_TEXT) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _number(value: object) -> float | None:
    """A figure read back from the journal (mm, weeks, seconds, a quality), or None. The
    device writes them in range; a damaged row may hold any finite number, and 1e300 (or
    an OFD of 1e-300) overflowed the list's and the report's arithmetic."""
    number = number_or_none(value)
    if number is None or number != 0.0 and not MIN_FIGURE <= abs(number) <= MAX_FIGURE:
        return None
    return number


def _count(value: object) -> int:
    return int(value) if finite_number(value) and 0 <= value < 1e9 else 0


def read_protocols(protocols_file: str = "") -> dict[str, Protocol]:
    """The device's protocols (`[exam] protocols_file`, or the shipped file), as the loop
    reads them; a file that cannot be read (checked at every start) lists no slots."""
    try:
        return load_protocols(protocols_file or None)
    except ProtocolError as exc:
        log.warning("web: earlier exams: %s", exc)
        return {}


def protocol_titles(protocols: dict[str, Protocol], current: dict | None = None
                    ) -> dict[str, str]:
    """Each protocol's title by name, and the running protocol's."""
    titles = {name: p.title for name, p in protocols.items()}
    if current and isinstance(current.get("name"), str) and isinstance(current.get("title"),
                                                                        str):
        titles[current["name"]] = current["title"]
    return titles


# -- presentation ---------------------------------------------------------------------------
def _best(plane: str, entry: dict) -> dict:
    """A best frame as the state's checklist gives it (its source file name left out: a
    clinic's file names may carry the woman's)."""
    out: dict = {"plane": plane, "frame": _count(entry.get("frame")),
                 "quality": _number(entry.get("quality")),
                 "confidence": _number(entry.get("confidence"))}
    thumb = entry.get("thumbnail")
    if isinstance(thumb, str) and len(thumb) <= 200:
        out["thumbnail"] = thumb
    if _number(entry.get("hc_mm")) is not None:
        out["hc_mm"] = float(entry["hc_mm"])
    return out


def _measured_head(entry: object) -> dict | None:
    """Where the exam's head was measured, as the journal keeps it beside the best frames
    (`ExamSession.measured_head`): its plane, frame number, HC, BPD and OFD, of how many
    best heads it is the median, its thumbnail's path. None for an exam journaled without
    it, or an entry with no HC to show (a damaged row)."""
    if not isinstance(entry, dict):
        return None
    hc = _number(entry.get("hc_mm"))
    if hc is None or hc <= 0:
        return None
    frame = entry.get("frame")
    out: dict = {"plane": _text(entry.get("plane"), 32),
                 "frame": frame if type(frame) is int and 0 <= frame < 10**9 else None,
                 "hc_mm": hc, "of": _count(entry.get("of"))}
    for key in ("bpd_mm", "ofd_mm"):
        value = _number(entry.get(key))
        out[key] = value if value is not None and value > 0 else None
    thumb = entry.get("thumbnail")
    if isinstance(thumb, str) and len(thumb) <= 200:
        out["thumbnail"] = thumb
    return out


def _live_rank(entry: dict) -> tuple[float, float, float]:
    """A journaled best frame's place as the live exam ranked it (`BestFrame.rank`: the
    quality the learned head's faults discount, then the plain quality, the confidence);
    an exam journaled before the discount was kept ranks by its plain quality."""
    quality = _number(entry.get("quality"))
    quality = -1.0 if quality is None else quality
    ranked = _number(entry.get("ranked"))
    return (quality if ranked is None else ranked, quality,
            _number(entry.get("confidence")) or 0.0)


def _seen_quality(planes: dict, accepts: tuple[str, ...] | list[str]) -> float | None:
    """The best quality any frame of these planes reached (the summary's per-plane totals:
    [frames, best confidence, best quality])."""
    found = [float(row[2]) for p in accepts if isinstance(row := planes.get(p), list)
             and len(row) > 2 and _number(row[2]) is not None]
    return max(found) if found else None


def checklist(summary: dict, best_frames: dict, protocol: Protocol | None) -> list[dict]:
    """The exam's slots in the protocol's order, each captured or not with its best frame
    (a captured slot's, from the journal's best frames; a missed slot's best quality only).
    Without the protocol (or one that does not fit the summary: an exam journaled under a
    protocols file since changed), the captured planes and then the missed slots, by name."""
    proto = summary.get("protocol") if isinstance(summary.get("protocol"), dict) else {}
    missing = [m for m in proto.get("missing") or [] if isinstance(m, str)][:len(PLANES)]
    # the missed slots found but never good enough; None: the summary does not say (an
    # exam journaled before it), and its missed rows say neither
    seen = proto.get("missing_seen")
    seen = {m for m in seen if isinstance(m, str)} if isinstance(seen, list) else None
    planes = summary.get("planes") if isinstance(summary.get("planes"), dict) else {}
    bests = {p: e for p, e in best_frames.items() if p in PLANES and isinstance(e, dict)}
    rows: list[dict] = []
    fits = protocol is not None and len(protocol.slots) == _count(proto.get("required")) \
        and set(missing) <= {s.name for s in protocol.slots}
    if fits:
        for slot in protocol.slots:
            row: dict = {"plane": slot.name, "captured": slot.name not in missing}
            if not row["captured"] and seen is not None:
                row["seen"] = slot.name in seen
            if len(slot.accepts) > 1:
                row["accepts"] = list(slot.accepts)
            found = [(p, bests[p]) for p in slot.accepts if p in bests]
            if row["captured"] and found:
                plane, entry = max(found, key=lambda pe: _live_rank(pe[1]))
                row["best"] = _best(plane, entry)
            elif (q := _seen_quality(planes, slot.accepts)) is not None:
                row["best"] = {"plane": slot.accepts[0], "quality": q}
            if row.get("seen") and (said := _advice(best_frames, slot.name)) is not None:
                row["best"] = {"plane": slot.accepts[0], "quality": None,
                               **row.get("best", {}), "advice": said}
            rows.append(row)
        return rows
    for plane in PLANES:
        if plane in bests:
            rows.append({"plane": plane, "captured": True, "best": _best(plane, bests[plane])})
    for name in missing:
        row = {"plane": name[:MAX_TEXT], "captured": False}
        if seen is not None:
            row["seen"] = name in seen
        if (q := _seen_quality(planes, [name])) is not None:
            row["best"] = {"plane": name, "quality": q}
        rows.append(row)
    return rows


def _advice(best_frames: dict, slot: str) -> dict | None:
    """What the card advised on a slot found but never good enough, as the journal keeps
    it (`ExamSession.kept_frames`, `MISSED_ADVICE`): {criterion, message}, or None."""
    kept = best_frames.get(MISSED_ADVICE)
    said = kept.get(slot) if isinstance(kept, dict) else None
    if not isinstance(said, dict) or not all(isinstance(said.get(k), str)
                                             for k in ("criterion", "message")):
        return None
    return {"criterion": said["criterion"][:40], "message": said["message"][:200]}


def present(summary: dict, best_frames: dict, protocols: dict[str, Protocol],
            titles: dict[str, str], dates: dict | None = None,
            told: str | None = None, withdrawal: Withdrawal | None = None,
            head_planes: object = ()) -> dict:
    """One journaled exam as the page shows an exam (see the module's docstring).
    `head_planes`: the planes the box measures heads on (`LiveView.protocol`'s), which mark
    the checklist's head slots (`head`), as the page marks them (app.js `headSlot`)."""
    proto = summary.get("protocol") if isinstance(summary.get("protocol"), dict) else {}
    name = _text(proto.get("name"))
    rows = checklist(summary, best_frames, protocols.get(name))
    heads = {p for p in head_planes if isinstance(p, str)} \
        if isinstance(head_planes, list | tuple) else set()
    for row in rows:
        if heads & set(row.get("accepts") or [row["plane"]]):
            row["head"] = True
    bio_in = summary.get("biometry") if isinstance(summary.get("biometry"), dict) else None
    bio = None
    if bio_in is not None:
        bio = {k: _number(bio_in.get(k)) for k in BIOMETRY_KEYS}
        bio["measured"] = _count(bio_in.get("measured"))
        bio["best_frames"] = _count(bio_in.get("best_frames"))
        declined = bio_in.get("declined") if isinstance(bio_in.get("declined"), dict) else {}
        bio["declined"] = {_text(k, 24): _count(v) for k, v in list(declined.items())[:8]}
        if bio_in.get("scale") in HEAD_SCALES:
            bio["scale"] = bio_in["scale"]
        if bio_in.get("shape") in HEAD_SHAPES:
            bio["shape"] = bio_in["shape"]
        # the setting its heads refused for a stretched picture named, and the grabber's
        # frame size it is for, kept beside the best frames (`ExamSession.kept_frames`):
        # as the card's exam has them
        set_up = best_frames.get(SET_UP)
        setting = setting_read_back(set_up.get("stretch_setting")) \
            if isinstance(set_up, dict) else None
        if setting is not None:
            bio["stretch_setting"] = setting
            frame = frame_read_back(set_up.get("stretch_frame"))
            if frame is not None:
                bio["stretch_frame"] = frame
    models = summary.get("models") if isinstance(summary.get("models"), dict) else {}
    ended_by = _text(summary.get("ended_by"))
    kept_dates = read_dates(dates)
    if kept_dates is not None:
        # how the district got these dates' age: with the exam's summary, or by a
        # correction for dates entered (or changed) after it had left (`told`, the
        # journal's record of the last one queued); None: it has not
        weeks = kept_dates["ga_dates_weeks"]
        kept_dates["sent"] = "summary" if same_weeks(
            _number((bio_in or {}).get("ga_dates_weeks")), weeks) \
            else "correction" if same_weeks(told_weeks(told)[1], weeks) else None
    return {
        "exam_id": _text(summary.get("exam_id")), "running": False,
        "ended_by": ended_by if ended_by in ENDED else None,
        "protocol": name, "title": titles.get(name, name),
        "started_ts": wall_ts_or_none(summary.get("started_ts")),
        "ended_ts": wall_ts_or_none(summary.get("ended_ts")),
        "duration_s": _number(summary.get("duration_s")),
        "frames": _count(summary.get("frames")),
        "checklist": rows,
        "captured": _count(proto.get("captured")),
        "required": _count(proto.get("required")) or len(rows),
        "biometry": bio,
        "measured_head": _measured_head(best_frames.get(HEAD_MEASURED)),
        "dates": kept_dates,
        "withdrawal": None if withdrawal is None else {
            "withdrawn": withdrawal.withdrawn, "reason": withdrawal.reason,
            "entered_ts": withdrawal.entered_ts},
        "screening": {"cephalic_index": cephalic_index((bio or {}).get("bpd_mm"),
                                                       (bio or {}).get("ofd_mm")),
                      "hc_dates": hc_against_dates(
                          (bio or {}).get("hc_mm"),
                          kept_dates["ga_dates_weeks"] if kept_dates else None),
                      "hc_frames": hc_frames(bio or {}),
                      # the age give or take, as the exam card and the report say it
                      "ga_tolerance_days": dating_tolerance_days((bio or {}).get("ga_weeks"))},
        "deficiencies": _faults(summary.get("deficiencies")),
        "deficiencies_not_counted": _faults(summary.get("deficiencies_not_counted")),
        "models": {_text(k, 32): _text(v, 16) for k, v in list(models.items())[:8]},
    }


def _faults(table: object) -> dict[str, int]:
    """A summary's faults by frames (criterion -> frames), as read back from the journal."""
    if not isinstance(table, dict):
        return {}
    return {_text(k, 24): _count(v) for k, v in list(table.items())[:8]}


# -- the journal, read-only ------------------------------------------------------------------
class ExamHistory:
    """The finished exams of the journal in `state_dir`, read for the page."""

    def __init__(self, state_dir: Path, protocols_file: str = ""):
        self.state_dir = Path(state_dir)
        self.protocols_file = protocols_file
        self._protocols: dict[str, Protocol] | None = None  # read once, on the history thread
        self.path = self.state_dir / JOURNAL_FILE
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-history")
        self._said: str | None = None  # the cause last said in the log, until readable
        self.readable = True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def recent(self, limit: int, running: dict | None) -> tuple[list[dict], bool]:
        """The `limit` most recent finished exams, newest first, and whether the journal
        could be read ([] and False if not). `running`: the running protocol's name and
        title (`LiveView.protocol`)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._recent, limit, running)

    async def exam(self, exam_id: str, running: dict | None) -> dict | None:
        """One exam by id, or None (not a valid id, not in the journal, unreadable)."""
        if not EXAM_ID_RE.match(exam_id):
            return None
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._one, exam_id, running)

    async def dates(self, exam_id: str) -> dict | None:
        """The dates the journal keeps for one exam (`read_dates`), read alone: what the
        report's date field waits for, without building the whole exam each time."""
        if not EXAM_ID_RE.match(exam_id):
            return None
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._dates, exam_id)

    async def withdrawal(self, exam_id: str) -> dict | None:
        """The exam's withdrawal as `present` gives it, read alone: what the page's
        withdrawal waits for."""
        if not EXAM_ID_RE.match(exam_id):
            return None
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._withdrawal, exam_id)

    async def thumbnail(self, exam_id: str, name: str) -> tuple[str, Path | None]:
        """("unknown", None): not a thumbnail the journal lists for that exam; ("gone",
        None): listed, but no longer on disk (the quota removed it); ("ok", path)."""
        if not EXAM_ID_RE.match(exam_id) or not THUMB_NAME_RE.match(name):
            return "unknown", None
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._thumbnail, exam_id, name)

    async def report(self, exam_id: str, lang: str, rules, box: dict, session: bool,
                     running: dict | None) -> web.Response:
        """The report page of one exam; the login without a session; a 404 page for an id
        that is malformed or not in the journal."""
        text = i18n.catalog(lang, rules)
        if not session:
            return html_response(render_locked(text), 401)
        exam = await self.exam(exam_id, running)
        if exam is None:
            return html_response(render_missing(text), 404)
        # a missed slot's advice in the report's language, as the card says it
        return html_response(render_report(i18n.exam_with_advice_keys(rules, exam), text, box))

    # executor thread ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise FileNotFoundError("no journal yet")
        db = sqlite3.connect(sqlite_uri(self.path), uri=True, timeout=BUSY_TIMEOUT_S,
                             isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        except BaseException:
            db.close()
            raise
        return db

    def _query(self, sql: str, args: tuple | dict) -> list[tuple] | None:
        """Rows, or None with one line in the log when the journal cannot be read."""
        try:
            db = self._connect()
            try:
                rows = db.execute(sql, args).fetchall()
            finally:
                db.close()
        except FileNotFoundError:  # the page is up before the loop opens the journal
            self.readable = True  # nothing finished yet: an empty list, no alarm
            if self._said is None:
                self._said = ""
                log.info("web: earlier exams: no journal yet at %s; none listed", self.path)
            return None
        except sqlite3.OperationalError as exc:
            if not any(older in str(exc) for older in (
                    "no such table: exam_dates", "no such column: d.told",
                    "no such table: exam_withdrawals")):
                return self._unreadable(exc)
            # an older journal, which the loop upgrades once it has loaded the models
            self.readable = True
            if self._said != "older":
                self._said = "older"
                log.info("web: earlier exams: the journal %s is from an older sonoedge; "
                         "listed once the loop has upgraded it", self.path)
            return None
        except (sqlite3.Error, OSError) as exc:
            return self._unreadable(exc)
        if self._said and self._said != "older":
            log.info("web: earlier exams: the journal %s can be read again", self.path)
        self._said = None
        self.readable = True
        return rows

    def _unreadable(self, exc: BaseException) -> None:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        self.readable = False
        if reason != self._said:
            self._said = reason
            log.warning("web: earlier exams: cannot read the journal %s (%s); the page "
                        "lists none", self.path, reason)

    @staticmethod
    def _parse(raw: object) -> dict | None:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "replace")
        if not isinstance(raw, bytes):
            return None
        try:
            value = loads_bounded(raw, MAX_JSON_BYTES)
        except PayloadError:
            return None
        return value if isinstance(value, dict) else None

    # an exam's dates row, if any, by its primary key (at most one: exam_id is its key)
    _COLUMNS = ("SELECT exams.exam_id, CASE WHEN length(CAST(summary AS BLOB)) <= :max THEN "
                "summary END, CASE WHEN length(CAST(best_frames AS BLOB)) <= :max THEN "
                f"best_frames END, CASE WHEN length(CAST(d.dates AS BLOB)) <= {MAX_DATES_BYTES} "
                f"THEN d.dates END, d.told, {_WITHDRAWAL_COLUMNS} FROM exams LEFT JOIN "
                "exam_dates d ON d.exam_id = exams.exam_id LEFT JOIN exam_withdrawals w ON "
                "w.exam_id = exams.exam_id ")

    def _exams(self, rows: list[tuple], running: dict | None) -> list[dict]:
        if self._protocols is None:
            self._protocols = read_protocols(self.protocols_file)
        titles = protocol_titles(self._protocols, running)
        out = []
        for exam_id, summary_raw, best_raw, dates_raw, told, *withdrawal in rows:
            summary = self._parse(summary_raw)
            best = self._parse(best_raw)
            if summary is None or not isinstance(exam_id, str) \
                    or summary.get("exam_id") != exam_id:
                continue  # damaged or oversized: skipped, the others listed
            item = present(summary, best or {}, self._protocols, titles,
                           self._parse(dates_raw), told, read_withdrawal(tuple(withdrawal)),
                           (running or {}).get("head_planes", ()))
            for row in item["checklist"]:
                best_row = row.get("best") or {}
                if "thumbnail" in best_row:
                    best_row["kept"] = self._kept(exam_id, best_row["thumbnail"]) is not None
            head = item["measured_head"]
            if head is not None and "thumbnail" in head:
                head["kept"] = self._kept(exam_id, head["thumbnail"]) is not None
            out.append(item)
        return out

    def _recent(self, limit: int, running: dict | None) -> tuple[list[dict], bool]:
        rows = self._query(self._COLUMNS + "ORDER BY started_ts DESC, exams.rowid DESC LIMIT :n",
                           {"max": MAX_JSON_BYTES, "n": max(1, min(MAX_LIMIT, int(limit)))})
        return ([], self.readable) if rows is None else (self._exams(rows, running), True)

    def _one(self, exam_id: str, running: dict | None) -> dict | None:
        rows = self._query(self._COLUMNS + "WHERE exams.exam_id = :id LIMIT 1",
                           {"max": MAX_JSON_BYTES, "id": exam_id})
        found = self._exams(rows or [], running)
        return found[0] if found else None

    def _dates(self, exam_id: str) -> dict | None:
        rows = self._query("SELECT CASE WHEN length(CAST(dates AS BLOB)) <= :max THEN dates "
                           "END FROM exam_dates WHERE exam_id = :id",
                           {"max": MAX_DATES_BYTES, "id": exam_id})
        return read_dates(self._parse(rows[0][0])) if rows else None

    def _withdrawal(self, exam_id: str) -> dict | None:
        rows = self._query(f"SELECT {_WITHDRAWAL_COLUMNS} FROM exam_withdrawals w WHERE "
                           "w.exam_id = :id", {"id": exam_id})
        kept = read_withdrawal(rows[0]) if rows else None
        return None if kept is None else {"withdrawn": kept.withdrawn, "reason": kept.reason}

    def _kept(self, exam_id: str, listed: str) -> Path | None:
        """The file of a thumbnail path the journal lists, if it is one of this exam's
        under the state dir and still there."""
        parts = listed.split("/")
        if len(parts) != 3 or parts[0] != THUMBS_DIR or parts[1] != exam_id \
                or not THUMB_NAME_RE.match(parts[2]):
            return None
        root = self.state_dir.resolve()
        path = (root / listed).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def _thumbnail(self, exam_id: str, name: str) -> tuple[str, Path | None]:
        rows = self._query("SELECT CASE WHEN length(CAST(best_frames AS BLOB)) <= ? THEN "
                           "best_frames END FROM exams WHERE exam_id = ? LIMIT 1",
                           (MAX_JSON_BYTES, exam_id))
        best = self._parse(rows[0][0]) if rows else None
        wanted = f"{THUMBS_DIR}/{exam_id}/{name}"
        listed = [e.get("thumbnail") for e in (best or {}).values() if isinstance(e, dict)]
        if wanted not in listed:  # the path comes from the journal, never from the URL
            return "unknown", None
        path = self._kept(exam_id, wanted)
        return ("ok", path) if path is not None else ("gone", None)


# -- the report ------------------------------------------------------------------------------


def _plural(text: dict[str, str], key: str, n: int) -> str:
    one = n in (0, 1) if text.get("_lang") == "fr" else n == 1
    return text.get(f"{key}.one", text.get(key, key)) if one else text.get(key, key)


def _t(text: dict[str, str], key: str, fallback: str | None = None, **values) -> str:
    """The catalog's text for `key` with {names} filled in; `n` picks the plural form."""
    n = values.get("n")
    template = _plural(text, key, n) if isinstance(n, int) and f"{key}.one" in text \
        else text.get(key, key if fallback is None else fallback)
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), template)


def set_up_refusal(bio: dict) -> str | None:
    """The set-up status that refused an exam's heads (the first of SET_UP_STATUSES among
    its `declined`), or None: what the report's "why" and its head slot both go by."""
    return next((k for k in SET_UP_STATUSES if bio.get("declined", {}).get(k)), None)


def not_measured_why(text: dict[str, str], status: str, bio: dict) -> str:
    """Why no head was measured, for a set-up status, as the card says it (app.js
    `unmeasuredWhy`): a stretched picture with the exact `[source] stretch` that undoes it
    where the box named one (`stretch_setting`; a config's line, so with a dot in every
    language), and the grabber's frame size it is for where known (`stretch_frame`: at
    another size it is another setting), else the general fix."""
    setting = setting_read_back(bio.get("stretch_setting"))
    if status == SCREEN_STRETCHED and setting is not None:
        frame = frame_read_back(bio.get("stretch_frame"))
        if frame is not None:
            return _t(text, "exam.not_measured_screen_stretched_setting_frame",
                      setting=f"{setting:g}", frame=frame)
        return _t(text, "exam.not_measured_screen_stretched_setting", setting=f"{setting:g}")
    return _t(text, "exam.not_measured_" + status)


def half_up(value: float) -> int:
    """The nearest whole number as the page rounds (JavaScript's Math.round and toFixed(0):
    half up). Python's round and format go half to even, so an HC of 200.5 mm read 201 on
    the screen and 200 in the report."""
    return math.floor(value + 0.5)


def weeks_days(text: dict[str, str], weeks: float) -> str:
    days = half_up(weeks * 7)
    return _t(text, "overlay.wd", w=days // 7, d=days % 7)


def ga_range(text: dict[str, str], bio: dict) -> str:
    """The age's range as the page gives it: a bound outside Hadlock's span as < or >."""
    lo, hi = bio.get("ga_low_weeks"), bio.get("ga_high_weeks")
    if lo is None and hi is None:
        return ""
    if lo is not None and hi is not None and hi <= lo:
        return ""
    low = weeks_days(text, lo) if lo is not None else f"< {weeks_days(text, HADLOCK_1984_WEEKS[0])}"
    high = weeks_days(text, hi) if hi is not None else \
        f"> {weeks_days(text, HADLOCK_1984_WEEKS[1])}"
    return "" if low == high else f"{low} – {high}"  # within a day: "19w 1d – 19w 1d"


# The months as the midwife's page names them (app.js dateInWords: Intl's fr-FR for
# French, en-GB for any other language); test_report_dates_and_strip holds both to it.
MONTHS = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
           "septembre", "octobre", "novembre", "décembre"),
}


def date_in_words(text: dict[str, str], day: dt.date | str) -> str:
    """A date as the page says the last period kept: "5 July 2026", "5 juillet 2026". The
    report's one form of a date: 07/05/2026 is 5 July to one midwife and 7 May to another,
    and 2026-07-05 beside them is a third form (a midwife's walk). A string that is no
    date is given back as it is."""
    if isinstance(day, str):
        try:
            day = dt.date.fromisoformat(day)
        except ValueError:
            return day
    months = MONTHS.get(text.get("_lang", "en"), MONTHS["en"])
    return f"{day.day} {months[day.month - 1]} {day.year}"


def _utc(text: dict[str, str], ts: float | None, part: str) -> str:
    """A <time> the report's script shows in the viewer's own time zone (UTC until then):
    the date in words, the time of day as hours and minutes."""
    if ts is None:
        return "—"
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    shown = date_in_words(text, when.date()) if part == "date" else when.strftime("%H:%M UTC")
    return (f'<time datetime="{when.isoformat(timespec="seconds")}" data-part="{part}">'
            f"{shown}</time>")


def _page(text: dict[str, str], title: str, body: str, cls: str = "") -> str:
    lang = html.escape(text.get("_lang", "en"))
    return ("<!doctype html>\n"
            f'<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            '<meta name="color-scheme" content="light">\n'
            f"<title>{html.escape(title)}</title>\n"
            '<link rel="icon" href="/static/icon.svg" type="image/svg+xml">\n'
            '<link rel="stylesheet" href="/static/base.css">\n'
            '<link rel="stylesheet" href="/static/report.css">\n'
            '<script src="/static/in_sight.js" defer></script>\n'
            '<script src="/static/withdraw.js" defer></script>\n'
            '<script src="/static/report.js" defer></script>\n</head>\n'
            f'<body class="{cls}">\n{body}\n</body>\n</html>\n')


def _bar(text: dict[str, str]) -> str:
    e = html.escape
    return ('<nav class="bar noprint">'
            f'<a class="button" href="/">{e(_t(text, "report.back"))}</a>'
            f'<button id="print" type="button" class="primary">{e(_t(text, "report.print"))}'
            "</button></nav>")


def render_report(exam: dict, text: dict[str, str], box: dict[str, str]) -> str:
    """The printable report of one exam (every value escaped; no inline script or style)."""
    e = html.escape
    exam_id = exam["exam_id"]
    out = [_bar(text), "<main>", "<header>"]
    withdrawal = exam.get("withdrawal") or {}
    if withdrawal.get("withdrawn"):  # first of all: this printout is no exam done
        out.append('<p id="withdrawn" class="withdrawn" role="note">' + e(_t(
            text, "withdraw.report", reason=_t(text, "withdraw.reason_" + withdrawal["reason"])))
            + "</p>")
    out.append(f'<h1>{e(_t(text, "report.title"))}</h1>')
    ids = [_t(text, key, id=_text(box.get(k))) for k, key in
           (("device_id", "report.box"), ("clinic_id", "report.clinic")) if box.get(k)]
    if ids:
        out.append(f'<p class="ids">{e(" · ".join(ids))}</p>')
    out.append(f'<p class="aid">{e(_t(text, "screen.aid"))}</p>')
    # the box keeps nothing that names the woman: a line to write it on the printout, or
    # two sheets printed the same afternoon go into the wrong card (a midwife's walk)
    out.append(f'<p class="write-in">{e(_t(text, "report.write_in"))} '
               '<span class="blank"></span></p></header>')
    out.append(_withdraw_place(text, exam))

    # when, how it ended, the protocol
    title = _t(text, "protocol." + exam["protocol"], fallback=exam["title"] or exam["protocol"])
    minutes = max(1, round((exam["duration_s"] or 0) / 60))
    ended = exam["ended_by"] or "gap"
    facts = [
        ("report.date", _utc(text, exam["started_ts"], "date")),
        ("report.time", e(_t(text, "report.times", start="\x00", end="\x01", min=minutes))
         .replace("\x00", _utc(text, exam["started_ts"], "time"))
         .replace("\x01", _utc(text, exam["ended_ts"], "time"))),
        ("report.ended", e(_t(text, "report.ended_" + ended))),
        ("report.protocol", e(title)),
        ("report.planes", e(_t(text, "report.captured_of", n=exam["captured"],
                               m=exam["required"]))),
    ]
    if exam.get("dates"):
        # The age by dates is the one on the day of the exam (the phone's date, moved back
        # by the days since the exam if entered later; the box may have no clock): said
        # with its day, which the exam's date above, by the box's clock, may not be. Both
        # dates in words, as the exam's.
        said = _t(text, "report.lmp_ga", lmp=date_in_words(text, exam["dates"]["lmp"]),
                  ga=weeks_days(text, exam["dates"]["ga_dates_weeks"]),
                  today=date_in_words(text, exam["dates"]["today"]))
        sent = _t(text, {"summary": "report.lmp_sent", "correction": "report.lmp_corrected"}
                  .get(exam["dates"].get("sent"), "report.lmp_report_only"))
        facts.append(("report.lmp", e(f"{said}. {sent}")))
    out.append('<section class="facts"><dl>')
    for key, value in facts:
        out.append(f"<dt>{e(_t(text, key))}</dt><dd>{value}</dd>")
    out.append("</dl></section>")

    # the head's figures, and how the age was obtained
    bio = exam["biometry"] or {}
    out.append(f'<section class="bio"><h2>{e(_t(text, "report.biometry"))}</h2>')
    if bio.get("hc_mm") is not None:
        # whole millimetres, as the page shows them: "223.3 mm" here beside "223 mm" there,
        # a tenth the segmenter cannot measure (a midwife's walk)
        rows = [(_t(text, "report.hc"), _t(text, "report.mm", mm=half_up(bio["hc_mm"])))]
        for key in ("bpd_mm", "ofd_mm"):
            if bio.get(key) is not None:
                rows.append((_t(text, "report." + key[:3]),
                             _t(text, "report.mm", mm=half_up(bio[key]))))
        tolerance = dating_tolerance_days(bio.get("ga_weeks"))
        if bio.get("ga_weeks") is not None:
            age = weeks_days(text, bio["ga_weeks"])
            if tolerance:  # give or take what a scan at this age can tell
                age += " " + _t(text, "exam.ga_tolerance", days=tolerance)
            span = ga_range(text, bio)
            rows.append((_t(text, "report.ga"),
                         # "best frames ...", as the card says it: "± 10 days (range
                         # 21w 1d – 21w 2d)" read as if the ten days were that one-day range
                         age + (" (" + _t(text, "overlay.ga_range", range=span) + ")"
                                if span else "")))
        else:
            rows.append((_t(text, "report.ga"), _t(text, "report.ga_outside")))
        out.append('<table class="figures">' + "".join(
            f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>")
        how = _t(text, "report.ga_how", n=bio["best_frames"], m=bio["measured"])
        if tolerance:
            how += " " + _t(text, "report.ga_tolerance", days=tolerance)
        out.append(f'<p class="how">{e(how)}</p>')
        if bio.get("shape") == SHAPE_UNCHECKED:  # measured, but a stretch would not show
            out.append(f'<p class="why">{e(_t(text, "report.shape_unchecked"))}</p>')
        out.append(_measured_figure(text, exam_id, exam.get("measured_head")))
    else:
        out.append(f'<p class="figures none">{e(_t(text, "report.not_measured"))}</p>')
        why = [(_t(text, "bio." + k, fallback=k), n) for k, n in bio.get("declined", {}).items()]
        if any(label for label, _ in why):
            out.append("<ul>" + "".join(
                f"<li>{e(_t(text, 'report.frames', label=label, n=n))}</li>"
                for label, n in why if label) + "</ul>")
        set_up = set_up_refusal(bio)
        if set_up:
            out.append(f'<p class="why">{e(not_measured_why(text, set_up, bio))}</p>')
    out.append("</section>")

    # the flags the page shows: head shape, and head size against the dates
    ci = (exam.get("screening") or {}).get("cephalic_index")
    out.append(f'<section class="screen"><h2>{e(_t(text, "screen.title"))}</h2><ul>')
    if ci:
        key = f"screen.ci_{ci['flag']}" if ci.get("flag") else "screen.ci_ok"
        line = _t(text, key, ci=ci_shown(ci).replace(".", _t(text, "_decimal_mark", ".")),
                  low=ci["low"], high=ci["high"])
        flagged = ' class="flag"' if ci.get("flag") else ""
        out.append(f"<li{flagged}>{e(line)}</li>")
    else:
        out.append(f"<li>{e(_t(text, 'report.no_head'))}</li>")  # ended: not 'yet'
    hf = (exam.get("screening") or {}).get("hc_frames")
    if hf and hf.get("flag"):  # as the page: a depth changed, or another head
        out.append('<li class="flag">' + e(_t(text, hc_frames_key(hf),
                                                low=half_up(hf["p10_mm"]),
                                                high=half_up(hf["p90_mm"]))) + "</li>")
    hd = (exam.get("screening") or {}).get("hc_dates")
    if hd is None:
        out.append(f"<li>{e(_t(text, 'report.no_dates'))}</li>")
    else:
        flagged = ' class="flag"' if hd.get("flag") else ""
        out.append(f"<li{flagged}>{e(hc_dates_line(text, hd))}</li>")
    out.append("</ul>")
    if (exam.get("biometry") or {}).get("hc_mm") is not None:
        out.append(_dates_form(text, exam_id, (exam.get("dates") or {}).get("lmp")))
    out.append(f'<p class="fine">{e(_t(text, "screen.limits"))}</p>'
               f'<p class="fine">{e(_t(text, "screen.not_checked"))}</p></section>')

    # the checklist with the thumbnails; its head slots say "not measured" where the box
    # refused every head for its set-up, as the page's do (app.js `unmeasuredWhy`)
    unmeasured = bio.get("hc_mm") is None and set_up_refusal(bio) is not None
    out.append(f'<section class="planes"><h2>{e(_t(text, "report.checklist"))}</h2>'
               '<ul class="checklist">')
    for row in exam["checklist"]:
        best = row.get("best") or {}
        name = _t(text, "slot." + row["plane"], fallback=_t(
            text, "plane." + row["plane"], fallback=row["plane"]))
        out.append(f'<li class="{"captured" if row["captured"] else "missed"}">')
        thumb = best.get("thumbnail")
        if thumb and best.get("kept"):
            file = thumb.split("/")[2]
            src = f"/api/thumb/{urllib.parse.quote(exam_id)}/{urllib.parse.quote(file)}"
            out.append(f'<img class="thumb" src="{e(src)}" alt="{e(name)}" '
                       f'data-gone="{e(_t(text, "report.gone"))}">')
        elif thumb:
            out.append(f'<div class="thumb empty">{e(_t(text, "report.gone"))}</div>')
        else:
            out.append(f'<div class="thumb empty">{e(_t(text, "report.no_image"))}</div>')
        mark = "✓ " if row["captured"] else "✗ "
        if row["captured"] and row.get("head") and unmeasured:
            # as the page's slot: a plain tick over the "not measured" above read as measured
            name = _t(text, "exam.slot_not_measured", slot=name)
        out.append(f'<div class="name">{e(mark + name)}</div>')
        # a missed slot: found but never clear enough (the image to improve), or not
        # found (where to look); an exam journaled before the summary said is "not captured"
        state = _t(text, "report.captured" if row["captured"] else
                   {True: "report.missed_seen", False: "report.missed_not_found"}.get(
                       row.get("seen"), "report.not_captured"))
        quality = best.get("quality")
        if quality is not None:
            state += " · " + _t(text, "report.quality", pct=round(quality * 100))
        out.append(f'<div class="q">{e(state)}</div>')
        advice = best.get("advice") if not row["captured"] else None
        if advice:  # what would have made it good enough, as the card said it
            said = _t(text, advice["key"], fallback=advice["message"]) if advice.get("key") \
                else advice["message"]
            out.append(f'<div class="advice">{e(said)}</div>')
        out.append("</li>")
    out.append("</ul></section>")

    # faults, models, ids
    faults = exam.get("deficiencies") or {}
    not_counted = exam.get("deficiencies_not_counted") or {}
    if faults or not_counted:
        out.append(f'<section class="faults"><h2>{e(_t(text, "report.deficiencies"))}</h2><ul>')
        for name, n in faults.items():
            out.append(f"<li>{e(_fault_line(text, name, n))}</li>")
        out.append("</ul>")
        if not_counted:  # seen, but not a fault to coach on this box (the scale's sake)
            listed = ", ".join(_fault_line(text, name, n) for name, n in not_counted.items())
            out.append(f'<p class="how not-counted">'
                       f'{e(_t(text, "report.not_counted", faults=listed))}</p>')
        out.append("</section>")
    models = " · ".join(f"{k} {v}" for k, v in exam.get("models", {}).items())
    out.append('<footer>')
    if models:
        # the colon is the language's own (French sets a space before it)
        out.append(f'<p>{e(_t(text, "report.models"))} {e(models)}</p>')
    out.append(f'<p>{e(_t(text, "report.exam_id", id=exam_id))}</p>')
    out.append(f'<p class="aid">{e(_t(text, "screen.aid"))}</p></footer></main>')
    return _page(text, f'{_t(text, "report.title")} · {title}', "\n".join(out), "report")


def _fault_line(text: dict[str, str], name: str, n: int) -> str:
    """A criterion in the midwife's words and its frames: "Blurred (12 frames)"."""
    return _t(text, "report.frames", label=_t(text, "deficiency." + name, fallback=name), n=n)


def _measured_figure(text: dict[str, str], exam_id: str, head: dict | None) -> str:
    """Where the head was measured (`_measured_head`): the frame whose HC is the exam's,
    with the fitted ellipse and the calipers drawn on it (or its place, said in words,
    where the quota has removed it since), and a caption: its own HC, BPD and OFD, which
    frame it is and why it is the one. Without a picture (thumbnails off, not written),
    which frame, in words. Nothing for an exam journaled without it."""
    if not head:
        return ""
    e = html.escape
    frame, thumb, n = head.get("frame"), head.get("thumbnail"), head.get("of") or 0
    plane = _t(text, "plane." + head["plane"], fallback=head["plane"]) if head.get("plane") \
        else "—"
    if not thumb and frame is None:
        return ""  # no picture, no frame: nothing the figures above do not say
    mm = half_up(head["hc_mm"])
    lead = _t(text, "report.measured_here", mm=mm) if thumb else \
        _t(text, "report.measured_on", mm=mm, frame=frame, plane=plane)
    lead = " · ".join([lead] + [_t(text, "report.measured_" + key[:3], mm=half_up(head[key]))
                                for key in ("bpd_mm", "ofd_mm") if head.get(key) is not None])
    lines = [f'<p class="here">{e(lead)}</p>']
    if n > 0:
        key = "report.measured_why" if thumb and frame is not None else \
            "report.measured_why_alone"
        lines.append(f"<p>{e(_t(text, key, n=n, frame=frame, plane=plane))}</p>")
    if not thumb:
        return '<div class="measured">' + "".join(lines) + "</div>"
    if head.get("kept"):
        src = (f"/api/thumb/{urllib.parse.quote(exam_id)}/"
               f"{urllib.parse.quote(thumb.split('/')[2])}")
        picture = (f'<img class="thumb" src="{e(src)}" alt="{e(lead)}" '
                   f'data-gone="{e(_t(text, "report.gone"))}">')
        lines.append(f'<p class="fine">{e(_t(text, "report.measured_drawn"))}</p>')
    else:
        picture = f'<div class="thumb empty">{e(_t(text, "report.gone"))}</div>'
    return (f'<figure class="measured">{picture}<figcaption>{"".join(lines)}</figcaption>'
            "</figure>")


def _withdraw_place(text: dict[str, str], exam: dict) -> str:
    """Where report.js puts the exam's withdraw (or undo) controls (withdraw.js, as on the
    earlier exams' list), with the words they need. Not printed."""
    e = html.escape
    words = {k: v for k, v in text.items() if k.startswith("withdraw.")}
    return (f'<div id="report-withdraw" class="noprint" data-exam="{e(exam["exam_id"])}" '
            f'data-withdrawal="{e(json.dumps(exam.get("withdrawal")))}" '
            f'data-words="{e(json.dumps(words, ensure_ascii=False))}"></div>')


def _dates_form(text: dict[str, str], exam_id: str, lmp: str | None) -> str:
    """The last period for this exam, entered or changed on its report (report.js sends
    it with the tablet's date to POST /api/exams/<id>/lmp): for the woman who finds her
    card once the next exam has begun. Not printed."""
    e = html.escape
    clear = (f'<button id="lmp-clear" type="button">{e(_t(text, "report.lmp_clear"))}</button>'
             if lmp else "")
    return (f'<form id="report-lmp" class="noprint" data-exam="{e(exam_id)}" '
            f'data-refused="{e(_t(text, "screen.lmp_refused_range", weeks=MAX_LMP_DAYS // 7))}" '
            f'data-phone-date="{e(_t(text, "screen.lmp_refused_phone_date"))}" '
            f'data-failed="{e(_t(text, "report.lmp_failed"))}" '
            f'data-busy="{e(_t(text, "screen.lmp_busy"))}" '
            f'data-origin="{e(_t(text, "screen.lmp_refused_origin"))}" '
            f'data-failed-status="{e(_t(text, "screen.lmp_failed_status"))}" '
            f'data-running="{e(_t(text, "report.lmp_running"))}" '
            f'data-gone="{e(_t(text, "report.lmp_gone"))}" '
            f'data-session="{e(_t(text, "report.lmp_session"))}" '
            f'data-pending="{e(_t(text, "report.lmp_pending"))}">'
            f'<label for="report-lmp-date">{e(_t(text, "screen.lmp"))}</label>'
            f'<input id="report-lmp-date" type="date" value="{e(lmp or "")}">'
            f'<button id="lmp-keep" type="submit" class="primary">'
            f'{e(_t(text, "report.lmp_keep"))}</button>{clear}'
            f'<p class="fine">{e(_t(text, "report.lmp_form"))}</p>'
            '<p id="report-lmp-error" class="error" aria-live="polite"></p></form>')


def hc_frames_key(hf: dict) -> str:
    """The catalog's words for head frames that disagree (`screening.hc_frames`), as the
    page picks them: a box that reads each frame's depth is never told to set it back."""
    return "screen.hc_frames_disagree_ruler" if hf.get("depth_read") \
        else "screen.hc_frames_disagree"


def ci_shown(ci: dict) -> str:
    """The cephalic index to one decimal, on the side of its bound the flag says (app.js
    `ciShown`): the flag is decided on the unrounded index, so 69.96 is "low" and must not
    read "70.0, below the usual 70-87" (to the nearest whole it read "70, below 70")."""
    value = half_up(float(ci["ci"]) * 10) / 10  # half up, as the page rounds
    if ci.get("flag") == "low" and value >= ci["low"]:
        value = ci["low"] - 0.1
    if ci.get("flag") == "high" and value <= ci["high"]:
        value = ci["high"] + 0.1
    return f"{value:.1f}"


def hc_dates_line(text: dict[str, str], hd: dict) -> str:
    """The HC-for-dates flag in the page's own words (app.js renders the same keys)."""
    ga = weeks_days(text, hd["ga_dates_weeks"])
    if hd.get("status") == "dates_out_of_range":
        if hd.get("flag") not in ("small", "large"):
            return _t(text, "screen.dates_out_of_range", ga=ga)
        ga_hc = hd.get("ga_hc_weeks")  # as the page: a head that disagrees with such dates
        key = f"screen.dates_out_of_range_{hd['flag']}" + ("_beyond" if ga_hc is None else "")
        return _t(text, key, ga=ga, hc=half_up(hd["hc_mm"]),
                  ga_hc="" if ga_hc is None else weeks_days(text, ga_hc))
    expected = half_up(hd["hc_expected_mm"])
    if hd.get("status") == "no_hc":
        return _t(text, "screen.expected_hc", ga=ga, mm=expected)
    key = f"screen.hc_{hd['flag']}" if hd.get("flag") in ("small", "large") else "screen.hc_ok"
    if key != "screen.hc_ok" and hd.get("difference_days") is None:
        # an HC outside Hadlock's 14-42 weeks has no age, so no difference in days: it is
        # smaller (larger) than the formula gives at any age it covers
        key += "_beyond"
    return _t(text, key, ga=ga, mm=expected, hc=half_up(hd["hc_mm"]),
              days=abs(hd.get("difference_days") or 0),
              tol=hd["tolerance_days"])


def render_locked(text: dict[str, str]) -> str:
    """The report's login: the PIN, sent by the report's own script, then the report."""
    e = html.escape
    messages = {f"data-{k}": _t(text, f"login.{k}") for k in
                ("wrong", "wrong_wait", "braked", "busy", "unreachable")}
    data = " ".join(f'{k}="{e(v)}"' for k, v in messages.items())
    body = ('<form id="report-login" class="card" autocomplete="off">'
            f'<h1>{e(_t(text, "app.title"))}</h1>'
            f'<p class="sub">{e(_t(text, "report.locked"))}</p>'
            f'<label for="pin">{e(_t(text, "login.prompt"))}</label>'
            '<input id="pin" name="pin" type="password" inputmode="numeric" maxlength="64" '
            'autocomplete="current-password" required>'
            f'<button id="unlock" type="submit" class="primary">{e(_t(text, "login.unlock"))}'
            f'</button><p id="login-error" class="error" role="alert" {data}></p></form>')
    return _page(text, _t(text, "app.title"), body, "locked")


def render_missing(text: dict[str, str]) -> str:
    e = html.escape
    body = (f'<main class="missing"><p class="one">{e(_t(text, "report.not_found"))}</p>'
            f'<p><a class="button" href="/">{e(_t(text, "report.back"))}</a></p></main>')
    return _page(text, _t(text, "report.not_found"), body, "report")


def html_response(body: str, status: int = 200) -> web.Response:
    # a patient's figures: kept by no cache, the browser's own included
    return web.Response(text=body, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store"})
