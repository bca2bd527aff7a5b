"""The district report's "Recent exams" named each exam's protocol by its id
("second-trimester") where the dashboard names it by its title ("second-trimester screen
(13 planes)"): an officer reading both could not tell they were the same (a walk). Now the
report's column has the dashboard's words (`config.protocol_title`, one table); an id the
dashboard has no title for (a newer box's protocol) reads as it came, escaped; `--json`
keeps the id in `protocol`, for machines, and gives the title beside it in
`protocol_title`.

Real parts: the collector's own check of each message, its store on SQLite and a real
PostgreSQL, and `sonoedge-central report` as a process.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from central.dashboard.config import PROTOCOL_TITLES
from central.db import Store
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import REPO, py_env
from tests.test_report_recent_exams import NOW, _exam, _recent

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures


def _protocol(name: str, required: int, captured: int) -> dict:
    return {"protocol": {"name": name, "required": required, "captured": captured,
                         "missing": []}}


def _report(db: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "central.cli", "report", "--db", db, *args],
                         capture_output=True, text=True, env=py_env(), cwd=str(REPO),
                         timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return out.stdout


def test_recent_exams_name_each_protocol_as_the_dashboard_does_and_json_keeps_the_id(url):
    rows = [_exam("dev-a", 1, NOW - 400, NOW - 390, **_protocol("second-trimester", 13, 12)),
            _exam("dev-a", 2, NOW - 300, NOW - 290, **_protocol("biometry", 1, 1)),
            _exam("dev-b", 1, NOW - 200, NOW - 190, **_protocol("third-trimester", 4, 2)),
            _exam("dev-c", 1, NOW - 100, NOW - 90)]  # an older box: no protocol named
    store = Store(url)
    try:
        store.store(rows, [])
    finally:
        store.close()
    text = _report(url)
    head = text.split("\nRecent exams\n", 1)[1].splitlines()[0]
    start, end = head.index("protocol"), head.index(" done")  # done: right-aligned
    lines = _recent(text)
    # the protocol column, as an officer reads it (its words end before the slots done)
    column = [line[start:end].strip() for line in lines]
    second, measure = PROTOCOL_TITLES["second-trimester"], PROTOCOL_TITLES["biometry"]
    assert column == ["-", "third-trimester", measure, second], lines
    assert second != "second-trimester" and measure != "biometry"  # titles, not ids
    assert [line[end:].split()[0] for line in lines] == ["-", "2/4", "1/1", "12/13"], lines
    shown = json.loads(_report(url, "--json"))["recent_exams"]
    assert [(e["protocol"], e["protocol_title"]) for e in shown] == [
        (None, None), ("third-trimester", "third-trimester"), ("biometry", measure),
        ("second-trimester", second)]


def test_a_protocol_name_from_a_damaged_row_is_shown_escaped_never_a_crash(tmp_path):
    """A row the collector did not write (another writer, a damaged database): a name
    with a terminal's escape and a newline, a list where a name goes, a 5,000-character
    name. The report runs; each is one line, escaped."""
    path = str(tmp_path / "central.sqlite3")
    marked = "damage-marker"  # a name the collector takes, then damaged in the row

    def damaged(seq: int, name: object) -> object:
        row = _exam("dev-a", seq, NOW - 100 * seq, NOW - 100 * seq + 5,
                    **_protocol(marked, 13, 1))
        return dataclasses.replace(row, payload=row.payload.replace(
            json.dumps(marked), json.dumps(name)))

    rows = [damaged(1, "evil\x1b[2J\nforged line"), damaged(2, ["second-trimester"]),
            damaged(3, "x" * 5000)]
    store = Store(path)
    try:
        store.store(rows, [])
    finally:
        store.close()
    text = _report(path)
    lines = _recent(text)
    assert len(lines) == 3, lines
    assert "\x1b" not in text and not any(x.startswith("forged") for x in text.splitlines())
    assert any("evil\\x1b[2J\\x0aforged line" in x for x in lines), lines
    assert any("['second-trimester']" in x for x in lines), lines
    assert any("x" * 5000 in x for x in lines), lines
