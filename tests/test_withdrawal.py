"""An ended exam the midwife withdraws (or restores) on the box is a journal entry, durable
as her dates are, and one `withdrawal` message per entry in the outbox: after a restart,
after a SIGKILL between the two, and again after an outbox lost it. The real journal and
the real uplink's outbox (no broker: what is queued is what the broker will be sent), and
the wire's schema against hostile payloads."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from edge.config import Settings
from edge.loop import tell_district_since, tell_district_withdrawal
from edge.store.journal import Journal
from edge.uplink.mqtt import MqttSettings, Uplink
from tests.conftest import REPO
from tests.test_dates_correction import journaled_exam
from wire.schema import load_schema, validate, validate_payload


def withdrawals(uplink: Uplink, exam_id: str | None = None) -> list[dict]:
    """The withdrawal messages queued, oldest first, each valid on the wire."""
    out = []
    for message in sorted(uplink.outbox.list(1000), key=lambda m: m.seq):
        payload = json.loads(message.payload)
        if message.kind == "withdrawal" and exam_id in (None, payload["exam_id"]):
            assert validate_payload(payload) == [], payload
            out.append(payload)
    return out


def device(tmp_path) -> tuple[Journal, Uplink]:
    return (Journal(tmp_path / "journal.sqlite"),
            Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path))


def test_a_withdrawal_and_its_undo_are_each_one_message_and_survive_a_restart(tmp_path):
    journal, uplink = device(tmp_path)
    journaled_exam(journal, "e1")
    assert journal.keep_withdrawal("e1", True, "test_scan", entered_ts=1000.0)
    assert tell_district_withdrawal(journal, uplink, "e1")
    assert not tell_district_withdrawal(journal, uplink, "e1")  # told: nothing more
    [sent] = withdrawals(uplink)
    assert {k: sent[k] for k in ("exam_id", "withdrawn", "reason", "entered_ts")} == {
        "exam_id": "e1", "withdrawn": True, "reason": "test_scan", "entered_ts": 1000.0}
    # the box restarts: the entry is there, told, and the start owes nothing
    journal.close()
    uplink.close()
    journal, uplink = device(tmp_path)
    kept = journal.withdrawal("e1")
    assert (kept.withdrawn, kept.reason, kept.entry, kept.told) == (True, "test_scan", 1, 1)
    assert tell_district_since(Settings(), journal, uplink) == 0
    # undone: a second message, withdrawn false, with the reason it undoes; the latest wins
    assert journal.keep_withdrawal("e1", False, "test_scan", entered_ts=1100.0)
    assert tell_district_withdrawal(journal, uplink, "e1")
    first, undone = withdrawals(uplink)
    assert (undone["withdrawn"], undone["reason"], undone["entered_ts"]) == (
        False, "test_scan", 1100.0)
    assert undone["seq"] > first["seq"] and undone["msg_id"] != first["msg_id"]
    assert not journal.withdrawal("e1").withdrawn
    uplink.close()
    journal.close()


def test_a_withdrawal_of_an_exam_the_box_does_not_know_is_refused_in_one_line(tmp_path,
                                                                               caplog):
    journal, uplink = device(tmp_path)
    journaled_exam(journal, "known")
    caplog.set_level(logging.WARNING)
    assert not journal.keep_withdrawal("never-ended", True, "mistake")
    assert not journal.keep_withdrawal("known", True, "bored")
    assert not journal.keep_withdrawal("known", True, "x\n" * 5000)
    lines = [r.getMessage() for r in caplog.records]
    assert any("withdrawal of exam never-ended refused: no such ended exam in the journal"
               in line for line in lines), lines
    assert any("reason 'bored' is not one of mistake, test_scan" in line for line in lines)
    assert all("\n" not in line and len(line) < 400 for line in lines), lines
    assert journal.withdrawal("never-ended") is None and journal.withdrawal("known") is None
    assert not tell_district_withdrawal(journal, uplink, "never-ended")
    assert withdrawals(uplink) == []
    # a damaged row reads as no withdrawal (the exam stands), and owes no message
    for withdrawn, reason, when, entry in ((2, "mistake", 1.0, 1), (1, "bored", 1.0, 1),
                                          (1, "mistake", float("inf"), 1),
                                          (1, "mistake", 1.0, 0), (1, "mistake", "x", 1)):
        journal.db.execute("INSERT OR REPLACE INTO exam_withdrawals (exam_id, withdrawn, "
                           "reason, entered_ts, entry) VALUES ('known', ?, ?, ?, ?)",
                           (withdrawn, reason, when, entry))
        assert journal.withdrawal("known") is None
        assert not tell_district_withdrawal(journal, uplink, "known")
    assert withdrawals(uplink) == []
    uplink.close()
    journal.close()


def test_a_withdrawal_kept_before_a_sigkill_is_sent_at_the_next_start_once(tmp_path):
    """The journal keeps the entry at once (committed, as the dates are); the process is
    killed before the outbox has the message. The next start queues it, once, and after a
    corrupt outbox queues it again under the same msg_id (the collector keeps one)."""
    journal, _ = device(tmp_path)
    journaled_exam(journal, "e1")
    journal.close()
    script = textwrap.dedent(f"""
        import os, signal
        from edge.store.journal import Journal
        journal = Journal({str(tmp_path / 'journal.sqlite')!r})
        assert journal.keep_withdrawal("e1", True, "two_women")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    journal, uplink = device(tmp_path)
    assert journal.withdrawal("e1").reason == "two_women"
    assert tell_district_since(Settings(), journal, uplink) == 1
    assert tell_district_since(Settings(), journal, uplink) == 0
    [sent] = withdrawals(uplink)
    uplink.close()
    (tmp_path / "outbox.sqlite3").write_bytes(b"not a database" * 200)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"outbox.sqlite3{suffix}").unlink(missing_ok=True)
    uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path)
    assert uplink.outbox.moved_aside is not None and withdrawals(uplink) == []
    assert tell_district_since(Settings(), journal, uplink) == 1
    [again] = withdrawals(uplink)
    assert again["msg_id"] == sent["msg_id"] and again["reason"] == "two_women"
    uplink.close()
    journal.close()


def test_a_corrupt_journal_keeps_its_withdrawals_in_the_salvage(tmp_path):
    journal, _ = device(tmp_path)
    journaled_exam(journal, "e1")
    assert journal.keep_withdrawal("e1", True, "mistake", entered_ts=1000.0)
    journal.close()
    from edge.store.journal import _salvage

    new = tmp_path / "new.sqlite"
    fresh = Journal(new)
    counts, said = _salvage(tmp_path / "journal.sqlite", fresh.db)
    assert counts["exam_withdrawals"] == (1, 0), said
    assert "exam withdrawals 1/0" in said
    assert fresh.withdrawal("e1").reason == "mistake"
    fresh.close()


GOOD = {"schema": 1, "kind": "withdrawal", "msg_id": "0b7c1a3e-2f1d-4c5b-9a8e-7d6c5b4a3f2e",
        "seq": 7, "boot_id": "boot-1", "device_id": "dev-a", "clinic_id": "c1",
        "ts": 1_790_000_000.0, "mono_s": 12.5, "exam_id": "e1", "withdrawn": True,
        "reason": "test_scan", "entered_ts": 1_790_000_000.0}


@pytest.mark.parametrize(("change", "said"), [
    ({"withdrawn": "true"}, "$.withdrawn: expected boolean, got str"),
    ({"withdrawn": 1}, "$.withdrawn: expected boolean, got int"),
    ({"withdrawn": None}, "$.withdrawn: expected boolean, got NoneType"),
    ({"reason": "bored"}, "$.reason: 'bored' not one of"),
    ({"reason": "x" * 100_000}, "$.reason: longer than 16"),
    ({"reason": ["test_scan"]}, "$.reason: expected string, got list"),
    ({"reason": {"a": {"b": {"c": "test_scan"}}}}, "$.reason: expected string, got dict"),
    ({"reason": None}, "$.reason: expected string, got NoneType"),
    ({"exam_id": "e" * 37}, "$.exam_id: does not match"),
    ({"exam_id": "../journal"}, "$.exam_id: does not match"),
    ({"entered_ts": -1}, "$.entered_ts: below 0"),
    ({"entered_ts": "yesterday"}, "$.entered_ts: expected number, got str"),
    ({"name": "Amina"}, "$: unexpected property name"),
    ({"withdrawn": None, "reason": None}, "$.withdrawn"),
])
def test_the_schema_refuses_a_hostile_withdrawal_naming_the_field(change, said):
    errors = validate({**GOOD, **change}, load_schema("withdrawal"))
    field = said.split(":")[0]
    assert errors and errors[0].startswith(field) and any(said in e for e in errors), errors
    assert all("\n" not in e and len(e) < 300 for e in errors), errors


@pytest.mark.parametrize("missing", ["exam_id", "withdrawn", "reason", "entered_ts", "seq"])
def test_the_schema_refuses_a_withdrawal_missing_a_field(missing):
    errors = validate({k: v for k, v in GOOD.items() if k != missing},
                      load_schema("withdrawal"))
    assert errors == [f"$: missing {missing}"]


def test_a_valid_withdrawal_passes_and_the_reference_validator_agrees():
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_schema("withdrawal")
    jsonschema.Draft202012Validator.check_schema(schema)
    for withdrawn in (True, False):
        payload = {**GOOD, "withdrawn": withdrawn}
        assert validate_payload(payload) == []
        jsonschema.validate(payload, schema)
    assert not jsonschema.Draft202012Validator(schema).is_valid({**GOOD, "reason": "bored"})
