"""The run's frame rate is the frames' own, not the run's (found on a new user's walk,
eighth session of 5 December): a demo run with the page open lingered on its last exam
after the clip ended, and its summary said 3.1 fps for a clip played at 15. A health
message says the rate since the last one, so the district sees a grabber that died."""

from __future__ import annotations

import edge.loop
from edge.loop import RunStats


def test_the_rate_is_over_the_frames_span_not_the_time_after_them(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(edge.loop.time, "monotonic", lambda: clock[0])
    stats = RunStats(started_mono=clock[0])
    clock[0] += 5.0  # models loading, the source opening
    for _ in range(31):  # two seconds of frames at 15 a second
        stats.add({"plane": "Background", "error": None})
        clock[0] += 1 / 15
    clock[0] += 60.0  # the page lingers on the last exam; a grabber unplugged
    assert abs(stats.snapshot()["fps"] - 15.0) < 0.01
    one = RunStats(started_mono=clock[0])
    clock[0] += 0.5
    one.add({"plane": "Background", "error": None})
    assert abs(one.snapshot()["fps"] - 2.0) < 0.01  # a single image: since the run began


def test_a_health_message_gives_the_rate_since_the_last_so_a_dead_grabber_shows(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(edge.loop.time, "monotonic", lambda: clock[0])
    stats = RunStats(started_mono=clock[0])
    for _ in range(60):  # a minute at 1 frame a second
        clock[0] += 1.0
        stats.add({"plane": "Background", "error": None})
    assert abs(stats.snapshot(recent=True)["fps"] - 1.0) < 0.01
    clock[0] += 60.0  # the grabber is out for the next minute
    assert stats.snapshot(recent=True)["fps"] == 0.0
    assert abs(stats.snapshot()["fps"] - 1.0) < 0.01  # the summary: the frames' own rate
