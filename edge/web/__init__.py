"""The midwife's screen: a local web page served beside the device loop (`[web]`)."""

from __future__ import annotations

from pathlib import Path

from edge.web.auth import read_pin
from edge.web.live import LiveView, LoopHook
from edge.web.settings import WebSettings


def start_web(settings: WebSettings, state_dir: Path, end_gap_s: float,
              protocols_file: str = "") -> LoopHook:
    """Check the PIN, start the server, return the loop's hook. Raises one-line
    errors (`PinError`, `WebError`) for a missing PIN, an address that cannot be used or
    a provisioned TLS certificate that cannot be served (`[web] tls = "files"`)."""
    from edge.web.server import WebServer  # aiohttp only when the page is on

    pin = read_pin(Path(state_dir))
    view = LiveView()
    server = WebServer(settings, view, Path(state_dir), pin,
                       protocols_file=protocols_file)
    server.start()
    return LoopHook(view, end_gap_s, server)
