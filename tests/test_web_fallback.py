"""The stream over plain HTTPS requests, for a browser that will not open the WebSocket.

iOS Safari (and other WebKit browsers) refuse a wss:// WebSocket to a server whose
self-signed certificate the user accepted for the page itself (OSStatus -9807/-9812,
WebKit bug 145819), while the page's https:// requests work: on an iPad the midwife got the
page but never the live image or its instruction. Now `GET /api/frame?after=<seq>` is a
long poll answered with the next streamed frame as exactly the WebSocket's binary message
(the one shared encoder's bytes), the page polls `/api/state` beside it, and the page
switches to that by itself when its WebSocket does not open, and back when it does.

Real servers over real TLS (`WebServer` on a free loopback port, the certificate it made,
clients that trust only that), frames published as the device loop publishes them, and the
page in headless Chromium with its WebSocket refused as WebKit refuses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import threading
import time

import cv2
import numpy as np
import pytest

from edge.exam.feedback import Shown
from edge.models.quality import load_rules
from edge.web import server as web_server
from edge.web.auth import read_pin, write_pin
from edge.web.live import LiveView
from edge.web.server import WebServer
from edge.web.settings import WebSettings
from tests.servers import free_port
from tests.web_harness import PIN, chromium, http, login_cookie, tls_cert, trust, wait_for

POLL = {"timeout": 20_000, "polling": 100}  # wait_for_function without rAF
MAX_SEQ = 2**53 - 1  # the largest `after`: a seq the page's numbers hold exactly
OVERLAY = ("seq", "ts", "source", "frame", "error", "plane", "confidence", "quality", "roi",
           "ellipse", "head_status", "biometry", "latency_ms", "shown", "view", "size",
           "published", "sent")


class _Loop:
    """The device loop's side: a frame every 1/15 s, with its result and instruction."""

    def __init__(self, view: LiveView, rules):
        self.view = view
        rule = next(r for r in rules.criteria if r.message_low)
        self.advice, self.message = rule.name, rule.message_low
        image = np.zeros((480, 640, 3), np.uint8)
        cv2.ellipse(image, (320, 240), (150, 110), 10, 0, 360, (200, 200, 200), 3)
        cv2.randu(image[100:380, 120:520], 0, 120)
        self.image = image
        self.playing = threading.Event()
        self.playing.set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop.wait(1 / 15):
            if not self.playing.is_set():
                continue
            n += 1
            record = {"frame": n, "ts": time.time(), "source": "test", "error": None,
                      "plane": "Brain (Tv.)", "plane_confidence": 0.8,
                      "quality": {"score": 0.4}, "roi": [120, 100, 400, 280],
                      "head": {"status": "ok", "ellipse": [320, 240, 150, 110, 10]},
                      "biometry": {"status": "ok", "hc_mm": 180.0, "bpd_mm": 48.0,
                                   "ofd_mm": 62.0, "ga_weeks": 20.1}, "latency_ms": 40}
            shown = Shown("Brain (Tv.)", 0.4, self.advice, self.message)
            self.view.publish(self.image, record, shown, None, time.monotonic(), 80)


@pytest.fixture
def box(tmp_path, caplog):
    """A page over TLS with the loop publishing; yields (server, base URL, loop)."""
    caplog.set_level(logging.INFO)
    state = tmp_path / "state"
    write_pin(state, PIN)
    rules = load_rules(None)
    view = LiveView()
    srv = WebServer(WebSettings(listen=f"127.0.0.1:{free_port()}"), view, state,
                    read_pin(state), rules)
    srv.start()
    view.phase, view.source_name, view.source_live = "running", "test", True
    view.models = {"plane_student": "test"}
    base = f"https://127.0.0.1:{srv.port}"
    trust(base, tls_cert(state))
    loop = _Loop(view, rules)
    try:
        yield srv, base, loop
    finally:
        loop.stop.set()
        loop.thread.join(5)
        srv.stop()


def _parse(message: bytes) -> tuple[dict, bytes]:
    """A WebSocket frame message: u32 little-endian header length, header JSON, JPEG."""
    size = int.from_bytes(message[:4], "little")
    return json.loads(message[4:4 + size]), message[4 + size:]


def _poll(base: str, cookie: str, query: str) -> tuple[int, dict, bytes]:
    return http(f"{base}/api/frame?{query}", cookie=cookie)


def _metrics(base: str, cookie: str) -> dict:
    return json.loads(http(base + "/api/metrics", cookie=cookie)[2])


def _viewers(base: str, cookie: str) -> int:
    return json.loads(http(base + "/api/state", cookie=cookie)[2])["status"]["viewers"]


def _no_tracebacks(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text[-3000:]
    assert "Traceback" not in caplog.text


# -- the route ---------------------------------------------------------------------------
def test_the_long_poll_gives_the_websocket_s_frames_in_order(box, caplog):
    srv, base, loop = box
    cookie = login_cookie(base)
    seqs = []
    after = 0
    for _ in range(8):
        status, headers, body = _poll(base, cookie, f"after={after}&heatmap=0&stream=a1")
        assert status == 200, (status, body[:200])
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Cache-Control"] == "no-store"
        header, jpeg = _parse(body)
        assert set(OVERLAY) <= set(header), set(OVERLAY) - set(header)
        assert header["shown"]["message"] == loop.message and header["shown"]["key"]
        assert header["ellipse"] == [320, 240, 150, 110, 10]
        assert header["biometry"]["hc_mm"] == 180.0
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and [image.shape[1], image.shape[0]] == header["size"]
        assert header["seq"] > after
        seqs.append(header["seq"])
        after = header["seq"]
    assert seqs == sorted(set(seqs)), seqs
    # a seq from before a restart (higher than any of this run's) gets this run's frames
    status, _, body = _poll(base, cookie, f"after={MAX_SEQ}&stream=a1")
    assert status == 200 and _parse(body)[0]["seq"] <= srv.view.latest.seq
    # no new frame within the poll's wait: 204 after about 2 s, not a hung request
    loop.playing.clear()
    time.sleep(0.3)
    t0 = time.monotonic()
    status, headers, body = _poll(base, cookie, f"after={srv.view.latest.seq}&stream=a1")
    waited = time.monotonic() - t0
    assert status == 204 and body == b"" and 1.5 <= waited <= 4.0, (status, waited)
    assert headers["Cache-Control"] == "no-store"
    # a frame encoded seconds ago is no live image: a new poller waits for a fresh one
    assert _poll(base, cookie, "stream=late")[0] == 204
    _no_tracebacks(caplog)


def test_polls_and_the_websocket_share_one_encoder_and_one_state(box):
    """The same bytes for the same frame, whichever way it goes, and one JPEG per streamed
    frame for all of them at most max_fps a second; the state the page polls is the
    WebSocket's state message."""
    import aiohttp

    srv, base, _ = box
    cookie = login_cookie(base)
    context = ssl.create_default_context(cafile=str(tls_cert(srv.state_dir)))
    polled: dict[str, dict[int, bytes]] = {"p1": {}, "p2": {}}
    sent: dict[int, bytes] = {}
    states: list[dict] = []

    async def poller(http_, stream: str, until: float) -> None:
        after = 0
        while time.monotonic() < until:
            async with http_.get(f"{base}/api/frame", params={"after": str(after),
                                                              "stream": stream}) as res:
                if res.status == 200:
                    body = await res.read()
                    after = _parse(body)[0]["seq"]
                    polled[stream][after] = body

    async def socket(http_, until: float) -> None:
        async with http_.ws_connect(base.replace("https", "wss") + "/api/ws") as ws:
            await ws.send_json({"heatmap": False, "video": True})
            while time.monotonic() < until:
                try:
                    msg = await ws.receive(timeout=1.0)
                except TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.BINARY:
                    sent[_parse(msg.data)[0]["seq"]] = msg.data
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    states.append(json.loads(msg.data))
                else:
                    break

    async def watch() -> int:
        """Frames encoded while the three watched (the pollers linger a while after)."""
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector,
                                         headers={"Cookie": cookie}) as http_:
            until = time.monotonic() + 3.0
            await asyncio.gather(poller(http_, "p1", until), poller(http_, "p2", until),
                                 socket(http_, until))
            async with http_.get(base + "/api/metrics") as res:
                return (await res.json())["frames_encoded"]

    before = _metrics(base, cookie)["frames_encoded"]
    t0 = time.monotonic()
    encoded = asyncio.run(watch()) - before
    elapsed = time.monotonic() - t0
    shared = set(polled["p1"]) & set(polled["p2"]) & set(sent)
    assert len(shared) >= 10, (sorted(polled["p1"]), sorted(sent))
    for seq in shared:
        assert polled["p1"][seq] == polled["p2"][seq] == sent[seq], seq
    # one JPEG per frame streamed, not one per viewer; at most max_fps a second
    streamed = set(polled["p1"]) | set(polled["p2"]) | set(sent)
    assert len(streamed) <= encoded <= len(streamed) + 3, (encoded, len(streamed))
    assert encoded <= srv.settings.max_fps * elapsed + 2, (encoded, elapsed)
    polled_state = json.loads(http(base + "/api/state", cookie=cookie)[2])
    assert states, "no state message on the WebSocket"
    message = {k: v for k, v in states[-1].items() if k != "type"}
    assert set(message) == set(polled_state)
    for key in ("status", "screening"):
        assert set(message[key]) == set(polled_state[key]), key
    assert set(message["frame"]) == set(polled_state["frame"])


def test_the_long_poll_needs_a_session(box):
    _, base, _ = box
    assert _poll(base, None, "after=0")[0] == 401
    assert _poll(base, "sonoedge_session=forged", "after=0")[0] == 401
    cookie = login_cookie(base)
    assert _poll(base, cookie, "after=0")[0] == 200
    http(base + "/api/logout", {}, cookie=cookie)
    status, headers, _ = _poll(base, cookie, "after=0")
    assert status == 401 and "WWW-Authenticate" in headers


BAD_QUERIES = [
    "after=-1", "after=abc", "after=1.5", "after=1e3", "after=0x10", "after=+1", "after=%201",
    "after=", "after=" + "9" * 17, "after=" + "9" * 400, f"after={MAX_SEQ + 1}",
    "after=%D9%A3",  # an Arabic-Indic three: a digit to str.isdigit, not to us
    "after=1&after=2", "heatmap=2", "heatmap=true", "heatmap=", "heatmap=0&heatmap=1",
    "stream=" + "a" * 33, "stream=a%2Fb", "stream=%00", "stream=a&stream=b", "x=1",
    "after=1&callback=f", "after=%FF%FE"]


def test_every_query_parameter_is_checked(box, caplog):
    _, base, _ = box
    cookie = login_cookie(base)
    for query in BAD_QUERIES:
        status, _, body = _poll(base, cookie, query)
        assert status == 400, (query, status, body[:200])
        text = body.decode()
        assert "\n" not in text.strip() and len(text) < 120, (query, text)
        assert "9999999999" not in text  # the value is not echoed back
    assert _poll(base, cookie, "after=0&heatmap=1&stream=ok_-9")[0] == 200
    _no_tracebacks(caplog)


def test_a_poller_is_a_viewer_while_it_polls_and_the_caps_hold(box, monkeypatch):
    srv, base, _ = box
    monkeypatch.setattr(web_server, "POLL_LINGER_S", 1.5, raising=False)
    monkeypatch.setattr(web_server, "MAX_VIEWERS", 4)
    cookie, other = login_cookie(base), login_cookie(base)
    assert _viewers(base, cookie) == 0
    idle = _metrics(base, cookie)["frames_encoded"]
    time.sleep(0.5)
    assert _metrics(base, cookie)["frames_encoded"] == idle  # nobody watches: no JPEG
    assert _poll(base, cookie, "stream=s1")[0] == 200
    assert _viewers(base, cookie) == 1  # between two polls it still counts
    for stream in ("s2", "s3"):
        assert _poll(base, cookie, f"stream={stream}")[0] == 200
    assert _viewers(base, cookie) == 3
    status, _, body = _poll(base, cookie, "stream=s4")  # a fourth stream of one session
    assert status == 429 and b"per session" in body, (status, body)
    assert _poll(base, cookie, "stream=s2")[0] == 200  # its own streams go on
    assert _poll(base, other, "stream=s1")[0] == 200  # another session: the 4th viewer
    status, _, body = _poll(base, other, "stream=s2")
    assert status == 503 and b"viewers at once" in body, (status, body)
    # the WebSocket counts against the same caps
    assert http(base + "/api/ws", cookie=other)[0] == 503
    # stopped polling: no longer a viewer a moment later, and nothing more is encoded
    wait_for(lambda: _viewers(base, cookie) == 0, 5, "the pollers to be forgotten")
    time.sleep(0.3)
    stopped = _metrics(base, cookie)["frames_encoded"]
    time.sleep(0.5)
    assert _metrics(base, cookie)["frames_encoded"] == stopped
    assert _poll(base, cookie, "stream=s4")[0] == 200  # room again


# -- the page ----------------------------------------------------------------------------
# WebKit refusing wss:// to the box's certificate, as Chromium can play it: the socket's
# handshake fails (here: it is sent to a path the box answers 404) and it closes unopened.
REFUSE_WEBSOCKET = """(() => {
  const Real = window.WebSocket;
  window.__wsRefused = true;
  window.__wsTries = 0;
  function Refused(url, protocols) {
    window.__wsTries += 1;
    if (window.__wsRefused) url = url.replace('/api/ws', '/api/ws-refused');
    return protocols === undefined ? new Real(url) : new Real(url, protocols);
  }
  Refused.prototype = Real.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Refused[k] = Real[k];
  window.WebSocket = Refused;
})();"""
# a browser whose WebSocket constructor throws outright
THROW_WEBSOCKET = """window.WebSocket = function () { throw new DOMException('refused',
  'SecurityError'); };"""


def _frames_after(page, n: int) -> None:
    page.wait_for_function(f"window.sonoedge.frames > {n}", **POLL)


def test_the_page_falls_back_to_https_polls_and_back(box, tmp_path, monkeypatch):
    srv, base, loop = box
    monkeypatch.setattr(web_server, "POLL_LINGER_S", 1.5, raising=False)
    with chromium(tmp_path) as context:
        page = context.new_page()
        page.add_init_script(REFUSE_WEBSOCKET)
        polls = []
        page.on("request", lambda r: polls.append(r.url) if "/api/frame?" in r.url else None)
        page.goto(base + "/")
        page.wait_for_selector("#login:not([hidden])")
        page.evaluate("window.sonoedge.wsRetryMs = 1500")  # 60 s on a real page
        page.fill("#pin", PIN)
        page.click("#unlock")
        page.wait_for_selector("#app:not([hidden])")
        # live frames with their overlay and the instruction, without a WebSocket
        _frames_after(page, 10)
        assert page.evaluate("window.sonoedge.transport") == "https"
        assert page.evaluate("window.__wsTries") >= 1 and polls
        assert all(re.search(r"stream=[0-9a-f]{24}&after=\d+&heatmap=[01]$", u) for u in polls)
        header = page.evaluate("window.sonoedge.lastHeader")
        assert header["ellipse"] and header["view"]
        assert page.evaluate("[document.querySelector('#video').width, "
                             "document.querySelector('#video').height]") == header["size"]
        page.wait_for_function("document.querySelector('#instruction').className === "
                               "'instruction fix'", **POLL)
        assert page.text_content("#instruction") == loop.message
        assert page.text_content("#plane").startswith("Head (")
        assert page.is_hidden("#banner")
        # the state arrives too, about once a second, as the WebSocket's messages did
        states = page.evaluate("window.sonoedge.states")
        page.wait_for_function(f"window.sonoedge.states >= {states + 2}", **POLL)
        assert "Live" in page.text_content("#signal")
        cookie = login_cookie(base)
        assert _viewers(base, cookie) == 1
        # the WebSocket is tried again now and then (refused: still the fallback) ...
        tries = page.evaluate("window.__wsTries")
        page.wait_for_function(f"window.__wsTries >= {tries + 2}", **POLL)
        assert page.evaluate("window.sonoedge.transport") == "https"
        _frames_after(page, page.evaluate("window.sonoedge.frames") + 5)
        # ... and taken back as soon as it opens: no more polls, the poller forgotten
        page.evaluate("window.__wsRefused = false")
        page.wait_for_function("window.sonoedge.transport === 'websocket'", **POLL)
        time.sleep(0.3)
        polled = len(polls)
        _frames_after(page, page.evaluate("window.sonoedge.frames") + 10)
        assert len(polls) == polled
        wait_for(lambda: _viewers(base, cookie) == 1, 5, "one viewer: the socket")

        # a browser whose WebSocket throws gets the frames too, and a session that ends
        # while it polls shows the login, as a socket closed for it did
        second = context.new_page()
        second.add_init_script(THROW_WEBSOCKET)
        second.goto(base + "/")  # the same browser: logged in
        second.wait_for_selector("#app:not([hidden])")
        _frames_after(second, 5)
        assert second.evaluate("window.sonoedge.transport") == "https"
        second.evaluate("fetch('/api/logout', {method: 'POST'})")
        second.wait_for_selector("#login:not([hidden])", timeout=10_000)
        assert second.text_content("#login-error") == second.evaluate(
            "window.sonoedge.t('login.expired')")
        frames = second.evaluate("window.sonoedge.frames")
        time.sleep(1.0)
        assert second.evaluate("window.sonoedge.frames") == frames  # the polls stopped
