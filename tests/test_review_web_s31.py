"""What a fuzzing pass of the midwife's page found answering 500, each with the traceback
it logged: now a short 4xx and at most one log line."""

from __future__ import annotations

import logging

import pytest

from tests.http_raw import raw_http
from tests.web_harness import page_alone


def _ask(port: int, data: bytes) -> bytes:
    return raw_http(port, data)


@pytest.mark.parametrize("name", ["a" * 256, "%61" * 300, "d/" * 2100 + "x",
                                  ("e" * 200 + "/") * 30])
def test_a_static_name_too_long_for_the_file_system_is_not_found(tmp_path, caplog, name):
    """aiohttp's static handler let the file system's "File name too long" out: a 500 and
    a traceback, for anyone, logged in or not."""
    caplog.set_level(logging.INFO)
    with page_alone(tmp_path) as srv:
        out = _ask(srv.port, f"GET /static/{name} HTTP/1.1\r\nHost: x\r\nConnection: "
                             "close\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 404"), out[:100]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.parametrize(("head", "path"), [
    (b"POST", b"/api/login"), (b"GET", b"/"), (b"POST", b"/api/exam")])
def test_a_body_with_a_false_content_encoding_is_415_and_one_line(tmp_path, caplog, head,
                                                                  path):
    """No page sends a compressed body. aiohttp failed decoding a false one: a 500 on the
    login, and on any route a traceback logged while it drained the body after the
    answer. It is refused at once, and the drain's failure is one line."""
    caplog.set_level(logging.INFO)
    with page_alone(tmp_path) as srv:
        out = _ask(srv.port, head + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: "
                   b"close\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                   b"Content-Length: 4\r\n\r\nabcd")
    assert out.startswith(b"HTTP/1.1 415"), out[:100]
    assert b"without Content-Encoding" in out
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_the_dashboard_refuses_a_false_content_encoding_on_its_login(tmp_path, caplog):
    """The same fault on the district's dashboard: a login form whose body claims gzip and
    is not was a 500 and a traceback, for anyone."""
    from central.dashboard.seed import SeedSettings, seed
    from central.dashboard.server import Dashboard, ServeSettings
    from tests.dashboard_harness import dashboard_in_thread

    db_path = str(tmp_path / "c.sqlite3")
    seed(db_path, SeedSettings(clinics=1, districts=1, days=2))
    caplog.set_level(logging.INFO)
    with dashboard_in_thread(Dashboard(ServeSettings(db_url=db_path))) as port:
        out = raw_http(port, b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\nContent-Encoding: "
                       b"gzip\r\nContent-Length: 8\r\n\r\nnot gzip")
    assert out.startswith(b"HTTP/1.1 415"), out[:100]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
