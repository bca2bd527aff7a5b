"""A live grabber that is unplugged and plugged back, seen in the page; and the heatmap drawn.

The real device loop (`edge.loop.run`, in a thread) reads a `LiveSource` whose capture
device plays real HC18 frames until the test unplugs it (reads fail, reopens find
nothing) and plugs it back. The page must say "no signal" while it is out and go live
again after. The plane model here is the tiny two-output fixture
(tests/make_two_output_model.py), so the heatmap toggle is on and the class map of the
named plane is drawn over the region, as it will be with a real model that has maps.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

import edge.loop
from edge.capture.sources import LiveSource
from edge.config import load_settings
from edge.loop import run
from edge.web.auth import write_pin
from edge.web.live import LoopHook
from tests.servers import free_port, wait_port
from tests.web_harness import HEADS, PIN, _screen, chromium, maps_models_dir, wait_for

pytest.importorskip("playwright")
POLL = {"timeout": 60_000, "polling": 200}


class _Grabber:
    """A capture device playing real frames at 15 fps while plugged in."""

    def __init__(self, frames, plugged: threading.Event):
        self.frames, self.plugged, self.i = frames, plugged, 0

    def isOpened(self) -> bool:  # noqa: N802 (cv2's name)
        return True

    def read(self):
        time.sleep(1 / 15)
        if not self.plugged.is_set():
            return False, None
        self.i += 1
        return True, self.frames[self.i % len(self.frames)]

    def release(self) -> None:
        pass


def test_no_signal_while_unplugged_and_the_heatmap(tmp_path, data_dir, monkeypatch):
    rng = np.random.default_rng(3)
    frames = [_screen(cv2.imread(str(data_dir / "hc18" / "images" / name)), rng, True)
              for name in HEADS for _ in range(3)]
    plugged = threading.Event()
    plugged.set()
    finished = threading.Event()

    def opener():
        return _Grabber(frames, plugged) if plugged.is_set() and not finished.is_set() \
            else None

    monkeypatch.setattr(edge.loop, "open_source",
                        lambda spec, live=None, pace=False: LiveSource(spec, opener, live))
    monkeypatch.setattr(LoopHook, "linger", lambda self, stopped, poll_s=0.2: None)
    state = tmp_path / "state"
    write_pin(state, PIN)
    port = free_port()
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[source]
spec = "v4l2:/dev/video9"
backoff_initial_s = 0.5
backoff_max_s = 1.0
max_reopen_attempts = 6
[models]
dir = "{maps_models_dir(tmp_path / 'models')}"
[device]
state_dir = "{state}"
[loop]
log_every = 0
[web]
listen = "127.0.0.1:{port}"
no_signal_s = 1.0
""")
    settings = load_settings(cfg)
    loop = threading.Thread(target=run, args=(settings,), kwargs={"echo": lambda _: None},
                            daemon=True)
    loop.start()
    try:
        wait_port(port, 60)
        with chromium(tmp_path) as context:
            page = context.new_page()
            page.goto(f"https://127.0.0.1:{port}/")
            page.fill("#pin", PIN)
            page.click("#unlock")
            page.wait_for_function("window.sonoedge.frames > 3", **POLL)
            assert "Live" in page.text_content("#signal")
            assert page.text_content("#uplink").startswith("Uplink off")  # no broker set

            # the heatmap: available with this model, drawn over the region when on
            assert not page.is_disabled("#heatmap-toggle")
            assert page.text_content("#heatmap-note") == ""
            page.check("#heatmap-toggle")
            page.wait_for_function("(window.sonoedge.heatmapDrawn || 0) > 3", **POLL)
            coloured = page.evaluate("""() => {
                const c = document.querySelector('#overlay');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                return n / (c.width * c.height);
            }""")
            assert coloured > 0.02, coloured

            # unplugged: no frames, the grabber reopens with backoff; the page says so
            plugged.clear()
            page.wait_for_function("document.querySelector('#signal').textContent === "
                                   "'No signal'", **POLL)
            assert page.is_visible("#banner")
            assert "video cable" in page.text_content("#instruction")
            # her exam runs: once the signal counts as lost, the banner says it is kept
            # (tests/test_signal_hold.py), beside the plain "no signal"
            page.wait_for_function("document.querySelector('#banner').textContent"
                                   ".includes('Her exam is kept')", **POLL)
            assert page.text_content("#banner").startswith("No signal.")
            # plugged back: live again
            plugged.set()
            page.wait_for_function("document.querySelector('#signal').textContent.includes("
                                   "'Live')", **POLL)
            assert page.is_hidden("#banner")
    finally:
        finished.set()
        plugged.clear()
        wait_for(lambda: not loop.is_alive(), 60, "the loop to end after the grabber gave up")
