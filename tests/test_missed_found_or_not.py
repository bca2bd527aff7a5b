"""A missed checklist slot says whether its plane was never found or found but never good
enough, on the device and at the district.

A district officer reading "Head (HC, BPD) missed in 30% of exams" could not tell what to
coach: probe navigation (where to look for the plane) or image optimisation (gain, depth,
zoom, a steady hand). The summary's `planes` map carries each plane's best quality, but a
slot can be filled by several planes and its minimum quality lives in the device's
protocol, so the district could not work it out. Now the device says it: the summary's
`protocol.missing_seen` lists the missed slots of which a frame was seen (named as one of
the slot's planes by the plane model, with the plane's anatomy) but none reached the
protocol's `min_quality`; the rest of `missing` were never found. The end-of-exam card and
the report name the two apart, with the advice the card gave; the collector refuses a
summary whose `missing_seen` is not a subset of `missing`; the dashboard counts each
clinic's misses by kind, an older summary without the field as "not said".

Real parts: HC18 heads (clean and degraded by quantize.degrade, as the sweeps degrade them)
and SonoNet example screens through `sonoedge exam`, the device's own scorer and session,
its journal and report; the collector's own check, its store and the dashboard's rollup on
SQLite and PostgreSQL, and the dashboard served on a loopback port.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import html
import io
import json
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from central.dashboard import queries
from central.dashboard.store import open_db
from central.db import DeadLetter, Row, Store
from central.report import build_report, format_report
from edge.capture.sources import Frame
from edge.config import load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSession
from edge.models.quality import load_rules
from edge.models.roi import find_roi, to_grey
from edge.scorer import make_scorer
from edge.store.journal import JOURNAL_FILE, Journal
from edge.uplink import messages
from edge.web.history import ExamHistory
from quantize.data import read_frame
from quantize.degrade import degrade
from tests import conftest_mqtt as fx
from tests.cli_run import sonoedge
from tests.conftest import DATA
from tests.dashboard_harness import central, request
from tests.test_age_by_dates_district import _checked, _rebuilt, _stored, served
from tests.test_central import message
from tests.test_collector_fuzz import reference_valid
from wire import schema as wire_schema

postgres, pg_url, url = fx.postgres, fx.pg_url, fx.url  # fixtures

HEAD_SLOT = "Head (HC, BPD)"
EXAMPLES = DATA / "sononet" / "examples"
needs_data = pytest.mark.skipif(not (DATA / "hc18").is_dir(), reason="no shared data")


def poor_heads() -> list[np.ndarray]:
    """500_HC (which the plane student names a transventricular plane, quality 1.0) made
    too dark (gain at severity 0.8) and blurred (0.8), as the sweeps degrade frames: the
    student still names each a head plane, at 0.99 and 0.78, but neither reaches the
    biometry protocol's min_quality of 0.5 (0.38 and 0.30)."""
    grey = to_grey(read_frame(DATA / "hc18" / "images" / "500_HC.png"))
    roi = find_roi(grey)
    return [degrade(grey, roi, "gain", 0.8, np.random.default_rng(1), direction=-1),
            degrade(grey, roi, "blur", 0.8, np.random.default_rng(1))]


def clip(folder: Path, frames: dict[str, np.ndarray | Path]) -> Path:
    """A folder of frames, read in name order as `sonoedge exam` reads a sweep."""
    folder.mkdir()
    for name, frame in frames.items():
        if isinstance(frame, Path):
            shutil.copy(frame, folder / name)
        else:
            assert cv2.imwrite(str(folder / name), frame)
    return folder


def exam_json(folder: Path, protocol: str) -> dict:
    proc = sonoedge("exam", str(folder), "--protocol", protocol, "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def on_the_wire(body: dict) -> dict:
    """The body as the box sends it, valid against the schema and its rules."""
    payload = messages.build_exam(messages.envelope("exam", "clinic-7-box-1", "clinic-7",
                                                    "boot-1"), body)
    wire = {**payload, "msg_id": "00000000-0000-4000-8000-000000000000", "seq": 1}
    assert wire_schema.validate_payload(wire) == [], wire
    return wire


# -- the device ---------------------------------------------------------------------------
@needs_data
def test_a_head_seen_only_too_dark_or_blurred_is_found_not_clear_enough(tmp_path):
    folder = clip(tmp_path / "poor", {f"{i:02d}.png": f for i, f in enumerate(poor_heads())})
    out = exam_json(folder, "biometry")
    protocol = out["exam"]["protocol"]
    assert protocol["missing"] == [HEAD_SLOT] and protocol["missing_seen"] == [HEAD_SLOT]
    (row,) = out["checklist"]
    assert row["captured"] is False and row["seen"] is True
    assert row["best"]["plane"] in ("Brain (Tv.)", "Brain (Cb.)")
    assert row["best"]["quality"] < 0.5 and row["best"]["advice"]["criterion"] == "gain"
    on_the_wire(out["exam"])
    text = sonoedge("exam", str(folder), "--protocol", "biometry").stdout
    line = next(x for x in text.splitlines() if HEAD_SLOT in x)
    assert line.lstrip().startswith("[ ] Head (HC, BPD): found, not clear enough: best quality")
    assert "to improve it:" in line


@needs_data
def test_a_head_never_shown_is_not_found(tmp_path):
    """A clip of a femur and a four-chamber heart: the head slot is missed, never found."""
    folder = clip(tmp_path / "nohead", {"00_femur.tiff": EXAMPLES / "FEMUR.tiff",
                                         "01_4ch.tiff": EXAMPLES / "4CH.tiff"})
    out = exam_json(folder, "biometry")
    protocol = out["exam"]["protocol"]
    assert protocol["missing"] == [HEAD_SLOT] and protocol["missing_seen"] == []
    (row,) = out["checklist"]
    assert row["seen"] is False and "best" not in row
    on_the_wire(out["exam"])
    text = sonoedge("exam", str(folder), "--protocol", "biometry").stdout
    assert "[ ] Head (HC, BPD): not found" in text


@needs_data
def test_a_screen_tells_each_missed_plane_found_or_not(tmp_path):
    """The second-trimester screen over a too-dark head and a good femur: the femur is
    captured, the head's plane found but not clear enough, every other plane not found."""
    dark, _ = poor_heads()
    folder = clip(tmp_path / "screen", {"00_head.png": dark,
                                         "01_femur.tiff": EXAMPLES / "FEMUR.tiff"})
    out = exam_json(folder, "second-trimester")
    protocol = out["exam"]["protocol"]
    assert "Femur" not in protocol["missing"] and len(protocol["missing"]) == 12
    assert protocol["missing_seen"] == ["Brain (Tv.)"]
    rows = {row["plane"]: row for row in out["checklist"]}
    assert rows["Brain (Tv.)"]["seen"] is True and rows["Brain (Cb.)"]["seen"] is False
    assert "seen" not in rows["Femur"]  # captured: neither
    on_the_wire(out["exam"])


@needs_data
def test_the_report_names_the_two_kinds_with_the_cards_advice_in_english_and_french(
        tmp_path):
    """The exam journaled as the loop journals it; its report says "Found, not clear
    enough" and what the card advised for the head, and "Not found" for the femur."""
    scorer = make_scorer(load_settings())
    session = ExamSession(find_protocol("second-trimester"))
    for i, image in enumerate(poor_heads()[:1]):
        scorer._roi_key = None
        session.add(scorer.score(Frame("head", i, image, time.monotonic(),
                                       time.time())).to_dict())
    body = session.finish("command")
    assert body["protocol"]["missing_seen"] == ["Brain (Tv.)"]
    state = tmp_path / "state"
    state.mkdir()
    journal = Journal(state / JOURNAL_FILE)
    assert journal.add_exam(None, body, session.kept_frames())
    journal.close()
    history = ExamHistory(state)
    rules = load_rules()
    words = {"en": ("Found, not clear enough", "Not found", "Too dark: turn the gain up"),
             "fr": ("Trouvé, pas assez net", "Non trouvé", "Trop sombre\u202f: augmentez le gain")}
    for lang, (seen, not_found, advice) in words.items():
        response = asyncio.run(history.report(body["exam_id"], lang, rules, {}, True, None))
        assert response.status == 200
        head, femur = (_item(response.text, plane, lang) for plane in ("Brain (Tv.)", "Femur"))
        assert seen in head and f'<div class="advice">{advice}</div>' in head, head
        assert not_found in femur and 'class="advice"' not in femur, femur


def _item(page: str, plane: str, lang: str) -> str:
    """The report's checklist item of a plane, by its name in the page's language."""
    name = {("Brain (Tv.)", "en"): "Head (ventricles)", ("Brain (Tv.)", "fr"):
            "Tête (ventricules)", ("Femur", "en"): "Femur", ("Femur", "fr"): "Fémur"}[
        (plane, lang)]
    items = page.split('<ul class="checklist">', 1)[1].split("</ul>", 1)[0].split("<li")
    (item,) = [i for i in items if f"✗ {name}<" in i]
    return item


# -- the wire -----------------------------------------------------------------------------
def _exam(seq: int, missing: list, seen: object = None, protocol: str = "biometry",
          required: int = 1, exam_id: str | None = None) -> dict:
    """An exam message as a box sends it, its checklist's `missing` and, unless None (a
    box before it), `missing_seen`."""
    proto = {"name": protocol, "required": required, "captured": required - len(missing),
             "missing": missing, **({} if seen is None else {"missing_seen": seen})}
    return message("exam", seq=seq, protocol=proto, exam_id=exam_id or f"exam-{seq}")


def test_a_summary_with_or_without_missing_seen_is_stored():
    for body in (_exam(1, [HEAD_SLOT], [HEAD_SLOT]), _exam(2, [HEAD_SLOT], []),
                 _exam(3, [], []), _exam(4, [HEAD_SLOT])):  # the last: a box before it
        assert isinstance(_checked(body), Row), body
        assert reference_valid("sonoedge/dev-a/exam", json.dumps(body).encode())


@pytest.mark.parametrize("missing,seen,said", [
    (["Femur"], [HEAD_SLOT], f"'{HEAD_SLOT}' is not in $.protocol.missing"),  # not missed
    ([], ["Femur"], "'Femur' is not in $.protocol.missing"),
    ([HEAD_SLOT], [HEAD_SLOT, HEAD_SLOT], "is listed twice"),
    ([f"s{i}" for i in range(14)], [f"s{i}" for i in range(15)], "more than 14 items"),
    ([HEAD_SLOT], HEAD_SLOT, "expected array"),
    ([HEAD_SLOT], {HEAD_SLOT: True}, "expected array"),
    ([HEAD_SLOT], None, "expected array"),  # null, not absent
    ([HEAD_SLOT], [1], "expected string"),
    ([HEAD_SLOT], [["Head"]], "expected string"),
    ([HEAD_SLOT], ["x" * 33], "longer than 32"),
    ([HEAD_SLOT], [""], "shorter than 1"),
])
def test_a_hostile_missing_seen_is_refused_with_one_error_naming_it(missing, seen, said):
    body = _exam(1, missing, [])
    body["protocol"] = {**body["protocol"], "missing_seen": seen,
                        "required": 14, "captured": 14 - len(missing)}
    item = _checked(body)
    assert isinstance(item, DeadLetter), body
    assert item.reason.startswith("schema: $.protocol.missing_seen") and said in item.reason
    assert ";" not in item.reason, item.reason  # one error
    assert wire_schema.validate_payload(body) == [item.reason.removeprefix("schema: ")]


def test_a_box_too_busy_for_1_kb_sheds_missing_seen_before_the_missing_names():
    """A screen that missed all 13 planes: missing_seen goes first (the district then
    counts them "not said"), so what is sent stays valid: never a slot seen but not missed."""
    planes = ["Brain (Tv.)", "Brain (Cb.)", "Profile", "Lips", "Spine (sag.)", "Spine (cor.)",
              "4CH", "LVOT", "RVOT", "3VV", "Abdominal", "Kidneys", "Femur"]
    body = {k: v for k, v in _exam(1, planes, planes, "second-trimester", 13).items()
            if k not in ("schema", "kind", "msg_id", "seq", "boot_id", "device_id",
                         "clinic_id", "ts", "mono_s")}
    body["deficiencies"] = {f"criterion_{c}": 10 ** 9 for c in "abcd"}
    body["planes"] = {p: [10 ** 9, 0.123456, 0.123456] for p in planes}
    shed = on_the_wire(body)
    assert "missing_seen" not in shed["protocol"] and shed["protocol"]["captured"] == 0


# -- the district -------------------------------------------------------------------------
def district(db_url: str) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """clinic-1's missed slots over the last 4 weeks: (missed, not found, found but not
    clear enough, not said) by (protocol, slot)."""
    db = open_db(db_url)
    try:
        page = queries.completeness_page(db, queries.Scope(None), queries.period(4))
        [clinic] = [c for c in page.clinics if c.clinic_id == "clinic-1"]
        return {(s.protocol, s.slot): (s.missed, s.not_found, s.poor, s.unknown)
                for s in clinic.slots_missed()}
    finally:
        db.close()


EXAMS = [_exam(1, [HEAD_SLOT], [HEAD_SLOT]), _exam(2, [HEAD_SLOT], []),
         _exam(3, [HEAD_SLOT], []), _exam(4, [HEAD_SLOT]),  # a box before missing_seen
         _exam(5, [], []),
         _exam(6, ["3VV", "Lips"], ["Lips"], "second-trimester", 13),
         _exam(7, ["3VV"], None, "second-trimester", 13)]
COUNTS = {("biometry", HEAD_SLOT): (4, 2, 1, 1),
          ("second-trimester", "3VV"): (2, 1, 0, 1),
          ("second-trimester", "Lips"): (1, 0, 1, 0)}


def test_the_district_counts_each_clinics_misses_never_found_or_not_clear_enough(url):
    _stored(url, EXAMS)
    assert district(url) == COUNTS
    _rebuilt(url)  # the rollups of version 18 dropped, and made again from the messages
    assert district(url) == COUNTS
    _stored(url, [_exam(8, [HEAD_SLOT], [])])  # a later batch adds to the same week
    assert district(url)[("biometry", HEAD_SLOT)] == (5, 3, 1, 1)


def test_the_clinic_page_and_the_missed_csv_show_the_split(tmp_path):
    path = str(tmp_path / "central.sqlite3")
    _stored(path, EXAMS)
    with served(path, tmp_path) as (base, cookie):
        status, _, body = request(base, "/api/missed.csv?weeks=8", cookie)
        assert status == 200
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert rows[0][:6] == ["clinic_id", "protocol", "slot", "exams_missing_it",
                               "protocol_exams", "share_missing_it"]  # as before, first
        assert rows[0][6:9] == ["missed_not_found", "missed_not_clear_enough",
                                "missed_not_said"]
        got = {(r[1], r[2]): (int(r[3]), *map(int, r[6:9])) for r in rows[1:]}
        assert got == COUNTS
        status, _, page = request(base, "/clinic/clinic-1?weeks=8", cookie)
        assert status == 200
        html = page.decode()
        table = html.split('<table class="missed-kinds">', 1)[1].split("</table>", 1)[0]
        head = next(r for r in table.split("<tr>") if r.startswith(f"<td>{HEAD_SLOT}"))
        assert "<td class=num>2</td><td class=num>1</td><td class=num>1</td>" in head
        lips = next(r for r in table.split("<tr>") if r.startswith("<td>Lips"))
        assert "<td class=num>0</td><td class=num>1</td><td class=num>-</td>" in lips
        assert ('title="head measurement: 2 not found, 1 found but not clear enough, '
                '1 not said (older boxes)"') in html


# the collector's report: each exam's missed slots, as the clinic page words them
SAID = {"exam-1": "found, not clear enough: Head (HC, BPD)",
        "exam-2": "not found: Head (HC, BPD)", "exam-3": "not found: Head (HC, BPD)",
        "exam-4": "missed, not said whether found (older box): Head (HC, BPD)",
        "exam-6": "not found: 3VV; found, not clear enough: Lips",
        "exam-7": "missed, not said whether found (older box): 3VV"}


def test_the_collectors_report_says_each_missed_slot_never_found_or_not_clear_enough(url):
    """`sonoedge-central report` listed "Head (HC, BPD)" missing, whether the midwife never
    found the head or found it too dark; an exam from a box before `missing_seen` says it
    does not say, never counted as either."""
    _stored(url, EXAMS)
    out = central("report", "--db", url, "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    exams = {e["exam_id"]: e for e in json.loads(out.stdout)["recent_exams"]}
    kinds = {k: (e["missing_not_found"], e["missing_not_clear_enough"])
             for k, e in exams.items()}
    assert kinds == {"exam-1": ([], [HEAD_SLOT]), "exam-2": ([HEAD_SLOT], []),
                     "exam-3": ([HEAD_SLOT], []), "exam-4": (None, None),
                     "exam-5": ([], []), "exam-6": (["3VV"], ["Lips"]),
                     "exam-7": (None, None)}
    out = central("report", "--db", url)
    assert out.returncode == 0, out.stderr
    text = out.stdout.split("\nRecent exams\n", 1)[1].split("\nDead letters", 1)[0]
    lines = [x for x in text.splitlines() if " dev-a " in x]  # an exam's, by its box
    # newest first: exam-7 ... exam-1, each line ending with its missed slots said
    for line, exam_id in zip(lines, [f"exam-{i}" for i in range(7, 0, -1)], strict=True):
        said = SAID.get(exam_id)
        notes = line.split("  ")[-1]
        if said is None:
            assert "found" not in notes and "said" not in notes, line
        else:
            assert notes.startswith(said), (exam_id, line)


def test_a_stored_exam_whose_missing_seen_is_not_a_list_is_counted_not_said(tmp_path):
    """A row the collector did not write (another writer, a damaged database): a
    `missing_seen` that is text, or names a slot not missed, is no guess either way."""
    path = str(tmp_path / "central.sqlite3")
    rows = [_checked(_exam(1, [HEAD_SLOT], [HEAD_SLOT])),
            _checked(_exam(2, ["3VV", "Lips"], ["Lips"], "second-trimester", 13))]
    hostile = []
    for item, seen in zip(rows, (HEAD_SLOT, ["Lips", "Femur", 7, None]), strict=True):
        payload = json.loads(item.payload)
        payload["protocol"]["missing_seen"] = seen
        hostile.append(dataclasses.replace(item, payload=json.dumps(payload)))
    st = Store(path)
    try:
        st.store(hostile, [])
        exams = {e["exam_id"]: e for e in build_report(st)["recent_exams"]}
        text = format_report(build_report(st))
    finally:
        st.close()
    assert (exams["exam-1"]["missing_not_found"], exams["exam-1"]["missing_not_clear_enough"]
            ) == (None, None)
    assert (exams["exam-2"]["missing_not_found"], exams["exam-2"]["missing_not_clear_enough"]
            ) == (["3VV"], ["Lips"])
    assert "missed, not said whether found (older box): Head (HC, BPD)" in text
    assert "not found: 3VV; found, not clear enough: Lips" in text and "Femur" not in text


def test_the_districts_slots_missed_most_split_never_found_or_not_clear_enough(tmp_path):
    """The completeness page's "Slots most often missed" bars gave each slot's share of its
    protocol's exams, not what to coach: each bar is now split, never found, found but not
    clear enough, and the rest not said (older boxes: grey, never guessed into either),
    with the split in words under it (a print or a phone has no hover) and a legend."""
    path = str(tmp_path / "central.sqlite3")
    _stored(path, EXAMS)
    with served(path, tmp_path) as (base, cookie):
        for where in ("/completeness?weeks=8", "/clinic/clinic-1?weeks=8"):
            status, _, page = request(base, where, cookie)
            assert status == 200
            svg = html.unescape(page.decode().split('data-chart="missed"', 1)[1]
                                .split("</svg>", 1)[0])
            bars = {(a["data-protocol"], a["data-slot"]): a for a in
                    (dict(re.findall(r'([a-z-]+)="([^"]*)"', r)) for r in
                     re.findall(r"<rect ([^>]*data-slot=[^>]*)>", svg))}
            assert {k: (int(a["data-missed"]), int(a["data-not-found"]),
                        int(a["data-not-clear-enough"]), int(a["data-not-said"]))
                    for k, a in bars.items()} == COUNTS, where
            assert bars[("biometry", HEAD_SLOT)]["fill"] == "#d9d9d9"  # not said: grey
            parts = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="\d+" '
                               r'fill="(#[0-9a-f]+)" data-kind="([a-z_]+)" data-n="(\d+)">'
                               r"<title>([^<]*)</title>", svg)
            head = [p for p in parts if p[4].startswith("Head (HC, BPD) (head measurement)")]
            assert [(kind, int(n)) for _, _, kind, n, _ in head] == [
                ("not_found", 2), ("not_clear_enough", 1)]
            assert head[0][4].endswith("2 of 4 misses not found: coach where to look")
            assert "1 of 4 misses found, not clear enough: coach the image" in head[1][4]
            width = float(bars[("biometry", HEAD_SLOT)]["width"])
            assert float(head[0][0]) == pytest.approx(width / 2, abs=0.2)
            assert float(head[1][0]) == pytest.approx(width / 4, abs=0.2)
            texts = re.findall(r"<text [^>]*>([^<]*)</text>", svg)
            assert "2 not found, 1 found but not clear enough, 1 not said (older boxes)" \
                in texts
            assert "0 not found, 1 found but not clear enough" in texts  # Lips
            # 3VV: one not found, one from a box before it
            assert "1 not found, 0 found but not clear enough, 1 not said (older boxes)" \
                in texts
            assert ["not found", "found, not clear enough", "not said (older boxes)"] == [
                t for t in texts if t in ("not found", "found, not clear enough",
                                          "not said (older boxes)")]


def test_a_slot_no_summary_said_is_not_said_never_zero_not_found(tmp_path):
    """Misses only from boxes before `missing_seen`: "2 not said (older boxes)", where
    "0 not found, 0 found but not clear enough" read as a count of none."""
    path = str(tmp_path / "central.sqlite3")
    _stored(path, [_exam(1, [HEAD_SLOT]), _exam(2, [HEAD_SLOT])])
    with served(path, tmp_path) as (base, cookie):
        status, _, page = request(base, "/completeness?weeks=8", cookie)
        assert status == 200
        body = html.unescape(page.decode())
        assert 'title="head measurement: 2 not said (older boxes)"' in body
        svg = body.split('data-chart="missed"', 1)[1].split("</svg>", 1)[0]
        assert ">2 not said (older boxes)</text>" in svg and "0 not found" not in svg
        assert "data-kind" not in svg  # nothing drawn as either kind


# -- the midwife's page -------------------------------------------------------------------
@needs_data
def test_the_end_of_exam_card_names_the_two_kinds_with_the_advice_in_each_language(
        tmp_path):
    """Debian's Chromium on the page's real server, the card showing a screen that has
    ended: the head plane seen only too dark is "found, not clear enough" with the card's
    advice, a plane never shown "not found"; while an exam runs, neither is said."""
    pytest.importorskip("playwright")
    from edge.web.live import exam_snapshot  # noqa: PLC0415
    from tests.web_harness import chromium, page_alone, unlocked_page  # noqa: PLC0415

    scorer = make_scorer(load_settings())
    session = ExamSession(find_protocol("second-trimester"))
    for i, image in enumerate(poor_heads()[:1]):
        scorer._roi_key = None
        session.add(scorer.score(Frame("head", i, image, time.monotonic(),
                                       time.time())).to_dict())
    body = session.finish("command")
    words = {"en": ("Found, not clear enough: Head (ventricles)", "Not found: ",
                    "Too dark: turn the gain up"),
             "fr": ("Trouvé, pas assez net\u202f: Tête (ventricules)", "Non trouvé\u202f: ",
                    "Trop sombre\u202f: augmentez le gain")}
    with page_alone(tmp_path / "state") as srv, chromium(tmp_path) as context:
        srv.rules = load_rules()  # as a box with the audit on: its advice has catalog keys
        srv.view.exam = exam_snapshot(session, running=True)
        page = unlocked_page(context, f"http://127.0.0.1:{srv.port}")
        page.wait_for_selector('#checklist li[data-plane="4CH"]', timeout=10_000)
        assert page.locator("#checklist .miss").count() == 0  # running: not yet said
        srv.view.exam = exam_snapshot(session, False, "command", body)
        for lang, (seen, not_found, advice) in words.items():
            page.select_option("#controls select.lang", lang)
            page.wait_for_function(
                "document.querySelector('#checklist li[data-plane=\"Brain (Tv.)\"] .miss')"
                f"?.textContent === {json.dumps(seen)}", timeout=10_000)
            head = page.locator('#checklist li[data-plane="Brain (Tv.)"]')
            assert head.locator(".advice").text_content() == advice
            heart = page.locator('#checklist li[data-plane="4CH"]')
            assert heart.locator(".miss").text_content().startswith(not_found)
            assert heart.locator(".advice").count() == 0
