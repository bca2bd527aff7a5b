"""A box that puts its clock right says "online" again, so the district reads the clock's
new lag and does not move again what the box has already dated right.

The district dates an exam from a box whose clock is behind by that box's lag (the smaller
of its latest health message's and its latest "online" status's; central/dashboard/store.py
`_ClockLags`). The "online" status is sent at each connect only. A box connected while
60 days behind kept that status; when its clock was set, it dated its queued backlog again
(three days old), whose health then arrived three days late: the district took the
smaller lag, three days, and moved the backlog's exams, dated right by the box, to the day
they arrived. Real Mosquitto, a real collector process, the device's real uplink (its wall
clock, `time.time`, put 60 days behind in this process) and the real rollup.
"""

from __future__ import annotations

import time

import pytest

from central.dashboard.store import open_db, refresh
from edge.exam import tally
from edge.uplink.mqtt import MqttSettings, Uplink
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import wait_for
from tests.device_sim import frame_result

broker, collectors = fx.broker, fx.collectors  # fixtures
DAY_S = 86400.0
BEHIND_S = 60 * DAY_S


def test_a_box_that_steps_its_clock_says_online_again_and_its_backlog_keeps_its_days(
        broker, collectors, tmp_path, monkeypatch):
    real = time.time
    behind = [BEHIND_S]
    monkeypatch.setattr(time, "time", lambda: real() - behind[0])
    state = tmp_path / "dev"
    up = Uplink(MqttSettings(url=broker.url("dev-a"), device_id="dev-a", clinic_id="clinic-1",
                             reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=3),
                state, {"plane_student": "1.0.0"})
    up.start()
    try:
        # connected 60 days behind: its "online" status (retained) says so; nobody is
        # subscribed yet, so what it queues waits on the box (a health message first: the
        # district reads the lag of the latest before the exam)
        wait_for(lambda: up.status().get("connected"), 15, "the box connected")
        up._hold_until = time.monotonic() + 3600  # its publisher waits: the backlog queues
        behind[0] = BEHIND_S + 3 * DAY_S  # a backlog made three days ago, by the clock behind
        done = real() - 3 * DAY_S
        exam = tally.summarize_exam([frame_result(i) for i in range(5)], "live",
                                    time.time() - 600, time.time() - 60)
        assert up.enqueue_health({"fps": 15.0}) is not None
        assert up.enqueue_exam(exam, key="backlog-exam") is not None
        behind[0] = 0.0  # network time steps the clock right
        redated = up.clock_stepped(BEHIND_S, real() - BEHIND_S / 2)
        assert redated.messages == 2 and redated.exam_ids == (exam["exam_id"],)
        up._hold_until = 0.0
        # nobody is subscribed: the broker answers "no matching subscribers" and the
        # messages stay queued, tried; the fresh "online" went before that batch
        wait_for(lambda: up.outbox.list(5) and all(m.attempts for m in up.outbox.list(5)),
                 10, "the box to try its re-dated backlog")
        db = str(tmp_path / "central.sqlite3")
        collectors(broker.url("central"), db, tmp_path, "central-1").wait_subscribed()
        wait_for(lambda: up.outbox.pending_count() == 0, 20, "the backlog delivered")
    finally:
        up.close()
    rollup = open_db(db)
    try:
        wait_for(lambda: refresh(rollup).messages >= 0 and rollup.query(
            "SELECT ts FROM dash.exams"), 10, "the exam rolled up")
        (ts,), = rollup.query("SELECT ts FROM dash.exams")
    finally:
        rollup.close()
    # the box dated it right (three days ago); the district keeps that day
    assert ts == pytest.approx(done - 60, abs=120)
