"""A simulated district for the dashboard's scale tests: ``sonoedge-central seed``.

Defaults: 50 clinics in 5 districts, a box each (every tenth clinic has two), two years
ending today, about 100,000 exams and the health and status messages that go with them.
Every payload follows the wire schemas (tests validate a sample), and the district is
uneven on purpose, as a real one is: clinics scan at different rates and skills, improve
over time, boxes are switched off for days, links go down for a while (messages arrive
late, all at once), a few messages are lost, a few are dropped by a full outbox, some boxes
run hot or short of disk, and some lag behind on model versions.

The boxes send health every ``health_every_s`` (1 hour here) while the clinic is open. The
device's default is every minute; the dashboard reads health through its rollup (latest per
device, counts per day), so its pages do not grow with that rate, only the rollup's work.
Deterministic for a given seed.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from dataclasses import dataclass

from central.dashboard.reference import ig_hc_mean_sd
from central.db import _INSERT_MSG, DbError, Store
from wire.dating import hadlock_ga_weeks
from wire.schema import WITHDRAWAL_REASONS

SECOND_TRIMESTER = ["Brain (Tv.)", "Brain (Cb.)", "Profile", "Lips", "Spine (sag.)",
                    "Spine (cor.)", "4CH", "LVOT", "RVOT", "3VV", "Abdominal", "Kidneys",
                    "Femur"]
HEAD_SLOT = "Head (HC, BPD)"
CRITERIA = ["gain", "sharpness", "zoom", "centred", "content", "plane_confident",
            "head_inside", "shadow", "noise", "contrast", "ellipse_regular", "sector_cut"]
MODELS_OLD = {"plane_student": "1.0.0", "head_segmenter": "1.1.0", "quality_head": "1.0.0"}
MODELS_NEW = {"plane_student": "1.1.0", "head_segmenter": "1.2.0", "quality_head": "1.0.0"}
# The demo district's midwives enter the last period for a share of the measured exams
# that grows with the clinic's skill (from about 30% to 95%), and a remembered period
# misses the true age by about a week (SD): choices for a seeded district that shows both
# kinds of exam and clinics that date unevenly, not figures from a clinic.
DATED_SHARE_AT = (0.45, 0.3, 1.05, 0.95)  # (skill, share) at two skills, linear between
DATES_SD_WEEKS = 1.0
# Of the dated exams, the share whose dates she entered after the exam ended (on the
# report, once the woman found her card): the summary leaves without them and a ``dates``
# correction follows a few minutes later, with the box's next seq. Drawn from a random
# stream of its own, so that the rest of the seeded district is the same with or without.
LATE_DATES_SHARE = 0.15
LATE_DATES_AFTER_S = (60.0, 1800.0)
# A box that went without a clean shutdown is said "offline" by the broker, its will, within
# a keepalive and a half (edge/uplink/mqtt.py keepalive_s 30 s): a little after the clinic
# closed.
WILL_AFTER_S = 45.0
# Exams a midwife withdraws (a test scan, the wrong woman ...), a while after they ended,
# for one of the page's reasons: counted in no figure, only as withdrawn.
WITHDRAWN_SHARE = 0.01
# One box whose video grabber was swapped for one that stretches the picture, these last
# days: the box refuses every head it finds (`screen_stretched`), and the devices and
# clinics pages flag a set-up fault. Its exams are otherwise as they were (no random draw
# added), so the rest of the seeded district is the same with or without.
SETUP_FAULT_DEVICE = "box-03a"
SETUP_FAULT_DAYS = 21


def dated_share(skill: float) -> float:
    s0, p0, s1, p1 = DATED_SHARE_AT
    return min(p1, max(p0, p0 + (skill - s0) * (p1 - p0) / (s1 - s0)))


@dataclass
class SeedSettings:
    clinics: int = 50
    districts: int = 5
    days: int = 730
    exams_per_clinic_day: float = 3.85  # on open days: 50 x ~520 x 3.85 = ~100,000 exams
    health_every_s: float = 3600.0
    seed: int = 17
    end_ts: float | None = None  # default: now
    collector: str = "seed"


@dataclass
class SeedResult:
    exam: int = 0
    health: int = 0
    status: int = 0
    dates: int = 0
    withdrawal: int = 0
    devices: int = 0
    seconds: float = 0.0


def clinic_ids(n: int) -> list[str]:
    return [f"clinic-{i + 1:02d}" for i in range(n)]


def district_of(index: int, clinics: int, districts: int) -> str:
    return f"district-{index * districts // clinics + 1}"


def _mid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class _Device:
    def __init__(self, device_id: str, clinic_id: str, rng: random.Random, start_day: int,
                 days: int):
        self.id, self.clinic = device_id, clinic_id
        self.seq = 0
        self.boot = 0
        self.dropped = {"health": 0, "exam": 0}
        self.disk = rng.uniform(2000, 30000)
        self.disk_leak = rng.choice([0.0, 0.0, 0.0, 40.0, 200.0])  # MB a day, a few fill up
        self.temp = rng.uniform(45, 62) + (18 if rng.random() < 0.08 else 0)
        self.upgrade_day = start_day + int(days * rng.uniform(0.4, 1.3))  # some never do
        self.rolled_back = rng.random() < 0.06
        self.off: set[int] = set()  # days switched off
        self.link_down: set[int] = set()  # days whose messages arrive later
        for _ in range(rng.randint(1, 4)):
            first = start_day + rng.randrange(days)
            self.off.update(range(first, first + rng.randint(2, 20)))
        for _ in range(rng.randint(0, 6)):
            first = start_day + rng.randrange(days)
            self.link_down.update(range(first, first + rng.randint(1, 6)))


def generate(settings: SeedSettings):
    """Yield (device_id, clinic_id, kind, seq, boot_id, ts, mono_s, received_ts, payload)
    in the order the devices make them, day by day."""
    rng = random.Random(settings.seed)
    late_rng = random.Random(f"{settings.seed}-late-dates")
    withdraw_rng = random.Random(f"{settings.seed}-withdrawn")
    will_rng = random.Random(f"{settings.seed}-will")  # apart: the other draws stay as they were
    end = settings.end_ts or time.time()
    end_day = int(end // 86400)
    start_day = end_day - settings.days + 1
    clinics = clinic_ids(settings.clinics)
    devices: list[_Device] = []
    rate: dict[str, float] = {}
    skill: dict[str, float] = {}
    saturday: dict[str, bool] = {}
    for i, c in enumerate(clinics):
        rate[c] = settings.exams_per_clinic_day * rng.uniform(0.35, 1.65)
        skill[c] = rng.uniform(0.45, 0.9)
        saturday[c] = rng.random() < 0.3
        for k in range(2 if i % 10 == 9 else 1):
            devices.append(_Device(f"box-{i + 1:02d}{'abcdefgh'[k]}", c, rng, start_day,
                                   settings.days))
    for day in range(start_day, end_day + 1):
        weekday = (day + 3) % 7  # 0 = Monday
        for dev in devices:
            c = dev.clinic
            if weekday == 6 or (weekday == 5 and not saturday[c]) or day in dev.off:
                continue
            opens = day * 86400 + 8 * 3600 + rng.uniform(-1800, 1800)
            closes = opens + 8 * 3600
            if closes > end:
                closes = end
            if closes <= opens:
                continue
            dev.boot += 1
            boot_id = f"{dev.id}-b{dev.boot}"
            share = 1.0 / sum(1 for d in devices if d.clinic == c)
            n_exams = _poisson(rng, rate[c] * share * (closes - opens) / (8 * 3600))
            exam_times = sorted(rng.uniform(opens + 600, closes) for _ in range(n_exams))
            health_times = [opens + k * settings.health_every_s
                            for k in range(1, int((closes - opens) // settings.health_every_s)
                                           + 1)]
            events = sorted([(t, "exam") for t in exam_times] +
                            [(t, "health") for t in health_times])
            late = day in dev.link_down
            arrive = closes + rng.uniform(86400, 3 * 86400) if late else None
            models = MODELS_NEW if day >= dev.upgrade_day else MODELS_OLD
            progress = (day - start_day) / max(1, settings.days)
            # sent at the connect it announces (edge/uplink/mqtt.py): a day without a link
            # says "online" when the link comes back (not yet, past the seed's end), not
            # when the clinic opened
            if (arrive or opens) <= end:
                yield _status(dev, boot_id, arrive or opens, "online", rng, arrive)
            for t, kind in events:
                dev.seq += 1
                received = (arrive if arrive else t + rng.uniform(0.2, 8.0))
                if received > end:
                    continue  # still on its way
                if kind == "health" and rng.random() < 0.002:
                    dev.dropped["health"] += 1  # the outbox was full: dropped on the box
                    continue
                if rng.random() < 0.0015:
                    continue  # lost on the way
                env = {"schema": 1, "kind": kind, "msg_id": _mid(rng), "seq": dev.seq,
                       "boot_id": boot_id, "device_id": dev.id, "clinic_id": c,
                       "ts": round(t, 3), "mono_s": round(t - opens + 20.0, 3)}
                follow: list[tuple[str, random.Random, dict]] = []  # later words about it
                if kind == "exam":
                    body = _exam(rng, env, t, skill[c] + 0.15 * progress, models)
                    if (later := _late_dates(late_rng, body)) is not None:
                        follow.append(("dates", late_rng, {"ga_dates_weeks": later}))
                    if dev.id == SETUP_FAULT_DEVICE and day > end_day - SETUP_FAULT_DAYS:
                        _heads_refused(body, "screen_stretched")
                    if withdraw_rng.random() < WITHDRAWN_SHARE:
                        follow.append(("withdrawal", withdraw_rng, {
                            "withdrawn": True,
                            "reason": withdraw_rng.choice(WITHDRAWAL_REASONS)}))
                else:
                    dev.disk = max(5.0, dev.disk - dev.disk_leak / 8) \
                        if dev.disk_leak else dev.disk
                    body = _health(rng, env, t - opens, dev, settings.health_every_s, models)
                yield (dev.id, c, kind, dev.seq, boot_id, t, env["mono_s"], received,
                       json.dumps(body, separators=(",", ":")))
                for later_kind, later_rng, fields in follow:
                    dev.seq += 1
                    after = later_rng.uniform(*LATE_DATES_AFTER_S)
                    env = {**env, "kind": later_kind, "msg_id": _mid(later_rng),
                           "seq": dev.seq, "ts": round(t + after, 3),
                           "mono_s": round(env["mono_s"] + after, 3)}
                    word = {**env, "exam_id": body["exam_id"], **fields, "entered_ts": env["ts"]}
                    received = arrive if arrive else t + after + later_rng.uniform(0.2, 8.0)
                    if received <= end:  # else still on its way
                        yield (dev.id, c, later_kind, dev.seq, boot_id, t + after,
                               env["mono_s"], received, json.dumps(word, separators=(",", ":")))
            # The day ends "offline": said by the box as it shuts down cleanly (7 days in
            # 10), else by the broker for it, its will, a keepalive and a half after it went
            # (edge/uplink/mqtt.py). A day without a link ends so once the link came back and
            # the box had sent that day's messages (`arrive`). A day left "online" was a box
            # connected with its program stuck, which the devices page flags "online but
            # silent: restart it": on a Monday morning a third of the seed's boxes asked to
            # be restarted (an officer's walk).
            clean = rng.random() < 0.7  # drawn as before the will was sent: the same seed
            if closes < end:
                went = closes if arrive is None else arrive + WILL_AFTER_S
                if clean:  # the same draws as before for the rest of the seed
                    offline = _status(dev, boot_id, went, "offline", rng,
                                      None if arrive is None else went)
                else:
                    went += WILL_AFTER_S if arrive is None else 0.0
                    offline = _status(dev, boot_id, went, "offline", will_rng,
                                      None if arrive is None else went)
                if offline[7] <= end:  # else still on its way, as the day's messages are
                    yield offline


def _status(dev: _Device, boot_id: str, t: float, state: str, rng: random.Random,
            arrive: float | None):
    body = {"schema": 1, "kind": "status", "msg_id": _mid(rng), "seq": dev.seq,
            "boot_id": boot_id, "device_id": dev.id, "clinic_id": dev.clinic,
            "ts": round(t, 3), "mono_s": 20.0, "state": state, "pending": 0}
    received = arrive if arrive else t + rng.uniform(0.1, 2.0)
    return (dev.id, dev.clinic, "status", dev.seq, boot_id, t, 20.0, received,
            json.dumps(body, separators=(",", ":")))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _beta_q(rng: random.Random, skill: float) -> float:
    a = 2.0 + 6.0 * min(1.0, max(0.05, skill))
    return round(min(1.0, max(0.0, rng.betavariate(a, 3.0))), 3)


def _exam(rng: random.Random, env: dict, t: float, skill: float, models: dict) -> dict:
    second = rng.random() < 0.3
    duration = rng.uniform(120, 900)
    frames = int(duration * rng.uniform(8, 15))
    planes: dict[str, list] = {}
    wanted = SECOND_TRIMESTER if second else ["Brain (Tv.)", "Brain (Cb.)"]
    for plane in wanted:
        if not second and plane == "Brain (Cb.)" and rng.random() < 0.6:
            continue
        if rng.random() < 0.08 + 0.25 * (1 - skill):
            continue  # never found
        planes[plane] = [rng.randint(3, 120), round(rng.uniform(0.6, 0.99), 3),
                         _beta_q(rng, skill)]
    planes["Background"] = [rng.randint(10, 400), round(rng.uniform(0.7, 0.99), 3), 0.0]
    planes["uncertain"] = [rng.randint(0, 60), round(rng.uniform(0.3, 0.6), 3)]
    if second:
        missing = [p for p in SECOND_TRIMESTER if p not in planes or planes[p][2] < 0.5]
        protocol = {"name": "second-trimester", "required": 13, "captured": 13 - len(missing),
                    "missing": missing}
        if missing:  # found but under 0.5, as a box says it (edge/exam/session.py)
            protocol["missing_seen"] = [p for p in missing if p in planes]
    else:
        heads = [planes[p][2] for p in ("Brain (Tv.)", "Brain (Cb.)") if p in planes]
        ok = bool(heads) and max(heads) >= 0.5
        protocol = {"name": "biometry", "required": 1, "captured": int(ok),
                    "missing": [] if ok else [HEAD_SLOT]}
        if not ok:
            protocol["missing_seen"] = [HEAD_SLOT] if heads else []
    scored = sum(v[0] for v in planes.values())
    body = {**env, "exam_id": f"e{env['seq']}-{env['boot_id'][-6:]}".replace(".", "_")[:36],
            "source_id": f"{rng.getrandbits(48):012x}", "started_ts": round(t - duration, 3),
            "ended_ts": round(t, 3), "duration_s": round(duration, 1), "frames": frames,
            "frames_scored": scored, "frames_failed": rng.randint(0, 3), "planes": planes,
            "latency_ms": {"p50": round(rng.uniform(20, 60), 1),
                           "p90": round(rng.uniform(60, 120), 1)},
            "models": dict(models), "protocol": protocol,
            "ended_by": rng.choice(["gap", "gap", "gap", "command", "source_end", "recovered",
                                    "stopped"]),
            "deficiencies": {c: rng.randint(5, 200) for c in
                             rng.sample(CRITERIA, rng.randint(0, 3))}}
    head_q = [planes[p][2] for p in ("Brain (Tv.)", "Brain (Cb.)") if p in planes]
    if head_q:
        ga_true = rng.uniform(15.0, 39.5)
        mean, sd = ig_hc_mean_sd(ga_true)
        z = rng.gauss(0, 1) if rng.random() > 0.01 else rng.choice([-1, 1]) * rng.uniform(2.5, 4)
        hc = round(max(60.0, mean + z * sd), 1)
        spread = rng.uniform(1.0, 6.0)
        ga = _ga(hc)
        body["biometry"] = {
            "measured": rng.randint(1, 40), "declined": {"head_cut_off": rng.randint(0, 5)},
            "hc_mm": hc, "hc_p10_mm": round(hc - spread, 1), "hc_p90_mm": round(hc + spread, 1),
            "bpd_mm": round(hc / 3.4, 1), "ofd_mm": round(hc / 2.6, 1), "ga_weeks": ga,
            "ga_low_weeks": _ga(hc - spread / 2), "ga_high_weeks": _ga(hc + spread / 2),
            "best_frames": 3}
        if rng.random() < dated_share(skill):  # she entered the last period on the page
            dates = ga_true + rng.gauss(0, DATES_SD_WEEKS)
            body["biometry"]["ga_dates_weeks"] = round(min(45.0, max(0.0, dates)), 2)
    return body


def _heads_refused(body: dict, status: str) -> None:
    """The exam as a box whose set-up refuses every head sends it: the frames it had
    measured and declined, all declined for `status`, and no head figure."""
    bio = body.get("biometry")
    if bio:
        body["biometry"] = {"measured": 0,
                            "declined": {status: bio["measured"] + sum(bio["declined"].values())}}


def _late_dates(rng: random.Random, body: dict) -> float | None:
    """For a share of the dated exams, the age by dates taken off the summary, to follow it
    as a correction: the weeks it will carry, else None."""
    bio = body.get("biometry") or {}
    if "ga_dates_weeks" not in bio or rng.random() >= LATE_DATES_SHARE:
        return None
    return bio.pop("ga_dates_weeks")


def _ga(hc: float) -> float | None:
    ga = hadlock_ga_weeks(hc)
    return None if ga is None else round(ga, 1)


def _health(rng: random.Random, env: dict, uptime: float, dev: _Device, interval: float,
            models: dict) -> dict:
    pending = rng.randint(0, 3)
    return {**env, "interval_s": interval, "uptime_s": round(uptime, 1),
            "sys_uptime_s": round(uptime + 30, 1),
            "loop": {"fps": round(rng.uniform(9, 15), 2), "frames": int(uptime * 12)},
            "queue": {"pending": pending, "pending_exam": min(pending, 1),
                      "pending_health": pending - min(pending, 1), "rejected": 0,
                      "used_bytes": pending * 900},
            "dropped": {"health": dev.dropped["health"], "exam": dev.dropped["exam"],
                        "health_new": 0, "exam_new": 0},
            "disk_free_mb": round(dev.disk, 1),
            "temp_c": round(dev.temp + rng.uniform(-3, 6), 1), "models": dict(models),
            "fleet": _fleet(dev, models, int(env["ts"] // 86400))}


# The week before a box that later rolls back takes the district's bundle, its health says
# why the bundle was not taken yet (edge/fleet/agent.py's texts): days before, and the error.
FLEET_ERRORS = ((6, "bundle models-2026.1 from the district refused: manifest signed by an "
                    "unknown key"),
                (3, "cannot install (No space left on device); the models in use are "
                    "unchanged; the bundle is fetched again in 60 min"))


def _fleet(dev: _Device, models: dict, day: int) -> dict:
    """The bundle state health reports (edge/fleet): factory models until the box takes the
    district's bundle; a few boxes rolled a bad one back, and failed to take it first."""
    if models is MODELS_OLD:
        out = {"group": "district", "bundle": "factory", "state": "factory", "slot": "-"}
    else:
        out = {"group": "district", "bundle": "models-2026.1", "state": "confirmed",
               "slot": "b"}
    if dev.rolled_back:
        out["rollback"] = {"from": "models-2026.2", "to": out["bundle"],
                           # what edge/fleet/slots.py says of a rollback: a failed
                           # self-test is a refusal and never installs, so never rolls back
                           "reason": "the loop crashed 3 times within 10 min of the swap",
                           "ts": None}
        for days, error in FLEET_ERRORS:  # the latest that began before this day
            if dev.upgrade_day - days <= day < dev.upgrade_day:
                out["error"] = error
    return out


def seed(db_url: str, settings: SeedSettings | None = None, batch: int = 5000) -> SeedResult:
    """Fill an empty collector database with the simulated district, and write its
    clinic-to-district map for the dashboard. Refuses a database that holds messages."""
    settings = settings or SeedSettings()
    t0 = time.perf_counter()
    store = Store(db_url)
    try:
        if store.query("SELECT COUNT(*) FROM messages")[0][0]:
            raise DbError(f"{store.shown()}: already holds messages; seed an empty database")
        out = SeedResult()
        seen_devices: set[str] = set()
        rows: list[tuple] = []

        def flush() -> None:
            if not rows:
                return
            _write(store, rows)
            rows.clear()

        for dev, clinic, kind, seq, boot, ts, mono, received, payload in generate(settings):
            seen_devices.add(dev)
            msg_id = payload[payload.index('"msg_id":"') + 10:][:36]
            rows.append((msg_id, dev, clinic, kind, seq, boot, ts, mono, received,
                         settings.collector, payload))
            setattr(out, kind, getattr(out, kind) + 1)
            if len(rows) >= batch:
                flush()
        flush()
        out.devices = len(seen_devices)
        # its collector ran until the seed's end, as a live district's does (the pages say
        # no collector runs when none has marked itself alive for a quarter of an hour)
        end = time.time() if settings.end_ts is None else settings.end_ts
        store.mark_alive(settings.collector, end - settings.days * 86400.0, end)
    finally:
        store.close()
    from central.dashboard.store import open_db

    db = open_db(db_url)
    try:
        with db.tx():
            for i, c in enumerate(clinic_ids(settings.clinics)):
                db.execute("INSERT INTO dash.clinics (clinic_id, district, name) VALUES "
                           "(?, ?, ?) ON CONFLICT (clinic_id) DO UPDATE SET district = "
                           "excluded.district, name = excluded.name",
                           (c, district_of(i, settings.clinics, settings.districts),
                            f"Clinic {i + 1}"))
    finally:
        db.close()
    out.seconds = time.perf_counter() - t0
    return out


def _write(store: Store, rows: list[tuple]) -> None:
    if store.pg:
        with store.conn.cursor() as cur:
            with cur.copy("COPY messages (msg_id, device_id, clinic_id, kind, seq, boot_id, "
                          "device_ts, mono_s, received_ts, collector, payload) "
                          "FROM STDIN") as copy:
                for r in rows:
                    copy.write_row(r)
        store.conn.commit()
    else:
        store.conn.executemany(_INSERT_MSG, rows)
        store.conn.commit()
