"""Exams as the midwife makes them, found wrong by a review (sixth session of 5 December);
each test fails on the code before its mend.

The loop's tests run the real device loop (`edge.loop.run`) with its page on a recording
made of real HC18 heads on a scanner's screen, read faster than it was made, and a "stop"
tapped on the page part-way."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import cv2
import numpy as np

from edge.config import load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSettings, ExamTracker
from edge.loop import recover_runs, run
from edge.store.journal import JOURNAL_FILE, Journal
from edge.web.auth import write_pin
from edge.web.live import LiveView, LoopHook
from tests.servers import free_port
from tests.web_harness import HEADS, PIN, _screen

FPS = 15.0


def _record(i: int, content: bool = True) -> dict:
    """A frame's record as the scorer makes it, with or without ultrasound on it."""
    quality = {"score": 0.8 if content else 0.0, "advice": None,
               "criteria": {"content": {"pass": content, "value": 0.8 if content else 0.0,
                                        "message": ""}}}
    return {"source": "live", "frame": i, "plane": "Brain (Tv.)" if content else "Background",
            "plane_confidence": 0.9, "error": None, "ts": 1.7e9 + i,
            "roi": [0, 0, 10, 10] if content else None, "quality": quality,
            "biometry": None, "latency_ms": 5.0, "model": "plane@1"}


def test_a_stretch_with_no_frames_at_all_ends_the_exam_so_two_women_stay_two_exams():
    """A grabber unplugged (or a scanner switched off) sends no frames at all; when frames
    come back the next woman is on the screen. The gap counts as one without ultrasound."""
    ended = []
    tracker = ExamTracker(find_protocol("biometry"), ExamSettings(end_gap_s=20.0), None,
                          lambda session, body: ended.append(body))
    t = 0.0
    for i in range(100):  # the first woman, 10 s
        tracker.feed(_record(i), mono=t)
        t += 0.1
    first = tracker.current.exam_id
    t += 600.0  # nothing for ten minutes
    for i in range(100, 200):  # the next woman from her first frame
        tracker.feed(_record(i), mono=t)
        t += 0.1
    assert tracker.current.exam_id != first
    tracker.end("source_end")
    assert [(b["ended_by"], b["frames"]) for b in ended] == [("gap", 100), ("source_end", 100)]
    assert ended[0]["duration_s"] < 11  # ended with its last ultrasound, not ten minutes on


def test_the_pages_hold_after_stop_ends_after_a_gap_with_no_frames_at_all():
    hook = LoopHook(LiveView(), end_gap_s=20.0)
    assert hook.accepts(_record(0), 100.0, True)
    hook.holding = True  # "stop" on the page; the same woman still on the screen
    assert not hook.accepts(_record(1), 100.1, True)
    # then the scanner is off for ten minutes, and the next woman's first frame comes
    assert hook.accepts(_record(2), 700.0, True)
    assert not hook.holding


def _recording(path, parts: list[tuple[str, int]]) -> None:
    """An MJPEG recording at FPS of ("heads" | "blank", frames) parts."""
    rng = np.random.default_rng(7)
    from tests.conftest import DATA

    heads = [_screen(cv2.imread(str(DATA / "hc18" / "images" / name)), rng, True)
             for name in HEADS]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS,
                             (heads[0].shape[1], heads[0].shape[0]))
    assert writer.isOpened()
    try:
        for kind, count in parts:
            for i in range(count):
                writer.write(heads[(i // 8) % len(heads)] if kind == "heads"
                             else np.zeros_like(heads[0]))
    finally:
        writer.release()


def _run_with_a_stop(tmp_path, monkeypatch, parts, stop_at: int):
    """The device loop with its page on the recording; "stop" is tapped on the page at
    frame `stop_at`. Returns the settings and the run's journaled exams."""
    video = tmp_path / "scan.avi"
    _recording(video, parts)
    state = tmp_path / "state"
    write_pin(state, PIN)
    seen = {"frames": 0}
    original = LoopHook._after_frame

    def tapping(self, image, record, shown, class_map, mono, tracker):
        seen["frames"] += 1
        if seen["frames"] == stop_at:
            self.view.command("stop")
        return original(self, image, record, shown, class_map, mono, tracker)

    monkeypatch.setattr(LoopHook, "_after_frame", tapping)
    monkeypatch.setattr(LoopHook, "linger", lambda self, stopped, poll_s=0.2: None)
    cfg = tmp_path / "device.toml"
    cfg.write_text(f"""
[source]
spec = "{video}"
[device]
state_dir = "{state}"
[loop]
log_every = 0
[web]
listen = "127.0.0.1:{free_port()}"
""")
    settings = load_settings(cfg)
    assert run(settings, echo=lambda _: None) == 0
    journal = Journal(state / JOURNAL_FILE)
    try:
        return settings, journal.exams()
    finally:
        journal.close()


def test_the_pages_hold_counts_the_gap_on_the_recordings_clock(tmp_path, monkeypatch):
    """Read faster than it was made, a recording's 30 s of blank screen between two women
    pass in a few seconds of the box's time: the hold after "stop" must still end there,
    as the exams' own gaps do, or the second woman's whole exam is thrown away."""
    _, exams = _run_with_a_stop(tmp_path, monkeypatch,
                                [("heads", 150), ("blank", 450), ("heads", 150)], stop_at=60)
    assert [e["ended_by"] for e in exams] == ["command", "source_end"]
    assert exams[1]["frames"] >= 140  # the second woman, from her first frames


def test_a_recovery_after_a_kill_rebuilds_no_exam_the_midwife_had_stopped(tmp_path,
                                                                        monkeypatch):
    """After "stop" the frames are journaled but held from the exams. Killed while held,
    the run's recovery must replay only what the exams saw: it rebuilt a "recovered" exam
    of the held frames and sent it to the district."""
    settings, exams = _run_with_a_stop(tmp_path, monkeypatch, [("heads", 150)], stop_at=60)
    assert [e["ended_by"] for e in exams] == ["command"]
    db = Path(settings.device.state_dir) / JOURNAL_FILE
    with sqlite3.connect(db) as conn:  # as a kill leaves it: the run never closed
        conn.execute("UPDATE runs SET ended_ts = NULL")
    queued = []

    class Uplink:
        def enqueue_exam(self, body, key=None):
            queued.append(body)
            return len(queued)

    journal = Journal(db)
    try:
        recover_runs(settings, journal, Uplink())
        assert [b["ended_by"] for b in queued] == ["command"]  # the real one, queued again
        assert [e["ended_by"] for e in journal.exams()] == ["command"]
    finally:
        journal.close()


def test_a_best_frames_thumbnail_is_written_soon_even_if_no_other_plane_improves(tmp_path):
    """A better frame 0.1 s after its plane's last thumbnail waits out the thumbnails'
    interval; it then shows, though no better frame follows. It waited, with the worse
    frame's picture beside its figures, until the exam ended."""
    from edge.exam.session import ExamSession
    from edge.exam.thumbs import ThumbStore

    session = ExamSession(find_protocol("biometry"), ThumbStore(tmp_path, 10**8,
                                                                shown_as=str(tmp_path)),
                          ExamSettings())
    worse, better = (np.full((240, 320, 3), grey, np.uint8) for grey in (40, 220))
    record = _record(0)
    session.add(record, worse, None, now=0.0)
    session.add({**_record(1), "quality": {**record["quality"], "score": 0.95}}, better,
                None, now=0.1)
    for i in range(2, 40):  # four seconds of worse frames
        session.add({**_record(i), "quality": {**record["quality"], "score": 0.5}}, worse,
                    None, now=0.1 + i * 0.1)
    best = session.checklist()[0]["best"]
    assert best["frame"] == 1
    assert cv2.imread(best["thumbnail"]).mean() > 200  # its own picture, not frame 0's


def test_an_ended_exams_page_shows_the_best_frame_the_exam_chose_live():
    """Live, a slot's best frame ranks by its quality less the learned head's faults; the
    page of the ended exam, rebuilt from the journal, ranked by the plain quality and so
    showed another frame, another HC and another picture than the exam had chosen."""
    from edge.exam.session import ExamSession
    from edge.web.history import checklist as journaled_checklist

    protocol = find_protocol("biometry")
    session = ExamSession(protocol, None)

    def head(i: int, plane: str, score: float, hc: float, noise: float) -> dict:
        record = _record(i)
        return {**record, "plane": plane,
                "quality": {**record["quality"], "score": score, "learned": {"noise": noise}},
                "biometry": {"status": "ok", "hc_mm": hc, "bpd_mm": 50.0, "ofd_mm": 60.0,
                             "pixel_size_mm": 0.1}}

    session.add(head(0, "Brain (Tv.)", 0.95, 180.0, 0.6))  # every rule passes; noisy
    session.add(head(1, "Brain (Cb.)", 0.90, 172.0, 0.0))  # a little lower, clean
    body = session.finish("source_end")
    live = session.checklist()[0]["best"]
    assert (live["frame"], live["hc_mm"]) == (1, 172.0)
    journaled = journaled_checklist(body, session.best_frames(), protocol)[0]["best"]
    assert (journaled["frame"], journaled["plane"], journaled["hc_mm"]) == \
        (live["frame"], live["plane"], live["hc_mm"])


def test_the_pages_hold_ends_as_an_exam_does_whatever_mix_of_silence_and_blank_frames():
    """A pause with no frames then blank frames add up, as they do for the tracker: 25 s
    without ultrasound end the hold after "stop" (counted from the first blank frame, the
    next woman was held back)."""
    hook = LoopHook(LiveView(), end_gap_s=20.0)
    assert hook.accepts(_record(0), 0.0, True)
    hook.holding = True
    for t in (15.0, 18.0):  # no frames for 15 s, then blank ones
        assert not hook.accepts(_record(1, False), t, False)
    assert hook.accepts(_record(2), 25.0, True)  # the next woman
    assert not hook.holding


def test_a_damaged_quality_read_back_from_the_journal_is_refused_not_a_crash(tmp_path):
    """A summary read back at a start with a plane quality of 1e30 (a damaged row) is
    refused in one line, as before; cutting its digits raised InvalidOperation, which
    stopped every start."""
    from edge.uplink import messages

    body = {"exam_id": "e-1", "source_id": "0123456789ab", "started_ts": 1.7e9,
            "ended_ts": 1.7e9 + 60, "duration_s": 60.0, "frames": 10, "frames_scored": 10,
            "frames_failed": 0, "planes": {"Brain (Tv.)": [10, 0.9, 1e30]},
            "latency_ms": {"p50": 5.0, "p90": 6.0}, "models": {"plane_student": "1.5.0"},
            "protocol": {"name": "biometry", "required": 1, "captured": 1, "missing": []},
            "ended_by": "gap"}
    env = messages.envelope("exam", "box-1", "clinic-1", "0d6c2f7e-1b7a-4f0e-9c7c-0a1b2c3d")
    payload = messages.build_exam(env, body)  # the schema check downstream refuses it
    assert payload["planes"]["Brain (Tv.)"][2] == 1e30
    from edge.uplink.mqtt import MqttSettings, Uplink

    uplink = Uplink(MqttSettings(device_id="box-1", clinic_id="clinic-1"), tmp_path / "box")
    try:
        assert uplink.enqueue_exam(body, key="e-1") is None
    finally:
        uplink.close()


def test_an_exams_faults_leave_out_the_probe_in_the_air_after_its_last_ultrasound():
    """An exam ended by a gap ends with the probe lifted: those blank frames' faults ("no
    image", washed out) were the exam's most frequent ones, sent to the district. Blank
    frames between two stretches of scanning still count."""
    from edge.exam.tally import ExamTally

    def frame(i: int, content: bool, failing: tuple[str, ...]) -> dict:
        record = _record(i, content)
        criteria = {name: {"pass": False, "value": 0.0} for name in failing}
        criteria["content"] = {"pass": content, "value": 0.8 if content else 0.0}
        return {**record, "quality": {**record["quality"], "criteria": criteria}}

    tally = ExamTally()
    for i in range(75):
        tally.add(frame(i, True, ("zoom",) if i % 5 == 0 else ()))
    for i in range(75, 80):  # lifted for a moment, then scanning again
        tally.add(frame(i, False, ("gain",)))
    tally.add(frame(80, True, ()))
    for i in range(81, 155):  # lifted for good: the gap that ends the exam
        tally.add(frame(i, False, ("gain", "washed_out")))
    assert tally.top_deficiencies() == {"zoom": 15, "content": 5, "gain": 5}
