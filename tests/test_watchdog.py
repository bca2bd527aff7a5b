"""The service watchdog, against a stub of systemd's NOTIFY_SOCKET (issue 16).

The stub plays systemd's part: it reads the datagrams, and when no WATCHDOG=1 came for
WatchdogSec it kills the process with SIGABRT and starts it again RestartSec later, as the
unit in board/sonoedge.service asks. The measured figure is printed (pytest -s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge.fleet.watchdog import Notifier, Watchdog
from tests.conftest import DATA, REPO

WATCHDOG_S = 3.0
RESTART_S = 2.0  # RestartSec in board/sonoedge.service

HANGING_RUN = """
import os, sys, time
import edge.scorer as scorer
real, count = scorer.Scorer.score, [0]
def score(self, *a, **k):
    count[0] += 1
    if count[0] == 25:
        print(f"HANG {time.monotonic():.3f}", file=sys.stderr, flush=True)
        time.sleep(3600)  # a model that never returns
    return real(self, *a, **k)
scorer.Scorer.score = score
from edge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def unit_value(key: str) -> str:
    for line in (REPO / "board" / "sonoedge.service").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{key} not in board/sonoedge.service")


def test_the_unit_is_a_watched_notify_service():
    assert unit_value("Type") == "notify"
    assert unit_value("NotifyAccess") == "main"
    assert float(unit_value("WatchdogSec").rstrip("s")) == 30
    assert float(unit_value("RestartSec").rstrip("s")) == RESTART_S
    assert unit_value("Restart") == "always"


class StubSystemd:
    """A NOTIFY_SOCKET that records what the service says, with arrival times."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def last(self, text: str, since: float = 0.0) -> float | None:
        times = [t for t, m in self.messages if text in m and t >= since]
        return times[-1] if times else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _start(code: str | None, env: dict, log) -> subprocess.Popen:
    args = ["-c", code] if code else ["-m", "edge.cli"]
    return subprocess.Popen([sys.executable, *args, "run", "--source", "demo", "--state-dir",
                             env["STATE"]], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=REPO)


def test_a_hung_loop_is_killed_and_restarted_within_watchdogsec_plus_5_s(tmp_path):
    assert (DATA / "sononet").is_dir()
    stub = StubSystemd(tmp_path / "notify.sock")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "NOTIFY_SOCKET": str(stub.path), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6)),
           "STATE": str(tmp_path / "state")}
    log_path = tmp_path / "run.log"
    log = open(log_path, "wb")
    proc = _start(HANGING_RUN, env, log)
    second = None
    try:
        deadline = time.monotonic() + 90
        # systemd's side: kill the service when no ping came for WatchdogSec after READY
        while True:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            ready = stub.last("READY=1")
            if ready is not None:
                last_ping = max(ready, stub.last("WATCHDOG=1") or 0.0)
                if time.monotonic() - last_ping > WATCHDOG_S:
                    proc.send_signal(signal.SIGABRT)
                    killed = time.monotonic()
                    break
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.05)
        proc.wait(timeout=10)
        hang = float(next(line.split()[1] for line in log_path.read_text().splitlines()
                          if line.startswith("HANG ")))
        pings_before = [t for t, m in stub.messages if "WATCHDOG=1" in m and t < hang]
        assert len(pings_before) >= 2  # it pinged while frames flowed
        time.sleep(RESTART_S)  # RestartSec, then systemd starts it again
        second = _start(None, env, log)
        while stub.last("READY=1", since=killed) is None:
            assert time.monotonic() < deadline and second.poll() is None, \
                log_path.read_text()[-3000:]
            time.sleep(0.05)
        again = stub.last("READY=1", since=killed)
        print(f"\nwatchdog: hang -> kill {killed - hang:.2f} s (WatchdogSec {WATCHDOG_S:g}); "
              f"hang -> READY again {again - hang:.2f} s (RestartSec {RESTART_S:g})")
        assert killed - hang <= WATCHDOG_S + 2.0 + 1.0 + 0.5  # stall_s, a ping period
        assert again - hang <= WATCHDOG_S + 5 + RESTART_S + 5
        # the restarted loop recovers the run the kill left open, and scores again
        while stub.last("WATCHDOG=1", since=again) is None:
            assert time.monotonic() < deadline + 30, log_path.read_text()[-3000:]
            time.sleep(0.05)
        assert "recovered run" in log_path.read_text()
    finally:
        for p in (proc, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=20)
        log.close()
        stub.close()


class _Grabber:
    """A live source's outside: a grabber thread and its counters."""

    live = True

    def __init__(self):
        self._thread = threading.Thread(target=time.sleep, args=(30,), daemon=True)
        self._thread.start()
        self.frames_grabbed = 0
        self.open_attempts = 0
        self.delays: list[float] = []

        class S:
            backoff_max_s = 1.0

        self.settings = S()


def test_pings_go_on_only_while_frames_flow_or_a_live_grabber_really_waits(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("NOTIFY_SOCKET", "@sonoedge-test-none")
    dog = Watchdog(Notifier(), stall_s=2.0)
    assert dog.interval_s == 0.4 and dog.stall_s == 0.2
    dog.progress()
    assert dog.healthy()
    time.sleep(0.25)
    assert not dog.healthy()  # no frame for half the interval, and not waiting on a source
    grabber = _Grabber()
    dog._waiting_on = grabber
    assert dog.healthy()  # waiting on a live grabber that is reopening with backoff
    grabber.open_attempts += 1
    assert dog.healthy()
    time.sleep(1.5)  # its counters stood still for longer than its backoff + the interval
    assert not dog.healthy()
    monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is some other process's
    assert Notifier().watchdog_s == 0.0


def test_a_notify_socket_that_cannot_be_reached_is_said_once(caplog):
    """READY=1 to a NOTIFY_SOCKET that is not there was logged at debug only: under
    `Type=notify` systemd then stops the service at its start timeout, and the journal said
    nothing of why. The first failure is one warning naming the socket; the rest are quiet."""
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/sonoedge-notify"})
    with caplog.at_level("DEBUG", logger="sonoedge.watchdog"):
        assert notifier.send("READY=1") is False
        assert notifier.send("WATCHDOG=1") is False
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1, warned
    assert warned[0].startswith("sd_notify to NOTIFY_SOCKET /nonexistent/sonoedge-notify "
                                "failed (No such file or directory): systemd hears no")
    notifier.close()


def test_an_idle_tick_is_no_progress_so_a_grabber_hung_in_its_read_still_stops_the_pings(
        monkeypatch):
    """The loop is handed None each second a live grabber brings no frame (its exam's gap
    and health run on the clock); those ticks count only while the grabber shows life, or
    a grabber thread stuck inside a driver's read would never have the service restarted;
    and a loop that hangs while handling a tick is hung like any other."""
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("NOTIFY_SOCKET", "@sonoedge-test-none")
    dog = Watchdog(Notifier(), stall_s=2.0)
    grabber = _Grabber()
    ticks = dog.watch(iter([(None, 0.0)] * 1000), grabber, is_idle=lambda item: item[0] is None)
    next(ticks)
    assert dog.healthy()
    deadline = time.monotonic() + 1.8
    while time.monotonic() < deadline:  # ticks, but the grabber's counters stand still
        next(ticks)
        dog.healthy()  # the pinging thread's look, each period
        time.sleep(0.05)
    assert not dog.healthy()
    frames = dog.watch(iter([("a frame", 0.0)]), grabber, is_idle=lambda item: item[0] is None)
    next(frames)
    assert dog.healthy()  # a real frame is progress
    # the grabber reopening (alive), the loop stuck on a tick for longer than stall_s
    grabber.open_attempts += 1
    next(ticks)
    assert dog.healthy()
    time.sleep(0.3)
    grabber.open_attempts += 1
    assert not dog.healthy()
