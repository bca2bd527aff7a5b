"""systemd's service watchdog (`Type=notify`, `WatchdogSec=`), spoken to directly.

sd_notify is one datagram of text to the socket in `NOTIFY_SOCKET`, so a few lines here
replace a library. The pings come from a thread of their own, but only while the loop is
really alive: a frame was scored within `[loop] stall_s`, or the loop is waiting for a live
source whose grabber thread is itself alive and still trying (reading frames, or reopening
an unplugged grabber with backoff). A loop stuck anywhere else (a model that never returns,
a file read that blocks) stops the pings within `stall_s` plus one ping period (at most
1 s), and systemd kills and restarts the service `WatchdogSec` later.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping

log = logging.getLogger("sonoedge.watchdog")


class Notifier:
    """sd_notify(3): READY=1, WATCHDOG=1, STATUS=..., STOPPING=1; silent without systemd."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine \
            else 0.0
        self._sock: socket.socket | None = None
        self._failed_said = False  # a failed send is said once (a warning), then at debug

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, text: str) -> bool:
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(text.encode(), target)
            return True
        except OSError as exc:
            if self._failed_said:
                log.debug("sd_notify %r failed: %s", text, exc)
            else:  # under Type=notify, systemd then kills the service with no reason given
                self._failed_said = True
                log.warning("sd_notify to NOTIFY_SOCKET %s failed (%s): systemd hears no "
                            "READY=1 or watchdog ping and will stop and restart this "
                            "service; check the unit (Type=notify, NotifyAccess=main)",
                            self.address, exc.strerror or exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pings systemd while the loop makes progress; see the module docstring."""

    def __init__(self, notifier: Notifier | None = None, stall_s: float = 2.0):
        self.notifier = notifier or Notifier()
        self.interval_s = self.notifier.watchdog_s
        # No frame for this long, and not waiting on a live grabber: the loop is hung.
        self.stall_s = min(stall_s, self.interval_s / 2) if self.interval_s else stall_s
        self.period_s = min(1.0, self.interval_s / 4)
        self.last_progress = time.monotonic()
        self._waiting_on = None  # the live source the loop is blocked on, if any
        self._grabber_seen: tuple | None = None
        self._grabber_changed = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0

    def ready(self, status: str = "") -> None:
        self.progress()
        self.notifier.send("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if self.interval_s and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sonoedge-watchdog",
                                            daemon=True)
            self._thread.start()

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def watch(self, frames: Iterator, source, is_idle=None) -> Iterator:
        """The loop's frame iterator; while it waits for a live source, that counts. An
        item `is_idle` says is no frame (the source's idle tick) is progress only while
        the grabber shows life: ticks from a grabber hung in its read stop the pings, and
        so does a loop that hangs while it handles a tick."""
        iterator = iter(frames)
        waiting = source if getattr(source, "live", False) else None
        while True:
            self._waiting_on = waiting
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self._waiting_on = None  # the loop works on the item: stuck there, it is hung
            if is_idle is None or not is_idle(item) or (
                    waiting is not None and self._grabber_alive(waiting, time.monotonic())):
                self.progress()
            yield item

    def _grabber_alive(self, source, now: float) -> bool:
        """The grabber thread lives and its counters moved within its longest backoff."""
        thread = getattr(source, "_thread", None)
        if thread is None or not thread.is_alive():
            return False
        seen = (getattr(source, "frames_grabbed", 0), getattr(source, "open_attempts", 0),
                len(getattr(source, "delays", ())))
        if seen != self._grabber_seen:
            self._grabber_seen, self._grabber_changed = seen, now
        settings = getattr(source, "settings", None)
        patience = float(getattr(settings, "backoff_max_s", 30.0)) + self.stall_s
        return now - self._grabber_changed <= patience

    def healthy(self) -> bool:
        now = time.monotonic()
        if now - self.last_progress <= self.stall_s:
            return True
        source = self._waiting_on
        return source is not None and self._grabber_alive(source, now)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.healthy():
                self.pings += self.notifier.send("WATCHDOG=1")

    def stopping(self, restarting: bool = False) -> None:
        """The loop ends; `restarting` (new models): RELOADING=1, READY=1 follows."""
        self._stop.set()
        self.notifier.send("RELOADING=1" if restarting else "STOPPING=1")
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
