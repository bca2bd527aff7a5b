"""Central collector: subscribe to every device's messages and store each exactly once.

MQTT v5 with a persistent session (``clean_start=False`` and a session expiry), so what the
devices publish while the collector is away waits at the broker. Messages are acknowledged
by hand (``manual_ack``) and only after the batch holding them is committed: a collector
killed between receiving and storing gets the same messages again, and the ``msg_id``
constraint keeps them single. Several collectors split the load through a shared
subscription ``$share/<group>/sonoedge/+/+``; they can share one PostgreSQL database.

Anything that is not a valid message goes to the dead-letter table with the reason, and
the collector keeps running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import socket
import threading
import time
from dataclasses import dataclass

from central.db import DEAD_PREVIEW_CHARS, DbError, DeadLetter, Row, Store
from wire import schema as wire_schema

log = logging.getLogger("sonoedge.central")

TOPIC_FILTER = "sonoedge/+/+"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class CollectorSettings:
    mqtt_url: str
    db_url: str
    client_id: str = ""  # "" means sonoedge-central-<host name>
    share_group: str = "sonoedge"  # "" subscribes without $share
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
    duration_s: float | None = None  # stop after this long (tests, cron-style runs)


def check(topic: str, payload: bytes, max_bytes: int, collector: str,
          now: float) -> Row | DeadLetter:
    """Turn one received message into a row to store, or a dead letter with the reason."""
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
            data = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            reason = f"bad JSON: {_first_line(exc)}"
        if reason is None and not isinstance(data, dict):
            reason = f"not a JSON object but {type(data).__name__}"
        if reason is None and data.get("kind") != parts[2]:
            got = repr(data["kind"])[:40] if "kind" in data else "missing"
            reason = f"kind {got} in payload, {parts[2]!r} in topic"
        if reason is None:
            errors = wire_schema.validate(data, wire_schema.load_schema(parts[2]))
            if errors:
                reason = "schema: " + "; ".join(errors[:3])
        if reason is None and data["device_id"] != parts[1]:
            reason = f"device_id {data['device_id']!r} in payload, {parts[1]!r} in topic"
    if reason is not None:
        digest = hashlib.sha256(topic.encode("utf-8", "replace") + b"\0" + payload).hexdigest()
        preview = payload[:DEAD_PREVIEW_CHARS].decode("utf-8", "replace").replace("\x00", "")
        return DeadLetter(digest, topic[:255], reason[:500], len(payload), preview, now,
                          collector)
    return Row(
        msg_id=data["msg_id"], device_id=parts[1], clinic_id=data["clinic_id"], kind=parts[2],
        seq=int(data["seq"]), boot_id=data["boot_id"], device_ts=float(data["ts"]),
        mono_s=float(data["mono_s"]), received_ts=now, collector=collector,
        payload=payload.decode("utf-8"),
    )


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else type(exc).__name__


class Collector:
    def __init__(self, settings: CollectorSettings, store: Store | None = None):
        from wire.mqtt import parse_mqtt_url

        self.settings = settings
        self.target = parse_mqtt_url(settings.mqtt_url)
        self.client_id = settings.client_id or "sonoedge-central-" + re.sub(
            r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:40]
        self.store = store or Store(settings.db_url)
        self.stop_event = threading.Event()
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "dead": 0}
        self._rng = random.Random()
        self._last_error: str | None = None

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
            cap = min(self.settings.reconnect_max_s,
                      self.settings.reconnect_min_s * 2 ** min(attempt, 20))
            self.stop_event.wait(cap / 2 + self._rng.uniform(0, cap / 2))
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
            if inbox:
                batch = inbox[:]
                inbox.clear()
                try:
                    self._store_batch(batch)
                except DbError as exc:
                    # Unacknowledged: the broker redelivers them on the next session.
                    self._error(str(exc))
                    return False
                for msg in batch:
                    if msg.qos > 0:
                        client.ack(msg.mid, msg.qos)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
            if time.monotonic() - last_log > 60:
                log.info("collector %s: %s", self.client_id, self.stats)
                last_log = time.monotonic()
        # Ack what was stored before leaving; nothing unstored is acknowledged.
        try:
            client.loop(timeout=0.05)
        except (OSError, ValueError):
            pass
        return True

    def _store_batch(self, batch: list) -> None:
        now = time.time()
        rows, dead = [], []
        for msg in batch:
            item = check(msg.topic, bytes(msg.payload), self.settings.max_bytes,
                         self.client_id, now)
            (dead if isinstance(item, DeadLetter) else rows).append(item)
        new_rows, new_dead = self.store.store(rows, dead)
        for d in dead:
            log.warning("dead letter on %s: %s", d.topic, d.reason)
        self.stats["received"] += len(batch)
        self.stats["stored"] += new_rows
        self.stats["duplicates"] += len(rows) - new_rows
        self.stats["dead"] += new_dead


def _close(client) -> None:
    try:
        client.disconnect()
        client.loop(timeout=0.05)
    except Exception:
        pass
