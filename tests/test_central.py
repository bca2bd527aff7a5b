"""The collector's checks, its store (SQLite and PostgreSQL), the report and provisioning."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

from board.provision import ProvisionError, provision, read_roles, remove
from board.provision import main as provision_main
from central.collector import check
from central.db import DbError, DeadLetter, Row, Store
from central.report import build_report, format_report
from edge.exam import tally
from edge.uplink import messages
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import REPO, py_env
from tests.device_sim import frame_result

postgres = fx.postgres  # fixture


def message(kind: str = "exam", device: str = "dev-a", seq: int = 1, **extra) -> dict:
    env = messages.envelope(kind, device, "clinic-1", "boot-1")
    if kind == "exam":
        body = tally.summarize_exam([frame_result(i) for i in range(10)], "a.mp4", 1, 2)
        payload = {**env, **body}
    elif kind == "health":
        payload = messages.build_health(env, {"fps": 30.0}, {}, extra.pop("dropped", {}),
                                         10.0, {}, 1.0, 60.0)
    else:
        payload = messages.build_status(env, "", extra.pop("state", "online"), seq, 0)
    return {**payload, "msg_id": str(uuid.uuid4()), "seq": seq, **extra}


def encode(payload: dict) -> bytes:
    return json.dumps(payload).encode()


REGISTRY = {"dev-a": "clinic-1", "dev-b": "clinic-1"}  # the district's own record


def row(payload: dict, collector: str = "c1") -> Row:
    item = check(f"sonoedge/{payload['device_id']}/{payload['kind']}", encode(payload), 4096,
                 collector, 1000.0 + payload["seq"], REGISTRY)
    assert isinstance(item, Row), item
    return item


# -- checks ------------------------------------------------------------------------------------
def test_a_valid_message_becomes_a_row_keyed_by_its_msg_id():
    p = message("exam", seq=7)
    r = row(p)
    assert (r.msg_id, r.device_id, r.kind, r.seq, r.clinic_id) == (
        p["msg_id"], "dev-a", "exam", 7, "clinic-1")
    assert json.loads(r.payload) == p


@pytest.mark.parametrize("topic, payload, reason", [
    ("sonoedge/dev-a/exam", b"{oops", "bad JSON"),
    ("sonoedge/dev-a/exam", b"\xff\xfe", "bad JSON"),
    ("sonoedge/dev-a/exam", b'{"a": NaN}', "bad JSON"),
    ("sonoedge/dev-a/exam", b"[1, 2]", "not a JSON object but list"),
    ("sonoedge/dev-a/exam", b"{}", "kind missing in payload, 'exam' in topic"),
    ("sonoedge/dev-a/video", b"{}", "unknown kind 'video'"),
    ("sonoedge/dev-a/exam/extra", b"{}", "bad topic"),
    ("other/dev-a/exam", b"{}", "bad topic"),
    ("sonoedge/dev-a/exam", b"x" * 5000, "oversize: 5000 bytes > 4096"),
])
def test_malformed_messages_become_dead_letters_with_a_reason(topic, payload, reason):
    item = check(topic, payload, 4096, "c1", 1.0)
    assert isinstance(item, DeadLetter) and item.reason.startswith(reason), item.reason
    assert item.size == len(payload) and len(item.preview) <= 2048


def test_wrong_schema_and_impersonation_are_dead_lettered():
    bad = message("health") | {"queue": {"pending": -1}}
    item = check("sonoedge/dev-a/health", encode(bad), 4096, "c1", 1.0)
    assert isinstance(item, DeadLetter) and item.reason.startswith("schema: $.queue")
    other = message("exam", device="dev-b")
    item = check("sonoedge/dev-a/exam", encode(other), 4096, "c1", 1.0)
    assert item.reason == "device_id 'dev-b' in payload, 'dev-a' in topic"


# -- store -------------------------------------------------------------------------------------
def test_sqlite_store_keeps_each_msg_id_once(tmp_path):
    store = Store(str(tmp_path / "c.sqlite3"))
    a, b = row(message(seq=1)), row(message(seq=2))
    dead = check("sonoedge/dev-a/exam", b"{oops", 4096, "c1", 1.0)
    assert store.store([a, b], [dead]) == (2, 1)
    assert store.store([a, b], [dead]) == (0, 0)
    assert store.query("SELECT COUNT(*) FROM messages") == [(2,)]
    assert store.query("SELECT COUNT(*) FROM dead_letters") == [(1,)]
    store.close()


@pytest.mark.parametrize("field", ["msg_id", "boot_id", "exam_id", "clinic_id"])
def test_a_replay_whose_ids_end_in_a_newline_is_dead_lettered_not_stored_again(tmp_path,
                                                                               field):
    """A schema pattern ends at the end of the string (ECMA-262), not before a final
    newline: a message replayed with "\\n" after its msg_id would otherwise be a second,
    distinct row, counted as a second exam."""
    store = Store(str(tmp_path / "c.sqlite3"))
    original = message(seq=1)
    replay = {**original, field: original[field] + "\n"}
    item = check("sonoedge/dev-a/exam", encode(replay), 4096, "c1", 2.0, REGISTRY)
    assert isinstance(item, DeadLetter), item
    assert item.reason.startswith(f"schema: $.{field}: does not match")
    assert store.store([row(original)], [item]) == (1, 1)
    assert store.query("SELECT COUNT(*) FROM messages") == [(1,)]
    store.close()


def test_a_topic_whose_device_id_ends_in_a_newline_is_a_bad_topic():
    payload = message(device="dev-a") | {"device_id": "dev-a\n"}
    item = check("sonoedge/dev-a\n/exam", encode(payload), 4096, "c1", 1.0, REGISTRY)
    assert isinstance(item, DeadLetter) and item.reason.startswith("bad topic"), item


def test_postgres_store_keeps_each_msg_id_once_under_concurrent_writers(postgres):
    import psycopg

    url = postgres.url
    Store(url).close()  # creates the tables
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE device_id = 'dev-pg'")
    rows = [row(message(device="dev-pg", seq=i)) for i in range(1, 201)]
    results: list[tuple[int, int]] = []

    def writer(name: str) -> None:
        s = Store(url)
        for i in range(0, len(rows), 20):
            results.append(s.store(rows[i:i + 20], []))
        s.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("w1", "w2", "w3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sum(n for n, _ in results) == 200  # 600 attempts, 200 stored
    assert Store(url).query("SELECT COUNT(*) FROM messages WHERE device_id = 'dev-pg'") == [
        (200,)]


def test_an_unreachable_database_is_a_one_line_error_naming_it(tmp_path):
    with pytest.raises(DbError) as err:
        Store("postgresql://u:secret@127.0.0.1:1/none")
    assert "postgresql://u:***@127.0.0.1:1/none" in str(err.value)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
    # Issue 14, item 6: a mistyped --db is an error, never a new, empty database.
    missing = tmp_path / "no" / "such" / "dir" / "x.sqlite3"
    out = subprocess.run([sys.executable, "-m", "central.cli", "report", "--db",
                          str(missing), "--json"], capture_output=True, text=True,
                         env=py_env(), cwd=str(REPO), timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"sonoedge-central report: {missing}: no such database (is --db right?)"]
    assert not missing.parent.exists()
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    out = subprocess.run([sys.executable, "-m", "central.cli", "report", "--db", str(other)],
                         capture_output=True, text=True, env=py_env(), cwd=str(REPO),
                         timeout=30)
    assert out.returncode == 2 and "not a sonoedge collector database" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_copy_its_box_re_dated_is_the_same_message_and_nothing_else_is():
    """central/db.py `redated`: the times that moved, all by one step of the box's clock,
    either way (several collectors may store the re-dated copy first), and nothing else
    changed. Hostile copies (each refused by the collector's check before they get here)
    are no match, and none raises."""
    from central.db import same_content

    first = message("exam", seq=1)
    step = 60 * 86400.0

    def text(**changes) -> str:
        return json.dumps({**first, **changes})

    moved = {k: round(first[k] + step, 3) for k in ("ts", "started_ts", "ended_ts")}
    original = json.dumps(first)
    assert same_content(original, text(**moved))
    assert same_content(text(**moved), original)  # the re-dated copy stored first
    # a step the box saw after the exam had begun: only its end was stamped before it
    assert same_content(original, text(ended_ts=round(first["ended_ts"] + step, 3)))
    no_match = [
        text(**moved, frames=first["frames"] + 1),  # something else changed
        text(started_ts=first["started_ts"] + step, ended_ts=first["ended_ts"] + 2 * step),
        text(started_ts=first["started_ts"] + 30, ended_ts=first["ended_ts"] + 30),  # no step
        text(started_ts=first["started_ts"] + step, ended_ts=first["ended_ts"] - step),
        text(ended_ts=True), text(ended_ts="later"), text(ended_ts=None),
        text(ended_ts={"ts": 1}), text(entered_ts=first["ended_ts"] + step),
        original.replace(f'"ended_ts": {first["ended_ts"]}', '"ended_ts": NaN'),
        original.replace(f'"ended_ts": {first["ended_ts"]}', '"ended_ts": Infinity'),
        original.replace(f'"ended_ts": {first["ended_ts"]}', '"ended_ts": ' + "9" * 400),
        json.dumps([first]), "[" * 5000 + "]" * 5000, "{broken",
    ]
    for copy in no_match:
        assert not same_content(original, copy), copy[:200]
        assert not same_content(copy, original), copy[:200]


# -- report ------------------------------------------------------------------------------------
def test_report_counts_exams_and_splits_gaps_into_dropped_and_lost(tmp_path):
    store = Store(str(tmp_path / "c.sqlite3"))
    rows = [row(message("exam", seq=s)) for s in (1, 2, 5, 9)]
    rows += [row(message("health", seq=10, dropped={"health": 3, "exam": 0}))]
    rows += [row(message("status", seq=12, state="online"))]  # 11 and 12 still on the way
    rows += [row(message("exam", device="dev-b", seq=s)) for s in (1, 2)]
    store.store(rows, [check("sonoedge/dev-a/exam", b"{", 4096, "c1", 1.0)])
    rep = build_report(store)
    a, b = rep["devices"]
    assert (a["device_id"], a["exams"], a["health"], a["max_seq"]) == ("dev-a", 4, 1, 10)
    assert a["missing"] == 5 and a["gaps"] == [[3, 4], [6, 8]]
    assert (a["dropped_health"], a["lost"], a["behind"], a["last_state"]) == (3, 2, 2, "online")
    assert (b["exams"], b["missing"], b["lost"]) == (2, 0, 0)
    assert rep["clinics"] == [{"clinic_id": "clinic-1", "devices": 2, "exams": 6, "health": 1,
                               "last_seen_ts": a["last_seen_ts"], "missing": 5, "dropped": 3,
                               "lost": 2}]
    assert rep["dead_letters"] == {"total": 1, "by_reason": {"bad JSON": 1}}
    text = format_report(rep)
    assert "gaps in seq: 3-4, 6-8" in text and "Dead letters: 1" in text
    # the box's last status says since when: a retained "online" can be weeks old
    status_row = next(r for r in rows if r.kind == "status")
    assert a["last_state_ts"] == status_row.received_ts
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(status_row.received_ts))
    assert f"online since {since}" in next(line for line in text.splitlines()
                                            if line.startswith("dev-a "))
    assert next(line for line in text.splitlines() if line.startswith("dev-b ")).endswith("-")
    store.close()


def test_report_lists_recent_exams_with_views_abstentions_and_gestational_age(tmp_path):
    store = Store(str(tmp_path / "c.sqlite3"))
    heads = [frame_result(i) | {"plane": "Brain (Tv.)", "plane_confidence": 0.9,
                                "biometry": {"status": "ok", "hc_mm": 175.0, "bpd_mm": 47.0,
                                             "ofd_mm": 63.0}} for i in range(4)]
    unsure = [frame_result(i) | {"plane": "uncertain", "plane_confidence": 0.4}
              for i in range(4)]
    env = messages.envelope("exam", "dev-a", "clinic-1", "boot-1")
    body = tally.summarize_exam(heads + unsure, "b.mp4", 1, 2)
    with_ga = {**env, **body, "msg_id": str(uuid.uuid4()), "seq": 2}
    store.store([row(message("exam", seq=1)), row(with_ga)], [])
    newest, older = build_report(store)["recent_exams"]
    assert newest["views"] == ["Brain (Tv.)"] and newest["uncertain_fraction"] == 0.5
    assert (newest["heads_measured"], newest["hc_mm"]) == (4, 175.0)
    assert newest["ga_weeks"] == 20.0  # Hadlock 1984 at HC 17.5 cm
    assert older["heads_measured"] is None and older["ga_weeks"] is None
    text = format_report(build_report(store))
    assert "Recent exams" in text and "50%" in text and " 20 " in text
    store.close()


def test_report_says_which_protocol_each_exam_followed_and_how_well(tmp_path):
    """The district learns which exams were done and how well: the protocol, how much of its
    checklist was captured, what is missing, the best quality and the usual deficiency."""
    from edge.exam.protocol import find_protocol
    from edge.exam.session import ExamSession

    session = ExamSession(find_protocol("second-trimester"), None)
    criteria = {"zoom": {"pass": False, "value": 0.1, "message": "Zoom in"}}
    for i, plane in enumerate(("Brain (Tv.)", "Femur", "Femur")):
        session.add(frame_result(i) | {"plane": plane, "plane_confidence": 0.95,
                                       "quality": {"score": 0.4 + 0.2 * i, "advice": "zoom",
                                                   "criteria": criteria}})
    body = session.finish("command", {"plane_student": "1.2.0"})
    env = messages.envelope("exam", "dev-a", "clinic-1", "boot-1")
    store = Store(str(tmp_path / "c.sqlite3"))
    store.store([row({**messages.build_exam(env, body), "msg_id": str(uuid.uuid4()),
                      "seq": 1})], [])
    (exam,) = build_report(store)["recent_exams"]
    assert (exam["protocol"], exam["captured"], exam["required"]) == ("second-trimester", 1, 13)
    assert "Brain (Tv.)" in exam["missing"] and "Femur" not in exam["missing"]
    assert exam["best_quality"] == 0.8 and exam["deficiencies"] == ["zoom"]
    assert exam["ended_by"] == "command"
    text = format_report(build_report(store))
    assert "second-trimester" in text and "1/13" in text and "0.80" in text
    store.close()


def test_report_cli_prints_text_and_json(tmp_path):
    db = str(tmp_path / "c.sqlite3")
    store = Store(db)
    store.store([row(message("exam", seq=1))], [])
    store.close()
    run = [sys.executable, "-m", "central.cli", "report", "--db", db]
    text = subprocess.run(run, capture_output=True, text=True, env=py_env(), cwd=str(REPO),
                          timeout=30).stdout
    assert "dev-a" in text and "clinic-1" in text
    data = json.loads(subprocess.run(run + ["--json"], capture_output=True, text=True,
                                     env=py_env(), cwd=str(REPO), timeout=30).stdout)
    assert data["devices"][0]["exams"] == 1


def test_collector_cli_rejects_a_bad_url_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "central.cli", "--mqtt-url", "http://x:pw@h",
                          "--db", str(tmp_path / "c.sqlite3")], capture_output=True, text=True,
                         env=py_env(), cwd=str(REPO), timeout=30)
    assert out.returncode == 2 and "bad MQTT URL 'http://x:***@h'" in out.stderr
    assert "Traceback" not in out.stderr


# -- provisioning ------------------------------------------------------------------------------
def test_provisioning_writes_password_entries_and_an_acl_per_role(tmp_path):
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    secret = provision(pw, acl, "clinic7-box1", "device")
    provision(pw, acl, "central-1", "central", "fixed")
    provision(pw, acl, "clinic7-box1", "device", "again")  # idempotent: replaces
    text = acl.read_text()
    assert "user clinic7-box1\ntopic write sonoedge/clinic7-box1/#\n" in text
    assert "user central-1\ntopic read sonoedge/#\n" in text
    assert "topic read sonoedge/clinic7-box1" not in text  # a device reads nothing
    entries = dict(line.split(":", 1) for line in pw.read_text().splitlines())
    assert set(entries) == {"clinic7-box1", "central-1"} and secret not in pw.read_text()
    assert entries["central-1"].startswith("$7$")  # salted PBKDF2 hash from mosquitto_passwd
    assert read_roles(acl) == {"clinic7-box1": "device", "central-1": "central"}
    remove(pw, acl, "clinic7-box1")
    assert read_roles(acl) == {"central-1": "central"} and "clinic7" not in pw.read_text()


def test_provisioning_refuses_an_acl_it_did_not_write(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("user dev-a\ntopic readwrite #\n")
    with pytest.raises(ProvisionError, match=r"acl:2: not written by provision.py"):
        provision(tmp_path / "p", acl, "dev-b", "device")
    assert acl.read_text() == "user dev-a\ntopic readwrite #\n"


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "-x", "x" * 65])
def test_provisioning_refuses_ids_that_would_break_topics(tmp_path, bad):
    with pytest.raises(ProvisionError, match="bad id"):
        provision(tmp_path / "p", tmp_path / "a", bad, "device")


def test_provisioning_with_a_password_file_it_cannot_write_changes_nothing(tmp_path, capsys):
    """`--password-file` in a folder that is not there: the broker user was made, then the
    write failed, and the only copy of its password was lost behind an `[Errno 2]`. It is
    opened first now: one line naming it, and no user, ACL or registry line is written."""
    pw, acl, registry = tmp_path / "passwd", tmp_path / "acl", tmp_path / "devices.csv"
    old = tmp_path / "box1.password"
    old.write_text("the old one\n")
    argv = ["--passwd", str(pw), "--acl", str(acl), "--device", "box1", "--clinic", "c-1",
            "--registry", str(registry)]
    assert provision_main([*argv, "--password-file", str(tmp_path / "no" / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (f"provision: --password-file {tmp_path / 'no' / 'x'}: cannot write it "
                   "(No such file or directory); nothing was changed\n")
    assert not pw.exists() and not acl.exists() and not registry.exists()
    acl.write_bytes(b"\xff\xfeuser x\n")  # a refusal after the file is open keeps it whole
    assert provision_main([*argv, "--password-file", str(old)]) == 2
    assert old.read_text() == "the old one\n" and not pw.exists()
    acl.unlink()
    assert provision_main([*argv, "--password-file", str(old)]) == 0
    secret = old.read_text()
    assert secret.endswith("\n") and secret.count("\n") == 1 and len(secret) > 20
    assert oct(old.stat().st_mode & 0o777) == "0o600"


def test_provisioning_files_that_are_not_utf8_are_one_line(tmp_path, capsys):
    pw, acl, registry = tmp_path / "passwd", tmp_path / "acl", tmp_path / "devices.csv"
    acl.write_bytes(b"\xff\xfe# acl\n")
    assert provision_main(["--passwd", str(pw), "--acl", str(acl), "--device", "b1"]) == 2
    assert capsys.readouterr().err == (f"provision: {acl}: not UTF-8 text (byte 0): not a "
                                       "file provision.py wrote; move it aside\n")
    acl.unlink()
    registry.write_bytes(b"b0,c-0\n\xe9\n")
    assert provision_main(["--passwd", str(pw), "--acl", str(acl), "--device", "b1",
                           "--clinic", "c-1", "--registry", str(registry)]) == 2
    assert capsys.readouterr().err == (f"provision: {registry}: not UTF-8 text (byte 7): "
                                       "not a file provision.py wrote; move it aside\n")


def test_provisioning_says_when_the_user_to_remove_is_not_there(tmp_path, capsys):
    """`--remove clinc7-box1` (a typo) said "removed clinc7-box1; reload the broker": the
    real box kept its credentials while the district believed it gone."""
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    provision(pw, acl, "clinic7-box1", "device")
    argv = ["--passwd", str(pw), "--acl", str(acl), "--remove"]
    assert provision_main([*argv, "clinc7-box1"]) == 2
    assert capsys.readouterr().err == (f"provision: clinc7-box1: no such user in {acl} or "
                                       f"{pw}; nothing was removed (a typo?)\n")
    assert read_roles(acl) == {"clinic7-box1": "device"}
    assert provision_main([*argv, "clinic7-box1"]) == 0
    assert capsys.readouterr().out == "removed clinic7-box1; reload the broker\n"
    assert read_roles(acl) == {} and "clinic7-box1" not in pw.read_text()


@pytest.mark.parametrize("port", ["0", "99999", "x"])
def test_provisioning_refuses_a_port_no_broker_can_have(tmp_path, capsys, port):
    with pytest.raises(SystemExit) as stop:
        provision_main(["--passwd", str(tmp_path / "p"), "--acl", str(tmp_path / "a"),
                        "--device", "b1", "--port", port])
    assert stop.value.code == 2 and not (tmp_path / "p").exists()
    assert f"argument --port: must be a port number 1-65535, got '{port}'" in (
        capsys.readouterr().err)


# -- issue 14: rows the database refuses ---------------------------------------------------------
def test_a_row_the_database_refuses_is_dead_lettered_alone(tmp_path, postgres):
    """SQLite cannot bind an integer of 2^70 and PostgreSQL refuses NUL in text: each such
    row becomes a dead letter with the database's reason, and the rest of its batch is
    stored (the checks before the store make these rows unreachable; this is the net)."""
    from dataclasses import replace

    good, other = row(message(seq=1)), row(message(seq=2))
    for url, bad in ((str(tmp_path / "c.sqlite3"), replace(other, seq=2 ** 70)),
                     (postgres.url, replace(other, clinic_id="a\x00b"))):
        store = Store(url)
        with store.tx() as cur:
            cur.execute("DELETE FROM messages WHERE msg_id IN (?, ?)", (good.msg_id, bad.msg_id))
            cur.execute("DELETE FROM dead_letters WHERE digest = ?", (bad.msg_id,))
        new_rows, new_dead, refused = store.store_checked([good, bad], [])
        assert (new_rows, new_dead, len(refused)) == (1, 1, 1), url
        assert refused[0].reason.startswith("database refused it: ")
        assert store.query("SELECT reason FROM dead_letters WHERE digest = ?",
                           (bad.msg_id,))[0][0] == refused[0].reason
        store.close()


# -- hostile command lines ---------------------------------------------------------------------
def _central_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "central.cli", *args], capture_output=True,
                          text=True, env=py_env(), cwd=str(REPO), timeout=timeout)


@pytest.mark.parametrize(("args", "needle"), [
    (("--duration-s", "nan"), "--duration-s nan"),  # ran for ever
    (("--duration-s", "-1"), "--duration-s -1"),
    (("--max-bytes", "-1", "--duration-s", "3"), "--max-bytes -1"),
    (("--reconnect-max-s", "-5", "--duration-s", "3"), "--reconnect-max-s -5"),
    (("--reconnect-max-s", "nan", "--duration-s", "3"), "--reconnect-max-s nan"),
    (("--max-bytes", "abc"), "--max-bytes: invalid int value: 'abc'"),
])
def test_collector_numbers_out_of_range_are_one_line_naming_the_option(tmp_path, args, needle):
    out = _central_cli("--mqtt-url", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "c.sqlite3"),
                       *args)
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("sonoedge-central") and needle in line, line


def test_report_refuses_a_negative_seq_jump_and_a_mistyped_number_in_one_line(tmp_path):
    db = str(tmp_path / "c.sqlite3")
    Store(db).close()
    for value, needle in (("-5", "--seq-jump -5: must be 1 or more"),
                          ("abc", "--seq-jump: invalid int value: 'abc'")):
        out = _central_cli("report", "--db", db, "--seq-jump", value)
        assert out.returncode == 2 and out.stdout == ""
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("sonoedge-central report") and needle in line, line
