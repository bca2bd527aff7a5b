"""Nothing a box's outbox accepted is lost when the broker drops what it acknowledged.

A red-team review with real Mosquitto: the outbox deleted an exam summary on the broker's
PUBACK, but the broker may still drop a message it acknowledged. When the collector's
persistent session queue overflows (``max_queued_messages``: a rogue box flooding it, or a
long weekend with the collector or its database down), the broker logs "Outgoing messages
are being dropped for client central", and the good box's exams were gone: its outbox
empty, the collector stored 1 of 14.

Now the collector sends each device a receipt (``sonoedge-receipt/<device_id>``,
wire/receipt.py) for the exam and dates messages it has settled; the box keeps them, as
sent, until their receipt and sends again those without one after ``resend_after_s``.
Real Mosquitto with the provisioned ACL, the real collector, the real outbox and uplink.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from board.provision import main as provision_main
from board.provision import provision, read_acl
from edge.config import ConfigError, load_settings
from edge.exam import tally
from edge.store.outbox import Outbox
from edge.uplink.mqtt import MqttSettings, Uplink
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import DEVICES, produced_file, produced_ids, run_device, stored
from tests.conftest_mqtt import wait_for as wait
from tests.device_sim import frame_result
from tests.servers import Mosquitto
from tests.test_uplink_scenarios import publish_wait

broker, collectors = fx.broker, fx.collectors  # fixtures

RECEIPTS = "sonoedge-receipt"


def _client(broker, user: str, subscribe: str | None = None, keep_session: bool = False
            ) -> tuple[mqtt.Client, list]:
    """A plain MQTT client logged in as `user` (its client id is its user name at this
    broker), reading `subscribe` (QoS 1) into the list returned with it."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(user, broker.passwords[user])
    got: list = []
    granted: list = []
    client.on_message = lambda _c, _u, msg: got.append((msg.topic, bytes(msg.payload)))
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.extend(codes)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 86400 if keep_session else 0
    client.connect("127.0.0.1", broker.port, clean_start=not keep_session, properties=props)
    client.loop_start()
    wait(client.is_connected, 5, f"{user} connected")
    if subscribe:
        client.subscribe(subscribe, qos=1)
        wait(lambda: granted, 5, f"the SUBACK to {user}")
    return client, got


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _receipt(device: str, ids: list[str]) -> bytes:
    return json.dumps({"schema": 1, "kind": "receipt", "device_id": device,
                       "msg_ids": ids}).encode()


def _exam_ids(state) -> set[str]:
    path = produced_file(state)
    return {line.split()[0] for line in path.read_text().splitlines()
            if line.split()[1:] == ["exam"]}


# 1 -------------------------------------------------------------------------------------------
def test_exams_the_broker_dropped_from_the_collectors_full_queue_are_sent_again_and_stored_once(
        collectors, tmp_path):
    """The collector's queue at the broker holds 10 messages; the box sends 30 exams while
    the collector is away, and the broker drops all but 10 of its messages. The box kept
    them (sent, no receipt): once the collector is back, every exam it ever produced is
    stored, once. (Before receipts: 11 of 32.)"""
    m = Mosquitto(tmp_path / "broker", max_queued=10)
    for dev in DEVICES:
        m.add_user(dev, "device")
    m.add_user("central", "central")
    m.start()
    try:
        db = str(tmp_path / "central.sqlite3")
        state = tmp_path / "dev-a"
        c = collectors(m.url("central"), db, tmp_path, "central")
        c.wait_subscribed()  # its persistent session (its subscription) is at the broker
        # A box in service: its exams stored, and a receipt has come from the district.
        run_device(state, m.url("dev-a"), frames=50, exam_every=25, health_every=1000,
                   wait_receipts=20)
        c.stop()
        # The collector away; the box sends 30 exams, the broker takes every one of them.
        away = run_device(state, m.url("dev-a"), frames=60, exam_every=2, health_every=1000,
                          drain_timeout=30)
        assert away["drained"] is True and away["pending"] == 0, away
        wait(lambda: "Outgoing messages are being dropped for client central" in m.log_text(),
             10, "the broker to drop what overflows the collector's queue")
        want = _exam_ids(state)
        assert len(want) == 32
        # The collector back: it stores what the broker kept, and says so to the box.
        (tmp_path / "back").mkdir()
        back = collectors(m.url("central"), db, tmp_path / "back", "central")
        back.wait_subscribed()
        wait(lambda: len(stored(db, "dev-a", ("exam",))) >= 10, 20, "the queued exams stored")
        # The box again: the receipts wait in its session, the rest are sent again after
        # its resend_after_s (1 s here; 6 h in the field).
        again = run_device(state, m.url("dev-a"), frames=0, resend_after_s=1,
                           wait_receipts=40, drain_timeout=20)
        end = time.monotonic() + 20
        while len(stored(db, "dev-a", ("exam",))) < len(want) and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        m.stop(signal.SIGKILL)
    rows = stored(db, "dev-a", ("exam",))
    got = {r[0] for r in rows}
    assert got == want, f"stored {len(got & want)} of the {len(want)} exams dev-a produced"
    assert len(rows) == len(want)  # each once
    assert away.get("awaiting_receipt") == 30, away  # kept after their PUBACK
    assert again["awaiting_receipt"] == 0 and again["used_bytes"] == 0, again
    assert "had no receipt from the district" in again["log"]


# 2 -------------------------------------------------------------------------------------------
def test_a_box_whose_collector_sends_no_receipts_empties_its_outbox_on_puback_as_before(
        broker, tmp_path):
    """An older collector (here a plain subscriber) sends no receipts: the box deletes every
    message on its PUBACK, as before receipts, and keeps nothing waiting. Only once a
    receipt has come from its district does it keep its exams until theirs."""
    old, got = _client(broker, "central", "sonoedge/+/+")
    try:
        state = tmp_path / "dev-a"
        first = run_device(state, broker.url("dev-a"), frames=100, exam_every=10,
                           dates_every=2, drain_timeout=20)
        assert first["drained"] is True, first
        assert first["used_bytes"] == 0 and first.get("awaiting_receipt", 0) == 0, first
        wait(lambda: {json.loads(p)["msg_id"] for t, p in got
                      if not t.endswith("/status")} >= produced_ids(state), 10,
             "every message at the old collector")
        # The district's collector is upgraded: a receipt comes (for nothing the box holds).
        publish_wait(old, f"{RECEIPTS}/dev-a", _receipt("dev-a", [str(uuid.uuid4())]))
        before = set(produced_ids(state))
        second = run_device(state, broker.url("dev-a"), frames=100, exam_every=10,
                            drain_timeout=20)
    finally:
        _close(old)
    exams = len(_exam_ids(state) - before)
    assert exams == 10
    # health went on its PUBACK; the exams wait for their receipt
    assert second["drained"] is True and second["pending"] == 0, second
    assert second.get("awaiting_receipt", 0) == exams, second
    assert second["by_kind"] == {"sent/exam": exams}, second


# 3 -------------------------------------------------------------------------------------------
def _uplink(broker, state) -> Uplink:
    settings = MqttSettings(url=broker.url("dev-a"), device_id="dev-a", clinic_id="clinic-1",
                            reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=3)
    return Uplink(settings, state, {"plane_student": "1.0.0"})


def _exam(uplink: Uplink) -> str:
    results = [frame_result(i) for i in range(20)]
    now, mono = time.time(), time.monotonic()
    return uplink.enqueue_exam(tally.summarize_exam(results, "clip.mp4", now - 20, now,
                                                    started_mono=mono - 20, ended_mono=mono,
                                                    model_versions=uplink.model_versions))


HOSTILE = {
    "oversized": _receipt("dev-a", [str(uuid.uuid4())]) + b" " * 9000,
    "nested deep": b"[" * 64 + b"]" * 64,
    "not JSON": b"\xff\xfe{",
    "a key twice": b'{"schema":1,"kind":"receipt","device_id":"dev-a","device_id":"dev-a",'
                   b'"msg_ids":[]}',
    "ids not a list": json.dumps({"schema": 1, "kind": "receipt", "device_id": "dev-a",
                                  "msg_ids": "all"}).encode(),
    "ids not strings": json.dumps({"schema": 1, "kind": "receipt", "device_id": "dev-a",
                                   "msg_ids": [1, True, None, {"a": 1}]}).encode(),
    "an id with a forged log line": _receipt("dev-a", ["x\nCRITICAL forged"]),
    "too many ids": _receipt("dev-a", [str(uuid.uuid4()) for _ in range(101)]),
    "a list": b"[]",
}


def test_a_hostile_receipt_is_one_log_line_and_changes_nothing(broker, tmp_path, caplog):
    """What a receipt holds is hostile input: oversized, nested, not JSON, of the wrong
    types, or another box's. Each is one log line and deletes nothing; a receipt that names
    only ids the box does not hold changes nothing either. The box still takes the
    district's real receipt afterwards."""
    caplog.set_level(logging.INFO)
    collector, _ = _client(broker, "central", "sonoedge/+/+")  # routes the box's PUBACKs
    uplink = _uplink(broker, tmp_path / "dev-a")
    uplink.start()
    try:
        # a first receipt (for nothing it holds): the box now keeps exams until theirs
        wait(lambda: publish_wait(collector, f"{RECEIPTS}/dev-a",
                              _receipt("dev-a", [str(uuid.uuid4())]))
             and uplink.outbox.receipts_seen(), 10, "the district's first receipt",
             interval_s=0.3)  # sent again until the box has subscribed
        ids = [_exam(uplink) for _ in range(3)]
        wait(lambda: uplink.outbox.awaiting_receipt_count() == 3, 10, "3 exams sent")
        caplog.clear()
        hostile = {**HOSTILE,
                   "another box's, naming this box's exams": _receipt("dev-b", ids)}
        for payload in hostile.values():
            publish_wait(collector, f"{RECEIPTS}/dev-a", payload)
        wait(lambda: len([r for r in caplog.records if "receipt" in r.getMessage()])
             >= len(hostile), 10, "a line for each hostile receipt")
        publish_wait(collector, f"{RECEIPTS}/dev-a",
                 _receipt("dev-a", [str(uuid.uuid4()) for _ in range(100)]))
        time.sleep(0.5)
        lines = [r for r in caplog.records if "receipt" in r.getMessage()]
        assert len(lines) == len(hostile), [r.getMessage() for r in lines]
        assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage()
                   and not r.exc_info for r in lines)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert uplink.outbox.awaiting_receipt_count() == 3  # nothing deleted
        # the district's own receipt still works: the uplink is alive and well
        publish_wait(collector, f"{RECEIPTS}/dev-a", _receipt("dev-a", ids))
        wait(lambda: uplink.outbox.counts()["used_bytes"] == 0, 10, "the exams receipted")
    finally:
        uplink.close()
        _close(collector)


# 4 -------------------------------------------------------------------------------------------
def test_another_box_can_neither_read_nor_write_a_boxs_receipts(broker):
    """The ACL from board/provision.py: a box reads its own receipts only, and only central
    users write receipts."""
    box, mine = _client(broker, "dev-a", f"{RECEIPTS}/dev-a", keep_session=True)
    spy, seen = _client(broker, "dev-b", f"{RECEIPTS}/#")
    central, _ = _client(broker, "central")
    try:
        spy.subscribe(f"{RECEIPTS}/dev-a", qos=1)
        time.sleep(0.3)
        forged = publish_wait(spy, f"{RECEIPTS}/dev-a", _receipt("dev-a", [str(uuid.uuid4())]))
        own = publish_wait(box, f"{RECEIPTS}/dev-a", _receipt("dev-a", [str(uuid.uuid4())]))
        real = _receipt("dev-a", [str(uuid.uuid4())])
        assert not publish_wait(central, f"{RECEIPTS}/dev-a", real).is_failure
        wait(lambda: mine, 5, "the box's own receipt")
        time.sleep(0.5)
    finally:
        for c in (box, spy, central):
            _close(c)
    assert str(forged) == "Not authorized" and str(own) == "Not authorized"
    assert mine == [(f"{RECEIPTS}/dev-a", real)]  # the district's, nothing forged
    assert seen == []


def test_an_acl_written_before_receipts_gives_its_users_theirs_when_rewritten(tmp_path):
    """`--rewrite-acl` (changing no password), or provisioning one more user, rewrites the
    ACL: the users already there get the receipt rules too."""
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    before = ("user central-1\ntopic read sonoedge/#\ntopic readwrite sonoedge-fleet/#\n"
              "\nuser box-1\ntopic write sonoedge/box-1/#\n")
    acl.write_text(before)
    assert read_acl(acl)[0] == {"central-1": "central", "box-1": "device"}
    assert provision_main(["--passwd", str(pw), "--acl", str(acl), "--rewrite-acl"]) == 0
    assert f"user box-1\ntopic write sonoedge/box-1/#\ntopic read {RECEIPTS}/box-1\n" \
        in acl.read_text() and not pw.exists()
    acl.write_text(before)
    provision(pw, acl, "box-2", "device")
    text = acl.read_text()
    assert "user central-1\ntopic read sonoedge/#\ntopic readwrite sonoedge-fleet/#\n" \
           f"topic write {RECEIPTS}/#\n" in text
    for box in ("box-1", "box-2"):
        assert f"user {box}\ntopic write sonoedge/{box}/#\ntopic read {RECEIPTS}/{box}\n" \
               in text
    assert f"{RECEIPTS}/#" not in text.split("user box-1")[1]  # no box reads every receipt


# the outbox and the setting, without a broker -------------------------------------------------
def test_an_outbox_from_before_receipts_opens_migrated_with_its_messages_still_queued(tmp_path):
    """A layout-1 outbox (no `sent_ts`, no receipts flag, no `unconfirmed`) gains them at
    open; what it held is still queued, and it deletes on PUBACK until a receipt comes
    (keeping the id of the exam so deleted, unconfirmed)."""
    path = tmp_path / "outbox.sqlite3"
    old = Outbox(path)
    queued = [old.enqueue("exam", {"n": n}).msg_id for n in range(2)]
    old.close()
    conn = sqlite3.connect(path)  # as layout 1 left it
    conn.execute("ALTER TABLE outbox DROP COLUMN sent_ts")
    conn.execute("DELETE FROM meta WHERE key IN ('receipts', 'unconfirmed_forgotten')")
    conn.execute("DROP TABLE unconfirmed")
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'layout'")
    conn.commit()
    conn.close()
    box = Outbox(path)
    assert [m.msg_id for m in box.pending(10)] == queued and not box.receipts_seen()
    assert box._db.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone() == (3,)
    box.ack(queued[:1])
    assert box.counts()["by_kind"] == {"pending/exam": 1}  # deleted: no receipt seen yet
    assert box.exam_counts()["unconfirmed"] == 1
    box.receipt([])
    box.ack(queued[1:])
    assert box.counts()["by_kind"] == {"sent/exam": 1} and box.awaiting_receipt_count() == 1


def test_sent_exams_count_toward_the_quota_and_health_still_goes_before_any_exam(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", quota_bytes=4096)
    box.receipt([])
    sent = [box.enqueue("exam", {"pad": "x" * 300, "n": n}).msg_id for n in range(3)]
    box.ack(sent)
    box.enqueue("health", {"pad": "h" * 300})
    assert box.counts()["by_kind"] == {"pending/health": 1, "sent/exam": 3}
    used = box.counts()["used_bytes"]
    while box.counts()["dropped_health"] == 0:  # filled with pending exams: health first
        box.enqueue("exam", {"pad": "y" * 300})
    assert box.counts()["dropped_exam"] == 0 and box.awaiting_receipt_count() == 3
    assert used < box.counts()["used_bytes"] <= 4096
    box.enqueue("exam", {"pad": "z" * 300})  # no health left: an exam, a sent one first
    assert box.counts()["dropped_exam"] == 1 and box.awaiting_receipt_count() == 2
    assert sent[0] not in {m.msg_id for m in box.list()}


def test_a_sent_exam_without_a_receipt_goes_back_to_pending_after_resend_after_s(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    box.receipt([])
    msg_id = box.enqueue("exam", {"n": 1}).msg_id
    box.ack([msg_id])
    now = time.time()
    assert box.resend_unreceipted(3600, now=now + 3500) == 0
    assert box.resend_unreceipted(3600, now=now + 3601) == 1
    assert [m.msg_id for m in box.pending(10)] == [msg_id]
    box.ack([msg_id])
    # the clock stepped back since it was sent: waiting out the hour from then could take
    # months, so it goes again now
    assert box.resend_unreceipted(3600, now=now - 3 * 86400) == 1
    box.ack([msg_id])
    assert box.receipt([msg_id, str(uuid.uuid4())]) == 1 and box.counts()["used_bytes"] == 0


@pytest.mark.parametrize("value", [0, 0.5, -1, 31 * 86400, float("nan"), float("inf")])
def test_a_resend_after_s_out_of_range_is_one_line_naming_the_key(tmp_path, value):
    with pytest.raises(ValueError) as caught:
        Uplink(MqttSettings(device_id="dev-a", resend_after_s=value), tmp_path)
    (line,) = str(caught.value).splitlines()
    assert line.startswith("mqtt.resend_after_s must be from 1 to 2592000 seconds, got"), line
    config = tmp_path / "device.toml"
    config.write_text(f"[mqtt]\nresend_after_s = {value!r}\n")  # nan, inf: TOML's too
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    (line,) = str(caught.value).splitlines()
    assert "mqtt: mqtt.resend_after_s must be from 1 to 2592000 seconds" in line, line
