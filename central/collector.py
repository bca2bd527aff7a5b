"""Central collector: subscribe to every device's messages and store each exactly once.

MQTT v5 with a persistent session (``clean_start=False`` and a session expiry), so what the
devices publish while the collector is away waits at the broker. Messages are acknowledged
by hand (``manual_ack``) and only after the batch holding them is committed: a collector
killed between receiving and storing gets the same messages again, and the ``msg_id``
constraint keeps them single. One collector subscribes plainly; several may split the load
through a shared subscription ``$share/<group>/sonoedge/+/+`` whose group name is a secret
(``MIN_SHARE_GROUP_CHARS``): Mosquitto grants any user's subscription and checks its ACL
only when it delivers, so a device that names the group joins it and is dealt a share of
the district's messages, which the broker then drops, already acknowledged to their boxes.
They can share one PostgreSQL database.

Every message is treated as hostile. Its size and nesting depth are checked on the raw bytes
before it is parsed (``wire.schema.loads_bounded``), numbers must be finite and in the
schema's ranges, the rules a schema cannot say must hold (``wire.schema.rule_errors``: an
exam's slots found but not good enough are among its missing ones), and the device named in
the payload must be the one in the topic (which the broker's ACL ties to the user that
logged in). Anything that is not a valid message, or that the database refuses, goes to the
dead-letter table with the reason (or, over its device's quota, is only counted); nothing
one message holds can stop the collector. The clinic of a device comes from the district's
registry (``--registry``, written by ``board/provision.py``), never from the payload.

Nor can one device fill the district's disk: each device (the device id of the topic;
topics without one share a bucket) has at most ``dead_letter_quota`` dead letters written
per window of ``dead_letter_window_s``, a fixed window that its first letter opens (so at
most twice that in a rolling window across two: ``DeadLetterQuota``); a letter the
database holds already, delivered again, spends nothing. The rest are acknowledged and
counted (``stats["dead_over_quota"]``), and summed up in at most one log line per
``over_quota_log_s``. A message whose ``msg_id`` is stored with other content is such a
dead letter too, naming the ``msg_id`` (``stats["conflicts"]``; an identical redelivery is
a silent duplicate). QoS 0 messages (no device sends them) beyond ``receive_maximum`` held
while the database is down are dropped and counted (``stats["qos0_dropped"]``).

Nor with valid messages (a firmware bug in a loop, a stolen box's password: valid, distinct
messages as fast as the broker takes them): each device writes at most ``exam_quota`` of
each kind with a receipt (exam, dates, withdrawal) and ``health_quota`` of each other kind
(health, status) per window of ``message_window_s`` (a day; fixed windows, as the dead
letters': ``MessageQuota``), far above any real clinic's. A write is a message stored, or a
re-send's new seq kept in ``resent``; a redelivery (its msg_id stored under its seq)
writes nothing, spends nothing, and is receipted whatever the quota. What is over is
acknowledged to the broker (the session moves on), counted, summed up in at most one log
line per ``over_quota_log_s``, and written nowhere, without losing what a box accepted: an exam,
dates or withdrawal over quota gets no receipt (``stats["withheld_over_quota"]``), so its
box keeps it and sends it again after its ``resend_after_s`` (6 h: the box's own wait,
never sooner for being over) until a window with room stores it; a health or status
message is dropped (``stats["dropped_over_quota"]``): the next one repeats its figures, and
the dashboard shows the box's latest and a hole in its sequence for those dropped. A box
that has never had a receipt deletes on PUBACK, so the quota is larger than any backlog a
real box sends before its first one. The quotas live in each collector's memory, seeded
at its start from the database (each device's writes of the last window: ``Store.
recent_writes``), so a restarted collector goes on from what was stored; several
collectors sharing the load each allow that much.

Receipts (wire/receipt.py): the broker may drop a message it acknowledged to its box
(Mosquitto drops what overflows this collector's session queue while it is away), so after
committing a batch the collector publishes to each device whose exam, dates or withdrawal
messages the batch settled (stored, stored already, or a dead letter: never to be stored
either; not one kept out by its device's quota) a receipt listing their msg_ids on
``sonoedge-receipt/<device_id>`` (QoS 1, in chunks of at most ``RECEIPT_MAX_IDS``). The
box keeps them until then and sends again what gets none. A
receipt lost (this collector stopped before the broker took it) only means one more copy,
stored once. A broker whose ACL does not yet let central users write receipts refuses them:
one line says so, and the boxes then delete on PUBACK as before.

When the database cannot be written (PostgreSQL down or failing over, a disk full), the
batch is held in memory, unacknowledged, and tried again after waits that double from
``db_retry_min_s`` to ``db_retry_max_s``, while the MQTT session stays up; the broker sends
no more than ``receive_maximum`` unacknowledged messages meanwhile. One line says the
database is down, one that it is back.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from central.db import DbError, DeadLetter, Row, Store, dead_letter
from wire import schema as wire_schema
from wire.mqtt import TOPIC_PREFIX, backoff_delay
from wire.receipt import (
    MSG_ID_RE,
    RECEIPT_PREFIX,
    RECEIPTED_KINDS,
    build_receipts,
    receipt_topic,
)
from wire.shown import read_failure, shown_path

log = logging.getLogger("sonoedge.central")

TOPIC_FILTER = "sonoedge/+/+"
_ID_RE = wire_schema.id_pattern("device_id")


@dataclass
class CollectorSettings:
    mqtt_url: str
    db_url: str
    client_id: str = ""  # "" means sonoedge-central-<host name>
    share_group: str = ""  # "" subscribes without $share; else a secret (module docstring)
    max_bytes: int = 4096
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 200
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    keepalive_s: int = 30
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    password_file: str = ""  # the MQTT password, from a file only its owner can read
    registry: str = ""  # device_id,clinic_id per line (board/provision.py); "" = no clinics
    duration_s: float | None = None  # stop after this long (tests, cron-style runs)
    # Dead letters written per device (a topic's device id; topics without one share one
    # bucket) per window (`DeadLetterQuota`); the rest are only counted. 100 an hour is more
    # than a healthy device sends in an hour (health every 60 s, a few exams), so a device
    # whose every message is refused (a bad firmware) still has each one kept; only a flood
    # is cut. A dead letter takes at most ~3 kB (a 2 kB preview, its topic and reason): one
    # device then fills at most ~7.5 MB a day (2,500 letters), not as fast as the broker
    # lets it publish.
    dead_letter_quota: int = 100
    dead_letter_window_s: float = 3600.0
    # Valid messages written per device and kind per window (`MessageQuota`: a fixed
    # window, so at most twice that in a rolling one; module docstring), far above any real
    # clinic's, so that a box with valid credentials (a firmware looping, a stolen box's
    # password) cannot fill the district's disk. exam_quota, each kind with a receipt (over
    # it: no receipt, the box sends it again later): a busy clinic does a few dozen exams a
    # day, a correction or withdrawal for some, so 5,000 is 100 days of 50 exams and a box
    # back from months offline still sends its whole backlog the same day. It must be that
    # large: a box that has never had a receipt deletes on PUBACK, so what it sends over
    # quota before its first receipt is lost. health_quota, health and status each (over
    # it: dropped): health every 60 s is 1,440 a day, status one or two a connection, and
    # 5,000 lets a box send health every 18 s. A message takes at most max_bytes and ~200
    # bytes of row: a box at every quota writes ~110 MB a window at most (a flood wrote
    # gigabytes an hour), and says so in a line a minute.
    exam_quota: int = 5000
    health_quota: int = 5000
    message_window_s: float = 86400.0
    # At most one log line this often sums up the dead letters over quota, and one the
    # messages: a flood of them must not become a flood of log lines (one a minute, as the
    # collector's stats).
    over_quota_log_s: float = 60.0
    # Waits between attempts to store a batch while the database cannot be written: half
    # to all of a cap doubling from the first to the last (`wire.mqtt.backoff_delay`). A
    # dropped connection (a restart, a failover) is tried again within half a second, an
    # outage of hours costs a try per 15-30 s, and a database back is written to within
    # 30 s. The same numbers as the broker's reconnects.
    db_retry_min_s: float = 0.5
    db_retry_max_s: float = 30.0
    # How often a subscribed collector marks itself alive in the database (`collectors`):
    # the dashboard says the collector stopped when none has for 15 minutes.
    alive_every_s: float = 60.0


REGISTRY_MAX_BYTES = 16 << 20  # 100,000 devices of 64-character ids take 13 MB
BAD_TOPIC = "(no device in the topic)"  # the quota's one bucket for topics without one


def read_registry(path: str | Path) -> dict[str, str]:
    """The district's record of which device belongs to which clinic: ``device_id,clinic_id``
    per line, ``#`` comments (written by ``board/provision.py --clinic``). ValueError names
    the file and line of a malformed entry."""
    out: dict[str, str] = {}
    shown = shown_path(path)
    try:  # a regular file of bounded size: a FIFO was waited on for ever, /dev/zero read
        data, _ = wire_schema.read_regular_file(path, REGISTRY_MAX_BYTES)
    except wire_schema.PayloadError as exc:
        raise ValueError(f"{shown}: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # the line named no file
        raise ValueError(f"{shown}: not UTF-8 text (byte {exc.start})") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        device, sep, clinic = (x.strip() for x in line.partition(","))
        if not sep or not _ID_RE.match(device) or not _CLINIC_RE.match(clinic):
            raise ValueError(f"{shown}:{lineno}: expected device_id,clinic_id, got "
                             f"{line[:80]!r}")
        if out.get(device, clinic) != clinic:  # the last silently won
            raise ValueError(f"{shown}:{lineno}: device {device} is already in clinic "
                             f"{out[device]}")
        out[device] = clinic
    return out


_CLINIC_RE = wire_schema.id_pattern("clinic_id")
_SHARE_RE = re.compile(r"[^/+#\x00-\x1f\x7f]{1,100}\Z")  # an MQTT v5 ShareName
# A share group's name is all that keeps a device out of the collectors' group (module
# docstring): 16 characters of secrets.token_urlsafe are 96 bits, past any guessing.
MIN_SHARE_GROUP_CHARS = 16
# the collectors' shared subscription before it had to be a secret: dropped at connect
LEGACY_SHARE_FILTER = f"$share/sonoedge/{TOPIC_FILTER}"


def check(topic: str, payload: bytes, max_bytes: int, collector: str, now: float,
          clinics: dict[str, str] | None = None) -> Row | DeadLetter:
    """Turn one received message into a row to store, or a dead letter with the reason.

    Never raises: whatever a message holds, the answer is a row or a dead letter. The clinic
    is the registry's (``clinics``), or "" for a device the registry does not list."""
    try:
        return _check(topic, payload, max_bytes, collector, now, clinics)
    except Exception as exc:  # a bug must cost one message, not the collector
        log.exception("checking a message on %r failed", topic[:120])
        return dead_letter(topic, payload, f"internal error: {type(exc).__name__}: "
                           f"{_first_line(exc)}", collector, now)


def _check(topic: str, payload: bytes, max_bytes: int, collector: str, now: float,
           clinics: dict[str, str] | None) -> Row | DeadLetter:
    reason = None
    data = None
    parts = topic.split("/")
    if len(payload) > max_bytes:
        reason = f"oversize: {len(payload)} bytes > {max_bytes}"
    elif len(parts) != 3 or parts[0] != "sonoedge" or not _ID_RE.match(parts[1]):
        reason = f"bad topic {topic[:120]!r}"
    elif parts[2] not in wire_schema.KINDS:
        reason = f"unknown kind {parts[2][:40]!r}"
    else:
        try:
            data = wire_schema.loads_bounded(payload, max_bytes)
        except wire_schema.PayloadError as exc:
            reason = str(exc) if str(exc).startswith(("bad JSON", "oversize")) \
                else f"bad JSON: {exc}"
        if reason is None and not isinstance(data, dict):
            reason = f"not a JSON object but {type(data).__name__}"
        if reason is None and data.get("kind") != parts[2]:
            got = repr(data["kind"])[:40] if "kind" in data else "missing"
            reason = f"kind {got} in payload, {parts[2]!r} in topic"
        if reason is None:
            errors = wire_schema.validate_payload(data)  # its kind is the topic's (above)
            if errors:
                reason = "schema: " + "; ".join(errors[:3])
        if reason is None and data["device_id"] != parts[1]:
            reason = f"device_id {data['device_id']!r} in payload, {parts[1]!r} in topic"
    if reason is not None:
        return dead_letter(topic, payload, reason, collector, now)
    return Row(
        msg_id=data["msg_id"], device_id=parts[1],
        clinic_id=(clinics or {}).get(parts[1], ""), kind=parts[2],
        seq=int(data["seq"]), boot_id=data["boot_id"], device_ts=float(data["ts"]),
        mono_s=float(data["mono_s"]), received_ts=now, collector=collector,
        payload=payload.decode("utf-8"),
    )


def receipt_for(topic: str, payload: bytes, item: Row | DeadLetter, max_bytes: int
                ) -> tuple[str, str] | None:
    """(device, msg_id) to receipt for a message a committed batch settled: an exam, a
    dates correction or a withdrawal (RECEIPTED_KINDS) under its device's topic, stored (or
    stored already) or a dead letter whose payload names a msg_id (never stored either: the
    box need not keep it). None for other kinds, or a payload that names no msg_id."""
    parts = topic.split("/")
    if (len(parts) != 3 or parts[0] != TOPIC_PREFIX or parts[2] not in RECEIPTED_KINDS
            or not _ID_RE.match(parts[1])):
        return None
    if isinstance(item, Row):
        return item.device_id, item.msg_id
    try:
        data = wire_schema.loads_bounded(payload, max_bytes)
    except wire_schema.PayloadError:
        return None
    msg_id = data.get("msg_id") if isinstance(data, dict) else None
    return (parts[1], msg_id) if isinstance(msg_id, str) and MSG_ID_RE.match(msg_id) else None


def quota_key(topic: str) -> str:
    """Whose quota a dead letter counts against: the device id of its topic, or one bucket
    for a topic that has none (the broker's ACL ties a device to its own topics)."""
    parts = topic.split("/", 2)
    if len(parts) > 1 and parts[0] == "sonoedge" and _ID_RE.match(parts[1]):
        return parts[1]
    return BAD_TOPIC


class DeadLetterQuota:
    """At most ``limit`` dead letters written per key (``quota_key``) in each of the key's
    windows: a window opens at the first letter written after the key's last one closed
    and lasts ``window_s``, its count starting from 0. Two numbers per key (when its window
    opened, how many it wrote), whatever ``limit``; a key whose window has closed is
    forgotten (swept at most once per ``window_s``).

    The window is fixed, not rolling: ``limit`` letters at the end of one window and
    ``limit`` more at the start of the next are all written, so a key writes at most
    2 x ``limit`` in any rolling ``window_s``, and (ceil(T / ``window_s``) + 1) x ``limit``
    in any time T (100 an hour: 200 in an hour, 2,500 in a day). Letters that come at most
    ``limit`` in every rolling ``window_s`` are all written, as before; a key's whole quota
    is back ``window_s`` after its window's first letter.

    A batch asks through a ``plan`` and spends the quota only on ``commit``, once stored: a
    batch the database refused and that is tried again must not use it up."""

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self._windows: dict[object, tuple[float, int]] = {}  # key: (opened, written)
        self._swept = 0.0

    def plan(self, now: float) -> QuotaPlan:
        return QuotaPlan(self, now)

    def limit_of(self, key) -> int:
        return self.limit

    def room(self, key, now: float) -> int:
        opened, written = self._windows.get(key, (-float("inf"), 0))
        limit = self.limit_of(key)
        return limit - written if now < opened + self.window_s else limit

    def spend(self, written: Counter, now: float) -> None:
        for key, n in written.items():
            opened, count = self._windows.get(key, (-float("inf"), 0))
            if now >= opened + self.window_s:  # closed: this letter opens the next window
                opened, count = now, 0
            self._windows[key] = (opened, count + n)
        if now - self._swept > self.window_s:  # forget the keys whose window has closed
            self._swept = now
            self._windows = {k: w for k, w in self._windows.items()
                             if now < w[0] + self.window_s}


class QuotaPlan:
    """One batch's answers (callable: ``admit(letter)``): the same letter gets the same
    answer however often it is asked (a batch retried row by row asks again). Its key is
    found once, when first asked."""

    def __init__(self, quota: DeadLetterQuota, now: float):
        self.quota = quota
        self.now = now
        self.answers: dict[str, bool] = {}
        self.keys: dict[str, str] = {}  # digest: quota_key
        self.taken: Counter = Counter()
        self.over: Counter = Counter()

    def __call__(self, letter: DeadLetter) -> bool:
        ok = self.answers.get(letter.digest)
        if ok is None:
            key = self.keys[letter.digest] = quota_key(letter.topic)
            ok = self.quota.room(key, self.now) > self.taken[key]
            (self.taken if ok else self.over)[key] += 1
            self.answers[letter.digest] = ok
        return ok

    def commit(self, written: list[DeadLetter] | None = None) -> None:
        """Spend the quota of the letters written (``Stored.written``; None: all those
        admitted). An admitted letter the database held already stored nothing and
        spends nothing."""
        self.quota.spend(self.taken if written is None else
                         Counter(self.keys[d.digest] for d in written), self.now)


class MessageQuota(DeadLetterQuota):
    """At most ``limit`` valid messages written per device and kind (the key
    (device_id, kind)) for each kind with a receipt (RECEIPTED_KINDS), ``unreceipted`` for
    each other kind, in each of the key's windows: the fixed windows of ``DeadLetterQuota``,
    so at most twice that in any rolling ``window_s``. A write is a message stored, or a
    re-send's new seq kept in ``resent``; a message the database holds already writes
    nothing and spends nothing. A batch asks through a ``plan`` (``central.db.RowRoom``)
    and spends the quota only on ``commit``."""

    def __init__(self, limit: int, unreceipted: int, window_s: float):
        super().__init__(limit, window_s)
        self.unreceipted = unreceipted

    def limit_of(self, key: tuple[str, str]) -> int:
        return self.limit if key[1] in RECEIPTED_KINDS else self.unreceipted

    def plan(self, now: float) -> MessagePlan:
        return MessagePlan(self, now)

    def seed(self, writes: list[tuple[str, str, int, float]], wall: float, now: float
             ) -> None:
        """Each key's window as the database counts it (``Store.recent_writes`` of the last
        ``window_s``, received times on the wall clock `wall` is of): its writes, in a
        window opened at the first of them, on the clock of `now` (the plans'). A restarted
        collector allowed every box the window's quota again. The count may hold the end
        of the window before (it counts back ``window_s``, a rolling count): never fewer
        than the lost window's, in a window that closes no later."""
        for dev, kind, n, first in writes:
            if (dev, kind) not in self._windows and wall < first + self.window_s:
                self._windows[(dev, kind)] = (now - max(0.0, wall - first), n)


class MessagePlan:
    """One batch's room for each device's messages (``central.db.RowRoom``): a write fits
    while its key has room beyond the writes the batch took, and a write taken fits
    however often it is asked (a batch retried row by row asks again). A write is known by
    its msg_id and seq: a redelivery is the same write, a re-send under a new seq another."""

    def __init__(self, quota: MessageQuota, now: float):
        self.quota = quota
        self.now = now
        self.taken: dict[tuple[str, str], set[tuple[str, int]]] = {}

    def fits(self, row: Row) -> bool:
        key = (row.device_id, row.kind)
        taken = self.taken.get(key, set())
        return (row.msg_id, row.seq) in taken or self.quota.room(key, self.now) > len(taken)

    def took(self, row: Row) -> None:
        self.taken.setdefault((row.device_id, row.kind), set()).add((row.msg_id, row.seq))

    def commit(self) -> None:
        """Spend the quota of the writes taken, once their batch is committed."""
        self.quota.spend(Counter({key: len(w) for key, w in self.taken.items()}), self.now)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class Collector:
    def __init__(self, settings: CollectorSettings, store: Store | None = None):
        from wire.mqtt import check_tls_file, parse_mqtt_url, read_secret_file

        self.settings = settings
        self.target = parse_mqtt_url(settings.mqtt_url)
        for flag, path in (("--tls-ca", settings.tls_ca), ("--tls-cert", settings.tls_cert),
                           ("--tls-key", settings.tls_key)):
            if path:
                check_tls_file(path, flag)
        if settings.password_file:
            self.target = replace(self.target,
                                  password=read_secret_file(settings.password_file))
        if settings.share_group and not _SHARE_RE.match(settings.share_group):
            # paho raised a traceback on "+" or "#"; "a/b" subscribed to b/sonoedge/+/+,
            # which no device publishes on: a collector that stores nothing, without a word
            raise ValueError(f"--share-group {settings.share_group[:80]!r}: must be 1-100 "
                             "characters without /, +, # or control characters")
        if settings.share_group and len(settings.share_group) < MIN_SHARE_GROUP_CHARS:
            # Not refused: a unit file of the old default (--share-group sonoedge) would
            # leave the district without a collector after an upgrade. Subscribed plainly,
            # several collectors each get every message and store it once (its msg_id).
            log.warning(
                "--share-group: a name of %d characters can be guessed, and any broker user "
                "(a device too) naming the group takes a share of the district's messages, "
                "which the broker then drops: subscribing plainly instead; for a shared "
                "subscription use at least %d random characters (python3 -c 'import "
                "secrets; print(secrets.token_urlsafe(16))')", len(settings.share_group),
                MIN_SHARE_GROUP_CHARS)
            settings = replace(settings, share_group="")
            self.settings = settings
        self._registry: tuple[float, dict[str, str]] | None = None
        self._registry_written: float | None = None  # the mtime of the copy in the database
        self._unregistered: set[str] = set()
        self.clinics()  # a broken registry is an error at start, naming the file and line
        self.client_id = settings.client_id or "sonoedge-central-" + re.sub(
            r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40]
        self.store = store or Store(settings.db_url)
        self.stop_event = threading.Event()
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "conflicts": 0, "dead": 0,
                      "dead_over_quota": 0, "withheld_over_quota": 0,
                      "dropped_over_quota": 0, "qos0_dropped": 0, "receipts": 0}
        self._rng = random.Random()
        self._last_error: str | None = None
        self.quota = DeadLetterQuota(settings.dead_letter_quota, settings.dead_letter_window_s)
        self._over: Counter = Counter()  # over quota since the last line that said so
        self.message_quota = MessageQuota(settings.exam_quota, settings.health_quota,
                                          settings.message_window_s)
        wall = time.time()  # each box's writes so far in the window, from the database
        try:
            self.message_quota.seed(self.store.recent_writes(
                wall - settings.message_window_s), wall, time.monotonic())
        except DbError as exc:  # the quota starts from nothing, as before; said
            log.warning("central: could not count each box's messages of the last %g s, "
                        "its quota starts from none: %s", settings.message_window_s, exc)
        self._over_messages: Counter = Counter()  # (device, kind): the same, of messages
        self._over_said = -float("inf")
        self._db_down: float | None = None  # since when the database cannot be written
        self._db_failures = 0
        self._db_retry_at = 0.0

    def clinics(self) -> dict[str, str] | None:
        """The registry, re-read when its file changes (provisioning a device needs no
        restart); on a read error the last good copy stays in use."""
        path = self.settings.registry
        if not path:
            return None
        try:
            mtime = os.stat(path).st_mtime
            if self._registry is None or self._registry[0] != mtime:
                self._registry = (mtime, read_registry(path))
                log.info("registry %s: %d devices", shown_path(path), len(self._registry[1]))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            why = (f"registry {shown_path(path)}: {read_failure(exc)}"
                   if isinstance(exc, OSError) else str(exc))
            if self._registry is None:
                raise ValueError(why) from None
            self._error(f"{why}; using the last good copy")
        return self._registry[1]

    def _write_registry(self) -> None:
        """The registry into the database when it was read anew (checked at every sign of
        life, so a box provisioned while none sends appears on the dashboard too)."""
        # run without one: a registry an earlier run left would list its boxes as never
        # heard from for ever
        mtime, devices = (-1.0, {}) if self.clinics() is None else self._registry
        if mtime == self._registry_written:
            return
        try:
            self.store.set_registry(devices, time.time())
        except DbError as exc:
            self._error(f"could not write the registry to the database: {exc}")
            return
        self._registry_written = mtime

    @property
    def topic(self) -> str:
        g = self.settings.share_group
        return f"$share/{g}/{TOPIC_FILTER}" if g else TOPIC_FILTER

    def run(self) -> int:
        """Run until ``stop_event`` (or ``duration_s``); 0 on a clean stop."""
        deadline = (time.monotonic() + self.settings.duration_s
                    if self.settings.duration_s else None)
        attempt = 0
        while not self.stop_event.is_set():
            if deadline and time.monotonic() >= deadline:
                break
            ok = self._session(deadline)
            if self.stop_event.is_set() or (deadline and time.monotonic() >= deadline):
                break
            attempt = 0 if ok else attempt + 1
            self.stop_event.wait(backoff_delay(attempt, self.settings.reconnect_min_s,
                                               self.settings.reconnect_max_s, self._rng))
        self._say_over_quota(force=True)
        log.info("collector %s stopping: %s", self.client_id, self.stats)
        self.store.close()
        return 0

    def _error(self, text: str) -> None:
        if text != self._last_error:
            log.warning("central: %s", text)
            self._last_error = text

    def _session(self, deadline: float | None) -> bool:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from wire.mqtt import describe_connect_error

        s = self.settings
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                             client_id=self.client_id, protocol=mqtt.MQTTv5, manual_ack=True)
        client.connect_timeout = s.connect_timeout_s
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password or None)
        if self.target.tls or s.tls_ca:
            try:
                client.tls_set(ca_certs=s.tls_ca or None, certfile=s.tls_cert or None,
                               keyfile=s.tls_key or None)
            except (OSError, ValueError) as exc:
                self._error(f"TLS setup failed: {exc}")
                return False
        state: dict = {"connack": None, "lost": False, "suback": None}
        inbox: list = []
        client.on_connect = lambda c, u, f, rc, p: state.__setitem__("connack", rc)
        client.on_disconnect = lambda c, u, f, rc, p: state.__setitem__("lost", True)
        client.on_subscribe = lambda c, u, mid, rcs, p: state.__setitem__("suback", rcs)
        client.on_message = lambda c, u, msg: inbox.append(msg)
        client.on_publish = self._receipt_answered
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(s.session_expiry_s)
        props.ReceiveMaximum = max(1, int(s.receive_maximum))
        try:
            client.connect(self.target.host, self.target.port, keepalive=s.keepalive_s,
                           clean_start=False, properties=props)
            limit = time.monotonic() + s.connect_timeout_s
            while state["connack"] is None and not state["lost"] and time.monotonic() < limit:
                if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                    break
        except (OSError, ValueError) as exc:
            self._error(describe_connect_error(exc, self.target))
            return False
        rc = state["connack"]
        if rc is None or rc.is_failure:
            why = rc if rc is not None else "no CONNACK"
            self._error(f"broker {self.target.host}:{self.target.port} refused "
                        f"{self.target.username or '(anonymous)'!r}: {why}")
            _close(client)
            return False
        client.subscribe(self.topic, qos=1)
        limit = time.monotonic() + s.connect_timeout_s
        while state["suback"] is None and not state["lost"] and time.monotonic() < limit:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
        granted = state["suback"] or []
        if not granted or granted[0].is_failure:
            self._error(f"subscription to {self.topic} refused: {granted or 'no SUBACK'}")
            _close(client)
            return False
        if self.topic != LEGACY_SHARE_FILTER:
            # a session kept from the old default would go on getting every message twice,
            # and a device could still join that group (its share then dropped, harmless
            # beside the plain subscription, but each message delivered twice for ever)
            client.unsubscribe(LEGACY_SHARE_FILTER)
        log.info("collector %s subscribed to %s on %s", self.client_id, self.topic,
                 self.target.redacted())
        self._last_error = None
        ok = self._consume(client, state, inbox, deadline)
        if ok and not self.stop_event.is_set() and not (deadline and
                                                        time.monotonic() >= deadline):
            self._error(f"lost connection to {self.target.host}:{self.target.port}")
        _close(client)
        return True

    def _consume(self, client, state: dict, inbox: list, deadline: float | None) -> bool:
        import paho.mqtt.client as mqtt

        last_log = time.monotonic()
        subscribed_ts, alive_at = time.time(), -float("inf")  # marked at once, then every
        # Received, not stored: the database could not be written. Never acknowledged, so
        # the broker delivers them again if this session ends first.
        held: list = []
        while not self.stop_event.is_set() and not state["lost"]:
            if deadline and time.monotonic() >= deadline:
                break
            rc = client.loop(timeout=0.05)
            # Gather a batch (up to 500 messages or 50 ms) so one commit, one fsync, covers
            # many messages; nothing is acknowledged before its batch is committed.
            gather_until = time.monotonic() + 0.05
            while (inbox and rc == mqtt.MQTT_ERR_SUCCESS and len(inbox) < 500
                   and time.monotonic() < gather_until):
                rc = client.loop(timeout=0.01)
            if inbox and self._db_down is not None:
                held = self._hold(held + inbox)
                inbox.clear()
            if (held or inbox) and time.monotonic() >= self._db_retry_at:
                batch, held = held + inbox, []
                inbox.clear()
                try:
                    receipts = self._store_batch(batch)
                except DbError as exc:  # held, unacknowledged, tried again after a wait
                    held = self._hold(batch)
                    self._database_down(str(exc), len(held))
                except Exception:  # never die: unacknowledged, so nothing is lost
                    log.exception("collector %s: storing a batch failed", self.client_id)
                    return False
                else:
                    self._database_up(len(batch))
                    self._send_receipts(client, receipts)
                    for msg in batch:
                        if msg.qos > 0:
                            client.ack(msg.mid, msg.qos)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
            self._say_over_quota()
            if self._db_down is None and time.monotonic() - alive_at >= (
                    self.settings.alive_every_s):
                alive_at = time.monotonic()
                try:
                    self.store.mark_alive(self.client_id, subscribed_ts, time.time(),
                                          its_clock=True)
                except DbError as exc:  # the next batch finds the database down and says so
                    self._error(f"could not mark this collector alive: {exc}")
                else:
                    self._write_registry()
            if time.monotonic() - last_log > 60:
                log.info("collector %s: %s", self.client_id, self.stats)
                last_log = time.monotonic()
        if held:  # said once per session, not per try
            log.info("collector %s: %d message(s) not stored are left unacknowledged to the "
                     "broker, which delivers them again", self.client_id, len(held))
        # Ack what was stored before leaving; nothing unstored is acknowledged.
        try:
            client.loop(timeout=0.05)
        except (OSError, ValueError):
            pass
        return True

    def _send_receipts(self, client, receipts: dict[str, set[str]]) -> None:
        """Tell each device which of its receipted messages a committed batch settled
        (wire/receipt.py); the broker keeps them in the session of a device that is away."""
        for device, ids in receipts.items():
            for payload in build_receipts(device, ids):
                client.publish(receipt_topic(device), payload, qos=1)
                self.stats["receipts"] += 1

    def _receipt_answered(self, _client, _userdata, _mid, reason_code, _props) -> None:
        """The broker's PUBACK to a receipt (the collector publishes nothing else): a
        refusal is said once (`_error`); its boxes keep deleting on PUBACK as before."""
        if getattr(reason_code, "is_failure", False):
            self._error(f"the broker refused a receipt to a device ({reason_code}): let "
                        f"central users write {RECEIPT_PREFIX}/# (regenerate the ACL with "
                        "board/provision.py and reload the broker)")

    def _hold(self, held: list) -> list:
        """What is held while the database is down, bounded: the broker sends at most
        ``receive_maximum`` QoS 1 messages unacknowledged, but QoS 0 ones without limit (no
        device sends them; one that does may lose them, as QoS 0 allows)."""
        kept, qos0 = [], 0
        for m in held:
            qos0 += m.qos == 0
            if m.qos > 0 or qos0 <= self.settings.receive_maximum:
                kept.append(m)
        self.stats["qos0_dropped"] += len(held) - len(kept)
        return kept

    def _database_down(self, text: str, held: int) -> None:
        """A failed try: the next after a doubling wait; one line when the database goes."""
        now = time.monotonic()
        if self._db_down is None:
            self._db_down, self._db_failures = now, 0
            log.warning("central: database down, %d message(s) held unacknowledged and "
                        "tried again after waits doubling from %g s to %g s: %s", held,
                        self.settings.db_retry_min_s, self.settings.db_retry_max_s, text)
        self._db_retry_at = now + backoff_delay(
            self._db_failures, self.settings.db_retry_min_s, self.settings.db_retry_max_s,
            self._rng)
        self._db_failures += 1

    def _database_up(self, stored: int) -> None:
        if self._db_down is not None:
            log.warning("central: database back after %.1f s and %d failed tries; %d held "
                        "message(s) stored", time.monotonic() - self._db_down,
                        self._db_failures, stored)
        self._db_down, self._db_failures, self._db_retry_at = None, 0, 0.0

    def _say_over_quota(self, force: bool = False) -> None:
        """The dead letters not written for their device's quota since it was last said,
        and the messages: one line each at most per ``over_quota_log_s`` (and one at the
        stop)."""
        now = time.monotonic()
        if not (self._over or self._over_messages) or (
                not force and now - self._over_said < self.settings.over_quota_log_s):
            return
        if self._over:
            log.warning("central: %d dead letter(s) over quota (%d per device per %g s) "
                        "counted, not stored: %s", sum(self._over.values()), self.quota.limit,
                        self.quota.window_s, _most(self._over))
        if self._over_messages:
            q = self.message_quota
            log.warning("central: %d valid message(s) over quota (per device per %g s: %d "
                        "of each kind with a receipt, %d of each other) counted, not stored: "
                        "%s; exams, dates and withdrawals get no receipt and their boxes send "
                        "them again, health and status are dropped",
                        sum(self._over_messages.values()), q.window_s, q.limit, q.unreceipted,
                        _most(Counter({f"{d} {k}": n for (d, k), n in
                                       self._over_messages.items()})))
        self._over.clear()
        self._over_messages.clear()
        self._over_said = now

    def _store_batch(self, batch: list) -> dict[str, set[str]]:
        """Store a batch in one transaction; the receipts it owes (device: msg_ids,
        `receipt_for`), to send once it is committed: none for a message kept out by its
        device's quota, which its box sends again."""
        now = time.time()
        rows, dead, checked = [], [], []
        clinics = self.clinics()
        for msg in batch:
            topic = _topic_of(msg)
            payload = bytes(msg.payload)
            item = check(topic, payload, self.settings.max_bytes, self.client_id, now, clinics)
            (dead if isinstance(item, DeadLetter) else rows).append(item)
            checked.append((topic, payload, item))
            if (clinics is not None and isinstance(item, Row)
                    and item.device_id not in clinics and item.device_id not in
                    self._unregistered):
                self._unregistered.add(item.device_id)
                log.warning("device %s is not in the registry %s: its messages are stored "
                            "without a clinic", item.device_id, self.settings.registry)
        plan = self.quota.plan(time.monotonic())
        room = self.message_quota.plan(time.monotonic())
        done = self.store.store_batch(rows, dead, admit=plan, room=room)
        plan.commit(done.written)  # stored: the quota is spent
        room.commit()
        withheld = {(r.device_id, r.msg_id) for r in done.withheld}
        receipts: dict[str, set[str]] = {}
        for topic, payload, item in checked:
            owed = receipt_for(topic, payload, item, self.settings.max_bytes)
            if owed and owed not in withheld:
                receipts.setdefault(owed[0], set()).add(owed[1])
        for d in done.written:
            log.warning("dead letter on %s: %s", d.topic, d.reason)
        kept_by_box = sum(r.kind in RECEIPTED_KINDS for r in done.withheld)
        self.stats["received"] += len(batch)
        self.stats["stored"] += done.rows
        self.stats["duplicates"] += (len(rows) - len(done.refused) - done.rows
                                     - len(done.conflicts) - len(done.withheld))
        self.stats["conflicts"] += len(done.conflicts)
        self.stats["dead"] += done.dead
        self.stats["dead_over_quota"] += sum(plan.over.values())
        self.stats["withheld_over_quota"] += kept_by_box
        self.stats["dropped_over_quota"] += len(done.withheld) - kept_by_box
        self._over.update(plan.over)
        self._over_messages.update((r.device_id, r.kind) for r in done.withheld)
        return receipts


def _most(counts: Counter) -> str:
    """The five largest counts of a log line, and how many more."""
    top = counts.most_common(5)
    more = len(counts) - len(top)
    return ", ".join(f"{k} {n}" for k, n in top) + (f" and {more} more" if more > 0 else "")


def _topic_of(msg) -> str:
    try:
        return msg.topic
    except UnicodeDecodeError:  # the broker should refuse it; a dead letter if not
        return bytes(getattr(msg, "_topic", b"")).decode("utf-8", "replace")


def _close(client) -> None:
    try:
        client.disconnect()
        client.loop(timeout=0.05)
    except Exception:
        pass
