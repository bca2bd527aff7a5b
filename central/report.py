"""Per-device and per-clinic report from the collector's database.

Counts come straight from SQL so the report scales with the database, not with memory.
Sequence numbers are per device and strictly increasing across reboots, so a hole in the
stored sequence of the kinds that take a seq (``exam``, ``health`` and ``dates``:
``SEQ_KINDS``) is a message that never arrived. Holes are split into *dropped* (the device
reported discarding it to stay within its outbox quota: it says so in its latest
``health``) and *lost* (the rest). A hole longer than ``seq_jump`` is no
loss: no device makes that many messages unseen, so it is a broken or hostile counter,
flagged as a *jump* and kept out of ``missing`` and ``lost``. ``behind`` is how many messages the
device's latest ``status`` says it has allocated beyond what is stored: still on its way.

A seq the collector recorded in ``resent`` (a message it already had, sent again under a
new seq after the device lost its outbox) did arrive: it fills its hole and counts towards
``max_seq``. A database from a collector older than that table reads as having none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from central.dashboard.config import (
    CLOCK_OFF_FLAG_S,
    PROTOCOL_TITLES,
    UNREGISTERED,
    deficiency_label,
    protocol_title,
    withdrawal_words,
)
from central.dashboard.queries import span
from central.dashboard.store import (
    Withdrawal,
    clock_offset,
    exam_day_of,
    exam_key,
    keep_latest,
    missing_seen,
    withdrawal_entry,
)
from central.db import SEQ_KINDS_SQL, Store
from wire.schema import NOT_A_VIEW, loads_bounded, wall_ts_or_none
from wire.shown import printable

# A stored payload read back: the collector stores at most --max-bytes (4 kB by default); a
# row of more than this did not come from it.
MAX_STORED_BYTES = 1 << 20
# "Recent exams" names each protocol by the dashboard's title for it: its column is as wide
# as the longest title (an id the dashboard has no title for, 32 characters at most on the
# wire, fits; a longer name, only from a damaged row, runs over as a long device id does).
PROTOCOL_WIDTH = max(len("protocol"), *(len(t) for t in PROTOCOL_TITLES.values()))


@dataclass
class DeviceReport:
    device_id: str
    clinic_id: str
    exams: int = 0
    health: int = 0
    status: int = 0
    first_seen_ts: float | None = None
    last_seen_ts: float | None = None
    last_device_ts: float | None = None
    max_seq: int = 0
    missing: int = 0  # holes in 1..max_seq of the seq-taking kinds (SEQ_KINDS)
    gaps: list[list[int]] = field(default_factory=list)  # first few holes, [from, to]
    seq_jumps: list[list[int]] = field(default_factory=list)  # holes too long to be loss
    dropped_health: int = 0
    dropped_exam: int = 0
    lost: int = 0
    behind: int = 0
    last_state: str | None = None
    last_state_ts: float | None = None  # when that status arrived: "online" 17 days ago is stale
    # how far the box's clock is behind the collector's (negative: ahead), as the devices
    # page reads it; the exams' "ended" times below are the box's clock
    clock_behind_s: float | None = None
    # in the district's registry (`report --registry`) and never heard from: provisioned,
    # then a wrong password, a wrong broker or a box never switched on
    never_heard: bool = False


@dataclass
class ClinicReport:
    clinic_id: str
    devices: int = 0
    exams: int = 0
    health: int = 0
    last_seen_ts: float | None = None
    missing: int = 0
    dropped: int = 0
    lost: int = 0


def recent_exams(store: Store, limit: int = 20,
                 withdrawals: dict[tuple[str, str], Withdrawal] | None = None) -> list[dict]:
    """The newest exams by when each was done, as a district reviewer reads them: when,
    where, which protocol and how much of its checklist was captured, the standard views
    seen and the best quality among them, the deficiencies seen most often, how often the
    model abstained, the head biometry with its age range, and whether the midwife withdrew
    it (`withdrawals`, `standing_withdrawals`: read here when not given) and why.

    Newest first by the exam's own time as the dashboard dates it (`exam_day_of`: when it
    ended on the box, never after it arrived), not by arrival: a box back from a week
    offline had put its week-old exams above the day's. Ties: the later arrival, then by
    msg_id (unique: the same order each time). An exam dated so is never after its
    arrival, so one done after the `limit` newest arrivals' oldest time arrived after it
    too: the exams read are those arrived since then, not all."""
    if withdrawals is None:
        withdrawals = standing_withdrawals(store)
    order = "ORDER BY received_ts DESC, msg_id"  # the dashboard's index on received_ts
    rows, read = _dated_exams(store, f"{order} LIMIT {int(limit)}", ())
    if read >= limit:
        # a row not as the collector writes it is left out: then every exam is read
        since = (min(r[0] for r in rows),) if len(rows) >= limit else ()
        rows, _ = _dated_exams(store, ("AND received_ts >= ? " if since else "") + order,
                               since)
    rows.sort(key=lambda r: -r[0])  # stable: ties stay in the order above
    out = []
    for _, line in rows[:limit]:
        w = withdrawals.get((line["device_id"], exam_key(line["exam_id"])))
        out.append({**line, "withdrawn": bool(w and w.withdrawn),
                    "withdrawn_reason": (w.reason or None) if w and w.withdrawn else None})
    return out


def _dated_exams(store: Store, tail: str, params: tuple) -> tuple[list[tuple], int]:
    """(the exam's time by `exam_day_of`, its `_exam_line`) of the stored exams
    `tail` selects, and how many rows it gave: a row not as the collector writes an exam
    (a damaged database) is left out."""
    rows = store.query("SELECT device_id, clinic_id, payload, device_ts, received_ts "
                       f"FROM messages WHERE kind = 'exam' {tail}", params)
    out = []
    for dev, clinic, payload, device_ts, received in rows:
        received = wall_ts_or_none(received)
        try:
            exam = stored_payload(payload)
            line = _exam_line(dev, clinic, exam)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError):
            continue
        if received is not None:
            ts, _ = exam_day_of(exam.get("ended_ts"), wall_ts_or_none(device_ts), received)
            out.append((ts, line))
    return out, len(rows)


def stored_payload(payload: object) -> dict:
    """A stored message's payload as an object. The collector checked it before storing
    it; a row it did not write (another writer, a damaged database) may be anything, and
    is TypeError or ValueError here, never a RecursionError or a crash of the report."""
    data = loads_bounded(payload.encode("utf-8") if isinstance(payload, str) else payload,
                         MAX_STORED_BYTES)
    if not isinstance(data, dict):
        raise TypeError("a stored payload is not a JSON object")
    return data


def _exam_line(dev: str, clinic: str, exam: dict) -> dict:
    planes = exam.get("planes") or {}
    scored = int(exam.get("frames_scored") or 0)
    bio = exam.get("biometry") or {}
    protocol = exam.get("protocol") or {}
    name = protocol.get("name")  # an id the dashboard has no title for: as it came
    views = {k: v for k, v in planes.items() if k not in NOT_A_VIEW and v[0] > 0}
    qualities = [v[2] for v in views.values() if len(v) > 2]
    return {
        "device_id": dev, "clinic_id": clinic, "exam_id": exam.get("exam_id"),
        "ended_ts": exam.get("ended_ts"), "frames": exam.get("frames"),
        "ended_by": exam.get("ended_by"), "protocol": name,
        "protocol_title": None if name is None else protocol_title(str(name)),
        "captured": protocol.get("captured"), "required": protocol.get("required"),
        "missing": protocol.get("missing") or [],
        # a busy exam sheds its missing slots' names to fit 1 KB, keeping the counts
        "missing_not_named": _not_named(protocol),
        **_missed_kinds(protocol),
        "views": sorted(views),
        "best_quality": max(qualities) if qualities else None,
        "deficiencies": list((exam.get("deficiencies") or {}).keys()),
        "uncertain_fraction": round(planes.get("uncertain", [0])[0] / scored, 3)
        if scored else None,
        "heads_measured": bio.get("measured"), "hc_mm": bio.get("hc_mm"),
        "ga_weeks": bio.get("ga_weeks"), "ga_low_weeks": bio.get("ga_low_weeks"),
        "ga_high_weeks": bio.get("ga_high_weeks"),
    }


def _missed_kinds(protocol: dict) -> dict:
    """Its named missing slots never found (coach where to look) and found but never clear
    enough (coach the image), from the summary's `missing_seen` as the dashboard reads it
    (`missing_seen`); both None where it does not say (a box before it, or a summary that
    shed it to fit 1 KB): not guessed."""
    seen = missing_seen(protocol)
    missing = protocol.get("missing")
    if seen is None or not isinstance(missing, list):
        return {"missing_not_found": None, "missing_not_clear_enough": None}
    named = [slot for slot in missing if isinstance(slot, str)]
    return {"missing_not_found": [slot for slot in named if slot not in seen],
            "missing_not_clear_enough": [slot for slot in named if slot in seen]}


def _missed_words(e: dict) -> str:
    """The exam's missed slots as the clinic page says them: "not found: 3VV; found, not
    clear enough: Lips", or "missed, not said whether found (older box): 3VV" where the
    summary does not say, then the slots whose names it shed."""
    parts = []
    if e.get("missing_not_found") is None:
        if e.get("missing"):
            parts.append("missed, not said whether found (older box): "
                         + ", ".join(map(str, e["missing"])))
    else:
        for words, key in (("not found", "missing_not_found"),
                           ("found, not clear enough", "missing_not_clear_enough")):
            if e.get(key):
                parts.append(f"{words}: " + ", ".join(map(str, e[key])))
    if e.get("missing_not_named"):
        parts.append(f"{e['missing_not_named']} slots not named")
    return "; ".join(parts)


def _withdrawn_words(e: dict) -> str:
    """A withdrawn exam's mark, first on its line: "WITHDRAWN by the midwife: a test scan
    (in no count above)"; "" for one that stands. The counts above leave it out, as the
    dashboard's do; the list keeps it, marked, so that its officer sees what was done."""
    if not e.get("withdrawn"):
        return ""
    reason = e.get("withdrawn_reason")
    why = f": {withdrawal_words(str(reason))}" if reason else ""
    return f"WITHDRAWN by the midwife{why} (in no count above)"


def _not_named(protocol: dict) -> int:
    req, cap, named = protocol.get("required"), protocol.get("captured"), protocol.get("missing")
    if not isinstance(req, int) or not isinstance(cap, int):
        return 0
    return max(0, req - cap - len(named if isinstance(named, list) else []))


def build_report(store: Store, max_gaps: int = 10, seq_jump: int = 1000,
                 registry: dict[str, str] | None = None) -> dict:
    """Per device (under the clinic it last sent from) and per clinic; with the district's
    `registry` (device: clinic), also each registered box never heard from, under its
    clinic, which counts it among its devices. A clinic's devices,
    exams, health and last seen are the messages stored from it (a box moved between clinics
    counts in each, with the exams it sent from each, as the dashboard counts them); the
    delivery figures (missing, dropped, lost: of a device's one sequence) go to the clinic
    its device last sent from, where it is now."""
    devices: dict[str, DeviceReport] = {}
    clinics: dict[str, ClinicReport] = {}
    latest_clinic: dict[str, tuple[float, str]] = {}
    rows = store.query(
        "SELECT device_id, clinic_id, "
        "SUM(CASE WHEN kind = 'exam' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN kind = 'health' THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN kind = 'status' THEN 1 ELSE 0 END), "
        "MIN(received_ts), MAX(received_ts), MAX(device_ts), "
        f"MAX(CASE WHEN kind IN {SEQ_KINDS_SQL} THEN seq ELSE 0 END) "
        "FROM messages GROUP BY device_id, clinic_id")
    # A message stored without a clinic (its box not yet in the collector's registry) counts
    # under the first clinic the registry listed the box at, its earliest message that had
    # one, as the dashboard counts it; a box never listed stays under "" ("(unregistered)"
    # when shown).
    named: dict[str, tuple[float, str]] = {}
    for dev, clinic, _, _, _, first, *_ in rows:
        if clinic and first is not None and (dev not in named or first < named[dev][0]):
            named[dev] = (first, clinic)
    counted: set[tuple[str, str]] = set()  # (device, clinic) pairs a clinic counts
    withdrawals = standing_withdrawals(store)
    withdrawn = withdrawn_exams(store, withdrawals)
    for dev, clinic, exams, health, status, first, last, last_dev, max_seq in rows:
        exams = int(exams) - withdrawn.get((dev, clinic), 0)
        clinic = clinic or named.get(dev, (0.0, ""))[1]
        d = devices.setdefault(dev, DeviceReport(dev, clinic))
        d.exams += int(exams)
        d.health += int(health)
        d.status += int(status)
        d.first_seen_ts = _min(d.first_seen_ts, first)
        d.last_seen_ts = _max(d.last_seen_ts, last)
        d.last_device_ts = _max(d.last_device_ts, last_dev)
        d.max_seq = max(d.max_seq, int(max_seq or 0))
        if last is not None and (dev not in latest_clinic or last > latest_clinic[dev][0]):
            latest_clinic[dev] = (last, clinic)
        # the device counts once in each clinic it sent from (its nameless messages too)
        c = clinics.setdefault(clinic, ClinicReport(clinic))
        c.devices += (dev, clinic) not in counted
        counted.add((dev, clinic))
        c.exams += int(exams)
        c.health += int(health)
        c.last_seen_ts = _max(c.last_seen_ts, last)
    for dev, (_, clinic) in latest_clinic.items():
        devices[dev].clinic_id = clinic

    seqs = f"SELECT device_id, seq FROM messages WHERE kind IN {SEQ_KINDS_SQL}"
    if store.has_table("resent"):
        resent = f"SELECT device_id, seq FROM resent WHERE kind IN {SEQ_KINDS_SQL}"
        seqs += " UNION ALL " + resent
        for dev, max_seq in store.query(
                f"SELECT device_id, MAX(seq) FROM ({resent}) r GROUP BY device_id"):
            if dev in devices:
                devices[dev].max_seq = max(devices[dev].max_seq, int(max_seq))

    # Holes: a row whose predecessor (by seq) is not seq - 1, plus the start before seq 1.
    for dev, seq, prev in store.query(
        "SELECT device_id, seq, prev FROM (SELECT device_id, seq, LAG(seq) OVER "
        f"(PARTITION BY device_id ORDER BY seq) AS prev FROM ({seqs}) s) t "
        "WHERE (prev IS NULL AND seq > 1) OR seq - prev > 1 ORDER BY device_id, seq"
    ):
        if dev not in devices:
            continue
        d = devices[dev]
        lo = 1 if prev is None else int(prev) + 1
        if int(seq) - lo > seq_jump:
            if len(d.seq_jumps) < max_gaps:
                d.seq_jumps.append([lo, int(seq) - 1])
            continue
        d.missing += int(seq) - lo
        if len(d.gaps) < max_gaps:
            d.gaps.append([lo, int(seq) - 1])

    latest = latest_health(store)
    for dev, health in latest:
        dropped = health.get("dropped", {})
        devices[dev].dropped_health = int(dropped.get("health", 0))
        devices[dev].dropped_exam = int(dropped.get("exam", 0))

    for dev, seq, state, received in _latest_status(store):
        d = devices[dev]
        d.last_state, d.last_state_ts = state, wall_ts_or_none(received)
        d.behind = max(0, int(seq) - d.max_seq)
    online_lags = _online_lags(store)
    for dev, lag in _health_lags(store):
        if dev in devices:
            devices[dev].clock_behind_s = clock_offset(lag, online_lags.get(dev))

    for d in devices.values():
        d.lost = max(0, d.missing - d.dropped_health - d.dropped_exam)
    for dev, clinic in sorted((registry or {}).items()):
        if dev not in devices:  # provisioned, and not one message stored since
            devices[dev] = DeviceReport(dev, clinic, never_heard=True)
            clinics.setdefault(clinic, ClinicReport(clinic)).devices += 1

    for d in devices.values():
        # the latest clinic (the per-device table's) only for what is the device's as a whole
        c = clinics.setdefault(d.clinic_id, ClinicReport(d.clinic_id))
        c.missing += d.missing
        c.dropped += d.dropped_health + d.dropped_exam
        c.lost += d.lost

    dead = store.query("SELECT reason FROM dead_letters")
    dead_by: dict[str, int] = {}
    for (reason,) in dead:
        key = " ".join(reason.split(":")[0].split()[:2])
        dead_by[key] = dead_by.get(key, 0) + 1
    return {
        "devices": [asdict(devices[k]) for k in sorted(devices)],
        "clinics": [asdict(clinics[k]) for k in sorted(clinics)],
        "dead_letters": {"total": len(dead), "by_reason": dict(sorted(dead_by.items()))},
        "recent_exams": recent_exams(store, withdrawals=withdrawals),
        "fleet": bundle_rows(latest),
    }


def standing_withdrawals(store: Store) -> dict[tuple[str, str], Withdrawal]:
    """(device, exam key): each exam's latest withdrawal entry, as the dashboard's rollup
    reads them (`withdrawal_entry`, the latest by the box's seq: `keep_latest`); one that
    restored the exam stands too (its `withdrawn` False)."""
    latest: dict[tuple[str, str], Withdrawal] = {}
    for dev, seq, msg_id, received, payload in store.query(
            "SELECT device_id, seq, msg_id, received_ts, payload FROM messages "
            "WHERE kind = 'withdrawal'"):
        try:
            data = stored_payload(payload)
        except (TypeError, ValueError):
            continue  # not as the collector writes one (a damaged database): left out
        if isinstance(seq, int) and (w := withdrawal_entry(data, seq, msg_id, received)):
            keep_latest(latest, (dev, w.exam_id), w)
    return latest


def withdrawn_exams(store: Store, latest: dict[tuple[str, str], Withdrawal] | None = None
                    ) -> dict[tuple[str, str], int]:
    """(device, clinic as stored): its exams the midwife withdrew and did not restore
    (`standing_withdrawals`, read here when not given). The dashboard counts them in no
    figure; the report counted them among the exams, so a box's and a clinic's exams here
    were more than the dashboard's (the seeded box-03a: 308 here, 304 there)."""
    if latest is None:
        latest = standing_withdrawals(store)
    out: dict[tuple[str, str], int] = {}
    for dev in sorted({d for (d, _), w in latest.items() if w.withdrawn}):
        for clinic, payload in store.query(
                "SELECT clinic_id, payload FROM messages WHERE kind = 'exam' "
                "AND device_id = ?", (dev,)):
            try:
                w = latest.get((dev, exam_key(stored_payload(payload).get("exam_id"))))
            except (TypeError, ValueError):
                continue
            if w is not None and w.withdrawn:
                out[(dev, clinic)] = out.get((dev, clinic), 0) + 1
    return out


def latest_health(store: Store) -> list[tuple[str, dict]]:
    """(device, payload) of each device's latest health message, by device: read once for
    the delivery figures and the model bundles."""
    return [(dev, health) for dev, payload in store.query(
        "SELECT m.device_id, m.payload FROM messages m JOIN (SELECT device_id, MAX(seq) AS s "
        "FROM messages WHERE kind = 'health' GROUP BY device_id) h "
        "ON m.device_id = h.device_id AND m.seq = h.s AND m.kind = 'health' "
        "ORDER BY m.device_id") if (health := _or_none(payload)) is not None]


def bundle_rows(latest: list[tuple[str, dict]]) -> list[dict]:
    """Each device's model bundle, from its latest health message (`latest_health`)."""
    return [{"device_id": dev, **health["fleet"]} for dev, health in latest
            if isinstance(health.get("fleet"), dict)]


def _latest_status(store: Store) -> list[tuple]:
    """(device, seq, state, received) of each device's most recently received status."""
    rows = store.query(
        "SELECT m.device_id, m.seq, m.payload, m.received_ts FROM messages m JOIN (SELECT "
        "device_id, MAX(received_ts) AS r FROM messages WHERE kind = 'status' GROUP BY "
        "device_id) s ON m.device_id = s.device_id AND m.received_ts = s.r AND m.kind = 'status'"
    )
    return [(dev, seq, status.get("state"), received) for dev, seq, p, received in rows
            if (status := _or_none(p)) is not None]


def _online_lags(store: Store) -> dict[str, float]:
    """Each device's received minus its box's time of its most recently received "online"
    status (sent at a connect, never queued), as the dashboard keeps it: newest first, each
    device's read until its first "online"."""
    out: dict[str, float] = {}
    done: set[str] = set()
    for dev, payload, received, device_ts in store.query(
            "SELECT device_id, payload, received_ts, device_ts FROM messages "
            "WHERE kind = 'status' ORDER BY device_id, received_ts DESC"):
        if dev in done:
            continue
        status = _or_none(payload)
        if status is not None and status.get("state") == "online":
            done.add(dev)
            if (lag := _lag(received, device_ts)) is not None:
                out[dev] = lag
    return out


def _lag(received: object, device_ts: object) -> float | None:
    """Received minus the box's time, where both are times (a row the collector did not
    write may hold anything: a text there made SQLite's difference the arrival itself)."""
    a, b = wall_ts_or_none(received), wall_ts_or_none(device_ts)
    return None if a is None or b is None else a - b


def _health_lags(store: Store) -> list[tuple[str, float]]:
    """(device, received minus the box's time) of each device's latest health message."""
    rows = store.query(
        "SELECT m.device_id, m.received_ts, m.device_ts FROM messages m JOIN (SELECT "
        "device_id, MAX(seq) AS s FROM messages WHERE kind = 'health' GROUP BY device_id) h "
        "ON m.device_id = h.device_id AND m.seq = h.s AND m.kind = 'health'")
    return [(dev, lag) for dev, received, device_ts in rows
            if (lag := _lag(received, device_ts)) is not None]


def _or_none(payload: object) -> dict | None:
    """`stored_payload`, or None for a row the collector did not write (left out)."""
    try:
        return stored_payload(payload)
    except (TypeError, ValueError):
        return None


def _min(a, b):
    return b if a is None else a if b is None else min(a, b)


def _max(a, b):
    return b if a is None else a if b is None else max(a, b)


def _num(value) -> str:
    return "-" if value is None else f"{value:g}"


def _state(d: dict) -> str:
    """The box's last status and since when: the broker's retained "online" of a box that
    went silent without its will reaching the broker stays "online" for weeks."""
    if d.get("never_heard"):
        return "never heard from (in the registry): check its broker password and URL"
    if not d["last_state"]:
        return "-"
    since = d.get("last_state_ts")
    return d["last_state"] + ("" if since is None else f" since {_ts(since)}")


def _ts(value: object) -> str:
    """A time as the report prints it; "-" for none, or for one that is no time (a stored
    exam's `ended_ts` the collector did not check: a text there failed the report)."""
    value = wall_ts_or_none(value)
    if value is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def format_report(rep: dict) -> str:
    lines = ["Devices"]
    head = (f"{'device':<20} {'clinic':<12} {'exams':>6} {'health':>6} {'max seq':>8} "
            f"{'missing':>7} {'dropped':>7} {'lost':>5} {'behind':>6}  {'last seen (UTC)':<19}"
            f"  state")
    lines += [head, "-" * len(head)]
    for d in rep["devices"]:
        lines.append(
            f"{d['device_id']:<20} {d['clinic_id'] or UNREGISTERED:<12} {d['exams']:>6} "
            f"{d['health']:>6} {d['max_seq']:>8} {d['missing']:>7} "
            f"{d['dropped_health'] + d['dropped_exam']:>7} {d['lost']:>5} {d['behind']:>6}  "
            f"{_ts(d['last_seen_ts']):<19}  {_state(d)}"
        )
        behind_s = d.get("clock_behind_s")
        if behind_s is not None and abs(behind_s) >= CLOCK_OFF_FLAG_S:
            lines.append(f"{'':<20} clock {span(abs(behind_s))} "
                         f"{'behind' if behind_s > 0 else 'ahead of'} the collector's: its "
                         "exams' ended times below are its clock's")
        if d["gaps"]:
            shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in d["gaps"])
            lines.append(f"{'':<20} gaps in seq: {shown}")
        if d.get("seq_jumps"):
            shown = ", ".join(f"{a}-{b}" for a, b in d["seq_jumps"])
            lines.append(f"{'':<20} seq jumps (a broken or hostile counter, not counted as "
                         f"lost): {shown}")
    lines += ["", "Clinics"]
    head = (f"{'clinic':<12} {'devices':>7} {'exams':>6} {'health':>6} {'missing':>7} "
            f"{'dropped':>7} {'lost':>5}  last seen (UTC)")
    lines += [head, "-" * len(head)]
    for c in rep["clinics"]:
        lines.append(
            f"{c['clinic_id'] or UNREGISTERED:<12} {c['devices']:>7} {c['exams']:>6} "
            f"{c['health']:>6} {c['missing']:>7} {c['dropped']:>7} {c['lost']:>5}  "
            f"{_ts(c['last_seen_ts'])}"
        )
    exams = rep.get("recent_exams") or []
    if exams:
        lines += ["", "Recent exams"]
        head = (f"{'ended (device clock, UTC)':<25} {'device':<20} "
                f"{'protocol':<{PROTOCOL_WIDTH}} "
                f"{'done':>5} {'frames':>7} {'views':>5} {'best q':>6} {'unsure':>6} "
                f"{'heads':>5} {'HC mm':>6} {'GA wk':>5}  withdrawn?; missed slots; "
                "most frequent deficiencies")
        lines += [head, "-" * len(head)]
        for e in exams:
            unsure = "-" if e["uncertain_fraction"] is None else f"{e['uncertain_fraction']:.0%}"
            done = (f"{e['captured']}/{e['required']}" if e.get("required") is not None
                    else "-")
            quality = "-" if e.get("best_quality") is None else f"{e['best_quality']:.2f}"
            notes = "; ".join(x for x in (_withdrawn_words(e), _missed_words(e), ", ".join(
                deficiency_label(str(d)) for d in e.get("deficiencies") or [])) if x)
            lines.append(
                f"{_ts(e['ended_ts']):<25} {e['device_id']:<20} "
                f"{e.get('protocol_title') or '-':<{PROTOCOL_WIDTH}} "
                f"{done:>5} {e['frames'] or 0:>7} {len(e['views']):>5} {quality:>6} "
                f"{unsure:>6} {_num(e['heads_measured']):>5} {_num(e['hc_mm']):>6} "
                f"{_num(e['ga_weeks']):>5}  {notes or '-'}")
    dl = rep["dead_letters"]
    lines += ["", f"Dead letters: {dl['total']}"]
    for reason, n in dl["by_reason"].items():
        lines.append(f"  {reason}: {n}")
    return "\n".join(printable(line) for line in lines)
