"""Review of the fleet side (S32): what health says after a rollback or a refused bundle,
which set a damaged one is replaced with, and an older offer that was ignored without a word.
Each test states the behaviour the device must have."""

# ruff: noqa: F811  (the fleet_kit fixture, imported from tests.test_fleet)
from __future__ import annotations

import json
import logging
import os
import time

import pytest

from central.dashboard.queries import DeviceRow, device_flags
from central.dashboard.store import _health_digest
from edge.fleet.slots import STATE_FILE, check_set
from tests.test_fleet import GROUP, device_config, fleet_kit, fleet_of  # noqa: F401
from tests.test_fleet_delivery import _agent
from wire.fleet import BundleError, offer_topic


def _flags(status: dict) -> list[str]:
    """What the district's devices page makes of a health message carrying this status."""
    now = time.time()
    row = DeviceRow("dev-a", "clinic-7", now, "online", now, 0, 0, 0, 0, 5000.0, 40.0, {},
                    _health_digest({"fleet": status})["bundle"], now)
    return device_flags(row, now)


def _valid_health(status: dict) -> None:
    from edge.uplink.messages import build_health, envelope
    from wire.schema import load_schema, validate

    payload = build_health(envelope("health", "dev-a", "c", "boot"), {}, {}, {}, 1.0, {},
                           1.0, 60.0, fleet=status)
    payload |= {"msg_id": "00000000-0000-4000-8000-000000000000", "seq": 1}
    assert validate(payload, load_schema("health")) == []


def _crash_roll_back(tmp_path, kit, bundle):
    """Install `bundle`, then the loop crashes on it once (crash_limit 1): rolled back."""
    fleet = fleet_of(tmp_path, crash_limit=1, trial_min=0.1)
    fleet.ensure(kit["models"])
    fleet.install(bundle, _keys(kit))
    fleet.state["trial"]["running"] = True  # the loop did not end cleanly
    fleet.save()
    line = fleet_of(tmp_path, crash_limit=1, trial_min=0.1).on_start()
    assert line and "rolled back from 2.0" in line


def _keys(kit):
    from edge.fleet.keys import load_trusted_keys

    return load_trusted_keys(kit["trusted"])


# -- 1. a rollback is history once a newer bundle is confirmed ------------------------------


def test_a_rollback_stops_being_reported_once_a_newer_bundle_is_confirmed(tmp_path,
                                                                          fleet_kit):
    """Was: 2.0 rolled back, 3.0 confirmed, and every health message still carried the 2.0
    rollback, so the dashboard flagged the box 'bundle rolled back' for ever."""
    _crash_roll_back(tmp_path, fleet_kit, fleet_kit["v2"])
    fleet = fleet_of(tmp_path, crash_limit=1, trial_min=0.1)
    status = fleet.status()
    assert status["rollback"]["from"] == "2.0" and "bundle rolled back" in _flags(status)

    fleet.install(fleet_kit["make"]("v3", "3.0"), _keys(fleet_kit))
    fleet.on_start()
    assert fleet.tick(7.0)  # 3.0 confirmed
    fleet.on_clean_exit()
    status = fleet_of(tmp_path, crash_limit=1, trial_min=0.1).status()
    assert status["bundle"] == "3.0" and status["state"] == "confirmed"
    assert "rollback" not in status and "error" not in status, status
    assert _flags(status) == []
    _valid_health(status)
    # kept in state.json's bounded history, not lost
    state = json.loads((fleet.root / STATE_FILE).read_text())
    assert "rollback" not in state
    assert [(e["what"], e["from"]) for e in state["history"]] == [("rollback", "2.0")]


def test_a_stale_rollback_left_by_the_old_code_is_history_at_the_next_start(tmp_path,
                                                                           fleet_kit):
    """A state.json written before the fix (3.0 confirmed, the 2.0 rollback still there)
    stops flagging the box at the next start."""
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    fleet.install(fleet_kit["v2"], _keys(fleet_kit))
    fleet.tick(601.0)  # 2.0 confirmed
    fleet.state["rollback"] = {"from": "1.0", "to": "factory", "reason": "crashed", "ts": 1.0}
    fleet.save()
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])  # the loop's start
    status = fleet.status()
    assert status["bundle"] == "2.0" and "rollback" not in status, status
    assert fleet.state["history"][-1]["from"] == "1.0"


def test_a_failed_selftest_is_a_refusal_not_a_rollback(tmp_path, fleet_kit, monkeypatch):
    """The self-test refusing a bad bundle is the safety net working: the bundle never ran.
    Was: reported as a rollback, the box flagged 'bundle rolled back' and 'bundle error'."""
    from edge.fleet import selftest

    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    monkeypatch.setattr(selftest, "run_selftest",
                        lambda *a, **k: (["BRAIN-TV.png: plane 'Brain (Tv.)' here"], [], ""))
    with pytest.raises(BundleError, match="failed its self-test"):
        fleet.install(fleet_kit["v2"], _keys(fleet_kit))
    monkeypatch.undo()
    status = fleet_of(tmp_path).status()
    assert status["bundle"] == "factory" and os.readlink(fleet.current) == "slots/a/models"
    assert "rollback" not in status, status
    assert status["error"].startswith("bundle 2.0 failed its self-test, factory stays")
    assert _flags(status) == ["bundle error"]
    _valid_health(status)
    assert fleet_of(tmp_path).state["history"][-1]["what"] == "refused"
    # still never taken again
    with pytest.raises(BundleError, match="not newer than 2.0"):
        fleet_of(tmp_path).install(fleet_kit["v2"], _keys(fleet_kit))


# -- 2. a damaged set is never replaced with the rolled-back one ----------------------------


def _flip_a_byte(models):
    model = next(models.glob("*.tflite"))
    data = bytearray(model.read_bytes())
    data[1000] ^= 0xFF
    model.write_bytes(bytes(data))


def test_a_damaged_set_is_replaced_by_the_factory_set_not_the_rolled_back_one(tmp_path,
                                                                             fleet_kit):
    """Was: slot a (factory) damaged on the card after 2.0 was rolled back, and the next
    start switched to slot b, 2.0, the set that crashed the loop, as 'confirmed' with no
    trial: a crash loop on it could never roll back again."""
    _crash_roll_back(tmp_path, fleet_kit, fleet_kit["v2"])
    fleet = fleet_of(tmp_path, crash_limit=1)
    assert os.readlink(fleet.current) == "slots/a/models"
    _flip_a_byte(fleet.slot_dir("a") / "models")
    fleet = fleet_of(tmp_path, crash_limit=1)
    fleet.ensure(fleet_kit["models"])  # the next start; [models] dir is intact
    assert os.readlink(fleet.current) == "slots/a/models"
    assert check_set(fleet.current) is None
    status = fleet.status()
    assert status["bundle"] == "factory" and status["state"] == "factory", status
    assert "seeded again from the factory [models] dir" in status["error"], status
    assert "quality" in status["error"] or ".tflite" in status["error"]
    assert status["rollback"]["from"] == "2.0"  # no newer bundle confirmed: still said
    _valid_health(status)
    # and 2.0 is still never taken again
    assert "2.0" in fleet.state["failed"]


def test_a_switch_to_the_other_slot_is_said_in_health(tmp_path, fleet_kit):
    """A damaged running set replaced by the other complete slot: was a log line only."""
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    fleet.install(fleet_kit["v2"], _keys(fleet_kit))
    fleet.tick(601.0)  # 2.0 confirmed, in slot b
    _flip_a_byte(fleet.slot_dir("b") / "models")
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    assert os.readlink(fleet.current) == "slots/a/models"
    status = fleet.status()
    assert status["bundle"] == "factory"
    assert status["error"].startswith("slot b damaged (") and \
        status["error"].endswith("switched to slot a (factory)"), status
    _valid_health(status)


# -- 3. an older offer is said once ----------------------------------------------------------


def _offer_payload(bundle):
    from central.fleet import make_offer, peek

    offer, _ = make_offer(bundle, peek(bundle, GROUP), 32 * 1024)
    return json.dumps(offer.to_dict()).encode()


def test_an_offer_older_than_the_running_bundle_is_said_once(tmp_path, fleet_kit, caplog):
    """A district rolling a group back by publishing 1.0 to boxes on 2.0: was ignored with
    no log line and nothing in health, so the district saw nothing at all."""
    config = device_config(tmp_path, fleet_kit)
    agent = _agent(config, fleet_kit)
    agent.fleet.install(fleet_kit["v2"], _keys(fleet_kit))
    agent.fleet.tick(601.0)  # 2.0 confirmed
    caplog.set_level(logging.INFO, logger="sonoedge.fleet")

    running = _offer_payload(fleet_kit["v2"])  # the retained offer of what runs: silent
    for _ in range(2):
        agent._received(offer_topic(GROUP), running)
        agent.poll_once(1.0)
    assert agent.download is None and "error" not in agent.status()
    assert not [r for r in caplog.records if "ignored" in r.getMessage()]

    older = _offer_payload(fleet_kit["v1"])
    for _ in range(3):  # the retained offer comes again at every reconnect
        agent._received(offer_topic(GROUP), older)
        agent.poll_once(1.0)
    assert agent.download is None
    said = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert said == ["fleet: offer 1.0 ignored: older than 2.0; re-sign it as a newer "
                    "version"], said
    status = agent.status()
    assert status["error"] == "offer 1.0 ignored: older than 2.0; re-sign it as a newer " \
                              "version"
    assert _flags(status) == ["bundle error"]
    _valid_health(status)
