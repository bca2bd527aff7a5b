"""A new technician and district IT walk the README's "Fleet" section (session 18).

What they met, as specifications: a district that publishes one bundle after another leaves
no old chunks retained at the broker; a bundle a device refuses over MQTT is said in its log,
named by version, and never fetched again after a restart; a full disk while the chunks
arrive is one line, frees the download's space and takes the offer up again later.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import threading
import time

import paho.mqtt.client as mqtt

from central.fleet import make_offer, peek, publish
from edge.fleet.agent import Download
from edge.fleet.bundle import BundleError
from tests.servers import Mosquitto
from tests.test_fleet import GROUP, device_config, fleet_kit  # noqa: F401  (fixture)
from tests.test_fleet_delivery import _agent, _secret
from wire.fleet import FLEET_PREFIX, offer_topic


def _retained(broker: Mosquitto, user: str, wait_s: float = 2.0) -> dict[str, int]:
    """Every retained topic under sonoedge-fleet/ the user may read, with its length."""
    seen: dict[str, int] = {}
    done = threading.Event()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                         client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, broker.passwords[user])
    client.on_connect = lambda c, *_: c.subscribe(f"{FLEET_PREFIX}/#", qos=1)
    client.on_message = lambda _c, _u, msg: seen.__setitem__(msg.topic, len(msg.payload))
    client.on_subscribe = lambda *_: done.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert done.wait(10), "no SUBACK"
        time.sleep(wait_s)  # retained messages follow the SUBACK
    finally:
        client.disconnect()
        client.loop_stop()
    return {topic: n for topic, n in seen.items() if n}


def test_publishing_a_second_bundle_leaves_none_of_the_first_ones_chunks_at_the_broker(
        tmp_path, fleet_kit):  # noqa: F811
    """The README: publish "then clears the chunks of the offer it replaced". With the
    publisher user board/provision.py made, it could not read the old offer (the ACL gave
    it write only), and it disconnected before the clearing messages were taken: every
    bundle ever published stayed retained, megabytes each."""
    broker = Mosquitto(tmp_path / "broker")
    broker.add_user("publisher-1", "central")
    broker.add_user("clinic7-box1", "device", group=GROUP)
    broker.start()
    try:
        pub = _secret(tmp_path, "publisher-1", broker.passwords["publisher-1"])
        url = f"mqtt://publisher-1@127.0.0.1:{broker.port}"
        chunk = 4096  # many chunks: the clearing messages must all be taken
        first = publish(fleet_kit["v1"], GROUP, url, str(pub), chunk_size=chunk, timeout_s=60)
        second = publish(fleet_kit["v2"], GROUP, url, str(pub), chunk_size=chunk,
                         timeout_s=60)
        held = _retained(broker, "clinic7-box1")
    finally:
        broker.stop(signal.SIGKILL)
    old = [t for t in held if f"/chunk/{first.bundle_id[:32]}/" in t]
    new = [t for t in held if f"/chunk/{second.bundle_id[:32]}/" in t]
    assert old == [], f"{len(old)} of {first.count} chunks of bundle 1.0 are still retained"
    assert len(new) == second.count and offer_topic(GROUP) in held


def _serve_all(agent, data: bytes, size: int) -> None:
    """Answer the agent's chunk subscriptions as the broker's retained chunks would."""
    while agent.download is not None and (
            wanted := sorted((t for t in agent.uplink.topics if "/chunk/" in t),
                             key=lambda t: int(t.rsplit("/", 1)[1]))):
        index = int(wanted[0].rsplit("/", 1)[1])
        agent._received(wanted[0], data[index * size:(index + 1) * size])
        agent._drain_inbox()


def test_a_bundle_refused_over_mqtt_is_said_by_version_and_not_fetched_after_a_restart(
        tmp_path, fleet_kit, caplog):  # noqa: F811
    """A bundle signed by a key the device does not trust, published without --keys.
    Before: no line in the log at all (Fleet.install had stored the same error, so the
    agent thought it said already), the district saw only the download's path, and the
    refusal was not saved: every restart fetched the bundle again over the clinic's link."""
    intruder = fleet_kit["root"] / "other-keys" / "intruder.key"
    evil = fleet_kit["make"]("walk-evil", "7.0", key_path=intruder)
    size = 32 * 1024
    offer, _ = make_offer(evil, peek(evil, GROUP), size)
    payload = json.dumps(offer.to_dict()).encode()
    config = device_config(tmp_path, fleet_kit)
    agent = _agent(config, fleet_kit)
    with caplog.at_level(logging.INFO, logger="sonoedge.fleet"):
        agent._received(offer_topic(GROUP), payload)
        agent._drain_inbox()
        _serve_all(agent, evil.read_bytes(), size)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert said == ["fleet: bundle 7.0 from the district refused: bad signature: not signed "
                    "by any trusted key (tampered, or a wrong key)"], said
    assert agent.fleet.status()["error"].startswith("bundle 7.0 from the district refused")
    assert agent.fleet.status()["bundle"] == "factory"
    on_disk = json.loads((agent.fleet.root / "state.json").read_text())
    assert offer.bundle_id in on_disk["refused_ids"]
    # the loop starts again (a power cut, the watchdog): the retained offer comes again
    again = _agent(config, fleet_kit)
    again._received(offer_topic(GROUP), payload)
    again._drain_inbox()
    assert again.download is None and not any("/chunk/" in t for t in again.uplink.topics)


def test_chunks_that_do_not_make_the_offered_bundle_are_fetched_again_later_not_refused(
        tmp_path, fleet_kit, monkeypatch):  # noqa: F811
    """Chunks that pass their own hashes but do not make up the offered bundle say nothing
    of the bundle (its signature is never reached). Before: refused at once and for good,
    so whoever could garble one assembly kept a good bundle off the box. Now it waits
    poll_min (doubling with each garbled download in a row), lets the broker's retained
    copy of the offer pass meanwhile, then fetches it again and installs."""
    config = device_config(tmp_path, fleet_kit, poll_min=0.5)
    data = fleet_kit["v2"].read_bytes()
    size = 16 * 1024
    offer, _ = make_offer(fleet_kit["v2"], peek(fleet_kit["v2"], GROUP), size)
    payload = json.dumps(offer.to_dict()).encode()
    agent = _agent(config, fleet_kit)
    real_assemble = Download.assemble

    def garbled(self):
        raise BundleError("the chunks do not make up the offered bundle (sha256 differs)")

    monkeypatch.setattr(Download, "assemble", garbled)
    agent._received(offer_topic(GROUP), payload)
    agent._drain_inbox()
    _serve_all(agent, data, size)
    assert offer.bundle_id not in agent.fleet.state.get("refused_ids", [])
    assert "1 garbled download in a row, fetched again in 0.5 min" in \
        agent.fleet.status()["error"]
    assert agent.download is None
    agent._received(offer_topic(GROUP), payload)  # a reconnect: the retained offer again
    agent._drain_inbox()
    assert agent.download is None  # still waiting
    monkeypatch.setattr(Download, "assemble", real_assemble)
    agent.poll_once(31.0)
    assert agent.download is not None and agent.download.offer.bundle_id == offer.bundle_id
    _serve_all(agent, data, size)
    assert agent.fleet.status()["bundle"] == "2.0" and agent.restart.is_set()


def test_a_full_disk_while_chunks_arrive_is_one_line_frees_the_space_and_retries_later(
        tmp_path, fleet_kit, monkeypatch, caplog):  # noqa: F811
    """The card fills while the bundle's chunks arrive. Before: a traceback per chunk, the
    chunks kept on the full card, and the download stalled until the loop restarted, with
    nothing in health for the district."""
    config = device_config(tmp_path, fleet_kit, poll_min=0.5)
    data = fleet_kit["v2"].read_bytes()
    size = 16 * 1024
    offer, _ = make_offer(fleet_kit["v2"], peek(fleet_kit["v2"], GROUP), size)
    agent = _agent(config, fleet_kit)
    real_accept = Download.accept

    def full_after_three(self, index: int, payload: bytes) -> bool:
        if index >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_accept(self, index, payload)

    monkeypatch.setattr(Download, "accept", full_after_three)
    with caplog.at_level(logging.INFO, logger="sonoedge.fleet"):
        agent._received(offer_topic(GROUP), json.dumps(offer.to_dict()).encode())
        agent._drain_inbox()
        _serve_all(agent, data, size)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.exc_info for r in errors] == [None], [r.getMessage() for r in errors]
    assert "cannot keep chunk 3 (No space left on device)" in errors[0].getMessage()
    assert "again in 0.5 min" in agent.fleet.status()["error"]
    assert agent.download is None and not (agent.fleet.root / "download").exists()
    assert offer.bundle_id not in agent.fleet.state.get("refused_ids", [])

    monkeypatch.setattr(Download, "accept", real_accept)  # room again
    agent.poll_once(31.0)
    assert agent.download is not None and agent.download.offer.bundle_id == offer.bundle_id
    _serve_all(agent, data, size)
    assert agent.fleet.status()["bundle"] == "2.0" and agent.restart.is_set()



def test_a_bundle_that_needs_a_newer_app_is_taken_once_the_app_is_upgraded_not_before(
        tmp_path, fleet_kit, monkeypatch):  # noqa: F811
    """The district ships models that need sonoedge 99.0; the box runs an older one and
    refuses them, and does not fetch them again at each restart. The technician upgrades
    sonoedge on site: the same retained offer is now taken, with no new bundle made."""
    import edge.fleet.agent as agent_module
    import edge.fleet.slots as slots_module

    newer = fleet_kit["make"]("walk-newer-app", "8.0", min_app="99.0")
    size = 32 * 1024
    offer, _ = make_offer(newer, peek(newer, GROUP), size)
    payload = json.dumps(offer.to_dict()).encode()
    config = device_config(tmp_path, fleet_kit)
    agent = _agent(config, fleet_kit)
    agent._received(offer_topic(GROUP), payload)
    agent._drain_inbox()
    _serve_all(agent, newer.read_bytes(), size)
    assert "needs sonoedge 99.0 or newer" in agent.fleet.status()["error"]
    assert agent.fleet.status()["bundle"] == "factory"

    restarted = _agent(config, fleet_kit)  # the same app: not fetched again
    restarted._received(offer_topic(GROUP), payload)
    restarted._drain_inbox()
    assert restarted.download is None

    for module in (agent_module, slots_module):  # sonoedge upgraded on the box
        monkeypatch.setattr(module, "app_version", lambda: "99.0")
    upgraded = _agent(config, fleet_kit)
    upgraded._received(offer_topic(GROUP), payload)
    upgraded._drain_inbox()
    _serve_all(upgraded, newer.read_bytes(), size)
    assert upgraded.fleet.status()["bundle"] == "8.0" and upgraded.restart.is_set()


def test_a_failed_selftest_says_which_output_is_the_devices_and_which_the_bundles(
        tmp_path, fleet_kit, monkeypatch):  # noqa: F811
    """A district machine that scored the frames differently (here: it wrote 'Femur').
    The line was "plane 'Brain (Tv.)' vs 'Femur'": the district could not tell whether its
    bundle or the box said Femur."""
    from edge.fleet import selftest
    from edge.fleet.bundle import make_bundle
    from tests.cli_run import one_line_error, sonoedge
    from tests.test_fleet import FRAME

    honest = selftest.score_selftest
    monkeypatch.setattr(selftest, "score_selftest", lambda *a, **k: [
        {**out, "plane": "Femur", "hc_mm": 99.0} for out in honest(*a, **k)])
    lying = tmp_path / "lying.bundle"
    make_bundle(fleet_kit["models"], fleet_kit["key"], lying, version="9.0", group=GROUP,
                min_app_version="0.1.0", frames=[FRAME], pixel_size_mm=0.12)
    monkeypatch.undo()
    out = sonoedge("bundle", "install", str(lying), "--config",
                   str(device_config(tmp_path, fleet_kit)))
    one_line_error(out, "bundle 9.0 failed its self-test, factory stays",
                   "plane 'Brain (Tv.)' here, the bundle expects 'Femur'",
                   "here, the bundle expects 99.0 (+-1)")
