"""Session 19: a security review of the midwife's page, each finding driven against
`sonoedge run --web` on the harness's clip of real frames (one device for the module, under
systemd's open-files limits: soft 1024, hard 4096), in file order:

1. Wrong PINs could be raced: the brake was checked before the body was read and charged
   only after the slow hash, so a thousand requests whose headers came first were all
   verified (a 4-digit PIN fell in 35.6 s). Now each attempt is charged before its PIN is
   verified, one per address is in flight, a few are queued, the device-wide limit doubles,
   and a browser that knew the PIN has a queue and an allowance of its own.
2. Idle connections exhausted the process's file descriptors (the page, the loop's
   thumbnails and MQTT failed; 108,880 lines of tracebacks). Now connections are capped
   per address and in all, closed as they are accepted, and the soft limit is raised.
3. Any Host was answered: a DNS rebinding page could talk to the box. Now 421.
4. A client could write a log line per request (5,003 in 5.7 s): now a few a minute and a
   summary of the rest.
5. Thumbnails were cacheable, the server named its software, and one session could take
   every viewer slot.

These drive raw HTTP (bytes as they are, thousands of connections), so the page is served
with `[web] tls = "off"`; the same protections over TLS are in tests/test_web_tls.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_run import one_line_error, sonoedge
from tests.conftest import REPO
from tests.http_raw import raw_http
from tests.servers import free_port, wait_port
from tests.web_harness import PIN, http, make_clip, set_pin, wait_for, write_config

SOFT, HARD = 1024, 4096  # what the unit gives a service by default, and LimitNOFILE
PER_ADDRESS = 32  # edge.web.server.MAX_CONNECTIONS_PER_ADDRESS
TOTAL = 256  # edge.web.server.MAX_CONNECTIONS
VIEWERS_PER_SESSION = 3  # edge.web.server.MAX_VIEWERS_PER_SESSION
MIDWIFE = "127.0.0.200"  # the midwife's phone
# [web] pin_lock_s for the box under test: the default minute, shortened so that the
# test of its doubling waits 15 s, not 60 (the default itself is checked below)
PIN_LOCK_S = 15.0


class Box:
    def __init__(self, tmp: Path, port: int, proc: subprocess.Popen, log: Path):
        self.tmp, self.port, self.proc, self.log = tmp, port, proc, log
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""  # the midwife's cookies (she logs in from MIDWIFE at the start)
        self.known = ""
        self.lock_ends = 0.0  # when the device-wide lock of the brake test ends

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def _limits() -> None:  # in the device's process, before exec: systemd's defaults
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


@pytest.fixture(scope="module")
def box(tmp_path_factory, data_dir):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HARD:
        pytest.skip(f"the hard open-files limit here is {hard}, below {HARD}")
    # the test itself holds thousands of sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (HARD * 2 if hard == resource.RLIM_INFINITY
                                                else min(hard, HARD * 2), hard))
    tmp = tmp_path_factory.mktemp("security")
    clip = make_clip(data_dir, tmp / "clip.avi", rounds=4)
    state = tmp / "state"
    done = set_pin(state)
    assert done.returncode == 0, done.stderr
    port = free_port()
    cfg = write_config(tmp / "device.toml", state, clip, port, free_port(),
                       f'tls = "off"\npin_lock_s = {PIN_LOCK_S}')
    log_path = tmp / "device.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_limits)
    found = Box(tmp, port, proc, log_path)
    try:
        wait_port(port, 60, proc)
        answer = _login(found, PIN, MIDWIFE)  # the midwife's phone
        assert _status(answer) == 200, answer[:300]
        found.session = _cookie(answer, "sonoedge_session")
        found.known = _cookie(answer, "sonoedge_known")

        def running():
            state = json.loads(http(found.base + "/api/state", cookie=found.session)[2])
            return state["status"]["phase"] == "running" and state["frame"] is not None

        wait_for(running, 60, "the models to load and frames to flow")
        yield found
    finally:
        found.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- raw HTTP from any loopback address, many at once ---------------------------------------
def _request(port: int, method: str, path: str, body: dict | None = None, host: str = "",
             cookie: str = "", extra: str = "") -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
            f"Connection: close\r\n{extra}")
    if cookie:
        head += f"Cookie: {cookie}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


def _status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(match.group(1)) if match else 0


def _header(answer: bytes, name: str) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def _cookie(answer: bytes, name: str) -> str:
    match = re.search(rb"Set-Cookie: (" + name.encode() + rb"=[^;]+);", answer)
    assert match, answer[:600]
    return match.group(1).decode()


def _login(box: Box, pin: str, source: str, cookie: str = "") -> bytes:
    return raw_http(box.port, _request(box.port, "POST", "/api/login", {"pin": pin},
                                       cookie=cookie), source, timeout_s=30)


async def _open(port: int, source: str, timeout_s: float = 3.0):
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port,
                                                          local_addr=(source, 0)), timeout_s)


async def _answer(reader, timeout_s: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    except (TimeoutError, ConnectionError):
        return b""


async def _headers_first(port: int, attempts: list[tuple[str, str, str]],
                         late: list[tuple[str, str, str]] = (),
                         bodies_sent: asyncio.Event | None = None) -> list[int]:
    """Logins as race2.py sends them: every request's headers, then (a moment later) the
    `late` ones' headers, then all the bodies at once (`bodies_sent` is set then). Each
    attempt: (source, pin, cookie). Returns the statuses in order (0: the connection was
    closed without an answer)."""
    async def start(source, pin, cookie):
        body = json.dumps({"pin": pin}).encode()
        try:
            reader, writer = await _open(port, source)
            writer.write(_request(port, "POST", "/api/login", cookie=cookie,
                                  extra="Content-Type: application/json\r\n"
                                        f"Content-Length: {len(body)}\r\n"))
            await writer.drain()
        except (OSError, TimeoutError):
            return None
        return reader, writer, body

    opened = await asyncio.gather(*(start(*a) for a in attempts))
    await asyncio.sleep(1.0)  # every header in: each request has passed the brake's check
    opened += await asyncio.gather(*(start(*a) for a in late))
    await asyncio.sleep(1.0)

    for conn in opened:
        if conn is not None:
            conn[1].write(conn[2])
    if bodies_sent is not None:
        bodies_sent.set()

    async def finish(conn):
        if conn is None:
            return 0
        reader, writer, _ = conn
        try:
            await writer.drain()
        except OSError:
            pass
        answer = await _answer(reader, 120)
        writer.close()
        return _status(answer)

    return list(await asyncio.gather(*(finish(c) for c in opened)))


def _settled(box: Box, fds: int, timeout_s: float = 30.0, steady_s: float = 1.5) -> bool:
    """Whether the device is back to at most `fds` open files, and stays so for `steady_s`:
    connections the client has closed are given back as the server reads their end, and
    those still in the listening socket's backlog are accepted (and closed) after that."""
    deadline = time.monotonic() + timeout_s
    low_since = None
    while time.monotonic() < deadline:
        if box.fds() > fds:
            low_since = None
        elif low_since is None:
            low_since = time.monotonic()
        elif time.monotonic() - low_since >= steady_s:
            return True
        time.sleep(0.1)
    return False


def _retry_after(answer: bytes) -> int:
    return int(_header(answer, "Retry-After") or 0)


# -- 2. file descriptors ---------------------------------------------------------------------
def test_the_soft_open_files_limit_is_raised_to_the_hard_one(box):
    limits = Path(f"/proc/{box.proc.pid}/limits").read_text()
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    assert line.split()[3:5] == [str(HARD), str(HARD)], line


def test_a_connection_flood_from_one_address_is_closed_at_once_and_the_page_answers(box):
    """flood.py: 4,000 idle connections under a 1,024 limit; the page timed out for ~40 s
    and the log grew by 108,880 lines. 1,500 here, from one address."""
    before = box.fds()

    async def flood():
        held = []

        async def one():
            try:
                held.append((await _open(box.port, "127.0.0.1"))[1])
            except (OSError, TimeoutError):
                pass

        await asyncio.gather(*(one() for _ in range(1500)))
        await asyncio.sleep(1.0)
        during = box.fds()
        t0 = time.monotonic()
        try:  # the page, from another address, while the flood holds on
            reader, writer = await _open(box.port, "127.0.0.2", 5.0)
            writer.write(_request(box.port, "GET", "/"))
            answer = await _answer(reader, 5.0)
            writer.close()
        except (OSError, TimeoutError):
            answer = b""
        took = time.monotonic() - t0
        for writer in held:
            writer.close()
        return during, answer, took

    during, answer, took = asyncio.run(flood())
    assert during <= before + PER_ADDRESS + 16, (before, during)  # not 1,000 sockets
    assert _status(answer) == 200 and took < 3.0, (answer[:100], took)
    assert _settled(box, before + 2)  # all given back
    text = box.log_text()
    assert "out of system resource" not in text and "Too many open files" not in text
    assert "Traceback" not in text


def test_a_flood_from_many_addresses_leaves_room_for_the_midwife(box):
    """Addresses are cheap on a LAN: the total cap holds, and the addresses that have
    logged in keep a reserve beyond it."""
    before = box.fds()

    async def flood():
        held = []

        async def one(source):
            try:
                held.append((await _open(box.port, source, 10.0))[1])
            except (OSError, TimeoutError):
                pass

        # 310 > TOTAL, a few at a time: a burst overflows the listening backlog, and a
        # connection whose last handshake packet the kernel dropped never reaches the
        # server while its client stays silent (the cap is what is tested here)
        sources = [f"127.0.1.{i}" for i in range(1, 11) for _ in range(PER_ADDRESS - 1)]
        for start in range(0, len(sources), 10):
            await asyncio.gather(*(one(s) for s in sources[start:start + 10]))
            await asyncio.sleep(0.02)
        deadline = time.monotonic() + 10
        while box.fds() < before + TOTAL and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        during = box.fds()
        answers = {}
        for who in (MIDWIFE, "127.0.0.250"):
            try:
                reader, writer = await _open(box.port, who, 5.0)
                writer.write(_request(box.port, "GET", "/api/state", cookie=box.session))
                answers[who] = await _answer(reader, 5.0)
                writer.close()
            except (OSError, TimeoutError):
                answers[who] = b""
        for writer in held:
            writer.close()
        return during, answers

    during, answers = asyncio.run(flood())
    assert before + TOTAL - 24 <= during <= before + TOTAL + 16, (before, during)
    assert _status(answers[MIDWIFE]) == 200, answers[MIDWIFE][:200]  # her phone: served
    assert answers["127.0.0.250"] == b""  # a stranger beyond the cap: closed at once
    assert _settled(box, before + 2)


# -- 3. DNS rebinding --------------------------------------------------------------------------
def test_a_host_name_that_is_not_the_box_s_is_answered_421(box):
    evil = f"rebind.attacker.example:{box.port}"
    for path, body in (("/", None), ("/api/login", {"pin": PIN}), ("/api/state", None),
                       ("/static/app.js", None)):
        answer = raw_http(box.port, _request(
            box.port, "POST" if body else "GET", path, body, host=evil,
            cookie=box.session, extra=f"Origin: http://{evil}\r\n"), "127.0.0.5")
        assert _status(answer) == 421, (path, answer[:200])
        assert b"sonoedge_session" not in answer
    hostname = socket.gethostname().lower()
    for host in (f"127.0.0.1:{box.port}", f"localhost:{box.port}", f"{hostname}:{box.port}",
                 f"{hostname.split('.')[0]}.local:{box.port}", "[::1]", "x"):
        answer = raw_http(box.port, _request(box.port, "GET", "/api/state", host=host,
                                             cookie=box.session), "127.0.0.5")
        assert _status(answer) == 200, (host, answer[:200])


def test_allowed_hosts_names_the_box_and_a_bad_one_is_one_line(tmp_path):
    from edge.web.auth import read_pin, write_pin
    from edge.web.live import LiveView
    from edge.web.server import WebServer
    from edge.web.settings import WebSettings

    write_pin(tmp_path, PIN)
    srv = WebServer(WebSettings(listen=f"127.0.0.1:{free_port()}", tls="off",
                                allowed_hosts=("Sonoedge.Clinic.Test",)),
                    LiveView(), tmp_path, read_pin(tmp_path))
    srv.start()
    try:
        for host, status in (("sonoedge.clinic.test", 200), ("SONOEDGE.clinic.test.:80", 200),
                             ("sonoedge.clinic.test.attacker.example", 421),
                             ("attacker.example", 421)):
            answer = raw_http(srv.port, _request(srv.port, "GET", "/", host=host))
            assert _status(answer) == status, (host, answer[:200])
    finally:
        srv.stop()
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[web]\nlisten = "127.0.0.1:8099"\nallowed_hosts = ["http://box:80/"]\n')
    bad = sonoedge("run", "--config", str(cfg), "--once")
    assert bad.returncode == 2
    one_line_error(bad, "allowed_hosts", "is not a host name")


# -- 5. small leaks ---------------------------------------------------------------------------
def test_thumbnails_are_not_cached_and_the_server_does_not_name_its_software(box):
    def thumbnail():
        state = json.loads(http(box.base + "/api/state", cookie=box.session)[2])
        rows = (state.get("exam") or {}).get("checklist", [])
        return next(((r.get("best") or {}).get("thumbnail") for r in rows
                     if (r.get("best") or {}).get("thumbnail")), None)

    deadline = time.monotonic() + 90
    while (path := thumbnail()) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert path, "no checklist thumbnail in 90 s"
    _, exam, name = path.split("/")
    status, headers, body = http(f"{box.base}/api/thumb/{exam}/{name}", cookie=box.session)
    assert status == 200 and body[:2] == b"\xff\xd8"
    assert headers["Cache-Control"] == "no-store"  # a patient's image
    for path in ("/", "/static/app.js", "/api/state", "/api/nothing", "/nothing"):
        status, headers, _ = http(box.base + path)
        assert "Server" not in headers, (path, headers.get("Server"))


def test_one_session_cannot_take_every_viewer_slot(box):
    """ws_many.py: one session opened all 8 viewers; the midwife's phone got 503."""
    import aiohttp

    other = _cookie(_login(box, PIN, "127.0.0.6"), "sonoedge_session")
    origin = box.base

    async def viewers():
        async with aiohttp.ClientSession() as client:
            async def connect(cookie):
                try:
                    return await client.ws_connect(f"{origin}/api/ws", headers={
                        "Origin": origin, "Cookie": cookie})
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

            mine = [await connect(other) for _ in range(VIEWERS_PER_SESSION + 2)]
            theirs = await connect(box.session)
            out = ([m if isinstance(m, int) else 101 for m in mine],
                   theirs if isinstance(theirs, int) else 101)
            for ws in [*mine, theirs]:
                if not isinstance(ws, int):
                    await ws.close()
            return out

    mine, theirs = asyncio.run(viewers())
    assert mine == [101] * VIEWERS_PER_SESSION + [429, 429], mine
    assert theirs == 101  # the midwife still watches


# -- 1. the wrong-PIN brake ------------------------------------------------------------------
def test_logins_raced_from_one_address_have_one_pin_verified(box):
    """race2.py: headers first, bodies later, every request was verified; the right PIN,
    sent among them, opened a session. Now one is verified, the rest are 429 at once."""
    source = "127.0.0.3"
    wrong = [(source, f"{1000 + i:04d}", "") for i in range(PER_ADDRESS - 4)]
    statuses = asyncio.run(_headers_first(box.port, wrong, late=[(source, PIN, "")]))
    assert statuses.count(200) == 0, statuses  # the PIN was not found
    assert statuses.count(401) == 1 and statuses.count(429) == len(statuses) - 1, statuses
    # the one verified counts: four more wrong PINs and the address waits
    assert [_status(_login(box, "0000", source)) for _ in range(4)] == [401] * 4
    answer = _login(box, PIN, source)
    assert _status(answer) == 429 and 20 <= _retry_after(answer) <= 31, answer[:300]


def test_a_flood_of_wrong_pins_neither_delays_nor_locks_out_the_midwife(box):
    """A 300-request race delayed her login 52 s; 31 wrong PINs locked every new browser
    out for 10 minutes. Now her browser (the cookie of a right PIN) has its own queue and
    allowance, even from an address that is flooding or braked, and the device-wide lock
    starts at a minute (`pin_lock_s`, shortened here)."""
    flood = [(f"127.0.2.{i}", f"{2000 + 7 * i + k:04d}", "") for i in range(1, 51)
             for k in range(4)]  # 200 connections: under the cap, so all are answered

    async def race_and_midwife():
        sent = asyncio.Event()
        racing = asyncio.ensure_future(_headers_first(box.port, flood, bodies_sent=sent))
        await sent.wait()  # every request is past the brake's check, its PIN on the way
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        reader, writer = await _open(box.port, "127.0.2.1", 10.0)  # a flooding address
        writer.write(_request(box.port, "POST", "/api/login", {"pin": PIN},
                              cookie=box.known))
        answer = await _answer(reader, 60.0)
        writer.close()
        return answer, time.monotonic() - t0, await racing

    answer, took, statuses = asyncio.run(race_and_midwife())
    assert _status(answer) == 200 and took < 3.0, (answer[:200], took)
    verified = statuses.count(401)
    assert 1 <= verified <= 4 * 3 and statuses.count(200) == 0, statuses  # a few, not 300
    # strangers from fresh addresses until the device-wide limit holds them
    strangers, n = [], 0
    while n < 40:
        batch = [_login(box, f"{3000 + n + k:04d}", f"127.0.3.{n + k + 1}") for k in range(4)]
        n += 4
        strangers += batch
        if any(_status(a) == 429 for a in batch):
            break
    held = [a for a in strangers if _status(a) == 429]
    assert held, [_status(a) for a in strangers]
    first_lock = max(_retry_after(a) for a in held)
    assert PIN_LOCK_S / 2 <= first_lock <= PIN_LOCK_S + 1, first_lock  # the setting, not ten min
    box.lock_ends = time.monotonic() + first_lock
    assert _status(_login(box, PIN, "127.0.3.200")) == 429  # a new browser waits
    for source in (MIDWIFE, "127.0.0.3", "127.0.2.2"):  # hers: anywhere, even braked
        assert _status(_login(box, PIN, source, box.known)) == 200, source


def test_the_device_wide_lock_doubles_while_the_attempts_go_on(box):
    """After the first lock the wrong PINs go on until the limit is full again (at once, if
    it still is), and the next lock is twice as long (then 4, 8 ... at most 60 minutes)."""
    time.sleep(max(0.0, box.lock_ends - time.monotonic()) + 1.0)
    answers = []
    for n in range(40):
        answers.append(_login(box, f"{4000 + n:04d}", f"127.0.4.{n + 1}"))
        if _status(answers[-1]) == 429:
            break
    assert _status(answers[-1]) == 429, [_status(a) for a in answers]
    assert {_status(a) for a in answers[:-1]} <= {401}
    assert 2 * PIN_LOCK_S - 10 <= _retry_after(answers[-1]) <= 2 * PIN_LOCK_S + 1, \
        answers[-1][:300]
    assert _status(_login(box, PIN, MIDWIFE, box.known)) == 200


def test_the_first_device_wide_lock_is_a_minute_unless_the_config_says_otherwise(tmp_path):
    from edge.config import ConfigError, load_settings
    from edge.web.auth import Brake

    assert Brake().global_lock_s == 60.0
    cfg = tmp_path / "device.toml"
    cfg.write_text('[web]\nlisten = "127.0.0.1:8443"\n')
    assert load_settings(cfg).web.pin_lock_s == 60.0
    for value in ("5", "86400", "nan"):
        cfg.write_text(f'[web]\nlisten = "127.0.0.1:8443"\npin_lock_s = {value}\n')
        with pytest.raises(ConfigError) as caught:
            load_settings(cfg)
        assert "pin_lock_s must be between 10 and 3600" in str(caught.value), value
        assert "\n" not in str(caught.value)


def test_the_brake_on_a_clock_bounds_what_an_attacker_gets():
    from edge.web.auth import Brake, Braked

    brake, t, verified = Brake(), 0.0, 0
    next_try = {f"10.0.{i // 250}.{i % 250}": 0.0 for i in range(500)}
    while t < 24 * 3600:  # 500 addresses, each trying whenever the brake lets it
        source = min(next_try, key=next_try.get)
        t = max(t, next_try[source])
        try:
            attempt = brake.begin(source, t)
        except Braked as refused:
            next_try[source] = t + refused.wait_s
            continue
        assert brake.queue(attempt) and brake.admitted(attempt)
        brake.finish(attempt, False)
        verified += 1
        next_try[source] = t + 0.1
    assert verified <= 200, verified  # the old brake allowed 4,320 a day, the race any
    assert brake.wait_s("10.9.9.9", t) <= 3600  # bounded: a new phone waits an hour at most


# -- 4. log lines -----------------------------------------------------------------------------
def test_lines_a_client_causes_are_rate_limited(box):
    """logspam.py: 5,000 requests with a duplicate Host header wrote 5,003 lines in 5.7 s;
    the race wrote 942 "wrong PIN" lines."""
    async def spam():
        gate = asyncio.Semaphore(50)

        async def one(i):
            async with gate:
                try:
                    reader, writer = await _open(box.port, f"127.0.5.{1 + i % 20}")
                    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
                    await _answer(reader, 5.0)
                    writer.close()
                except (OSError, TimeoutError):
                    pass

        await asyncio.gather(*(one(i) for i in range(2000)))

    asyncio.run(spam())
    box.stop()  # the summaries of what was not said one by one are written at the end
    lines = box.log_text().splitlines()
    bad = [line for line in lines if "Error handling request" in line]
    wrong = [line for line in lines if "web: wrong PIN from" in line]
    assert len(bad) <= 10, len(bad)  # of 2,000
    assert len(wrong) <= 25, len(wrong)  # of ~70 wrong PINs over about two minutes
    summaries = [line for line in lines if "(not logged one by one)" in line]
    assert any("more malformed requests" in line for line in summaries), summaries
    assert any("more wrong PINs" in line for line in summaries), summaries
    assert "Traceback" not in "\n".join(lines)
