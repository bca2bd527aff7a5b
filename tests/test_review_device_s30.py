"""Review of the device's state files (session 30): a state folder whose name a SQLite URI
would misread ('#', '?', '%', bytes that are not UTF-8) still opens the files it names."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from edge.config import MqttSettings
from edge.store.journal import JOURNAL_FILE, Journal
from edge.uplink.mqtt import Uplink
from edge.web.history import ExamHistory
from tests.cli_run import sonoedge
from tests.test_journal_salvage import MODELS, summary


def test_the_history_page_and_the_outbox_command_read_a_folder_of_any_name(tmp_path):
    # The page built its read-only URI from the path as text: a '#' cut the name short
    # (no journal: no exams listed), and a name that is not UTF-8 raised
    # UnicodeEncodeError on the history thread. `sonoedge outbox` did the same unquoted.
    for name in (b"clinic #2 ?100%", b"clinique-\xe9t\xe9"):
        state = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), name)))
        journal = Journal(state / JOURNAL_FILE)
        run = journal.start_run("clinic", MODELS)
        exam = summary(time.time())
        assert journal.add_exam(run, exam, {})
        journal.close()
        history = ExamHistory(state)
        try:
            listed, readable = asyncio.run(history.recent(10, None))
        finally:
            history.close()
        assert readable and [e["exam_id"] for e in listed] == [exam["exam_id"]], name
        uplink = Uplink(MqttSettings(device_id="dev-a", clinic_id="c1"), state)
        uplink.outbox.enqueue("exam", exam)
        uplink.outbox.close()
        proc = sonoedge("outbox", "--state-dir", str(state))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("1 pending, 0 rejected"), proc.stdout
