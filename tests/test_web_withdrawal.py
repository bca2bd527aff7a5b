"""Withdrawing an ended exam on the midwife's page, against `sonoedge run --web` over TLS
on a clip of two real exams (HC18 heads, a gap, other heads), in Chromium.

A test scan, the wrong woman, an exam that ran into the next woman: the midwife withdraws
it from the earlier exams' list, with a reason from the fixed list and a second tap to
confirm (a slip must not withdraw a woman's exam). It stays listed, marked "Withdrawn:
<reason>", its report says so at the top, and Undo restores it. Each change is a journal
entry and one `withdrawal` message in the outbox (valid on the wire, nothing of the woman);
every refusal of the route is one line, and none keeps anything.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.test_web_exams import FPS
from tests.web_harness import (
    HEADS,
    SCREEN_H,
    SCREEN_W,
    _screen,
    chromium,
    client_ssl,
    device,
    http,
    login_cookie,
    unlock_if_asked,
    wait_for,
)
from wire.schema import validate_payload

pytest.importorskip("playwright")
POLL = {"timeout": 90_000, "polling": 250}
TABLET = {"width": 1280, "height": 800}
PER_HEAD = 6  # frames of each head: an exam is begun by its first, and a withdrawal
# needs two kept exams, not many frames of them (the clip plays at its own rate)
END_GAP_S = 3.0  # the box's [exam] end_gap_s here (the harness's is 5 s): a shorter gap
GAP_S = END_GAP_S + 2.0  # without ultrasound, 2 s longer (tests/test_web_exams.py's margin)


def two_exams(data_dir: Path, dest: Path) -> Path:
    """Half a second of black, three heads, a gap with no image longer than the box's
    `[exam] end_gap_s` (the first exam ends, as when the probe is lifted), three other
    heads (the next woman's exam, ended with the recording): tests/test_web_exams.py's
    clip with fewer frames of each head and a shorter gap."""
    rng = np.random.default_rng(19)
    black = np.zeros((SCREEN_H, SCREEN_W, 3), np.uint8)
    frames = [black] * int(FPS / 2)
    for i, group in enumerate((HEADS[:3], HEADS[3:])):
        if i:
            frames += [black] * int(GAP_S * FPS)
        for name in group:
            image = cv2.imread(str(data_dir / "hc18" / "images" / name))
            frames += [_screen(image, rng, k > 0) for k in range(PER_HEAD)]
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), FPS,
                             (SCREEN_W, SCREEN_H))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return dest


@pytest.fixture(scope="module")
def box(tmp_path_factory, data_dir):
    """The box on the clip of two exams, played to its end, and a browser (started while
    the clip plays)."""
    tmp = tmp_path_factory.mktemp("withdraw")
    clip = two_exams(data_dir, tmp / "clip.avi")
    with device(tmp, clip, end_gap_s=END_GAP_S) as (base, proc), chromium(tmp) as browser:
        state = tmp / "state"
        cookie = login_cookie(base)

        def both_ended() -> bool:
            status = json.loads(http(base + "/api/state", cookie=cookie)[2])["status"]
            return status["phase"] == "ended" and len(exam_ids(state)) == 2

        wait_for(both_ended, 120, "the clip to end with two exams journaled", poll_s=0.5)
        yield {"base": base, "proc": proc, "state": state, "cookie": cookie,
               "browser": browser, "exams": exam_ids(state)}


def _read(state, db_name: str, sql: str, args: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(f"file:{state / db_name}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def exam_ids(state) -> list[str]:
    """The journal's exams, oldest first."""
    try:
        return [r[0] for r in _read(state, "journal.sqlite",
                                    "SELECT exam_id FROM exams ORDER BY started_ts")]
    except sqlite3.OperationalError:
        return []


def journaled(state, exam_id: str) -> tuple | None:
    rows = _read(state, "journal.sqlite", "SELECT withdrawn, reason, entry FROM "
                 "exam_withdrawals WHERE exam_id = ?", (exam_id,))
    return rows[0] if rows else None


def queued(state, exam_id: str, count: int) -> list[dict]:
    """The withdrawal messages the outbox holds for an exam once there are `count`, oldest
    first: each valid on the wire, and nothing but the exam's id, the flag and the reason
    beside the envelope."""
    def now() -> list[dict]:
        return [p for p in (json.loads(raw) for (raw,) in _read(
            state, "outbox.sqlite3",
            "SELECT payload FROM outbox WHERE kind = 'withdrawal' ORDER BY seq"))
            if p["exam_id"] == exam_id]

    wait_for(lambda: len(now()) >= count, 10, f"{count} withdrawal(s) of {exam_id}")
    time.sleep(0.3)  # and no more than those
    out = now()
    assert len(out) == count, out
    for payload in out:
        assert validate_payload(payload) == [], payload
        assert set(payload) - {"schema", "kind", "msg_id", "seq", "boot_id", "device_id",
                               "clinic_id", "ts", "mono_s"} == {
            "exam_id", "withdrawn", "reason", "entered_ts"}
    return out


def row_of(page, exam_id: str) -> str:
    return f"#earlier-list li:has(a[data-exam='{exam_id}'])"


def test_the_midwife_withdraws_an_exam_with_a_reason_and_a_confirm_then_undoes_it(box):
    base, state = box["base"], box["state"]
    first_id, second_id = box["exams"]
    page = box["browser"].new_page()
    page.set_viewport_size(TABLET)
    page.goto(base + "/")
    unlock_if_asked(page)
    page.wait_for_function("document.querySelectorAll('#earlier-list a').length === 2", **POLL)
    row = row_of(page, first_id)
    # one tap opens the reasons; the confirm waits for one, and Keep closes it unchanged
    page.click(f"{row} button.open")
    assert page.is_visible(f"{row} fieldset.confirm")
    assert [t.strip() for t in page.locator(f"{row} fieldset.confirm label").all_text_contents()
            ] == ["Started by mistake", "Test scan", "Wrong woman", "Two women in one exam"]
    assert page.is_disabled(f"{row} button.confirm")
    page.click(f"{row} button.cancel")
    assert not page.is_visible(f"{row} fieldset.confirm")
    time.sleep(0.5)
    assert journaled(state, first_id) is None  # a slip withdrew nothing
    # a reason, then Withdraw: still listed, plainly marked
    page.click(f"{row} button.open")
    page.check(f"{row} input[value='test_scan']")
    page.click(f"{row} button.confirm")
    page.wait_for_function(
        f"document.querySelector(\"{row} .withdrawn-mark\")?.textContent === "
        "'Withdrawn: Test scan'", **POLL)
    assert page.evaluate("document.querySelectorAll('#earlier-list a').length") == 2
    assert page.query_selector(f"{row_of(page, second_id)} .withdrawn-mark") is None
    assert journaled(state, first_id) == (1, "test_scan", 1)
    [sent] = queued(state, first_id, 1)
    assert (sent["withdrawn"], sent["reason"]) == (True, "test_scan")
    # its report says so at the top, and offers the undo
    report = box["browser"].new_page()
    report.goto(f"{base}/report/{first_id}")
    report.wait_for_selector("#report-withdraw button.undo")
    first_line = report.text_content("header p")
    assert first_line.startswith("Withdrawn: Test scan. This exam is not counted by the "
                                 "district."), first_line
    report.emulate_media(media="print")
    assert report.is_visible("#withdrawn") and not report.is_visible("#report-withdraw")
    report.close()
    # Undo on the list: restored, one more message
    page.click(f"{row} button.undo")
    page.wait_for_function(f"document.querySelector(\"{row} button.open\") !== null", **POLL)
    assert page.query_selector(f"{row} .withdrawn-mark") is None
    assert journaled(state, first_id) == (0, "test_scan", 2)
    sent, restored = queued(state, first_id, 2)
    assert (restored["withdrawn"], restored["reason"]) == (False, "test_scan")
    assert restored["seq"] > sent["seq"] and restored["msg_id"] != sent["msg_id"]
    # in French, from the page's own catalog
    page.select_option("#controls select.lang", "fr")
    page.wait_for_function(f"document.querySelector(\"{row} button.open\").textContent === "
                           "'Retirer cet examen'", **POLL)
    page.close()


def test_the_report_withdraws_too_and_every_refusal_is_one_line(box):
    base, state, cookie = box["base"], box["state"], box["cookie"]
    _, second_id = box["exams"]
    report = box["browser"].new_page()
    report.goto(f"{base}/report/{second_id}?lang=fr")
    report.wait_for_selector("#report-withdraw button.open")
    report.click("#report-withdraw button.open")
    report.check("#report-withdraw input[value='wrong_woman']")
    report.click("#report-withdraw button.confirm")
    report.wait_for_selector("#withdrawn")  # drawn again, withdrawn
    assert report.text_content("#withdrawn").startswith("Retiré\u202f: Mauvaise patiente.")
    report.close()
    assert journaled(state, second_id) == (1, "wrong_woman", 1)
    before = len(queued(state, second_id, 1))
    # the same withdrawal again (a second tap): nothing new
    assert http(f"{base}/api/exams/{second_id}/withdrawal",
                {"withdrawn": True, "reason": "wrong_woman"}, cookie=cookie)[0] == 200

    def post(exam_id: str, body: bytes, headers: dict) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{base}/api/exams/{exam_id}/withdrawal", data=body,
                                     method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10, context=client_ssl(base)) as res:
                return res.status, res.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    good = json.dumps({"withdrawn": True, "reason": "mistake"}).encode()
    as_json = {"Content-Type": "application/json", "Cookie": cookie}
    first_id = box["exams"][0]
    for exam_id, body, headers, status, said in (
            (second_id, good, {"Content-Type": "application/json"}, 401, ""),
            (second_id, good, {**as_json, "Origin": "https://elsewhere.example"}, 403, ""),
            ("no-such-exam", good, as_json, 404, "no such ended exam"),
            ("0" * 32, good, as_json, 404, "no such ended exam"),  # an id the box never had
            ("x" * 3000, good, as_json, 404, ""),
            (second_id, b"withdrawn=1", {**as_json, "Content-Type": "text/plain"}, 415, ""),
            (second_id, b"[" * 1000 + b"]" * 1000, as_json, 400, ""),
            (second_id, b"[" * 5000 + b"]" * 5000, as_json, 413, ""),
            (second_id, json.dumps({"withdrawn": "yes", "reason": "mistake"}).encode(),
             as_json, 400, "withdrawn must be true"),
            (second_id, json.dumps({"withdrawn": 1, "reason": "mistake"}).encode(), as_json,
             400, "withdrawn must be true"),
            (second_id, json.dumps({"reason": "mistake"}).encode(), as_json, 400,
             "withdrawn must be true"),
            (second_id, json.dumps({"withdrawn": True}).encode(), as_json, 400,
             "reason must be one of mistake, test_scan, wrong_woman, two_women"),
            (second_id, json.dumps({"withdrawn": True, "reason": "bored"}).encode(), as_json,
             400, "reason must be one of"),
            (second_id, json.dumps({"withdrawn": True, "reason": "x" * 3000}).encode(),
             as_json, 400, "reason must be one of"),
            (second_id, json.dumps({"withdrawn": True, "reason": {"a": ["mistake"]}}).encode(),
             as_json, 400, "reason must be one of"),
            (second_id, json.dumps({"withdrawn": True, "reason": "mistake",
                                    "name": "Amina"}).encode(), as_json, 400,
             "unexpected field 'name'"),
            (first_id, json.dumps({"withdrawn": False}).encode(), as_json, 409,
             "not withdrawn: there is nothing to undo")):
        got, answer = post(exam_id, body, headers)
        assert got == status and b"\n" not in answer.strip(), (exam_id[:40], body[:60], got,
                                                               answer[:200])
        assert said.encode() in answer, (said, answer[:200])
    time.sleep(0.5)
    assert journaled(state, second_id) == (1, "wrong_woman", 1)  # nothing refused was kept
    assert len(queued(state, second_id, before)) == before
