"""A lost signal is not the end of the woman's exam.

A midwife's walk: the scanner's video cable pulled and plugged back in (or the grabber
restarted) started a second exam for the same woman, her checklist split in two, because
the time without frames counted as time without ultrasound. A spell with no frame at all
(beyond `[exam] signal_lost_s`) shorter than `[exam] signal_hold_s` now does not count
toward the exam's `end_gap_s`; longer, the exam ends as by a gap, dated by its last
ultrasound. The page says the exam is kept, and for how long.

The tracker decides on the frames' own clock, so the journal's replay after a kill (which
feeds the same tracker the journaled frames, with their times) keeps the same one exam.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from edge.config import ConfigError, load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSettings, ExamTracker
from edge.loop import run
from edge.web.auth import write_pin
from tests.servers import free_port
from tests.test_exam_review_s32 import _record
from tests.test_unplugged_exam import _outbox_kinds, _unpluggable_grabber, _web_hooks
from tests.web_harness import PIN, http, login_cookie, wait_for

FPS = 10.0


class _Scan:
    """Frames fed to a tracker at FPS on the scan's clock `t`, as a live run or the
    journal's replay feeds them."""

    def __init__(self, **settings):
        self.ended: list[dict] = []
        self.tracker = ExamTracker(find_protocol("biometry"),
                                   ExamSettings(end_gap_s=20.0, **settings), None,
                                   lambda _session, body: self.ended.append(body))
        self.t, self.i = 0.0, 0

    def frames(self, seconds: float, content: bool = True) -> None:
        for _ in range(round(seconds * FPS)):
            self.tracker.feed(_record(self.i, content), mono=self.t)
            self.i += 1
            self.t += 1.0 / FPS

    def nothing(self, seconds: float) -> None:
        """No frame at all: the loop's idle ticks, once a second."""
        end = self.t + seconds
        while self.t + 1.0 <= end:
            self.t += 1.0
            self.tracker.idle(self.t)
        self.t = end


def test_a_cable_pulled_for_half_a_minute_mid_exam_keeps_one_exam_for_the_woman():
    scan = _Scan()
    scan.frames(10)  # her first planes
    first = scan.tracker.current.exam_id
    scan.nothing(30)  # the cable out: longer than the 20 s gap
    assert scan.tracker.current is not None and scan.ended == []
    scan.frames(10)  # plugged back in, the probe still on her belly
    assert scan.tracker.current.exam_id == first
    scan.tracker.end("command")
    assert [(b["ended_by"], b["frames"]) for b in scan.ended] == [("command", 200)]


def test_the_probe_in_the_air_before_and_after_the_spell_adds_up_to_the_gap():
    """Only the lost signal is set aside: 12 s of blank screen before the cable came out,
    the spell's first 2 s (`signal_lost_s`, before a signal counts as lost) and 6 s of
    blank screen after it went back in are the exam's 20 s gap."""
    scan = _Scan()
    scan.frames(10)
    last_ultrasound = scan.t - 1.0 / FPS
    scan.frames(12, content=False)
    scan.nothing(30)
    scan.frames(5.5, content=False)
    assert scan.ended == []
    scan.frames(1, content=False)
    assert [b["ended_by"] for b in scan.ended] == ["gap"]
    # dated by its last ultrasound, 10 s in, not by the blank screen or the spell
    assert scan.ended[0]["duration_s"] == pytest.approx(last_ultrasound, abs=0.01)


def test_a_signal_lost_for_longer_than_the_hold_ends_the_exam_then_on_the_clock():
    scan = _Scan(signal_hold_s=90.0, signal_lost_s=2.0)
    scan.frames(10)
    last_frame = scan.t - 1.0 / FPS
    scan.nothing(90)  # 90 s without a frame: 88 s of it a lost signal
    assert scan.ended == []
    assert scan.tracker.signal_hold_ends(scan.t) == pytest.approx(last_frame + 2.0 + 90.0)
    scan.nothing(2.0)
    assert [b["ended_by"] for b in scan.ended] == ["gap"]
    assert scan.ended[0]["duration_s"] < 10.1
    assert scan.tracker.signal_hold_ends(scan.t) is None  # no exam held any more
    scan.frames(5)  # the next woman
    assert scan.tracker.current is not None and len(scan.ended) == 1


def test_no_hold_configured_ends_the_exam_after_the_gap_with_or_without_frames():
    scan = _Scan(signal_hold_s=0.0)
    scan.frames(10)
    scan.nothing(21)
    assert [b["ended_by"] for b in scan.ended] == ["gap"]
    assert scan.tracker.signal_hold_ends(scan.t) is None


def test_a_box_scoring_slowly_still_ends_an_exam_whose_probe_is_in_the_air():
    """Blank frames 2.5 s apart (a box far behind): each interval beyond the 2 s of a lost
    signal is set aside, the rest counts, so the exam ends within 20 / (2 / 2.5) s."""
    ended: list[dict] = []
    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(end_gap_s=20.0), None,
                          lambda _session, body: ended.append(body))
    tracker.feed(_record(0), mono=0.0)
    t = 0.0
    for i in range(1, 40):
        t += 2.5
        tracker.feed(_record(i, content=False), mono=t)
        if ended:
            break
    assert [b["ended_by"] for b in ended] == ["gap"] and t <= 25.0


@pytest.mark.parametrize("key, value", [("signal_hold_s", -1), ("signal_hold_s", 1e9),
                                        ("signal_lost_s", 0), ("signal_hold_s", "'long'"),
                                        ("signal_lost_s", 25)])
def test_a_hold_out_of_range_is_refused_in_one_line_naming_the_key(tmp_path, key, value):
    """25 s: a signal counted lost only after the 20 s gap ended the exam would hold
    nothing, the hold off without a word (the review)."""
    cfg = tmp_path / "box.toml"
    cfg.write_text(f"[exam]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert f"exam.{key}" in str(err.value) or key in str(err.value)
    assert "\n" not in str(err.value)


def test_the_real_loop_keeps_her_exam_through_a_pulled_cable_and_the_page_says_so(
        tmp_path, data_dir, monkeypatch):
    """The device loop on a live grabber of real HC18 heads, with its page: the cable out
    for longer than the gap, the page's state says the exam is kept and for how long;
    back in, the same exam goes on; out for longer than the hold, it ends as by a gap."""
    gap_s, hold_s = 1.5, 8.0  # 8 s: margin for the replug on a loaded box (the review)
    plugged, grabbers, sources = _unpluggable_grabber(data_dir, 9, monkeypatch)
    _web_hooks(monkeypatch)
    state = tmp_path / "state"
    write_pin(state, PIN)
    port = free_port()
    cfg = tmp_path / "live.toml"
    cfg.write_text(f"""
[source]
spec = "v4l2:/dev/video9"
backoff_initial_s = 0.3
backoff_max_s = 0.5
[device]
state_dir = "{state}"
[loop]
log_every = 0
[exam]
end_gap_s = {gap_s}
signal_lost_s = 0.5
signal_hold_s = {hold_s}
[web]
listen = "127.0.0.1:{port}"
tls = "off"
""")
    said: list[tuple[float, str]] = []
    loop = threading.Thread(target=run, args=(load_settings(cfg),),
                            kwargs={"echo": lambda line: said.append((time.monotonic(), line))},
                            daemon=True)
    loop.start()
    base = f"http://127.0.0.1:{port}"
    ended = lambda: [(t, line) for t, line in said if ", ended by " in line]  # noqa: E731
    try:
        wait_for(lambda: grabbers and grabbers[0].i >= 20, 90, "her first heads")
        cookie = login_cookie(base)

        def status() -> dict:
            code, _, body = http(base + "/api/state", cookie=cookie)
            assert code == 200, body
            return json.loads(body)["status"]

        plugged.clear()
        pulled = time.monotonic()
        kept = wait_for(lambda: (s := status())["signal"] == "no_signal"
                        and s["exam_kept_s"] is not None and s, 10, "the page: exam kept")
        assert 0 < kept["exam_kept_s"] <= hold_s
        time.sleep(max(0.0, pulled + gap_s + 1.5 - time.monotonic()))  # past the gap
        assert ended() == [], ended()
        plugged.set()  # back in, the same woman
        wait_for(lambda: len(grabbers) > 1 and grabbers[-1].i >= 20, 30, "her heads again")
        assert status()["exam_kept_s"] is None and ended() == []
        plugged.clear()
        pulled = time.monotonic()
        (t, line), = wait_for(ended, hold_s + 10, "the exam to end after the hold")
        assert "ended by gap" in line and hold_s - 0.5 <= t - pulled <= hold_s + 4.0, line
        exams = wait_for(lambda: [body for kind, body in _outbox_kinds(state)
                                  if kind == "exam"], 10, "the exam's summary in the outbox")
        # one exam of both stretches of heads (the grabber keeps only the newest frame)
        assert len(exams) == 1 and exams[0]["frames"] >= 30, exams
        assert status()["exam_kept_s"] is None  # nothing held any more: the plain banner
    finally:
        plugged.clear()
        for source in sources:
            source.close()
        loop.join(60)
    assert not loop.is_alive()


def test_the_page_says_how_long_the_exam_is_kept_in_each_language():
    from edge.web.i18n import catalog  # noqa: PLC0415

    for lang in ("en", "fr"):
        text = catalog(lang, None)["status.no_signal_kept"]
        assert "{s}" in text, lang


def test_the_pages_banner_counts_down_the_kept_exam_and_plain_no_signal_without_one(
        tmp_path):
    """Debian's Chromium on the page's real server: with a running exam held through a lost
    signal the banner says how long it is kept and what to do; with none held, the plain
    "check the video cable"."""
    from tests.web_harness import chromium, page_alone, unlocked_page  # noqa: PLC0415

    with page_alone(tmp_path / "state") as srv, chromium(tmp_path) as context:
        view = srv.view
        view.phase, view.last_frame_mono = "running", time.monotonic() - 30.0
        view.exam_kept_until = time.monotonic() + 42.0
        page = unlocked_page(context, f"http://127.0.0.1:{srv.port}")
        banner = page.locator("#banner")
        page.wait_for_function("document.querySelector('#banner').textContent"
                               ".includes('Her exam is kept')", timeout=10_000)
        text = banner.text_content()
        seconds = int(text.split("is kept ")[1].split(" s")[0])
        assert 35 <= seconds <= 42 and "plug the cable back in" in text, text
        page.screenshot(path=str(tmp_path / "kept.png"))
        view.exam_kept_until = None  # the hold ran out: the exam ended
        page.wait_for_function("document.querySelector('#banner').textContent"
                               ".includes('Check the video cable')", timeout=10_000)
        assert "kept" not in banner.text_content()
