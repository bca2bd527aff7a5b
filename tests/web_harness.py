"""What the web tests, `make screenshots` and `make bench` share: a clip of real frames,
the device loop with its page, and headless Chromium (Debian's, never a downloaded one).

The clip is written with cv2 into a temporary folder: black frames (no signal content:
the instruction must say so), HC18 heads laid out on a scanner-like screen with small
probe motion (the head slot fills, with HC and BPD), then SonoNet's example screens.

The page is served as a box serves it, over TLS with the certificate the device made
(`[web] tls` at its default): `http()` and `client_ssl()` trust that certificate, and only
it, as a tablet does once the midwife has accepted it; Chromium ignores certificate errors.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import REPO
from tests.servers import free_port, wait_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]
SCREEN_W, SCREEN_H = 960, 720
PIN = "4827"
# the device's own 409 to dates for an exam it no longer has (edge/web/server.py `_lmp`)
DATES_REFUSED = ("the dates were not kept: the exam on the page is no longer the device's; "
                 "look again and enter them")
PIXEL_SIZE_MM = 0.15  # a typical HC18 pixel size: the head overlay shows HC and BPD
HEADS = ("106_HC.png", "205_HC.png", "250_HC.png", "310_HC.png", "414_HC.png", "515_HC.png")
EXAMPLES = ("BRAIN-TV.tiff", "4CH.tiff", "ABDOMINAL.tiff", "FEMUR.tiff")
SONONET_BMODE = (slice(115, 734), slice(81, 874))


def _screen(image: np.ndarray, rng: np.random.Generator, jitter: bool) -> np.ndarray:
    """The image centred on a black scanner screen, with a little probe motion."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    s = min(860 / image.shape[1], 640 / image.shape[0], 1.0)
    if s < 1.0:
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    if jitter:
        h, w = image.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-1.5, 1.5)), 1.0)
        m[:, 2] += rng.uniform(-5, 5, size=2)
        image = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    screen = np.zeros((SCREEN_H, SCREEN_W, 3), np.uint8)
    h, w = image.shape[:2]
    oy, ox = (SCREEN_H - h) // 2, (SCREEN_W - w) // 2
    screen[oy:oy + h, ox:ox + w] = image
    cv2.putText(screen, "TEST CLIP  real frames, not for diagnosis", (12, SCREEN_H - 12),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (150, 150, 150), 1, cv2.LINE_AA)
    return screen


def make_clip(data_dir: Path, dest: Path, fps: float = 15.0, black_s: float = 6.0,
              per_head: int = 10, per_example: int = 8, rounds: int = 2) -> Path:
    """An MJPG .avi of real frames: black, then heads, then example screens."""
    rng = np.random.default_rng(15)
    frames: list[np.ndarray] = [np.zeros((SCREEN_H, SCREEN_W, 3), np.uint8)] * int(black_s * fps)
    for _ in range(rounds):
        for name in HEADS:
            img = cv2.imread(str(data_dir / "hc18" / "images" / name))
            frames += [_screen(img, rng, k > 0) for k in range(per_head)]
        for name in EXAMPLES:
            img = cv2.imread(str(data_dir / "sononet" / "examples" / name))
            img = img[SONONET_BMODE]
            frames += [_screen(img, rng, k > 0) for k in range(per_example)]
    dest.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (SCREEN_W, SCREEN_H))
    if not writer.isOpened():
        raise RuntimeError(f"{dest}: cv2 cannot write MJPG here")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return dest


def write_config(path: Path, state_dir: Path, clip: Path, port: int, mqtt_port: int,
                 extra: str = "", pixel_size_mm: float = PIXEL_SIZE_MM,
                 ruler_tick_mm: float = 0.0, mqtt_url: str = "",
                 device_id: str = "web-test", mqtt_extra: str = "",
                 end_gap_s: float = 5.0) -> Path:
    """The device's config; its uplink to `mqtt_url` (a broker's, with the device's
    credentials), else to nothing listening on `mqtt_port`; `mqtt_extra`: more lines of
    its `[mqtt]` table; an exam ends after `end_gap_s` without ultrasound."""
    mqtt_url = mqtt_url or f"mqtt://127.0.0.1:{mqtt_port}"
    path.write_text(f"""
[source]
spec = "{clip}"
pace = true

[device]
state_dir = "{state_dir}"
device_id = "{device_id}"

[biometry]
pixel_size_mm = {pixel_size_mm}
ruler_tick_mm = {ruler_tick_mm}

[loop]
log_every = 0

[mqtt]
url = "{mqtt_url}"
clinic_id = "clinic-test"
{mqtt_extra}

[exam]
end_gap_s = {end_gap_s}

[web]
listen = "127.0.0.1:{port}"
{extra}
""")
    path.chmod(0o600)  # the box refuses a config that others can read its password in
    return path


# "host:port" of a page over TLS -> a client context that trusts its certificate alone
_TRUSTED: dict[str, ssl.SSLContext] = {}


def trust(base: str, cert: Path) -> ssl.SSLContext:
    """Trust `cert` (the page's own, PEM) for requests to `base` ("https://host:port")."""
    context = ssl.create_default_context(cafile=str(cert))
    _TRUSTED[urllib.parse.urlsplit(base).netloc] = context
    return context


def client_ssl(url: str) -> ssl.SSLContext | None:
    """The context for a request to `url`: None for http://, the page's trusted
    certificate for https:// (a page nobody trusted is an error, not an unverified call)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "ws"):
        return None
    try:
        return _TRUSTED[parts.netloc]
    except KeyError:
        raise AssertionError(f"{url}: no certificate trusted for {parts.netloc} "
                             "(tests.web_harness.trust)") from None


def tls_cert(state_dir: Path) -> Path:
    return state_dir / "web-tls" / "cert.pem"


def set_pin(state_dir: Path, pin: str = PIN) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edge.cli", "pin", "set", "--state-dir",
                           str(state_dir)], input=pin + "\n", capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)


@contextmanager
def device(tmp: Path, clip: Path, extra_config: str = "", log_name: str = "device.log",
           tls: bool = True, pixel_size_mm: float = PIXEL_SIZE_MM, ruler_tick_mm: float = 0.0,
           mqtt_url: str = "", device_id: str = "web-test", mqtt_extra: str = "",
           end_gap_s: float = 5.0):
    """`sonoedge run` with the page on a free loopback port; yields (base_url, process).
    The broker port is free and closed (the uplink stays offline and queues), unless
    `mqtt_url` names a broker: the device then sends as `device_id` (`mqtt_extra`: more
    lines of its `[mqtt]` table; `end_gap_s`: its `[exam] end_gap_s`). The page is
    https:// with the certificate the device makes (trusted by `http()`), or with `tls`
    false plain http:// (`[web] tls = "off"`)."""
    state = tmp / "state"
    done = set_pin(state)
    assert done.returncode == 0, done.stderr
    port = free_port()
    if not tls:
        extra_config = 'tls = "off"\n' + extra_config
    cfg = write_config(tmp / "device.toml", state, clip, port, free_port(), extra_config,
                       pixel_size_mm, ruler_tick_mm, mqtt_url, device_id, mqtt_extra,
                       end_gap_s)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(tmp / log_name, "w")
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60, proc)
        if not tls:
            yield f"http://127.0.0.1:{port}", proc
        else:
            base = f"https://127.0.0.1:{port}"
            trust(base, tls_cert(state))
            yield base, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def http(url: str, data: dict | None = None, cookie: str | None = None,
         method: str | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request, errors included."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=30, context=client_ssl(url)) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def login_cookie(base: str, pin: str = PIN) -> str:
    status, headers, body = http(base + "/api/login", {"pin": pin})
    assert status == 200, (status, body)
    return headers["Set-Cookie"].split(";", 1)[0]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def unlocked_page(context, base: str):
    """A new tab on the box's page, its PIN entered as the midwife does: the page."""
    page = context.new_page()
    page.goto(base + "/")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#pin", PIN)
    page.click("#unlock")
    page.wait_for_selector("#app:not([hidden])")
    return page


def unlock_if_asked(page) -> None:
    """The PIN entered if the page asks for it (a context already unlocked does not), then
    the app shown. The page decides after a request of its own: looking for the PIN field
    at once found it not yet shown on a loaded host, and the app stayed locked (a CI
    rehearsal)."""
    page.wait_for_selector("#login:not([hidden]), #app:not([hidden])")
    if page.is_visible("#login"):
        page.fill("#pin", PIN)
        page.click("#unlock")
    page.wait_for_selector("#app:not([hidden])")


@contextmanager
def chromium(tmp: Path):
    """Playwright driving Debian's Chromium with a fresh profile."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} missing: run scripts/install-system-deps.sh")
    profile = tmp / "chromium-profile"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 390, "height": 844}, device_scale_factor=2,
            bypass_csp=True,  # the page forbids eval; the test driver needs it
            ignore_https_errors=True)  # the box's own certificate, as if accepted once
        try:
            yield context
        finally:
            context.close()


MAPS_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "plane_maps_int8.tflite"
MAPS_OUTPUTS = [{"name": "logits", "shape": [1, 14], "dtype": "int8"},
                {"name": "class_maps", "shape": [1, 14, 14, 18], "dtype": "int8",
                 "layout": "NCHW"}]


def maps_models_dir(dest: Path, outputs: list | None = None) -> Path:
    """The shipped models, with the plane model swapped for the tiny untrained two-output
    fixture (tests/make_two_output_model.py) under a manifest that declares its class maps.
    Its answers are meaningless; its outputs have the shapes the real export must have."""
    import hashlib
    import shutil

    shutil.copytree(REPO / "models", dest)
    manifest = json.loads((dest / "plane_student.json").read_text())
    shutil.copyfile(MAPS_FIXTURE, dest / "plane_student.tflite")
    data = (dest / "plane_student.tflite").read_bytes()
    manifest.update(version="0.0.0-test-maps", sha256=hashlib.sha256(data).hexdigest(),
                    size_bytes=len(data), outputs=outputs or MAPS_OUTPUTS)
    manifest["output"] = {"shape": [1, 14], "dtype": "int8", "kind": "logits"}
    (dest / "plane_student.json").write_text(json.dumps(manifest, indent=1))
    return dest


@contextmanager
def page_alone(state_dir: Path):
    """The page's real server (`edge.web.server.WebServer`) on a free loopback port, plain
    HTTP, no loop attached (the view stays "loading"), with the harness's PIN set; for
    tests of requests that need no models."""
    from edge.web.auth import read_pin, write_pin
    from edge.web.live import LiveView
    from edge.web.server import WebServer
    from edge.web.settings import WebSettings

    write_pin(state_dir, PIN)
    srv = WebServer(WebSettings(listen=f"127.0.0.1:{free_port()}", tls="off"), LiveView(),
                    state_dir, read_pin(state_dir))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def scanning_view(models: dict, head_planes: list[str] | None = None):
    """A `LiveView` set by hand as a box scanning from its grabber, with no loop: these
    models' versions and, given head planes, the head biometry protocol. The test then sets
    its frames and exam itself."""
    from edge.web.live import LiveView

    view = LiveView()
    view.models = models
    if head_planes is not None:
        view.protocol = {"name": "biometry", "title": "Fetal biometry: head",
                         "head_planes": list(head_planes)}
    view.source_name, view.source_live, view.phase = "scanner", True, "running"
    return view


@contextmanager
def page_on_view(tmp: Path, view, viewport: tuple[int, int] | None = None):
    """The page's real server (TLS, as the box serves it) on `view`, and a Chromium tab
    unlocked with the harness's PIN at `viewport`: (page, the page's script errors)."""
    from edge.web.auth import read_pin, write_pin
    from edge.web.server import WebServer
    from edge.web.settings import WebSettings

    state = tmp / "state"
    write_pin(state, PIN)
    server = WebServer(WebSettings(listen=f"127.0.0.1:{free_port()}"), view, state,
                       read_pin(state))
    server.start()
    try:
        with chromium(tmp) as context:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            if viewport is not None:
                page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
            page.goto(f"https://localhost:{server.port}/")
            page.fill("#pin", PIN)
            page.click("#unlock")
            page.wait_for_selector("#app:not([hidden])")
            yield page, errors
    finally:
        server.stop()
