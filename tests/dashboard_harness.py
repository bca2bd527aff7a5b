"""What the dashboard tests, `make screenshots` and the bench share: a district filled by real
devices through a real Mosquitto and a real collector, and `sonoedge-central serve` on it.

Two boxes in two districts: ``box-north`` (clinic-north, district-n) runs `sonoedge run
--once` three times on real frames (the second-trimester screen on SonoNet's example
screens and HC18 heads; the head biometry protocol on heads alone), ``box-south``
(clinic-south, district-s) twice. Both send health every half second. Then box-north's
next health is published with a seq three ahead (two messages "lost" on the way: a hole),
and box-south publishes one malformed message (a dead letter).
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from central.dashboard import config as C
from tests.conftest import REPO
from tests.conftest_mqtt import CollectorProc, outbox_last_seq, py_env, wait_for
from tests.servers import Mosquitto, free_port, wait_port

DEVICES = {"box-north": "clinic-north", "box-south": "clinic-south"}
DISTRICTS = {"clinic-north": "district-n", "clinic-south": "district-s"}
ADMIN = ("officer", "admin-password-1")
VIEWER = ("north-viewer", "viewer-password-1")  # district-n only
HEADS = ("106_HC.png", "205_HC.png", "250_HC.png", "310_HC.png", "414_HC.png", "515_HC.png",
         "600_HC.png", "700_HC.png")
ALL_SCREENS = ("3VV", "4CH", "ABDOMINAL", "BRAIN-CB", "BRAIN-TV", "FEMUR", "KIDNEYS", "LIPS",
               "LVOT", "PROFILE", "RVOT", "SPINE-CORONAL", "SPINE-SAGITTAL")
# (device, protocol, SonoNet example screens shown, HC18 heads shown)
RUNS = (("box-north", "second-trimester", ALL_SCREENS, HEADS[:4]),
        ("box-south", "biometry", (), HEADS[2:7]),
        ("box-north", "biometry", (), HEADS[4:]),
        ("box-south", "second-trimester", ("4CH", "FEMUR", "KIDNEYS", "PROFILE"), HEADS[:2]),
        ("box-north", "biometry", (), HEADS[1:3]))


def _frames(data_dir: Path, dest: Path, screens: tuple[str, ...], heads: tuple[str, ...]
            ) -> Path:
    dest.mkdir(parents=True)
    i = 0
    for name in heads:
        for _ in range(2):
            (dest / f"f{i:03d}.png").symlink_to(data_dir / "hc18" / "images" / name)
            i += 1
    for name in screens:
        f = data_dir / "sononet" / "examples" / f"{name}.tiff"
        for _ in range(2):
            (dest / f"f{i:03d}.tiff").symlink_to(f)
            i += 1
    return dest


def _device_run(tmp: Path, broker: Mosquitto, n: int, device: str, protocol: str,
                screens: tuple[str, ...], heads: tuple[str, ...], data_dir: Path,
                exam_extra: str = "") -> None:
    """`sonoedge run --once` as `device` on real frames; `exam_extra`: more [exam] lines."""
    pw = tmp / f"{device}.password"
    if not pw.exists():
        pw.write_text(broker.passwords[device] + "\n")
        pw.chmod(0o600)
    config = tmp / f"run{n}.toml"
    config.write_text(
        f'[mqtt]\nurl = "mqtt://{device}@127.0.0.1:{broker.port}"\ndevice_id = "{device}"\n'
        f'clinic_id = "a-clinic-the-payload-claims"\npassword_file = "{pw}"\n'
        "health_interval_s = 0.5\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n"
        "drain_timeout_s = 30.0\n"
        f'[biometry]\npixel_size_mm = 0.15\n[exam]\nprotocol = "{protocol}"\n{exam_extra}')
    frames = _frames(data_dir, tmp / f"frames{n}", screens, heads)
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                          "--source", str(frames), "--state-dir", str(tmp / f"state-{device}"),
                          "--once"], capture_output=True, text=True, env=py_env(), cwd=REPO,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]


def messages(db: str) -> list[dict]:
    """Every stored message as the test reads it: the row's columns plus the payload."""
    import sqlite3

    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute("SELECT device_id, clinic_id, kind, seq, device_ts, received_ts, "
                            "payload FROM messages").fetchall()
    finally:
        conn.close()
    return [{"device_id": d, "clinic_id": c, "kind": k, "seq": s, "device_ts": t,
             "received_ts": r, "payload": json.loads(p)} for d, c, k, s, t, r, p in rows]


def standing_exams(payloads: list[dict]) -> list[dict]:
    """The exam payloads among `payloads` the dashboard counts: all but those whose latest
    `withdrawal` entry (by seq, per device and exam) withdrew them."""
    latest: dict[tuple[str, str], dict] = {}
    for p in payloads:
        key = (p.get("device_id"), p.get("exam_id"))
        if p.get("kind") == "withdrawal" and p["seq"] > latest.get(key, {"seq": -1})["seq"]:
            latest[key] = p
    return [p for p in payloads if p.get("kind") == "exam"
            and not latest.get((p["device_id"], p["exam_id"]), {}).get("withdrawn")]


@dataclass
class DistrictServers:
    """A broker with a user per box and the central user, the registry of each box's
    clinic, and the collector's password file and database path."""

    tmp: Path
    broker: Mosquitto
    registry: Path
    password_file: Path
    db: str
    collectors: list = field(default_factory=list)

    def collector(self) -> CollectorProc:
        """A collector subscribed to the broker (stopped with the servers)."""
        proc = CollectorProc(f"mqtt://central@127.0.0.1:{self.broker.port}", self.db, self.tmp,
                             "central", extra=("--password-file", str(self.password_file),
                                               "--registry", str(self.registry)))
        self.collectors.append(proc)
        proc.wait_subscribed()
        return proc

    def publish_raw(self, device: str, kind: str, payload: bytes):
        """One message as the box's broker user, bypassing the device's own checks; the
        publish's result (`.is_failure`)."""
        from tests.test_uplink_scenarios import publish_wait, raw_client

        client = raw_client(self.broker, device)
        try:
            return publish_wait(client, f"sonoedge/{device}/{kind}", payload)
        finally:
            client.loop_stop()
            client.disconnect()


@contextmanager
def district_servers(tmp: Path, boxes: dict[str, str]):
    """DistrictServers for `boxes` (device id -> clinic id); all stopped afterwards."""
    from board.provision import set_clinic

    broker = Mosquitto(tmp / "broker")
    for dev in boxes:
        broker.add_user(dev, "device")
    broker.add_user("central", "central")
    broker.start()
    servers = None
    try:
        registry = tmp / "devices.csv"
        for dev, clinic in boxes.items():
            set_clinic(registry, dev, clinic)
        pw = tmp / "central.password"
        pw.write_text(broker.passwords["central"] + "\n")
        pw.chmod(0o600)
        servers = DistrictServers(tmp, broker, registry, pw, str(tmp / "central.sqlite3"))
        yield servers
    finally:
        for proc in servers.collectors if servers is not None else ():
            proc.stop()
        broker.stop(signal.SIGKILL)


@contextmanager
def filled_district(tmp: Path, data_dir: Path):
    """A broker, a collector with the registry, and the device runs; yields the DB path once
    every message the devices queued is stored. Everything is stopped afterwards."""
    from tests.test_central import message

    with district_servers(tmp, DEVICES) as servers:
        db = servers.db
        servers.collector()
        for n, (dev, protocol, screens, heads) in enumerate(RUNS):
            _device_run(tmp, servers.broker, n, dev, protocol, screens, heads, data_dir)

        def last_seq(dev: str) -> int:
            return max((m["seq"] for m in messages(db) if m["device_id"] == dev
                        and m["kind"] != "status"), default=0)

        def all_stored() -> bool:
            sent = messages(db)
            for dev in DEVICES:
                allocated = outbox_last_seq(tmp / f"state-{dev}")
                seqs = {m["seq"] for m in sent if m["device_id"] == dev
                        and m["kind"] != "status"}
                if seqs != set(range(1, allocated + 1)):
                    return False
            return True

        wait_for(all_stored, 30, "every message the devices queued, at the collector")
        hole = message("health", device="box-north", seq=last_seq("box-north") + 3)
        assert not servers.publish_raw("box-north", "health",
                                       json.dumps(hole).encode()).is_failure
        servers.publish_raw("box-south", "exam", b'{"not": "an exam"')

        def settled() -> bool:
            return dead_letter_count(db) >= 1 and any(
                m["payload"].get("msg_id") == hole["msg_id"] for m in messages(db))

        wait_for(settled, 30, "the hole and the dead letter at the collector")
        districts = tmp / "districts.csv"
        districts.write_text("# clinic,district,name\n" + "".join(
            f"{c},{d},{c.split('-')[1].title()} clinic\n" for c, d in DISTRICTS.items()))
        for args, stdin in ((["districts", str(districts)], ""),
                            (["users", "add", ADMIN[0], "--role", "admin"], ADMIN[1]),
                            (["users", "add", VIEWER[0], "--role", "viewer", "--district",
                              "district-n"], VIEWER[1])):
            out = central(*args, "--db", db, stdin=stdin + "\n")
            assert out.returncode == 0, out.stderr
        yield db


def dead_letter_count(db: str) -> int:
    import sqlite3

    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    finally:
        conn.close()


def central(*args: str, stdin: str = "", timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "central.cli", *args], input=stdin,
                          capture_output=True, text=True, env=py_env(), cwd=REPO,
                          timeout=timeout_s)


@contextmanager
def dashboard(db: str, tmp: Path, *extra: str):
    """`sonoedge-central serve` on a free loopback port; yields its base URL."""
    port = free_port()
    log = open(tmp / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "central.cli", "serve", "--db", db,
                             "--listen", f"127.0.0.1:{port}", "--refresh-s", "0.5", *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=py_env(), cwd=REPO)
    try:
        wait_port(port, 60, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def request(base: str, path: str, cookie: str = "", method: str = "GET",
            form: dict | None = None, headers: dict | None = None, timeout_s: float = 30
            ) -> tuple[int, dict, bytes]:
    """One request, redirects not followed: (status, headers, body)."""
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout_s)
    body = urllib.parse.urlencode(form).encode() if form is not None else None
    h = dict(headers or {})
    if body is not None:
        h["Content-Type"] = "application/x-www-form-urlencoded"
    if cookie:
        h["Cookie"] = cookie
    try:
        conn.request(method, path, body=body, headers=h)
        res = conn.getresponse()
        headers = {k.lower(): v for k, v in res.getheaders()}
        # a login sets two cookies: keep every Set-Cookie, one per line
        headers["set-cookie"] = "\n".join(v for k, v in res.getheaders()
                                           if k.lower() == "set-cookie")
        return res.status, headers, res.read()
    finally:
        conn.close()


def login(base: str, user: tuple[str, str]) -> str:
    status, headers, body = request(base, "/login", method="POST",
                                    form={"username": user[0], "password": user[1]})
    assert status == 303, (status, body[:300])
    return cookie_named(headers, C.COOKIE)


def cookie_named(headers: dict, name: str) -> str:
    """`name=value` of the response's cookie called `name`."""
    found = [line.split(";", 1)[0] for line in headers["set-cookie"].splitlines()
             if line.startswith(name + "=")]
    assert len(found) == 1, headers["set-cookie"]
    return found[0]


def wait_rolled_up(base: str, cookie: str, exams: int, timeout_s: float = 60) -> None:
    """Until the dashboard's rollup holds ``exams`` exams (its refresh runs every 0.5 s)."""
    def count() -> bool:
        status, _, body = request(base, "/api/clinics.csv?weeks=104", cookie)
        if status != 200:
            return False
        lines = body.decode().splitlines()[1:]
        return sum(int(line.split(",")[2]) for line in lines) >= exams

    deadline = time.monotonic() + timeout_s
    while not count():
        if time.monotonic() > deadline:
            raise AssertionError(f"the dashboard did not roll up {exams} exams")
        time.sleep(0.2)


@contextmanager
def dashboard_in_thread(dash):
    """A `Dashboard`'s app on a free loopback port, in this process, on its own thread and
    event loop (a browser fixture may hold this one's); yields the port, and closes the
    dashboard after."""
    import asyncio
    import threading

    from aiohttp import web

    port, ready = free_port(), threading.Event()
    loop = asyncio.new_event_loop()

    def serve() -> None:
        runner = web.AppRunner(dash.app())
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        dash.close()
