"""A box boots before its capture dongle is plugged in: the loop waits for the grabber and
the midwife's page says "no signal", instead of the service failing and restarting."""

from __future__ import annotations

import json
from pathlib import Path

from tests.web_harness import device, http, login_cookie, wait_for


def test_a_box_whose_grabber_is_absent_at_start_serves_the_page_saying_no_signal(tmp_path):
    with device(tmp_path, Path("v4l2:/dev/video57")) as (base, proc):
        cookie = login_cookie(base)

        def signal() -> str | None:
            status, _, body = http(base + "/api/state", cookie=cookie)
            return json.loads(body)["status"]["signal"] if status == 200 else None

        wait_for(lambda: signal() == "no_signal", 60, "the page to say no signal")
        assert proc.poll() is None, "the loop must wait for the grabber, not end"
    log = (tmp_path / "device.log").read_text()
    assert "v4l2:/dev/video57: no such device yet" in log, log[-2000:]
    assert "Traceback" not in log
