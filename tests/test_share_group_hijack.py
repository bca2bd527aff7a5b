"""A device cannot take the district's messages by joining the collectors' share group.

A red-team review: Mosquitto grants any user's SUBSCRIBE and checks the ACL only when it
delivers. A box (its credentials, its ACL: publish under its own prefix, read nothing)
subscribed to ``$share/sonoedge/sonoedge/+/+`` with a persistent session, the collectors'
publicly known group, and went away: the broker dealt it its turn of every message,
dropped each one at delivery (the ACL), and had already acknowledged them to their boxes,
whose outboxes were empty. The collector stored 0 of a box's 28 messages.

The collector now subscribes plainly unless given a share group, and a share group is a
secret of at least 16 characters. Real Mosquitto with the provisioned ACL, the real
collector, a real device's outbox and uplink (tests.device_sim).
"""

from __future__ import annotations

import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests import conftest_mqtt as fx
from tests.conftest_mqtt import REPO, SHARE_GROUP, produced_ids, py_env, run_device, stored
from tests.conftest_mqtt import wait_for as wait

broker, collectors = fx.broker, fx.collectors  # fixtures

ROGUE = "dev-b"  # a provisioned box: publishes under sonoedge/dev-b/, reads nothing


def _join_and_leave(broker, share_filter: str, user: str = ROGUE) -> None:
    """`user` (the rogue box) subscribes with a session kept for a week, then disconnects:
    the broker keeps its place in the group and queues (and drops) its turns."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(user, broker.passwords[user])
    granted: list = []
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: granted.extend(codes)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 7 * 86400
    client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
    client.loop_start()
    try:
        wait(client.is_connected, 5, "the rogue box connected")
        client.subscribe(share_filter, qos=1)
        wait(lambda: granted, 5, "the broker's answer to its SUBSCRIBE")
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("share", [False, True], ids=["one collector", "a secret group"])
def test_a_box_in_the_old_public_share_group_takes_none_of_another_boxs_messages(
        broker, collectors, tmp_path, share):
    _join_and_leave(broker, "$share/sonoedge/sonoedge/+/+")
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1", share=share)
    c.wait_subscribed()
    state = tmp_path / "dev-a"
    result = run_device(state, broker.url("dev-a"), frames=200, drain_timeout=20)
    assert result["drained"], result
    want = produced_ids(state)
    assert len(want) >= 10
    got = wait(lambda: (ids := {r[0] for r in stored(db, "dev-a")}) >= want and ids, 20,
               "every message of dev-a stored")
    assert got == want
    assert not c.dead() and "Traceback" not in c.log_text()


def test_a_collector_upgraded_from_the_public_group_still_stores_every_message(
        broker, collectors, tmp_path):
    """Its broker session (client id = its user) still holds the old default's shared
    subscription; the new plain one beside it receives every message."""
    _join_and_leave(broker, "$share/sonoedge/sonoedge/+/+", user="central")  # as it was
    _join_and_leave(broker, "$share/sonoedge/sonoedge/+/+")  # the rogue box joins it
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central")
    c.wait_subscribed()
    state = tmp_path / "dev-a"
    assert run_device(state, broker.url("dev-a"), frames=200, drain_timeout=20)["drained"]
    want = produced_ids(state)
    wait(lambda: {r[0] for r in stored(db, "dev-a")} >= want, 20, "every message stored")
    rows = stored(db, "dev-a")
    assert len(rows) == len({r[0] for r in rows}) == len(want)  # each once
    # and received once: the old shared subscription was dropped from its session (kept,
    # every message came twice for ever, each a silent duplicate)
    c.stop()
    (stats,) = [ln for ln in c.log_text().splitlines() if "stopping:" in ln]
    assert "'duplicates': 0," in stats, stats


@pytest.mark.parametrize("group", ["sonoedge", "district-a-grp"])
def test_a_share_group_short_enough_to_guess_is_one_warning_and_a_plain_subscription(
        broker, collectors, tmp_path, group):
    """Not refused: a unit file of the old default (`--share-group sonoedge`) would leave
    the district without a collector after an upgrade (the review). One line says why, and
    the collector subscribes plainly: a box in the old group takes nothing from it."""
    _join_and_leave(broker, "$share/sonoedge/sonoedge/+/+")
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central",
                   extra=("--share-group", group))
    c.wait_subscribed()
    assert "subscribed to sonoedge/+/+ " in c.log_text(), c.log_text()[-2000:]
    (line,) = [ln for ln in c.log_text().splitlines() if "--share-group" in ln]
    assert "can be guessed" in line and "subscribing plainly instead" in line, line
    state = tmp_path / "dev-a"
    assert run_device(state, broker.url("dev-a"), frames=200, drain_timeout=20)["drained"]
    want = produced_ids(state)
    wait(lambda: {r[0] for r in stored(db, "dev-a")} >= want, 20, "every message stored")


def test_the_group_is_read_from_a_file_only_the_collector_reads(tmp_path):
    secret = tmp_path / "share-group"
    secret.write_text(SHARE_GROUP + "\n")
    secret.chmod(0o644)
    args = [sys.executable, "-m", "central.cli", "--mqtt-url", "mqtt://127.0.0.1:1", "--db",
            str(tmp_path / "c.sqlite3"), "--share-group-file", str(secret), "--duration-s",
            "1"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=py_env(),
                         cwd=str(REPO))
    (line,) = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "--share-group-file" in line and "chmod 600" in line, line
    secret.chmod(0o600)
    started = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=py_env(),
                         cwd=str(REPO))
    # taken: the collector runs its second (no broker there: it only retries) and ends
    assert out.returncode == 0, out.stderr[-2000:]
    assert time.monotonic() - started >= 1.0 and "Traceback" not in out.stderr
