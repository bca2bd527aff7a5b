"""Review of the midwife's page (session 30), against the page's real server
(edge/web/server.py, no models), in plain HTTP."""

from __future__ import annotations

import socket
import time

import pytest

from edge.web import server as web_server
from tests.http_raw import raw_http
from tests.web_harness import PIN, page_alone


@pytest.fixture
def page(tmp_path, monkeypatch):
    monkeypatch.setattr(web_server, "BODY_TIMEOUT_S", 3.0)
    with page_alone(tmp_path) as srv:
        yield srv


def _login(srv, source: str) -> int:
    body = b'{"pin": "%s"}' % PIN.encode()
    head = (b"POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    answer = raw_http(srv.port, head + body, source)
    return int(answer.split(b" ", 2)[1])


def test_logins_whose_pin_never_arrives_do_not_lock_the_device_out(page):
    """Each login was charged as a wrong PIN before its body was read, so 31 requests from
    31 addresses that announce a body and never send it filled the device-wide bucket and
    locked every new browser out for a minute, without a single PIN tried. An attempt is
    charged once its PIN has arrived (its slot still taken before the slow hash, so a race
    from one address is verified once)."""
    held = []
    try:
        for i in range(1, 33):
            conn = socket.create_connection(("127.0.0.1", page.port), timeout=5,
                                            source_address=(f"127.0.2.{i}", 0))
            conn.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 20\r\n\r\n")
            held.append(conn)
        time.sleep(0.5)  # every header read; every body still awaited
        assert _login(page, "127.0.3.1") == 200  # a new phone, the right PIN
    finally:
        for conn in held:
            conn.close()
    assert page.brake.locks == 0
