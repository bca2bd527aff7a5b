"""The district report per clinic for a box that moved, and the trimming of a busy exam
summary to 1 KB: the same exam sheds the same way under any envelope (an exam queued again
under its msg_id after a restart is no conflict), and the digits it keeps are cut, never
rounded up to a threshold."""

from __future__ import annotations

import calendar
import json
from unittest import mock

from central import collector
from central.dashboard import queries as Q
from central.dashboard.store import open_db, refresh
from central.db import Store
from central.report import build_report, format_report
from edge.uplink import messages
from edge.uplink.mqtt import MqttSettings, Uplink
from wire import schema as wire_schema

NOW = calendar.timegm((2026, 12, 4, 12, 0, 0))
DAY = 86400.0


def exam_body(exam_id: str, ended: float, **extra) -> dict:
    body = {"exam_id": exam_id, "source_id": "0123456789ab", "started_ts": ended - 600,
            "ended_ts": ended, "duration_s": 600.0, "frames": 100, "frames_scored": 100,
            "frames_failed": 0,
            "planes": {"Brain (Tv.)": [10, 0.9, 0.8], "Background": [90, 0.9, 0.0]},
            "latency_ms": {"p50": 30.0, "p90": 60.0}, "models": {"plane_student": "1.5.0"},
            "protocol": {"name": "biometry", "required": 1, "captured": 1, "missing": []},
            "ended_by": "gap"}
    return {**body, **extra}


def busy_body(pad: int) -> dict:
    """An exam summary near the 1 KB limit; `pad` moves its size a byte at a time."""
    body = exam_body(
        "run7-1234", NOW,
        planes={"Brain (Tv.)": [10, 0.913, 0.812], "Brain (Cb.)": [7, 0.88, 0.7],
                "Background": [90, 0.95, 0.0], "uncertain": [5, 0.41]},
        biometry={"measured": 12, "declined": {"head_cut_off": 2}, "hc_mm": 180.25,
                  "hc_p10_mm": 176.1, "hc_p90_mm": 184.3, "bpd_mm": 50.1, "ofd_mm": 65.3,
                  "ga_weeks": 20.4, "ga_low_weeks": 20.1, "ga_high_weeks": 20.8,
                  "best_frames": 5},
        deficiencies={"gain_low": 12, "blur": 3})
    body["models"] = {"plane_student": "1.5.0", "head_segmenter": "1.4.0",
                      "quality_head": "1.0.0", "x" * (pad % 32 + 1): "1"}
    body["frames"] = 10 ** (pad // 32)
    return body


def send(up: Uplink, body: dict, wall: float, mono: float = 42.5) -> list:
    with mock.patch("edge.uplink.messages.time.time", return_value=wall), \
            mock.patch("edge.uplink.messages.time.monotonic", return_value=mono):
        assert up.enqueue_exam(body, key=body["exam_id"]) is not None
    msgs = up.outbox.pending(10_000)
    up.outbox.ack([m.msg_id for m in msgs])
    return msgs


def receive(store: Store, device_id: str, msgs: list, received: float, clinic: str):
    rows, dead = [], []
    for m in msgs:
        item = collector.check(f"sonoedge/{device_id}/{m.kind}", m.payload, 4096, "c1",
                               received, {device_id: clinic})
        (dead if isinstance(item, collector.DeadLetter) else rows).append(item)
    assert dead == []
    return store.store_batch(rows, dead)


# -- the report per clinic --------------------------------------------------------------------
def test_a_moved_box_counts_in_each_clinic_it_sent_from_as_on_the_dashboard(tmp_path):
    """Box 1 sends 6 exams from clinic-1, is moved (the registry names clinic-2) and sends
    2 more, one lost on the way after the move; box 2 stays at clinic-1. Per clinic the
    report counts the exams sent from it and each box once in every clinic it sent from, as
    the dashboard's completeness page does; the device table shows box 1 where it is now,
    with all its exams, and its hole goes to the clinic it is at now, counted once."""
    store = Store(str(tmp_path / "central.sqlite3"))
    box1 = Uplink(MqttSettings(device_id="box-1", clinic_id="clinic-1"), tmp_path / "box-1")
    box2 = Uplink(MqttSettings(device_id="box-2", clinic_id="clinic-1"), tmp_path / "box-2")
    try:
        for i in range(9):
            ts = NOW - (10 - i) * DAY
            msgs = send(box1, exam_body(f"a{i}", ts), ts)
            if i != 7:  # the 8th exam never arrives
                receive(store, "box-1", msgs, ts + 5, "clinic-1" if i < 6 else "clinic-2")
        for i in range(3):
            ts = NOW - (5 - i) * DAY
            receive(store, "box-2", send(box2, exam_body(f"b{i}", ts), ts), ts + 5, "clinic-1")
    finally:
        box1.close()
        box2.close()

    rep = build_report(store)
    clinics = {c["clinic_id"]: c for c in rep["clinics"]}
    assert {k: (c["devices"], c["exams"]) for k, c in clinics.items()} == {
        "clinic-1": (2, 9), "clinic-2": (1, 2)}
    assert clinics["clinic-1"]["last_seen_ts"] == NOW - 3 * DAY + 5
    assert clinics["clinic-2"]["last_seen_ts"] == NOW - 2 * DAY + 5
    devices = {d["device_id"]: d for d in rep["devices"]}
    assert (devices["box-1"]["clinic_id"], devices["box-1"]["exams"]) == ("clinic-2", 8)
    assert devices["box-1"]["missing"] == devices["box-1"]["lost"] == 1
    assert (clinics["clinic-2"]["missing"], clinics["clinic-2"]["lost"]) == (1, 1)
    assert (clinics["clinic-1"]["missing"], clinics["clinic-1"]["lost"]) == (0, 0)
    assert sum(c["exams"] for c in clinics.values()) == sum(d["exams"] for d in devices.values())

    db = open_db(str(tmp_path / "central.sqlite3"))
    refresh(db)
    page = Q.completeness_page(db, Q.Scope(None), Q.period(8, now=NOW))
    assert {c.clinic_id: c.exams for c in page.clinics} == {
        k: c["exams"] for k, c in clinics.items()}

    text = format_report(rep).split("\nClinics\n")[1].splitlines()
    assert any(line.split()[:3] == ["clinic-1", "2", "9"] for line in text), text
    assert any(line.split()[:3] == ["clinic-2", "1", "2"] for line in text), text


# -- the same exam sheds the same way under any envelope ----------------------------------------
def _envelope(boot_id: str, ts: float, mono_s: float, clinic_id: str = "clinic-1",
              device_id: str = "box-1") -> dict:
    return {"schema": 1, "kind": "exam", "device_id": device_id, "clinic_id": clinic_id,
            "boot_id": boot_id, "ts": ts, "mono_s": mono_s}


ENVELOPE_FIELDS = ("boot_id", "ts", "mono_s")


def test_an_exam_near_1kb_sheds_the_same_way_whatever_its_envelope():
    """What build_exam sheds depends on the body and the box, not on what the envelope
    gets anew when the exam is queued again after a restart (the boot id, the wall and
    monotonic time, the seq). Under the longest envelope the schema allows, with the
    longest msg_id and seq, it is still within 1 KB."""
    short = _envelope("0d6c2f7e-1b7a-4f0e-9c7c-0a1b2c3d4e5f", NOW, 42.5)
    longer = _envelope("proc-9f1e2d3c4b5a49688776a5b4c3d2e1f0", NOW + DAY + 0.123,
                       1234567.891)
    longest = _envelope("b" * 64, float(wire_schema.MAX_WALL_TS) - 0.001, 9999999999.999,
                        clinic_id="c" * 64, device_id="d" * 64)
    shed, outcomes = 0, set()
    for pad in range(320):  # frames up to 10**9: the schema takes up to 2**31 - 1
        body = busy_body(pad)
        payloads = [messages.build_exam(env, body) for env in (short, longer)]
        bodies = [{k: v for k, v in p.items() if k not in ENVELOPE_FIELDS} for p in payloads]
        assert bodies[0] == bodies[1], pad
        shed += bodies[0] != {**body, "schema": 1, "kind": "exam", "device_id": "box-1"}
        outcomes.add((tuple(bodies[0]["biometry"]), tuple(bodies[0]["models"])))
        wire = {**messages.build_exam(longest, body),
                "msg_id": "d425a522-9407-5d4f-bd31-82143c5b2769", "seq": 2 ** 53 - 1}
        assert wire_schema.validate_payload(wire) == [], pad
        assert len(json.dumps(wire, separators=(",", ":")).encode()) <= 1024, pad
    assert shed and len(outcomes) > 1  # the pads reach more than one shedding step


def test_an_ordinary_full_screen_sheds_no_more_than_before():
    """Deciding the shedding for any envelope costs an ordinary exam nothing: a 13-plane
    screen's summary keeps what it kept when the envelope in hand was measured."""
    planes = {name: [20, 0.93, 0.81] for name in wire_schema.PLANES
              if name not in ("Background", "uncertain")}
    env = _envelope("0d6c2f7e-1b7a-4f0e-9c7c-0a1b2c3d4e5f", NOW, 86400.5)

    def screen(faults: int) -> dict:
        return exam_body("run7-42", NOW, planes=planes,
                         deficiencies={f"fault_{i}": i + 1 for i in range(faults)},
                         protocol={"name": "screen", "required": 13, "captured": 11,
                                   "missing": ["3VV", "Lips"]})

    def measured_before(body: dict) -> int:  # the envelope in hand, 100 bytes for the rest
        return len(json.dumps({**env, **body}, separators=(",", ":"))) + 100

    # as many deficiencies as fitted whole before: within one entry of the limit
    fullest = max(n for n in range(1, 40) if measured_before(screen(n)) <= 1024)
    assert measured_before(screen(fullest)) > 1000
    assert messages.build_exam(env, screen(fullest)) == {**env, **screen(fullest)}


def test_an_exam_queued_again_after_a_restart_is_no_conflict_at_the_collector(tmp_path):
    """The first send (a short uptime) is stored; its outbox lost, the exam is queued
    again at the next start under the same msg_id with a new boot id, a long uptime and
    a later wall clock: the collector finds the same content, no conflict dead letter."""
    store = Store(str(tmp_path / "central.sqlite3"))
    first_env = _envelope("0d6c2f7e-1b7a-4f0e-9c7c-0a1b2c3d4e5f", NOW, 42.5)
    again_env = _envelope("9f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0", NOW + DAY + 0.123,
                          1234567.891)

    def whole(env: dict, body: dict) -> int:  # sent whole, with 100 bytes for msg_id and seq
        return len(json.dumps({**env, **body}, separators=(",", ":"))) + 100

    # a summary that would fit whole beside the first envelope but not beside the second
    body = next(b for b in map(busy_body, range(320))
                if whole(first_env, b) <= 1024 < whole(again_env, b))
    first_box = Uplink(MqttSettings(device_id="box-1", clinic_id="clinic-1"), tmp_path / "a")
    first_box.boot_id = first_env["boot_id"]
    again_box = Uplink(MqttSettings(device_id="box-1", clinic_id="clinic-1"), tmp_path / "b")
    again_box.boot_id = again_env["boot_id"]
    try:
        first = send(first_box, body, NOW, mono=42.5)
        again = send(again_box, body, NOW + DAY + 0.123, mono=1234567.891)
    finally:
        first_box.close()
        again_box.close()
    assert first[0].msg_id == again[0].msg_id
    assert not receive(store, "box-1", first, NOW + 5, "clinic-1").conflicts
    done = receive(store, "box-1", again, NOW + DAY + 5, "clinic-1")
    assert done.conflicts == []
    assert store.query("SELECT COUNT(*) FROM dead_letters") == [(0,)]


# -- digits are cut, not rounded ---------------------------------------------------------------
def test_a_shed_quality_under_the_capture_bar_stays_under_it(tmp_path):
    """A busy exam sheds plane confidences and qualities to two digits. A best frame of
    0.496 (the device judged it below its bar of 0.5: not captured) must not arrive as 0.5,
    or the quality page counts no exam below 0.5 for a slot completeness says was missed."""
    body = exam_body(
        "e-busy", NOW,
        planes={"Brain (Tv.)": [3, 0.996, 0.496], "Brain (Cb.)": [2, 0.29, 0.58],
                "Femur": [1, 1.0, 0.5], "Background": [90, 0.9, 0.0]},
        protocol={"name": "biometry", "required": 1, "captured": 0, "missing": ["Head"]})
    body["models"] = {"plane_student": "1.5.0",
                      **{f"model_with_a_long_name_{i}": "10.20.30-rc1+build" for i in range(12)}}
    env = _envelope("0d6c2f7e-1b7a-4f0e-9c7c-0a1b2c3d4e5f", NOW, 42.5)
    payload = messages.build_exam(env, body)
    assert payload["models"] == {"plane_student": "1.5.0"}  # shed: two digits by then
    planes = payload["planes"]
    assert planes["Brain (Tv.)"] == [3, 0.99, 0.49]
    assert planes["Brain (Cb.)"] == [2, 0.29, 0.58]  # 0.29 * 100 is 28.999...: still 0.29
    assert planes["Femur"] == [1, 1, 0.5]  # at the bar stays at it

    store = Store(str(tmp_path / "central.sqlite3"))
    box = Uplink(MqttSettings(device_id="box-1", clinic_id="clinic-1"), tmp_path / "box")
    try:
        receive(store, "box-1", send(box, body, NOW), NOW + 5, "clinic-1")
    finally:
        box.close()
    db = open_db(str(tmp_path / "central.sqlite3"))
    refresh(db)
    cells = {c.plane: c for c in Q.quality_page(db, Q.Scope(None), Q.period(8, now=NOW)).cells}
    assert cells["Brain (Tv.)"].below_capture == 1
    assert cells["Femur"].below_capture == 0


def test_an_exams_own_summary_cuts_a_quality_under_the_bar_it_does_not_round_it_up():
    """The summary keeps each plane's best quality to three digits: 0.49996, a frame the
    device did not capture (its bar is 0.5, unrounded), is 0.499 there, not 0.5."""
    from edge.exam.tally import ExamTally

    tally = ExamTally()
    tally.add({"source": "live", "frame": 0, "plane": "Brain (Tv.)", "plane_confidence": 0.9,
               "error": None, "model": "plane_student@1.5.0", "latency_ms": 5.0,
               "quality": {"score": 0.49996, "criteria": {}}})
    body = tally.body("live", NOW - 60, NOW, 0.0, 60.0, None, "e-1")
    assert body["planes"]["Brain (Tv.)"][2] == 0.499
