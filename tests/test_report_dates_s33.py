"""The report's date form says each refusal in the report's language (found left by the
sixth session's review of 5 December): a 409 for an exam still running, or a session that
had ended, showed the device's English words on a French report; and the pages told a
tablet whose clock is not set by matching the device's English text, not a named refusal.
Driven on the real page in headless Chromium against the real server."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge.web.server import REFUSED
from tests.test_page_review_s32 import WAIT, box, exam, open_page, view  # noqa: F401

pytest.importorskip("playwright.sync_api")
FRENCH = json.loads((Path(__file__).resolve().parents[1] / "edge" / "web" / "i18n"
                     / "fr.json").read_text(encoding="utf-8"))


def _report(rig, lang: str):
    page, _ = open_page(rig)  # logged in with the PIN
    page.goto(f"{rig['base']}/report/{rig['journaled']}?lang={lang}")
    page.wait_for_selector("#report-lmp-date")
    return page


def _refused(page, date: str) -> str:
    page.fill("#report-lmp-date", date)
    page.click("#lmp-keep")
    page.wait_for_function("document.querySelector('#report-lmp-error').textContent !== ''",
                           **WAIT)
    return page.text_content("#report-lmp-error")


def test_a_french_report_says_in_french_that_its_exam_is_still_running(box, view):  # noqa: F811
    view.exam = exam(box["journaled"], running=True)  # the same exam, still running: 409
    page = _report(box, "fr")
    said = _refused(page, page.evaluate("document.querySelector('#report-lmp-date').max"))
    assert said == FRENCH["report.lmp_running"], said


def test_a_french_report_whose_session_ended_says_so_in_french(box, view):  # noqa: F811
    page = _report(box, "fr")
    page.context.clear_cookies()  # the session ends while the report is open
    said = _refused(page, page.evaluate("document.querySelector('#report-lmp-date').max"))
    assert said == FRENCH["report.lmp_session"], said


def test_a_tablets_unset_clock_is_a_named_refusal_not_english_words(box):  # noqa: F811
    """The device names it in a header; the body stays its words for anything else."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    page = _report(box, "en")
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    request = urllib.request.Request(
        f"{box['base']}/api/exams/{box['journaled']}/lmp", method="POST",
        data=json.dumps({"lmp": "1969-10-01", "today": "1970-01-02"}).encode(),
        headers={"Content-Type": "application/json", "Cookie": cookie,
                 "Origin": box["base"]})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=10)
    assert refused.value.code == 400 and refused.value.headers[REFUSED] == "phone-date"


def test_the_report_refusals_are_in_every_catalog():
    catalogs = Path(__file__).resolve().parents[1] / "edge" / "web" / "i18n"
    for path in sorted(catalogs.glob("*.json")):
        text = json.loads(path.read_text(encoding="utf-8"))
        for key in ("report.lmp_running", "report.lmp_gone", "report.lmp_session"):
            assert text.get(key, "").strip(), (path.name, key)
