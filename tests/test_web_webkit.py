"""The midwife's page in WebKit, the engine of every browser on an iPad or an iPhone.

Chromium drives the page's other tests; a midwife with an iPad reaches the box through
WebKit, which differs where this page lives: WebSocket over TLS to a self-signed box, the
date input, the canvas. Here Debian's WebKitGTK (tests/webkit_harness.py) opens the page
of a real `sonoedge run --web` playing a clip of real frames, over TLS with the box's own
certificate, and the midwife's steps are done with real clicks and keys.
"""

from __future__ import annotations

import datetime
import json

from tests.web_harness import PIN, device, http, login_cookie, make_clip
from tests.webkit_harness import webkit


def test_the_midwife_scans_in_webkit_from_the_pin_to_the_next_exam(tmp_path, data_dir):
    clip = make_clip(data_dir, tmp_path / "clip.avi", rounds=3)
    with device(tmp_path, clip) as (base, _), webkit(tmp_path) as page:
        page.get(base + "/")
        page.wait("!document.querySelector('#login').hidden")
        page.type("#pin", PIN)
        page.click("#unlock")
        page.wait("!document.querySelector('#app').hidden")
        # the live image arrives and is drawn, with the plane named over it
        page.wait("window.sonoedge.frames > 5")
        transport = page.wait("window.sonoedge.transport")
        assert transport in ("websocket", "https"), transport
        print(f"WebKitGTK {page.version}: the stream over {transport}")
        page.wait("window.sonoedge.lastHeader && window.sonoedge.lastHeader.plane")
        drawn = page.js("const c = document.querySelector('#video');"
                        "return c ? [c.width, c.height] : null;")
        assert drawn and drawn[0] > 0 and drawn[1] > 0
        # the head measured on screen, and the checklist filling
        page.wait("window.sonoedge.lastHeader.biometry && "
                  "window.sonoedge.lastHeader.biometry.hc_mm > 0", timeout_s=90)
        page.wait("window.sonoedge.lastState.exam && window.sonoedge.lastState.exam.captured >= 1",
                  timeout_s=90)
        first = page.js("return window.sonoedge.lastState.exam.exam_id;")
        # the last period, through WebKit's own date field, kept with this exam
        lmp = datetime.date.today() - datetime.timedelta(weeks=22)
        assert page.js("return document.querySelector('#lmp').type;") == "date"
        page.js("const f = document.querySelector('#lmp'); f.value = arguments[0];"
                "return f.value;", lmp.isoformat())
        page.click("#lmp-form button")
        page.wait("document.querySelector('#flags').textContent.includes('By dates 22w 0d')")
        state = json.loads(http(base + "/api/state", cookie=login_cookie(base))[2])
        assert state["screening"]["lmp"] == lmp.isoformat()
        # stop, and the next woman's exam begins with an empty date field
        page.click("#stop")
        page.wait("window.sonoedge.lastState.exam.ended_by === 'command'")
        page.wait("!document.querySelector('#start').disabled")
        page.click("#start")
        page.wait(f"window.sonoedge.lastState.exam.exam_id !== {json.dumps(first)} && "
                  "window.sonoedge.lastState.exam.running")
        page.wait("document.querySelector('#lmp-for').textContent.startsWith('For this exam (')")
        assert page.js("return document.querySelector('#lmp').value;") == ""
        page.screenshot("next-exam")
