"""The midwife's page: a small aiohttp server on its own thread beside the device loop.

Routes (everything under /api/ answers 401 without a session):

- `GET /`, `/static/...`: the page and its assets, all shipped in the package.
- `GET /i18n/<lang>.json`: a message catalog (text only: the login screen needs it).
- `POST /api/login {"pin"}`: opens a session (cookie); 401 wrong PIN, 429 braked.
- `POST /api/logout`: ends it.
- `GET /api/state`: the latest frame's result, the exam with its checklist, the
  screening flags and the status strip, as one JSON object.
- `GET /api/ws`: the live stream. Binary messages, each a little-endian u32 header
  length, a JSON header (the frame's overlay data) and the JPEG of the frame; JSON text
  messages with the state, every second.
- `GET /api/frame?after=<seq>&heatmap=0|1&stream=<id>`: the same stream for a browser
  that will not open the WebSocket (iOS Safari refuses wss:// to a self-signed certificate
  it accepted for the page): a long poll answered with the next streamed frame whose seq is
  above `after`, as exactly the WebSocket's binary message, or 204 after POLL_WAIT_S. The
  page polls `/api/state` beside it (the WebSocket's state message is that object).
- `POST /api/exam {"action": "start" | "stop"}`: applied by the loop between frames.
  "stop" ends the exam and holds the next one back; "start" lets the next one begin and
  never ends one: while an exam runs it is refused (409), and the loop ignores one that
  slips past (`LoopHook.apply_commands`).
- `POST /api/lmp {"lmp": "YYYY-MM-DD", "today": "YYYY-MM-DD", "exam_id": "..."}`: dates
  for the HC-for-dates flag (`"lmp": null` clears them), for the exam the page shows
  (`exam_id`, null for none yet); 409 when that is no longer the device's exam.
- `POST /api/exams/<exam>/lmp {"lmp": "YYYY-MM-DD" | null, "today": "YYYY-MM-DD"}`: dates
  for an ended exam the journal keeps, from its report (the woman found her card after the
  next one began): kept, and sent to the district as a correction, by the loop; answered
  once the journal has them (or after DATES_KEPT_WAIT_S). 404 for an exam the journal does
  not keep, 409 for the exam still running (the live page takes its dates). On both, a
  field other than those is a 400 naming it, as on the withdrawal.
- `POST /api/exams/<exam>/withdrawal {"withdrawn": true, "reason": "mistake" | "test_scan" |
  "wrong_woman" | "two_women"}` withdraws an ended exam (`{"withdrawn": false}` undoes it):
  kept in the journal and sent to the district, which then counts it in no figure, by the
  loop; answered once the journal has it (or after DATES_KEPT_WAIT_S). 404 for an exam the
  journal does not keep, 409 for the exam still running, or an undo of an exam that is not
  withdrawn.
- `GET /api/thumb/<exam>/<file>.jpg`: a checklist thumbnail, or the report's picture of
  where the head was measured (only those the exam on screen or the journal lists for that
  exam; 404 once the quota has removed it).
- `GET /api/exams?limit=N`: the most recent finished exams from the journal, newest
  first (edge/web/history.py).
- `GET /report/<exam>?lang=xx`: a printable report of one kept exam (HTML; without a
  session, the PIN first).

The stream encodes one JPEG per streamed frame, shared by every viewer, only while a
viewer is connected and at most `max_fps` times a second; a slow viewer skips frames
rather than queueing them.

Before any route: a connection beyond the caps (per address, in all) is closed as it is
accepted, and a request for a host name that is not the box's is answered 421 (DNS
rebinding). Lines a client can cause (wrong PINs, bad requests, refused connections,
failed TLS handshakes) are rate-limited (wire/http_log.py).

The page is served over TLS unless `[web] tls = "off"` (edge/web/tls.py). The TLS layer is
started on a connection only once the gate has admitted it, so a client that opens
connections and never finishes a handshake holds at most its share of them, each for
`HANDSHAKE_TIMEOUT_S` at most. With TLS the cookies are `Secure`; no HSTS is sent (with a
self-signed certificate it would leave the browser's warning no way through).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import resource
import shutil
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from aiohttp import WSMsgType, web

from edge.exam.screening import MAX_LMP_DAYS, PhoneDateError, day_of_exam, read_lmp, screening
from edge.models.planes import heatmap
from edge.models.quality import Rules
from edge.uplink.messages import read_temperature_c
from edge.web import i18n
from edge.web.auth import Attempt, Brake, Braked, PinHash, Sessions
from edge.web.clock import (
    EARLIEST_S,
    LATEST_S,
    ClockRefused,
    ClockRules,
    can_set_clock,
    clock_synchronised,
    read_phone_s,
    record_set,
    set_from_phone,
)
from edge.web.history import BadQuery, ExamHistory, parse_limit, report_lang
from edge.web.live import LiveView, instruction
from edge.web.settings import WebError, WebSettings, parse_listen
from edge.web.tls import PageTls
from wire.http_log import (
    LineLimiter,
    flush_bad_request_lines,
    one_line_bad_requests,
    refuse_coded_body,
)
from wire.schema import WITHDRAWAL_REASONS, PayloadError, loads_bounded
from wire.shown import shown, shown_path

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "sonoedge_session"
# A browser that has typed the right PIN keeps this cookie (a year, sent only to the login):
# it lets that browser past the device-wide brake, so someone trying PINs from many
# addresses cannot keep the midwife herself out. Derived from the stored PIN hash: it
# survives a restart and ends with a new PIN.
KNOWN_COOKIE = "sonoedge_known"
KNOWN_MAX_AGE_S = 365 * 86400
# A connection that has not sent a whole request this long after connecting (or after its
# last answer) is closed: aiohttp's default is an hour, so clients that never finish their
# headers (slow loris) would each hold a socket that long, and a box under systemd has 1024.
IDLE_TIMEOUT_S = 15.0
BODY_TIMEOUT_S = 10.0  # a body announced but not sent is answered 408, not waited for
# A connection whose TLS handshake has not finished this long after it was accepted is
# closed (it holds its place at the gate until then); so is one whose peer does not answer
# the TLS close within it.
HANDSHAKE_TIMEOUT_S = 10.0
# A plain http:// request on the TLS port (a bookmark, an address typed without https://) is
# answered with a redirect to https://; its head is read up to this size, and the redirect
# keeps the path only if it is made of these characters (else it goes to the page's root).
PLAIN_HEAD_MAX = 8192
# After its answer, a plain request's connection is half-closed and what the client still
# sends is read and dropped, for this long and up to this much (a lingering close, as
# nginx's): closed at once with unread bytes, the kernel would send a reset, and a client
# still sending an over-long head would lose the answer it was sent.
PLAIN_LINGER_S = 2.0
PLAIN_LINGER_MAX = 1 << 20
PLAIN_PATH = re.compile(rb"/[A-Za-z0-9/._~%&=?+,;:@!-]{0,1024}")
PLAIN_HOST = re.compile(rb"([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?")
PLAIN_METHOD = re.compile(rb"[A-Z]{1,16} ")
PLAIN_REQUEST_LINE = re.compile(rb"[A-Z]{1,16} [\x21-\x7e]{1,8000} HTTP/1\.[01]")
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS ClientHello (RFC 8446, 5.1)
METHOD_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # what an HTTP request starts with

# Which refusal a 4xx to the dates is, for the pages to say in the midwife's language
# (app.js, report.js): the body is the device's English words, for anything else.
REFUSED = "X-Sonoedge-Refused"
CERT_CHECK_S = 3600.0  # how often a running page looks at its certificate's end date
MAX_BODY = 4096
MAX_WS_MESSAGE = 1024
MAX_VIEWERS = 8  # a clinic has a phone or two; more streams would only cost the loop
# Viewers of one session (tabs of one browser): one session cannot take every slot and
# leave the midwife's phone a 503; two tabs and a spare.
MAX_VIEWERS_PER_SESSION = 3
# Connections open at once. Each is a file descriptor, and paho-mqtt's select() cannot use
# one numbered 1024 or above, so the page must never hold anywhere near that many: 4,000
# idle connections once exhausted the process's descriptors (the loop could not write a
# thumbnail, MQTT failed). Beyond a cap a connection is closed as it is accepted.
MAX_CONNECTIONS = 256  # from all addresses: a clinic's phones use a dozen
MAX_CONNECTIONS_PER_ADDRESS = 32  # a browser: 6 per host, a WebSocket per tab, a spare
# Above MAX_CONNECTIONS, only for addresses that have opened a session in this run: a
# flood from many addresses cannot take the slots of the phone the midwife logged in on.
TRUSTED_RESERVE = 64
TRUSTED_ADDRESSES = 64  # addresses remembered as logged in (the oldest forgotten first)
# The soft limit on open files is raised to the hard one at start (systemd's soft 1024 is
# for select()); at most this, when the hard limit is unlimited.
NOFILE_MAX = 65536
HOUSEKEEPING_S = 10.0  # rate-limited log lines' summaries are written this often
STATUS_EVERY_S = 2.0  # uplink, disk and temperature are read this often
STATE_EVERY_S = 1.0  # the state message to each viewer
# The HTTPS fallback (GET /api/frame): a poll waits this long for a frame, then 204; a
# poller counts as a viewer while a poll of it is in flight and this long after its last.
POLL_WAIT_S = 2.0
POLL_LINGER_S = 5.0
# How long a report's dates wait for the loop to journal them before the answer goes
# without (the report, reloaded, then shows the dates as soon as they are kept).
DATES_KEPT_WAIT_S = 3.0
MAX_SEQ = 2**53 - 1  # `after` as the page's numbers hold it exactly
POLL_STREAM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' blob: data:; connect-src 'self'; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                                "form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most NOFILE_MAX); (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_MAX if hard == resource.RLIM_INFINITY else min(hard, NOFILE_MAX)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("web: cannot raise the open-files limit from %d to %d (%s)",
                        soft, target, exc)
    return soft, hard


def host_name(value: str) -> str | None:
    """The name in a Host header ("name:port", "[v6]:port"), lower case, with no port and
    no final dot; None when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:] and not value[end + 1:].startswith(":"):
            return None
        return value[1:end]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_text(value: str) -> bool:
    """Whether a str from JSON is Unicode text (no lone surrogate from a "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    return True


class ConnectionGate:
    """Counts open connections per address (the event loop's thread only) and says which
    new ones may stay: at most `per_address` from one address and `total` in all, plus
    `reserve` more for addresses that have logged in (`trust`)."""

    def __init__(self, total: int, per_address: int, reserve: int, trusted_max: int,
                 lines: LineLimiter):
        self.total, self.per_address, self.reserve = total, per_address, reserve
        self.trusted_max = trusted_max
        self.lines = lines
        self.open: dict[str, int] = {}
        self.count = 0
        self.refused = 0
        self._trusted: OrderedDict[str, None] = OrderedDict()

    def trust(self, address: str) -> None:
        self._trusted[address] = None
        self._trusted.move_to_end(address)
        while len(self._trusted) > self.trusted_max:
            self._trusted.popitem(last=False)

    def admit(self, address: str) -> bool:
        here = self.open.get(address, 0)
        limit = self.total + (self.reserve if address in self._trusted else 0)
        if here >= self.per_address or self.count >= limit:
            self.refused += 1
            self.lines.log("connections", "connections refused", logging.WARNING,
                           "web: closed a connection from %s at once: %d open from that "
                           "address and %d in all (at most %d from one address, %d in all)",
                           address, here, self.count, self.per_address, limit,
                           subject=address)
            return False
        self.open[address] = here + 1
        self.count += 1
        return True

    def release(self, address: str) -> None:
        here = self.open.get(address, 0) - 1
        if here > 0:
            self.open[address] = here
        else:
            self.open.pop(address, None)
        self.count -= 1


def plain_request_state(head: bytes) -> str:
    """What to do with the bytes a plain connection has sent so far: "wait" for more,
    "answer" a whole request head (or one that filled PLAIN_HEAD_MAX), or "close" what is
    not HTTP/1.x (decided within a line, so a scanner's junk is not waited on)."""
    if not PLAIN_METHOD.match(head[:17]):
        letters = len(head) - len(head.lstrip(METHOD_LETTERS))
        return "wait" if letters == len(head) and letters <= 16 else "close"
    line, crlf, _ = head.partition(b"\r\n")
    if crlf and not PLAIN_REQUEST_LINE.fullmatch(line):
        return "close"
    if b"\r\n\r\n" in head or len(head) >= PLAIN_HEAD_MAX:
        return "answer"
    return "wait"


async def first_byte(transport: asyncio.BaseTransport, timeout_s: float) -> int | None:
    """The connection's first byte, looked at without taking it off the socket (MSG_PEEK
    on a duplicate of its descriptor, the transport's reading paused), so that a TLS
    ClientHello still reaches the TLS layer whole. None when the peer closes first;
    TimeoutError when it sends nothing within `timeout_s`."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return TLS_HANDSHAKE_RECORD
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with socket.socket(fileno=os.dup(sock.fileno())) as peek:
        peek.setblocking(False)
        for _ in range(64):  # spurious wake-ups are rare; a bound all the same
            ready = loop.create_future()
            loop.add_reader(peek.fileno(), lambda f=ready: f.done() or f.set_result(None))
            try:
                await asyncio.wait_for(ready, max(0.0, deadline - loop.time()))
            finally:
                loop.remove_reader(peek.fileno())
            try:
                data = peek.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return None
            return data[0] if data else None
    return None


class _GatedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, made only if the gate admits the peer; a
    connection it refuses is closed at once, before a byte is read. With `tls`, the TLS
    handshake is started on the admitted connection (`loop.start_tls`) and aiohttp's
    protocol is made once it has finished; a handshake that fails or takes longer than
    `HANDSHAKE_TIMEOUT_S` closes the connection (`on_tls_error` says why). A connection
    whose first byte is not a TLS record is a plain http:// request: its head (at most
    `PLAIN_HEAD_MAX` bytes, within the same time) is answered by `plain_answer(address,
    head)`, a redirect to https://, and the connection closed after a lingering close
    (`PLAIN_LINGER_S`)."""

    def __init__(self, gate: ConnectionGate, make_handler, tls: ssl.SSLContext | None = None,
                 handshakes: set | None = None, on_tls_error=None, plain_answer=None):
        self._gate = gate
        self._make = make_handler
        self._tls = tls
        self._handshakes = handshakes if handshakes is not None else set()
        self._on_tls_error = on_tls_error
        self._plain_answer = plain_answer
        self._plain: bytearray | None = None  # the head of a plain request, while read
        self._plain_transport: asyncio.BaseTransport | None = None
        self._plain_timer: asyncio.TimerHandle | None = None
        self._linger_left = 0  # bytes still dropped after a plain answer (lingering close)
        self._inner = None
        self._address = ""
        self._admitted = False
        self._lost = False
        # bytes (and an end) that the TLS layer passed on after the handshake and before
        # aiohttp's protocol was made: given to it first
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._gate.admit(address):
            transport.abort()
            return
        self._address = address
        self._admitted = True
        if self._tls is None:
            self._open(transport)
            return
        transport.pause_reading()  # not a byte read before the TLS layer takes the socket
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, transport: asyncio.BaseTransport) -> None:
        if self._plain_answer is not None:
            try:
                first = await first_byte(transport, HANDSHAKE_TIMEOUT_S)
            except asyncio.CancelledError:  # the server is stopping
                transport.abort()
                self._release()
                raise
            except TimeoutError:
                transport.abort()
                self._release()
                if self._on_tls_error is not None:
                    self._on_tls_error(self._address, ConnectionAbortedError())
                return
            if first is None:  # closed before a byte: a port check, a spare connection
                transport.abort()
                self._release()
                return
            if first in METHOD_LETTERS:  # an HTTP method; any other byte: TLS says no
                self._read_plain(transport)
                return
        try:
            secure = await asyncio.get_running_loop().start_tls(
                transport, self, self._tls, server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                ssl_shutdown_timeout=HANDSHAKE_TIMEOUT_S)  # not asyncio's 30 s per close
        except asyncio.CancelledError:  # the server is stopping
            transport.abort()
            self._release()
            raise
        except Exception as exc:  # start_tls has closed the connection
            self._release()
            if self._on_tls_error is not None:
                self._on_tls_error(self._address, exc)
            return
        if not self._lost:
            self._open(secure)

    def _open(self, transport: asyncio.BaseTransport) -> None:
        self._inner = self._make()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)
        if self._early_eof:
            self._inner.eof_received()

    def _read_plain(self, transport: asyncio.BaseTransport) -> None:
        self._plain, self._plain_transport = bytearray(), transport
        self._plain_timer = asyncio.get_running_loop().call_later(
            HANDSHAKE_TIMEOUT_S, transport.abort)
        transport.resume_reading()

    def _answer_plain(self, state: str) -> None:
        head, transport = bytes(self._plain or b""), self._plain_transport
        self._plain = None
        if transport is None or transport.is_closing():
            return
        if state != "answer":
            transport.abort()
            if self._on_tls_error is not None:
                self._on_tls_error(self._address, ValueError("neither TLS nor HTTP/1.x"))
            return
        transport.write(self._plain_answer(self._address, head))
        if not (isinstance(transport, asyncio.WriteTransport) and transport.can_write_eof()):
            transport.close()
            return
        transport.write_eof()
        self._linger_left = PLAIN_LINGER_MAX
        if self._plain_timer is not None:
            self._plain_timer.cancel()
        self._plain_timer = asyncio.get_running_loop().call_later(PLAIN_LINGER_S,
                                                                  transport.close)

    def _release(self) -> None:
        if self._plain_timer is not None:
            self._plain_timer.cancel()
            self._plain_timer = None
        if self._admitted:
            self._admitted = False
            self._gate.release(self._address)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        elif self._plain is not None:
            self._plain += data[:PLAIN_HEAD_MAX - len(self._plain)]
            state = plain_request_state(bytes(self._plain))
            if state != "wait":
                self._answer_plain(state)
        elif self._linger_left > 0:
            self._linger_left -= len(data)
            if self._linger_left <= 0 and self._plain_transport is not None:
                self._plain_transport.close()
        elif self._admitted:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        if self._plain is not None:
            state = plain_request_state(bytes(self._plain))
            self._answer_plain("answer" if state == "wait" and b"\r\n" in self._plain
                               else state)
            if self._linger_left > 0 and self._plain_transport is not None:
                self._linger_left = 0  # the client has sent all it will: nothing to drain
                self._plain_transport.close()
            return True  # the answer is written; the transport closes after it
        if self._linger_left > 0:
            return False  # the client has read the answer and closed: so do we
        self._early_eof = True
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._release()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)


class _GatedSite(web.BaseSite):
    """aiohttp's TCP site, with each accepted connection passed through the gate first (and
    then, with `tls`, through the TLS handshake)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, gate: ConnectionGate,
                 backlog: int, tls: ssl.SSLContext | None = None, on_tls_error=None,
                 plain_answer=None):
        super().__init__(runner, backlog=backlog)
        self._host, self._port, self._gate = host, port, gate
        self._tls, self._on_tls_error = tls, on_tls_error
        self._plain_answer = plain_answer
        self._handshakes: set[asyncio.Task] = set()

    @property
    def name(self) -> str:
        return page_url("https" if self._tls else "http", self._host, self._port)

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        handler = self._runner.server
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GatedProtocol(self._gate, handler, self._tls, self._handshakes,
                                   self._on_tls_error, self._plain_answer),
            self._host, self._port, backlog=self._backlog)

    async def stop(self) -> None:
        for task in list(self._handshakes):
            task.cancel()
        await super().stop()


def page_url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


@dataclass(eq=False)
class _Viewer:
    ws: web.WebSocketResponse
    token: str
    heatmap: bool = False
    video: bool = True
    packet: bytes | None = None
    seq: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_sent: int = 0


@dataclass(eq=False)
class _Poller:
    """A page on the HTTPS fallback (`GET /api/frame`): a viewer while it polls."""

    token: str
    heatmap: bool = False
    video: bool = True
    polls: int = 0  # its requests in flight
    last: float = field(default_factory=time.monotonic)  # when its last poll ended
    sweep: asyncio.TimerHandle | None = None  # forgets it POLL_LINGER_S after that


def frame_header(record: dict, shown: object | None, seq: int,
                 confidence: int | None = None, held: bool = False,
                 rules: Rules | None = None, exam: dict | None = None,
                 set_up: str | None = None) -> dict:
    """The overlay data of one frame: what the page draws over the image, and the
    instruction under it (`edge.web.live.instruction`, over `exam`, the page's copy of the
    exam). `confidence` is the shown plane's steady percentage
    (`edge.web.live.SteadyConfidence`), and `held` whether that plane is held against the
    frames (its name trailing a change of view, without a percentage); `set_up` the
    set-up status refusing that head plane's heads (`edge.web.live.SteadySetUp`); the
    frame's own `confidence` is this frame's top plane's, for the record only."""
    quality = record.get("quality") or {}
    head = record.get("head") or {}
    bio = record.get("biometry") or {}
    out = {
        "seq": seq, "ts": record.get("ts"), "source": record.get("source"),
        "frame": record.get("frame"), "error": record.get("error"),
        "plane": record.get("plane"), "confidence": record.get("plane_confidence"),
        "quality": quality.get("score"), "roi": record.get("roi"),
        "ellipse": head.get("ellipse") if head.get("status") not in ("no_head",) else None,
        "head_status": head.get("status"),
        "biometry": {k: bio.get(k) for k in ("status", "hc_mm", "bpd_mm", "ofd_mm", "ga_weeks")}
        if bio else None,
        "latency_ms": record.get("latency_ms"),
    }
    if shown is not None:
        plane, advice = getattr(shown, "plane", None), getattr(shown, "advice", None)
        message = getattr(shown, "message", None)
        key = i18n.message_key(rules, advice, message)
        out["shown"] = {"plane": plane, "score": getattr(shown, "score", None),
                        "advice": advice, "message": message, "key": key,
                        "confidence": confidence, "held": bool(held),
                        "instruction": instruction(plane, message, key, bool(held), exam,
                                                   set_up)}
    return out


class WebServer:
    """The page's server; `start()` returns once it listens (or raises `WebError`)."""

    def __init__(self, settings: WebSettings, view: LiveView, state_dir: Path,
                 pin: PinHash, rules: Rules | None = None, protocols_file: str = ""):
        self.settings = settings
        self.view = view
        self.state_dir = Path(state_dir)
        self.pin = pin
        self.rules = rules
        self.uplink = None  # set by the loop once the uplink exists
        self.sessions = Sessions(idle_s=settings.session_idle_min * 60.0,
                                 max_age_s=settings.session_max_hours * 3600.0)
        self.brake = Brake(global_lock_s=settings.pin_lock_s)
        self.clock_settable = can_set_clock()  # the page offers to set the clock only then
        self.host, self.port = parse_listen(settings.listen)
        self.lines = LineLimiter(log, prefix="web: ")  # what a client can make us say
        self.gate = ConnectionGate(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDRESS,
                                   TRUSTED_RESERVE, TRUSTED_ADDRESSES, self.lines)
        self.host_names = self._own_names()
        # the transport: TLS unless [web] tls = "off" (the certificate is read at start)
        self.tls = PageTls(settings, self.state_dir, self.host) if settings.tls != "off" \
            else None
        self._cert_check_at = 0.0
        # earlier exams, read-only, off the loop
        self.history = ExamHistory(self.state_dir, protocols_file)
        self.bytes_sent = 0
        self.frames_encoded = 0
        self.encode_s = 0.0
        self.cpu_s = {"encode": 0.0, "status": 0.0}  # CPU seconds of the helper threads
        self._viewers: set[_Viewer] = set()
        self._pollers: dict[tuple[str, str], _Poller] = {}  # (session, stream id)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._frame_event: asyncio.Event | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-encode")
        self._status: dict = {}
        self._status_at = 0.0
        self._verify_lock: asyncio.Lock | None = None
        self._verify_known_lock: asyncio.Lock | None = None
        # the last streamed frame (seq, when it was encoded, the message) for the pollers;
        # the event is set, and replaced, each time there is a new one
        self._packet: tuple[int, float, bytes] | None = None
        self._packet_ready = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout_s: float = 15.0) -> None:
        started = threading.Event()
        failure: list[BaseException] = []
        raise_open_files_limit()
        if self.tls is not None:
            self.tls.load()  # WebError: a provisioned certificate that cannot be served
            self._cert_check_at = time.monotonic() + CERT_CHECK_S
        elif not _is_loopback(self.host):
            log.warning("web: [web] tls = \"off\": the PIN and the session cookie cross the "
                        "network in clear to %s; use it on loopback or behind a proxy that "
                        "serves TLS", self.settings.listen)

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.set_exception_handler(self._loop_error)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the caller as one line
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=main, name="sonoedge-web", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise WebError(f"web: {self.settings.listen}: the server did not start in "
                           f"{timeout_s:.0f} s")
        if failure:
            exc = failure[0]
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise WebError(f"web: cannot listen on {self.settings.listen} ({reason})")
        if self.tls is None:
            log.info("web: the midwife's page is at %s/", page_url("http", self.host, self.port))
        else:
            log.info("web: the midwife's page is at %s/ (TLS certificate SHA-256 %s)",
                     page_url("https", self.host, self.port), self.tls.served.fingerprint)

    def stop(self, timeout_s: float = 5.0) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.view.notify = None
        self._pool.shutdown(wait=False)
        self.history.close()

    async def _start(self) -> None:
        self._frame_event = asyncio.Event()
        self._verify_lock = asyncio.Lock()
        self._verify_known_lock = asyncio.Lock()  # the midwife's own queue (Brake)
        loop = asyncio.get_running_loop()
        event = self._frame_event
        self.view.notify = lambda: loop.call_soon_threadsafe(event.set)
        app = web.Application(client_max_size=MAX_BODY,
                              middlewares=[self._headers, self._host_check, self._auth])
        app.on_response_prepare.append(self._no_server_header)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        app.router.add_get("/i18n/{lang}.json", self._catalog)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/metrics", self._metrics)
        app.router.add_get("/api/ws", self._ws)
        app.router.add_get("/api/frame", self._frame)
        app.router.add_post("/api/exam", self._exam)
        app.router.add_post("/api/lmp", self._lmp)
        app.router.add_post("/api/clock", self._clock)
        app.router.add_get("/api/thumb/{exam}/{name}", self._thumb)
        app.router.add_get("/api/exams", self._exams)
        app.router.add_post("/api/exams/{exam}/lmp", self._exam_lmp)
        app.router.add_post("/api/exams/{exam}/withdrawal", self._exam_withdrawal)
        app.router.add_get("/report/{exam}", self._report)
        app.router.add_route("*", "/api/{tail:.*}", self._not_found)
        one_line_bad_requests()
        flush_bad_request_lines(everything=True)  # a window of this server's own
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=IDLE_TIMEOUT_S)
        await self._runner.setup()
        await _GatedSite(self._runner, self.host, self.port, self.gate, backlog=32,
                         tls=None if self.tls is None else self.tls.context,
                         on_tls_error=self._tls_failed,
                         plain_answer=self._plain_redirect).start()
        self._streamer = asyncio.ensure_future(self._stream())
        self._housekeeper = asyncio.ensure_future(self._housekeeping())

    async def _shutdown(self) -> None:
        self._streamer.cancel()
        self._housekeeper.cancel()
        for viewer in list(self._viewers):
            await viewer.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self.lines.flush(everything=True)
        flush_bad_request_lines(everything=True)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            self.lines.flush()
            flush_bad_request_lines()
            if self.tls is not None and time.monotonic() >= self._cert_check_at:
                self._cert_check_at = time.monotonic() + CERT_CHECK_S
                try:
                    self.tls.renew_if_due()
                except Exception as exc:  # the page goes on with the certificate it has
                    log.warning("web: could not renew the TLS certificate (%s)", exc)

    def _tls_failed(self, address: str, exc: Exception) -> None:
        """A handshake that failed: one rate-limited line, never a traceback. A client that
        closed before a handshake (a port check, a browser's spare connection) says
        nothing."""
        if isinstance(exc, ConnectionResetError | BrokenPipeError) or \
                isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        if isinstance(exc, ConnectionAbortedError):  # asyncio's handshake timeout
            reason = f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s"
        elif "CERTIFICATE_UNKNOWN" in reason or "UNKNOWN_CA" in reason \
                or "BAD_CERTIFICATE" in reason:
            reason = f"the browser does not trust the certificate yet ({reason})"
        self.lines.log("tls", "failed TLS handshakes", logging.INFO,
                       "web: TLS handshake with %s failed: %s", address,
                       shown_path(reason, 160), subject=address)

    def _plain_redirect(self, address: str, head: bytes) -> bytes:
        """The answer to a plain http:// request on the TLS port (a bookmark or an address
        typed without https://): a redirect to the same path over https:// for a Host that
        names this box, else 400. Nothing else crosses the Wi-Fi in clear. 302, not 301: a
        browser keeps a 301 for ever, and `tls = "off"` must be able to serve http:// again."""
        line, _, rest = head.partition(b"\r\n")
        parts = line.split(b" ")
        method = parts[0] if len(parts) == 3 else b""
        path = parts[1] if len(parts) == 3 and PLAIN_PATH.fullmatch(parts[1]) else b"/"
        host = None
        for field_line in rest.split(b"\r\n")[:100]:
            name, sep, value = field_line.partition(b":")
            if sep and name.strip().lower() == b"host":
                host = value.strip()
                break
        if host is None or not PLAIN_HOST.fullmatch(host) \
                or not self.host_allowed(host.decode("ascii")):
            self.lines.log("plain", "plain http:// requests", logging.INFO,
                           "web: %s asked for the page over plain http:// without a Host "
                           "of this box (%s): answered 400", address,
                           shown(host.decode("latin-1") if host else None), subject=address)
            body = b"This page is served over https:// only.\n"
            return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        location = b"https://" + host + path
        self.lines.log("plain", "plain http:// requests", logging.INFO,
                       "web: %s asked for the page over plain http://: sent it to %s",
                       address, shown(location.decode("ascii")), subject=address)
        body = b"" if method == b"HEAD" else b"The page is at " + location + b"\n"
        return (b"HTTP/1.1 302 Found\r\nLocation: " + location +
                b"\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio logs a failed accept() (no file descriptor left) with its traceback each
        time it retries, every second per listening socket: one rate-limited line here."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE,
                                                      errno.ENOBUFS, errno.ENOMEM):
            self.lines.log("accept", "failed accepts", logging.ERROR,
                           "web: cannot accept a connection: %s (%d open to the page)",
                           exc.strerror or exc, self.gate.count)
            return
        message = str(context.get("message") or "")
        if isinstance(exc, ssl.SSLError) or "SSL" in message:
            # a client's broken TLS: said in a line, a few a minute, with no traceback
            self.lines.log("tls_loop", "TLS connection errors", logging.INFO,
                           "web: %s: %s", shown_path(message, 80),
                           shown_path(exc if exc is not None else "", 160))
            return
        loop.default_exception_handler(context)

    # -- middleware ------------------------------------------------------------------------
    @web.middleware
    async def _headers(self, request: web.Request, handler):
        try:
            refuse_coded_body(request)
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        except OSError:  # a /static/ name too long for the file system (aiohttp's stat)
            if not request.path.startswith("/static/"):
                raise
            response = web.HTTPNotFound(text="not found")
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.path.startswith("/api/") or request.path == "/":
            response.headers.setdefault("Cache-Control", "no-store")
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @staticmethod
    async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.pop("Server", None)  # no "Python/3.x aiohttp/3.y" for scanners

    def _own_names(self) -> frozenset[str]:
        """The names the box answers to besides addresses, localhost and dotless names."""
        names = {n.lower().rstrip(".") for n in self.settings.allowed_hosts}
        hostname = socket.gethostname().lower().rstrip(".")
        if hostname:
            first = hostname.split(".", 1)[0]
            names |= {hostname, first, f"{first}.local"}
        if not _is_address(self.host):
            names.add(self.host.lower().rstrip("."))
        return frozenset(names)

    def host_allowed(self, value: str | None) -> bool:
        """Whether a Host header names this box. A DNS rebinding page sends its own name,
        one its owner's DNS answers for. Never such a name: an IP address; a name with no
        dot (no public DNS answers for one: ICANN allows no dotless domains, so only the
        clinic's own DNS or the LAN can); localhost (RFC 6761, never sent to DNS); the
        box's hostname and `[web] allowed_hosts`. No Host at all is not a browser."""
        if value is None:
            return True
        name = host_name(value)
        if name is None:
            return False
        if _is_address(name) or "." not in name:
            return True
        return name.endswith(".localhost") or name in self.host_names

    @web.middleware
    async def _host_check(self, request: web.Request, handler):
        host = request.headers.get("Host")
        if not self.host_allowed(host):
            self.lines.log("host", "requests for other host names", logging.WARNING,
                           "web: answered 421 to %s asking for host %s: not a name of this "
                           "box (add it to [web] allowed_hosts if the page is reached by it)",
                           request.remote, shown(host), subject=request.remote)
            raise web.HTTPMisdirectedRequest(text="this box does not answer to that name")
        return await handler(request)

    def _token(self, request: web.Request) -> str | None:
        return request.cookies.get(COOKIE)

    def _same_origin(self, request: web.Request) -> bool:
        """Whether a browser's request comes from the page itself. With TLS that is
        https://host:port only; with it off the scheme is not compared (behind a proxy
        that serves TLS the browser's origin is https, the request to the box is not)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser's cross-site request (curl, tests)
        scheme, sep, rest = origin.partition("://")
        if not sep or self.tls is not None and scheme != "https":
            return False
        return rest == request.host

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path.startswith("/api/"):
            if request.method not in ("GET", "HEAD") or request.path == "/api/ws":
                if not self._same_origin(request):
                    raise web.HTTPForbidden(text="cross-origin request refused")
            if request.path != "/api/login" and not self.sessions.valid(self._token(request)):
                raise web.HTTPUnauthorized(text="no valid session: log in with the PIN",
                                           headers={"WWW-Authenticate": 'PIN realm="sonoedge"'})
        return await handler(request)

    # -- public ----------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _catalog(self, request: web.Request) -> web.Response:
        lang = request.match_info["lang"]
        if not i18n.LANG_RE.match(lang) or lang not in i18n.languages():
            raise web.HTTPNotFound()
        text = i18n.catalog(lang, self.rules)
        text["_languages"] = json.dumps(i18n.languages())
        return web.json_response(text, headers={"Cache-Control": "no-cache"})

    async def _json_body(self, request: web.Request) -> dict:
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="send application/json")
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                raw = await request.read()  # at most MAX_BODY (413 beyond)
        except TimeoutError:
            raise web.HTTPRequestTimeout(text="the body did not arrive in time") from None
        try:  # UTF-8 (RFC 8259) whatever charset the request names; depth checked first
            body = loads_bounded(raw, MAX_BODY)
        except PayloadError:
            raise web.HTTPBadRequest(text="the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    def _known_token(self) -> str:
        return hmac.new(self.pin.digest, b"sonoedge-known-browser", hashlib.sha256).hexdigest()

    def _known_browser(self, request: web.Request) -> bool:
        given = request.cookies.get(KNOWN_COOKIE, "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self._known_token().encode())

    @staticmethod
    def _refused(reason: str, wait: float) -> web.Response:
        return web.json_response({"error": reason, "retry_after_s": max(1, round(wait))},
                                 status=429, headers={"Retry-After": str(int(wait) + 1)})

    async def _login(self, request: web.Request) -> web.Response:
        client = request.remote or "?"
        known = self._known_browser(request)
        # The PIN first (bounded in size and time): a login is charged when its PIN has
        # arrived. Charged before, requests that never send one filled the device-wide
        # bucket and locked every new browser out without a PIN tried. `begin` still runs
        # before any await, so attempts racing it see the charge and its address's slot.
        body = await self._json_body(request)
        pin = body.get("pin")
        # JSON can escape a lone surrogate, which no PIN holds and scrypt cannot encode
        if not isinstance(pin, str) or len(pin) > 64 or not _is_text(pin):
            raise web.HTTPBadRequest(text="pin must be text of at most 64 characters")
        locks = self.brake.locks
        try:  # counted as a wrong PIN from here on, until the hash says otherwise
            attempt = self.brake.begin(client, known=known)
        except Braked as refused:
            if self.brake.locks != locks:
                self._say_locked()
            return self._refused(refused.reason, refused.wait_s)
        if not self.brake.queue(attempt):  # the verification queue is full
            self.brake.cancel(attempt)
            return self._refused("busy", 1.0)
        ok = await self._verify(attempt, pin)
        if ok is None:
            return self._refused("busy", 1.0)
        wait = self.brake.finish(attempt, ok)
        if not ok:
            self.lines.log("wrong_pin", "wrong PINs", logging.WARNING,
                           "web: wrong PIN from %s%s", client,
                           " (a browser that knew the PIN)" if known else "", subject=client)
            return web.json_response({"error": "wrong_pin", "retry_after_s": round(wait)},
                                     status=401)
        self.gate.trust(client)
        token = self.sessions.open()
        response = web.json_response({"ok": True})
        secure = self.tls is not None  # sent only over TLS, never to an http:// page
        response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/",
                            max_age=int(self.sessions.max_age_s), secure=secure)
        response.set_cookie(KNOWN_COOKIE, self._known_token(), httponly=True,
                            samesite="Strict", path="/api/login", max_age=KNOWN_MAX_AGE_S,
                            secure=secure)
        return response

    async def _verify(self, attempt: Attempt, pin: str) -> bool | None:
        """The slow hash, one at a time per queue (known browsers have their own); None if
        the attempt lost its slot while it waited. An attempt that ends any other way
        (the client went away) stays counted as wrong."""
        lock = self._verify_known_lock if attempt.known else self._verify_lock
        ok = False
        try:
            async with lock:  # one slow hash at a time per queue: bounded memory
                if not self.brake.admitted(attempt):
                    return None
                ok = await asyncio.get_running_loop().run_in_executor(None, self.pin.matches,
                                                                      pin)
        finally:
            if not ok:
                self.brake.finish(attempt, False)
        return ok

    def _say_locked(self) -> None:
        brake = self.brake
        self.lines.log("device_lock", "device-wide locks", logging.WARNING,
                       "web: too many wrong PINs from all addresses together (%d, one "
                       "forgotten every %.0f min): browsers that have not logged in here "
                       "before wait %.0f s (lock %d)", brake.global_max,
                       brake.global_window_s / brake.global_max / 60,
                       brake.locked_until - time.monotonic(), brake.locks)

    async def _logout(self, request: web.Request) -> web.Response:
        self.sessions.close(self._token(request))
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/", secure=self.tls is not None)
        return response

    async def _not_found(self, request: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="no such API")

    # -- state -----------------------------------------------------------------------------
    def _slow_status(self) -> dict:
        """Uplink, disk and temperature: read at most every STATUS_EVERY_S (executor)."""
        cpu0 = time.thread_time()
        try:
            return self._read_status()
        finally:
            self.cpu_s["status"] += time.thread_time() - cpu0

    def _read_status(self) -> dict:
        out: dict = {"temperature_c": read_temperature_c(),
                     "clock_synced": clock_synchronised()}  # for _clock_status
        try:
            out["disk_free_mb"] = round(shutil.disk_usage(self.state_dir).free / 1e6)
        except OSError:
            out["disk_free_mb"] = None
        uplink = self.uplink
        if uplink is None:
            out["uplink"] = None
        else:
            status = uplink.status()
            try:  # her exams and corrections (never health): to go, sent and kept until
                # the district's receipt (wire/receipt.py), gone without one, refused by
                # the broker (none reaches the district); whether a receipt ever came:
                # only then can the page say "confirmed"
                counts = uplink.outbox.exam_counts()
            except Exception:  # a closed outbox at shutdown
                counts = dict.fromkeys(("pending", "awaiting_receipt", "unconfirmed",
                                        "unconfirmed_old", "rejected", "receipts_seen"))
            out["uplink"] = {"enabled": bool(status.get("enabled")),
                             "connected": bool(status.get("connected")), **counts,
                             "broker": status.get("broker") or ""}
        return out

    async def _status_now(self) -> dict:
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY_S or not self._status:
            self._status_at = now
            self._status = await asyncio.get_running_loop().run_in_executor(
                None, self._slow_status)
        view = self.view
        if view.phase == "loading":
            signal = "loading"
        elif view.phase == "ended":
            signal = "ended"
        elif view.last_frame_mono is None or \
                now - view.last_frame_mono > self.settings.no_signal_s:
            signal = "no_signal"
        else:
            signal = "ok"
        fps = view.fps if signal == "ok" else 0.0
        kept_until = view.exam_kept_until
        kept_s = None if signal != "no_signal" or kept_until is None \
            else max(0, round(kept_until - now))
        return {**self._status, "phase": view.phase, "signal": signal,
                "source": view.source_name, "live": view.source_live,
                "fps": None if fps is None else round(fps, 1), "models": view.models,
                "viewers": view.viewers, "heatmap_available": view.has_class_maps,
                "holding": view.holding, "exam_kept_s": kept_s,
                "clock": self._clock_status()}

    def _screening(self) -> dict:
        exam = self.view.exam
        dates = self.view.ga_dates
        if dates is not None and exam is not None and dates["exam_id"] != exam["exam_id"]:
            dates = None  # entered for another woman's exam
        out = screening((exam or {}).get("biometry"), dates["weeks"] if dates else None)
        out["lmp"] = dates["lmp"] if dates else None
        out["lmp_max_weeks"] = MAX_LMP_DAYS // 7  # the page's date picker offers no other
        return out

    async def _state_dict(self) -> dict:
        latest = self.view.latest
        frame = None if latest is None else frame_header(latest.record, latest.shown,
                                                         latest.seq, latest.confidence,
                                                         latest.held, self.rules,
                                                         self.view.exam, latest.set_up)
        return {"frame": frame, "exam": i18n.exam_with_advice_keys(self.rules, self.view.exam),
                "protocol": self.view.protocol, "screening": self._screening(),
                "status": await self._status_now()}

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(await self._state_dict())

    async def _metrics(self, request: web.Request) -> web.Response:
        """What the page costs the device, for `make bench`: CPU seconds of the server's
        event loop (this thread), the encoder and the status reader; the loop's time in
        the web hook; frames and bytes streamed."""
        view = self.view
        return web.json_response({
            "cpu_s": {"server": time.thread_time(), **self.cpu_s},
            "hook_s": view.hook_s, "loop_frames": view.frames,
            "frames_encoded": self.frames_encoded, "bytes_sent": self.bytes_sent,
            "encode_ms_mean": 1000 * self.encode_s / max(1, self.frames_encoded),
            "viewers": view.viewers, "wall": time.time()})

    # -- commands --------------------------------------------------------------------------
    async def _exam(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        action = body.get("action")
        if action not in ("start", "stop"):
            raise web.HTTPBadRequest(text='action must be "start" or "stop"')
        if self.view.phase != "running":
            raise web.HTTPConflict(text=f"the device is {self.view.phase}")
        exam = self.view.exam
        if action == "start" and exam is not None and exam.get("running") \
                and not self._stop_queued():
            # a second tap on Start (the first seemed not to take): the exam goes on; only
            # "stop" ends it. A "stop" still queued (Stop then Start) lets it through.
            raise web.HTTPConflict(text=f"exam {exam['exam_id']} is running: send "
                                   f'"stop" to end it first')
        self.view.command(action)
        return web.json_response({"ok": True, "action": action})

    def _stop_queued(self) -> bool:
        try:  # the loop thread takes commands off this deque as we look
            return self.view.stopping or "stop" in self.view.commands
        except RuntimeError:
            return True  # it was changing: let the loop decide

    @staticmethod
    def _dates_body(body: dict, fields: tuple[str, ...] = ("lmp", "today")
                    ) -> tuple[object, object]:
        """(lmp, today) of a dates body: `lmp` must be there, null to clear the dates (a
        body without it, a misspelt key, must not clear what the midwife entered). A field
        the route does not read (`fields`) is refused naming it, as a withdrawal's is: it
        was taken without a word, and dropped (a client sending the woman's name with her
        dates had it "kept")."""
        extra = sorted(set(body) - set(fields))
        if extra:
            raise web.HTTPBadRequest(text=f"unexpected field {shown(extra[0])[:40]}: send "
                                     f"{', '.join(fields[:-1])} and {fields[-1]} only")
        if "lmp" not in body:
            raise web.HTTPBadRequest(text='lmp is missing: give "YYYY-MM-DD", or null to '
                                     "clear the dates")
        return body["lmp"], body.get("today")

    def _keep_dates(self, exam_id: str, dates: dict | None) -> None:
        """Queue an exam's dates for the loop to journal; a full queue (the loop takes
        none while the models load or no frame comes) refuses them: 503, never an entry
        the box already accepted pushed out by this one."""
        if not self.view.queue_dates(exam_id, dates):
            raise web.HTTPServiceUnavailable(text="the dates were not kept: the device has "
                                             "not yet kept the last ones; enter them again "
                                             "in a minute")

    async def _lmp(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        lmp, today = self._dates_body(body, ("lmp", "today", "exam_id"))
        exam = self.view.exam
        shown = body.get("exam_id", ...)
        if shown is not None and (not isinstance(shown, str) or len(shown) > 64):
            raise web.HTTPBadRequest(text="exam_id (the exam the page shows) must be a "
                                     "string of at most 64 characters, or null for none")
        if shown != (exam["exam_id"] if exam else None):
            # Dates belong to one woman's exam: a page that showed another (an older page,
            # or a new exam that began as the midwife typed) must not put them on this one.
            raise web.HTTPConflict(text="the dates were not kept: the exam on the page is no "
                                   "longer the device's; look again and enter them")
        if lmp is None:
            if exam is not None:
                self._keep_dates(exam["exam_id"], None)
            self.view.set_dates(None)
            return web.json_response({"ok": True, "ga_dates_weeks": None})
        dates, weeks = self._read_dates(lmp, today, (exam or {}).get("ended_ts"))
        if exam is not None:  # kept with the exam for its report (edge/web/history.py)
            self._keep_dates(exam["exam_id"], dates)
        self.view.set_dates({"exam_id": exam["exam_id"] if exam else None, **dates,
                             "weeks": weeks})
        return web.json_response({"ok": True, "ga_dates_weeks": round(weeks, 2)})

    @staticmethod
    def _read_dates(lmp: object, today: object, ended_ts: object) -> tuple[dict, float]:
        """The page's dates, checked (400 with `read_lmp`'s reason), and the age by dates
        on the scan's day for an exam that has ended (`ended_ts`; None while it runs),
        however late she enters them."""
        try:
            lmp, today, weeks = read_lmp(lmp, day_of_exam(today, ended_ts, time.time()))
        except PhoneDateError as exc:  # the pages say it in their language: named apart
            raise web.HTTPBadRequest(text=str(exc), headers={REFUSED: "phone-date"}) from None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return {"lmp": lmp, "today": today}, weeks

    def _clock_rules(self) -> ClockRules:
        served = getattr(self.tls, "served", None) if self.settings.tls == "files" else None
        return ClockRules(self.settings.clock_off_s, self.settings.clock_max_move_days * 86400,
                          self.clock_settable,
                          served.not_after.timestamp() if served is not None else None)

    def _clock_status(self) -> dict:
        """What the page needs to say whether the box's clock is off its phone's, and to
        offer only the move the box would make (edge/web/clock.py)."""
        rules = self._clock_rules()
        return {"box_ms": round(time.time() * 1000), "off_s": rules.off_min_s,
                "max_move_s": rules.max_move_s, "settable": rules.settable,
                "not_after_ms": None if rules.not_after is None else rules.not_after * 1000,
                "synced": bool(self._status.get("clock_synced")),
                "phone_ms": [EARLIEST_S * 1000, LATEST_S * 1000]}

    async def _clock(self, request: web.Request) -> web.Response:
        """The box's clock moved forward to the phone's (edge/web/clock.py); a refusal is
        named in REFUSED for the page's words."""
        body = await self._json_body(request)
        try:
            phone_s = read_phone_s(body.get("phone_ms"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        if self.view.phase == "loading":
            # the loop dates again what the clock behind stamped once it runs; while the
            # models load it would not see the step, and the exams its start recovers and
            # queues would keep their early dates
            raise web.HTTPConflict(text="the box is starting: set its clock once the page "
                                   "shows the image", headers={REFUSED: "clock-starting"})
        try:
            moved = set_from_phone(phone_s, self._clock_rules())
        except ClockRefused as exc:
            refusal = web.HTTPConflict if exc.status == 409 else web.HTTPForbidden
            raise refusal(text=str(exc), headers={REFUSED: exc.name}) from None
        record_set(self.state_dir, moved)  # every health message says it from now on
        # The loop sees the step and dates again what the clock behind stamped (its
        # running exam, the queued messages, the journal: edge/loop.py follow_clock_steps).
        return web.json_response({"ok": True, "moved_s": round(moved, 3)})

    async def _exam_lmp(self, request: web.Request) -> web.Response:
        """Dates for one ended exam, named by its report's URL rather than by what the live
        page shows: the midwife chose that exam, by its time and figures, on its report."""
        exam_id = request.match_info["exam"]
        body = await self._json_body(request)
        lmp, today = self._dates_body(body)
        current = self.view.exam or {}
        if current.get("running") and current.get("exam_id") == exam_id:
            raise web.HTTPConflict(text="this exam is still running: enter its dates on the "
                                   "live page")
        kept = await self.history.exam(exam_id, None)
        if kept is None:
            raise web.HTTPNotFound(text="no such ended exam in the journal")
        dates, weeks = (None, None) if lmp is None \
            else self._read_dates(lmp, today, kept.get("ended_ts"))
        self._keep_dates(exam_id, dates)
        if (self.view.exam or {}).get("exam_id") == exam_id:  # on the card too: it agrees
            self.view.set_dates(None if dates is None else {
                "exam_id": exam_id, **dates, "weeks": weeks})
        kept = await self._dates_kept(exam_id, dates)
        return web.json_response({"ok": True, "kept": kept,
                                  "ga_dates_weeks": None if weeks is None else round(weeks, 2)})

    async def _dates_kept(self, exam_id: str, dates: dict | None) -> bool:
        """Whether the journal has the exam's dates as sent (`_journal_has`)."""
        return await self._journal_has(lambda: self.history.dates(exam_id), lambda kept: (
            dates is None and kept is None) or (
            dates is not None and kept is not None and kept["lmp"] == dates["lmp"]
            and kept["today"] == dates["today"]))

    @staticmethod
    async def _journal_has(read, kept) -> bool:
        """Whether `kept(await read())` holds, looked at until DATES_KEPT_WAIT_S: the loop
        keeps what the page sent between two frames (or while it lingers)."""
        deadline = time.monotonic() + DATES_KEPT_WAIT_S
        while True:
            if kept(await read()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    @staticmethod
    def _withdrawal_body(body: dict) -> tuple[bool, str | None]:
        """(withdrawn, reason) of a withdrawal body: `withdrawn` true with a reason from the
        page's list, or false to undo one. Anything else is refused, naming the field."""
        extra = sorted(set(body) - {"withdrawn", "reason"})
        if extra:
            raise web.HTTPBadRequest(text=f"unexpected field {shown(extra[0])[:40]}: send "
                                     "withdrawn and reason only")
        withdrawn = body.get("withdrawn")
        if not isinstance(withdrawn, bool):
            raise web.HTTPBadRequest(text="withdrawn must be true (withdraw the exam) or "
                                     "false (undo its withdrawal)")
        reason = body.get("reason")
        if withdrawn and reason not in WITHDRAWAL_REASONS:
            raise web.HTTPBadRequest(text="reason must be one of "
                                     + ", ".join(WITHDRAWAL_REASONS))
        return withdrawn, reason if withdrawn else None

    async def _exam_withdrawal(self, request: web.Request) -> web.Response:
        """An ended exam withdrawn (started by mistake, a test scan, the wrong woman, two
        women in one exam) or restored, from the earlier exams' list: queued for the loop
        to journal and tell the district, as dates are. Withdrawing it again for the same
        reason changes nothing (a second tap)."""
        exam_id = request.match_info["exam"]
        body = await self._json_body(request)
        withdrawn, reason = self._withdrawal_body(body)
        current = self.view.exam or {}
        if current.get("running") and current.get("exam_id") == exam_id:
            raise web.HTTPConflict(text="this exam is still running: stop it, then withdraw "
                                   "it from the earlier exams")
        kept = await self.history.exam(exam_id, None)
        if kept is None:
            raise web.HTTPNotFound(text="no such ended exam in the journal")
        standing = kept.get("withdrawal") or {"withdrawn": False, "reason": None}
        if not withdrawn and not standing["withdrawn"]:
            raise web.HTTPConflict(text="this exam is not withdrawn: there is nothing to undo")
        reason = reason or standing["reason"]
        if (standing["withdrawn"], standing["reason"]) != (withdrawn, reason) \
                and not self.view.queue_withdrawal(exam_id, withdrawn, reason):
            raise web.HTTPServiceUnavailable(text="the withdrawal was not kept: the device "
                                             "has not yet kept the last entries; try again "
                                             "in a minute")
        done = await self._journal_has(lambda: self.history.withdrawal(exam_id), lambda w: (
            w is not None and (w["withdrawn"], w["reason"]) == (withdrawn, reason)))
        return web.json_response({"ok": True, "kept": done, "withdrawn": withdrawn,
                                  "reason": reason})

    # -- earlier exams (edge/web/history.py) -----------------------------------------------
    async def _exams(self, request: web.Request) -> web.Response:
        try:
            limit = parse_limit(request.rel_url.query.getall("limit", []))
        except BadQuery as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        exams, readable = await self.history.recent(limit, self.view.protocol)
        return web.json_response({"exams": exams, "readable": readable})

    async def _report(self, request: web.Request) -> web.Response:
        """A printable report of one kept exam: the PIN first without a session."""
        try:
            lang = report_lang(request.rel_url.query.get("lang"),
                               request.headers.get("Accept-Language"))
        except BadQuery as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        uplink = self.uplink
        box = {"device_id": getattr(uplink, "device_id", ""),
               "clinic_id": getattr(uplink, "clinic_id", "")}
        return await self.history.report(request.match_info["exam"], lang, self.rules, box,
                                         self.sessions.valid(self._token(request)),
                                         self.view.protocol)

    async def _thumb(self, request: web.Request) -> web.StreamResponse:
        exam_id, name = request.match_info["exam"], request.match_info["name"]
        wanted = f"{exam_id}/{name}"
        exam = self.view.exam or {}
        listed = {str((row.get("best") or {}).get("thumbnail") or "")
                  for row in exam.get("checklist", [])}
        match = next((p for p in listed if p and p.endswith("/" + wanted)
                      and p.count("/") == 2), None)
        if match is None:  # an earlier exam's: the path the journal lists, never the URL's
            found, path = await self.history.thumbnail(exam_id, name)
            if found == "gone":
                raise web.HTTPNotFound(text="image no longer kept (the thumbnails' quota)")
            if path is None:
                raise web.HTTPNotFound(text="no such thumbnail in the exam on screen or the "
                                            "journal")
            match = str(path)
        path = (self.state_dir / match).resolve()
        if not path.is_relative_to(self.state_dir.resolve()) or not path.is_file():
            raise web.HTTPNotFound(text="thumbnail not written yet")
        # a patient's image: kept by no cache, the browser's own included
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    # -- the stream ------------------------------------------------------------------------
    def _encode(self, latest, with_heatmap: bool) -> bytes:
        """Executor thread: crop the region, scale, JPEG; the header beside it."""
        t0, cpu0 = time.perf_counter(), time.thread_time()
        settings = self.settings
        header = frame_header(latest.record, latest.shown, latest.seq, latest.confidence,
                              latest.held, self.rules, self.view.exam, latest.set_up)
        jpeg = b""
        image = latest.image
        if image is not None:
            h, w = image.shape[:2]
            roi = latest.record.get("roi")
            if roi:
                x, y, rw, rh = roi
                pad = int(round(0.02 * max(rw, rh)))
                x0, y0 = max(0, x - pad), max(0, y - pad)
                x1, y1 = min(w, x + rw + pad), min(h, y + rh + pad)
            else:
                x0, y0, x1, y1 = 0, 0, w, h
            crop = image[y0:y1, x0:x1]
            scale = min(1.0, settings.stream_width / max(x1 - x0, y1 - y0))
            if scale < 1.0:
                size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
                crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY,
                                                  settings.jpeg_quality])
            if ok:
                jpeg = buf.tobytes()
                header["view"] = [x0, y0, x1 - x0, y1 - y0]
                header["size"] = [int(crop.shape[1]), int(crop.shape[0])]
        if with_heatmap and latest.class_map is not None:
            hm = heatmap(latest.class_map)
            header["heatmap"] = {"w": int(hm.shape[1]), "h": int(hm.shape[0]),
                                 "data": base64.b64encode(np.ascontiguousarray(hm)).decode()}
        header["published"] = latest.published
        header["sent"] = time.time()
        head = json.dumps(header, separators=(",", ":")).encode()
        self.encode_s += time.perf_counter() - t0
        self.cpu_s["encode"] += time.thread_time() - cpu0
        self.frames_encoded += 1
        return struct.pack("<I", len(head)) + head + jpeg

    async def _stream(self) -> None:
        """One encoder for all viewers, at most max_fps, only while someone watches."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.settings.max_fps
        last = 0.0
        while True:
            await self._frame_event.wait()
            self._frame_event.clear()
            self._count_viewers()  # pollers that stopped are forgotten: no more frames
            viewers = [v for v in (*self._viewers, *self._pollers.values()) if v.video]
            if not viewers:
                continue
            wait = last + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                # The rate cap delayed us: rather than send a frame that has aged through
                # the wait, take the next one as it arrives (a frame period at most).
                latest = self.view.latest
                if latest is not None and time.time() - latest.published > interval / 2:
                    self._frame_event.clear()
                    try:
                        await asyncio.wait_for(self._frame_event.wait(), timeout=1.0)
                    except TimeoutError:
                        pass  # the source stalled: send what there is
                    self._frame_event.clear()
            latest = self.view.latest
            if latest is None:
                continue
            last = time.monotonic()
            with_heatmap = any(v.heatmap for v in viewers)
            try:
                packet = await loop.run_in_executor(self._pool, self._encode, latest,
                                                    with_heatmap)
            except Exception:  # never let one bad frame end the stream
                log.exception("web: could not encode frame %d", latest.seq)
                continue
            for viewer in list(self._viewers):
                viewer.packet = packet
                viewer.seq = latest.seq
                viewer.wake.set()
            self._packet = (latest.seq, time.monotonic(), packet)  # the same bytes, polled
            ready, self._packet_ready = self._packet_ready, asyncio.Event()
            ready.set()

    async def _send_loop(self, viewer: _Viewer) -> None:
        try:
            await self._send_frames(viewer)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the viewer went away

    async def _send_frames(self, viewer: _Viewer) -> None:
        ws = viewer.ws
        next_state = 0.0
        while not ws.closed:
            try:
                await asyncio.wait_for(viewer.wake.wait(), timeout=STATE_EVERY_S)
            except TimeoutError:
                pass
            viewer.wake.clear()
            if not self.sessions.valid(viewer.token):  # watching counts as use
                await ws.close(code=4401, message=b"session expired")
                return
            packet, viewer.packet = viewer.packet, None
            if packet is not None and viewer.video:
                await ws.send_bytes(packet)  # waits while the viewer is slow: frames skip
                viewer.bytes_sent += len(packet)
                self.bytes_sent += len(packet)
            if time.monotonic() >= next_state:
                next_state = time.monotonic() + STATE_EVERY_S
                text = json.dumps({"type": "state", **await self._state_dict()},
                                  separators=(",", ":"))
                await ws.send_str(text)
                viewer.bytes_sent += len(text)
                self.bytes_sent += len(text)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        token = self._token(request) or ""
        self._admit(token)
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=20.0,
                                   compress=False)
        viewer = _Viewer(ws, token)
        self._viewers.add(viewer)  # counted before the handshake: no race past the caps
        self._count_viewers()
        sender = None
        try:
            await ws.prepare(request)
            sender = asyncio.ensure_future(self._send_loop(viewer))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    break
                try:  # depth checked before parsing: 1,000 brackets fit in a message
                    data = loads_bounded(msg.data.encode("utf-8"), MAX_WS_MESSAGE)
                except PayloadError:
                    break
                if not isinstance(data, dict):
                    break
                if isinstance(data.get("heatmap"), bool):
                    viewer.heatmap = data["heatmap"]
                if isinstance(data.get("video"), bool):
                    viewer.video = data["video"]
                self._frame_event.set()
        finally:
            if sender is not None:
                sender.cancel()
            self._viewers.discard(viewer)
            self._count_viewers()
        return ws

    # -- the stream over HTTPS requests (a browser that refuses the WebSocket) -------------
    def _count_viewers(self) -> int:
        """Forget the pollers that stopped polling; the viewers now (sockets and pollers),
        as the status strip shows them and as `LiveView.publish` wakes the encoder for."""
        now = time.monotonic()
        for key, poller in list(self._pollers.items()):
            if not poller.polls and now - poller.last >= POLL_LINGER_S:
                del self._pollers[key]
        count = len(self._viewers) + len(self._pollers)
        self.view.viewers = count
        return count

    def _admit(self, token: str) -> None:
        """A new stream (a WebSocket, or a poller's first poll) within the caps."""
        if self._count_viewers() >= MAX_VIEWERS:
            raise web.HTTPServiceUnavailable(text=f"at most {MAX_VIEWERS} viewers at once")
        mine = sum(1 for v in (*self._viewers, *self._pollers.values()) if v.token == token)
        if mine >= MAX_VIEWERS_PER_SESSION:
            raise web.HTTPTooManyRequests(text=f"at most {MAX_VIEWERS_PER_SESSION} viewers "
                                          f"per session: close another tab")

    @staticmethod
    def _poll_query(request: web.Request) -> tuple[str, int, bool]:
        """(stream id, after, heatmap) of a poll; anything else is one line of 400."""
        query = request.rel_url.query
        for key in query:
            if key not in ("stream", "after", "heatmap"):
                raise web.HTTPBadRequest(text="unknown query parameter: give only stream, "
                                         "after and heatmap")
            if len(query.getall(key)) > 1:
                raise web.HTTPBadRequest(text=f"{key} is given more than once")
        stream = query.get("stream", "")
        if len(stream) > 32 or not POLL_STREAM_CHARS.issuperset(stream):
            raise web.HTTPBadRequest(text="stream must be at most 32 letters, digits, - or _")
        after = query.get("after", "0")
        if not (0 < len(after) <= 16 and after.isascii() and after.isdigit()) \
                or int(after) > MAX_SEQ:
            raise web.HTTPBadRequest(text=f"after must be a whole number from 0 to {MAX_SEQ}")
        heat = query.get("heatmap", "0")
        if heat not in ("0", "1"):
            raise web.HTTPBadRequest(text="heatmap must be 0 or 1")
        return stream, int(after), heat == "1"

    async def _frame(self, request: web.Request) -> web.Response:
        """One poll: the next streamed frame with a seq above `after`, as exactly the
        WebSocket's binary message, or 204 when none comes within POLL_WAIT_S. The
        frames are the encoder's, shared with the sockets: nothing is encoded per poll."""
        stream, after, heat = self._poll_query(request)
        token = self._token(request) or ""
        poller = self._pollers.get((token, stream))
        if poller is None:
            self._admit(token)
            poller = self._pollers[(token, stream)] = _Poller(token)
            self._count_viewers()  # from now on each published frame wakes the encoder
        poller.heatmap = heat
        poller.polls += 1
        try:
            packet = await self._next_packet(after)
        finally:
            poller.polls -= 1
            poller.last = time.monotonic()
            if poller.sweep is not None:
                poller.sweep.cancel()
            poller.sweep = asyncio.get_running_loop().call_later(POLL_LINGER_S + 0.1,
                                                                 self._count_viewers)
        if packet is None:
            return web.Response(status=204, headers={"Cache-Control": "no-store"})
        self.bytes_sent += len(packet)
        return web.Response(body=packet, content_type="application/octet-stream",
                            headers={"Cache-Control": "no-store"})

    async def _next_packet(self, after: int) -> bytes | None:
        latest = self.view.latest
        if after > (latest.seq if latest is not None else 0):
            after = 0  # a seq from before the box restarted: its frames start again at 1
        fresh_s = 1.0 / self.settings.max_fps + 1.0  # an older one is no live image
        deadline = time.monotonic() + POLL_WAIT_S
        while True:
            ready, got = self._packet_ready, self._packet
            if got is not None and got[0] > after and time.monotonic() - got[1] <= fresh_s:
                return got[2]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    await ready.wait()
            except TimeoutError:
                return None
