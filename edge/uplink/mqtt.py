"""MQTT uplink: a background thread that drains the durable outbox to the broker.

paho-mqtt keeps its queue in memory only, so this module never relies on it: every message
lives in the SQLite outbox until the broker's PUBACK comes back (an exam summary or a dates
correction until the district's receipt, wire/receipt.py: the uplink reads its receipt
topic on the same connection, and sends again what has none after ``resend_after_s``), and
a new paho client is made for every connection attempt. Whatever was in flight when a
connection died is simply published again from the outbox on the next connection (the
collector deduplicates by ``msg_id``). MQTT v5, QoS 1, ``clean_start=False`` with a session
expiry, a bounded number of messages in flight, exponential backoff with jitter between
attempts, TLS and username/password, a retained ``status`` topic with an ``offline`` last
will.

The device keeps working whatever the broker does: the uplink never raises into the loop,
it records what went wrong in ``<state_dir>/uplink-status.json`` (read by ``sonoedge
status``) and logs one clear line when the problem changes.

With ``url == ""`` the uplink only records: messages accumulate in the outbox (up to its
quota) and are sent, with their original ids and sequence numbers, once the device is
given a broker. This module must not import ``edge.config``: config imports it.

A full disk never costs an exam: an exam the outbox has no room for is held in memory,
said once in the log, and queued as soon as there is room (tried on every enqueue, by the
publisher thread, and while ``drain`` waits). The password is read from ``password_file``
(only its owner may read it) or the config; one given in the URL works but is warned about.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edge.store.outbox import (
    DEFAULT_QUOTA_BYTES,
    Outbox,
    OutboxError,
    OutboxFull,
    OutboxLater,
    Redated,
    dates_key,
    open_outbox,
    read_boot_id,
    seq_ok,
    shifted_times,
    withdrawal_key,
)
from edge.store.state import Reserve, is_full
from edge.uplink import messages
from wire.mqtt import (
    backoff_delay,
    check_tls_file,
    describe_connect_error,
    parse_mqtt_url,
    read_secret_file,
    topic_for,
)
from wire.receipt import (
    DEFAULT_RESEND_AFTER_S,
    MAX_RESEND_AFTER_S,
    MIN_RESEND_AFTER_S,
    parse_receipt,
    receipt_topic,
)
from wire.schema import (
    PayloadError,
    finite_number,
    id_pattern,
    load_schema,
    read_state_json,
    validate,
    wall_ts_or_none,
)
from wire.shown import one_line, shown, shown_path

log = logging.getLogger("sonoedge.uplink")

STATUS_FILE = "uplink-status.json"
# The status file as written is under 2 kB (its texts are cut, `STATUS_TEXT_MAX`): one
# larger, or nested deeper than its outbox table, is damage and is not parsed.
STATUS_MAX_BYTES = 64 * 1024
STATUS_MAX_DEPTH = 4
STATUS_TEXT_MAX = 500
# The schema's own rules ("$" as JSON Schema means it: "dev-a\n" passed a Python "$" here
# and then broke every message's schema, so its exams were never queued).
_ID_RE = id_pattern("device_id")
_CLINIC_RE = id_pattern("clinic_id")
MIN_OUTBOX_QUOTA_BYTES = 16 * 1024  # an exam is at most 1 KB on the wire
# How often, at most, the publisher looks for sent messages whose receipt is overdue
# (`Outbox.resend_unreceipted`; more often when resend_after_s is shorter): a read of the
# outbox's state index, nothing written unless one is due. The first look waits as long
# after a connect, so receipts kept by the broker while the box was away come in first.
RESEND_CHECK_S = 60.0


@dataclass
class MqttSettings:
    """The ``[mqtt]`` table of the config; every field has a working default."""

    url: str = ""  # mqtt[s]://user:pass@host:port; "" records to the outbox only
    device_id: str = ""  # "" means the host name (sanitised)
    clinic_id: str = ""
    health_interval_s: float = 60.0
    outbox_quota_bytes: int = DEFAULT_QUOTA_BYTES
    max_inflight: int = 20
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 60.0
    drain_timeout_s: float = 30.0  # how long `run --once` tries to empty the outbox
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    username: str = ""  # overrides the URL's user when set
    password: str = ""  # only in a config file no other user can read; better: password_file
    password_file: str = ""  # the password's first line; the file must be mode 0600
    client_id: str = ""  # "" means sonoedge-<device_id>
    # A PUBACK "No matching subscribers" means no collector session holds the message (e.g.
    # the broker restarted and lost a shared subscription): keep it and retry later.
    require_subscriber: bool = True
    # An exam or a dates correction the broker acknowledged is kept until the district's
    # receipt (wire/receipt.py), and sent again when none came this long after its PUBACK.
    resend_after_s: float = DEFAULT_RESEND_AFTER_S


def resolve_device_id(device_id: str) -> str:
    """The configured id, or the host name made safe for a topic level."""
    if device_id:
        if not _ID_RE.match(device_id):
            raise ValueError(
                f"bad device_id {shown(device_id)}: use letters, digits, '.', '_', '-' (max 64)"
            )
        return device_id
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip("-.") or "device"
    return host if _ID_RE.match(host) else "device"


# The most each [mqtt] number may be. What MQTT's fields hold (keep-alive 2 bytes, session
# expiry and receive maximum as v5 has them) and what a wait can be: beyond, every
# connection attempt failed (a struct or overflow error, its traceback each time) and
# nothing was ever sent. health_interval_s: a box silent for over a day cannot be told from
# a dead one, and 1e308 broke the health schema's interval_s (at most 1e8), so every health
# message was refused (0 is no "off": a health message after every frame). drain_timeout_s:
# `run --once` must end, as a connect does. The outbox: 1 GiB holds a million 1 kB exams,
# years of a clinic's, and each start checks it whole.
MOST = {"keepalive_s": 65535, "session_expiry_s": 0xFFFFFFFF, "max_inflight": 65535,
        "connect_timeout_s": 3600, "reconnect_max_s": 86400, "health_interval_s": 86400,
        "drain_timeout_s": 3600, "outbox_quota_bytes": 1 << 30}


def check_mqtt_settings(s: MqttSettings) -> None:
    """Refuse settings that would make every message fail later; ValueError names the key.

    ``edge.config`` can call this while loading and turn the error into a ConfigError.
    """
    if s.url:
        parse_mqtt_url(s.url)
    resolve_device_id(s.device_id)
    if not _CLINIC_RE.match(s.clinic_id or ""):
        raise ValueError(f"mqtt.clinic_id {shown(s.clinic_id)}: use letters, digits, '.', '_', "
                         "'-'")
    positive = {"outbox_quota_bytes": s.outbox_quota_bytes, "max_inflight": s.max_inflight,
                "keepalive_s": s.keepalive_s, "connect_timeout_s": s.connect_timeout_s,
                "reconnect_min_s": s.reconnect_min_s}
    for key, value in positive.items():
        if not value > 0:
            raise ValueError(f"mqtt.{key} must be positive, got {value!r}")
    for key in ("health_interval_s", "drain_timeout_s", "session_expiry_s"):
        if getattr(s, key) < 0:
            raise ValueError(f"mqtt.{key} must be at least 0, got {shown(getattr(s, key))}")
    if s.reconnect_max_s < s.reconnect_min_s:
        raise ValueError("mqtt.reconnect_max_s must be at least mqtt.reconnect_min_s")
    # Below MIN_OUTBOX_QUOTA_BYTES every exam was refused as larger than the outbox.
    for key, top in MOST.items():
        if getattr(s, key) > top:
            raise ValueError(f"mqtt.{key} must be at most {top}, got "
                             f"{shown(getattr(s, key))}")
    if not MIN_RESEND_AFTER_S <= s.resend_after_s <= MAX_RESEND_AFTER_S:
        raise ValueError(f"mqtt.resend_after_s must be from {MIN_RESEND_AFTER_S:.0f} to "
                         f"{MAX_RESEND_AFTER_S:.0f} seconds, got {shown(s.resend_after_s)}")
    if s.outbox_quota_bytes < MIN_OUTBOX_QUOTA_BYTES:
        raise ValueError(f"mqtt.outbox_quota_bytes must be at least {MIN_OUTBOX_QUOTA_BYTES} "
                         f"(room for a few exams), got {s.outbox_quota_bytes!r}")
    for key in ("tls_ca", "tls_cert", "tls_key"):
        if getattr(s, key):
            check_tls_file(getattr(s, key), f"mqtt.{key}")
    if s.password_file:
        read_secret_file(s.password_file)


def _count(value: object) -> bool:
    return type(value) is int and value >= 0


def _text_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def _ts(value: object) -> bool:
    return value is None or wall_ts_or_none(value) is not None


# What each field the uplink writes must be, read back: a field of another type is left out
# (and named), never passed on to the start (`Uplink.__init__`) or `sonoedge status`.
_STATUS_FIELDS = {
    "device_id": lambda v: isinstance(v, str), "clinic_id": lambda v: isinstance(v, str),
    "broker": lambda v: isinstance(v, str), "boot_id": lambda v: isinstance(v, str),
    "enabled": lambda v: isinstance(v, bool), "connected": lambda v: isinstance(v, bool),
    "last_error": _text_or_none, "session_lost_reason": _text_or_none,
    "last_error_ts": _ts, "last_connect_ts": _ts, "last_ack_ts": _ts, "updated_ts": _ts,
    "connects": _count, "acked": _count, "refused": _count, "held": _count,
    "pid": lambda v: type(v) is int and 0 < v < 1 << 31,
    "next_attempt_in_s": lambda v: finite_number(v) and v >= 0,
}
# its `outbox` table (`Outbox.counts`); `last_seq` is the floor a rebuilt outbox counts on
# from, so it must be one an outbox may take (`seq_ok`: an integer up to SEQ_FLOOR_MAX)
_OUTBOX_FIELDS = {**{name: _count for name in (
    "pending", "pending_exam", "pending_health", "rejected", "used_bytes", "quota_bytes",
    "dropped_health", "dropped_exam", "awaiting_receipt", "unconfirmed", "rejected_exams")},
    "last_seq": seq_ok}


def load_status(state_dir: Path | str) -> tuple[dict | None, str | None]:
    """The status file the uplink writes, read back as hostile input (a crash mid-write, a
    bad card, a hand edit): `(status, problem)`. `status` holds only the known fields that
    have their type (None when the file is missing, or damaged as a whole: not a bounded
    JSON object); `problem` is one line naming the file and what is damaged, else None."""
    path = Path(state_dir) / STATUS_FILE
    try:  # Infinity or a key twice is left to the fields' checks: it costs its field
        raw = read_state_json(path, STATUS_MAX_BYTES, STATUS_MAX_DEPTH)
    except FileNotFoundError:
        return None, None
    except PayloadError as exc:
        return None, f"{shown_path(path)}: damaged ({str(exc)[:120]}): ignored"
    if not isinstance(raw, dict):
        return None, f"{shown_path(path)}: damaged (not a JSON object): ignored"
    bad: list[str] = []

    def kept(table: dict, fields: dict, prefix: str = "") -> dict:
        out = {}
        for name, ok in fields.items():
            if name not in table:
                continue
            if ok(table[name]):
                out[name] = table[name]
            else:
                bad.append(prefix + name)
        return out

    status = kept(raw, _STATUS_FIELDS)
    if isinstance(raw.get("outbox"), dict):
        status["outbox"] = kept(raw["outbox"], _OUTBOX_FIELDS, "outbox.")
    elif "outbox" in raw:
        bad.append("outbox")
    if not bad:
        return status, None
    names = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    return status, f"{shown_path(path)}: damaged field{'s' if len(bad) > 1 else ''} {names}: " \
                   "left out"


def read_status(state_dir: Path | str) -> dict | None:
    """`load_status`'s status; what is damaged is said in one log line (at the uplink's
    start, the one place the device reads it: the file is rewritten right after)."""
    status, problem = load_status(state_dir)
    if problem:
        log.warning("uplink: %s", problem)
    return status


class Uplink:
    """The device's only door to MQTT; see the module docstring for the guarantees."""

    def __init__(
        self,
        settings: MqttSettings,
        state_dir: Path | str,
        model_versions: dict[str, str] | None = None,
    ):
        check_mqtt_settings(settings)
        self.settings = settings
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.device_id = resolve_device_id(settings.device_id)
        self.clinic_id = settings.clinic_id
        self.target = parse_mqtt_url(settings.url) if settings.url else None
        self.model_versions = dict(model_versions or {})
        self.password = (read_secret_file(settings.password_file) if settings.password_file
                         else settings.password)
        # the floor for an outbox rebuilt after corruption: checked by read_status (an
        # integer up to SEQ_FLOOR_MAX), else left out with one line and 0 used
        known = (read_status(self.state_dir) or {}).get("outbox", {}).get("last_seq", 0)
        self.outbox: Outbox = open_outbox(self.state_dir, settings.outbox_quota_bytes,
                                          seq_floor=known)
        self.boot_id = read_boot_id()
        # (kind, payload, key) of exams and corrections waiting for disk space
        self._held: list[tuple[str, dict, str | None]] = []
        self._held_lock = threading.Lock()
        self.client_id = settings.client_id or f"sonoedge-{self.device_id}"
        self.receipt_topic = receipt_topic(self.device_id)  # read on every connection
        self._started_mono = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()
        self._status_lock = threading.Lock()
        self._status: dict = {
            "device_id": self.device_id,
            "clinic_id": self.clinic_id,
            "broker": self.target.redacted() if self.target else "",
            "enabled": self.target is not None,
            "connected": False,
            "last_error": None,
            "last_error_ts": None,
            "last_connect_ts": None,
            "last_ack_ts": None,
            "connects": 0,
            "acked": 0,
            "refused": 0,
            "held": 0,
            "pid": os.getpid(),
            "boot_id": read_boot_id(),
        }
        self._last_logged_error: tuple[str, float] | None = None
        # Topics the device reads (model bundle offers and chunks, edge/fleet): on this same
        # connection, since the broker ties the client id to the user name and a second
        # client of the device would knock this one off. `on_message(topic, payload)` runs on
        # the publisher thread and must only hand the message over.
        self._wanted: set[str] = set()
        self._wanted_version = 0
        self.on_message = None
        self.fleet_status = None  # () -> dict for health's "fleet" (edge/fleet), or None
        self._write_status(force=True)

    # -- the loop's surface ---------------------------------------------------------------

    @property
    def broker_user(self) -> str:
        """The user name the broker sees: `[mqtt] username`, else the URL's; "" = none."""
        return self.settings.username or (self.target.username if self.target else "")
    def start(self) -> None:
        """Start the publisher thread; a no-op when no broker is configured."""
        if self.target is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sonoedge-uplink", daemon=True)
        self._thread.start()

    def _env(self, kind: str) -> dict:
        return messages.envelope(kind, self.device_id, self.clinic_id, self.boot_id)

    def set_subscriptions(self, topics: set[str]) -> None:
        """The topics to read from now on (QoS 1), made again on every connection."""
        with self._status_lock:
            if set(topics) != self._wanted:
                self._wanted = set(topics)
                self._wanted_version += 1

    def _resubscribe(self, client, state: dict) -> None:
        with self._status_lock:
            wanted, version = set(self._wanted) | {self.receipt_topic}, self._wanted_version
        if state.get("sub_version") == version:
            return
        have = state.setdefault("subscribed", set())
        gone, new = sorted(have - wanted), sorted(wanted - have)
        if gone:
            client.unsubscribe(gone)
        if new:
            client.subscribe([(topic, 1) for topic in new])
        state["subscribed"], state["sub_version"] = wanted, version

    def enqueue_exam(self, summary: dict, key: str | None = None) -> str | None:
        """Store one exam summary (from ``edge.exam.tally.summarize_exam``); returns its msg_id.

        ``key`` (the exam's id) makes it once only: an exam enqueued before under the same
        key is not enqueued again. Never raises: a summary that breaks the schema is logged
        and not stored; one the disk has no room for is held and queued when there is.
        """
        try:
            payload = messages.build_exam(self._env("exam"), summary)
            self._check("exam", payload)
        except (ValueError, TypeError) as exc:
            log.error("exam summary not stored: %s", exc)
            return None
        return self._enqueue_kept("exam", payload, key)

    def enqueue_dates(self, exam_id: str, ga_dates_weeks: float | None, entry: int,
                      entered_ts: float) -> str | None:
        """Store a correction of an exam's age by dates (`wire/schemas/dates.schema.json`),
        for dates entered or cleared after its summary was queued; returns its msg_id.

        Once only per entry (`entry`, the journal's number for it, keys it), held like an
        exam when the disk is full, never raises. None also when it was queued before."""
        try:
            payload = messages.build_dates(self._env("dates"), exam_id, ga_dates_weeks,
                                           entered_ts)
            self._check("dates", payload)
        except (ValueError, TypeError) as exc:
            log.error("age-by-dates correction of exam %s not stored: %s", exam_id, exc)
            return None
        return self._enqueue_kept("dates", payload, dates_key(exam_id, entry))

    def enqueue_withdrawal(self, exam_id: str, withdrawn: bool, reason: str, entry: int,
                           entered_ts: float) -> str | None:
        """Store an exam's withdrawal or restore (`wire/schemas/withdrawal.schema.json`);
        returns its msg_id. Once only per entry, held when the disk is full, never raises,
        as `enqueue_dates`. None also when it was queued before."""
        try:
            payload = messages.build_withdrawal(self._env("withdrawal"), exam_id, withdrawn,
                                                reason, entered_ts)
            self._check("withdrawal", payload)
        except (ValueError, TypeError) as exc:
            log.error("withdrawal of exam %s not stored: %s", exam_id, exc)
            return None
        return self._enqueue_kept("withdrawal", payload, withdrawal_key(exam_id, entry))

    def _enqueue_kept(self, kind: str, payload: dict, key: str | None) -> str | None:
        """An exam or a correction into the outbox, in order behind any held (for want of
        disk space, or an outbox locked by another process or failing to write), or held
        itself."""
        self.flush_held()
        with self._held_lock:
            if self._held:  # keep the order: older messages first
                self._hold(kind, payload, key)
                return None
        try:
            try:
                msg = self.outbox.enqueue(kind, payload, key=key)
            except OutboxFull:
                if not Reserve(self.state_dir).release():
                    raise
                msg = self.outbox.enqueue(kind, payload, key=key)
        except OutboxLater as exc:
            with self._held_lock:
                self._hold(kind, payload, key, exc)
            return None
        except OutboxError as exc:
            log.error("%s message of exam %s not stored: %s", kind, payload.get("exam_id"), exc)
            return None
        return msg.msg_id if msg else None

    def _hold(self, kind: str, payload: dict, key: str | None,
              why: OutboxLater | None = None) -> None:
        self._held.append((kind, payload, key))
        self._set(held=len(self._held))
        if len(self._held) == 1:  # said once, when the first is held (`why` then given)
            reason = "disk full" if isinstance(why, OutboxFull) else str(why)
            log.warning("%s: %s message of exam %s held in memory; it is queued as soon as "
                        "the outbox takes it", reason, kind, payload.get("exam_id"))

    def flush_held(self) -> int:
        """Queue the exams and corrections held for want of disk space, oldest first; how
        many are left."""
        with self._held_lock:
            while self._held:
                kind, payload, key = self._held[0]
                try:
                    self.outbox.enqueue(kind, payload, key=key)
                except OutboxLater:
                    break
                except OutboxError as exc:
                    log.error("held %s message not stored: %s", kind, exc)
                self._held.pop(0)
                if not self._held:
                    log.warning("outbox writable again: every held exam summary and "
                                "correction is queued")
            self._set(held=len(self._held))
            return len(self._held)

    def clock_stepped(self, moved_s: float, before_ts: float) -> Redated:
        """The box's clock stepped forward `moved_s` (edge/loop.py follow_clock_steps):
        what waits to go was stamped before `before_ts` by the clock behind and is dated
        again: the messages held in memory for want of disk space (queued later, so the
        outbox's own re-dating would not reach them) and the outbox's, tried or not. The
        link then says "online" again before the next batch (`Outbox.take_for_sending`),
        so the district reads the clock's new lag and does not move by the old one what the
        box has already put right. Returns what the outbox moved (a failure leaves its
        messages as they were, said once)."""
        with self._held_lock:
            for n, (kind, payload, key) in enumerate(self._held):
                if shifted := shifted_times(payload, moved_s, before_ts):
                    self._held[n] = (kind, {**payload, **shifted}, key)
        try:
            redated = self.outbox.shift_unsent_times(moved_s, before_ts)
        except (OutboxError, sqlite3.Error) as exc:
            log.warning("the clock stepped; the queued messages keep their old times (%s)",
                        one_line(exc))
            redated = Redated(0, ())
        return redated

    @property
    def held(self) -> int:
        with self._held_lock:
            return len(self._held)

    def enqueue_health(self, stats: dict) -> str | None:
        """Store one health message: the loop's ``stats`` plus queue, drops, disk, temp."""
        try:
            try:
                free_mb = shutil.disk_usage(self.state_dir).free / 1e6
            except OSError:
                free_mb = None
            dropped = self.outbox.drop_report()
            payload = messages.build_health(
                self._env("health"),
                loop_stats=dict(stats or {}),
                queue=self.outbox.counts(),
                dropped=dropped,
                disk_free_mb=free_mb,
                models=self.model_versions,
                uptime_s=time.monotonic() - self._started_mono,
                interval_s=float(self.settings.health_interval_s),
                fleet=self.fleet_status() if self.fleet_status is not None else None,
            )
            self._check("health", payload)
            self.flush_held()
            msg = self.outbox.enqueue("health", payload, reports_drops=dropped)
            return msg.msg_id if msg else None
        except OutboxLater as exc:
            log.debug("health message not stored: %s", exc)  # the exams are what matter
            return None
        except (ValueError, TypeError, OutboxError) as exc:
            log.error("health message not stored: %s", exc)
            return None
        except sqlite3.DatabaseError as exc:  # its figures unread, its drops not marked
            (log.debug if is_full(exc) else log.error)("health message not stored: %s", exc)
            return None

    @staticmethod
    def _check(kind: str, payload: dict) -> None:
        probe = {**payload, "msg_id": str(uuid.uuid4()), "seq": 0}
        errors = validate(probe, load_schema(kind))
        if errors:
            raise ValueError(f"{kind} payload breaks its schema: {'; '.join(errors[:3])}")

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until the outbox is empty or the timeout passes; True when empty."""
        timeout = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if self.flush_held() == 0 and self.outbox.pending_count() == 0:
                return True
            if self.target is None or self._thread is None or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (publishing ``offline`` if connected) and close the outbox."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        if self.flush_held():
            log.error("disk full: %d exam summar%s could not be queued before exit; the next "
                      "start queues them from the journal (loop.requeue_unqueued_exams)",
                      self.held,
                      "y" if self.held == 1 else "ies")
        self._set(connected=False)
        self._write_status(force=True)
        self.outbox.close()

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict:
        with self._status_lock:
            return dict(self._status)

    def _set(self, **kw) -> None:
        with self._status_lock:
            self._status.update(kw)

    def _error(self, text: str, connected: bool = False) -> None:
        # cut as stored (the status file is read back within STATUS_MAX_BYTES); logged whole
        self._set(connected=connected, last_error=text[:STATUS_TEXT_MAX],
                  last_error_ts=time.time())
        now = time.monotonic()
        pending = self.outbox.pending_count()
        last = self._last_logged_error
        if last is None or last[0] != text or now - last[1] > 600:
            log.warning("mqtt: %s; %d message(s) wait in the outbox", text, pending)
            self._last_logged_error = (text, now)
        self._write_status(force=True)

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - getattr(self, "_status_written", 0.0) < 1.0:
            return
        self._status_written = now
        try:
            counts = self.outbox.counts()
        except Exception:  # the outbox may be closing; the file is advisory
            counts = {}
        with self._status_lock:
            data = {**self._status, "outbox": counts, "updated_ts": time.time()}
        path = self.state_dir / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    # -- the publisher thread ---------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.flush_held()
                had_session = self._session()
            except Exception as exc:  # never let the thread die: the outbox keeps the data
                log.exception("mqtt uplink error")
                self._error(f"uplink error: {exc}")
                had_session = False
            if self._stop.is_set():
                break
            attempt = 0 if had_session else attempt + 1
            delay = backoff_delay(attempt, self.settings.reconnect_min_s,
                                  self.settings.reconnect_max_s, self._rng)
            self._set(next_attempt_in_s=round(delay, 2))
            self._write_status(force=True)
            self._stop.wait(delay)

    def _status_payload(self, state: str) -> bytes:
        body = messages.build_status(self._env("status"), str(uuid.uuid4()), state,
                                      self.outbox.last_seq(), self.outbox.pending_count())
        return json.dumps(body, separators=(",", ":")).encode()

    def _make_client(self):
        import paho.mqtt.client as mqtt

        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        client.max_inflight_messages_set(max(1, self.settings.max_inflight))
        client.connect_timeout = self.settings.connect_timeout_s
        user = self.broker_user
        password = self.password or self.target.password
        if user:
            client.username_pw_set(user, password or None)
        if self.target.tls or self.settings.tls_ca:
            client.tls_set(
                ca_certs=self.settings.tls_ca or None,
                certfile=self.settings.tls_cert or None,
                keyfile=self.settings.tls_key or None,
            )
        client.will_set(topic_for(self.device_id, "status"), self._status_payload("offline"),
                        qos=1, retain=True)
        return client

    def _session(self) -> bool:
        """One connection's life; True if the broker accepted us (resets the backoff)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        target = self.target
        try:
            client = self._make_client()
        except (OSError, ValueError) as exc:
            self._error(f"TLS setup failed: {exc}")
            return False
        state = {"connack": None, "lost": False}
        acks: list[tuple[int, object]] = []

        def on_connect(_c, _u, _flags, reason_code, _props):
            state["connack"] = reason_code

        def on_disconnect(_c, _u, _flags, reason_code, _props):
            state["lost"] = True
            state["disconnect_reason"] = str(reason_code)

        def on_publish(_c, _u, mid, reason_code, _props):
            acks.append((mid, reason_code))

        def on_message(_c, _u, msg):
            if msg.topic == self.receipt_topic:
                try:
                    self._take_receipt(bytes(msg.payload))
                except Exception:  # a bug must not take the uplink down: sent again later
                    log.exception("mqtt: receipt on %s not handled", self.receipt_topic)
                return
            handler = self.on_message
            if handler is not None:
                try:
                    handler(msg.topic, bytes(msg.payload))
                except Exception:  # a reader's bug must not take the uplink down
                    log.exception("mqtt: message on %s not handled", msg.topic[:120])

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.settings.session_expiry_s)
        try:
            client.connect(target.host, target.port, keepalive=int(self.settings.keepalive_s),
                           clean_start=False, properties=props)
        except (OSError, ValueError) as exc:
            self._error(describe_connect_error(exc, target))
            return False
        deadline = time.monotonic() + self.settings.connect_timeout_s
        try:
            while state["connack"] is None and not state["lost"]:
                if time.monotonic() > deadline or self._stop.is_set():
                    break
                if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                    break
        except (OSError, ValueError) as exc:
            self._error(describe_connect_error(exc, target))
            return False
        rc = state["connack"]
        if rc is None and self._stop.is_set():
            _quiet_close(client)  # closing while connecting is not a broker problem
            return False
        if rc is None:
            self._error(f"broker {target.host}:{target.port} gave no CONNACK "
                        f"within {self.settings.connect_timeout_s:g} s")
            _quiet_close(client)
            return False
        if rc.is_failure:
            user = self.broker_user or "(none)"
            hint = " (check user name and password)" if rc.value in (134, 135) else ""
            self._error(f"broker {target.host}:{target.port} refused login as {user!r}: "
                        f"{rc}{hint}")
            _quiet_close(client)
            return False
        self._set(connected=True, last_connect_ts=time.time(),
                  connects=self._status["connects"] + 1, session_lost_reason=None)
        if self._last_logged_error is not None:
            log.info("mqtt: connected to %s (%d pending)", target.redacted(),
                     self.outbox.pending_count())
            self._last_logged_error = None
        self._write_status(force=True)
        client.publish(topic_for(self.device_id, "status"), self._status_payload("online"),
                       qos=1, retain=True)
        self._pump(client, state, acks)
        if self._stop.is_set():
            self._say_goodbye(client, acks)
        else:
            reason = state.get("disconnect_reason") or "connection lost"
            self._error(f"lost connection to {target.host}:{target.port}: {reason}")
        _quiet_close(client)
        return True

    def _pump(self, client, state: dict, acks: list) -> None:
        """Publish from the outbox with at most ``max_inflight`` unacknowledged."""
        import paho.mqtt.client as mqtt

        inflight: dict[int, str] = {}
        limit = max(1, self.settings.max_inflight)
        self._hold_until = 0.0
        self._hold_attempt = 0
        every = min(RESEND_CHECK_S, self.settings.resend_after_s)
        resend_at = time.monotonic() + every
        while not self._stop.is_set() and not state["lost"]:
            if self._held:
                self.flush_held()
            self._resubscribe(client, state)
            if time.monotonic() >= resend_at:
                resend_at = time.monotonic() + every
                self._resend_unreceipted()
            free = limit - len(inflight)
            if free > 0 and time.monotonic() >= self._hold_until:
                batch = self.outbox.take_for_sending(
                    free, exclude=inflight.values(), stepped=lambda: client.publish(
                        topic_for(self.device_id, "status"), self._status_payload("online"),
                        qos=1, retain=True))
                for m in batch:
                    info = client.publish(topic_for(self.device_id, m.kind), m.payload, qos=1)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        state["lost"] = True
                        break
                    inflight[info.mid] = m.msg_id
            rc = client.loop(timeout=0.02 if inflight else 0.2)
            self._settle(acks, inflight)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                state["lost"] = True
        # Stopping while connected: give what is in flight a moment to be acknowledged,
        # so a clean shutdown does not cause needless duplicates.
        deadline = time.monotonic() + 1.0
        while inflight and not state["lost"] and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
            self._settle(acks, inflight)

    def _settle(self, acks: list, inflight: dict[int, str]) -> None:
        """Apply PUBACKs: delete acknowledged rows (one transaction), park refused ones."""
        if not acks:
            return
        done, refused, unrouted = [], [], 0
        for mid, reason in acks:
            msg_id = inflight.pop(mid, None)
            if msg_id is None:
                continue  # the status message
            if reason.value == 16 and self.settings.require_subscriber:
                unrouted += 1  # "No matching subscribers": stays pending in the outbox
            else:
                (refused if reason.is_failure else done).append((msg_id, reason))
        acks.clear()
        try:
            self.outbox.ack(m for m, _ in done)
        except sqlite3.DatabaseError as exc:
            # Delivered, but not yet deleted (a full disk): they are sent again later, and
            # the collector keeps one copy; wait a little rather than resend at once.
            self._hold_until = time.monotonic() + self.settings.reconnect_max_s
            self._error(f"outbox: acknowledged messages not deleted yet ({exc})",
                        connected=True)
            return
        if unrouted and not done:
            self._hold_attempt += 1
            delay = backoff_delay(self._hold_attempt, self.settings.reconnect_min_s,
                                  self.settings.reconnect_max_s, self._rng)
            self._hold_until = time.monotonic() + delay
            self._error(f"no collector is subscribed at {self.target.host}:"
                        f"{self.target.port} (PUBACK 'No matching subscribers'); retrying "
                        f"in {delay:.1f} s", connected=True)
        elif done:
            self._hold_attempt = 0
            if self._status.get("last_error", "") and "no collector" in (
                    self._status.get("last_error") or ""):
                self._set(last_error=None)
        for msg_id, reason in refused:
            self.outbox.reject(msg_id, f"broker refused: {reason}")
            log.error("mqtt: broker refused message %s under %s: %s (kept in the outbox "
                      "as rejected)", msg_id, topic_for(self.device_id, "#"), reason)
        self._set(acked=self._status["acked"] + len(done),
                  refused=self._status["refused"] + len(refused),
                  last_ack_ts=time.time() if done else self._status["last_ack_ts"])
        self._write_status()

    def _take_receipt(self, payload: bytes) -> None:
        """The district's receipt (wire/receipt.py), read as hostile input: one bad in size,
        depth, types or device is one log line and changes nothing; ids the outbox does
        not hold (another box's, ones deleted already) are ignored."""
        try:
            ids = parse_receipt(payload, self.device_id)
        except ValueError as exc:
            log.warning("mqtt: receipt on %s ignored: %s", self.receipt_topic, exc)
            return
        try:
            self.outbox.receipt(ids)
        except sqlite3.DatabaseError as exc:  # kept as sent: sent again, stored once
            log.warning("outbox: a receipt for %d message(s) not applied (%s); they are "
                        "sent again after %g s", len(ids), one_line(exc),
                        self.settings.resend_after_s)
            return
        self._write_status()

    def _resend_unreceipted(self) -> None:
        try:
            again = self.outbox.resend_unreceipted(self.settings.resend_after_s)
        except sqlite3.DatabaseError as exc:  # tried at the next look
            log.debug("outbox: sent messages not looked at: %s", exc)
            return
        if again:
            log.warning("mqtt: %d exam message(s) had no receipt from the district %g s after "
                        "the broker took them: sent again", again, self.settings.resend_after_s)

    def _say_goodbye(self, client, acks: list) -> None:
        """Clean shutdown: retained ``offline`` (the will is not sent on a clean disconnect)."""
        import paho.mqtt.client as mqtt

        try:
            info = client.publish(topic_for(self.device_id, "status"),
                                  self._status_payload("offline"), qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if any(mid == info.mid for mid, _ in acks):
                    break
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            client.disconnect()
            client.loop(timeout=0.1)
        except (OSError, ValueError):
            pass


def _quiet_close(client) -> None:
    try:
        client.disconnect()
    except Exception:
        pass
    try:
        client.socket() and client.socket().close()
    except Exception:
        pass
