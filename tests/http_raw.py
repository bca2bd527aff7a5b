"""Raw HTTP for the hostile-request tests of the midwife's page and the district
dashboard: bytes sent as they are, whatever a client library would refuse to send."""

from __future__ import annotations

import logging
import socket


def raw_http(port: int, data: bytes, source: str = "127.0.0.1", timeout_s: float = 4.0,
             head_only: bool = False) -> bytes:
    """Send `data` as it is; everything the server answers until it closes (or only until
    the status line and headers are in)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s,
                                  source_address=(source, 0)) as conn:
        conn.sendall(data)
        out = b""
        while not (head_only and b"\r\n\r\n" in out) and (chunk := conn.recv(65536)):
            out += chunk
        return out


def assert_malformed_requests_are_one_log_line_each(port: int, post_path: str,
                                                    caplog) -> None:
    """Three requests aiohttp cannot parse: each answered 400, and each one WARNING line in
    the log with no traceback (wire/http_log.py)."""
    caplog.set_level(logging.INFO)
    for bad in (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                f"POST {post_path} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".encode()):
        answer = raw_http(port, bad)
        assert answer.startswith(b"HTTP/1.0 400 ")
        head, _, body = answer.partition(b"\r\n\r\n")  # the body: one line, not three
        # nor does the head name the server's software and version, to a scanner's probe
        assert b"aiohttp" not in head.lower() and b"python" not in head.lower(), head
        assert body and b"\n" not in body and len(body) <= 120 and b"aaaa" not in body, body
    said = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(said) == 3
    for record in said:
        assert record.exc_info is None and record.levelno == logging.WARNING
        assert "\n" not in record.getMessage() and len(record.getMessage()) < 300
