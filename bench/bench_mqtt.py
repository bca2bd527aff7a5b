"""MQTT store-and-forward figures: outbox, wire bytes, collector ingest.

    python -m bench.bench_mqtt

Runs a private Mosquitto on a free loopback port (and a throwaway PostgreSQL when it can),
so it needs what ``make test`` installs. Everything is measured, nothing assumed:
- outbox enqueue rate: exam summaries through ``Outbox.enqueue`` (WAL, synchronous=FULL,
  one fsync per message), on the disk that holds the temp dir;
- drain rate: a backlog published by the real ``Uplink`` thread until every PUBACK is in
  (a QoS 1 subscriber consumes, so the broker does not answer "no subscribers");
- bytes on the wire: a TCP relay between the uplink and the broker counts the MQTT bytes in
  both directions; per message = (bytes of a session with K messages - bytes of an empty
  session) / K. TCP/IP headers (about 52 bytes per segment on loopback, more with TLS,
  about 29 bytes per TLS record) come on top;
- collector ingest: ``Store.store`` in batches of 200 (the database alone), and end to end
  (raw publisher -> broker -> ``sonoedge central`` process -> database).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from central.collector import check  # noqa: E402
from central.db import Store  # noqa: E402
from edge.exam import tally  # noqa: E402
from edge.store.outbox import Outbox  # noqa: E402
from edge.uplink import messages  # noqa: E402
from edge.uplink.mqtt import MqttSettings, Uplink  # noqa: E402
from wire import schema as wire_schema  # noqa: E402


def _frames(n: int) -> list[dict]:
    planes = wire_schema.PLANES
    return [{"plane": planes[i % 12], "plane_confidence": 0.5 + (i % 50) / 100,
             "latency_ms": 5.0 + i % 7, "model": "plane_student@1.0.0", "error": None}
            for i in range(n)]


def exam_payload(device: str = "dev-a") -> dict:
    env = messages.envelope("exam", device, "clinic-1", "bench-boot")
    body = tally.summarize_exam(_frames(300), "clip.mp4", time.time() - 300, time.time(),
                                    model_versions={"plane_student": "1.0.0"})
    return messages.build_exam(env, body)


class Relay:
    """Loopback TCP relay that counts bytes in each direction."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.up = self.down = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    def total(self) -> int:
        with self._lock:
            return self.up + self.down

    def close(self) -> None:
        self.sock.close()


def _consumer(broker) -> object:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set("central", broker.passwords["central"])
    c.connect("127.0.0.1", broker.port)
    c.subscribe("sonoedge/#", qos=1)
    c.loop_start()
    time.sleep(0.3)
    return c


def bench_enqueue(work: Path, n: int = 1000) -> float:
    box = Outbox(work / "enqueue.sqlite3")
    payload = exam_payload()
    t = time.perf_counter()
    for _ in range(n):
        box.enqueue("exam", payload)
    rate = n / (time.perf_counter() - t)
    box.close()
    return rate


def _session_bytes(relay: Relay, work: Path, kind: str, k: int) -> int:
    """MQTT bytes of one uplink session that sends ``k`` messages of ``kind``."""
    state = work / f"wire-{kind}-{k}-{uuid.uuid4().hex[:6]}"
    s = MqttSettings(url=relay_url(relay), device_id="dev-a", clinic_id="clinic-1",
                     reconnect_min_s=0.1, reconnect_max_s=0.5)
    up = Uplink(s, state, {"plane_student": "1.0.0"})
    for _ in range(k):
        if kind == "exam":
            up.enqueue_exam(tally.summarize_exam(_frames(300), "clip.mp4", time.time() - 300,
                                              time.time(), model_versions=up.model_versions))
        else:
            up.enqueue_health({"fps": 29.9, "latency_ms_p50": 6.1, "latency_ms_p90": 9.8,
                               "frames": 123456, "frames_failed": 12, "frames_dropped": 3})
    relay.reset()
    up.start()
    assert up.drain(30), "bench: drain timed out"
    up.close()
    time.sleep(0.3)
    return relay.total()


_RELAY_URL: dict[int, str] = {}


def relay_url(relay: Relay) -> str:
    return _RELAY_URL[relay.port]


def bench_wire(broker, work: Path) -> dict:
    relay = Relay(broker.port)
    _RELAY_URL[relay.port] = f"mqtt://dev-a:{broker.passwords['dev-a']}@127.0.0.1:{relay.port}"
    out = {}
    try:
        # Difference of a 101-message and a 1-message session: connect, status and
        # disconnect cancel out, and neither session ends before it is fully connected.
        for kind in ("exam", "health"):
            one = statistics.median(_session_bytes(relay, work, kind, 1) for _ in range(3))
            out[kind] = (_session_bytes(relay, work, kind, 101) - one) / 100
            if kind == "exam":
                out["session"] = one - out["exam"]
    finally:
        relay.close()
    return out


def bench_drain(broker, work: Path, n: int = 1000) -> float:
    s = MqttSettings(url=f"mqtt://dev-a:{broker.passwords['dev-a']}@127.0.0.1:{broker.port}",
                     device_id="dev-a", reconnect_min_s=0.1, reconnect_max_s=0.5)
    up = Uplink(s, work / "drain", {"plane_student": "1.0.0"})
    payload = exam_payload()
    body = {k: v for k, v in payload.items() if k not in messages.envelope("exam", "", "", "")}
    for _ in range(n):
        up.enqueue_exam(body)
    t = time.perf_counter()
    up.start()
    ok = up.drain(120)
    rate = n / (time.perf_counter() - t)
    up.close()
    return rate if ok else float("nan")


def _rows(n: int) -> list:
    rows = []
    for i in range(n):
        p = exam_payload() | {"msg_id": str(uuid.uuid4()), "seq": i + 1}
        rows.append(check("sonoedge/dev-a/exam", json.dumps(p).encode(), 4096, "bench",
                          time.time()))
    return rows


def bench_store(url: str, n: int = 4000) -> float:
    rows = _rows(n)
    store = Store(url)
    t = time.perf_counter()
    for i in range(0, n, 200):
        store.store(rows[i:i + 200], [])
    rate = n / (time.perf_counter() - t)
    store.close()
    return rate


def bench_collector(broker, work: Path, db: str, n: int = 2000) -> float:
    """End to end: publish n exams as fast as QoS 1 allows, time until all are stored."""
    import paho.mqtt.client as mqtt

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(work / f"collector-{uuid.uuid4().hex[:6]}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "central.cli", "--mqtt-url",
                             f"mqtt://central:{broker.passwords['central']}@127.0.0.1:"
                             f"{broker.port}", "--db", db, "--client-id",
                             f"bench-{uuid.uuid4().hex[:6]}", "--no-share", "--duration-s",
                             "120", "--exam-quota", str(10 ** 9)],  # throughput, not quota
                            stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=str(REPO))
    try:
        deadline = time.monotonic() + 15
        while b"subscribed" not in Path(log.name).read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("collector did not start")
            time.sleep(0.05)
        payloads = [json.dumps(exam_payload("dev-b") | {"msg_id": str(uuid.uuid4()),
                                                        "seq": i + 1}).encode()
                    for i in range(n)]
        store = Store(db)
        before = store.query("SELECT COUNT(*) FROM messages")[0][0]
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub",
                          protocol=mqtt.MQTTv5)
        pub.username_pw_set("dev-b", broker.passwords["dev-b"])
        pub.max_inflight_messages_set(100)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        t = time.perf_counter()
        for p in payloads:
            pub.publish("sonoedge/dev-b/exam", p, qos=1)
        deadline = time.monotonic() + 120
        while store.query("SELECT COUNT(*) FROM messages")[0][0] - before < n:
            if time.monotonic() > deadline:
                return float("nan")
            time.sleep(0.05)
        rate = n / (time.perf_counter() - t)
        pub.loop_stop()
        pub.disconnect()
        store.close()
        return rate
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main() -> int:
    from tests.servers import Mosquitto, Postgres

    work = Path(tempfile.mkdtemp(prefix="sonoedge-bench-mqtt-", dir="/var/tmp"))
    rows: list[tuple[str, str, str]] = []
    broker = Mosquitto(work / "broker", persistence=False)
    for user, role in (("dev-a", "device"), ("dev-b", "device"), ("central", "central")):
        broker.add_user(user, role)
    broker.start()
    pg = None
    try:
        rows.append(("outbox enqueue (durable, fsync each)", f"{bench_enqueue(work):,.0f}",
                     "msg/s"))
        sub = _consumer(broker)
        rows.append(("outbox drain to local broker (QoS 1)", f"{bench_drain(broker, work):,.0f}",
                     "msg/s"))
        wire = bench_wire(broker, work)
        sub.loop_stop()
        sub.disconnect()
        example = json.dumps(exam_payload() | {"msg_id": str(uuid.uuid4()), "seq": 12345},
                             separators=(",", ":"))
        rows.append(("exam summary payload (JSON)", f"{len(example):,}", "bytes"))
        rows.append(("exam summary on the wire (MQTT)", f"{wire['exam']:,.0f}", "bytes/exam"))
        rows.append(("health on the wire (MQTT)", f"{wire['health']:,.0f}", "bytes/msg"))
        per_day = wire["health"] * 86400 / 60
        rows.append(("health per day at 60 s interval", f"{per_day / 1024:,.1f}", "KiB/day"))
        pings = 86400 / 30 * 4  # worst case: PINGREQ+PINGRESP, 2 bytes each, every 30 s idle
        rows.append(("+ keepalive pings, worst case (30 s)", f"{pings / 1024:,.1f}", "KiB/day"))
        rows.append(("connect+status+disconnect overhead", f"{wire['session']:,.0f}", "bytes"))
        sqlite_db = str(work / "central.sqlite3")
        rows.append(("collector store, SQLite (batches of 200)",
                     f"{bench_store(sqlite_db):,.0f}", "msg/s"))
        rows.append(("collector end to end, SQLite",
                     f"{bench_collector(broker, work, sqlite_db):,.0f}", "msg/s"))
        try:
            pg = Postgres().start()
        except Exception as exc:  # no PostgreSQL here: say so, do not fail the bench
            rows.append(("collector, PostgreSQL", "n/a", f"({exc})"[:60]))
        if pg is not None:
            rows.append(("collector store, PostgreSQL (batches of 200)",
                         f"{bench_store(pg.url):,.0f}", "msg/s"))
            rows.append(("collector end to end, PostgreSQL",
                         f"{bench_collector(broker, work, pg.url):,.0f}", "msg/s"))
    finally:
        broker.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print("MQTT store-and-forward (loopback broker, this machine)")
    for name, value, unit in rows:
        print(f"  {name:<{width}}  {value:>10}  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
