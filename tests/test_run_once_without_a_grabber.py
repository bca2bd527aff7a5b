"""`sonoedge run --once` is a run that is to end: on a camera that does not exist
(`--source v4l2:99`) it waited for the grabber for ever, as the service does for a dongle
not yet plugged in (a fresh-eyes walk of an installer's first try). With --once an absent
grabber is one line naming the source, exit 2, and one lost on the way is reopened a few
times, not for ever, then one line, non-zero. The live loop without --once still waits
(tests/test_capture_absent_at_start.py), each wait bounded by `backoff_max_s`.
"""

from __future__ import annotations

import threading
import time

import pytest

from edge.capture.sources import LiveSettings, SourceError, open_source
from edge.config import ONCE_REOPEN_ATTEMPTS, ConfigError, load_settings
from edge.loop import live_settings, run
from tests.cli_run import one_line_error, sonoedge
from tests.test_unplugged_exam import _unpluggable_grabber
from tests.web_harness import wait_for
from wire.shown import shown_path


def test_run_once_on_a_camera_that_does_not_exist_is_one_line_and_ends(tmp_path):
    start = time.monotonic()
    proc = sonoedge("run", "--once", "--source", "v4l2:99", "--state-dir",
                    str(tmp_path / "state"), timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    one_line_error(proc, "v4l2:/dev/video99", "no such device")
    assert "waiting for it" not in proc.stderr
    assert time.monotonic() - start < 60
    # a number, however written, is a device number: none such here
    zeros = sonoedge("run", "--once", "--source", "v4l2:0099", "--state-dir",
                     str(tmp_path / "state"), timeout=60)
    assert zeros.returncode == 2
    one_line_error(zeros, "v4l2:/dev/video99: no such device (is the capture dongle "
                   "plugged in?)")


NOT_V4L2 = ["v4l2:abc", "v4l2:", "v4l2:-1", "v4l2:1e9", "v4l2:0x1", "v4l2: 0", "v4l2:video0",
            "v4l2:\u0663", "v4l2:\u00b2", "v4l2:a\x1b[2J\nb", "v4l2:" + "a" * 4000]


@pytest.mark.parametrize("spec", NOT_V4L2)
def test_a_spec_that_names_no_v4l2_device_says_so_and_the_forms_it_takes(spec):
    """`v4l2:abc` is no device number and no device path, yet it was said as "no such
    device (is the capture dongle plugged in?)", and the live loop waited for it to be
    plugged in; an Arabic-Indic three opened /dev/video3, a superscript two was a
    traceback. One line naming the spec as given (escaped) and the forms a V4L2 device
    takes; the service does not wait for it."""
    with pytest.raises(SourceError, match="not a V4L2 device") as raised:
        open_source(spec, live=LiveSettings(wait_for_device=True))
    line = str(raised.value)
    assert "\n" not in line and "no such device" not in line and len(line) < 400, line
    assert "v4l2:0" in line and "v4l2:/dev/video0" in line
    assert shown_path(spec)[:60] in line, line


@pytest.mark.parametrize("spec", [NOT_V4L2[0], NOT_V4L2[7], NOT_V4L2[9]])
def test_run_once_on_a_spec_that_names_no_v4l2_device_is_that_line_and_exit_2(tmp_path, spec):
    """The same through the real command (a process each: three of the specs above)."""
    proc = sonoedge("run", "--once", "--source", spec, "--state-dir",
                    str(tmp_path / "state"), timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_line_error(proc, "not a V4L2 device", "v4l2:0", "v4l2:/dev/video0")
    assert "no such device" not in line and shown_path(spec)[:60] in line, line


def test_the_live_loop_waits_for_a_grabber_each_wait_bounded_and_once_does_not(tmp_path):
    cfg = tmp_path / "device.toml"
    cfg.write_text('[source]\nspec = "v4l2:99"\nbackoff_max_s = 600\n')
    settings = load_settings(cfg)
    live = live_settings(settings)
    assert live.wait_for_device and live.max_reopen_attempts is None  # a pulled cable
    assert live.backoff_max_s == 600
    once = live_settings(settings, once=True)
    assert not once.wait_for_device and once.max_reopen_attempts == ONCE_REOPEN_ATTEMPTS
    # a config's own bound stands, with --once too
    cfg.write_text('[source]\nspec = "v4l2:99"\nmax_reopen_attempts = 2\n')
    assert live_settings(load_settings(cfg), once=True).max_reopen_attempts == 2
    cfg.write_text('[source]\nspec = "v4l2:99"\nbackoff_max_s = 86400\n')
    with pytest.raises(ConfigError, match="backoff_max_s"):  # no wait of a day
        load_settings(cfg)


def test_run_once_whose_grabber_is_lost_ends_after_a_few_reopens_naming_it(
        tmp_path, data_dir, monkeypatch):
    """The real loop on a grabber of real heads, unplugged mid-run: with --once it ends,
    its summary said, then one error naming the source (before: reopening for ever)."""
    plugged, grabbers, sources = _unpluggable_grabber(data_dir, 7, monkeypatch)
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[source]
spec = "v4l2:/dev/video9"
backoff_initial_s = 0.2
backoff_max_s = 0.5
[device]
state_dir = "{tmp_path / 'state'}"
[loop]
log_every = 0
""")
    said: list[str] = []
    failed: list[BaseException] = []

    def once() -> None:
        try:
            run(load_settings(cfg), once=True, echo=said.append)
        except SourceError as exc:
            failed.append(exc)

    loop = threading.Thread(target=once, daemon=True)
    loop.start()
    try:
        wait_for(lambda: grabbers and grabbers[0].i >= 10, 90, "her first heads")
        plugged.clear()
        loop.join(30)  # 5 reopens at 0.2-0.5 s
        assert not loop.is_alive(), "run --once went on reopening a lost grabber"
    finally:
        plugged.clear()
        for source in sources:
            source.close()
        loop.join(30)
    assert any(line.startswith("summary: ") for line in said), said
    assert len(failed) == 1, failed
    text = str(failed[0])
    assert text.startswith("v4l2:/dev/video9: ") and f"{ONCE_REOPEN_ATTEMPTS} reopens" in text
    assert "\n" not in text
    assert sources[0].open_attempts <= ONCE_REOPEN_ATTEMPTS + 2
