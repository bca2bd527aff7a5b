"""Exams the district's broker refused are said on the midwife's chip, in red, with the fix.

Before: the uplink chip counted her exams to send, awaiting the district's receipt and gone
without one, but not those the broker refused outright (outbox state `rejected`: the box
not authorised for its topic after a provisioning mistake). Those are never sent again by
themselves, yet the chip read "Uplink connected" in green while none of her exams reached
the district. Now it reads "1 exam refused: call the installer" (in French too, whole on a
phone's strip) in the chip's "bad" style, its title names the installer's fix (mend the
credentials or the ACL, then `sonoedge outbox --retry-rejected`), and `sonoedge status`
says the same in one line. The box's health messages, refused alike, are not her exams
and are not counted on the chip.

Real Mosquitto whose ACL refuses the box's topic (its user provisioned as a collector by
mistake: board/provision.py), a plain subscriber as the district, the real
`sonoedge run --web` (a health message every second) on a short clip of real frames, the
page in headless Chromium on a 390 px phone; then the ACL mended, the broker reloaded and
`--retry-rejected` run beside the box: her exam reaches the district.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from edge.store.outbox import OUTBOX_FILE, counts_of
from tests.cli_run import sonoedge
from tests.servers import Mosquitto
from tests.test_page_uplink_receipts import chip_reads, say, title
from tests.test_receipts import _client, _close
from tests.web_harness import chromium, device, http, login_cookie, make_clip, unlocked_page
from tests.web_harness import wait_for as wait
from wire.schema import sqlite_uri

pytest.importorskip("playwright.sync_api")
DEVICE = "dev-b"
FIX = "sonoedge outbox --retry-rejected"


@pytest.fixture(scope="module")
def box(tmp_path_factory, data_dir):
    """The broker with the box's user provisioned as a collector by mistake (it may read
    everything, publish nothing under sonoedge/), the district's subscriber, the box on a
    short clip (~13 s of real frames, her exam begun and ended by hand), its page."""
    tmp = tmp_path_factory.mktemp("uplinkrefused")
    broker = Mosquitto(tmp / "broker")
    broker.add_user(DEVICE, "central")  # the mistake: --central where --device was meant
    broker.add_user("central", "central")
    broker.start()
    central, got = _client(broker, "central", "sonoedge/+/+")
    clip = make_clip(data_dir, tmp / "clip.avi", black_s=1.0, rounds=2)
    try:
        with device(tmp, clip, mqtt_url=broker.url(DEVICE), device_id=DEVICE,
                    mqtt_extra="health_interval_s = 1.0") as (base, _p), \
                chromium(tmp) as context:
            yield {"broker": broker, "got": got, "state": tmp / "state", "base": base,
                   "cookie": login_cookie(base), "page": unlocked_page(context, base)}
    finally:
        _close(central)
        broker.stop()


def queue(box) -> dict:
    """The outbox's own counts, read beside the running box (`sonoedge outbox` does so)."""
    db = sqlite3.connect(sqlite_uri(box["state"] / OUTBOX_FILE), uri=True, timeout=5.0)
    try:
        return counts_of(db)
    finally:
        db.close()


def api(box, path: str, data: dict | None = None) -> dict:
    status, _, body = http(box["base"] + path, data, cookie=box["cookie"])
    assert status == 200, (path, status, body)
    return json.loads(body)


def her_exam(box) -> str:
    """Her exam on the clip, begun by Start where the box holds, ended by Stop: its id."""
    wait(lambda: api(box, "/api/state")["status"]["phase"] == "running", 60,
         "the models loaded")
    if api(box, "/api/state")["status"]["holding"]:
        api(box, "/api/exam", {"action": "start"})
    exam_id = wait(lambda: (e := api(box, "/api/state")["exam"]) and e["running"]
                   and e["exam_id"], 30, "an exam running on the clip")
    api(box, "/api/exam", {"action": "stop"})
    return exam_id


def test_exams_the_broker_refused_are_said_in_red_with_the_installers_fix(box):
    """Her exam is refused by the broker, as are the box's health messages: the chip reads
    "1 exam refused: call the installer" in red (health not counted), in French too, and
    its title names `sonoedge outbox --retry-rejected`; `sonoedge status` says it in one
    line with the same fix."""
    page = box["page"]
    her_exam(box)
    counts = wait(lambda: (c := queue(box))["rejected_exams"] == 1
                  and c["rejected"] > c["rejected_exams"] and c, 30,
                  "her exam and health messages refused by the broker")
    assert counts["pending_exam"] == 0, counts
    chip_reads(page, "status.uplink_refused", n=1)
    assert page.text_content("#uplink") == "1 exam refused: call the installer"
    assert page.get_attribute("#uplink", "class") == "chip bad"
    assert say(page, "status.uplink_counts_refused", r=1) in title(page)
    assert FIX in title(page)
    try:
        page.select_option("select.lang >> nth=-1", "fr")
        page.wait_for_function("document.documentElement.lang === 'fr'")
        chip_reads(page, "status.uplink_refused", n=1)
        assert page.text_content("#uplink") == "1 refusé\u202f: appelez l'installateur"
        assert FIX in title(page) and "refusés par le serveur du district" in title(page)
    finally:
        page.select_option("select.lang >> nth=-1", "en")
    page.wait_for_function("document.documentElement.lang === 'en'")

    status = sonoedge("status", "--state-dir", str(box["state"]), timeout=60)
    assert status.returncode == 0, status.stderr
    said = [line for line in status.stdout.splitlines() if "refused by the broker" in line]
    assert len(said) == 1, status.stdout
    assert "1 of them exams or corrections" in said[0] and f"`{FIX}`" in said[0], said[0]
    assert box["got"] == []  # nothing reached the district


def test_once_the_acl_is_mended_retry_rejected_sends_her_exam_and_the_chip_says_so(box):
    """The installer provisions the box's user as a device (the ACL rewritten, the broker
    reloaded) and runs `--retry-rejected` beside the running box: her exam reaches the
    district, and the chip leaves red ("Uplink connected": this district sends no
    receipts)."""
    page = box["page"]
    broker = box["broker"]
    broker.add_user(DEVICE, "device", password=broker.passwords[DEVICE])  # and SIGHUP
    # the broker reads its ACL again before it handles another message
    wait(lambda: "Reloading config." in broker.log_text(), 10, "the broker reloaded")
    retry = sonoedge("outbox", "--state-dir", str(box["state"]), "--retry-rejected",
                     timeout=60)
    assert retry.returncode == 0 and "queued again; the running sonoedge" in retry.stdout, \
        retry.stdout + retry.stderr
    wait(lambda: any(t == f"sonoedge/{DEVICE}/exam" for t, _ in list(box["got"])), 30,
         "her exam at the district's subscriber")
    chip_reads(page, "status.uplink_ok")
    assert page.get_attribute("#uplink", "class") == "chip ok"
    assert FIX not in title(page)
    assert queue(box)["rejected_exams"] == 0
