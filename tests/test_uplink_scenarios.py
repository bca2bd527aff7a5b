"""Store-and-forward end to end, with a real Mosquitto, real collectors and real processes.

Each scenario ends by asserting that the collector stored exactly the set of messages the
device produced: every msg_id the device enqueued, each sequence number once, nothing else.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from tests import conftest_mqtt as fx
from tests.conftest_mqtt import (
    REPO,
    device_args,
    outbox_last_seq,
    produced_ids,
    py_env,
    run_device,
    stored,
    wait_for,
)

broker, collectors, postgres = fx.broker, fx.collectors, fx.postgres  # fixtures


def assert_exactly_produced(db: str, state_dir, device: str = "dev-a") -> list[tuple]:
    """Stored == produced, each seq once, and the seqs are 1..last_seq with no hole."""
    rows = stored(db, device)
    ids = [r[0] for r in rows]
    seqs = [r[1] for r in rows]
    assert len(ids) == len(set(ids)), "a msg_id stored twice"
    assert len(seqs) == len(set(seqs)), "one seq stored under two msg_ids"
    assert set(ids) == produced_ids(state_dir, device)
    assert seqs == list(range(1, outbox_last_seq(state_dir) + 1))
    return rows


def wait_all_stored(db: str, state_dir, device: str = "dev-a", timeout_s: float = 30):
    want = produced_ids(state_dir, device)
    wait_for(lambda: {r[0] for r in stored(db, device)} >= want, timeout_s,
             f"{len(want)} messages from {device} in {db}")


def raw_client(broker, user: str, password: str | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{user}-{time.time()}",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(user, broker.passwords[user] if password is None else password)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    wait_for(c.is_connected, 5, f"{user} connected")
    return c


def publish_wait(c: mqtt.Client, topic: str, payload: bytes) -> object:
    """Publish QoS 1 and return the PUBACK reason code."""
    acks: dict = {}
    c.on_publish = lambda _c, _u, mid, rc, _p: acks.__setitem__(mid, rc)
    info = c.publish(topic, payload, qos=1)
    wait_for(lambda: info.mid in acks, 5, f"PUBACK for {topic}")
    return acks[info.mid]


# 1 ------------------------------------------------------------------------------------------
def test_broker_down_at_start_then_everything_arrives(broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    broker.stop()  # the collector's persistent session is saved with the broker
    state = tmp_path / "dev"
    dev = subprocess.Popen(device_args(state, broker.url("dev-a"), frames=200,
                                       drain_timeout=40),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=py_env(), cwd=str(REPO))
    try:
        wait_for(lambda: (state / "uplink-status.json").exists()
                 and "connection refused" in (state / "uplink-status.json").read_text(),
                 15, "the device to record that the broker is down")
        time.sleep(0.5)
        broker.start()
        out, err = dev.communicate(timeout=60)
    finally:
        dev.kill()
    assert dev.returncode == 0, err[-2000:]
    assert json.loads(out.splitlines()[-1])["drained"] is True
    assert "unreachable: connection refused" in err  # one clear log line
    wait_all_stored(db, state)
    rows = assert_exactly_produced(db, state)
    assert sum(1 for r in rows if r[2] == "exam") == 4  # 200 frames, one exam per 50


# 2 ------------------------------------------------------------------------------------------
def test_broker_killed_and_restarted_mid_publish(broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    state = tmp_path / "dev"
    dev = subprocess.Popen(device_args(state, broker.url("dev-a"), frames=1500, exam_every=5,
                                       health_every=10, frame_delay_s=0.002, max_inflight=5,
                                       drain_timeout=40, dates_every=3),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=py_env(), cwd=str(REPO))
    try:
        wait_for(lambda: len(stored(db, "dev-a")) >= 40, 20, "publishing under way")
        broker.stop(signal.SIGTERM)
        mid_count = len(stored(db, "dev-a"))
        time.sleep(0.7)
        broker.start()
        out, err = dev.communicate(timeout=60)
    finally:
        dev.kill()
    assert dev.returncode == 0, err[-2000:]
    assert "lost connection" in err
    total = len(produced_ids(state))
    assert mid_count < total, "the broker went down only after everything was sent"
    wait_all_stored(db, state)
    rows = assert_exactly_produced(db, state)
    # the age-by-dates corrections took the same road, under the broker's ACL, and their
    # seqs fill the sequence like the exams'
    assert sum(1 for r in rows if r[2] == "dates") == 100 == sum(
        1 for r in rows if r[2] == "exam") // 3


# 3 ------------------------------------------------------------------------------------------
def test_device_sigkilled_mid_publish_and_restarted_stores_nothing_twice(
        broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    state = tmp_path / "dev"
    dev = subprocess.Popen(device_args(state, broker.url("dev-a"), frames=2000, exam_every=4,
                                       health_every=10, frame_delay_s=0.002, drain_timeout=40),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=py_env(), cwd=str(REPO))
    try:
        wait_for(lambda: len(stored(db, "dev-a")) >= 60, 20, "publishing under way")
        dev.send_signal(signal.SIGKILL)
        dev.wait(timeout=10)
    finally:
        dev.kill()
    before = outbox_last_seq(state)
    assert len(stored(db, "dev-a")) < before + 1
    # Restart on the same state dir: no new frames, only the backlog.
    result = run_device(state, broker.url("dev-a"), frames=0, drain_timeout=30)
    assert result["drained"] is True and result["last_seq"] == before
    wait_for(lambda: len(stored(db, "dev-a")) >= before, 20, "the backlog to arrive")
    rows = stored(db, "dev-a")
    assert [r[1] for r in rows] == list(range(1, before + 1))  # each seq once, none missing
    assert len({r[0] for r in rows}) == before
    assert produced_ids(state) <= {r[0] for r in rows}


# 4 ------------------------------------------------------------------------------------------
def test_wrong_password_then_the_right_one(broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    state = tmp_path / "dev"
    result = run_device(state, broker.url("dev-a", password="wrong"), frames=200,
                        drain_timeout=1.5)
    assert result["drained"] is False and result["pending"] == 14  # kept working, kept all
    assert "refused login as 'dev-a'" in result["log"]
    status = subprocess.run([sys.executable, "-m", "edge.cli.outbox", "status", "--state-dir",
                             str(state)], capture_output=True, text=True, env=py_env(),
                            cwd=str(REPO), timeout=30).stdout
    # The simulator has exited: its last state is shown as that of a run that ended.
    assert "not running" in status and "check user name and password" in status
    assert "14 pending" in status
    result = run_device(state, broker.url("dev-a"), frames=0, drain_timeout=20)
    assert result["drained"] is True
    wait_all_stored(db, state)
    assert_exactly_produced(db, state)


# 5 ------------------------------------------------------------------------------------------
def test_outbox_quota_keeps_every_exam_and_counts_the_dropped_health(
        broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    state = tmp_path / "dev"
    offline = f"mqtt://dev-a:x@127.0.0.1:{broker.port + 0}"
    broker.stop()
    # Offline, 20 KB of outbox: 20 exams and 200 health messages do not fit.
    result = run_device(state, offline, frames=2000, exam_every=100, health_every=10,
                        quota_bytes=20_000, drain_timeout=0.5)
    assert result["pending_exam"] == 20 and result["dropped_exam"] == 0
    assert result["dropped_health"] > 150
    broker.start()
    # Back online: the backlog drains, then the next health reports the drops.
    result = run_device(state, broker.url("dev-a"), frames=0, quota_bytes=20_000,
                        drain_timeout=20, final_health=True)
    assert result["drained"] is True
    produced = produced_ids(state)
    wait_for(lambda: (stored(db, "dev-a") or [(0, 0)])[-1][1] == outbox_last_seq(state),
             20, "the final health")
    rows = stored(db, "dev-a")
    exams = [r for r in rows if r[2] == "exam"]
    health = [r for r in rows if r[2] == "health"]
    assert len(exams) == 20 and {r[0] for r in exams} <= produced
    assert {r[0] for r in rows} <= produced
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "central.cli", "report", "--db", db, "--json"],
        capture_output=True, text=True, env=py_env(), cwd=str(REPO), timeout=30).stdout)
    dev = report["devices"][0]
    assert dev["dropped_exam"] == 0 and dev["dropped_health"] == result["dropped_health"]
    assert dev["missing"] == dev["dropped_health"] and dev["lost"] == 0
    assert len(health) + dev["dropped_health"] == 201  # 200 offline + 1 online


# 6 ------------------------------------------------------------------------------------------
def test_malformed_messages_are_dead_lettered_and_the_collector_keeps_running(
        broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    raw = raw_client(broker, "dev-a")
    try:
        publish_wait(raw, "sonoedge/dev-a/exam", b"{not json")
        publish_wait(raw, "sonoedge/dev-a/exam", json.dumps({"schema": 1, "kind": "exam"})
                     .encode())
        publish_wait(raw, "sonoedge/dev-a/health", b'{"pad": "' + b"x" * 10_000 + b'"}')
        publish_wait(raw, "sonoedge/dev-a/selfie", b'{"kind": "selfie"}')
        publish_wait(raw, "sonoedge/dev-a/exam", b"\xff\xfe binary")
    finally:
        raw.loop_stop()
        raw.disconnect()
    state = tmp_path / "dev"
    run_device(state, broker.url("dev-a"), frames=50, drain_timeout=20)
    wait_all_stored(db, state)
    assert not c.dead()
    assert_exactly_produced(db, state)
    import sqlite3

    conn = sqlite3.connect(db)
    reasons = sorted(r for (r,) in conn.execute("SELECT reason FROM dead_letters"))
    conn.close()
    assert len(reasons) == 5
    assert reasons[0].startswith("bad JSON") and reasons[1].startswith("bad JSON")
    assert reasons[2].startswith("oversize: 10011 bytes")
    assert reasons[3].startswith("schema: $: missing msg_id")
    assert reasons[4] == "unknown kind 'selfie'"
    assert c.log_text().count("dead letter on") == 5


# 7 ------------------------------------------------------------------------------------------
def test_acl_refuses_a_device_publishing_under_another_devices_prefix(
        broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    got: list = []
    spy = raw_client(broker, "dev-a")
    spy.on_message = lambda _c, _u, msg: got.append(msg.topic)
    spy.subscribe("sonoedge/#", qos=1)
    try:
        reason = publish_wait(spy, "sonoedge/dev-b/exam", b'{"kind": "exam"}')
        assert reason.is_failure and str(reason) == "Not authorized"
        # The uplink with dev-a's credentials but dev-b's id: refused, kept, not retried.
        state = tmp_path / "dev"
        result = run_device(state, broker.url("dev-a"), device="dev-b", frames=50,
                            drain_timeout=10)
        assert result["rejected"] == 3 and result["pending"] == 0
        assert "broker refused message" in result["log"]
        # dev-b itself publishes; dev-a (subscribed to everything) reads none of it.
        run_device(tmp_path / "dev-b", broker.url("dev-b"), device="dev-b", frames=50)
        wait_all_stored(db, tmp_path / "dev-b", "dev-b")
    finally:
        spy.loop_stop()
        spy.disconnect()
    assert got == []
    assert_exactly_produced(db, tmp_path / "dev-b", "dev-b")


# 8 ------------------------------------------------------------------------------------------
def test_two_collectors_on_a_shared_subscription_store_each_message_once_in_postgres(
        broker, collectors, postgres, tmp_path):
    import psycopg

    db = postgres.url
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS messages, dead_letters")
    c1 = collectors(broker.url("central"), db, tmp_path, "central-1", share=True)
    c2 = collectors(broker.url("central-2"), db, tmp_path, "central-2", share=True)
    c1.wait_subscribed()
    c2.wait_subscribed()
    procs = [subprocess.Popen(device_args(tmp_path / dev, broker.url(dev), dev, frames=600,
                                          exam_every=5, health_every=5, drain_timeout=30),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=py_env(), cwd=str(REPO))
             for dev in ("dev-a", "dev-b")]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
    # A resend of an already stored message (as after a crash) must not be stored again.
    with psycopg.connect(db) as conn:
        wait_for(lambda: len(stored(db, "dev-a")) >= len(produced_ids(tmp_path / "dev-a")),
                 20, "dev-a's messages")
        payload = conn.execute("SELECT payload FROM messages WHERE device_id = 'dev-a' "
                               "AND kind = 'exam' LIMIT 1").fetchone()[0]
    raw = raw_client(broker, "dev-a")
    try:
        for _ in range(4):
            assert not publish_wait(raw, "sonoedge/dev-a/exam", payload.encode()).is_failure
    finally:
        raw.loop_stop()
        raw.disconnect()
    for dev in ("dev-a", "dev-b"):
        wait_all_stored(db, tmp_path / dev, dev)
    time.sleep(0.5)  # let the resends land too
    for dev in ("dev-a", "dev-b"):
        assert_exactly_produced(db, tmp_path / dev, dev)
    with psycopg.connect(db) as conn:
        per = dict(conn.execute("SELECT collector, COUNT(*) FROM messages WHERE kind <> "
                                "'status' GROUP BY collector").fetchall())
    assert set(per) == {"central-1", "central-2"}, per  # both did part of the work
    assert sum(per.values()) == sum(len(produced_ids(tmp_path / d, d))
                                    for d in ("dev-a", "dev-b"))


# 1b -----------------------------------------------------------------------------------------
def test_with_no_collector_subscribed_the_device_keeps_its_messages_until_one_is(
        broker, collectors, tmp_path):
    """Mosquitto answers "No matching subscribers" when nobody would get a message (as after
    a broker restart, which forgets shared subscriptions): the device must not count that as
    delivered."""
    state = tmp_path / "dev"
    result = run_device(state, broker.url("dev-a"), frames=100, drain_timeout=1.5)
    assert result["drained"] is False and result["pending"] == 7
    assert "no collector is subscribed" in result["log"]
    db = str(tmp_path / "central.sqlite3")
    c = collectors(broker.url("central"), db, tmp_path, "central-1")
    c.wait_subscribed()
    assert run_device(state, broker.url("dev-a"), frames=0, drain_timeout=20)["drained"]
    wait_all_stored(db, state)
    assert_exactly_produced(db, state)


# The same scenarios through the real `sonoedge run --once` -------------------------------------
PLANE_MANIFEST = REPO / "models" / "plane_student.json"


def frames_folder(tmp_path, n: int = 200):
    """``n`` real ultrasound frames in a temp folder (links to the shared data, no copies)."""
    from edge.capture.demo import default_data_dir

    images = sorted((default_data_dir() / "hc18" / "images").glob("*.png"))[:20]
    assert images, "hc18 images not found beside the repo"
    folder = tmp_path / "frames"
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"frame{i:03d}.png").symlink_to(images[i % len(images)])
    return folder


def sonoedge_run(tmp_path, broker, state, source, **mqtt_keys) -> list[str]:
    config = tmp_path / "sonoedge.toml"
    keys = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "drain_timeout_s": 40.0,
            **mqtt_keys}
    config.write_text("[mqtt]\n" + "".join(f"{k} = {v!r}\n" for k, v in keys.items()))
    return [sys.executable, "-m", "edge.cli", "run", "--config", str(config), "--source",
            str(source), "--once", "--mqtt-url", broker.url("dev-a"), "--device-id", "dev-a",
            "--state-dir", str(state)]


def assert_seqs_complete(db: str, state) -> list[tuple]:
    rows = stored(db, "dev-a")
    assert len({r[0] for r in rows}) == len(rows)
    assert [r[1] for r in rows] == list(range(1, outbox_last_seq(state) + 1))
    return rows


needs_model = pytest.mark.skipif(not PLANE_MANIFEST.exists(),
                                 reason=f"{PLANE_MANIFEST} not shipped yet")


@needs_model
def test_real_run_once_with_the_broker_down_at_start(broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    collectors(broker.url("central"), db, tmp_path, "central-1").wait_subscribed()
    broker.stop()
    state = tmp_path / "state"
    dev = subprocess.Popen(sonoedge_run(tmp_path, broker, state, frames_folder(tmp_path)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=py_env(), cwd=str(REPO))
    try:
        wait_for(lambda: (state / "uplink-status.json").exists()
                 and "connection refused" in (state / "uplink-status.json").read_text(),
                 30, "the device to record that the broker is down")
        broker.start()
        out, err = dev.communicate(timeout=120)
    finally:
        dev.kill()
    assert dev.returncode == 0, err[-2000:]
    wait_for(lambda: len(stored(db, "dev-a")) >= outbox_last_seq(state), 20, "all messages")
    rows = assert_seqs_complete(db, state)
    assert [r[2] for r in rows].count("exam") == 1
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "central.cli", "report", "--db", db, "--json"],
        capture_output=True, text=True, env=py_env(), cwd=str(REPO), timeout=30).stdout)
    assert report["devices"][0]["exams"] == 1 and report["devices"][0]["lost"] == 0


@needs_model
def test_real_run_sigkilled_mid_publish_then_rerun_stores_each_message_once(
        broker, collectors, tmp_path):
    db = str(tmp_path / "central.sqlite3")
    collectors(broker.url("central"), db, tmp_path, "central-1").wait_subscribed()
    state = tmp_path / "state"
    # A health message per frame and one in flight: publishing runs all through the run.
    args = sonoedge_run(tmp_path, broker, state, frames_folder(tmp_path),
                        health_interval_s=0.0, max_inflight=1)
    dev = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=py_env(), cwd=str(REPO))
    try:
        wait_for(lambda: len(stored(db, "dev-a")) >= 20, 90, "publishing under way")
        dev.send_signal(signal.SIGKILL)
        dev.wait(timeout=10)
    finally:
        dev.kill()
    rerun = subprocess.run(sonoedge_run(tmp_path, broker, state, frames_folder(
        tmp_path / "again", 1)), capture_output=True, text=True, env=py_env(),
        cwd=str(REPO), timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    wait_for(lambda: len(stored(db, "dev-a")) >= outbox_last_seq(state), 20, "the backlog")
    assert_seqs_complete(db, state)


# TLS ----------------------------------------------------------------------------------------
def test_tls_with_an_untrusted_broker_then_the_right_ca(collectors, tmp_path):
    """A device that cannot verify the broker keeps everything and says why; with the right
    CA and its client certificate the backlog goes through."""
    from tests.servers import Mosquitto, make_pki

    pki = make_pki(tmp_path / "pki", "ca", clients=("dev-a", "central"))
    other = make_pki(tmp_path / "other", "rogue")
    broker = Mosquitto(tmp_path / "broker", pki=pki)
    broker.add_user("dev-a")
    broker.add_user("central", "central")
    broker.start()
    try:
        db = str(tmp_path / "central.sqlite3")
        tls = ("--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["central.crt"]),
               "--tls-key", str(pki["central.key"]))
        collectors(broker.url("central"), db, tmp_path, "central-1", extra=tls).wait_subscribed()
        state = tmp_path / "dev"
        cert = {"tls_cert": pki["dev-a.crt"], "tls_key": pki["dev-a.key"]}
        result = run_device(state, broker.url("dev-a"), frames=100, drain_timeout=1.5,
                            tls_ca=other["ca"], **cert)
        assert result["drained"] is False and result["pending"] == 7
        assert "TLS failed with 127.0.0.1" in result["log"]
        assert "certificate not trusted" in result["log"]
        status = json.loads((state / "uplink-status.json").read_text())
        assert status["last_error"].startswith("TLS failed") and not status["connected"]
        result = run_device(state, broker.url("dev-a"), frames=0, drain_timeout=20,
                            tls_ca=pki["ca"], **cert)
        assert result["drained"] is True
        wait_all_stored(db, state)
        assert_exactly_produced(db, state)
    finally:
        broker.stop()


# 2b -----------------------------------------------------------------------------------------
def test_a_broker_crash_may_lose_what_it_acknowledged_but_the_report_accounts_for_it(
        broker, collectors, tmp_path):
    """SIGKILL gives Mosquitto no time to save what it acknowledged and had not delivered.
    Whatever the broker loses must show in the report (as holes or as not yet received):
    stored + missing + behind == everything the device produced."""
    db = str(tmp_path / "central.sqlite3")
    collectors(broker.url("central"), db, tmp_path, "central-1").wait_subscribed()
    state = tmp_path / "dev"
    dev = subprocess.Popen(device_args(state, broker.url("dev-a"), frames=1500, exam_every=5,
                                       health_every=10, frame_delay_s=0.002, drain_timeout=40),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=py_env(), cwd=str(REPO))
    try:
        wait_for(lambda: len(stored(db, "dev-a")) >= 40, 20, "publishing under way")
        broker.stop(signal.SIGKILL)
        time.sleep(0.5)
        broker.start()
        dev.wait(timeout=60)
    finally:
        dev.kill()
    last = outbox_last_seq(state)
    time.sleep(1.0)  # let the last messages and the offline status land
    rows = stored(db, "dev-a")
    assert len({r[1] for r in rows}) == len(rows) and {r[1] for r in rows} <= set(
        range(1, last + 1))
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "central.cli", "report", "--db", db, "--json"],
        capture_output=True, text=True, env=py_env(), cwd=str(REPO), timeout=30).stdout)
    dev_report = report["devices"][0]
    assert dev_report["exams"] + dev_report["health"] == len(rows)
    assert len(rows) + dev_report["missing"] + dev_report["behind"] == last
    assert dev_report["lost"] == dev_report["missing"]  # no quota drops here
