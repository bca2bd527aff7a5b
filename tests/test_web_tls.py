"""The midwife's page over TLS (`[web] tls`, edge/web/tls.py): real servers, real
handshakes, clients that trust the page's own certificate and nothing else.

The page was plain HTTP: the PIN and the session cookie crossed the clinic's Wi-Fi in
clear. Now it is https:// by default, with a certificate the box makes once and keeps (the
tablet accepts it once), or one provisioned for it; the connection caps, timeouts, host and
origin checks and log limits hold over TLS as they did over HTTP.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import re
import select
import socket
import ssl
import stat
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.config import ConfigError, load_settings
from edge.web import server as web_server
from edge.web.auth import read_pin, write_pin
from edge.web.live import LiveView
from edge.web.server import WebServer
from edge.web.settings import WebSettings
from tests.cli_run import one_line_error, sonoedge
from tests.http_raw import raw_http
from tests.servers import free_port
from tests.web_harness import PIN, chromium, set_pin

UTC = dt.UTC


# -- helpers --------------------------------------------------------------------------------
@pytest.fixture
def page(tmp_path, caplog):
    """Start `WebServer`s on free loopback ports over `tmp_path/state`; stopped at the end."""
    caplog.set_level(logging.INFO)
    state = tmp_path / "state"
    write_pin(state, PIN)
    started = []

    def start(**settings) -> WebServer:
        settings.setdefault("listen", f"127.0.0.1:{free_port()}")
        srv = WebServer(WebSettings(**settings), LiveView(), state, read_pin(state))
        srv.start()
        started.append(srv)
        return srv

    start.state = state
    yield start
    for srv in started:
        srv.stop()


def _trusting(cert: Path | bytes) -> ssl.SSLContext:
    """A client that trusts this certificate (the page's own, or a CA's) and no other."""
    if isinstance(cert, bytes):
        return ssl.create_default_context(cadata=cert.decode())
    return ssl.create_default_context(cafile=str(cert))


def _kept(state: Path) -> Path:
    return state / "web-tls" / "cert.pem"


def _request(url: str, context: ssl.SSLContext, data: dict | None = None,
             headers: dict | None = None) -> tuple[int, object, bytes]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as res:
            return res.status, res.headers, res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _served(port: int, host: str = "127.0.0.1") -> x509.Certificate:
    """The certificate the page presents (read without trusting it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName),
            *map(str, san.get_values_for_type(x509.IPAddress))}


def _fingerprint(cert: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(
        cert.public_bytes(serialization.Encoding.DER)).digest())


def _lines(caplog, needle: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if needle in r.getMessage()]


def _no_tracebacks(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info], caplog.text[-3000:]
    assert "Traceback" not in caplog.text


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` (EOF or reset) within `seconds`."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def _raw(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """What the page answers to `data` sent as it is (b"" when it just closes)."""
    try:
        return raw_http(port, data, source, timeout_s=5)
    except ConnectionResetError:
        return b""


def _settled(srv: WebServer, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while srv.gate.count and time.monotonic() < deadline:
        time.sleep(0.05)
    return srv.gate.count == 0 and not srv.gate.open


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _issue(subject_cn: str, key, issuer_key=None, issuer: x509.Certificate | None = None,
           names: tuple[str, ...] = ("localhost",), ca: bool = False,
           days: tuple[float, float] = (-1, 365)) -> x509.Certificate:
    """A certificate as a clinic CA (or the CA itself) would issue it."""
    now = dt.datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n)
            for n in names]
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + dt.timedelta(days=days[0]))
               .not_valid_after(now + dt.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


# -- the page over https ---------------------------------------------------------------------
def test_the_pin_logs_in_over_https_and_the_cookies_are_secure(page, caplog):
    srv = page()
    cert = _kept(page.state)
    assert cert.is_file()
    client = _trusting(cert)  # the tablet, once the midwife has accepted the certificate
    base = f"https://127.0.0.1:{srv.port}"
    status, headers, body = _request(base + "/", client)
    assert status == 200 and b"/static/app.js" in body
    assert "Strict-Transport-Security" not in headers  # no HSTS with a self-signed cert
    status, headers, _ = _request(base + "/api/login", client, {"pin": PIN})
    assert status == 200
    cookies = headers.get_all("Set-Cookie")
    assert {c.split("=", 1)[0] for c in cookies} == {"sonoedge_session", "sonoedge_known"}
    for cookie in cookies:
        assert "; Secure" in cookie and "HttpOnly" in cookie, cookie
    session = next(c for c in cookies if c.startswith("sonoedge_session")).split(";")[0]
    assert _request(base + "/api/state", client, headers={"Cookie": session})[0] == 200
    # by name too: localhost is in the certificate
    assert _request(f"https://localhost:{srv.port}/", client)[0] == 200
    # the host check holds over TLS: a rebinding page's name is 421
    status, _, _ = _request(base + "/", client, headers={"Host": "rebind.attacker.example"})
    assert status == 421
    # the start-up line gives the https address and the fingerprint the browser shows
    started = _lines(caplog, "the midwife's page is at")
    assert len(started) == 1
    line = started[0].getMessage()
    assert f"https://127.0.0.1:{srv.port}/" in line
    assert _fingerprint(_served(srv.port)) in line


def test_a_plain_http_address_is_sent_to_https_and_nothing_else_is_served_in_clear(
        page, caplog):
    """A bookmark or an address typed without https:// (the same port) gets a redirect to
    the same path over https://, for a Host that names this box; nothing else is served
    in clear: no page, no cookie, no login."""
    srv = page()
    base = f"127.0.0.1:{srv.port}"

    def plain(data: bytes) -> tuple[bytes, dict, bytes]:
        answer = _raw(srv.port, data)
        head, _, body = answer.partition(b"\r\n\r\n")
        status, *fields = head.split(b"\r\n")
        return status, dict(f.split(b": ", 1) for f in fields), body

    status, headers, body = plain(f"GET /report/12?lang=fr HTTP/1.1\r\nHost: {base}\r\n"
                                  f"\r\n".encode())
    assert status == b"HTTP/1.1 302 Found"
    assert headers[b"Location"] == f"https://{base}/report/12?lang=fr".encode()
    assert headers[b"Cache-Control"] == b"no-store"  # tls = "off" can serve http:// again
    assert b"Set-Cookie" not in headers and b"app.js" not in body
    # a PIN sent in clear opens no session and is not checked
    status, headers, body = plain(f"POST /api/login HTTP/1.1\r\nHost: {base}\r\n"
                                  f"Content-Length: 14\r\n\r\n{{\"pin\": \"{PIN}\"}}".encode())
    assert status == b"HTTP/1.1 302 Found" and b"Set-Cookie" not in headers
    # a path with characters a Location must not carry goes to the page's root
    status, headers, body = plain(f"HEAD /<script>\"x\" HTTP/1.1\r\nHost: localhost:"
                                  f"{srv.port}\r\n\r\n".encode())
    assert headers[b"Location"] == f"https://localhost:{srv.port}/".encode() and body == b""
    # hostile heads: another site's name (DNS rebinding), no Host, non-UTF-8, too long
    for head in (f"GET / HTTP/1.1\r\nHost: rebind.attacker.example:{srv.port}\r\n\r\n",
                 "GET / HTTP/1.0\r\n\r\n"):
        status, headers, _ = plain(head.encode())
        assert status == b"HTTP/1.1 400 Bad Request" and b"Location" not in headers
    status, headers, _ = plain(b"GET / HTTP/1.1\r\nHost: \xfe\xff\r\n\r\n")
    assert status == b"HTTP/1.1 400 Bad Request"
    assert _raw(srv.port, b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n") == b""  # not HTTP/1.x
    t0 = time.monotonic()
    status, _, _ = plain(b"GET / HTTP/1.1\r\nHost: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status == b"HTTP/1.1 400 Bad Request" and time.monotonic() - t0 < 2.0
    assert _settled(srv)
    srv.stop()
    said = _lines(caplog, "asked for the page over plain http://")
    assert said and "sent it to 'https://" in said[0].getMessage()
    assert [r.getMessage() for r in _lines(caplog, "TLS handshake with")] == [
        "web: TLS handshake with 127.0.0.1 failed: neither TLS nor HTTP/1.x"]
    _no_tracebacks(caplog)


def test_a_client_still_sending_an_over_long_plain_head_gets_its_answer_not_a_reset(page):
    """The page answers a plain head once it has PLAIN_HEAD_MAX bytes of it; a client still
    sending the rest (a browser with a cookie jar gone wild) must still read that answer.
    Closed at once with bytes unread, the kernel resets the connection and the client's
    send fails with the answer lost (what made the test above flaky in CI, where the
    100 kB head was sometimes still being sent)."""
    srv = page()
    head = b"GET / HTTP/1.1\r\nHost: " + b"a" * 900_000 + b"\r\n\r\n"
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as conn:
            conn.sendall(head)
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert _settled(srv)


def test_a_browser_that_opens_the_http_address_lands_on_the_https_login(page, tmp_path):
    srv = page()
    with chromium(tmp_path) as browser:
        tab = browser.new_page()
        tab.goto(f"http://127.0.0.1:{srv.port}/")
        tab.wait_for_selector("#login:not([hidden])")
        assert tab.url == f"https://127.0.0.1:{srv.port}/"


def test_the_certificate_is_made_once_and_kept_across_restarts(page, caplog):
    first = page(allowed_hosts=("sonoedge.clinic.test",))
    cert = _served(first.port)
    # kept where web-pin.json is: the key readable by the service alone
    folder = page.state / "web-tls"
    assert stat.S_IMODE(os.stat(folder / "key.pem").st_mode) == 0o600
    assert x509.load_pem_x509_certificate(_kept(page.state).read_bytes()) == cert
    assert not list(folder.glob(".*.tmp"))
    # ECDSA P-256, SHA-256, for the box's names, valid within Apple's 825 days
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.signature_hash_algorithm.name == "sha256"
    hostname = socket.gethostname().lower()
    first_label = hostname.split(".")[0]
    names = _names(cert)
    assert {"localhost", "127.0.0.1", "::1", hostname, f"{first_label}.local",
            "sonoedge.clinic.test"} <= names, names
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 700 <= days <= 825, days
    ext = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in ext
    first.stop()
    # the next start serves the same certificate: the tablet is not asked again
    again = page(allowed_hosts=("sonoedge.clinic.test",))
    assert _fingerprint(_served(again.port)) == _fingerprint(cert)
    assert len(_lines(caplog, "made a TLS certificate")) == 1
    again.stop()
    # a name the certificate does not hold: a new one, naming it
    third = page(allowed_hosts=("sonoedge.clinic.test", "scan-room.clinic.test"))
    renamed = _served(third.port)
    assert _fingerprint(renamed) != _fingerprint(cert)
    assert "scan-room.clinic.test" in _names(renamed)
    said = _lines(caplog, "cannot be served again")
    assert len(said) == 1 and "scan-room.clinic.test" in said[0].getMessage()
    assert _request(f"https://127.0.0.1:{third.port}/", _trusting(_kept(page.state)))[0] == 200


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_key", "expired",
                                    "oversized"])
def test_a_damaged_or_expired_certificate_is_made_again(page, caplog, damage):
    srv = page()
    before = _fingerprint(_served(srv.port))
    srv.stop()
    folder = page.state / "web-tls"
    cert, key = folder / "cert.pem", folder / "key.pem"
    if damage == "garbage":
        cert.write_bytes(os.urandom(700))
    elif damage == "truncated":  # as a write cut short would leave it, had it not been atomic
        key.write_bytes(key.read_bytes()[:60])
    elif damage == "other_key":
        key.write_bytes(_key_pem(_key()))
    elif damage == "oversized":
        cert.write_bytes(cert.read_bytes() + b"#" * (70 * 1024))
    else:  # ended a while back
        old_key = _key()
        cert.write_bytes(_pem(_issue("sonoedge", old_key, names=("localhost", "127.0.0.1"),
                                     days=(-900, -80))))
        key.write_bytes(_key_pem(old_key))
    caplog.clear()
    again = page()
    after = _served(again.port)
    assert _fingerprint(after) != before
    assert _request(f"https://127.0.0.1:{again.port}/", _trusting(cert))[0] == 200
    named = {"garbage": "cert.pem", "truncated": "key.pem", "other_key": "key.pem",
             "oversized": "cert.pem", "expired": "expired on"}[damage]
    said = [r for r in caplog.records
            if r.name == "edge.web.tls" and "made a TLS" not in r.getMessage()]
    assert len(said) == 1 and named in said[0].getMessage(), [r.getMessage() for r in said]
    _no_tracebacks(caplog)


def test_a_state_dir_that_cannot_take_the_certificate_still_serves(page, caplog):
    """A full or read-only state dir: the page is served with a certificate made for this
    run, and says so once. (The tests run as root, where no mode refuses a write: the
    folder's name is taken by a file instead.)"""
    (page.state / "web-tls").write_text("not a folder")
    srv = page()
    cert = _served(srv.port)
    status, _, body = _request(f"https://127.0.0.1:{srv.port}/", _trusting(_pem(cert)))
    assert status == 200 and b"app.js" in body
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "this run only" in warned[0].getMessage(), \
        [r.getMessage() for r in warned]
    assert _fingerprint(cert) in _lines(caplog, "the midwife's page is at")[0].getMessage()
    _no_tracebacks(caplog)


def test_a_certificate_near_its_end_is_renewed_while_the_page_runs(page, caplog):
    srv = page()
    old = srv.tls.served
    assert not srv.tls.renew_if_due()  # years to go
    assert srv.tls.renew_if_due(now=old.not_after - dt.timedelta(days=10))
    served = _fingerprint(_served(srv.port))  # a new connection gets the new one
    assert served != old.fingerprint and served == srv.tls.served.fingerprint
    kept = x509.load_pem_x509_certificate(_kept(page.state).read_bytes())
    assert _fingerprint(kept) == served
    assert len(_lines(caplog, "was renewed")) == 1


# -- a provisioned certificate (tls = "files") -----------------------------------------------
@pytest.fixture
def clinic_ca():
    key = _key()
    return key, _issue("Clinic CA", key, ca=True, days=(-1, 3650))


def test_a_provisioned_certificate_from_a_clinic_ca_is_served(page, tmp_path, clinic_ca, caplog):
    ca_key, ca = clinic_ca
    key = _key()
    leaf = _issue("sonoedge", key, ca_key, ca, names=("localhost", "127.0.0.1"))
    cert_path, key_path = tmp_path / "box.crt", tmp_path / "box.key"
    cert_path.write_bytes(_pem(leaf) + _pem(ca))  # the certificate, then its chain
    key_path.write_bytes(_key_pem(key))
    key_path.chmod(0o600)
    srv = page(tls="files", tls_cert=str(cert_path), tls_key=str(key_path))
    tablet = _trusting(_pem(ca))  # trusts the clinic's CA, not the box's certificate
    assert _request(f"https://127.0.0.1:{srv.port}/", tablet)[0] == 200
    assert _fingerprint(_served(srv.port)) == _fingerprint(leaf)
    assert _fingerprint(leaf) in _lines(caplog, "the midwife's page is at")[0].getMessage()
    assert not (page.state / "web-tls").exists()  # nothing made
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _device_config(tmp_path: Path, web: str) -> Path:
    state = tmp_path / "state"
    write_pin(state, PIN)
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[device]\nstate_dir = "{state}"\n\n[web]\n'
                   f'listen = "127.0.0.1:{free_port()}"\n{web}\n')
    return cfg


def test_a_provisioned_pair_that_cannot_be_served_is_one_line_and_exit_2(tmp_path,
                                                                         clinic_ca):
    """`sonoedge run` as the service runs it: each bad pair is one line naming the file,
    before the page listens; never a traceback, never a page on a certificate that is not
    the clinic's."""
    ca_key, ca = clinic_ca
    key = _key()
    good = _issue("sonoedge", key, ca_key, ca)
    files = {
        "garbage.pem": b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n"
                       b"-----END CERTIFICATE-----\n",
        "good.pem": _pem(good),
        "expired.pem": _pem(_issue("sonoedge", key, ca_key, ca, days=(-400, -5))),
        "huge.pem": _pem(good) + b"\n" * (65 * 1024),
        "box.key": _key_pem(key),
        "other.key": _key_pem(_key()),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cases = [("garbage.pem", "box.key", ("tls_cert", "garbage.pem", "not a PEM certificate")),
             # one file for both keys: the line still names the key whose part is bad
             ("garbage.pem", "garbage.pem", ("tls_cert", "garbage.pem", "not a PEM cert")),
             ("good.pem", "other.key", ("tls_key", "other.key", "not the key of")),
             ("huge.pem", "box.key", ("tls_cert", "huge.pem", "too large")),
             ("expired.pem", "box.key", ("tls_cert", "expired.pem", "expired on")),
             ("good.pem", "missing.key", ("tls_key", "missing.key", "no such file"))]
    for cert, key_file, needles in cases:
        cfg = _device_config(tmp_path, f'tls = "files"\ntls_cert = "{cert}"\n'
                                       f'tls_key = "{key_file}"')  # beside the config
        done = sonoedge("run", "--config", str(cfg), "--once", timeout=60)
        assert done.returncode == 2, (cert, key_file, done.stderr)
        one_line_error(done, *needles)
    bad = sonoedge("run", "--config", str(_device_config(tmp_path, 'tls = "on"')), "--once",
                   timeout=60)
    assert bad.returncode == 2
    one_line_error(bad, "web: tls must be")


@pytest.mark.parametrize("web, needle", [
    ('tls = "files"', "tls_cert must name a PEM file"),
    ('tls = "files"\ntls_cert = "a.pem"', "tls_key must name a PEM file"),
    ('tls_cert = "a.pem"\ntls_key = "a.key"', 'tls_cert is set but tls is'),
    ('tls = "OFF"', "tls must be"),
    ("tls = true", "web.tls: expected str"),
])
def test_tls_keys_are_checked_with_one_line_naming_the_key(tmp_path, web, needle):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'[web]\nlisten = "127.0.0.1:8443"\n{web}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


# -- protections over TLS --------------------------------------------------------------------
def test_a_half_open_handshake_is_held_at_the_gate_and_dropped_in_time(page, caplog,
                                                                       monkeypatch):
    """A client that opens connections and never finishes a handshake: each is counted by
    the connection gate (so one address holds at most its 32) and closed after the
    handshake timeout; a client that finishes the handshake and then stalls is cut off
    by the request timeout; and meanwhile the page answers."""
    assert web_server.HANDSHAKE_TIMEOUT_S <= 10.0
    monkeypatch.setattr(web_server, "HANDSHAKE_TIMEOUT_S", 1.5)
    monkeypatch.setattr(web_server, "IDLE_TIMEOUT_S", 1.5)
    srv = page()
    client = _trusting(_kept(page.state))
    cap = web_server.MAX_CONNECTIONS_PER_ADDRESS
    half_open = []
    t0 = time.monotonic()
    for i in range(cap + 8):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5,
                                        source_address=("127.0.0.7", 0))
        if i % 2:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes, no more
        half_open.append(sock)
    deadline = time.monotonic() + 5
    while (srv.gate.open.get("127.0.0.7", 0) < cap or srv.gate.refused < 8) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.gate.open.get("127.0.0.7") == cap  # counted before any handshake
    assert srv.gate.refused == 8
    time.sleep(0.1)
    refused = select.select(half_open, [], [], 0)[0]  # closed: readable, at EOF
    assert len(refused) == 8 and all(_closed_within(s, 0.1) for s in refused)
    # the page, from another address, while they wait
    assert _request(f"https://127.0.0.1:{srv.port}/i18n/en.json", client)[0] == 200
    # a handshake done, then half a request: the request timeout holds over TLS
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw, \
            client.wrap_socket(raw, server_hostname="127.0.0.1") as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Never: ends")
        assert _closed_within(slow, 4.0)
    for sock in half_open:
        if sock not in refused:
            assert _closed_within(sock, max(0.1, t0 + 4.0 - time.monotonic()))
    assert time.monotonic() - t0 < 6.0
    assert _settled(srv)
    for sock in half_open:
        sock.close()
    srv.stop()
    timeouts = [r for r in caplog.records if "no handshake within" in r.getMessage()]
    assert 1 <= len(timeouts) <= 5  # 32 of them: a few lines, then a count
    assert any("more failed TLS handshakes" in r.getMessage() for r in caplog.records)
    _no_tracebacks(caplog)


def test_a_scanner_s_garbage_is_a_few_lines_and_no_traceback(page, caplog):
    srv = page()
    junk = [os.urandom(300), b"\x16\x03\x01\x00\x20" + os.urandom(32),
            b"\x16\x03\x03\xff\xff" + b"A" * 200, b"SSH-2.0-OpenSSH_9.6\r\n",
            b"GET / HTTP/1.0\r\n\r\n", b"\x80\x2e\x01\x00\x02" + os.urandom(43)]  # SSLv2
    for i in range(30):
        answer = _raw(srv.port, junk[i % len(junk)], f"127.0.6.{1 + i % 5}")
        if junk[i % len(junk)].startswith(b"GET"):  # a plain request with no Host of the box
            assert answer.startswith(b"HTTP/1.1 400 ") and b"app.js" not in answer
        else:
            assert b"HTTP/" not in answer
    client = _trusting(_kept(page.state))
    assert _request(f"https://127.0.0.1:{srv.port}/", client)[0] == 200  # still serving
    assert _settled(srv)
    srv.stop()  # the summary of what was not said one by one
    said = _lines(caplog, "TLS handshake with")
    assert 1 <= len(said) <= 5, [r.getMessage() for r in said]
    for record in said:
        assert "\n" not in record.getMessage() and len(record.getMessage()) < 300
    assert len(_lines(caplog, "more failed TLS handshakes")) == 1
    _no_tracebacks(caplog)


def test_the_stream_runs_over_wss_and_other_origins_are_refused(page):
    import aiohttp

    srv = page()
    client = _trusting(_kept(page.state))
    base = f"https://127.0.0.1:{srv.port}"
    status, headers, _ = _request(base + "/api/login", client, {"pin": PIN})
    session = re.search(r"sonoedge_session=([^;]+)", headers["Set-Cookie"]).group(0)
    view = srv.view
    view.phase = "running"
    playing = threading.Event()
    playing.set()

    def loop():  # the device loop's side: a frame every 50 ms
        image = np.full((240, 320, 3), 90, np.uint8)
        n = 0
        while playing.is_set():
            n += 1
            view.publish(image, {"frame": n, "ts": time.time(), "plane": "Other"}, None,
                         None, time.monotonic())
            time.sleep(0.05)

    frames = threading.Thread(target=loop, daemon=True)
    frames.start()

    async def watch(origin: str) -> tuple[int, int, int]:
        """(handshake status, binary frames, state messages) within 3 s."""
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(base.replace("https", "wss") + "/api/ws",
                                           ssl=client, headers={"Origin": origin,
                                                                "Cookie": session})
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status, 0, 0
            binary = text = 0
            deadline = time.monotonic() + 3.0
            async with ws:
                await ws.send_json({"heatmap": False, "video": True})
                while time.monotonic() < deadline and not (binary >= 3 and text >= 1):
                    try:
                        msg = await ws.receive(timeout=1.0)
                    except TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        size = int.from_bytes(msg.data[:4], "little")
                        header = json.loads(msg.data[4:4 + size])
                        assert msg.data[4 + size:6 + size] == b"\xff\xd8"  # a JPEG
                        assert header["frame"] >= 1
                        binary += 1
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        assert json.loads(msg.data)["type"] == "state"
                        text += 1
                    else:
                        break
            return 101, binary, text

    try:
        status, binary, text = asyncio.run(watch(base))
        assert status == 101 and binary >= 3 and text >= 1, (status, binary, text)
        # the page's own origin is https://host:port: http:// or another host is refused
        for origin in (f"http://127.0.0.1:{srv.port}", "https://attacker.example",
                       "null"):
            assert asyncio.run(watch(origin))[0] == 403, origin
            status, _, _ = _request(base + "/api/exam", client, {"action": "stop"},
                                    headers={"Origin": origin, "Cookie": session})
            assert status == 403, origin
    finally:
        playing.clear()
        frames.join(5)


def test_tls_off_is_plain_http_and_warns_once_beyond_loopback(page, caplog):
    srv = page(tls="off")
    status, headers, _ = _request(f"http://127.0.0.1:{srv.port}/api/login", None,
                                  {"pin": PIN})
    assert status == 200
    assert all("Secure" not in c for c in headers.get_all("Set-Cookie"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not (page.state / "web-tls").exists()
    srv.stop()
    wide = page(tls="off", listen=f"0.0.0.0:{free_port()}")
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and 'tls = "off"' in warned[0].getMessage()
    assert f"http://0.0.0.0:{wide.port}/" in _lines(caplog, "page is at")[-1].getMessage()


def test_pin_set_shows_the_certificate_s_fingerprint(page):
    srv = page()
    fingerprint = _fingerprint(_served(srv.port))
    done = set_pin(page.state, "2468")
    assert done.returncode == 0, done.stderr
    assert f"SHA-256 {fingerprint}" in done.stdout, done.stdout


def test_one_pem_holding_the_certificate_and_its_key_serves_for_both_keys(tmp_path):
    """A combined PEM (certificate, then key) is a common way to provision a pair."""
    from edge.web.tls import make_self_signed, read_pair

    made = make_self_signed(["sonoedge"], [])
    both = tmp_path / "box.pem"
    both.write_bytes(made.cert_pem + made.key_pem)
    assert read_pair(both, both)[0].fingerprint == made.fingerprint
