"""The district dashboard at scale (issue 17): `python -m bench.dashboard` (or `make
bench-dashboard`; also the last section of `make bench`).

1. Seeds a simulated district (central/dashboard/seed.py: 50 clinics, 2 years, ~100,000
   exams with their health and status) into SQLite and into PostgreSQL, and times the
   dashboard's first rollup of it.
2. Page times: `sonoedge-central serve` on each database; every page (and its longest
   period) fetched by an admin (all 50 clinics) and by a viewer (one district), each
   ``REPEATS`` times over a fresh connection, as a browser would (gzip), with the page cache
   off (every view queries the database and draws the plots: the worst case); the median
   and p90 of the wall time of the whole response, client side. ``--only clinics`` times
   one page alone (both its periods): ``--no-ingest --only clinics`` is the Clinics page's
   timings on both databases.
3. Ingestion with and without the dashboard under load, on the seeded SQLite database: a
   real collector behind a real Mosquitto stores ``N_INGEST`` exam summaries published as
   fast as QoS 1 allows; the rate is measured alone and while ``LOAD_CLIENTS`` clients fetch
   dashboard pages back to back (far more than a district's officers would) and the
   dashboard rolls the new messages up, as it is shipped (page cache on, nice 10).
   Alternated, so a trend on the shared box does not favour one side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from central.dashboard import config as C  # noqa: E402
from central.dashboard.seed import SeedSettings, seed  # noqa: E402
from central.dashboard.store import open_db, refresh  # noqa: E402
from edge.exam.tally import percentile  # noqa: E402
from tests.dashboard_harness import request  # noqa: E402

REPEATS = 15
N_INGEST = 3000
BENCH_EXAM_QUOTA = 10 ** 9  # the collector's most: throughput is measured, not the quota
LOAD_CLIENTS = 4
# "Under load": four officers' browsers each asking for a page every 0.4 s, as admin and as a
# viewer in turn (10 pages/s: far more than a district's handful of officers), and, for
# information, the same four back to back (the server saturated). The clients run in their
# own process at nice 19: in the field they are the officers' machines, not the server's.
LOAD_PAUSE_S = 0.4
ROUNDS = 5  # the shared box's own swings (+-10%) are as large as the effect: many rounds
PAGES = [("clinics", ""), ("clinics", "weeks=104"), ("completeness", ""),
         ("completeness", "weeks=104"),
         ("quality", ""), ("quality", "weeks=104"), ("biometry", ""), ("biometry", "weeks=104"),
         ("devices", "")]
ADMIN = ("bench-admin", "bench-admin-password")
VIEWER = ("bench-viewer", "bench-viewer-password")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _central(*args: str, stdin: str = "") -> None:
    out = subprocess.run([sys.executable, "-m", "central.cli", *args], input=stdin,
                         capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())


def _free_port() -> int:
    from tests.servers import free_port

    return free_port()


class Server:
    """`sonoedge-central serve` as a process."""

    def __init__(self, db: str, work: Path, *extra: str):
        from tests.servers import wait_port

        self.port = _free_port()
        self.log = open(work / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "central.cli", "serve", "--db", db,
                                      "--listen", f"127.0.0.1:{self.port}", *extra],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=_env(),
                                     cwd=REPO)
        wait_port(self.port, 120, self.proc)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _get(port: int, path: str, cookie: str = "", method: str = "GET",
         form: dict | None = None) -> tuple[int, dict, bytes]:
    """The tests' own request, gzip accepted as a browser asks (pages are timed with it)."""
    return request(f"http://127.0.0.1:{port}", path, cookie, method, form,
                   {"Accept-Encoding": "gzip"}, timeout_s=60)


def _login(port: int, user: tuple[str, str]) -> str:
    status, headers, _ = _get(port, "/login", method="POST",
                              form={"username": user[0], "password": user[1]})
    if status != 303:
        raise RuntimeError(f"login as {user[0]}: HTTP {status}")
    return next(line.split(";", 1)[0] for line in headers["set-cookie"].splitlines()
                if line.startswith(C.COOKIE + "="))


def page_times(port: int, cookie: str, only: str | None = None) -> list[dict]:
    out = []
    for name, query in PAGES:
        if only is not None and name != only:
            continue
        path = f"/{name}" + (f"?{query}" if query else "")
        _get(port, path, cookie)  # warm: the first view after start opens the connection
        times, sizes, db_ms = [], [], []
        for _ in range(REPEATS):
            t = time.perf_counter()
            status, headers, body = _get(port, path, cookie)
            times.append((time.perf_counter() - t) * 1000)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
            sizes.append(len(body))
            timing = headers.get("server-timing", "")
            if "db;dur=" in timing:
                db_ms.append(float(timing.split("db;dur=")[1].split(",")[0]))
        times.sort()
        out.append({"page": path, "median_ms": statistics.median(times),
                    "p90_ms": percentile(times, 0.9), "max_ms": times[-1],
                    "kb": statistics.median(sizes) / 1024,
                    "db_ms": statistics.median(db_ms) if db_ms else None})
    return out


def _print_times(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n")
    print("| page | median ms | p90 ms | max ms | server DB+queries ms (median) | kB gzip |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        db = "-" if r["db_ms"] is None else f"{r['db_ms']:.0f}"
        print(f"| {r['page']} | {r['median_ms']:.0f} | {r['p90_ms']:.0f} | {r['max_ms']:.0f} | "
              f"{db} | {r['kb']:.1f} |")


def seeded(db: str, label: str) -> None:
    t = time.perf_counter()
    res = seed(db, SeedSettings())
    print(f"{label}: seeded {res.exam:,} exams, {res.health:,} health, {res.status:,} status, "
          f"{res.dates:,} dates corrections from {res.devices} devices in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    d = open_db(db)
    try:
        stats = refresh(d)
    finally:
        d.close()
    print(f"{label}: first rollup of {stats.messages:,} messages in {stats.seconds:.0f} s "
          f"({stats.messages / stats.seconds:,.0f} msg/s)", flush=True)
    _central("users", "add", ADMIN[0], "--role", "admin", "--db", db, stdin=ADMIN[1] + "\n")
    _central("users", "add", VIEWER[0], "--role", "viewer", "--district", "district-1",
             "--db", db, stdin=VIEWER[1] + "\n")


def measure_pages(db: str, label: str, work: Path, only: str | None = None) -> dict:
    # every view made from the database; at the collector's priority, since on this build
    # box the other load is model training, which a district server does not run
    server = Server(db, work, "--no-cache", "--nice", "0")
    try:
        out = {}
        for who, user in (("admin, all 50 clinics", ADMIN), ("viewer, district-1", VIEWER)):
            rows = page_times(server.port, _login(server.port, user), only)
            _print_times(f"### {label}, {who} ({REPEATS} loads of each page)", rows)
            out[who] = rows
        return out
    finally:
        server.stop()


# -- ingestion -------------------------------------------------------------------------------
def _exam_payloads(device: str, first_seq: int, n: int) -> list[bytes]:
    from bench.bench_mqtt import exam_payload

    base = exam_payload(device)
    return [json.dumps(base | {"msg_id": str(uuid.uuid4()), "seq": first_seq + i,
                               "ts": time.time()}).encode() for i in range(n)]


def _ingest(broker, db: str, device: str, first_seq: int, n: int) -> float:
    """Publish n exams as fast as QoS 1 allows; messages stored per second until all are."""
    import paho.mqtt.client as mqtt

    from central.db import Store

    payloads = _exam_payloads(device, first_seq, n)
    store = Store(db, create=False)
    count = ("SELECT COUNT(*) FROM messages WHERE device_id = ?", (device,))
    before = store.query(*count)[0][0]
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}",
                      protocol=mqtt.MQTTv5)
    pub.username_pw_set(device, broker.passwords[device])
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        t = time.perf_counter()
        for p in payloads:
            pub.publish(f"sonoedge/{device}/exam", p, qos=1)
        deadline = time.monotonic() + 300
        while store.query(*count)[0][0] - before < n:
            if time.monotonic() > deadline:
                return float("nan")
            time.sleep(0.02)
        return n / (time.perf_counter() - t)
    finally:
        pub.loop_stop()
        pub.disconnect()
        store.close()


def _load(port: int, cookies: list[str], pause_s: float, offset: int, stop: threading.Event,
          served: list) -> None:
    i = offset
    while not stop.is_set():
        name, query = PAGES[i % len(PAGES)]
        cookie = cookies[(i // len(PAGES)) % len(cookies)]
        i += 1
        status, _, _ = _get(port, f"/{name}" + (f"?{query}" if query else ""), cookie)
        served.append(status)
        if pause_s:
            stop.wait(pause_s)


def load_main(port: int, clients: int, pause_s: float) -> int:
    """The page load, in a process of its own (its threads must not take the publisher's
    GIL): ``clients`` clients until SIGTERM, then prints the pages served."""
    import signal

    cookies = os.environ["BENCH_COOKIES"].split(" ")
    stop, served = threading.Event(), []
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=_load, args=(port, cookies, pause_s, k * 3, stop,
                                                     served))
               for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ok = sum(1 for x in served if x == 200)
    print(json.dumps({"pages": ok, "seconds": time.perf_counter() - t}), flush=True)
    return 0


def measure_ingestion(db: str, work: Path, rounds: int = ROUNDS) -> None:
    from tests.servers import Mosquitto

    broker = Mosquitto(work / "broker", persistence=False)
    broker.add_user("bench-box", "device")
    broker.add_user("central", "central")
    broker.start()
    log = open(work / "collector.log", "wb")
    collector = subprocess.Popen(
        [sys.executable, "-m", "central.cli", "--mqtt-url",
         f"mqtt://central:{broker.passwords['central']}@127.0.0.1:{broker.port}", "--db", db,
         "--client-id", "bench-central", "--no-share", "--duration-s", "3600",
         # one simulated box sends 45,300 exams, years of a clinic's: the collector's
         # per-box quota (5,000 a day) would withhold the rest and the ingest wait for ever
         "--exam-quota", str(BENCH_EXAM_QUOTA)],
        stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
    server = None
    try:
        deadline = time.monotonic() + 30
        while b"subscribed" not in Path(log.name).read_bytes():
            if time.monotonic() > deadline or collector.poll() is not None:
                raise RuntimeError("the collector did not start")
            time.sleep(0.05)
        _ingest(broker, db, "bench-box", 1, 300)  # warm-up
        seq = 301
        server = Server(db, work)
        cookies = " ".join((_login(server.port, ADMIN), _login(server.port, VIEWER)))
        rates: dict[str, list[float]] = {"alone": [], "officers": [], "saturated": []}
        pages: dict[str, list[float]] = {"officers": [], "saturated": []}
        for _ in range(rounds):
            for mode in ("alone", "officers", "saturated"):
                load = None
                if mode != "alone":
                    pause = LOAD_PAUSE_S if mode == "officers" else 0.0
                    load = subprocess.Popen(
                        [sys.executable, "-m", "bench.dashboard", "--load", str(server.port),
                         "--load-pause", str(pause)], stdout=subprocess.PIPE, text=True,
                        env={**_env(), "BENCH_COOKIES": cookies}, cwd=REPO,
                        preexec_fn=lambda: os.nice(19))
                    time.sleep(2.0)
                rates[mode].append(_ingest(broker, db, "bench-box", seq, N_INGEST))
                seq += N_INGEST
                if load is not None:
                    load.terminate()
                    out = json.loads(load.communicate(timeout=60)[0].strip().splitlines()[-1])
                    pages[mode].append(out["pages"] / out["seconds"])
        a = statistics.median(rates["alone"])
        print(f"\n### Ingestion on the seeded SQLite district ({N_INGEST:,} exams a run, "
              f"{rounds} rounds, the three runs alternated)\n")
        print(f"collector alone: {', '.join(f'{x:,.0f}' for x in rates['alone'])} msg/s "
              f"(median {a:,.0f})")
        for mode, what in (("officers", f"{LOAD_CLIENTS} officers, a page every "
                                        f"{LOAD_PAUSE_S} s each"),
                           ("saturated", f"{LOAD_CLIENTS} clients back to back")):
            b = statistics.median(rates[mode])
            print(f"with the dashboard under load ({what}: {statistics.median(pages[mode]):.1f}"
                  f" pages/s served; rollup every 5 s): "
                  f"{', '.join(f'{x:,.0f}' for x in rates[mode])} msg/s (median {b:,.0f}), "
                  f"ratio {b / a:.2f}")
        print("target: ratio >= 0.90 under load")
    finally:
        if server is not None:
            server.stop()
        collector.terminate()
        try:
            collector.wait(30)
        except subprocess.TimeoutExpired:
            collector.kill()
        log.close()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dashboard")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-ingest", action="store_true")
    ap.add_argument("--no-pages", action="store_true")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="ingestion rounds")
    ap.add_argument("--only", choices=sorted({name for name, _ in PAGES}), default=None,
                    help="time this page alone (each of its periods)")
    ap.add_argument("--load", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--load-pause", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--keep", type=Path, default=None,
                    help="seed here (or reuse a district seeded here before)")
    args = ap.parse_args(argv)
    if args.load:
        return load_main(args.load, LOAD_CLIENTS, args.load_pause)
    work = args.keep or Path(tempfile.mkdtemp(prefix="sonoedge-bench-dash-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    print("\n## The district dashboard (issue 17)\n", flush=True)
    pg = None
    try:
        db = str(work / "district.sqlite3")
        if not Path(db).exists():
            seeded(db, "SQLite")
        if not args.no_pages:
            measure_pages(db, "SQLite", work, args.only)
        if not args.no_postgres:
            from tests.servers import Postgres

            pg = Postgres().start()
            seeded(pg.url, "PostgreSQL")
            if not args.no_pages:
                measure_pages(pg.url, "PostgreSQL", work, args.only)
        if not args.no_ingest:
            measure_ingestion(db, work, max(1, args.rounds))
    finally:
        if pg is not None:
            pg.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
