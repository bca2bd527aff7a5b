"""`sonoedge status` and `sonoedge outbox` as a new user ran them (found on a fresh-clone
walk, eighth session of 5 December): they could not read the device's config, and with no
broker `status` showed the outbox count from the uplink's last status file, one exam
behind what `outbox` and the page said."""

from __future__ import annotations

import json
import re

from edge.store.outbox import open_outbox
from tests.cli_run import sonoedge
from tests.test_walkthrough_s18 import _heads


def _pending(text: str) -> int:
    return int(re.search(r"outbox: (\d+) pending", text).group(1))


def test_status_and_outbox_read_the_devices_config_and_the_live_queue(data_dir, tmp_path):
    frames = _heads(data_dir, tmp_path / "frames")
    state = tmp_path / "state"
    config = tmp_path / "device.toml"
    config.write_text(f'[device]\nstate_dir = "{state}"\n')
    ran = sonoedge("run", "--config", str(config), "--source", str(frames), "--once")
    assert ran.returncode == 0, ran.stderr
    before = sonoedge("status", "--config", str(config))
    assert before.returncode == 0 and "no broker" in before.stdout, before.stderr
    box = open_outbox(state)  # a message queued after the status file was last written
    try:
        box.enqueue("health", {"kind": "health", "note": "after the file"})
    finally:
        box.close()
    after = sonoedge("status", "--config", str(config))
    assert _pending(after.stdout) == _pending(before.stdout) + 1, after.stdout
    listed = sonoedge("outbox", "--config", str(config), "--json")
    assert json.loads(listed.stdout)["pending"] == _pending(after.stdout)
    # --state-dir still wins over the config, and a config that cannot be read is one line
    other = sonoedge("status", "--config", str(config), "--state-dir", str(tmp_path / "none"))
    assert other.returncode == 2 and "none: no such folder (--state-dir)" in other.stderr
    config.write_text("[device]\nstate_dri = 1\n")
    for verb in ("status", "outbox"):
        bad = sonoedge(verb, "--config", str(config))
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "state_dri" in bad.stderr, \
            bad.stderr


def test_a_damaged_outbox_is_counted_as_far_as_it_can_be_never_a_traceback(data_dir,
                                                                            tmp_path):
    """Sizes of 1e308 summed to an infinity that no int holds: a traceback from both
    commands (found by the review of the change above)."""
    import sqlite3

    state = tmp_path / "state"
    box = open_outbox(state)
    try:
        for i in range(3):
            box.enqueue("health", {"kind": "health", "n": i})
    finally:
        box.close()
    with sqlite3.connect(state / "outbox.sqlite3") as db:
        db.execute("UPDATE outbox SET size = CASE id % 3 WHEN 0 THEN 1e308 WHEN 1 THEN 1e308 "
                   "ELSE -5 END")
    for verb in ("status", "outbox"):
        done = sonoedge(verb, "--state-dir", str(state), "--json")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    listed = json.loads(sonoedge("outbox", "--state-dir", str(state), "--json").stdout)
    assert listed["pending"] == 3 and listed["bytes"] == 0


def test_a_state_dir_that_is_not_there_is_one_line_saying_where_it_came_from(tmp_path):
    """An installer typed `sonoedge status` on a box whose service keeps its state where
    its config says: the command looked in ./state and said "the uplink has not run there
    yet", exit 0, of a box whose uplink ran fine (a user's walk, 7 December). A folder
    that is not there is now said so, with where its name came from; one that is there
    but never held a run still says the uplink has not run there."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SONOEDGE_STATE_DIR", None)
    config = tmp_path / "device.toml"
    config.write_text(f'[device]\nstate_dir = "{tmp_path / "gone"}"\n')
    # the default's name made absolute: the line is read later, in a log, elsewhere
    default = (f"{tmp_path / 'state'}: no such folder (the default state dir; the box's is "
               "in its config: give --config FILE or --state-dir DIR)")
    configured = f"{tmp_path / 'gone'}: no such folder ({config}: [device] state_dir)"
    for args, said in (((), default), (("--config", str(config)), configured)):
        for verb in ("status", "outbox"):
            proc = subprocess.run([sys.executable, "-m", "edge.cli", verb, *args],
                                  capture_output=True, text=True, timeout=60, cwd=tmp_path,
                                  env=env)
            assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
            assert proc.stderr.strip().splitlines() == [f"sonoedge {verb}: {said}"]
    (tmp_path / "gone").mkdir()
    never = sonoedge("status", "--config", str(config))
    assert never.returncode == 0 and "has not run there yet" in never.stdout, never.stderr
