"""Review of the fleet's update path (S35): a trial that counted time on the old models, a
USB install whose trial the service saved over, a full card during a trial, a self-test
child stopped from outside, a power cut counted as a crash, and an error cut from its
front. Each test states the behaviour the device must have."""

# ruff: noqa: F811  (the fleet_kit fixture, imported from tests.test_fleet)
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from central.dashboard.store import _fleet_error
from edge.fleet.keys import load_trusted_keys
from edge.fleet.slots import REBOOTS_PER_CRASH, STATE_FILE
from tests.cli_run import one_line_error, sonoedge
from tests.test_fleet import (  # noqa: F401  (fleet_kit: a fixture)
    FRAME,
    GROUP,
    _run_loop,
    _signed_archive,
    device_config,
    fleet_kit,
    fleet_of,
)
from tests.test_fleet_delivery import _agent
from tests.test_fleet_review_s32 import _valid_health
from tests.test_hardening import fill
from tests.test_review_fleet_s29 import _offer, _serve_all
from wire.fleet import offer_topic

CHUNK = 32 * 1024


def _keys(kit):
    return load_trusted_keys(kit["trusted"])


def _state_on_disk(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / "fleet" / STATE_FILE).read_text())


# -- 1. trial time is time on the trial's models ------------------------------------------


def test_trial_time_counts_only_while_the_loop_runs_the_new_models(tmp_path, fleet_kit):
    """A bundle from the district arrives mid-exam: the loop keeps scoring on the old set
    until the exam ends (at most restart_wait_min, 30 min). Was: those minutes counted as
    the trial's, so the bundle was confirmed before it scored a frame, and crashes on it
    could never roll it back."""
    config = device_config(tmp_path, fleet_kit)  # trial_min 10
    agent = _agent(config, fleet_kit)  # the loop loaded slot a, the factory set
    agent.fleet.install(fleet_kit["v2"], _keys(fleet_kit))  # 2.0 into slot b, on trial
    for _ in range(3):  # half an hour on the old set: the exam held the restart back
        agent.poll_once(601.0)
    assert agent.restart.is_set()
    status = agent.status()
    assert status["bundle"] == "2.0" and status["state"] == "trial", status
    assert status["trial_left_min"] == 10.0

    restarted = _agent(config, fleet_kit)  # the loop starts again, on slot b
    assert restarted.fleet.on_start() is None
    restarted.poll_once(601.0)
    assert restarted.status()["state"] == "confirmed"


# -- 2. no writer puts a stale state back ---------------------------------------------------


def test_a_usb_install_beside_the_running_service_keeps_its_trial(tmp_path, fleet_kit):
    """`sonoedge bundle install` from a USB stick while the service runs; then an older
    offer arrives. Was: the service saved the state it had read at its start over the new
    state.json, which became {"last_error": ...}: no trial (crashes never rolled 2.0 back)
    and no highest version (the floor against a replay)."""
    config = device_config(tmp_path, fleet_kit)
    agent = _agent(config, fleet_kit)  # the service, its state read at its start
    out = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config", str(config))
    assert out.returncode == 0, out.stderr
    _, _, older = _offer(fleet_kit["v1"])
    agent._received(offer_topic(GROUP), older)  # the district's retained offer, older
    agent.poll_once(1.0)
    state = _state_on_disk(tmp_path)
    assert state["trial"]["version"] == "2.0" and state["highest"] == "2.0", state
    assert state["last_error"] == "offer 1.0 ignored: older than 2.0; re-sign it as a " \
                                  "newer version"
    assert agent.status()["state"] == "trial"  # health says what the card holds


# -- 3. a full card during a trial ------------------------------------------------------------


@pytest.fixture
def small_card(tmp_path):
    """A 16 MB tmpfs (the factory set, a bundle's slot, a journal and its 1 MB reserve fit):
    a real file system that really fills. Mounting needs root; elsewhere, skipped."""
    mount = tmp_path / "card"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_card_during_a_trial_is_one_line_and_the_box_starts_on_the_current_set(
        small_card, fleet_kit):
    """Was: `on_start`'s save raised ENOSPC, a traceback and exit 1, again every 2 s under
    systemd, while the same full card without a trial ran. The state dir's 1 MB reserve is
    given back to record the trial's start (so a crash still counts); with none left the
    start says so in one line naming state.json and runs on the set `current` holds."""
    config = device_config(small_card, fleet_kit)
    assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                    str(config)).returncode == 0
    first = _run_loop(config, crash=False, source=FRAME)  # the journal makes its reserve
    assert first.returncode == 0, first.stderr[-2000:]
    assert (small_card / "state" / "reserve.bin").exists()
    fillers = [fill(small_card)]
    try:
        crashed = _run_loop(config, crash=True, source=FRAME)
        assert crashed.returncode == -9, crashed.stderr[-2000:]
        assert "released the 1024 KB reserve" in crashed.stderr
        (small_card / "more").mkdir()
        fillers.append(fill(small_card / "more"))  # the room it gave back is taken too
        out = _run_loop(config, crash=False, source=FRAME)  # no reserve left, still full
    finally:
        for filler in fillers:
            filler.unlink()
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    said = [line for line in out.stderr.splitlines() if "start of 2.0's trial" in line]
    assert len(said) == 1, out.stderr[-3000:]
    assert "state.json" in said[0] and "No space left on device" in said[0]
    assert "summary: BRAIN-TV.tiff: 1 frame, 0 failed" in out.stdout, out.stdout
    fleet = fleet_of(small_card)
    assert os.readlink(fleet.current) == "slots/b/models"
    fleet.on_start()  # room again: the crash the reserve let it record is counted
    assert fleet.status()["crashes"] == 1


# -- 4. a self-test child stopped from outside --------------------------------------------


@contextmanager
def _signal_the_self_test(root: Path, sig: int):
    """Send `sig` to the self-test child of an install under `root` as soon as it runs, as
    `systemctl stop` (SIGTERM to the whole cgroup) or the OOM killer (SIGKILL) would;
    yields the list of the pids signalled."""
    done: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        staging = str(root / "slots" / ".staging").encode()
        while not stop.is_set() and not done:
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"edge.fleet.selftest" in argv and staging in argv:
                    os.kill(int(entry.name), sig)
                    done.append(int(entry.name))
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield done
    finally:
        stop.set()
        watcher.join(5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_self_test_child_killed_from_outside_is_not_held_against_the_bundle(
        tmp_path, fleet_kit, sig):
    """`systemctl stop` during an install (SIGTERM to the cgroup) or a closed terminal: was
    "self-test process ended with code -15", the good bundle refused for good and its
    version made the floor. The device's doing: refused for nothing, taken up again after
    poll_min."""
    config = device_config(tmp_path, fleet_kit, poll_min=0.1)
    offer, data, payload = _offer(fleet_kit["v2"])
    agent = _agent(config, fleet_kit)
    agent._received(offer_topic(GROUP), payload)
    agent._drain_inbox()
    with _signal_the_self_test(agent.fleet.root, sig) as signalled:
        _serve_all(agent, data, CHUNK)
    assert signalled, "the self-test child never ran"
    status = agent.status()
    assert status["bundle"] == "factory" and status["state"] == "factory"
    assert signal.Signals(sig).name in status["error"], status
    assert "fetched again in 0.1 min" in status["error"], status
    state = _state_on_disk(tmp_path)
    assert "2.0" not in state.get("failed", []) and "highest" not in state, state
    assert offer.bundle_id not in state.get("refused_ids", [])
    assert not (agent.fleet.root / "slots" / ".staging").exists()
    agent.poll_once(7.0)  # poll_min later the offer is taken up again
    _serve_all(agent, data, CHUNK)
    assert agent.status()["bundle"] == "2.0" and agent.status()["state"] == "trial"


@pytest.mark.parametrize("sig, code", [(signal.SIGSEGV, -11), (signal.SIGKILL, -9)],
                         ids=["SIGSEGV", "SIGKILL"])
def test_a_self_test_child_that_crashes_or_runs_out_of_memory_still_fails_the_bundle(
        tmp_path, fleet_kit, sig, code):
    """What the self-test is for: a model that crashes the runtime (SIGSEGV) fails it, and
    so does one the OOM killer ends (SIGKILL: too big for the box; tried again, it would be
    fetched and run every poll for ever beside the midwife's scan). Never taken again."""
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    with _signal_the_self_test(fleet.root, sig) as signalled:
        with pytest.raises(Exception, match="failed its self-test") as caught:
            fleet.install(fleet_kit["v2"], _keys(fleet_kit))
    assert signalled and f"code {code}" in str(caught.value)
    assert "2.0" in _state_on_disk(tmp_path)["failed"]


# -- 5. a power cut is not a crash ----------------------------------------------------------


def _boot_again(tmp_path: Path) -> None:
    """What a power cut and the boot after it leave: the boot recorded at the last start is
    another boot than this one (the kernel's boot_id cannot be changed from a test)."""
    path = tmp_path / "state" / "fleet" / STATE_FILE
    state = json.loads(path.read_text())
    state["trial"]["boot_id"] = str(uuid.uuid4())
    path.write_text(json.dumps(state))


def test_a_power_cut_during_a_trial_is_not_a_crash_but_a_box_restarted_again_and_again_is(
        tmp_path, fleet_kit):
    """Was: three power cuts (kill -9 of the run, then a new boot) rolled a good bundle back
    for good. A start after a new boot is not counted as a crash; but a set that hangs the
    box, switched off and on by the midwife, rolls back at REBOOTS_PER_CRASH x the crash
    limit (the review). A run killed without a reboot (a crashing model) is a crash, and a
    refused reinstall says the version was rolled back here, and why (below)."""
    config = device_config(tmp_path, fleet_kit, crash_limit=1)
    assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                    str(config)).returncode == 0
    cut = _run_loop(config, crash=True, source=FRAME)  # the power goes as it scores
    assert cut.returncode == -9, cut.stderr[-2000:]
    _boot_again(tmp_path)
    out = _run_loop(config, crash=False, source=FRAME)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rolled back" not in out.stdout + out.stderr
    status = fleet_of(tmp_path).status()
    assert status["bundle"] == "2.0" and status["state"] == "trial", status
    assert status["crashes"] == 0

    # a set that hangs the whole box, switched off and on again and again: each a new
    # boot, counted against REBOOTS_PER_CRASH x the crash limit (the cut above was one)
    assert _state_on_disk(tmp_path)["trial"]["reboots"] == 1
    for restart in range(2, REBOOTS_PER_CRASH + 1):
        fleet = fleet_of(tmp_path, crash_limit=1)
        fleet.state["trial"]["running"] = True
        fleet.state["trial"]["boot_id"] = str(uuid.uuid4())
        fleet.save()
        line = fleet_of(tmp_path, crash_limit=1).on_start()
        if restart < REBOOTS_PER_CRASH:
            assert line is None and fleet_of(tmp_path).status()["state"] == "trial"
    assert line and f"restarted {REBOOTS_PER_CRASH} times during its trial" in line, line
    assert fleet_of(tmp_path).status()["bundle"] == "factory"


def test_a_run_killed_without_a_reboot_is_a_crash_and_a_rolled_back_bundle_says_so(
        tmp_path, fleet_kit):
    config = device_config(tmp_path, fleet_kit, crash_limit=1)
    assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                    str(config)).returncode == 0
    crashed = _run_loop(config, crash=True, source=FRAME)  # killed, no reboot: a crash
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    line = fleet_of(tmp_path, crash_limit=1).on_start()  # the next start, this same boot
    assert line and "rolled back from 2.0 to factory" in line
    again = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config", str(config))
    assert again.returncode == 2
    one_line_error(again, "bundle 2.0 refused: 2.0 was rolled back on this box: the loop "
                          "crashed 1 times within 10 min of the swap")


# -- 6. the head of an error reaches the district ---------------------------------------------


def _bundle_whose_model_fails_its_manifest(kit: dict, out: Path, version: str) -> Path:
    """Signed, every member as listed, but plane_student.tflite is not the file its model
    manifest names: the self-test's scorer refuses to load it."""
    with tarfile.open(kit["v2"], "r:xz") as tar:
        manifest = json.loads(tar.extractfile("bundle.json").read())
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()[2:]}
    name = "models/plane_student.tflite"
    model = bytearray(blobs[name])
    model[5000] ^= 0x01
    blobs[name] = bytes(model)
    manifest["version"] = version
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry["sha256"] = hashlib.sha256(blobs[name]).hexdigest()
    return _signed_archive(kit, out, manifest, [(tarfile.TarInfo(n), b)
                                                for n, b in blobs.items()])


def test_a_fleet_error_reaches_the_district_by_its_head_with_file_names_not_paths(
        tmp_path, fleet_kit):
    """Was cut to its last 200, then 160 characters: "p/hC/w/mq/box1-state/.../
    plane_student.tflite: sha256 ...", the version and what failed cut off. The head is
    kept, a path is its file name."""
    deep = tmp_path / ("clinic-" + "x" * 40) / "box"
    deep.mkdir(parents=True)
    config = device_config(deep, fleet_kit)
    bad = _bundle_whose_model_fails_its_manifest(fleet_kit, tmp_path / "bad.bundle", "3.0")
    offer, data, payload = _offer(bad)
    agent = _agent(config, fleet_kit)
    agent._received(offer_topic(GROUP), payload)
    agent._drain_inbox()
    _serve_all(agent, data, CHUNK)
    status = agent.status()
    error = status["error"]
    assert error.startswith("bundle 3.0 failed its self-test, factory stays: ModelError: "
                            "plane_student.tflite: sha256 "), error
    assert str(tmp_path) not in error and len(error) <= 160, error
    _valid_health(status)
    assert _fleet_error({"fleet": status})[0] == error  # as the district's store keeps it


@pytest.mark.parametrize("reboots", ["abc", -1, 1e9, float("nan"), None, [2]])
def test_a_damaged_count_of_reboots_is_mended_in_one_line(tmp_path, reboots, caplog):
    """state.json is hostile input (a hand edit, a flipped bit): the trial's new count of
    restarts in a new boot, damaged, is mended to 0 with one line naming it, never a
    ValueError at every start."""
    from edge.fleet.slots import checked_state

    with caplog.at_level("WARNING"):
        state = checked_state({"trial": {"version": "2.0", "reboots": reboots}},
                              tmp_path / STATE_FILE)
    assert state["trial"]["reboots"] == 0
    (line,) = [r.getMessage() for r in caplog.records if "trial.reboots" in r.getMessage()]
    assert "mended" in line and "\n" not in line
