"""[web] in the device config: the midwife's page (`sonoedge run --web HOST:PORT`)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from wire.mqtt import MAX_HOST_CHARS
from wire.shown import shown

TLS_MODES = ("self-signed", "files", "off")


class WebError(ValueError):
    """One line: the page cannot be served (the address cannot be used)."""


CLOCK_MOVE_DAYS_MAX = 3650.0  # the furthest [web] clock_max_move_days may let a tap go


@dataclass(frozen=True)
class WebSettings:
    listen: str = ""  # "HOST:PORT" (IPv6 as [::1]:8080); "" = no web page
    max_fps: float = 10.0  # frames streamed per second at most, whatever the loop's rate
    stream_width: int = 640  # the streamed image's longer side, pixels
    jpeg_quality: int = 70
    session_idle_min: float = 240.0  # a session unused this long ends
    session_max_hours: float = 12.0  # and none lasts longer than this (a clinic day)
    no_signal_s: float = 2.0  # no frame for this long: the page says "no signal"
    # The box's clock this far off the phone's: the page says so, and offers to set it from
    # the phone (edge/web/clock.py). A phone's network time is seconds off; an hour moves
    # an exam near midnight to the wrong day.
    clock_off_s: float = 3600.0
    # A tap moves the clock forward at most this far: a box that boots behind is weeks or
    # months behind, a phone years ahead is the one that is wrong.
    clock_max_move_days: float = 730.0
    # The first device-wide lock on browsers the box does not know, once 30 wrong PINs have
    # come from anywhere (edge/web/auth.py `Brake`); it doubles while the attempts go on, up
    # to an hour. A minute keeps a clinic's new tablet waiting little after an attack.
    pin_lock_s: float = 60.0
    # Host names the page may be asked for besides the box's own (its hostname, with
    # ".local"), IP addresses and localhost, e.g. ["sonoedge.clinic.lan"] when the clinic's
    # DNS names the box. Any other name is answered 421: a web page elsewhere that points
    # its own name at the box (DNS rebinding) gets nothing.
    allowed_hosts: tuple[str, ...] = ()
    # The page's transport (edge/web/tls.py): "self-signed" (a certificate the box makes on
    # its first start and keeps in the state dir, so a tablet accepts it once), "files" (a
    # certificate provisioned for the box: tls_cert and tls_key, PEM) or "off" (plain HTTP:
    # loopback only, or behind a proxy that serves TLS).
    tls: str = "self-signed"
    tls_cert: str = ""  # tls = "files": the certificate (then any intermediates), PEM
    tls_key: str = ""  # tls = "files": its private key, PEM, unencrypted (mode 0600)


def parse_listen(text: str) -> tuple[str, int]:
    """ "HOST:PORT" -> (host, port); ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen {shown(text)} must be HOST:PORT, e.g. 0.0.0.0:8080")
    if len(host) > MAX_HOST_CHARS or not host.isprintable():
        raise ValueError(f"listen {shown(text)}: the host must be one name or address of at "
                         f"most {MAX_HOST_CHARS} characters")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"listen {shown(text)}: not an IPv6 address in brackets"
                             ) from None
    if not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise ValueError(f"listen {shown(text)}: the port must be 1-65535")
    return host, int(port)


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_host_name(text: str) -> str:
    """A host name for `allowed_hosts` as it will be compared (lower case, no final dot);
    ValueError with the reason. Names only: no scheme, port, path or wildcard."""
    name = text.strip().lower().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise ValueError(f"allowed_hosts: {shown(text)} is not a host name (give names such "
                         f"as sonoedge.clinic.lan, without http://, port or path)")
    return name


def check_web_settings(web: WebSettings) -> None:
    """ValueError with one line naming the key."""
    if web.listen:
        parse_listen(web.listen)
    if not 0.5 <= web.max_fps <= 30.0:
        raise ValueError("max_fps must be between 0.5 and 30")
    if not 160 <= web.stream_width <= 1920:
        raise ValueError("stream_width must be between 160 and 1920")
    if not 20 <= web.jpeg_quality <= 95:
        raise ValueError("jpeg_quality must be between 20 and 95")
    if not 1.0 <= web.session_idle_min <= 24 * 60 or not 0.1 <= web.session_max_hours <= 72:
        raise ValueError("session_idle_min must be 1-1440 and session_max_hours 0.1-72")
    if not 0.2 <= web.no_signal_s <= 60.0:
        raise ValueError("no_signal_s must be between 0.2 and 60")
    if not 60.0 <= web.clock_off_s <= 86400.0:
        raise ValueError("clock_off_s must be between 60 and 86400")
    if not 1.0 <= web.clock_max_move_days <= CLOCK_MOVE_DAYS_MAX:
        raise ValueError(f"clock_max_move_days must be between 1 and {CLOCK_MOVE_DAYS_MAX:g}")
    if not 10.0 <= web.pin_lock_s <= 3600.0:
        raise ValueError("pin_lock_s must be between 10 and 3600")
    if len(web.allowed_hosts) > 32:
        raise ValueError("allowed_hosts: at most 32 names")
    for name in web.allowed_hosts:
        check_host_name(name)
    check_tls_settings(web)


def check_tls_settings(web: WebSettings) -> None:
    """`tls`, `tls_cert` and `tls_key` (the files themselves are read at start)."""
    if web.tls not in TLS_MODES:
        raise ValueError(f'tls must be "self-signed", "files" or "off", got {shown(web.tls)}')
    for key in ("tls_cert", "tls_key"):
        value = getattr(web, key)
        if web.tls == "files" and not value:
            raise ValueError(f'{key} must name a PEM file when tls = "files"')
        if web.tls != "files" and value:
            raise ValueError(f'{key} is set but tls is {shown(web.tls)}: set tls = "files" '
                             f"to serve that certificate")
        if len(value) > 4096 or "\x00" in value:
            raise ValueError(f"{key}: not a file path")
