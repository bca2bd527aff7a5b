"""WebKit, the engine of every browser on an iPad or iPhone, driving the midwife's page.

Debian's WebKitGTK (the `webkit2gtk-driver` package: WebKitWebDriver and its MiniBrowser)
on a virtual screen (Xvfb), spoken to over W3C WebDriver. The client is these few lines
of plain HTTP: Selenium, the usual library for it, needs a typing_extensions the
toolchain's xdsl refuses. Apple's Safari cannot run here; WebKitGTK shares its engine
(layout, JavaScript, WebSocket, TLS handling in WebKit itself), not its network stack.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port, wait_port

# in the machine's multiarch folder (x86_64-linux-gnu, aarch64-linux-gnu)
MINIBROWSER = next(iter(sorted(Path("/usr/lib").glob("*/webkit2gtk-4.1/MiniBrowser"))),
                   Path("/usr/lib/webkit2gtk-4.1/MiniBrowser"))
STEP_S = 0.2


class WebKitError(AssertionError):
    pass


class WebKitPage:
    """One WebDriver session: a MiniBrowser window on the virtual screen."""

    def __init__(self, port: int, shots: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.shots = shots
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "MiniBrowser", "acceptInsecureCerts": True,  # the box's own cert
            "webkitgtk:browserOptions": {"binary": str(MINIBROWSER), "args": ["--automation"]},
        }}}
        value = self._call("POST", "/session", caps)
        self.session = f"/session/{value['sessionId']}"
        self.version = value["capabilities"].get("browserVersion", "?")

    def _call(self, method: str, path: str, body: dict | None = None, timeout_s: float = 60):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as res:
                return json.loads(res.read())["value"]
        except urllib.error.HTTPError as exc:
            raise WebKitError(f"WebDriver {method} {path}: {exc.read()[:500]!r}") from None

    def get(self, url: str) -> None:
        self._call("POST", self.session + "/url", {"url": url})

    def js(self, script: str, *args):
        """The value of `script` (a function body: `return ...`) run in the page."""
        return self._call("POST", self.session + "/execute/sync",
                          {"script": script, "args": list(args)})

    def wait(self, expression: str, timeout_s: float = 60) -> object:
        """Until the page's `expression` is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.js(f"return ({expression});")
            if value:
                return value
            time.sleep(STEP_S)
        shot = self.screenshot("timeout")
        raise WebKitError(f"WebKit: after {timeout_s:g} s still false: {expression} "
                          f"(screen: {shot})")

    def _element(self, css: str) -> str:
        found = self._call("POST", self.session + "/element",
                           {"using": "css selector", "value": css})
        return next(iter(found.values()))

    def click(self, css: str) -> None:
        self._call("POST", f"{self.session}/element/{self._element(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        self._call("POST", f"{self.session}/element/{self._element(css)}/value", {"text": text})

    def text(self, css: str) -> str:
        return self._call("GET", f"{self.session}/element/{self._element(css)}/text")

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"webkit-{name}.png"
        path.write_bytes(base64.b64decode(self._call("GET", self.session + "/screenshot")))
        return path

    def close(self) -> None:
        try:
            self._call("DELETE", self.session, timeout_s=20)
        except (WebKitError, OSError):
            pass


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def webkit(tmp: Path):
    """A WebKit page on a virtual screen of its own, everything stopped on the way out."""
    missing = [name for name, found in (("WebKitWebDriver", shutil.which("WebKitWebDriver")),
                                        ("Xvfb", shutil.which("Xvfb")),
                                        (str(MINIBROWSER), MINIBROWSER.exists())) if not found]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: run scripts/install-system-deps.sh")
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x900x24",
                             "-nolisten", "tcp"], pass_fds=(write_fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as chosen:  # Xvfb writes the display it took, then a newline
            display = chosen.readline().strip()
        if not display.isdigit():
            raise RuntimeError("Xvfb did not start")
        port = free_port()
        log = open(tmp / "webkitwebdriver.log", "w")
        driver = subprocess.Popen(["WebKitWebDriver", f"--port={port}"], stdout=log,
                                  stderr=subprocess.STDOUT,
                                  env={**os.environ, "DISPLAY": f":{display}"})
        try:
            wait_port(port, 30, driver)
            page = WebKitPage(port, tmp)
            try:
                yield page
            finally:
                page.close()
        finally:
            _stop(driver)
            log.close()
    finally:
        _stop(xvfb)
