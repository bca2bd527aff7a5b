"""One log line for a malformed HTTP request, on the device's page and the district
dashboard alike (both serve with aiohttp), and a limit on lines a client can cause.

A client can make a server log as fast as it can send requests: 5,000 requests with a
duplicate Host header wrote 5,003 lines in 5.7 s, and journald (`RateLimitBurst` in
board/journald-sonoedge.conf) then drops every line of the service, the device's own
included. So each kind of client-caused line is said at most `LOG_BURST` times a window,
and the rest are counted and said in one summary line when the window ends.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

# Client-caused lines of one kind said one by one per window; the rest are only counted.
# A few, not one: the first handful of wrong PINs or bad requests each say who and what.
LOG_BURST = 5
LOG_WINDOW_S = 60.0  # the summary says "N more ... in the last minute"
MAX_SUBJECTS = 1000  # distinct addresses counted for a summary (memory stays bounded)
SUMMARY = "sonoedge_summary"  # a record attribute: the summary line itself is never limited


@dataclass
class _Window:
    start: float
    what: str
    said: int = 0
    more: int = 0
    subjects: set = field(default_factory=set)


class LineLimiter:
    """At most `burst` lines of each kind per `window_s`; beyond that, lines are counted and
    one summary line ("N more wrong PINs in the last 60 s, from 3 addresses") is written
    when the window ends (`flush`, or the next line of that kind). Thread-safe."""

    def __init__(self, logger: logging.Logger, burst: int = LOG_BURST,
                 window_s: float = LOG_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 prefix: str = ""):
        self.logger = logger
        self.prefix = prefix  # before each summary, as the lines it stands for have
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def allow(self, kind: str, what: str, subject: str | None = None) -> bool:
        """Whether a line of this kind may be written now (else it is counted)."""
        now = self.clock()
        summaries = []
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now - window.start >= self.window_s:
                summaries.append(self._ended(kind, now))
                window = None
            if window is None:
                window = self._windows[kind] = _Window(now, what)
            if window.said < self.burst:
                window.said += 1
                allowed = True
            else:
                window.more += 1
                if subject is not None and len(window.subjects) < MAX_SUBJECTS:
                    window.subjects.add(subject)
                allowed = False
        self._say(summaries)
        return allowed

    def log(self, kind: str, what: str, level: int, msg: str, *args: object,
            subject: str | None = None) -> None:
        """`logger.log(level, msg, *args)` unless this kind has said enough this window."""
        if self.allow(kind, what, subject):
            self.logger.log(level, msg, *args)

    def flush(self, everything: bool = False) -> None:
        """Summaries of the windows that have ended (all of them with `everything`, at
        shutdown, so nothing counted goes unsaid)."""
        now = self.clock()
        with self._lock:
            kinds = [k for k, w in self._windows.items()
                     if everything or now - w.start >= self.window_s]
            summaries = [self._ended(kind, now) for kind in kinds]
        self._say(summaries)

    def _ended(self, kind: str, now: float) -> tuple | None:
        window = self._windows.pop(kind)
        if not window.more:
            return None
        where = ""
        if window.subjects:
            n = len(window.subjects)
            where = f", from {n}{'+' if n >= MAX_SUBJECTS else ''} " \
                    f"address{'es' if n != 1 else ''}"
        took = now - window.start
        return (f"{self.prefix}%d more %s in the last %.{1 if took < 10 else 0}f s%s "
                f"(not logged one by one)", window.more, window.what, took, where)

    def _say(self, summaries: list) -> None:
        for summary in summaries:
            if summary is not None:
                self.logger.warning(*summary, extra={SUMMARY: True})


class OneLineBadRequests(logging.Filter):
    """aiohttp logs a malformed request (a client's doing, already answered 400) at ERROR
    with its traceback, some twenty lines a request: a client could fill journald's rate
    limit and hide the server's own messages. One WARNING line says the same, and only
    `LOG_BURST` of them a minute (then a summary)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = LineLimiter(logging.getLogger("aiohttp.server"))

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, SUMMARY, False):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        # RequestPayloadError: a body aiohttp could not decode (a false Content-Encoding, a
        # broken chunk), met while it drains the body after the answer
        if isinstance(exc, HttpProcessingError | RequestPayloadError | ConnectionError):
            bad = isinstance(exc, HttpProcessingError | RequestPayloadError)
            subject = record.args[0] if isinstance(record.args, tuple) and record.args \
                and isinstance(record.args[0], str) else None
            if not self.lines.allow("malformed" if bad else "connection",
                                    "malformed requests" if bad else "broken connections",
                                    subject):
                return False
            # one line: aiohttp's texts run over two ("400, message:\n  Can not decode ...")
            what = " ".join(str(getattr(exc, "message", "") or exc).split())
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {what[:100]}"
            record.args, record.exc_info, record.exc_text = None, None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _filter() -> OneLineBadRequests | None:
    logger = logging.getLogger("aiohttp.server")
    return next((f for f in logger.filters if isinstance(f, OneLineBadRequests)), None)


MAX_ERROR_BODY = 120  # characters of the one line a malformed request is answered with
ECHOED = re.compile(r":\s*(?:b'|b\"|bytearray\()")  # where aiohttp's text quotes the bytes


def one_line_error_body(message: str) -> str:
    """aiohttp's parser text for a malformed request runs over three lines, echoing the
    client's bytes with a caret under the fault ("Invalid char in url path:\n\n  b'GET
    /\\xff HTTP/1.1'\n         ^"): its first line, without the colon, says the same."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    first = ECHOED.split(first, 1)[0].rstrip(" :.")  # "...: bytearray(b'/aaaa...')."
    return first[:MAX_ERROR_BODY] or "Bad Request"


def _one_line_error_bodies() -> None:
    """aiohttp answers a request it cannot parse (a 4xx) with that text as the body, from
    `RequestHandler.handle_error`, and names its version in the answer's head. The
    dashboard's `web.run_app` makes its handlers itself (a subclass would need aiohttp's
    private `Server._kwargs`), so the method is wrapped once, for both servers alike, so
    that body is one line and the head names no version."""
    handler = web_protocol.RequestHandler
    if getattr(handler.handle_error, "one_line", False):
        return
    original = handler.handle_error

    @functools.wraps(original)
    def handle_error(self, request, status=500, exc=None, message=None):
        if message and 400 <= status < 500:
            message = one_line_error_body(message)
        resp = original(self, request, status, exc, message)
        # aiohttp fills in "Server: Python/3.11 aiohttp/3.14.5" where none is set (its
        # `setdefault`), after the apps' hooks, which never see a request it cannot parse:
        # a scanner's malformed probe read the versions. A name alone gives nothing away.
        resp.headers["Server"] = "sonoedge"
        return resp

    handle_error.one_line = True  # type: ignore[attr-defined]
    handler.handle_error = handle_error  # type: ignore[method-assign]


def one_line_bad_requests() -> None:
    """Put the filter on aiohttp's server logger, once however many servers start; and
    answer a malformed request with one line (`one_line_error_body`)."""
    if _filter() is None:
        logging.getLogger("aiohttp.server").addFilter(OneLineBadRequests())
    _one_line_error_bodies()


def flush_bad_request_lines(everything: bool = False) -> None:
    """Write the summaries of malformed requests not logged one by one (servers call this
    now and then, and at shutdown with `everything`)."""
    found = _filter()
    if found is not None:
        found.lines.flush(everything)


def refuse_coded_body(request: web.Request) -> None:
    """415 for a request whose body claims a Content-Encoding: no page of the box or the
    dashboard sends one, and aiohttp fails decoding a false one (a 500 on a login, and a
    traceback while it drains the body after any answer). The connection is closed, so
    the body is never read, nor drained."""
    if request.headers.get("Content-Encoding", "identity").strip().lower() in ("",
                                                                                 "identity"):
        return
    refused = web.HTTPUnsupportedMediaType(text="send the body without Content-Encoding")
    refused.force_close()
    raise refused
