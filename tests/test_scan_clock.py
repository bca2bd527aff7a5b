"""An exam over a recorded video lasts as long as the video, and its gaps are the video's.

A file is read as fast as the box can: on capture times a 10-minute recording read in a
minute was a 1-minute exam at the district, and the blank screen between two women, read
in a fraction of its length, never ended the first exam. Real frames, real processes.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.clock import ScanClock
from edge.capture.sources import Frame, VideoFileSource
from tests.cli_run import sonoedge

HEADS = ("010_HC.png", "200_HC.png", "420_HC.png")
FPS = 2.0  # a slow recording, so its length is far from the time it takes to read


def _frame(source: str, t_mono: float, t_media: float | None) -> Frame:
    return Frame(source, 0, None, t_mono, 1e9 + t_mono, "none", t_media=t_media)


def test_live_frames_keep_their_capture_time():
    clock = ScanClock()
    assert [clock(_frame("v4l2:/dev/video0", t, None)) for t in (5.0, 5.1, 7.0)] == [5.0, 5.1,
                                                                                     7.0]


def test_a_recordings_frames_are_spaced_by_the_recording_not_by_reading():
    clock = ScanClock()
    times = [clock(_frame("a.mp4", 100.0 + 0.01 * i, i / 25)) for i in range(3)]
    assert times == pytest.approx([100.0, 100.04, 100.08])


def test_the_clock_never_runs_backwards_into_the_next_recording_or_live_frames():
    clock = ScanClock()
    ends_at = clock(_frame("a.mp4", 100.0, 0.0)) and clock(_frame("a.mp4", 101.0, 60.0))
    assert ends_at == 160.0
    second = clock(_frame("b.mp4", 102.0, 0.0))  # read at 102 s, but a.mp4 ran to 160 s
    assert second == 160.0 and clock(_frame("b.mp4", 102.5, 2.0)) == 162.0
    assert clock(_frame("live", 103.0, None)) == 162.0  # held, not 59 s back


def test_a_video_file_gives_each_frame_its_place_in_the_recording(tmp_path, data_dir):
    path = _video(tmp_path / "clip.avi", data_dir, [HEADS[0]] * 3, fps=FPS)
    with VideoFileSource(path) as source:
        assert [f.t_media for f in source] == [0.0, 0.5, 1.0]


def _video(path: Path, data_dir: Path, names: list[str | None], fps: float,
           size: tuple[int, int] = (400, 300)) -> Path:
    """A video of real HC18 heads (None: a black frame, the probe lifted off)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for name in names:
        image = np.zeros((size[1], size[0], 3), np.uint8) if name is None else cv2.resize(
            cv2.imread(str(data_dir / "hc18" / "images" / name)), size)
        writer.write(image)
    writer.release()
    return path


def test_sonoedge_exam_on_a_video_reports_the_videos_length(tmp_path, data_dir):
    names = [HEADS[i % 3] for i in range(21)]  # 21 frames at 2 fps: 10 s from first to last
    path = _video(tmp_path / "sweep.avi", data_dir, names, fps=FPS)
    proc = sonoedge("exam", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    exam = json.loads(proc.stdout)["exam"]
    assert exam["frames"] == 21
    assert exam["duration_s"] == pytest.approx(10.0, abs=0.01)


def test_run_on_a_recording_ends_the_exam_at_the_recordings_blank_gap(tmp_path, data_dir):
    """Two women on one recording, 12 s of blank screen between them; the exam ends after
    5 s without ultrasound. Read in about a second, the gap was never seen."""
    first = [HEADS[i % 3] for i in range(8)]  # 3.5 s from first to last frame
    names = first + [None] * 24 + first[::-1]  # 12 s blank
    path = _video(tmp_path / "day.avi", data_dir, names, fps=FPS)
    config = tmp_path / "device.toml"
    config.write_text("[exam]\nend_gap_s = 5.0\n")
    state = tmp_path / "state"
    proc = sonoedge("run", "--config", str(config), "--source", str(path), "--state-dir",
                    str(state), "--once")
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(state / "journal.sqlite") as db:
        exams = [json.loads(s) for (s,) in db.execute(
            "SELECT summary FROM exams ORDER BY started_ts")]
    assert [e["ended_by"] for e in exams] == ["gap", "source_end"], exams
    assert [e["frames"] for e in exams] == [8 + 9, 8]  # the first holds 4.5 s of its gap
    assert [e["duration_s"] for e in exams] == pytest.approx([3.5, 3.5], abs=0.01)


def test_the_journal_keeps_each_frame_on_the_recordings_clock(tmp_path, data_dir):
    """A run killed mid-recording rebuilds its exam from the journal's rows: their times
    must be the recording's too, or the rebuilt exam has the reading's length and gaps."""
    path = _video(tmp_path / "clip.avi", data_dir, [HEADS[i % 3] for i in range(6)], fps=FPS)
    state = tmp_path / "state"
    proc = sonoedge("run", "--source", str(path), "--state-dir", str(state), "--once")
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(state / "journal.sqlite") as db:
        times = [m for (m,) in db.execute("SELECT mono_s FROM results ORDER BY id")]
    assert np.diff(times) == pytest.approx([1 / FPS] * 5, abs=1e-6)
