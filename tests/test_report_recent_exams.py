"""The collector's report, "Recent exams", as a district officer reads it (a fresh-eyes walk,
7 December): it listed the exams by when they arrived, so a box back from a week offline
put 20 week-old exams above the day's (which were not listed at all); it named each
exam's faults by the code's criterion names ("sector_cut, ellipse_regular"); and an exam
the midwife withdrew looked like the others, though no count above it holds it.

Now: newest first by when each exam was done (the dashboard's `exam_day_of`: its end on
the box, never after it arrived), ties by the later arrival; each fault in the words the
dashboard's charts give it (`config.deficiency_label`, one table); a withdrawn exam marked
first on its line with the midwife's reason, in `--json` as `withdrawn` and
`withdrawn_reason`; one withdrawn and then restored stands as any other.

Real parts: the collector's own check of each message, its store on SQLite and a real
PostgreSQL, and `sonoedge-central report` as a process.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import uuid

from central.collector import check
from central.db import Row, Store
from central.report import build_report, format_report
from edge.exam import tally
from edge.uplink import messages
from tests import conftest_mqtt as fx
from tests.conftest_mqtt import REPO, py_env
from tests.device_sim import frame_result

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures
REGISTRY = {"dev-a": "clinic-1", "dev-b": "clinic-1", "dev-c": "clinic-2"}
NOW = time.time()
DAY = 86400.0


def _checked(payload: dict, received: float) -> Row:
    item = check(f"sonoedge/{payload['device_id']}/{payload['kind']}",
                 json.dumps(payload).encode(), 4096, "c1", received, REGISTRY)
    assert isinstance(item, Row), item
    return item


def _exam(device: str, seq: int, ended: float, received: float, **extra) -> Row:
    """An exam as a box summarises it, ended at `ended` on its clock, stored at `received`."""
    env = messages.envelope("exam", device, "clinic-x", "boot-1")
    body = tally.summarize_exam([frame_result(i) for i in range(10)], "a.mp4", 1, 2)
    return _checked({**env, **body, "msg_id": str(uuid.uuid4()), "seq": seq,
                     "exam_id": f"{device}-exam-{seq}", "ts": round(ended + 1, 3),
                     "started_ts": round(ended - 300, 3), "ended_ts": round(ended, 3),
                     **extra}, received)


def _withdrawal(device: str, seq: int, exam_seq: int, withdrawn: bool, received: float,
                reason: str = "test_scan") -> Row:
    env = messages.envelope("withdrawal", device, "clinic-x", "boot-1")
    return _checked({**env, "msg_id": str(uuid.uuid4()), "seq": seq,
                     "exam_id": f"{device}-exam-{exam_seq}", "withdrawn": withdrawn,
                     "reason": reason, "entered_ts": round(received - 5, 3)}, received)


def _district() -> list[Row]:
    """dev-a's three exams of this morning (one withdrawn, one withdrawn then restored),
    dev-c's one ended as dev-a's last did, and dev-b back from a week offline: its 22 exams
    of a week ago arrived last, all at once."""
    rows = [_exam("dev-a", 1, NOW - 3600, NOW - 3595),
            _exam("dev-a", 2, NOW - 3000, NOW - 2995,
                  deficiencies={"sector_cut": 4, "ellipse_regular": 2}),
            _exam("dev-a", 3, NOW - 2400, NOW - 2395),
            _withdrawal("dev-a", 4, 3, True, NOW - 2300),
            _withdrawal("dev-a", 5, 1, True, NOW - 2200, reason="mistake"),
            _withdrawal("dev-a", 6, 1, False, NOW - 2100),  # restored
            _exam("dev-c", 1, NOW - 2400, NOW - 2000)]  # the same end, a later arrival
    rows += [_exam("dev-b", k + 1, NOW - 8 * DAY + 60 * k, NOW - 60) for k in range(22)]
    return rows


def _recent(text: str) -> list[str]:
    return text.split("\nRecent exams\n", 1)[1].split("\nDead letters", 1)[0].splitlines()[2:]


def test_recent_exams_are_the_newest_done_marked_when_withdrawn_and_faults_in_words(url):
    store = Store(url)
    try:
        store.store(_district(), [])
        rep = build_report(store)
        again = build_report(store)["recent_exams"]
    finally:
        store.close()
    exams = rep["recent_exams"]
    want = (["dev-c-exam-1", "dev-a-exam-3", "dev-a-exam-2", "dev-a-exam-1"]
            + [f"dev-b-exam-{k}" for k in range(22, 6, -1)])
    assert [e["exam_id"] for e in exams] == want
    assert [e["exam_id"] for e in again] == want  # ties the same way each time
    marks = {e["exam_id"]: (e["withdrawn"], e["withdrawn_reason"]) for e in exams}
    assert marks["dev-a-exam-3"] == (True, "test_scan")
    assert marks["dev-a-exam-1"] == (False, None)  # withdrawn, then restored
    assert sum(w for w, _ in marks.values()) == 1
    assert exams[2]["deficiencies"] == ["sector_cut", "ellipse_regular"]  # --json: the names
    # the clinic counts the withdrawn exam in none of its exams, as the dashboard does
    assert {c["clinic_id"]: c["exams"] for c in rep["clinics"]} == {"clinic-1": 24,
                                                                    "clinic-2": 1}

    out = subprocess.run([sys.executable, "-m", "central.cli", "report", "--db", url],
                         capture_output=True, text=True, env=py_env(), cwd=str(REPO),
                         timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stdout.split("\nRecent exams\n", 1)[0] == format_report(rep).split(
        "\nRecent exams\n", 1)[0]
    lines = _recent(out.stdout)
    assert [line.split()[2] for line in lines] == [e["device_id"] for e in exams]
    ended = [line[:19] for line in lines]
    assert ended == sorted(ended, reverse=True)
    notes = {e["exam_id"]: line.split("  ")[-1] for e, line in zip(exams, lines, strict=True)}
    assert notes["dev-a-exam-3"].startswith(
        "WITHDRAWN by the midwife: a test scan (in no count above)")
    assert notes["dev-a-exam-2"] == "Anatomy off the edge, Skull outline not a clean oval"
    assert sum("WITHDRAWN" in line for line in lines) == 1
    assert "sector_cut" not in out.stdout and "ellipse_regular" not in out.stdout


def test_a_fault_the_dashboard_has_no_words_for_is_its_own_name_and_damage_is_left_out(
        tmp_path):
    """A criterion a newer box names (not in the dashboard's table) reads as its name with
    spaces, as the dashboard's chart labels it; a row the collector did not write (a
    damaged database), an end that is no time, and a box whose clock is years ahead are
    no crash: the broken row is left out, the others dated by their arrival."""
    path = str(tmp_path / "central.sqlite3")
    fine = _exam("dev-a", 1, NOW - 600, NOW - 590, deficiencies={"probe_tilt": 3})
    ahead = _exam("dev-a", 2, NOW - 500, NOW - 400)
    ahead = dataclasses.replace(ahead, payload=ahead.payload.replace(
        f'"ended_ts": {round(NOW - 500, 3)}', '"ended_ts": 4000000000.0'))
    no_time = _exam("dev-b", 1, NOW - 300, NOW - 200)
    no_time = dataclasses.replace(no_time, payload=no_time.payload.replace(
        f'"ended_ts": {round(NOW - 300, 3)}', '"ended_ts": "later"'))
    assert '"ended_ts": 4000000000.0' in ahead.payload and '"later"' in no_time.payload
    broken = dataclasses.replace(_exam("dev-b", 2, NOW - 100, NOW - 50), payload="{broken")
    deep = dataclasses.replace(_exam("dev-b", 3, NOW - 90, NOW - 40),
                               payload="[" * 5000 + "]" * 5000)
    store = Store(path)
    try:
        store.store([fine, ahead, no_time, broken, deep], [])
        exams = build_report(store)["recent_exams"]
        text = format_report(build_report(store))
    finally:
        store.close()
    assert [e["exam_id"] for e in exams] == ["dev-b-exam-1", "dev-a-exam-2", "dev-a-exam-1"]
    assert "probe tilt" in text and "probe_tilt" not in text
