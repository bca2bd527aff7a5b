"""The uplink chip counts her exams, and says "all at the district" only when each has arrived.

Before: the chip's counts were the outbox's messages, the box's health summaries among
them ("Offline · 3 queued" with one exam and two health messages), and "Online · all at
the district ✓" showed as soon as the district's first receipt came, even for her exams the
outbox had deleted on the broker's PUBACK before any receipt (nothing proves the district
stored those). Now the chip counts her exams and their corrections (dates, withdrawals),
never health; an exam that left the box without its receipt stays in "not yet confirmed
by district" until its own receipt comes, across a restart of the box (the outbox in its
state folder keeps its id).

Real Mosquitto with the provisioned ACL, a plain subscriber as the district ("central",
sending receipts only when told), the real `sonoedge run --web` (a health message every
second) on the harness's clip of real frames, restarted on the same state folder, the page
in headless Chromium on a 390 px phone.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid

import pytest

from edge.store.outbox import OUTBOX_FILE, counts_of
from tests.servers import Mosquitto
from tests.test_page_uplink_receipts import CLIP, chip_reads, exam_ended, say, title
from tests.test_receipts import RECEIPTS, _client, _close, _receipt
from tests.test_uplink_scenarios import publish_wait
from tests.web_harness import chromium, device, login_cookie, make_clip, unlocked_page
from tests.web_harness import wait_for as wait
from wire.schema import sqlite_uri

pytest.importorskip("playwright.sync_api")
DEVICE = "dev-a"
# A health message every second; and back online within a second of the broker's return
# (the default backoff grows to a minute while it is down: waiting, not what is tested).
MQTT_EXTRA = "health_interval_s = 1.0\nreconnect_max_s = 1.0"


@pytest.fixture(scope="module")
def box(tmp_path_factory, data_dir):
    """The broker, the district's plain subscriber, the clip (~60 s of real frames, at
    the receipts' `CLIP` rate) and one browser; `run(name)` starts the box on its one state
    folder and opens a tab on its page (`stop()` closes both; the box restarted knows no
    session of the box before, so the new tab enters the PIN)."""
    tmp = tmp_path_factory.mktemp("uplinkcounts")
    broker = Mosquitto(tmp / "broker")
    broker.add_user(DEVICE, "device")
    broker.add_user("central", "central")
    broker.start()
    clip = make_clip(data_dir, tmp / "clip.avi", black_s=1.0, rounds=8, **CLIP)
    box = {"broker": broker, "tmp": tmp}
    district(box)
    runs = contextlib.ExitStack()

    def run(name: str) -> None:
        runs.close()  # the run before, had its test failed before stopping it
        base, _ = runs.enter_context(device(
            tmp, clip, log_name=f"{name}.log", mqtt_url=broker.url(DEVICE), device_id=DEVICE,
            mqtt_extra=MQTT_EXTRA))
        cookie = login_cookie(base)
        page = unlocked_page(box["browser"], base)
        runs.callback(page.close)
        box.update(base=base, cookie=cookie, page=page)

    box.update(run=run, stop=runs.close)
    try:
        with chromium(tmp) as browser, runs:
            box["browser"] = browser
            yield box
    finally:
        _close(box["central"])
        broker.stop()


def district(box) -> None:
    """The district's subscriber, (re)connected to the broker, subscribed before the box
    sends."""
    box["central"], box["got"] = _client(box["broker"], "central", "sonoedge/+/+")


def receipt(box, *msg_ids: str) -> None:
    publish_wait(box["central"], f"{RECEIPTS}/{DEVICE}", _receipt(DEVICE, list(msg_ids)))


def queue(box) -> dict:
    """The outbox's own counts, read beside the running box (`sonoedge outbox` does so)."""
    db = sqlite3.connect(sqlite_uri(box["tmp"] / "state" / OUTBOX_FILE), uri=True,
                         timeout=5.0)
    try:
        return counts_of(db)
    finally:
        db.close()


def test_an_exam_sent_before_any_receipt_is_not_confirmed_until_its_own_receipt(box):
    """Her exam goes while the district sends no receipts: the broker's PUBACK empties it
    from the outbox ("Uplink connected"). The district's first receipt, for something
    else, proves nothing about it: "Online · 1 not yet confirmed by district", not all at
    the district. Her next exam is kept until its receipt: 2 not confirmed; its receipt
    leaves the first: 1. The title gives the supervisor each figure."""
    box["run"]("first")
    page = box["page"]
    first = exam_ended(box)
    chip_reads(page, "status.uplink_ok")
    wait(lambda: queue(box)["pending_exam"] == 0, 20, "the first exam acknowledged")

    receipt(box, str(uuid.uuid4()))  # the district's collector now sends receipts
    chip_reads(page, "status.uplink_awaiting", n=1)
    assert page.get_attribute("#uplink", "class") == "chip"  # not green: nothing proves it
    assert title(page) == say(page, "status.uplink_counts", q=0, w=0, u=1)

    second = exam_ended(box)
    chip_reads(page, "status.uplink_awaiting", n=2)
    assert title(page) == say(page, "status.uplink_counts", q=0, w=1, u=1)
    receipt(box, second)
    chip_reads(page, "status.uplink_awaiting", n=1)  # the first still has none
    assert title(page) == say(page, "status.uplink_counts", q=0, w=0, u=1)
    box["first"] = first
    box["stop"]()


def test_after_a_restart_the_chip_still_waits_for_that_exams_receipt(box):
    """The box restarted (the same state folder): the exam the district never confirmed is
    still not confirmed; its own receipt, come while the box runs, makes all at the
    district."""
    box["run"]("second")
    page = box["page"]
    chip_reads(page, "status.uplink_awaiting", n=1)
    assert title(page) == say(page, "status.uplink_counts", q=0, w=0, u=1)
    receipt(box, box["first"])
    chip_reads(page, "status.uplink_confirmed")
    assert page.get_attribute("#uplink", "class") == "chip ok"
    assert title(page) == say(page, "status.uplink_counts", q=0, w=0, u=0)


def test_health_messages_in_the_queue_do_not_change_her_exam_count(box):
    """The broker gone, the box's health messages (one a second) queue: the chip reads
    "Offline · 0 queued", none of her exams waits. Her exam ends: "Offline · 1 queued",
    however many health messages wait beside it. The broker back, it goes, and waits for
    its receipt alone: "Online · 1 not yet confirmed by district"; then all at the
    district, while health keeps flowing."""
    page = box["page"]
    _close(box["central"])
    box["broker"].stop()
    wait(lambda: queue(box)["pending_health"] >= 2, 30, "health messages queued offline")
    chip_reads(page, "status.offline", n=0)
    assert page.get_attribute("#uplink", "class") == "chip warn"

    exam_ended(box)
    chip_reads(page, "status.offline", n=1)
    counts = queue(box)
    assert (counts["pending_exam"], counts["pending_health"] >= 2) == (1, True), counts
    assert page.evaluate("window.sonoedge.lastState.status.uplink.pending") == 1

    box["broker"].start()
    district(box)
    exam = wait(lambda: next((json.loads(p)["msg_id"] for t, p in list(box["got"])
                              if t.endswith("/exam")), None), 60,
                "the exam queued offline at the district's subscriber")
    chip_reads(page, "status.uplink_awaiting", n=1)
    assert title(page) == say(page, "status.uplink_counts", q=0, w=1, u=0)
    receipt(box, exam)
    chip_reads(page, "status.uplink_confirmed")
    wait(lambda: any(t.endswith("/health") for t, _ in list(box["got"])), 20,
         "health sent again")
    assert page.text_content("#uplink") == say(page, "status.uplink_confirmed")
