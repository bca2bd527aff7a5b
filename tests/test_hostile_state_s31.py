"""The device's own state files read back as hostile input (S31): after a crash, a bad card
or tampering, `uplink-status.json`, the outbox's seq, the fleet's `state.json` and
`slot.json` and `web-pin.json` each give one clear line naming the file (and field), never
a traceback, and the device goes on where it safely can. Each test writes the damage into
a real file in tmp_path and starts what the device starts."""

# ruff: noqa: F811  (the fleet_kit fixture, imported from tests.test_fleet)
from __future__ import annotations

import json
import logging
import os
import sqlite3

import pytest

from edge.fleet.slots import SLOT_FILE, STATE_FILE
from edge.store import outbox as outbox_module
from edge.store.outbox import OUTBOX_FILE, open_outbox
from edge.uplink import mqtt as mqtt_module
from edge.uplink.mqtt import STATUS_FILE, MqttSettings, Uplink, read_status
from edge.web.auth import PIN_FILE, PinError, read_pin, write_pin
from tests.cli_run import one_line_error, sonoedge
from tests.test_fleet import GROUP, fleet_kit, fleet_of  # noqa: F401
from tests.test_outbox import exam_body, health_body
from wire.fleet import BundleError
from wire.schema import load_schema

DEEP = b"[" * 100_000 + b"]" * 100_000
SEQ_FLOOR_MAX = 1 << 52  # edge.store.outbox.SEQ_FLOOR_MAX (checked below)
DEEP_1000 = b'{"a": ' + b"[" * 1000 + b"]" * 1000 + b"}"


def lines_naming(caplog, *needles: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if all(needle in r.getMessage() for needle in needles)]


def _uplink(state) -> Uplink:
    return Uplink(MqttSettings(device_id="box-1", clinic_id="clinic-7"), state)


# -- D5: uplink-status.json -------------------------------------------------------------------


@pytest.mark.parametrize("content", [
    b"[1, 2]", b'"x"', b"7", b"null", b'{"outbox": "x"}', b'{"outbox": 5}', DEEP, DEEP_1000,
    b'{"outbox": {"last_seq": 3}', b"\xff\xfe{}", b'{"pid": 1e999}'],
    ids=lambda c: c[:24].decode("latin-1"))
def test_a_damaged_uplink_status_file_is_one_line_and_the_uplink_starts(tmp_path, caplog,
                                                                        content):
    """`read_status` parsed the file unbounded and never checked its shape: a list, a text
    or `{"outbox": "x"}` was an AttributeError in `Uplink.__init__`, 1,000 brackets a
    RecursionError, at every start. Now the file (or its damaged field) is left out, with
    one line naming it; the uplink starts, queues, and writes the file afresh."""
    (tmp_path / STATUS_FILE).write_bytes(content)
    caplog.set_level(logging.WARNING)
    uplink = _uplink(tmp_path)
    try:
        assert uplink.enqueue_health({}) is not None
        assert uplink.outbox.last_seq() == 1
    finally:
        uplink.close()
    said = [r.getMessage() for r in caplog.records if r.name == mqtt_module.log.name]
    assert len(said) == 1 and STATUS_FILE in said[0], said
    assert len(said[0].splitlines()) == 1 and len(said[0]) < 300
    rewritten = read_status(tmp_path)  # the uplink's own file reads back whole
    assert rewritten["device_id"] == "box-1" and rewritten["outbox"]["last_seq"] == 1


def test_read_status_keeps_only_fields_of_their_type_and_names_the_others(tmp_path, caplog):
    """One value of the wrong type (Infinity included: json.loads takes it) costs its
    field, not the whole file: `sonoedge status` shows the rest."""
    status = {"device_id": "box-1", "connected": "yes", "acked": True, "refused": 3,
              "last_ack_ts": "soon", "last_connect_ts": 1.7e9, "pid": 12, "extra": [1],
              "last_error_ts": float("inf"),
              "outbox": {"pending": 2, "last_seq": 2**63, "quota_bytes": -1}}
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    caplog.set_level(logging.WARNING)
    read = read_status(tmp_path)
    assert read == {"device_id": "box-1", "refused": 3, "last_connect_ts": 1.7e9, "pid": 12,
                    "outbox": {"pending": 2}}
    [line] = lines_naming(caplog, STATUS_FILE)
    for field in ("connected", "acked", "last_ack_ts", "last_error_ts", "outbox.last_seq"):
        assert field in line, line


@pytest.mark.parametrize("content, field", [
    (b"[1, 2]", None), (b"7", None), (DEEP_1000, None),
    (b'{"outbox": "x", "pid": 5}', "outbox"),
    (b'{"pid": 5, "last_error": "boom", "last_error_ts": "soon"}', "last_error_ts"),
    (b'{"pid": 5, "last_ack_ts": [1], "updated_ts": {"k": 1}}', "last_ack_ts")],
    ids=["list", "int", "deep", "outbox_text", "error_ts_text", "ack_ts_list"])
def test_sonoedge_status_prints_what_it_can_and_one_line_on_what_is_damaged(
        tmp_path, content, field):
    """`sonoedge status --state-dir D` raised a TypeError on a top-level list or number,
    an AttributeError on `{"outbox": "x"}` and a TypeError in `_age` on any `*_ts` that is
    not a number."""
    (tmp_path / STATUS_FILE).write_bytes(content)
    for args in ((), ("--json",)):
        out = sonoedge("status", "--state-dir", str(tmp_path), *args, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr + out.stdout, out.stderr
        naming = [line for line in out.stderr.splitlines() if STATUS_FILE in line]
        assert len(naming) == 1, out.stderr  # and it alone on stderr
        assert len(out.stderr.splitlines()) == 1, out.stderr
        assert field is None or field in naming[0], naming[0]
        if args:
            shown = json.loads(out.stdout)
            assert STATUS_FILE in shown["damaged"]
            assert (shown["uplink"] is None) == (field is None)
        elif field is not None:
            assert "pid 5" in out.stdout and "outbox:" in out.stdout, out.stdout
        else:
            assert "damaged" in out.stdout and "no run holds" in out.stdout, out.stdout


def test_sonoedge_status_shows_a_text_from_the_file_as_one_printable_line(tmp_path):
    status = {"pid": 5, "device_id": "box\n-1", "last_error": "boom\x1b[2J\nforged line",
              "last_error_ts": 1.7e9}
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    out = sonoedge("status", "--state-dir", str(tmp_path), timeout=60)
    assert out.returncode == 0 and "\x1b" not in out.stdout, out.stdout
    assert not any(line.startswith(("forged line", "-1")) for line in
                   out.stdout.splitlines()), out.stdout
    assert "boom\\x1b[2J\\x0aforged line" in out.stdout, out.stdout


# -- D6: the seq floor and the outbox's own seq -----------------------------------------------


def _corrupt_outbox(state) -> None:
    (state / OUTBOX_FILE).write_bytes(b"SQLite format 3\x00" + b"\xa5" * 8000)


@pytest.mark.parametrize("last_seq", [2**63, 2**63 - 1, SEQ_FLOOR_MAX + 1, True, -1, 1.5,
                                      "41"], ids=repr)
def test_a_seq_floor_from_a_damaged_status_file_is_ignored_with_one_line(tmp_path, caplog,
                                                                         last_seq):
    """With 2^63 in the status file and a corrupt outbox at the same start the salvage
    raised OverflowError (SQLite's integers end at 2^63 - 1); with 2^63 - 1 the device
    started and its next message overflowed; `true` was taken as 1. A floor must be an
    integer up to SEQ_FLOOR_MAX: else it is ignored, said once, and the seqs start over."""
    (tmp_path / STATUS_FILE).write_text(json.dumps({"outbox": {"last_seq": last_seq}}))
    _corrupt_outbox(tmp_path)
    caplog.set_level(logging.WARNING)
    uplink = _uplink(tmp_path)
    try:
        assert uplink.outbox.moved_aside is not None
        assert uplink.enqueue_health({}) is not None
        assert uplink.outbox.last_seq() == 1
    finally:
        uplink.close()
    assert len(lines_naming(caplog, STATUS_FILE, "outbox.last_seq")) == 1
    assert not lines_naming(caplog, "seq floor")  # said once, by the uplink, not twice


def test_a_sound_seq_floor_still_carries_a_rebuilt_outbox_on(tmp_path, caplog):
    (tmp_path / STATUS_FILE).write_text(json.dumps({"outbox": {"last_seq": 41}}))
    _corrupt_outbox(tmp_path)
    uplink = _uplink(tmp_path)
    try:
        assert uplink.enqueue_health({}) is not None
        assert uplink.outbox.last_seq() == 42
    finally:
        uplink.close()
    assert not lines_naming(caplog, STATUS_FILE)


def test_the_seq_bounds_leave_room_within_the_wire_s_schemas():
    """A seq above the schemas' maximum broke every message at the collector; above
    2^63 - 1 SQLite could not store it. Counting on from the highest floor the outbox
    takes stays within both."""
    top = outbox_module.SEQ_MAX
    assert all(load_schema(kind)["properties"]["seq"]["maximum"] >= top
               for kind in outbox_module.KINDS)
    assert outbox_module.SEQ_FLOOR_MAX == SEQ_FLOOR_MAX
    assert SEQ_FLOOR_MAX + 1 < top < 2**63 - 1


@pytest.mark.parametrize("value", [2**63 - 1, outbox_module.SEQ_MAX + 1, -5, "abc", 1e300, b"\x00",
                                   None], ids=repr)
def test_a_damaged_seq_in_the_outbox_is_mended_from_its_messages_and_keys(tmp_path, caplog,
                                                                           value):
    """The outbox counted on from its `meta` row whatever it held: 2^63 - 1 or 1e300
    overflowed at the next message, a text raised a ValueError, a negative or lost row
    (None: deleted) handed out seqs already used. It is mended, in one line, to the
    highest seq its messages and keys hold."""
    box = open_outbox(tmp_path)
    sent = [box.enqueue("exam", exam_body(), key=f"exam-{i}") for i in range(3)]
    box.ack([sent[0].msg_id, sent[1].msg_id])  # sent: only their keys keep their seqs
    box.close()
    db = sqlite3.connect(tmp_path / OUTBOX_FILE)
    if value is None:
        db.execute("DELETE FROM meta WHERE key = 'seq'")
    else:
        db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (value,))
    db.commit()
    db.close()
    caplog.set_level(logging.WARNING)
    box = open_outbox(tmp_path)
    try:
        assert box.last_seq() == 3 and box.counts()["last_seq"] == 3
        assert box.enqueue("health", health_body()).seq == 4
        assert box.enqueue("exam", exam_body(), key="exam-9").seq == 5
    finally:
        box.close()
    said = [r.getMessage() for r in caplog.records if r.name == outbox_module.log.name]
    assert len(said) == 1 and "last seq" in said[0] and OUTBOX_FILE in said[0], said
    box = open_outbox(tmp_path)  # mended on disk: nothing more to say
    box.close()
    assert len([r for r in caplog.records if r.name == outbox_module.log.name]) == 1


# -- D7, D8: the fleet's state.json and slot.json ---------------------------------------------


@pytest.fixture
def installed(tmp_path, fleet_kit):
    """A fleet with the factory set in slot a and bundle 2.0 on trial in slot b."""
    from edge.fleet.keys import load_trusted_keys

    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    keys = load_trusted_keys(fleet_kit["trusted"])
    assert fleet.install(fleet_kit["v2"], keys).version == "2.0"
    assert os.readlink(fleet.current) == "slots/b/models"
    return fleet, keys


def _start(tmp_path, fleet_kit, **settings):
    """What `start_fleet` does with the fleet on: the layout, then the trial's count."""
    fleet = fleet_of(tmp_path, **settings)
    fleet.ensure(fleet_kit["models"])
    line = fleet.on_start()
    return fleet, line


@pytest.mark.parametrize("content", [DEEP, DEEP_1000, b'{"highest": ' + b"[" * 1000
                                     + b"]" * 1000 + b"}", b"\xff" * 10, b" " * 300_000])
def test_a_deep_or_huge_fleet_state_file_is_one_line_and_the_device_starts(
        tmp_path, fleet_kit, installed, caplog, content):
    """`state.json` was parsed unbounded: 1,000 brackets were a RecursionError in
    `start_fleet` at every start. It is read within its bound; a damaged one is started
    afresh with one line naming it, and the active set's version stays the floor."""
    fleet, keys = installed
    (fleet.root / STATE_FILE).write_bytes(content)
    caplog.set_level(logging.WARNING)
    again, _ = _start(tmp_path, fleet_kit)
    status = again.status()
    assert status["bundle"] == "2.0" and status["slot"] == "b"
    assert len(lines_naming(caplog, STATE_FILE)) == 1
    with pytest.raises(BundleError, match="refused"):  # never a replay of 2.0
        again.install(fleet_kit["v2"], keys)


@pytest.mark.parametrize("content", [DEEP, DEEP_1000, b'{"version": "2025.*.1"}',
                                     b'{"version": {"k": 1}}', b"[1]", b'{"version": "2.0", '
                                     b'"signer": ["x"]}'])
def test_a_damaged_slot_json_makes_its_slot_unknown_said_once(tmp_path, fleet_kit, installed,
                                                              caplog, content):
    """A deep `slot.json` made `Fleet.status()` (and so `FleetAgent.status()`, which every
    health message calls) raise. Its slot is now unknown ("none"), said once however often
    health asks, and its version is no floor; the highest version installed still is."""
    fleet, keys = installed
    (fleet.slot_dir("b") / SLOT_FILE).write_bytes(content)
    caplog.set_level(logging.WARNING)
    again, _ = _start(tmp_path, fleet_kit)
    for _ in range(3):  # health, minute after minute
        status = again.status()
        assert status["bundle"] == "none" and status["slot"] == "b"
    assert len(lines_naming(caplog, SLOT_FILE, "slot b")) == 1
    again.on_clean_exit()
    assert again.tick(24 * 3600.0)  # the trial ends
    with pytest.raises(BundleError, match="not newer than 2.0"):
        again.install(fleet_kit["v2"], keys)


@pytest.mark.parametrize("version", ["2025.*.1", None, 7, "x" * 1000], ids=repr)
def test_a_swap_intent_with_a_damaged_version_is_mended_from_its_slot(
        tmp_path, fleet_kit, installed, caplog, version):
    """A power cut after the swap leaves an intent `current` already answers; with its
    version damaged ("2025.*.1", missing) `start_fleet` raised BundleError at every start,
    though `checked_state` promises a damaged state is mended. The version is dropped with
    one line and taken from the slot's own slot.json: the trial begins, 2.0 is the floor."""
    fleet, keys = installed
    path = fleet.root / STATE_FILE
    state = json.loads(path.read_text())
    state.pop("trial")
    state.pop("highest")  # the version comes back from slot b's slot.json
    state["intent"] = {"op": "swap", "to": "b", "from": "a", "previous_version": "factory",
                       **({} if version is None else {"version": version})}
    path.write_text(json.dumps(state))
    caplog.set_level(logging.WARNING)
    again, line = _start(tmp_path, fleet_kit)
    assert line is None
    status = again.status()
    assert status["bundle"] == "2.0" and status["state"] == "trial"
    assert again.state["highest"] == "2.0" and again.state["trial"]["version"] == "2.0"
    [said] = lines_naming(caplog, "intent.version", "mended")
    assert STATE_FILE in said and len(said) < 300
    with pytest.raises(BundleError, match="on trial|refused"):
        again.install(fleet_kit["v2"], keys)
    _start(tmp_path, fleet_kit)  # mended on disk: the next start says nothing more
    assert len(lines_naming(caplog, "mended")) == 1


@pytest.mark.parametrize("where", ["rollback intent", "trial"])
def test_a_rollback_with_a_damaged_version_still_ends_on_the_previous_set(
        tmp_path, fleet_kit, installed, caplog, where):
    """A rollback whose version is not one (in its intent after a power cut, or in the
    trial it rolls back) raised BundleError when it was remembered as failed, at every
    start. The version is taken from the slot rolled back from, so 2.0 is never taken
    again."""
    fleet, keys = installed
    path = fleet.root / STATE_FILE
    state = json.loads(path.read_text())
    if where == "trial":
        state["trial"].update(version="not-a-version", crashes=2, running=True)
    else:
        state.pop("trial")
        os.unlink(fleet.current)
        os.symlink("slots/b/models", fleet.current)
        state["intent"] = {"op": "rollback", "to": "a", "from": "b",
                           "version": "not-a-version", "previous_version": "factory",
                           "reason": "crashed"}
    path.write_text(json.dumps(state))
    caplog.set_level(logging.WARNING)
    again, _ = _start(tmp_path, fleet_kit, crash_limit=3)
    assert os.readlink(again.current) == "slots/a/models"
    status = again.status()
    assert status["bundle"] == "factory" and status["rollback"]["from"] == "2.0"
    assert again.state["failed"][-1] == "2.0" and again.state["highest"] == "2.0"
    assert len(lines_naming(caplog, ".version", "mended")) == 1
    with pytest.raises(BundleError, match="2.0 was rolled back on this box"):
        again.install(fleet_kit["v2"], keys)


# -- D9: web-pin.json -------------------------------------------------------------------------


def _pin_file(tmp_path, **change) -> None:
    write_pin(tmp_path, "2468")
    record = json.loads((tmp_path / PIN_FILE).read_text())
    record.update(change)
    (tmp_path / PIN_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize("change", [
    {"n": 65536}, {"r": 16}, {"n": 1 << 20}, {"n": 1 << 18, "r": 1},
    {"n": float("inf")}, {"r": float("-inf")}, {"p": float("inf")},
    {"p": True}, {"r": True}, {"n": 32768.0}, {"salt": "QUFB" * 300}],
    ids=lambda c: json.dumps(c)[:30])
def test_a_pin_file_whose_costs_scrypt_cannot_run_is_refused_like_a_damaged_one(
        tmp_path, change):
    """Infinity (which json.loads takes) was an OverflowError in read_pin; costs above
    SCRYPT_MAXMEM (n=65536 r=8, n=32768 r=16, n=2^20) were accepted, and then every login
    raised "memory limit exceeded": a 500 with a traceback, counted as a wrong PIN until
    the page locked. Such a file is now one line naming it, as a damaged one is: `sonoedge
    run --web` says to set the PIN again."""
    _pin_file(tmp_path, **change)
    with pytest.raises(PinError) as refused:
        read_pin(tmp_path)
    line = str(refused.value)
    assert str(tmp_path / PIN_FILE) in line and "set the PIN again" in line
    assert len(line.splitlines()) == 1 and len(line) < 400


@pytest.mark.parametrize("content", [DEEP, DEEP_1000, b"[1]", b"{" + b" " * 10_000 + b"}"],
                         ids=["deep", "deep_1000", "list", "10kB"])
def test_a_deep_or_huge_pin_file_is_one_line(tmp_path, content):
    (tmp_path / PIN_FILE).write_bytes(content)
    with pytest.raises(PinError, match="PIN file .*set the PIN again"):
        read_pin(tmp_path)


@pytest.mark.parametrize("costs", [(32768, 8, 4), (1 << 15, 1, 1), (1 << 17, 3, 1)])
def test_every_pin_file_read_pin_takes_can_be_verified(tmp_path, costs):
    """The edge of what read_pin accepts: every hash it lets through is one hashlib can
    compute within SCRYPT_MAXMEM (a wrong PIN is False, never an exception)."""
    import base64

    from edge.web.auth import _scrypt

    n, r, p = costs
    salt = b"0123456789abcdef"
    record = {"scheme": "scrypt", "n": n, "r": r, "p": p,
              "salt": base64.b64encode(salt).decode(),
              "hash": base64.b64encode(_scrypt("2468", salt, n, r, p)).decode()}
    (tmp_path / PIN_FILE).write_text(json.dumps(record))
    pin = read_pin(tmp_path)
    assert pin.matches("2468") and not pin.matches("1357")


def test_run_with_the_page_and_a_pin_file_scrypt_cannot_run_is_one_line(tmp_path):
    _pin_file(tmp_path, n=65536)
    done = sonoedge("run", "--source", "demo", "--state-dir", str(tmp_path), "--web",
                    "127.0.0.1:8099", "--once")
    assert done.returncode == 2
    one_line_error(done, PIN_FILE, "set the PIN again")
