"""The durable outbox, the message payloads and their schemas, without a broker."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap

import jsonschema
import pytest

from edge.exam import tally
from edge.store.outbox import ROW_OVERHEAD_BYTES, Outbox, OutboxError, open_outbox, read_boot_id
from edge.uplink import messages
from edge.uplink.mqtt import MqttSettings, Uplink
from tests.conftest_mqtt import REPO, py_env
from tests.device_sim import frame_result
from wire import schema as wire_schema
from wire.mqtt import backoff_delay, parse_mqtt_url, redact_url


def health_body(n: int = 0) -> dict:
    env = messages.envelope("health", "dev-a", "c1", "boot")
    return messages.build_health(env, {"fps": 30.0, "n": n}, {}, {}, 100.0, {}, 1.0, 60.0)


def exam_body() -> dict:
    env = messages.envelope("exam", "dev-a", "c1", "boot")
    results = [frame_result(i) for i in range(20)]
    return messages.build_exam(env, tally.summarize_exam(results, "clip.mp4", 1.0, 2.0))


# -- durability and identity ------------------------------------------------------------------
def test_outbox_uses_wal_and_full_sync(tmp_path):
    box = open_outbox(tmp_path)
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_each_message_gets_a_uuid_and_the_next_seq_even_after_reopening(tmp_path):
    box = open_outbox(tmp_path)
    first = [box.enqueue("exam", exam_body()) for _ in range(3)]
    box.close()
    box = open_outbox(tmp_path)
    later = box.enqueue("health", health_body())
    assert [m.seq for m in first] + [later.seq] == [1, 2, 3, 4]
    assert len({m.msg_id for m in [*first, later]}) == 4
    stored = json.loads(box.pending(10)[0].payload)
    assert stored["msg_id"] == first[0].msg_id and stored["seq"] == 1


def test_an_enqueued_message_survives_sigkill_of_the_writer(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        from edge.store.outbox import open_outbox
        box = open_outbox({str(tmp_path)!r})
        m = box.enqueue("health", {{"kind": "health"}})
        print(m.msg_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=py_env(), cwd=str(REPO), timeout=30)
    assert out.returncode == -signal.SIGKILL
    box = open_outbox(tmp_path)
    assert [m.msg_id for m in box.pending(10)] == [out.stdout.strip()]


def test_only_acknowledged_messages_leave_and_in_flight_ones_are_skipped(tmp_path):
    box = open_outbox(tmp_path)
    msgs = [box.enqueue("health", health_body(i)) for i in range(5)]
    assert [m.seq for m in box.pending(2)] == [1, 2]
    assert [m.seq for m in box.pending(2, exclude=[msgs[0].msg_id])] == [2, 3]
    assert box.ack([msgs[1].msg_id, msgs[3].msg_id, "unknown-id"]) == 2
    assert [m.seq for m in box.pending(10)] == [1, 3, 5]
    assert box.counts()["used_bytes"] == sum(
        m.size + ROW_OVERHEAD_BYTES for m in box.pending(10))


def test_a_refused_message_is_kept_but_no_longer_blocks_the_queue(tmp_path):
    box = open_outbox(tmp_path)
    a, b = box.enqueue("exam", exam_body()), box.enqueue("exam", exam_body())
    box.reject(a.msg_id, "broker refused: Not authorized")
    assert [m.msg_id for m in box.pending(10)] == [b.msg_id]
    assert box.counts()["rejected"] == 1 and box.list()[0].reason.endswith("Not authorized")
    assert box.retry_rejected() == 1 and len(box.pending(10)) == 2


def test_her_refused_exams_and_corrections_are_counted_for_her_chip_and_health_is_not(
        tmp_path):
    """The midwife's uplink chip (`exam_counts`) counts her exams and corrections the broker
    refused (none reaches the district until `--retry-rejected`), never the box's health
    messages refused beside them; `sonoedge status` (`counts_of`) counts every refused
    message and her exams among them. Across a reopen, and back to none after the retry."""
    box = open_outbox(tmp_path)
    exam = box.enqueue("exam", exam_body())
    dates = box.enqueue("dates", messages.build_dates(
        messages.envelope("dates", "dev-a", "c1", "boot"), "e1", 25.29, 1000.0))
    health = [box.enqueue("health", health_body(i)) for i in range(3)]
    box.enqueue("exam", exam_body())  # still to go
    for msg in (exam, dates, *health):
        box.reject(msg.msg_id, "broker refused: Not authorized")
    assert box.exam_counts()["rejected"] == 2 and box.exam_counts()["pending"] == 1
    box.close()
    box = open_outbox(tmp_path)
    counts = box.exam_counts()
    assert (counts["rejected"], counts["pending"], counts["awaiting_receipt"]) == (2, 1, 0)
    assert (box.counts()["rejected"], box.counts()["rejected_exams"]) == (5, 2)
    assert box.retry_rejected() == 5
    assert box.exam_counts()["rejected"] == 0 and box.exam_counts()["pending"] == 3
    assert box.counts()["rejected_exams"] == 0
    # a state no send takes (a damaged or hand-edited row) is never sent: counted alike
    box._db.execute("UPDATE outbox SET state = 'lost' WHERE msg_id = ?", (exam.msg_id,))
    assert box.exam_counts()["rejected"] == 1 and box.counts()["rejected_exams"] == 1


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    box = open_outbox(tmp_path, quota_bytes=2000)
    with pytest.raises(OutboxError, match="kind must be one of"):
        box.enqueue("selfie", {})
    with pytest.raises(OutboxError, match="not plain JSON"):
        box.enqueue("health", {"x": float("nan")})
    with pytest.raises(OutboxError, match="exceeds outbox quota 2000"):
        box.enqueue("health", {"x": "y" * 5000})
    assert box.counts()["pending"] == 0 and box.last_seq() == 0


def test_boot_id_is_the_kernels(tmp_path):
    assert read_boot_id() == open("/proc/sys/kernel/random/boot_id").read().strip()


# -- quota and drop policy ---------------------------------------------------------------------
def test_quota_drops_oldest_health_first_and_never_an_exam_while_health_is_left(tmp_path):
    size_h = len(json.dumps(health_body())) + 60 + ROW_OVERHEAD_BYTES
    size_e = len(json.dumps(exam_body())) + 60 + ROW_OVERHEAD_BYTES
    quota = 4 * size_e + 6 * size_h
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=quota)
    exams = []
    for i in range(40):
        m = box.enqueue("health", health_body(i))
        assert m is not None
        if i % 10 == 0:
            exams.append(box.enqueue("exam", exam_body()))
    pending = box.pending(100)
    kept_health = [json.loads(m.payload)["loop"]["n"] for m in pending if m.kind == "health"]
    assert [m.msg_id for m in pending if m.kind == "exam"] == [e.msg_id for e in exams]
    assert kept_health == sorted(kept_health) and kept_health[-1] == 39  # the newest stay
    c = box.counts()
    assert c["dropped_health"] == 40 - len(kept_health) > 0 and c["dropped_exam"] == 0
    assert c["used_bytes"] <= quota


def test_health_arriving_at_an_outbox_full_of_exams_is_itself_dropped(tmp_path):
    size_e = len(json.dumps(exam_body())) + 60 + ROW_OVERHEAD_BYTES
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=3 * size_e)
    exams = [box.enqueue("exam", exam_body()) for _ in range(3)]
    assert box.enqueue("health", health_body()) is None
    assert [m.msg_id for m in box.pending(10)] == [e.msg_id for e in exams]
    assert box.counts()["dropped_health"] == 1
    assert box.enqueue("exam", exam_body()).seq == 5  # the dropped health used seq 4: a gap


def test_with_no_health_left_the_oldest_exam_goes(tmp_path):
    size_e = len(json.dumps(exam_body())) + 60 + ROW_OVERHEAD_BYTES
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=3 * size_e)
    exams = [box.enqueue("exam", exam_body()) for _ in range(4)]
    assert [m.msg_id for m in box.pending(10)] == [e.msg_id for e in exams[1:]]
    assert box.counts()["dropped_exam"] == 1


def test_an_age_by_dates_correction_is_kept_like_an_exam_under_the_quota(tmp_path):
    """A correction (`dates`) outranks every health message, and when the outbox holds only
    exams and corrections the oldest of them goes first, counted as a dropped exam (the
    health message's drop counters know two kinds)."""
    def correction(i: int) -> dict:
        env = messages.envelope("dates", "dev-a", "c1", "boot")
        return messages.build_dates(env, f"e{i}", 25.29, 1000.0 + i)

    size_e = len(json.dumps(exam_body())) + 60 + ROW_OVERHEAD_BYTES
    size_h = len(json.dumps(health_body())) + 60 + ROW_OVERHEAD_BYTES
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=2 * size_e + 2 * size_h)
    first = box.enqueue("dates", correction(0))
    exam = box.enqueue("exam", exam_body())
    for i in range(12):
        assert box.enqueue("health", health_body(i)) is not None
    assert {m.msg_id for m in box.pending(100) if m.kind != "health"} == {first.msg_id,
                                                                         exam.msg_id}
    assert box.counts()["dropped_exam"] == 0
    box = Outbox(tmp_path / "o2.sqlite3", quota_bytes=3 * size_e)
    kept = [box.enqueue("dates", correction(0)), box.enqueue("exam", exam_body()),
            box.enqueue("exam", exam_body())]
    for i in range(1, 30):  # corrections are small: many fit where one exam went
        kept.append(box.enqueue("dates", correction(i)))
        if box.counts()["dropped_exam"]:
            break
    assert kept[0].msg_id not in {m.msg_id for m in box.pending(100)}  # the oldest went
    assert box.counts()["dropped_exam"] == 1 and box.drop_report()["exam"] == 1
    with pytest.raises(OutboxError, match="outbox kind must be one of"):
        box.enqueue("status", {})


def test_drop_counters_persist_and_each_drop_is_reported_as_new_once(tmp_path):
    size_h = len(json.dumps(health_body())) + 60 + ROW_OVERHEAD_BYTES
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=2 * size_h)
    for i in range(5):
        box.enqueue("health", health_body(i))
    box.close()
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=2 * size_h)
    report = box.drop_report()
    assert report == {"health": 3, "exam": 0, "health_new": 3, "exam_new": 0}
    box.enqueue("health", health_body(), reports_drops=report)  # drops one more to fit
    report = box.drop_report()
    assert report == {"health": 4, "exam": 0, "health_new": 1, "exam_new": 0}
    box.enqueue("health", health_body(), reports_drops=report)
    assert box.drop_report()["health_new"] == 1  # the one this message's room cost


def test_drops_a_health_message_did_not_carry_away_are_reported_by_the_next(tmp_path):
    # The baseline moved when the report was read: a health message then dropped on arrival
    # (the outbox full of exams) or refused took its "new" drops with it, unreported.
    size_e = len(json.dumps(exam_body())) + 60 + ROW_OVERHEAD_BYTES
    box = Outbox(tmp_path / "o.sqlite3", quota_bytes=2 * size_e)
    box.enqueue("exam", exam_body())
    box.enqueue("exam", exam_body())
    box.enqueue("exam", exam_body())  # the oldest exam goes: one exam dropped
    report = box.drop_report()
    assert report["exam_new"] == 1
    assert box.enqueue("health", health_body(), reports_drops=report) is None  # no room
    assert box.drop_report() == {"health": 1, "exam": 1, "health_new": 1, "exam_new": 1}
    for msg in box.pending(10):
        box.ack([msg.msg_id])
    report = box.drop_report()
    assert box.enqueue("health", health_body(), reports_drops=report) is not None
    assert box.drop_report()["exam_new"] == 0 and box.drop_report()["health_new"] == 0


# -- payloads and schemas ----------------------------------------------------------------------
def _jsonschema_ok(payload: dict) -> bool:
    schema = wire_schema.load_schema(payload["kind"])
    return jsonschema.Draft202012Validator(schema).is_valid(payload)


def test_schemas_are_valid_draft_2020_12():
    for kind in wire_schema.KINDS:
        jsonschema.Draft202012Validator.check_schema(wire_schema.load_schema(kind))


def test_worst_case_exam_summary_fits_in_1kb_and_names_no_file(tmp_path):
    """Every plane, abstentions and head biometry with every status and the age by dates
    still fit in 1 KB, shedding detail (HC spread, declined reasons) rather than refusing
    the exam, and never the age by dates."""
    results = []
    for i, plane in enumerate(wire_schema.PLANES * 10):
        r = frame_result(i) | {"plane": plane, "plane_confidence": 0.123456789,
                               "latency_ms": 123.456789, "error": None}
        results.append(r)
    results.append(frame_result(0) | {"error": "x" * 300, "plane": None})
    # every reason a head frame can be declined, measured heads, and abstained frames
    from edge.models.biometry import SCREEN_STRETCHED, STATUSES
    # a stretched screen first: found later in an exam, it drops the heads measured before
    # (edge/exam/tally.py), and this exam keeps six
    for i, status in enumerate(sorted(STATUSES * 3, key=lambda s: s != SCREEN_STRETCHED)):
        measured = status in ("ok", "ga_out_of_range")
        results.append(frame_result(i) | {
            "plane": "Brain (Tv.)", "plane_confidence": 0.9, "error": None,
            "biometry": {"status": status, "hc_mm": 171.23456 + i if measured else None,
                         "bpd_mm": 45.6789 if measured else None,
                         "ofd_mm": 61.2345 if measured else None}})
    results += [frame_result(i) | {"plane": "uncertain", "plane_confidence": 0.5,
                                   "error": None} for i in range(3)]
    models = {f"model_with_a_long_name_{i}": "10.20.30-rc1+build" for i in range(10)}
    source = "/data/Jane_Doe_1990-01-01/scan.mp4"
    box = open_outbox(tmp_path)
    up = Uplink(MqttSettings(device_id="clinic-0042-box-0001", clinic_id="clinic-0042"),
                tmp_path, models)
    summary = tally.summarize_exam(results, source, 1.0e9, 1.0e9 + 3600.0,
                                   model_versions=models)
    summary["biometry"]["ga_dates_weeks"] = 44.86  # the longest the page can give
    msg_id = up.enqueue_exam(summary)
    assert msg_id is not None
    raw = up.outbox.pending(1)[0].payload
    up.close()
    box.close()
    payload = json.loads(raw)
    assert len(raw) <= 1024, len(raw)
    assert "Jane" not in raw.decode() and "scan" not in raw.decode()
    assert payload["frames_failed"] == 1 and payload["frames_scored"] == len(results) - 1
    # every standard plane with its count; Background and the abstentions may be shed
    # (frames_scored still counts them), before the names of missed planes or qualities
    assert set(wire_schema.PLANES) - {"Background"} <= set(payload["planes"])
    assert payload["planes"]["4CH"][0] == 10
    bio = payload["biometry"]
    assert bio["measured"] == 6 and bio["ga_weeks"] is not None and 171 < bio["hc_mm"] < 195
    assert sum(bio["declined"].values()) == 3 * (len(STATUSES) - 2)  # all but the measured
    assert bio["ga_dates_weeks"] == 44.86  # the district's check of head size for age
    assert wire_schema.validate_payload(payload) == [] and _jsonschema_ok(payload)


def test_health_and_status_payloads_match_their_schemas(tmp_path):
    up = Uplink(MqttSettings(device_id="dev-a"), tmp_path, {"plane_student": "1.0.0"})
    up.enqueue_health({"fps": 29.97, "frames_dropped": 3, "backend": "litert-cpu"})
    health = json.loads(up.outbox.pending(1)[0].payload)
    status = json.loads(up._status_payload("online"))
    up.close()
    for payload in (health, status):
        assert wire_schema.validate_payload(payload) == [] and _jsonschema_ok(payload)
    assert health["loop"]["fps"] == 29.97 and health["queue"]["pending"] == 0
    assert set(health["dropped"]) == {"health", "exam", "health_new", "exam_new"}
    assert health["disk_free_mb"] > 0 and health["models"] == {"plane_student": "1.0.0"}
    assert len(json.dumps(health)) < 1024


@pytest.mark.parametrize("breakage", [
    lambda p: p.pop("seq"),
    lambda p: p.update(seq=-1),
    lambda p: p.update(msg_id="not-a-uuid"),
    lambda p: p.update(device_id="a/b"),
    lambda p: p.update(planes={"Selfie": [1, 0.5]}),
    lambda p: p.update(planes={"4CH": [1, 1.5]}),
    lambda p: p.update(planes={"4CH": [1.5, 0.5]}),
    lambda p: p.update(planes={"4CH": [1, 0.5, 7]}),
    lambda p: p.update(image="base64..."),
    lambda p: p.update(frames="many"),
    lambda p: p.update(schema=2),
])
def test_builtin_validator_agrees_with_jsonschema_on_broken_exams(breakage, tmp_path):
    payload = exam_body() | {"msg_id": "6dc8fb1f-8408-4c82-9c6f-2c77bf98ddfc", "seq": 3}
    assert wire_schema.validate_payload(payload) == [] and _jsonschema_ok(payload)
    breakage(payload)
    assert wire_schema.validate_payload(payload) != []
    assert not _jsonschema_ok(payload)


# -- settings, URL, backoff, recording without a broker ----------------------------------------
def test_mqtt_url_parsing():
    t = parse_mqtt_url("mqtts://dev-a:p%40ss@broker.local")
    assert (t.host, t.port, t.tls, t.username, t.password) == (
        "broker.local", 8883, True, "dev-a", "p@ss")
    assert parse_mqtt_url("mqtt://127.0.0.1:1999").port == 1999


@pytest.mark.parametrize("url, why", [
    ("http://u:secret@h:1", "scheme must be mqtt"),
    ("mqtt://u:secret@:1883", "no host"),
    ("mqtt://u:secret@h:notaport", "Port could not be cast"),
    ("mqtt://u:secret@h:1883/topic", "unexpected path"),
])
def test_a_bad_url_gives_one_line_naming_it_without_the_password(url, why):
    with pytest.raises(ValueError) as err:
        parse_mqtt_url(url)
    text = str(err.value)
    assert why in text and redact_url(url) in text and "secret" not in text
    assert "\n" not in text


@pytest.mark.parametrize("url, why", [
    ("mqtt://u:secret@h:0", "port must be 1-65535"),  # was taken as 1883
    ("mqtt://u:secret@h\nost:1883", "control character"),  # urlsplit made it "host"
    ("mqtt://u:secret@" + "h" * 10240 + ":1883", "longer than 253"),  # was a 10 kB log line
])
def test_a_url_that_would_quietly_reach_another_broker_is_refused_in_one_short_line(url, why):
    with pytest.raises(ValueError) as err:
        parse_mqtt_url(url)
    text = str(err.value)
    assert why in text and "secret" not in text and "\n" not in text and len(text) < 400


def test_a_device_id_with_a_trailing_newline_is_refused_at_start(tmp_path):
    """The id "dev-a\n" passed its pattern ("$" matches before a final newline); every exam
    of the run then broke the schema and was never queued."""
    with pytest.raises(ValueError, match=re.escape("bad device_id 'dev-a\\n'")):
        Uplink(MqttSettings(device_id="dev-a\n"), tmp_path)
    with pytest.raises(ValueError, match="mqtt.clinic_id"):
        Uplink(MqttSettings(device_id="dev-a", clinic_id="clinic-7\n"), tmp_path)


@pytest.mark.parametrize("change, key", [
    ({"url": "mqtt://h:99999"}, "Port out of range"),
    ({"device_id": "a/b"}, "bad device_id 'a/b'"),
    ({"clinic_id": "Clinic #7"}, "mqtt.clinic_id"),
    ({"max_inflight": 0}, "mqtt.max_inflight must be positive"),
    ({"tls_ca": "/nonexistent/ca.crt"}, "mqtt.tls_ca: /nonexistent/ca.crt: no such file"),
    ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "mqtt.reconnect_max_s"),
])
def test_settings_that_would_fail_every_message_are_refused_at_start(tmp_path, change, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        Uplink(MqttSettings(**({"device_id": "dev-a"} | change)), tmp_path)


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    import random

    rng = random.Random(1)
    delays = [backoff_delay(a, 0.5, 30.0, rng) for a in range(12)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert delays[5] > delays[1] and max(delays) <= 30.0 and delays[-1] >= 15.0
    assert len({round(backoff_delay(3, 0.5, 30, rng), 6) for _ in range(20)}) > 10


def test_without_a_url_the_uplink_records_for_later(tmp_path):
    up = Uplink(MqttSettings(url="", device_id="dev-a"), tmp_path)
    up.start()
    up.enqueue_health({"fps": 1.0})
    assert up.drain(0.5) is False  # nothing can leave, nothing is lost
    up.close()
    box = open_outbox(tmp_path)
    assert box.counts()["pending"] == 1


def test_uplink_never_raises_on_a_bad_summary(tmp_path, caplog):
    up = Uplink(MqttSettings(device_id="dev-a"), tmp_path)
    assert up.enqueue_exam({"frames": "lots"}) is None
    assert "exam summary not stored" in caplog.text
    up.close()


def test_outbox_cli_lists_pending_messages(tmp_path):
    up = Uplink(MqttSettings(device_id="dev-a"), tmp_path)
    up.enqueue_health({"fps": 1.0})
    up.close()
    out = subprocess.run([sys.executable, "-m", "edge.cli.outbox", "outbox", "--state-dir",
                          str(tmp_path), "--json"], capture_output=True, text=True,
                         env=py_env(), cwd=str(REPO), timeout=30)
    data = json.loads(out.stdout)
    assert data["pending"] == 1 and data["messages"][0]["kind"] == "health"
    assert os.path.exists(tmp_path / "uplink-status.json")


def test_outbox_cli_names_a_corrupt_outbox_in_one_line(tmp_path):
    (tmp_path / "outbox.sqlite3").write_bytes(b"this is not a database" * 100)
    out = subprocess.run([sys.executable, "-m", "edge.cli.outbox", "outbox", "--state-dir",
                          str(tmp_path)], capture_output=True, text=True, env=py_env(),
                         cwd=str(REPO), timeout=30)
    assert out.returncode == 2 and "outbox.sqlite3" in out.stderr
    assert "Traceback" not in out.stderr
    # The device itself moves a corrupt outbox aside and starts a new one (issue 14).
    box = open_outbox(tmp_path)
    assert box.moved_aside is not None and box.moved_aside.read_bytes().startswith(b"this is")
    assert box.salvaged == 0 and box.counts()["pending"] == 0
    assert box.enqueue("health", health_body()).seq == 1
    box.close()
    assert sqlite3  # the module is used by the CLI under test


def test_a_message_tried_or_taken_uncounted_is_dated_again_and_the_collector_takes_it(
        tmp_path, monkeypatch):
    """A message tried before a step of the clock and sent again after it (its first try
    lost: no ack) kept the early times the clock behind gave it, and the district counted
    its exam that much early (the last notes' "exam tried before the step but delivered
    after"). Every queued message is now dated again, tried or not, and one taken for
    sending while a full disk lost its try's count; the collector takes a re-dated copy of
    a message it holds as the same message, and keeps the first."""
    from central.db import same_content

    box = Outbox(tmp_path / "outbox.sqlite3")
    try:
        for n in range(4):
            box.enqueue("exam", {"kind": "exam", "ts": 1_700_000_000.0 + n,
                                 "started_ts": 1_699_999_000.0 + n,
                                 "ended_ts": 1_699_999_900.0 + n, "exam_id": f"e{n}"})
        before = {m.seq: m.payload for m in box.list()}
        assert [m.seq for m in box.take_for_sending(1)] == [1]  # tried, counted
        real_tx = box._tx

        def full_disk():
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(box, "_tx", full_disk)
        assert [m.seq for m in box.take_for_sending(1, exclude=[box.list()[0].msg_id])] == [2]
        monkeypatch.setattr(box, "_tx", real_tx)
        assert [m.attempts for m in box.list()] == [1, 0, 0, 0]  # the second count was lost
        box.reject(box.list()[3].msg_id, "not authorised")  # the broker refused it: it never
        # arrived, and goes again once the district mends its ACL (`retry_rejected`)
        moved = box.shift_unsent_times(3600.0, float("inf"))
        assert moved.messages == 4 and moved.exam_ids == ("e0", "e1", "e2", "e3")
        for m in box.list():
            body, old = json.loads(m.payload), json.loads(before[m.seq])
            for key in ("ts", "started_ts", "ended_ts"):
                assert body[key] == old[key] + 3600.0, (m.seq, key)
            assert same_content(before[m.seq].decode(), m.payload.decode()), m.seq
    finally:
        box.close()


def test_after_a_step_the_next_batch_is_taken_after_the_publisher_says_online_again(
        tmp_path):
    """The district reads a box's clock lag from its "online" status (sent at a connect):
    a step that re-dated the queue is followed, in the same hold of the lock as the next
    batch, by a fresh status; a batch taken before the step went with the old lag."""
    box = Outbox(tmp_path / "outbox.sqlite3")
    said: list[str] = []
    try:
        box.enqueue("health", {"kind": "health", "ts": 1_700_000_000.0})
        box.enqueue("health", {"kind": "health", "ts": 1_700_000_001.0})
        first = box.take_for_sending(1, stepped=lambda: said.append("online"))
        assert [m.seq for m in first] == [1] and said == []  # no step yet
        box.shift_unsent_times(3600.0, float("inf"))
        assert [m.seq for m in box.take_for_sending(
            1, exclude=[first[0].msg_id], stepped=lambda: said.append("online"))] == [2]
        assert said == ["online"]
        box.take_for_sending(5, stepped=lambda: said.append("online"))
        assert said == ["online"]  # once per step
    finally:
        box.close()


def test_outbox_cli_shows_a_rows_hostile_texts_and_a_folders_name_on_their_own_lines(
        tmp_path):
    """A broker's reason, or a damaged row, may hold a newline or a terminal's escape: the
    listing shows them escaped, one line per message; a folder's name with a newline too."""
    state = tmp_path / "box\nstate"
    state.mkdir()
    up = Uplink(MqttSettings(device_id="dev-a"), state)
    up.enqueue_health({"fps": 1.0})
    up.close()
    with sqlite3.connect(state / "outbox.sqlite3") as db:
        db.execute("UPDATE outbox SET state = 'rejected', reason = ?, kind = ?",
                   ("not authorised\nFAKE 1 pending\x1b[31m", "exam\x1b[2J"))
    db.close()
    out = subprocess.run([sys.executable, "-m", "edge.cli.outbox", "outbox", "--state-dir",
                          str(state)], capture_output=True, text=True, env=py_env(),
                         cwd=str(REPO), timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, lines  # the summary, the header, the one message
    assert "not authorised\\x0aFAKE 1 pending\\x1b[31m" in lines[2]
    assert "exam\\x1b[2J" in lines[2] and "\x1b" not in out.stdout
    empty = tmp_path / "empty\nbox"
    empty.mkdir()
    for args in ([], ["--retry-rejected"]):
        said = subprocess.run([sys.executable, "-m", "edge.cli.outbox", "outbox",
                               "--state-dir", str(empty), *args], capture_output=True,
                              text=True, env=py_env(), cwd=str(REPO), timeout=30)
        assert said.returncode == 0 and len(said.stdout.splitlines()) == 1, said.stdout
        assert "empty\\x0abox" in said.stdout, said.stdout
