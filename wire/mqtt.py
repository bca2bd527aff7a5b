"""MQTT addresses shared by device and collector: URL parsing, topics, connect errors."""

from __future__ import annotations

import os
import random
import re
import socket
import ssl
import stat
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from wire.schema import PayloadError, open_regular_file, read_regular_file
from wire.shown import read_failure, shown_path
from wire.shown import shown as shown_value

TOPIC_PREFIX = "sonoedge"


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped at ``hi``,
    so that many clients (devices, collectors) do not come back together."""
    cap = min(hi, lo * (2 ** min(attempt, 20)))
    return cap / 2 + rng.uniform(0, cap / 2)


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    tls: bool
    username: str = ""
    password: str = field(default="", repr=False)

    def redacted(self) -> str:
        user = f"{self.username}:***@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def redact_url(url: str) -> str:
    """The URL with its password replaced, for logs and error messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


MAX_HOST_CHARS = 253  # the longest name DNS can resolve


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://user:pass@host:port`` or ``mqtts://...``; ValueError naming the URL if bad."""
    # Quoted on one line, cut at 200 characters: a 10 kB host is not a 10 kB error line.
    quoted = shown_value(redact_url(url), 200)
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):  # urlsplit drops them without a word
        raise ValueError(f"bad MQTT URL {quoted}: it holds a control character (a newline?)")
    if any("\ud800" <= c <= "\udfff" for c in url):  # bytes of an argument that is not UTF-8
        raise ValueError(f"bad MQTT URL {quoted}: it is not UTF-8 text")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad MQTT URL {quoted}: {exc}") from None
    if port == 0:  # `port or default` would quietly connect to 1883 instead
        raise ValueError(f"bad MQTT URL {quoted}: port must be 1-65535")
    if parts.hostname and len(parts.hostname) > MAX_HOST_CHARS:
        raise ValueError(f"bad MQTT URL {quoted}: host name longer than {MAX_HOST_CHARS} "
                         "characters")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"bad MQTT URL {quoted}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"bad MQTT URL {quoted}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"bad MQTT URL {quoted}: unexpected path or query")
    tls = parts.scheme == "mqtts"
    try:  # %-escapes may decode to bytes that are not UTF-8: paho cannot send those
        username = unquote(parts.username or "", errors="strict")
        password = unquote(parts.password or "", errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"bad MQTT URL {quoted}: its user or password is not UTF-8 "
                         "text") from None
    return MqttTarget(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
                      username=username, password=password)


URL_PASSWORD_WARNING = ("the MQTT password in the URL is visible to every user of this "
                        "machine (ps, /proc); put it in a password file instead")


def url_has_password(url: str) -> bool:
    try:
        return bool(parse_mqtt_url(url).password)
    except ValueError:
        return False


def read_secret_file(path: str | os.PathLike) -> str:
    """A password from a file that only its owner may read (mode 0600 or 0400): the first
    line, without its line end. ValueError names the file (cut and escaped: the path is the
    config's, as hostile as the rest of it) and what is wrong with it; a FIFO is refused,
    not waited on."""
    where = f"password file {shown_path(path)}"
    try:
        data, st = read_regular_file(path, 4096)
    except PayloadError as exc:  # a folder, a FIFO, a device; more than a password
        raise ValueError(f"{where}: {exc}") from None
    except (OSError, ValueError) as exc:  # missing, not readable, a NUL in the name
        raise ValueError(f"{where}: {read_failure(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not UTF-8 text") from None
    if st.st_mode & 0o077:
        raise ValueError(f"{where}: readable by other users (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    password = text.splitlines()[0] if text.splitlines() else ""
    if not password:
        raise ValueError(f"{where}: empty")
    return password


def check_tls_file(path: str | os.PathLike, name: str) -> None:
    """A TLS certificate, key or CA file given by `name` (a flag or a config key) is a
    regular file that can be read: a FIFO made paho's tls_set wait for ever at start, and
    a folder or a missing file failed every connection with a reason naming no file.
    ValueError: one line naming `name` and the path."""
    try:
        open_regular_file(path).close()
    except (OSError, ValueError) as exc:  # PayloadError is one: a folder, a FIFO
        reason = "no such file" if isinstance(exc, FileNotFoundError) else read_failure(exc)
        raise ValueError(f"{name}: {shown_path(path)}: {reason}") from None


def topic_for(device_id: str, kind: str) -> str:
    return f"{TOPIC_PREFIX}/{device_id}/{kind}"


def describe_connect_error(exc: BaseException, target: MqttTarget) -> str:
    where = f"{target.host}:{target.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS failed with {where}: certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed with {where}: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"broker {where} unreachable: connection refused"
    if isinstance(exc, socket.gaierror):
        return f"broker host {target.host!r} cannot be resolved: {exc.strerror}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"broker {where} did not answer in time"
    return f"broker {where} unreachable: {exc}"


