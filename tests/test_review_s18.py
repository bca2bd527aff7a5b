"""Review of stop 18's changes: each test fails on the code before its fix."""

from __future__ import annotations

import builtins
import errno
import os
import signal
import subprocess
import sys
import time

from edge.fleet import agent as agent_module
from tests.cli_run import one_line_error
from tests.conftest import REPO
from tests.test_fleet import fleet_kit  # noqa: F401  (fixture)
from tests.test_fleet_delivery import bundle_site  # noqa: F401  (fixture)


def _run(*args: str, log=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", *args], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT if log is not
                            subprocess.PIPE else subprocess.PIPE, text=True)


def test_run_waiting_for_an_absent_grabber_stops_on_sigterm(tmp_path):
    """`systemctl stop` on a box whose dongle is not plugged in: the loop waits for the
    grabber (c1fc574), and SIGTERM only set a flag looked at after a frame, so the service
    hung until systemd's SIGKILL (the journal and outbox never closed cleanly)."""
    path = tmp_path / "run.log"
    with open(path, "w") as log:
        proc = _run("--source", "v4l2:/dev/video57", "--state-dir", str(tmp_path / "state"),
                    log=log)
        try:
            deadline = time.monotonic() + 60
            while "reopening in" not in path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, path.read_text()[-2000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError("sonoedge run ignored SIGTERM while waiting for its grabber") \
                from None
    text = path.read_text()
    assert "no such device yet" in text and "Traceback" not in text, text[-2000:]
    assert "summary: v4l2:/dev/video57: 0 frames" in text, text[-2000:]


def test_run_on_a_present_device_it_cannot_open_is_one_line_not_a_silent_wait(tmp_path):
    """Only an absent grabber is waited for. A device node that is there but not a capture
    device (or not readable by the service) said 'cannot open device' at once; since
    c1fc574 it was retried for ever with nothing above INFO in the log."""
    proc = _run("--source", "/dev/null", "--state-dir", str(tmp_path / "state"))
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise AssertionError("sonoedge run waited on /dev/null instead of refusing it") \
            from None
    assert proc.returncode == 2
    one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                   "/dev/null", "cannot open device")


def test_a_full_card_during_an_http_download_frees_its_space_and_is_not_refused(
        tmp_path, bundle_site, monkeypatch):  # noqa: F811
    """Over MQTT a full card frees the download and retries later (7410ac4); over HTTP the
    partial bundle stayed on the full card, the write was retried every minute as 'paused'
    at INFO, and nothing reached health."""
    offer, _, agent_in = bundle_site
    agent = agent_in(tmp_path)
    real_open = builtins.open

    class Full:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            if self.written >= 200_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.handle.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def full_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return Full(handle) if str(path).endswith("bundle.http") else handle

    monkeypatch.setattr(agent_module, "open", full_open, raising=False)
    agent._poll_http()
    assert not (agent.fleet.root / "download").exists()  # the room is given back
    assert "No space left on device" in agent.fleet.state["last_error"]
    assert offer.bundle_id not in agent.fleet.state.get("refused_ids", [])
    assert agent.fleet.status()["bundle"] == "factory"

    monkeypatch.delattr(agent_module, "open")  # room again
    agent._poll_http()
    assert agent.fleet.status()["bundle"] == "2.0"
