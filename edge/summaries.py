"""Payloads for the three MQTT message kinds: ``exam``, ``health`` and ``status``.

Each payload is a flat JSON object with an envelope (``schema``, ``kind``, ``msg_id``,
``seq``, ``boot_id``, ``device_id``, ``clinic_id``, wall time ``ts``, monotonic ``mono_s``)
and a body. ``msg_id`` and ``seq`` of exam and health are filled by the outbox when the
message is stored. The JSON Schemas in ``edge/schemas/`` are the contract with the
collector; ``validate()`` is a small draft 2020-12 subset validator so neither the device
nor the collector needs ``jsonschema`` at run time (the tests cross-check with it).

Privacy: nothing that identifies the mother and no images. The source is reported only as
a short hash, because file and folder names in clinics often carry patient names.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import deque
from functools import cache
from pathlib import Path

from edge.biometry import MEASURED, hadlock_ga_weeks

SCHEMA_VERSION = 1
KINDS = ("exam", "health", "status")
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
EXAM_MAX_BYTES = 1024
PLANES = (
    "3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur", "Kidneys",
    "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)",
)
# Frames the plane model abstained on are counted as such: a district site must be able to
# tell "the model was unsure" from "a plane outside the list".
UNCERTAIN = "uncertain"
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


def source_id(source: str) -> str:
    """A short stable hash of the source name: groups exams by source without the name."""
    return hashlib.sha256(str(source).encode("utf-8", "replace")).hexdigest()[:12]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[idx], 2)


def _model_versions(results: list[dict], extra: dict[str, str] | None) -> dict[str, str]:
    models: dict[str, str] = {}
    for name, version in (extra or {}).items():
        models[str(name)[:32]] = str(version)[:16]
    for r in results:
        tag = r.get("model")
        if isinstance(tag, str) and tag:
            name, _, version = tag.partition("@")
            models.setdefault(name[:32], (version or "?")[:16])
    return dict(sorted(models.items())[:4])


class ExamTally:
    """The running totals of one exam, so a loop that runs for days holds a few numbers
    per plane instead of every frame. Latency percentiles use the most recent frames."""

    LATENCY_WINDOW = 10_000

    def __init__(self) -> None:
        self.frames = 0
        self.failed = 0
        self.planes: dict[str, list] = {}
        self.latencies: deque[float] = deque(maxlen=self.LATENCY_WINDOW)
        self.model_tags: dict[str, None] = {}
        self.head_mm: deque[tuple[float, float, float]] = deque(maxlen=self.LATENCY_WINDOW)
        self.head_declined: dict[str, int] = {}

    def add(self, r: dict) -> None:
        self.frames += 1
        tag = r.get("model")
        if isinstance(tag, str) and tag and len(self.model_tags) < 16:
            self.model_tags[tag] = None
        if r.get("error"):
            self.failed += 1
            return
        lat = r.get("latency_ms")
        if isinstance(lat, int | float):
            self.latencies.append(float(lat))
        plane = r.get("plane")
        if not isinstance(plane, str):
            return
        label = plane if plane in PLANES or plane == UNCERTAIN else "other"
        conf = r.get("plane_confidence")
        conf = float(conf) if isinstance(conf, int | float) else 0.0
        entry = self.planes.setdefault(label, [0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], conf)
        self._add_biometry(r.get("biometry"))

    def _add_biometry(self, bio) -> None:
        if not isinstance(bio, dict) or not isinstance(bio.get("status"), str):
            return
        mm = [bio.get(k) for k in ("hc_mm", "bpd_mm", "ofd_mm")]
        if bio["status"] in MEASURED and all(isinstance(v, int | float) for v in mm):
            self.head_mm.append(tuple(float(v) for v in mm))
        elif len(self.head_declined) < 8 or bio["status"] in self.head_declined:
            status = bio["status"][:24]
            self.head_declined[status] = self.head_declined.get(status, 0) + 1

    def biometry(self) -> dict | None:
        """The exam's head biometry: medians over every measured head-plane frame (robust to
        the odd bad frame), the spread of HC, and the age from the median HC."""
        if not self.head_mm and not self.head_declined:
            return None
        out: dict = {"measured": len(self.head_mm),
                     "declined": dict(sorted(self.head_declined.items()))}
        if self.head_mm:
            hc, bpd, ofd = (sorted(col) for col in zip(*self.head_mm, strict=True))
            median_hc = _pct(hc, 0.5)
            ga = hadlock_ga_weeks(median_hc)
            out.update({"hc_mm": median_hc, "hc_p10_mm": _pct(hc, 0.1),
                        "hc_p90_mm": _pct(hc, 0.9), "bpd_mm": _pct(bpd, 0.5),
                        "ofd_mm": _pct(ofd, 0.5),
                        "ga_weeks": None if ga is None else round(ga, 1)})
        return out

    def body(self, source: str, started_ts: float, ended_ts: float,
             started_mono: float | None = None, ended_mono: float | None = None,
             model_versions: dict[str, str] | None = None, exam_id: str | None = None) -> dict:
        """The compact exam body; see `summarize_exam`."""
        if started_mono is not None and ended_mono is not None:
            duration = max(0.0, ended_mono - started_mono)
        else:
            duration = max(0.0, ended_ts - started_ts)
        latencies = list(self.latencies)
        head = self.biometry()
        return {
            "exam_id": exam_id or hashlib.sha256(
                f"{source}|{started_ts}|{started_mono}".encode()).hexdigest()[:16],
            "source_id": source_id(source),
            "started_ts": round(float(started_ts), 3),
            "ended_ts": round(float(ended_ts), 3),
            "duration_s": round(duration, 3),
            "frames": self.frames,
            "frames_scored": self.frames - self.failed,
            "frames_failed": self.failed,
            "planes": {k: [v[0], round(v[1], 3)] for k, v in sorted(self.planes.items())},
            "latency_ms": {"p50": _pct(latencies, 0.5), "p90": _pct(latencies, 0.9)},
            "models": _model_versions([{"model": t} for t in self.model_tags],
                                      model_versions),
            **({"biometry": head} if head is not None else {}),
        }


def summarize_exam(
    results: list[dict],
    source: str,
    started_ts: float,
    ended_ts: float,
    started_mono: float | None = None,
    ended_mono: float | None = None,
    model_versions: dict[str, str] | None = None,
    exam_id: str | None = None,
) -> dict:
    """The compact body of one exam from the loop's per-frame result dicts.

    Until the exam workflow exists one exam is one run over a source. Per plane: frames
    classified as that plane and the best confidence seen. Failed frames (``error`` set)
    count separately. The result is well under 1 KB as JSON (checked in ``build_exam``).
    """
    tally = ExamTally()
    for r in results:
        tally.add(r)
    return tally.body(source, started_ts, ended_ts, started_mono, ended_mono,
                      model_versions, exam_id)


def _exam_size(payload: dict) -> int:
    return len(json.dumps(payload, separators=(",", ":"))) + 100  # room for msg_id and seq


def _shed(body: dict) -> list[dict]:
    """Ever smaller versions of an exam body, least useful detail first, so a busy exam
    still fits in 1 KB instead of being refused: the HC spread, then the reasons head
    frames were declined (kept as one count), then plane confidences to two digits."""
    bio = body.get("biometry")
    steps = []
    if isinstance(bio, dict):
        bio = {k: v for k, v in bio.items() if k not in ("hc_p10_mm", "hc_p90_mm")}
        steps.append({**body, "biometry": bio})
        declined = sum(v for v in bio.get("declined", {}).values() if isinstance(v, int))
        bio = {**bio, "declined": {"all": declined} if declined else {}}
        body = {**body, "biometry": bio}
        steps.append(body)
    planes = body.get("planes")
    if isinstance(planes, dict):
        body = {**body, "planes": {k: [v[0], round(v[1], 2)] if isinstance(v, list)
                                   and len(v) == 2 and isinstance(v[1], float) else v
                                   for k, v in planes.items()}}
        steps.append(body)
    models = body.get("models")
    if isinstance(models, dict) and len(models) > 1:
        # every health message names the installed models too
        first = PLANE_MODEL if PLANE_MODEL in models else sorted(models)[0]
        steps.append({**body, "models": {first: models[first]}})
    return steps


def build_exam(env: dict, body: dict) -> dict:
    """Envelope plus exam body in at most 1 KB once sent, shedding detail if it must;
    refuses (ValueError) only a body that cannot be made to fit."""
    payload = {**env, **body}
    size = _exam_size(payload)
    for smaller in _shed(body):
        if size <= EXAM_MAX_BYTES:
            break
        payload = {**env, **smaller}
        size = _exam_size(payload)
    if size > EXAM_MAX_BYTES:
        raise ValueError(f"exam summary would be {size} bytes, over {EXAM_MAX_BYTES}")
    return payload


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
) -> dict:
    """Periodic health: the loop's figures plus queue depth, drops, disk, temperature."""
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
    return {
        **env,
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


# -- validation ------------------------------------------------------------------------
@cache
def load_schema(kind: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text(encoding="utf-8"))


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(instance, schema: dict, path: str = "$") -> list[str]:
    """Errors of ``instance`` against a draft 2020-12 subset: type, const, enum, required,
    properties, additionalProperties, patternProperties, propertyNames, maxProperties,
    min/maxLength, pattern, minimum/maximum, prefixItems, items, min/maxItems, $defs/$ref."""
    return _validate(instance, schema, path, schema)


def _validate(v, s: dict, path: str, root: dict) -> list[str]:
    if "$ref" in s:
        ref = s["$ref"]
        if not ref.startswith("#/$defs/"):
            return [f"{path}: unsupported $ref {ref}"]
        s = {**root["$defs"][ref.split("/")[-1]], **{k: x for k, x in s.items() if k != "$ref"}}
    errs: list[str] = []
    t = s.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_TYPES[x](v) for x in types):
            return [f"{path}: expected {'/'.join(types)}, got {type(v).__name__}"]
    if "const" in s and v != s["const"]:
        errs.append(f"{path}: must be {s['const']!r}")
    if "enum" in s and v not in s["enum"]:
        errs.append(f"{path}: {v!r} not one of {s['enum']}")
    if isinstance(v, str):
        if len(v) > s.get("maxLength", len(v)):
            errs.append(f"{path}: longer than {s['maxLength']}")
        if len(v) < s.get("minLength", 0):
            errs.append(f"{path}: shorter than {s['minLength']}")
        if "pattern" in s and not re.search(s["pattern"], v):
            errs.append(f"{path}: does not match {s['pattern']}")
    if isinstance(v, int | float) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errs.append(f"{path}: below {s['minimum']}")
        if "maximum" in s and v > s["maximum"]:
            errs.append(f"{path}: above {s['maximum']}")
    if isinstance(v, list):
        if len(v) > s.get("maxItems", len(v)):
            errs.append(f"{path}: more than {s['maxItems']} items")
        if len(v) < s.get("minItems", 0):
            errs.append(f"{path}: fewer than {s['minItems']} items")
        prefix = s.get("prefixItems", [])
        for i, item in enumerate(v):
            sub = prefix[i] if i < len(prefix) else s.get("items", True)
            if sub is False:
                errs.append(f"{path}: unexpected item {i}")
            elif isinstance(sub, dict):
                errs += _validate(item, sub, f"{path}[{i}]", root)
    if isinstance(v, dict):
        for key in s.get("required", []):
            if key not in v:
                errs.append(f"{path}: missing {key}")
        if len(v) > s.get("maxProperties", len(v)):
            errs.append(f"{path}: more than {s['maxProperties']} properties")
        props = s.get("properties", {})
        pprops = s.get("patternProperties", {})
        extra = s.get("additionalProperties", True)
        names = s.get("propertyNames")
        for key, item in v.items():
            sub = f"{path}.{key}"
            if names is not None:
                errs += _validate(key, names, f"{sub}(name)", root)
            matched = False
            if key in props:
                matched = True
                errs += _validate(item, props[key], sub, root)
            for pat, ps in pprops.items():
                if re.search(pat, key):
                    matched = True
                    errs += _validate(item, ps, sub, root)
            if not matched:
                if extra is False:
                    errs.append(f"{path}: unexpected property {key}")
                elif isinstance(extra, dict):
                    errs += _validate(item, extra, sub, root)
    return errs


def validate_payload(payload: dict) -> list[str]:
    """Validate a decoded message against the schema of its own ``kind``."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind not in KINDS:
        return [f"$.kind: unknown kind {kind!r}"]
    return validate(payload, load_schema(kind))
