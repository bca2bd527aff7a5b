"""An exam the box's stop cuts says so (session of 6 December, second).

A service stop, a shutdown or a model update's restart while the midwife scanned ended
her exam as `source_end`: her report read "With the end of the recording" on a live
probe, and the district could not tell a cut exam from one that ran to its end. It now
ends as `stopped`, which the wire's schema, the page and the report know."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from central import collector
from edge.store.journal import JOURNAL_FILE
from edge.store.outbox import OUTBOX_FILE
from edge.web.history import ENDED
from tests.conftest import REPO


def test_an_exam_cut_by_a_stop_ends_as_stopped_and_is_valid_on_the_wire(tmp_path):
    state = tmp_path / "state"
    log_path = tmp_path / "run.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        run = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--source", "demo",
                                "--state-dir", str(state)], stdout=log,
                               stderr=subprocess.STDOUT, env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 180
            while "started (protocol" not in log_path.read_text():
                assert run.poll() is None and time.monotonic() < deadline, \
                    log_path.read_text()[-2000:]
                time.sleep(0.2)
            time.sleep(1.0)  # mid-exam: the demo clip is one woman's scan, 12 s long
            run.send_signal(signal.SIGTERM)  # systemd's stop
            assert run.wait(timeout=60) == 0, log_path.read_text()[-2000:]
        finally:
            if run.poll() is None:
                run.kill()
    text = log_path.read_text()
    ended = [line for line in text.splitlines() if " ended (" in line]
    assert len(ended) == 1 and "ended (stopped)" in ended[0], ended
    with sqlite3.connect(state / JOURNAL_FILE) as db:
        (ended_by, summary), = db.execute("SELECT ended_by, summary FROM exams").fetchall()
    assert ended_by == "stopped"
    assert json.loads(summary)["ended_by"] == "stopped" and "stopped" in ENDED
    # the summary queued for the district, as the collector reads it: a row, not a dead letter
    with sqlite3.connect(state / OUTBOX_FILE) as db:
        (payload,), = db.execute("SELECT payload FROM outbox WHERE kind = 'exam'").fetchall()
    message = json.loads(payload)
    row = collector.check(f"sonoedge/{message['device_id']}/exam", bytes(payload), 64 * 1024,
                          "test", time.time())
    assert isinstance(row, collector.Row), row
    assert message["ended_by"] == "stopped"

def test_the_page_and_the_report_have_words_for_a_stopped_exam():
    for path in sorted((REPO / "edge" / "web" / "i18n").glob("*.json")):
        text = json.loads(path.read_text())
        assert text["exam.ended_stopped"] and text["report.ended_stopped"], path.name
