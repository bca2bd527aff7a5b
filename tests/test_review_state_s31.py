"""What the review of the fuzzing pass's mends found still broken in the state the device
reads back: each of these failed on the code the pass left."""

from __future__ import annotations

import json
import logging
import uuid

from edge.fleet.settings import FleetSettings
from edge.fleet.slots import STATE_FILE, Fleet
from edge.store import outbox as outbox_module
from edge.store.outbox import OUTBOX_FILE, SEQ_FLOOR_MAX, open_outbox
from edge.uplink.mqtt import STATUS_FILE, MqttSettings, Uplink
from tests.cli_run import sonoedge
from tests.test_journal_salvage import damage, leaves
from tests.test_outbox import exam_body
from wire.schema import finite_number, number_or_none

HUGE = "1" + "0" * 400  # an integer JSON holds and no float does


def test_an_integer_beyond_a_float_in_a_state_file_costs_its_field_not_the_start(tmp_path):
    """`finite_number` raised OverflowError on 10**400, so a status or fleet file holding
    one (read leniently, to mend field by field) still stopped every start."""
    assert not finite_number(10**400) and number_or_none(10**400) is None
    (tmp_path / STATUS_FILE).write_text('{"last_ack_ts": HUGE, "outbox": {"last_seq": 7}}'
                                        .replace("HUGE", HUGE))
    uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path)  # it starts
    assert uplink.enqueue_health({}) is not None
    uplink.outbox.close()
    (tmp_path / STATE_FILE).write_text('{"trial": {"slot": "a", "crashes": HUGE, "ran_s": '
                                       'HUGE}}'.replace("HUGE", HUGE))
    fleet = Fleet(tmp_path, FleetSettings(enabled=True, group="g"))
    assert fleet.state["trial"]["crashes"] == 0 and fleet.state["trial"]["ran_s"] == 0.0
    run = sonoedge("status", "--state-dir", str(tmp_path))
    assert "Traceback" not in run.stderr and run.returncode == 0, run.stderr


def test_a_rollback_time_beyond_the_wire_leaves_health_messages_flowing(tmp_path):
    """The fleet's last rollback time is read back from state.json; Infinity (JSON holds
    it) broke the health schema's `fleet.rollback.ts`, and every health message after it
    was refused until the next rollback."""
    (tmp_path / STATE_FILE).write_text(json.dumps(
        {"rollback": {"from": "1.2", "to": "1.1", "reason": "self-test", "ts": 1e400}}
    ).replace("Infinity", "1e400"))
    fleet = Fleet(tmp_path, FleetSettings(enabled=True, group="g"))
    assert fleet.status()["rollback"]["ts"] is None
    uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), tmp_path / "state")
    uplink.fleet_status = fleet.status
    try:
        assert uplink.enqueue_health({}) is not None
    finally:
        uplink.outbox.close()


def test_a_damaged_drop_counter_leaves_health_messages_flowing_and_is_reset(tmp_path,
                                                                            caplog):
    """`counts()`, which every health message carries, read the drop counters with int():
    a text in one made every health message fail. And a REAL 1e300 was never mended:
    `value + 1` left it there, so no drop was ever reported again. At open a counter
    that is no whole number in range is reset to 0, said once."""
    box = open_outbox(tmp_path)
    with box._tx() as db:
        db.execute("UPDATE meta SET value = 'abc' WHERE key = 'dropped_exam'")
        db.execute("UPDATE meta SET value = 1e300 WHERE key = 'dropped_health'")
    counts = box.counts()
    assert counts["dropped_exam"] == 0 and counts["dropped_health"] == 0
    box.close()
    caplog.set_level(logging.WARNING)
    box = open_outbox(tmp_path)
    try:
        said = [r.getMessage() for r in caplog.records if r.name == outbox_module.log.name]
        assert sorted(line.split(" was ")[0].split()[-1] for line in said) == [
            "dropped_exam", "dropped_health"], said
        rows = dict(box._db.execute("SELECT key, value FROM meta").fetchall())
        assert rows["dropped_exam"] == 0 and rows["dropped_health"] == 0
    finally:
        box.close()


def test_a_salvaged_outbox_counts_on_above_the_seqs_its_keys_hold(tmp_path):
    """Messages sent and acknowledged leave only their keys, with their seqs. A corrupt
    outbox whose last seq was lost too counted on from its live messages: the next
    message took a seq the district already had. It now counts on above its keys."""
    box = open_outbox(tmp_path)
    sent = [box.enqueue("exam", exam_body(), key=str(uuid.uuid4())) for _ in range(300)]
    box.ack([m.msg_id for m in sent[:-1]])  # the district has all but the last
    with box._tx() as db:
        db.execute("UPDATE meta SET value = 'x' WHERE key = 'seq'")
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    box.close()
    path = tmp_path / OUTBOX_FILE
    damage(path, [leaves(path, "outbox")[0][0]])
    box = open_outbox(tmp_path)  # no status file: no floor from outside
    try:
        assert box.moved_aside is not None
        assert box.enqueue("exam", exam_body(), key=str(uuid.uuid4())).seq == 301
    finally:
        box.close()


def test_an_outbox_counts_on_past_the_floor_bound_of_the_seqs_read_from_outside(tmp_path):
    """SEQ_FLOOR_MAX bounds a seq read from outside (the status file). The outbox's own
    counter may pass it by counting: it was mended back below it, and every next insert
    hit a seq in use, so the outbox took no message again."""
    box = open_outbox(tmp_path)
    with box._tx() as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (SEQ_FLOOR_MAX - 1,))
    try:
        seqs = [box.enqueue("exam", exam_body()).seq for _ in range(4)]
        assert seqs == [SEQ_FLOOR_MAX + k for k in range(4)]
    finally:
        box.close()
    box = open_outbox(tmp_path)
    try:
        assert box.enqueue("exam", exam_body()).seq == SEQ_FLOOR_MAX + 4
    finally:
        box.close()
