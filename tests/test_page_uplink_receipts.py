"""The midwife's status strip says whether her exams have reached the district.

Before: connected, the uplink chip said "Uplink connected" while her exams sat at the
broker unconfirmed by the district (its collector down, a long weekend): the broker's
PUBACK is not the district's receipt (wire/receipt.py), and the box keeps each exam as
sent until its receipt once a receipt has ever come. Now, once the district has sent a
receipt, the chip says how many are not yet confirmed, or that all are at the district;
a district whose older collector sends none still reads "Uplink connected". The chip's
title gives a supervisor the exact counts. Offline reads as before.

Real Mosquitto with the provisioned ACL, a plain subscriber as the district ("central",
sending receipts only when told), the real `sonoedge run --web` on the harness's clip of
real frames, the page in headless Chromium on a 390 px phone.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.servers import Mosquitto
from tests.test_receipts import RECEIPTS, _client, _close, _receipt
from tests.test_uplink_scenarios import publish_wait
from tests.web_harness import chromium, device, http, login_cookie, make_clip, unlocked_page
from tests.web_harness import wait_for as wait

pytest.importorskip("playwright.sync_api")
POLL = {"timeout": 20_000, "polling": 200}
DEVICE = "dev-a"
# The clip's rate and its frames of each image: a round of heads and example screens lasts
# 7.2 s (6.1 s with the harness's 10 and 8 frames of each at 15 frames a second).
CLIP = {"fps": 5.0, "per_head": 4, "per_example": 3}


@pytest.fixture(scope="module")
def box(tmp_path_factory, data_dir):
    """The broker, the district's plain subscriber (subscribed before the box sends),
    the box on the clip (~50 s of real frames, exams begun by hand), its page. The clip
    plays at 5 frames a second (`CLIP`): the chip's counts do not depend on the frame rate,
    and fewer than half the frames are less time writing them and less of the box's work
    playing them beside the browser."""
    tmp = tmp_path_factory.mktemp("uplinkchip")
    broker = Mosquitto(tmp / "broker")
    broker.add_user(DEVICE, "device")
    broker.add_user("central", "central")
    broker.start()
    central, got = _client(broker, "central", "sonoedge/+/+")
    clip = make_clip(data_dir, tmp / "clip.avi", black_s=1.0, rounds=7, **CLIP)
    try:
        with device(tmp, clip, mqtt_url=broker.url(DEVICE), device_id=DEVICE) as (base, _p), \
                chromium(tmp) as context:
            page = unlocked_page(context, base)  # a 390 px phone (the harness's viewport)
            yield {"broker": broker, "central": central, "got": got, "page": page,
                   "base": base, "cookie": login_cookie(base)}
    finally:
        _close(central)
        broker.stop()


def say(page, key: str, **values) -> str:
    """The page's own words for a catalog key, in the language it shows."""
    return page.evaluate("([k, v]) => window.sonoedge.t(k, v)", [key, values])


def chip_reads(page, key: str, **values) -> None:
    """The uplink chip comes to read `key`'s words, whole on the phone's strip."""
    want = say(page, key, **values)
    assert want != key, f"{key}: not in the catalog"
    try:
        page.wait_for_function("w => document.querySelector('#uplink').textContent === w",
                               arg=want, **POLL)
    except Exception:  # noqa: BLE001 (said with what it read)
        raise AssertionError(f"the chip reads {page.text_content('#uplink')!r}, "
                             f"not {want!r}") from None
    assert page.evaluate("""() => { const c = document.querySelector('#uplink');
        const s = document.querySelector('#status').getBoundingClientRect();
        return c.getBoundingClientRect().right <= s.right
            && c.getBoundingClientRect().right <= document.documentElement.clientWidth; }"""
                         ), f"{want!r} runs past the strip"


def title(page) -> str:
    return page.get_attribute("#uplink", "title") or ""


def _state(box) -> dict:
    return json.loads(http(box["base"] + "/api/state", cookie=box["cookie"])[2])


def _exam(box, action: str) -> None:
    status, _, body = http(box["base"] + "/api/exam", {"action": action},
                           cookie=box["cookie"])
    assert status == 200, (action, status, body)


def exam_ended(box) -> str:
    """Her exam on the clip ended by Stop (begun by Start where the box holds after the
    last one): the msg_id of its summary once the district's subscriber has it ("" with
    the broker down)."""
    wait(lambda: _state(box)["status"]["phase"] == "running", 60, "the models loaded")
    if _state(box)["status"]["holding"]:
        _exam(box, "start")
    exam_id = wait(lambda: (e := _state(box)["exam"]) and e["running"] and e["exam_id"], 30,
                   "an exam running on the clip")
    _exam(box, "stop")
    if not box["broker"].running:
        return ""
    return wait(lambda: next((m["msg_id"] for t, p in list(box["got"])
                              if t.endswith("/exam") and (m := json.loads(p))
                              .get("exam_id") == exam_id), None), 20,
                f"exam {exam_id} at the district's subscriber")


def test_the_chip_says_whether_her_exams_are_confirmed_by_the_district(box):
    """No receipt ever: an exam sent reads "Uplink connected", as before receipts. One
    receipt from the district (its collector upgraded), not for that exam: it stays not
    confirmed (tests/test_page_uplink_exam_counts.py) until its own receipt, and then
    every exam is at the district. Her next exam, taken by the broker but not yet stored
    there: "Online · 1 not yet confirmed by district" (in French too, whole on the
    phone's strip), with the exact counts in the title. Its receipt: all at the district
    again."""
    page = box["page"]
    first = exam_ended(box)
    chip_reads(page, "status.uplink_ok")
    assert page.evaluate("window.sonoedge.lastState.status.uplink.receipts_seen") is False
    assert title(page) == say(page, "status.uplink_counts_no_receipts", q=0)

    publish_wait(box["central"], f"{RECEIPTS}/{DEVICE}", _receipt(DEVICE, [str(uuid.uuid4())]))
    chip_reads(page, "status.uplink_awaiting", n=1)
    publish_wait(box["central"], f"{RECEIPTS}/{DEVICE}", _receipt(DEVICE, [first]))
    chip_reads(page, "status.uplink_confirmed")

    msg_id = exam_ended(box)
    chip_reads(page, "status.uplink_awaiting", n=1)
    assert page.get_attribute("#uplink", "class") == "chip"  # not green: not there yet
    assert title(page) == say(page, "status.uplink_counts", q=0, w=1, u=0)
    try:
        page.select_option("select.lang >> nth=-1", "fr")
        page.wait_for_function("document.documentElement.lang === 'fr'", **POLL)
        chip_reads(page, "status.uplink_awaiting", n=1)
        assert say(page, "status.uplink_awaiting", n=1).startswith("En ligne · 1 non confirmé ")
    finally:
        page.select_option("select.lang >> nth=-1", "en")
    page.wait_for_function("document.documentElement.lang === 'en'", **POLL)

    publish_wait(box["central"], f"{RECEIPTS}/{DEVICE}", _receipt(DEVICE, [msg_id]))
    chip_reads(page, "status.uplink_confirmed")
    assert page.get_attribute("#uplink", "class") == "chip ok"
    assert title(page) == say(page, "status.uplink_counts", q=0, w=0, u=0)


def test_offline_still_reads_offline_with_what_is_queued(box):
    """The broker gone, her exam queues: "Offline · N queued", as before, and the title
    says how many wait to go and how many wait for the district's receipt."""
    page = box["page"]
    box["broker"].stop()
    exam_ended(box)
    queued = wait(lambda: page.evaluate("(window.sonoedge.lastState.status.uplink || {})"
                                        ".pending"), 20, "the exam queued")
    chip_reads(page, "status.offline", n=queued)
    assert page.get_attribute("#uplink", "class") == "chip warn"
    up = page.evaluate("window.sonoedge.lastState.status.uplink")
    assert title(page) == (say(page, "status.uplink_counts", q=queued, w=up["awaiting_receipt"],
                               u=up["unconfirmed"])
                           if up.get("receipts_seen") else
                           say(page, "status.uplink_counts_no_receipts", q=queued))
