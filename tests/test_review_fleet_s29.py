"""Review of the fleet side (S29): defects the fleet tests missed, each stated as the
behaviour the device and the `sonoedge bundle` verbs must have."""

# ruff: noqa: F811  (the fleet_kit fixture, imported from tests.test_fleet)
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from edge.fleet.agent import FleetAgent
from edge.fleet.bundle import Limits, read_bundle
from edge.fleet.keys import load_trusted_keys
from edge.fleet.slots import check_set
from tests.cli_run import one_line_error, sonoedge
from tests.test_fleet import FRAME, GROUP, device_config, fleet_kit, fleet_of  # noqa: F401
from tests.test_fleet_delivery import _agent
from tests.waits import raised_within
from wire.fleet import BundleError, offer_topic


def _offer(bundle: Path, size: int = 32 * 1024):
    from central.fleet import make_offer, peek

    offer, data = make_offer(bundle, peek(bundle, GROUP), size)
    return offer, data, json.dumps(offer.to_dict()).encode()


def _serve_all(agent: FleetAgent, data: bytes, size: int) -> None:
    """Answer the agent's chunk subscriptions as the broker's retained chunks would (each
    retained chunk once per subscription round; bounded, should the agent not move on)."""
    for _ in range(4 * (len(data) // size + 1)):
        download = agent.download
        wanted = sorted((t for t in agent.uplink.topics if "/chunk/" in t),
                        key=lambda t: int(t.rsplit("/", 1)[1]))
        wanted = [t for t in wanted if download is not None
                  and not download.has(int(t.rsplit("/", 1)[1]))]
        if not wanted:
            return
        index = int(wanted[0].rsplit("/", 1)[1])
        agent._received(wanted[0], data[index * size:(index + 1) * size])
        agent._drain_inbox()


# -- sonoedge bundle make ------------------------------------------------------------------


@pytest.mark.parametrize("tolerance", ['{"hc_mm": 1', '{"hc_mm": "x"}', '{"hc_mm": null}',
                                       '{"hc_mm": true}'])
def test_bundle_make_with_a_bad_tolerance_is_one_line_naming_it(tmp_path, fleet_kit,
                                                                tolerance):
    """Was a JSONDecodeError, ValueError or TypeError traceback."""
    out = sonoedge("bundle", "make", "--models", str(fleet_kit["models"]), "--key",
                   str(fleet_kit["key"]), "--out", str(tmp_path / "b.bundle"),
                   "--version", "5.0", "--group", GROUP, "--frames", str(FRAME),
                   "--tolerance", tolerance)
    assert out.returncode == 2
    one_line_error(out, "tolerance")
    assert not (tmp_path / "b.bundle").exists()


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_bundle_make_to_an_out_it_cannot_write_is_one_line_and_leaves_nothing(
        tmp_path, fleet_kit, where):
    """Was a FileNotFoundError / IsADirectoryError traceback, the latter leaving the whole
    bundle behind as `<out>.tmp`."""
    out_path = tmp_path / "nowhere" / "b.bundle" if where == "missing-folder" else \
        tmp_path / "taken"
    if where == "a-folder":
        out_path.mkdir()
    out = sonoedge("bundle", "make", "--models", str(fleet_kit["models"]), "--key",
                   str(fleet_kit["key"]), "--out", str(out_path), "--version", "5.0",
                   "--group", GROUP, "--frames", str(FRAME))
    assert out.returncode == 2
    one_line_error(out, str(out_path))
    assert not out_path.with_name(out_path.name + ".tmp").exists()


def test_bundle_make_says_the_quality_rules_its_expectations_were_scored_with(tmp_path,
                                                                          fleet_kit):
    """A box under other quality rules does not compare the quality score (the bundle's
    `selftest/made_with.json`); the district that made it learned which rules only when a
    box installed it (a walk). `bundle make` says it."""
    from edge.models.quality import load_rules

    out = sonoedge("bundle", "make", "--models", str(fleet_kit["models"]), "--key",
                   str(fleet_kit["key"]), "--out", str(tmp_path / "b.bundle"),
                   "--version", "5.0", "--group", GROUP, "--frames", str(FRAME))
    assert out.returncode == 0, out.stderr
    assert f"self-test frames scored with quality rules {load_rules().version} (a box under " \
        "other rules does not compare their quality scores, but does the learned quality " \
        "head's severities)" in out.stdout, out.stdout


# -- reading a bundle ------------------------------------------------------------------------


def test_a_bundle_that_is_a_fifo_is_refused_not_waited_on(tmp_path, fleet_kit):
    """`sonoedge bundle install /media/usb/x.bundle` where that is a FIFO waited for a
    writer for ever (and one that is a device passed the size limit: stat says 0 bytes)."""
    fifo = tmp_path / "x.bundle"
    os.mkfifo(fifo)
    keys = load_trusted_keys(fleet_kit["trusted"])
    caught = raised_within(lambda: read_bundle(fifo, keys, Limits(1 << 30, 1 << 30)),
                           BundleError)
    assert str(fifo) in str(caught) and "not a regular file" in str(caught)
    caught = raised_within(lambda: read_bundle(Path("/dev/zero"), keys,
                                               Limits(1 << 30, 1 << 30)), BundleError)
    assert "not a regular file" in str(caught)


# -- the agent --------------------------------------------------------------------------------


def test_a_district_bundle_met_by_a_hand_install_s_trial_is_not_refused_for_good(
        tmp_path, fleet_kit):
    """A USB install (`sonoedge bundle install`) put 2.0 on trial while the district's 3.0
    was downloading. Its install said "still on trial", a BundleError, so the agent refused
    3.0 for good: never fetched again by this app. It is the device's state, not the
    bundle: 3.0 is fetched again once the trial is over."""
    config = device_config(tmp_path, fleet_kit, trial_min=0.1, poll_min=0.1)
    v3 = fleet_kit["make"]("review-v3", "3.0")
    offer, data, payload = _offer(v3)
    agent = _agent(config, fleet_kit)
    agent._received(offer_topic(GROUP), payload)
    agent._drain_inbox()
    assert agent.download is not None
    # meanwhile, by hand from a USB stick, in another process
    fleet_of(tmp_path).install(fleet_kit["v2"], load_trusted_keys(fleet_kit["trusted"]))
    _serve_all(agent, data, 32 * 1024)
    assert offer.bundle_id not in agent.fleet.state.get("refused_ids", [])
    assert agent.fleet.status()["bundle"] == "2.0"
    agent = _agent(config, fleet_kit)  # the loop started again, on 2.0
    agent._received(offer_topic(GROUP), payload)  # the broker's retained offer, again
    agent.poll_once(7.0)  # 2.0's trial is over, then the offer is taken up again
    agent.poll_once(7.0)
    _serve_all(agent, data, 32 * 1024)
    assert agent.fleet.status()["bundle"] == "3.0"


def test_a_district_bundle_met_by_a_running_hand_install_is_not_refused_for_good(
        tmp_path, fleet_kit):
    """Same with the install lock held by an install by hand: "another install is running"
    is no reason to refuse the district's bundle for ever."""
    config = device_config(tmp_path, fleet_kit, poll_min=0.1)
    offer, data, payload = _offer(fleet_kit["v2"])
    agent = _agent(config, fleet_kit)
    agent._received(offer_topic(GROUP), payload)
    agent._drain_inbox()
    with open(agent.fleet.root / "install.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _serve_all(agent, data, 32 * 1024)
    assert offer.bundle_id not in agent.fleet.state.get("refused_ids", [])
    agent.poll_once(7.0)
    _serve_all(agent, data, 32 * 1024)
    assert agent.fleet.status()["bundle"] == "2.0"


def test_an_mqtt_download_held_by_keys_that_would_not_load_installs_once_they_do(
        tmp_path, fleet_kit):
    """Every chunk in, but the trusted keys folder would not load (missing, say): the
    download sat there complete and was never installed until the loop restarted, even
    once the keys were mended (the offer's id matched the download, every chunk was had).
    It is tried again after poll_min, from the chunks already on disk."""
    keys = tmp_path / "keys-later"
    config = device_config(tmp_path, fleet_kit, poll_min=0.1)
    text = config.read_text().replace(str(fleet_kit["trusted"]), str(keys))
    config.write_text(text)
    offer, data, payload = _offer(fleet_kit["v2"])
    agent = _agent(config, fleet_kit)
    agent._received(offer_topic(GROUP), payload)
    agent._drain_inbox()
    _serve_all(agent, data, 32 * 1024)
    assert agent.fleet.status()["bundle"] == "factory"
    assert "keys-later" in agent.fleet.state["last_error"]
    keys.mkdir(mode=0o755)  # the technician mends it
    (keys / "district.pub").write_bytes((fleet_kit["trusted"] / "district.pub").read_bytes())
    os.chmod(keys / "district.pub", 0o644)
    agent._received(offer_topic(GROUP), payload)  # the broker's retained offer, again
    agent._drain_inbox()
    agent.poll_once(7.0)
    assert agent.fleet.status()["bundle"] == "2.0"


# -- the slots ----------------------------------------------------------------------------------


def test_the_factory_set_is_on_the_card_before_current_points_at_it(tmp_path, fleet_kit,
                                                                  monkeypatch):
    """The first start copies `[models] dir` into slot a; the copies were never fsynced,
    only their folder. A power cut within the kernel's writeback delay could leave slot a
    with empty model files, the set a trial rolls back to."""
    from edge.fleet import slots

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    real_point = slots.Fleet._point_at
    at_switch: list[list[str]] = []

    def point_at(self, slot):
        at_switch.append(list(synced))
        return real_point(self, slot)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(slots.Fleet, "_point_at", point_at)
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    assert check_set(fleet.current) is None and at_switch
    names = sorted(p.name for p in fleet.current.iterdir())
    assert names
    # staging is renamed to slots/a before the switch: the files were synced under either
    done = {Path(p).name for p in at_switch[0] if "/slots/" in p}
    assert [n for n in names if n not in done] == []


@pytest.mark.parametrize("verb", ["status", "install"])
def test_a_fleet_root_that_is_not_a_folder_is_one_line_naming_it(tmp_path, fleet_kit, verb):
    """`[fleet] root` (or the state dir) a file: was a NotADirectoryError traceback from
    `sonoedge bundle status|install`, and from the loop's start."""
    root = tmp_path / "fleet-root"
    root.write_text("not a folder\n")
    config = device_config(tmp_path, fleet_kit, root=str(root))
    args = ["status"] if verb == "status" else ["install", str(fleet_kit["v2"])]
    out = sonoedge("bundle", *args, "--config", str(config))
    assert out.returncode == 2
    one_line_error(out, str(root))


@pytest.mark.parametrize("damage", [
    {"trial": {"crashes": "x"}}, {"trial": {"crashes": None}}, {"trial": {"crashes": 1e400}},
    {"trial": {"ran_s": "soon"}}, {"trial": {"running": "yes"}}, {"trial": 5},
    {"highest": "abc"}, {"highest": 7}, {"failed": 3},
    {"intent": {"op": "rollback"}}, {"intent": {"op": "rollback", "to": "../../etc"}}],
    ids=lambda d: json.dumps(d)[:40])
def test_a_damaged_state_file_is_mended_field_by_field_never_a_crash_at_every_start(
        tmp_path, fleet_kit, damage, caplog):
    """`state.json` with a field of the wrong type (a hand edit, a flipped bit on the card)
    raised at every start, so the service would restart for ever. Each field is mended or
    dropped with one line naming it; a damaged trial stays a trial and counts as one crash,
    so a bad set can still be rolled back; the anti-replay floor stays the active set."""
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    keys = load_trusted_keys(fleet_kit["trusted"])
    assert fleet.install(fleet_kit["v2"], keys).version == "2.0"
    path = fleet.root / "state.json"
    state = json.loads(path.read_text())
    for key, value in damage.items():
        if isinstance(value, dict) and isinstance(state.get(key), dict):
            state[key].update(value)
        else:
            state[key] = value
    path.write_text(json.dumps(state))

    again = fleet_of(tmp_path)
    again.ensure(fleet_kit["models"])  # the loop's start: layout, then the trial's count
    again.on_start()
    status = again.status()
    field = next(iter(damage))
    assert any(field in r.getMessage() and "mended" in r.getMessage() for r in caplog.records)
    if "trial" in damage and isinstance(damage["trial"], dict):
        assert status["state"] == "trial" and status["bundle"] == "2.0"
        assert status["crashes"] == (0 if set(damage["trial"]) == {"ran_s"} else 1)
    assert status["bundle"] in ("2.0", "factory")
    with pytest.raises(BundleError, match="refused|on trial"):  # never a replay of 2.0
        again.install(fleet_kit["v2"], keys)


def test_a_full_card_in_the_fleet_thread_is_one_log_line_and_the_next_pass_goes_on(
        tmp_path, fleet_kit, monkeypatch, caplog):
    """A full disk while polling the district (its download folder cannot be made) was
    logged with a traceback at every pass; it is the card's state, said in one line, and
    the thread's next pass runs as before."""
    import dataclasses
    import errno

    agent = _agent(device_config(tmp_path, fleet_kit), fleet_kit)
    agent.cfg = dataclasses.replace(agent.cfg, http_url="http://127.0.0.1:9/")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(agent, "_poll_http", full)
    for _ in range(2):
        agent._next_poll = 0.0
        agent.poll_once(1.0)
    said = [r for r in caplog.records if "No space left on device" in r.getMessage()]
    assert len(said) == 2 and all(r.exc_info is None for r in said)
    assert all("\n" not in r.getMessage() for r in said)
