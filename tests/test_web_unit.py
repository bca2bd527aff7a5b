"""The page's pieces without a browser: the PIN and sessions, the brake, the screening
flags and their references, the catalogs, the loop hook, and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import time
from pathlib import Path

import pytest

from edge.config import ConfigError, load_settings
from edge.exam.feedback import Shown
from edge.exam.screening import (
    CI_HIGH,
    CI_LOW,
    cephalic_index,
    ga_from_lmp,
    hc_against_dates,
    hc_for_weeks,
)
from edge.models.quality import load_rules
from edge.web import i18n
from edge.web import server as web_server
from edge.web.auth import PIN_FILE, Brake, PinError, Sessions, read_pin, write_pin
from edge.web.live import LiveView, LoopHook
from edge.web.server import WebServer
from edge.web.settings import WebSettings, parse_listen
from tests.cli_run import one_line_error, sonoedge
from tests.http_raw import assert_malformed_requests_are_one_log_line_each, raw_http
from tests.servers import free_port
from tests.web_harness import PIN, set_pin
from wire.dating import redate_days


def test_the_pin_is_stored_as_a_salted_slow_hash_never_in_clear(tmp_path):
    path = write_pin(tmp_path, "4827")
    text = path.read_text()
    assert "4827" not in text
    record = json.loads(text)
    assert record["scheme"] == "scrypt" and record["n"] >= 1 << 14
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    stored = read_pin(tmp_path)
    assert stored.matches("4827") and not stored.matches("4828") and not stored.matches("")
    again = json.loads(write_pin(tmp_path, "4827").read_text())
    assert again["salt"] != record["salt"] and again["hash"] != record["hash"]  # salted


def test_pin_set_reads_standard_input_and_refuses_a_short_pin(tmp_path):
    done = set_pin(tmp_path, "2468")
    assert done.returncode == 0, done.stderr
    assert read_pin(tmp_path).matches("2468")
    short = set_pin(tmp_path, "12")
    assert short.returncode == 2
    one_line_error(short, "4 to 64 characters")
    assert read_pin(tmp_path).matches("2468")  # unchanged


def test_pin_set_where_the_pin_cannot_be_stored_is_one_line(tmp_path):
    """A state dir that is a file, under a file, or on a path that cannot be made: `pin
    set` ended in a FileExistsError or NotADirectoryError traceback, though the README
    promises one line for "a state dir that is a file or cannot be written"."""
    afile = tmp_path / "state"
    afile.write_text("not a folder\n")
    for where, says in ((afile, "not a folder (the state dir)"),
                        (afile / "sub", "cannot store the PIN there (Not a directory)"),
                        (Path("/proc/sonoedge-none/state"),  # never made, even by root
                         "cannot store the PIN there (No such file or directory)")):
        done = set_pin(where, "2468")
        assert done.returncode == 2, (where, done.stderr)
        one_line_error(done, str(where), says, "nothing was changed")
    assert afile.read_text() == "not a folder\n"


def test_a_missing_or_damaged_pin_file_is_one_line(tmp_path):
    with pytest.raises(PinError, match="sonoedge pin set"):
        read_pin(tmp_path)
    (tmp_path / PIN_FILE).write_text('{"scheme": "scrypt", "n": 3}')
    with pytest.raises(PinError, match="damaged PIN file"):
        read_pin(tmp_path)


def test_run_with_the_page_but_no_pin_or_a_bad_address_is_one_line(tmp_path):
    done = sonoedge("run", "--source", "demo", "--state-dir", str(tmp_path), "--web",
                    "127.0.0.1:8099", "--once")
    assert done.returncode == 2
    one_line_error(done, "no device PIN is set", "sonoedge pin set")
    bad = sonoedge("run", "--state-dir", str(tmp_path), "--web", "nonsense", "--once")
    assert bad.returncode == 2
    one_line_error(bad, "web", "HOST:PORT")


def test_web_config_keys_are_checked(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[web]\nlisten = "0.0.0.0:8080"\nmax_fps = 99.0\n')
    with pytest.raises(ConfigError, match="max_fps"):
        load_settings(cfg)
    cfg.write_text('[web]\nlisten = "0.0.0.0:8080"\ncolour = "blue"\n')
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        load_settings(cfg)
    cfg.write_text('[web]\nlisten = "[::1]:8443"\n')
    assert load_settings(cfg).web.listen == "[::1]:8443"


def test_wrong_pins_are_braked_per_address_and_per_device():
    brake = Brake(free=3, base_s=30, max_s=120, global_max=10, global_window_s=600)
    now = 1000.0
    for _ in range(2):
        assert brake.wrong("a", now) == 0
    assert brake.wrong("a", now) == 30  # the third wrong PIN starts the wait
    assert brake.wait_s("a", now + 10) == pytest.approx(20)
    assert brake.wrong("a", now + 31) == 60 and brake.wrong("a", now + 92) == 120
    assert brake.wrong("a", now + 300) == 120  # capped
    assert brake.wait_s("b", now + 300) == 0  # another address is not braked by "a"
    brake.right("a")
    assert brake.wait_s("a", now + 300) == 0
    for i in range(10):  # the whole device: changing address does not help
        brake.wrong(f"x{i}", now + 400)
    assert brake.wait_s("fresh", now + 401) > 0
    assert brake.wait_s("fresh", now + 1001) == 0


def test_sessions_expire_when_idle_and_at_their_maximum_age():
    sessions = Sessions(idle_s=60, max_age_s=300, max_sessions=2)
    token = sessions.open(now=0)
    assert sessions.valid(token, now=50) and sessions.valid(token, now=100)
    assert not sessions.valid(token, now=161)  # 61 s unused
    token = sessions.open(now=200)
    for t in range(250, 500, 50):
        assert sessions.valid(token, now=t)
    assert not sessions.valid(token, now=501)  # older than 300 s, however busy
    a, b, c = sessions.open(now=600), sessions.open(now=601), sessions.open(now=602)
    assert not sessions.valid(a, now=603) and sessions.valid(b, now=603) \
        and sessions.valid(c, now=603)
    assert not sessions.valid("x" * 500) and not sessions.valid(None)


def test_cephalic_index_uses_the_outer_to_inner_bpd_and_hadlock_s_range():
    assert (CI_LOW, CI_HIGH) == (70, 87)
    normal = cephalic_index(50.0, 65.0)  # outer-outer CI 76.9; BPD oi = 48.2 -> 74.1
    assert normal["ci_outer_outer"] == 76.9 and normal["ci"] == 74.1 and normal["flag"] is None
    assert cephalic_index(40.0, 65.0)["flag"] == "low"  # long, narrow head
    assert cephalic_index(62.0, 65.0)["flag"] == "high"  # short, round head
    assert cephalic_index(None, 65.0) is None


def test_hc_against_dates_uses_hadlock_s_curve_and_acog_s_redating_limits():
    assert hc_for_weeks(19.5) == pytest.approx(168.6, abs=0.2)  # Hadlock's table: 17.0 cm
    assert hc_for_weeks(40.0) == pytest.approx(345.6, abs=0.2)  # 34.6 cm
    assert [redate_days(w) for w in (13.9, 15.0, 20.0, 25.0, 33.0)] == [None, 7, 10, 14, 21]
    agree = hc_against_dates(hc_for_weeks(22.0) - 5, 22.0)
    assert agree["flag"] is None and abs(agree["difference_days"]) <= 14
    small = hc_against_dates(170.0, 22.0)  # 19.6 weeks by HC: 17 days behind
    assert small["flag"] == "small" and small["difference_days"] == -17
    assert small["tolerance_days"] == 14
    assert hc_against_dates(260.0, 22.0)["flag"] == "large"
    assert hc_against_dates(None, 22.0)["status"] == "no_hc"
    assert hc_against_dates(170.0, 10.0)["status"] == "dates_out_of_range"
    assert ga_from_lmp("2026-06-01", "2026-11-02") == pytest.approx(22.0)
    with pytest.raises(ValueError):
        ga_from_lmp("2027-01-01", "2026-11-02")


def test_dates_outside_hadlock_s_span_still_flag_a_head_far_past_its_near_end():
    """A last period 10 weeks ago and a head of 19 weeks read "outside 14-42 weeks, no
    reference" and flagged nothing (a midwife's walk). There is no expected HC at such
    dates, but a head older than 14 weeks by more than ACOG's tolerance there (7 days)
    disagrees with them; one within it, or one young enough for the dates, does not."""
    from wire.dating import dates_flag, hadlock_hc_mm

    far = hc_against_dates(168.3, 10.0)  # the walk's head: 19w 3d by the sonographer
    assert far["status"] == "dates_out_of_range" and far["flag"] == "large"
    assert far["ga_hc_weeks"] == 19.5 and far["hc_mm"] == 168.3
    assert hc_against_dates(hadlock_hc_mm(14.9), 13.0)["flag"] is None  # 6 days past 14
    assert hc_against_dates(hadlock_hc_mm(15.2), 13.0)["flag"] == "large"
    assert hc_against_dates(80.0, 12.0)["flag"] is None  # a head young enough for them
    assert hc_against_dates(400.0, 10.0)["flag"] == "large"  # beyond the span: no age
    assert hc_against_dates(400.0, 10.0)["ga_hc_weeks"] is None
    assert hc_against_dates(hadlock_hc_mm(30.0), 45.0)["flag"] == "small"  # a period long ago
    assert hc_against_dates(hadlock_hc_mm(40.0), 45.0)["flag"] is None
    assert hc_against_dates(None, 10.0) == {"ga_dates_weeks": 10.0, "flag": None,
                                            "hc_expected_mm": None, "tolerance_days": None,
                                            "status": "dates_out_of_range"}
    for bad in (float("nan"), float("inf"), 0.0, None):  # no flag from what is not an HC
        assert dates_flag(bad, 10.0) is None
    assert dates_flag(168.3, float("nan")) is None


def test_head_frames_that_disagree_by_more_than_a_tenth_are_flagged():
    """A change of the scanner's depth after calibration rescaled the HC from 165 to
    236 mm between neighbouring frames, and the exam's median mixed both without a word
    (a midwife's walk). Its frames' 10th-90th percentile now spans 43% of the median."""
    from edge.exam.screening import HC_FRAMES_SPREAD, hc_frames

    mixed = hc_frames({"hc_mm": 166.0, "hc_p10_mm": 165.2, "hc_p90_mm": 236.4})
    assert mixed == {"p10_mm": 165.2, "p90_mm": 236.4, "spread": 0.429, "flag": True,
                     "depth_read": False}  # no scale said: a calibrated box's, as before
    for scale, read in (("ruler", True), ("frame", True), ("calibration", False)):
        assert hc_frames({"hc_mm": 166.0, "hc_p10_mm": 165.2, "hc_p90_mm": 236.4,
                          "scale": scale})["depth_read"] is read, scale
    still = hc_frames({"hc_mm": 165.5, "hc_p10_mm": 164.1, "hc_p90_mm": 167.0})
    assert still["flag"] is False and still["spread"] < HC_FRAMES_SPREAD
    edge = 170.0 * HC_FRAMES_SPREAD
    assert hc_frames({"hc_mm": 170.0, "hc_p10_mm": 160.0, "hc_p90_mm": 160.0 + edge})[
        "flag"] is False  # at the bound: not beyond it
    for bad in ({}, {"hc_mm": 170.0}, {"hc_mm": 0.0, "hc_p10_mm": 1.0, "hc_p90_mm": 2.0},
                {"hc_mm": float("nan"), "hc_p10_mm": 1.0, "hc_p90_mm": 2.0},
                {"hc_mm": 170.0, "hc_p10_mm": None, "hc_p90_mm": 180.0},
                {"hc_mm": "170", "hc_p10_mm": 160.0, "hc_p90_mm": 180.0},
                {"hc_mm": True, "hc_p10_mm": 160.0, "hc_p90_mm": 180.0}):
        assert hc_frames(bad) is None, bad


def test_the_report_says_the_out_of_range_dates_flag_as_the_page_does():
    from edge.web.history import hc_dates_line

    text = i18n.catalog("en", load_rules(None))
    line = hc_dates_line(text, hc_against_dates(168.3, 10.0))
    assert line == ("By dates 10w 0d: outside 14–42 weeks, but the HC measured, 168 mm, is "
                    "that of 19w 4d: much larger than these dates. Check the date of the last "
                    "period; if it is sure, refer.")
    assert hc_dates_line(text, hc_against_dates(80.0, 12.0)) == (
        "By dates 12w 0d: outside 14–42 weeks, no reference.")
    assert "larger than Hadlock's formula gives at any age" in hc_dates_line(
        text, hc_against_dates(400.0, 10.0))


def test_another_language_is_one_file_and_covers_every_instruction():
    rules = load_rules(None)
    english = i18n.catalog("en", rules)
    for key, text in i18n.quality_keys(rules).items():
        assert english[key] == text  # the English instructions are the rules' own
    own = json.loads((i18n.CATALOG_DIR / "fr.json").read_text())
    base = json.loads((i18n.CATALOG_DIR / "en.json").read_text())
    assert set(base) - set(own) == set()
    assert set(i18n.quality_keys(rules)) - set(own) == set()
    assert own["_quality_rules_version"] == rules.version
    french = i18n.catalog("fr", rules)
    gain = next(r for r in rules.criteria if r.name == "gain")
    key = i18n.message_key(rules, "gain", gain.message_high)
    assert key == "quality.gain.high" and french[key] == "Trop clair\u202f: baissez le gain"
    assert i18n.languages() == {"en": "English", "fr": "Français"}
    assert i18n.catalog("xx", rules)["_lang"] == "en"


# French sets a space before : ; ? ! and inside « »: a plain one is a place to break the
# line, and on a 360 px phone a colon began the next line, alone (a walk). Before : ; ? !
# it is the narrow no-break space, inside « » the no-break space, in every French entry.
FRENCH_SPACES = (("before : ; ? !", re.compile(r"\s(?=[:;?!])"), "\u202f"),
                 ("inside « »", re.compile(r"(?<=«)\s|\s(?=»)"), "\u00a0"))


def test_no_french_sign_can_begin_a_line():
    own = json.loads((i18n.CATALOG_DIR / "fr.json").read_text(encoding="utf-8"))
    wrong = [f"{key} ({where}: {value!r})" for key, value in own.items()
             for where, space, wanted in FRENCH_SPACES
             if any(m.group() != wanted for m in space.finditer(value))]
    assert not wrong, f"{len(wrong)} French entries with a breakable space: " + \
        "; ".join(wrong[:4])
    # what the page is sent has them too (`catalog`: the file, over the English)
    french = i18n.catalog("fr", load_rules(None))
    assert french["quality.gain.high"] == "Trop clair\u202f: baissez le gain"
    assert french["exam.hint_running"].startswith("«\u00a0Commencer l'examen\u00a0»")


def test_a_slots_advice_reaches_the_page_with_its_catalog_key():
    """A slot whose best frame is not good enough: the page gets the key of its
    instruction, so it says it in the midwife's language; the exam itself is not changed."""
    rules = load_rules(None)
    zoom = next(r for r in rules.criteria if r.name == "zoom")
    best = {"plane": "Brain (Cb.)", "source": "a.png", "frame": 3, "quality": 0.4,
            "advice": {"criterion": "zoom", "message": zoom.message_low}}
    exam = {"exam_id": "e", "checklist": [{"plane": "Head (HC, BPD)", "captured": False,
                                           "best": best}, {"plane": "Femur", "captured": False}]}
    shown = i18n.exam_with_advice_keys(rules, exam)
    key = shown["checklist"][0]["best"]["advice"]["key"]
    assert key == "quality.zoom" and i18n.catalog("fr", rules)[key].startswith("Zoomez")
    assert shown["checklist"][1] == exam["checklist"][1]
    assert "key" not in exam["checklist"][0]["best"]["advice"]  # a copy
    assert i18n.exam_with_advice_keys(rules, None) is None


def test_a_stale_translation_of_changed_rules_falls_back_to_english(tmp_path):
    (tmp_path / "en.json").write_text('{"_language_name": "English", "a": "A"}')
    (tmp_path / "sw.json").write_text(json.dumps({
        "_language_name": "Kiswahili", "_quality_rules_version": "0.9", "a": "Aa",
        "quality.zoom": "Kuza"}))
    rules = load_rules(None)
    swahili = i18n.catalog("sw", rules, tmp_path)
    assert swahili["a"] == "Aa"
    assert swahili["quality.zoom"] == next(r for r in rules.criteria
                                           if r.name == "zoom").message_low


class _Tracker:
    def __init__(self):
        self.ended = []
        self.current = None

    def end(self, why):
        self.ended.append(why)


def test_stop_holds_the_next_exam_until_start_or_the_probe_is_lifted():
    view = LiveView()
    hook = LoopHook(view, end_gap_s=5.0)
    tracker = _Tracker()
    view.command("stop")
    hook.after_frame(None, {"ts": 0}, Shown(None, None, None, None), None, 0.0, tracker)
    assert tracker.ended == ["command"] and hook.holding
    assert not hook.accepts({}, 1.0, has_content=True)
    assert not hook.accepts({}, 2.0, has_content=False)
    assert not hook.accepts({}, 5.9, has_content=False)
    # the end gap since the last ultrasound (1.0), as the tracker ends an exam
    assert hook.accepts({}, 6.0, has_content=False)
    view.command("stop")
    hook.apply_commands(tracker)
    view.command("start")
    hook.apply_commands(tracker)
    assert not hook.holding and hook.accepts({}, 8.0, has_content=True)
    assert view.latest is not None and view.latest.seq == 1


def test_a_stop_counts_as_queued_until_its_exam_has_ended():
    """Ending an exam takes a moment (its heads measured again, the journal written); a
    Start tapped in that moment follows the Stop and must not be refused as a repeat
    (it was, as a 409, while the exam card still said running)."""
    from types import SimpleNamespace

    view = LiveView()
    hook = LoopHook(view, end_gap_s=5.0)
    seen = []

    class Ending(_Tracker):
        def end(self, why):  # what the server sees while the loop ends the exam
            seen.append(WebServer._stop_queued(SimpleNamespace(view=view)))
            super().end(why)

    tracker = Ending()
    view.command("stop")
    assert WebServer._stop_queued(SimpleNamespace(view=view))
    hook.apply_commands(tracker)
    assert seen == [True] and tracker.ended == ["command"]
    assert not WebServer._stop_queued(SimpleNamespace(view=view))  # and not after


def test_dates_entered_for_an_exam_are_journaled_at_once_under_its_id(tmp_path, caplog):
    """The dates for the running exam are in the journal before it ends (a run killed now
    has its exams rebuilt under the same ids, so they are not lost); its report has them
    once it is journaled; dates for an ended exam are written the same way, clearing
    them removes them, and typing them again and again never pushes a queued "stop"
    out. The summary the district gets never carries them."""
    import asyncio

    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store.journal import Journal
    from edge.web.history import ExamHistory

    caplog.set_level(logging.INFO)
    journal = Journal(tmp_path / "journal.sqlite")
    protocol = next(iter(load_protocols().values()))
    view = LiveView()
    hook = LoopHook(view, end_gap_s=5.0)
    hook.keep_dates = journal.keep_dates
    tracker = _Tracker()
    tracker.current = running = ExamSession(protocol)
    done = ExamSession(protocol)
    assert journal.add_exam(None, done.summary("gap"), {})
    dates = {"lmp": "2026-06-01", "today": "2026-12-04"}
    for _ in range(20):  # a restless finger on Set
        view.dates_to_keep.append((running.exam_id, dates))
    view.command("stop")
    view.dates_to_keep.append((done.exam_id, {"lmp": "2026-05-01", "today": "2026-12-04"}))
    hook.apply_commands(tracker)
    assert tracker.ended == ["command"]  # the stop was not pushed out

    def kept() -> dict:  # cleared dates are kept as null
        return {i: json.loads(d) for i, d in journal.db.execute(
            "SELECT exam_id, dates FROM exam_dates").fetchall() if d != "null"}

    assert kept() == {running.exam_id: dates,
                      done.exam_id: {"lmp": "2026-05-01", "today": "2026-12-04"}}
    summary = running.summary("command")
    assert "2026-06-01" not in json.dumps(summary)
    assert journal.add_exam(None, summary, {})  # the exam ends (or is rebuilt by replay)
    history = ExamHistory(tmp_path)
    listed = {e["exam_id"]: e for e in asyncio.run(history.recent(5, None))[0]}
    assert listed[running.exam_id]["dates"]["lmp"] == "2026-06-01"
    assert listed[running.exam_id]["dates"]["ga_dates_weeks"] == 26.57  # 186 days
    view.dates_to_keep.append((done.exam_id, None))
    hook.apply_commands(tracker)
    assert kept() == {running.exam_id: dates}
    listed = {e["exam_id"]: e for e in asyncio.run(history.recent(5, None))[0]}
    assert listed[done.exam_id]["dates"] is None
    history.close()


def test_the_earlier_exams_of_a_journal_the_loop_has_not_yet_upgraded(tmp_path, caplog):
    """The page is up while the models load, before the loop opens (and upgrades) the
    journal: a journal of the schema before the kept dates lists nothing and says so
    once, without a warning; once the loop has upgraded it, its exams are listed."""
    import asyncio
    import sqlite3

    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store import journal as journal_module
    from edge.web.history import ExamHistory

    caplog.set_level(logging.INFO)
    path = tmp_path / journal_module.JOURNAL_FILE
    db = sqlite3.connect(path)
    for step in range(1, 5):  # schema 4, as the release before wrote it
        db.executescript(f"BEGIN; {journal_module._MIGRATIONS[step]} "
                         f"PRAGMA user_version={step}; COMMIT;")
    db.close()
    history = ExamHistory(tmp_path)
    for _ in range(3):
        assert asyncio.run(history.recent(5, None)) == ([], True)
    said = [r for r in caplog.records if "earlier exams" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert "older sonoedge" in said[0].getMessage()
    journal = journal_module.Journal(path)  # the loop opens it
    exam = ExamSession(next(iter(load_protocols().values())))
    assert journal.add_exam(None, exam.summary("gap"), {})
    listed, readable = asyncio.run(history.recent(5, None))
    assert readable and [e["exam_id"] for e in listed] == [exam.exam_id]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    history.close()


# -- hostile requests, against a running server (the page's server alone, no models) -------
@pytest.fixture
def page_server(tmp_path, monkeypatch):
    """`WebServer` listening on a free loopback port, with short client timeouts, in plain
    HTTP (raw requests; the page over TLS is tests/test_web_tls.py)."""
    monkeypatch.setattr(web_server, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(web_server, "BODY_TIMEOUT_S", 1.0)
    write_pin(tmp_path, PIN)
    started = []

    def start(brake: Brake | None = None) -> WebServer:
        srv = WebServer(WebSettings(listen=f"127.0.0.1:{free_port()}", tls="off"), LiveView(),
                        tmp_path, read_pin(tmp_path))
        srv.brake = brake or srv.brake
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def _raw(srv, data: bytes, source: str = "127.0.0.1", head_only: bool = False) -> bytes:
    return raw_http(srv.port, data, source, head_only=head_only)


def _login(srv, pin: str, source: str = "127.0.0.1", cookies: str = "") -> bytes:
    body = json.dumps({"pin": pin}).encode()
    return _raw(srv, b"POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + (f"Cookie: {cookies}\r\n".encode() if cookies else b"")
                + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body, source)


def test_a_json_body_is_read_as_utf8_and_a_bad_one_is_400_never_500(page_server):
    srv = page_server()
    for content_type, body, status in (
            ("application/json", b"[" * 2000 + b"]" * 2000, b"400"),  # nested too deep
            ("application/json", b'{"pin": "\xff\xfe\xfd\xfc"}', b"400"),  # not UTF-8
            ("application/json; charset=no-such", b'{"pin": "4827"}', b"200")):  # ignored
        out = _raw(srv, b"POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                   .encode() + body)
        assert out.startswith(b"HTTP/1.1 " + status), (content_type, out[:200])
        assert status == b"200" or out.endswith(b"the body is not JSON")


def test_a_client_that_never_finishes_its_request_is_cut_off(page_server):
    srv = page_server()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=4) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Never: ends")  # headers never finish
        # meanwhile another client is served at once
        assert _raw(srv, b"GET /i18n/en.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    ).startswith(b"HTTP/1.1 200 ")
        assert slow.recv(100) == b""  # closed by the server, not left open for an hour
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    out = _raw(srv, b"POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pin\"",
               head_only=True)
    assert out.startswith(b"HTTP/1.1 408 "), out[:200]  # a body announced, never sent
    assert time.monotonic() - t0 < 3


def test_wrong_pins_from_many_addresses_do_not_keep_out_a_browser_that_knew_the_pin(
        page_server):
    srv = page_server(Brake(global_max=4))
    out = _login(srv, PIN)
    assert out.startswith(b"HTTP/1.1 200 ")
    known = re.search(rb"sonoedge_known=([0-9a-f]+);", out).group(1).decode()
    for i in range(2, 6):  # four addresses, one wrong PIN each: the device-wide brake
        assert _login(srv, "0000", f"127.0.0.{i}").startswith(b"HTTP/1.1 401 ")
    assert _login(srv, PIN, "127.0.0.9").startswith(b"HTTP/1.1 429 ")  # a stranger waits
    assert _login(srv, PIN).startswith(b"HTTP/1.1 429 ")  # the address alone is not enough
    assert _login(srv, PIN, cookies=f"sonoedge_known={known}").startswith(b"HTTP/1.1 200 ")
    assert _login(srv, PIN, cookies="sonoedge_known=" + "0" * 64).startswith(b"HTTP/1.1 429 ")
    srv.stop()
    again = page_server(Brake(global_max=1))  # restarted, and braked again at once
    assert _login(again, "0000", "127.0.0.2").startswith(b"HTTP/1.1 401 ")
    assert _login(again, PIN, cookies=f"sonoedge_known={known}").startswith(b"HTTP/1.1 200 ")


def test_a_malformed_request_is_one_line_in_the_log_not_a_traceback(page_server, caplog):
    assert_malformed_requests_are_one_log_line_each(page_server().port, "/api/login", caplog)


@pytest.mark.parametrize("listen", ["h" * 3000 + ":8080", "a\nb:8080", "[zz]:8080",
                                    "x:" + "9" * 30])
def test_a_listen_address_that_cannot_be_is_one_short_line(listen):
    """A 3,000-character host was quoted whole, a newline passed, a bad IPv6 address in
    brackets raised ipaddress's own error naming nothing, a 30-digit port was parsed."""
    with pytest.raises(ValueError) as caught:
        parse_listen(listen)
    message = str(caught.value)
    assert message.startswith("listen ") and len(message) < 200 and "\n" not in message


def test_a_websocket_message_nested_too_deep_closes_the_socket_without_a_traceback(
        page_server, caplog):
    """A thousand brackets fit in the 1 kB message limit and made json.loads recurse past
    Python's limit: a RecursionError traceback in the log for every such message."""
    import asyncio

    import aiohttp

    srv = page_server()
    out = _login(srv, PIN)
    session = re.search(rb"sonoedge_session=([^;]+);", out).group(1).decode()
    caplog.set_level(logging.INFO)

    async def send_deep() -> aiohttp.WSMsgType:
        origin = f"http://127.0.0.1:{srv.port}"
        async with aiohttp.ClientSession() as client, client.ws_connect(
                f"{origin}/api/ws", headers={"Origin": origin,
                                             "Cookie": f"sonoedge_session={session}"}) as ws:
            await ws.send_str("[" * 1000)
            while (msg := await ws.receive(timeout=5)).type not in (
                    aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
            return msg.type

    assert asyncio.run(send_deep()) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]


def test_dates_entered_before_an_exam_go_to_the_next_exam_and_never_to_another(page_server):
    """Entered with no exam on the page ("For the next exam"), the dates wait for the next
    exam and are kept with it once it begins; once it has, a page that still showed no
    exam, or another exam, is refused and nothing moves."""
    srv = page_server()
    out = _login(srv, PIN)
    session = re.search(rb"sonoedge_session=([^;]+);", out).group(1).decode()

    def call(method: str, path: str, body: dict | None = None) -> tuple[bytes, dict | str]:
        data = b"" if body is None else json.dumps(body).encode()
        reply = _raw(srv, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Cookie: sonoedge_session={session}\r\n".encode()
                     + (b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                        % len(data) if body is not None else b"") + b"\r\n" + data)
        head, _, text = reply.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        return status, json.loads(text) if status == b"200" else text.decode()

    dates = {"lmp": "2026-06-10", "today": "2026-12-04"}
    assert call("POST", "/api/lmp", {**dates, "exam_id": None})[0] == b"200"
    assert not srv.view.dates_to_keep  # no exam yet to keep them with
    # the exam begins: the loop attaches the waiting dates (LoopHook), then shows it
    srv.view.attach_waiting_dates("e-next")
    srv.view.exam = {"exam_id": "e-next", "running": True, "biometry": None}
    status, state = call("GET", "/api/state")
    assert status == b"200" and state["screening"]["lmp"] == "2026-06-10"
    assert list(srv.view.dates_to_keep) == [("e-next", dates)]  # kept with the exam begun
    for shown in (None, "e-before"):  # a page that had not seen it begin
        status, text = call("POST", "/api/lmp", {"lmp": "2026-01-01", "today": "2026-12-04",
                                                 "exam_id": shown})
        assert status == b"409" and "not kept" in text and "\n" not in text.strip()
    assert list(srv.view.dates_to_keep) == [("e-next", dates)]
    assert srv.view.ga_dates["lmp"] == "2026-06-10"
    # a report's dates for the exam still running are refused: the live page takes them
    status, text = call("POST", "/api/exams/e-next/lmp", dates)
    assert status == b"409" and "still running" in text and "\n" not in text.strip()
    assert list(srv.view.dates_to_keep) == [("e-next", dates)]


def test_a_reports_dates_are_answered_kept_only_once_the_journal_has_them(page_server,
                                                                           tmp_path,
                                                                           monkeypatch):
    """POST /api/exams/<id>/lmp waits for the loop to journal the dates: a loop that does
    not in time (busy, stopping) is answered "kept": false, never a yes the report would
    believe; the dates wait in the loop's queue. Entered three days after the exam, they
    are kept with the exam's day, so the age by dates is the baby's at the scan."""
    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store.journal import Journal

    monkeypatch.setattr(web_server, "DATES_KEPT_WAIT_S", 0.5)
    journal = Journal(tmp_path / "journal.sqlite")
    done = ExamSession(next(iter(load_protocols().values())))
    summary = {**done.summary("gap"), "ended_ts": time.time() - 3 * 86400 - 60}
    assert journal.add_exam(None, summary, {})
    srv = page_server()
    session = re.search(rb"sonoedge_session=([^;]+);", _login(srv, PIN)).group(1).decode()

    def post(dates: dict) -> tuple[bytes, dict | str]:
        data = json.dumps(dates).encode()
        reply = _raw(srv, f"POST /api/exams/{done.exam_id}/lmp HTTP/1.1\r\nHost: x\r\n"
                     f"Connection: close\r\nCookie: sonoedge_session={session}\r\n"
                     "Content-Type: application/json\r\n".encode()
                     + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        head, _, text = reply.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        return status, json.loads(text) if status == b"200" else text.decode()

    started = time.monotonic()
    status, body = post({"lmp": "2026-06-10", "today": "2026-12-07"})  # the tablet's date
    assert status == b"200" and body["kept"] is False and body["ga_dates_weeks"] == 25.29
    assert time.monotonic() - started < 5
    kept_at_exam = {"lmp": "2026-06-10", "today": "2026-12-04"}  # three days back
    assert list(srv.view.dates_to_keep) == [(done.exam_id, kept_at_exam)]
    # the loop keeps them (here by hand): the same entry is then answered kept at once
    assert journal.keep_dates(done.exam_id, kept_at_exam)
    status, body = post({"lmp": "2026-06-10", "today": "2026-12-07"})
    assert status == b"200" and body["kept"] is True
    journal.close()


def test_a_dates_body_with_a_field_the_route_does_not_read_is_refused_naming_it(
        page_server, tmp_path, monkeypatch):
    """POST /api/exams/<id>/lmp took any other field without a word (the woman's name sent
    with her dates was answered "kept"), where the withdrawal refuses one: refused the same
    way, 400 naming the field, and nothing queued; so is the live page's POST /api/lmp.
    The pages' own bodies (report.js: lmp, today; app.js: and exam_id) are still taken."""
    from edge.exam.protocol import load_protocols
    from edge.exam.session import ExamSession
    from edge.store.journal import Journal

    monkeypatch.setattr(web_server, "DATES_KEPT_WAIT_S", 0.2)
    journal = Journal(tmp_path / "journal.sqlite")
    done = ExamSession(next(iter(load_protocols().values())))
    assert journal.add_exam(None, {**done.summary("gap"), "ended_ts": time.time() - 60}, {})
    journal.close()
    srv = page_server()
    session = re.search(rb"sonoedge_session=([^;]+);", _login(srv, PIN)).group(1).decode()

    def post(path: str, body: dict) -> tuple[bytes, str]:
        data = json.dumps(body).encode()
        reply = _raw(srv, f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Cookie: sonoedge_session={session}\r\n"
                     "Content-Type: application/json\r\n".encode()
                     + b"Content-Length: %d\r\n\r\n" % len(data) + data)
        head, _, text = reply.partition(b"\r\n\r\n")
        return head.split(b" ", 2)[1], text.decode()

    dates = {"lmp": "2026-06-10", "today": "2026-12-04"}
    report, live = f"/api/exams/{done.exam_id}/lmp", "/api/lmp"
    for path, body, said in (
            (report, {**dates, "name": "Amina"}, "unexpected field 'name': send lmp and "
                                                 "today only"),
            (report, {**dates, "exam_id": done.exam_id}, "unexpected field 'exam_id'"),
            (report, {"lmp": None, "LMP": "2026-06-10"}, "unexpected field 'LMP'"),
            (report, {**dates, "a\nb\x1b[2J": 1}, "unexpected field 'a\\nb\\x1b[2J'"),
            (report, {**dates, "\ud800" + "x" * 3000: 1}, "unexpected field '\\ud800xxx"),
            ("/api/exams/nosuch/lmp", {**dates, "name": "Amina"}, "unexpected field 'name'"),
            (live, {**dates, "exam_id": None, "name": "Amina"},
             "unexpected field 'name': send lmp, today and exam_id only")):
        status, text = post(path, body)
        assert status == b"400" and said in text and "\n" not in text.strip(), \
            (path, body.keys(), status, text[:200])
        assert len(text) < 200, text
    assert not srv.view.dates_to_keep and srv.view.ga_dates is None  # nothing kept
    status, text = post(report, dates)  # the report's own body
    assert status == b"200" and json.loads(text)["ok"], text
    status, text = post(live, {**dates, "exam_id": None})  # the live page's own body
    assert status == b"200" and json.loads(text)["ok"], text


def test_the_report_gives_no_ga_range_whose_bounds_fall_on_one_day():
    """As the page: bounds under a day apart printed "19w 1d – 19w 1d" on the report."""
    from edge.web.history import ga_range
    text = i18n.catalog("en", None)
    assert ga_range(text, {"ga_low_weeks": 19.14, "ga_high_weeks": 19.16}) == ""
    assert ga_range(text, {"ga_low_weeks": 19.14, "ga_high_weeks": 19.29}) == \
        "19w 1d – 19w 2d"
    assert ga_range(text, {"ga_low_weeks": None, "ga_high_weeks": 14.1}) == \
        "< 14w 0d – 14w 1d"


def test_the_report_rounds_whole_millimetres_as_the_page_does():
    """The page writes toFixed(0), half up; the report wrote Python's half to even, so one
    exam's HC of 200.5 mm read 201 on the screen and 200 in its report."""
    from edge.web.history import hc_dates_line
    text = i18n.catalog("en", None)
    line = hc_dates_line(text, {"ga_dates_weeks": 22.0, "hc_expected_mm": 196.5,
                                "hc_mm": 200.5, "flag": None, "difference_days": 2,
                                "tolerance_days": 14, "status": "ok"})
    assert "expected HC about 197 mm, measured 201 mm" in line, line
