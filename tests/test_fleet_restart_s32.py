"""New models wait for the exam in progress (found by a review, sixth session of 5
December): a bundle installed while the midwife scanned restarted the loop at once, which
ended her exam, and the district got her one scan as two exams."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSettings, ExamTracker
from tests.conftest import REPO
from tests.test_fleet import device_config, fleet_kit  # noqa: F401


def test_new_models_wait_for_the_open_exam_and_no_longer_than_the_limit():
    from edge.loop import restart_due

    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(), None, lambda *_: None)
    now = time.monotonic()
    assert restart_due(tracker, now, 30.0)  # no exam open: at once
    tracker.feed({"source": "live", "frame": 0, "plane": "Brain (Tv.)", "error": None,
                  "roi": [0, 0, 10, 10], "ts": 1.7e9,
                  "quality": {"score": 0.8, "criteria": {"content": {"pass": True}}}},
                 mono=now)
    assert not restart_due(tracker, now, 30.0)
    assert restart_due(tracker, now - 30 * 60, 30.0)  # held back 30 min: now


def test_a_bundle_installed_mid_exam_is_taken_up_when_the_exam_ends(tmp_path, fleet_kit):  # noqa: F811
    config = device_config(tmp_path, fleet_kit)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                str(config), "--source", "demo"], stdout=log,
                               stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 180
            while "started (protocol" not in log_path.read_text():
                assert run.poll() is None and time.monotonic() < deadline, \
                    log_path.read_text()[-2000:]
                time.sleep(0.2)
            time.sleep(2)  # mid-exam
            installed = subprocess.run(
                [sys.executable, "-m", "edge.cli", "bundle", "install", str(fleet_kit["v2"]),
                 "--config", str(config)], capture_output=True, text=True, env=env, cwd=REPO,
                timeout=300)
            assert installed.returncode == 0, installed.stderr
            while "starting again" not in log_path.read_text():
                assert run.poll() is None and time.monotonic() < deadline + 120, \
                    log_path.read_text()[-2000:]
                time.sleep(0.2)
        finally:
            run.terminate()
            run.wait(timeout=60)
    before_restart = log_path.read_text().split("starting again")[0]
    ended = [line for line in before_restart.splitlines() if " ended (" in line]
    # the demo clip is one woman's scan: one exam, to the clip's end, not cut at the install
    # 2 s (30 frames) in. Of its 177 frames the paced loop skips as stale those a loaded
    # host scores too late (176 once in a CI rehearsal with two workers, 162 beside three
    # other jobs), so the count shows only that the exam outlived the install by far.
    assert len(ended) == 1, ended
    counted = re.search(r"ended \(source_end\): (\d+) frames", ended[0])
    assert counted and 120 <= int(counted.group(1)) <= 177, ended

