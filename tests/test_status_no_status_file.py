"""`sonoedge status` on a box whose uplink never wrote its status file (the loop never ran
with it, or the file is gone) stopped at "the uplink has not run there yet" and never
showed the exams the broker had refused, though they were in the outbox database (an
installer's walk): the outbox's own counts are shown whenever its database is there, and
a damaged one is one line naming it."""

from __future__ import annotations

import json

from edge.store.outbox import OUTBOX_FILE, open_outbox
from edge.uplink.mqtt import STATUS_FILE
from tests.cli_run import sonoedge
from tests.test_outbox import exam_body, health_body

FIX = "sonoedge outbox --retry-rejected"


def test_refused_exams_are_said_with_the_fix_though_the_uplink_wrote_no_status_file(
        tmp_path):
    box = open_outbox(tmp_path)
    try:
        refused = [box.enqueue("exam", exam_body()), box.enqueue("health", health_body())]
        box.enqueue("exam", exam_body())  # still to go
        for msg in refused:
            box.reject(msg.msg_id, "broker refused: Not authorized")
    finally:
        box.close()
    assert not (tmp_path / STATUS_FILE).exists()
    out = sonoedge("status", "--state-dir", str(tmp_path), timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "has not run there yet" in out.stdout, out.stdout
    assert "outbox: 1 pending (1 exam), 2 rejected" in out.stdout, out.stdout
    said = [line for line in out.stdout.splitlines() if "refused by the broker" in line]
    assert len(said) == 1, out.stdout
    assert "2 message(s), 1 of them exams or corrections" in said[0], said[0]
    assert f"`{FIX}`" in said[0], said[0]
    shown = json.loads(sonoedge("status", "--state-dir", str(tmp_path), "--json",
                                timeout=60).stdout)
    assert shown["uplink"] is None
    assert (shown["outbox"]["rejected"], shown["outbox"]["rejected_exams"]) == (2, 1)
    # a status file damaged as a whole is no status either: the refusals are still said
    (tmp_path / STATUS_FILE).write_text("[1")
    out = sonoedge("status", "--state-dir", str(tmp_path), timeout=60)
    assert out.returncode == 0 and len(out.stderr.splitlines()) == 1, out.stderr
    assert "mqtt: unknown (its status file is damaged)" in out.stdout, out.stdout
    assert sum(f"`{FIX}`" in line for line in out.stdout.splitlines()) == 1, out.stdout


def test_a_state_dir_with_neither_file_still_says_the_uplink_has_not_run(tmp_path):
    out = sonoedge("status", "--state-dir", str(tmp_path), timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.strip().splitlines() == [
        f"sonoedge status: no {STATUS_FILE} in {tmp_path}: the uplink has not run there yet"]


def test_an_outbox_that_is_no_database_is_one_line_naming_it(tmp_path):
    """Not a database, a truncated one, a folder in its place: the uplink has not run, and
    one line on stderr names the outbox file and says its messages cannot be counted (it
    said the counts shown were the status file's, of a box that has none); never a
    traceback."""
    path = tmp_path / OUTBOX_FILE
    box = open_outbox(tmp_path)
    box.enqueue("exam", exam_body())
    box.close()
    whole = path.read_bytes()
    for damage in (b"not a database\n" * 100, whole[:1000], None):
        if damage is None:
            path.unlink()
            path.mkdir()
        else:
            path.write_bytes(damage)
        for args in ((), ("--json",)):
            out = sonoedge("status", "--state-dir", str(tmp_path), *args, timeout=60)
            assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
            assert len(out.stderr.splitlines()) == 1, out.stderr
            assert out.stderr.startswith(f"sonoedge status: {path}: "), out.stderr
            # there is no status file whose counts could stand in for the outbox's
            assert "cannot be counted" in out.stderr, out.stderr
            if args:
                assert json.loads(out.stdout)["uplink"] is None
            else:
                assert "has not run there yet" in out.stdout, out.stdout
