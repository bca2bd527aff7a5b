"""Payloads for the MQTT message kinds: ``exam``, ``health``, ``status``, ``dates`` and
``withdrawal``.

Each payload is a flat JSON object with an envelope (``schema``, ``kind``, ``msg_id``,
``seq``, ``boot_id``, ``device_id``, ``clinic_id``, wall time ``ts``, monotonic ``mono_s``)
and a body. ``msg_id`` and ``seq`` of exam and health are filled by the outbox when the
message is stored. What a payload may hold is defined by ``wire.schema``.

Privacy: nothing that identifies the mother and no images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from wire.schema import EXAM_MAX_BYTES, NOT_A_VIEW, SCHEMA_VERSION, floor_digits

PLANE_MODEL = "plane_student"  # the model whose version an exam keeps when space is short


def envelope(kind: str, device_id: str, clinic_id: str, boot_id: str) -> dict:
    """Fields every message carries; ``msg_id``/``seq`` come from the outbox."""
    return {
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "device_id": device_id,
        "clinic_id": clinic_id,
        "boot_id": boot_id,
        "ts": round(time.time(), 3),
        "mono_s": round(time.monotonic(), 3),
    }


# What an exam queued again gets anew (its outbox lost, re-queued from the journal at a
# start): a new boot id, seq, wall time and uptime, under the same msg_id. How much of a body
# is shed is decided with these at the most characters each can take, never at their values
# in hand, so the same exam always carries the same body; else the collector stores a
# conflict dead letter (central/db.py, same_content). msg_id: a UUID; seq: up to the
# schema's 2**53 - 1; boot_id: the kernel's UUID, or "proc-" and 32 hex digits
# (edge/store/outbox.py, read_boot_id); ts and mono_s: the schema's maxima at the 3
# decimals envelope() keeps. The box's own fields (device, clinic) are counted as they are.
RESENT_FIELD_CHARS = {"msg_id": 36 + 2, "seq": 16, "boot_id": 37 + 2,
                      "ts": len("4102444800.000"), "mono_s": len("10000000000.000")}
RESENT_ALLOWANCE = sum(len(json.dumps(k)) + 1 + n + 1 for k, n in RESENT_FIELD_CHARS.items())


def _exam_size(env: dict, body: dict) -> int:
    """The most bytes `body` can take on the wire in any envelope this box gives it."""
    kept = {k: v for k, v in env.items() if k not in RESENT_FIELD_CHARS}
    boot_id = env.get("boot_id")
    longer_boot = max(0, len(json.dumps(boot_id)) - RESENT_FIELD_CHARS["boot_id"]) \
        if isinstance(boot_id, str) else 0  # a boot id of another making: as it is
    return (len(json.dumps({**kept, **body}, separators=(",", ":"))) + RESENT_ALLOWANCE
            + longer_boot)


def _compact(value):
    """A figure as few characters as JSON allows: 1.0 as 1 (the consumers read numbers)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _shed(body: dict) -> list[dict]:
    """Ever smaller versions of an exam body, least useful detail first, so a busy exam still
    fits in 1 KB instead of being refused: the faults not counted as deficiencies (the
    district tallies none of them), then the HC spread, then the reasons head frames were
    declined (kept as one count), then plane confidences and qualities cut to two digits
    (1.0 as 1), then every model but the plane model (every health message names them all),
    then the quality of entries that are not a standard plane (Background, uncertain), then
    those entries (`frames_scored` still counts every frame), then which missing slots were
    found but not good enough (`missing_seen`), then the names of the protocol's missing
    planes (their count stays), then the deficiencies, then the per-plane qualities, then
    the age range of the head. A second-trimester screen of 13 planes used to shed its
    missing planes' names and its deficiencies while it still carried a model list health
    repeats and Background's quality."""
    steps = []
    if "deficiencies_not_counted" in body:
        body = {k: v for k, v in body.items() if k != "deficiencies_not_counted"}
        steps.append(body)
    bio = body.get("biometry")
    if isinstance(bio, dict):
        bio = {k: v for k, v in bio.items() if k not in ("hc_p10_mm", "hc_p90_mm")}
        steps.append({**body, "biometry": bio})
        declined = sum(v for v in bio.get("declined", {}).values() if isinstance(v, int))
        bio = {**bio, "declined": {"all": declined} if declined else {}}
        body = {**body, "biometry": bio}
        steps.append(body)

    def planes_as(keep: int, digits: int, no_quality: tuple[str, ...] = ()) -> dict:
        # [count, confidence] is the shortest entry the wire schema takes
        return {k: [v[0], *(_compact(floor_digits(x, digits)) if isinstance(x, float) else x
                            for x in v[1:2 if k in no_quality else keep])]
                if isinstance(v, list) and v else v
                for k, v in body["planes"].items()}

    if isinstance(body.get("planes"), dict):
        body = {**body, "planes": planes_as(3, 2)}
        steps.append(body)
    models = body.get("models")
    if isinstance(models, dict) and len(models) > 1:
        # every health message names the installed models too
        first = PLANE_MODEL if PLANE_MODEL in models else sorted(models)[0]
        body = {**body, "models": {first: models[first]}}
        steps.append(body)
    if isinstance(body.get("planes"), dict):
        body = {**body, "planes": planes_as(3, 2, NOT_A_VIEW)}
        steps.append(body)
        body = {**body, "planes": {k: v for k, v in body["planes"].items()
                                   if k not in NOT_A_VIEW}}
        steps.append(body)
    protocol = body.get("protocol")
    if isinstance(protocol, dict) and "missing_seen" in protocol:
        # the district then counts the missing slots as of unknown kind, never wrongly
        protocol = {k: v for k, v in protocol.items() if k != "missing_seen"}
        body = {**body, "protocol": protocol}
        steps.append(body)
    if isinstance(protocol, dict) and protocol.get("missing"):
        body = {**body, "protocol": {**protocol, "missing": []}}
        steps.append(body)
    if "deficiencies" in body:
        body = {k: v for k, v in body.items() if k != "deficiencies"}
        steps.append(body)
    if isinstance(body.get("planes"), dict):
        body = {**body, "planes": planes_as(2, 2, NOT_A_VIEW)}
        steps.append(body)
    bio = body.get("biometry")
    if isinstance(bio, dict) and ("ga_low_weeks" in bio or "best_frames" in bio):
        drop = ("ga_low_weeks", "ga_high_weeks", "best_frames")
        steps.append({**body, "biometry": {k: v for k, v in bio.items() if k not in drop}})
    return steps


def build_exam(env: dict, body: dict) -> dict:
    """Envelope plus exam body in at most 1 KB once sent, shedding detail if it must;
    refuses (ValueError) only a body that cannot be made to fit. What is shed depends on
    the body and the box (`RESENT_ALLOWANCE`), so the same exam queued again under a new
    envelope carries the same body."""
    size = _exam_size(env, body)
    for smaller in _shed(body):
        if size <= EXAM_MAX_BYTES:
            break
        body, size = smaller, _exam_size(env, smaller)
    if size > EXAM_MAX_BYTES:
        raise ValueError(f"exam summary would be up to {size} bytes, over {EXAM_MAX_BYTES}")
    return {**env, **body}


def build_dates(env: dict, exam_id: str, ga_dates_weeks: float | None,
                entered_ts: float) -> dict:
    """A correction of an exam's age by dates, for dates entered, changed or cleared (None)
    after its summary was queued. Weeks only: the date itself never leaves the box."""
    weeks = None if ga_dates_weeks is None else round(float(ga_dates_weeks), 2)
    return {**env, "exam_id": exam_id, "ga_dates_weeks": weeks,
            "entered_ts": round(float(entered_ts), 3)}


def build_withdrawal(env: dict, exam_id: str, withdrawn: bool, reason: str,
                     entered_ts: float) -> dict:
    """An ended exam withdrawn by the midwife (or restored: `withdrawn` False), with the
    reason from the page's fixed list. Nothing of the woman: the exam's id and the reason."""
    return {**env, "exam_id": exam_id, "withdrawn": bool(withdrawn), "reason": reason,
            "entered_ts": round(float(entered_ts), 3)}


def read_temperature_c() -> float | None:
    """SoC temperature where the kernel exposes it (Raspberry Pi: thermal_zone0)."""
    try:
        raw = Path("/sys/class/thermal/thermal_zone0/temp").read_text().strip()
        return round(int(raw) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def build_health(
    env: dict,
    loop_stats: dict,
    queue: dict,
    dropped: dict,
    disk_free_mb: float | None,
    models: dict[str, str],
    uptime_s: float,
    interval_s: float,
    fleet: dict | None = None,
) -> dict:
    """Periodic health: the loop's figures plus queue depth, drops, disk, temperature, and
    with the fleet on, the installed model bundle, its state and the last rollback."""
    stats: dict = {}
    for key, value in list(loop_stats.items())[:24]:
        if isinstance(value, bool) or value is None:
            stats[str(key)[:32]] = value
        elif isinstance(value, int | float):
            stats[str(key)[:32]] = round(float(value), 3) if isinstance(value, float) else value
        elif isinstance(value, str):
            stats[str(key)[:32]] = value[:64]
    try:
        sys_uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        sys_uptime = None
    extra = {"fleet": fleet} if fleet is not None else {}
    return {
        **env,
        **extra,
        "interval_s": interval_s,
        "uptime_s": round(uptime_s, 1),
        "sys_uptime_s": sys_uptime,
        "loop": stats,
        "queue": {k: int(queue.get(k, 0)) for k in
                  ("pending", "pending_exam", "pending_health", "rejected", "used_bytes")},
        "dropped": {k: int(dropped.get(k, 0)) for k in
                    ("health", "exam", "health_new", "exam_new")},
        "disk_free_mb": None if disk_free_mb is None else round(disk_free_mb, 1),
        "temp_c": read_temperature_c(),
        "models": dict(sorted((str(k)[:32], str(v)[:16]) for k, v in models.items())[:4]),
    }


def build_status(env: dict, msg_id: str, state: str, last_seq: int, pending: int) -> dict:
    """Retained ``status``: ``online`` on every connect, ``offline`` as the last will.

    ``seq`` is the outbox's last allocated sequence (status does not consume one), so the
    collector knows how far the device's sequence has got even before the backlog arrives.
    """
    return {**env, "msg_id": msg_id, "seq": int(last_seq), "state": state,
            "pending": int(pending)}


