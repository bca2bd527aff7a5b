"""The run's frame rate is the frames' own, not the run's (found on a new user's walk,
eighth session of 5 December): a demo run with the page open lingered on its last exam
after the clip ended, and its summary said 3.1 fps for a clip played at 15."""

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
