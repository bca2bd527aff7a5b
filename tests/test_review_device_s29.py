# ruff: noqa: F811  (the small_disk and broker fixtures, imported)
"""Review of the device side (session 29): capture, config, outbox and uplink, each defect
stated as the behaviour the device must have, on real files, a real tmpfs that really
fills and a real Mosquitto."""

from __future__ import annotations

import json
import logging
import struct

import cv2
import numpy as np
import pytest

from edge.capture.images import decode_image_file
from edge.config import ConfigError, load_settings
from edge.store.outbox import ROW_OVERHEAD_BYTES, open_outbox
from edge.uplink.mqtt import MqttSettings, Uplink
from tests.conftest_mqtt import broker  # noqa: F401  (fixture)
from tests.test_hardening import fill, small_disk  # noqa: F401  (fixture)

# -- capture: the pixel budget holds for every file, not only those whose header is read --

def _jpeg(width: int, height: int, fill_bytes: int = 0) -> bytes:
    """A real JPEG (64x64 pixels) whose start-of-frame says width x height, with fill
    bytes (0xFF, which a JPEG decoder skips) before that marker."""
    ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    at = data.find(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data[:at] + b"\xff" * fill_bytes + data[at:])


@pytest.mark.parametrize("name, content", [
    # libjpeg skips the fill byte and reads 30000x30000: 2.7 GB allocated, then decoded
    ("fill.jpg", _jpeg(30000, 30000, fill_bytes=1)),
    # a 20-byte PPM header named .png: OpenCV decodes by content, 1.2 GB for nothing
    ("grab.png", b"P6\n20000 20000\n255\n"),
    ("bomb.tif", b"P5\n30000 30000\n255\n" + b"\0" * 64),
], ids=["jpeg-fill-byte", "ppm-named-png", "pgm-named-tif"])
def test_an_image_the_header_check_cannot_size_is_refused_before_it_is_decoded(
        tmp_path, monkeypatch, name, content):
    """The pixel budget is checked from the header "before decoding". A file whose header
    the check could not read (a JPEG with a fill byte before its frame header, another
    format under an image's name) went to the decoder anyway, which allocates whatever its
    own reading of the header says: a few bytes on a USB stick took gigabytes on a box
    with 2-4 GB. Such a file is now one line naming it, and is never decoded."""
    path = tmp_path / name
    path.write_bytes(content)

    def decoder_must_not_run(*_args, **_kw):
        raise AssertionError("an image of unknown size was handed to the decoder")

    monkeypatch.setattr(cv2, "imdecode", decoder_must_not_run)
    img, err = decode_image_file(path)
    assert img is None and err.startswith(f"{name}: ") and "\n" not in err


def test_a_jpeg_with_fill_bytes_before_its_frame_header_still_decodes(tmp_path):
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg(64, 64, fill_bytes=3))
    img, err = decode_image_file(path)
    assert err is None and img.shape == (64, 64, 3)


# -- config: numbers MQTT cannot carry are refused at start, naming the key ----------------

@pytest.mark.parametrize("key, value", [
    ("keepalive_s", "70000"),  # MQTT's keep-alive is 2 bytes: struct.error on every connect
    ("session_expiry_s", "8589934592"),  # 4 bytes in MQTT v5
    ("max_inflight", "100000000000000000000000"),  # SQLite LIMIT overflow on every publish
    ("connect_timeout_s", "1e300"),  # OverflowError (time_t) on every connect
    ("reconnect_max_s", "1e300"),
    ("outbox_quota_bytes", "1"),  # every exam "exceeds outbox quota": logged and lost
])
def test_mqtt_numbers_that_fail_every_connection_or_message_are_refused_naming_the_key(
        tmp_path, key, value):
    """These were accepted; the uplink then failed every connection attempt with a
    traceback in the log (or refused every exam as too large), for ever, and nothing
    reached the district."""
    path = tmp_path / "device.toml"
    path.write_text(f"[mqtt]\n{key} = {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    text = str(caught.value)
    assert f"mqtt.{key}" in text and str(path) in text and "\n" not in text


def test_the_largest_keepalive_and_session_expiry_mqtt_carries_still_deliver(
        broker, tmp_path):  # noqa: F811
    settings = MqttSettings(url=broker.url("dev-a"), device_id="dev-a", keepalive_s=65535,
                            session_expiry_s=0xFFFFFFFF, require_subscriber=False,
                            reconnect_min_s=0.1, reconnect_max_s=0.5)
    up = Uplink(settings, tmp_path / "state")
    try:
        assert up.enqueue_health({"frames": 1}) is not None
        up.start()
        assert up.drain(15.0), up.status()
        assert up.status()["acked"] >= 1
    finally:
        up.close()


# -- outbox and uplink on a disk that is really full ---------------------------------------

def test_a_health_message_on_a_full_disk_is_not_stored_and_never_raises(small_disk, caplog):
    """Health drops to report (the outbox's quota was hit while offline), then the disk
    fills: moving the drop report's baseline needs a write, and its `database or disk is
    full` went up through `enqueue_health` into the loop, which has no handler there: the
    run ended with a traceback. It is now a health message not stored (the exams are what
    matter), and the drops are reported in the next one that is."""
    up = Uplink(MqttSettings(device_id="dev-a", outbox_quota_bytes=16 * 1024),
                small_disk / "state")
    (small_disk / "state" / "reserve.bin").unlink(missing_ok=True)
    for _ in range(8):
        up.outbox.enqueue("health", {"pad": "x" * 5000})
    dropped = up.outbox.counts()["dropped_health"]
    assert dropped > 0
    filler = fill(small_disk)
    with caplog.at_level(logging.DEBUG, logger="sonoedge.uplink"):
        assert up.enqueue_health({"frames": 1}) is None
    assert "Traceback" not in caplog.text
    filler.unlink()
    msg_id = up.enqueue_health({"frames": 2})
    assert msg_id is not None
    sent = next(m for m in up.outbox.list(100) if m.msg_id == msg_id)
    assert json.loads(sent.payload)["dropped"]["health_new"] >= dropped
    up.close()


def test_acks_that_cannot_be_written_on_a_full_disk_leave_the_byte_count_true(small_disk):
    """An ack whose COMMIT failed on a full disk left its rows in place but took their
    bytes off the outbox's count; every resend and failed ack took them off again (-42 KB
    after five tries with 62 KB queued). The quota then let the outbox grow past it by as
    much, and health carried a negative `used_bytes`. The count is the rows' own again
    after any transaction that did not commit."""
    box = open_outbox(small_disk / "state", quota_bytes=200_000)
    ids = [box.enqueue("exam", {"pad": "z" * 900}).msg_id for _ in range(60)]
    before = box.counts()["used_bytes"]
    filler = fill(small_disk)
    failed = 0
    for _ in range(5):
        try:
            box.ack(ids[:20])
        except Exception:  # noqa: BLE001  (the uplink catches it; the count must hold)
            failed += 1
    assert failed, "the disk was not full enough for the ack to fail"
    assert box.counts()["used_bytes"] == _rows_bytes(box) == before
    filler.unlink()
    assert box.ack(ids[:20]) == 20
    assert box.counts()["used_bytes"] == _rows_bytes(box) < before
    box.close()


def _rows_bytes(box) -> int:
    return box._db.execute("SELECT COALESCE(SUM(size), 0) + COUNT(*) * ? FROM outbox",
                           (ROW_OVERHEAD_BYTES,)).fetchone()[0]


def test_a_locked_outbox_refuses_one_message_and_hangs_no_other_thread(tmp_path):
    """Another process held the outbox's write lock (`sonoedge outbox --retry-rejected` on
    a slow card, a technician's sqlite3 shell) past the busy timeout: BEGIN IMMEDIATE
    failed inside `_Tx.__enter__` after its thread took the outbox's lock, and no
    `__exit__` ever gave it back. That message was refused, as it should be, but the next
    outbox call from any other thread (the loop's exam, the uplink's ack) waited for ever.
    """
    import sqlite3
    import threading

    from edge.store.outbox import OutboxError

    box = open_outbox(tmp_path)
    box._db.execute("PRAGMA busy_timeout=200")  # the 10 s of the field, shortened
    other = sqlite3.connect(str(tmp_path / "outbox.sqlite3"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(OutboxError, match="locked"):
        box.enqueue("health", {"n": 1})
    other.execute("ROLLBACK")
    other.close()
    done: list = []
    worker = threading.Thread(target=lambda: done.append(box.enqueue("health", {"n": 2})),
                              daemon=True)
    worker.start()
    worker.join(5.0)
    assert not worker.is_alive(), "the outbox stayed locked by the thread that was refused"
    assert done and done[0] is not None
    box.close()


def test_an_exam_the_outbox_cannot_take_now_is_held_not_lost(tmp_path, caplog):
    """Another process holding the outbox's write lock past the busy timeout (or an I/O
    error) refused the exam, which was logged and dropped: only the next start's requeue
    from the journal would have sent it. It is held in memory as for a full disk, said
    once, and queued, in order, as soon as the outbox takes it."""
    import sqlite3

    from tests.test_dates_correction import ENVELOPE
    from tests.test_outbox import exam_body

    uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path)
    uplink.outbox._db.execute("PRAGMA busy_timeout=200")  # the 10 s of the field, shortened
    other = sqlite3.connect(str(tmp_path / "outbox.sqlite3"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    bodies = []
    for exam_id in ("first", "second"):
        body = {k: v for k, v in exam_body().items() if k not in ENVELOPE}
        body["exam_id"] = exam_id
        bodies.append(body)
        assert uplink.enqueue_exam(body, key=exam_id) is None
    assert uplink.held == 2
    said = [r for r in caplog.records if "held in memory" in r.getMessage()]
    assert len(said) == 1 and "locked" in said[0].getMessage()
    assert uplink.flush_held() == 2  # still locked: still held, nothing lost
    other.execute("ROLLBACK")
    other.close()
    assert uplink.flush_held() == 0
    assert [json.loads(m.payload)["exam_id"] for m in uplink.outbox.list(10)] == [
        "first", "second"]
    uplink.close()
