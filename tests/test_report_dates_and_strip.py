"""Two defects a midwife's walk found on the midwife's page and the exam report, driven on
the real page in headless Chromium against the real server (the fixtures of
tests/test_page_review_s32.py: its server, its view set by hand, its journaled exam).

1. The report mixed forms of a date: the last period and the day of the exam as
   2026-07-05, the exam's date as the browser's locale writes it ("Sunday, July 5, 2026",
   month first; 2026-07-05 until the script ran), and the tablet's unset date as
   1970-01-02, beside a date field in the tablet's own order (07/05/2026, which one
   midwife reads 5 July and another 7 May). Every date the report shows, printed or on
   screen, is now said as the page says the last period kept: "5 July 2026", and in French
   "5 juillet 2026" (the tablet's unset date: test_page_review_s32's seventh test). Times
   of day stay as they were.
2. On a phone the status strip (sticky at the top) covered the date field's label once the
   field had focus: the on-screen keyboard shrinks the screen, and the field is brought
   into view under the strip. The field and its label now stay between the strip and the
   keyboard, on the midwife's page and on the report; a desktop is laid out as before.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.test_page_review_s32 import (  # noqa: F401 (box, view: fixtures)
    BIO_20W,
    WAIT,
    box,
    day,
    exam,
    open_page,
    shows_exam,
    view,
)

pytest.importorskip("playwright.sync_api")

MONTHS = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
           "septembre", "octobre", "novembre", "décembre"),
}
# a date written with figures only, in any order: 2026-07-05, 07/05/2026, 5.7.26
NUMERIC_DATE = re.compile(r"\b\d{1,4}[-/.]\d{1,2}[-/.]\d{2,4}\b")
PHONE = {"width": 390, "height": 844}
KEYBOARD_UP = {"width": 390, "height": 430}  # the same phone with its keyboard open
DESKTOP = {"width": 1280, "height": 800}


def in_words(day_: dt.date | str, lang: str) -> str:
    """"5 July 2026", "5 juillet 2026": the form the page gives the last period kept."""
    d = dt.date.fromisoformat(day_) if isinstance(day_, str) else day_
    return f"{d.day} {MONTHS[lang][d.month - 1]} {d.year}"


def facts(page) -> dict[str, str]:
    """The report's facts, each name with what it says."""
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
        'section.facts dt')].map(dt => [dt.textContent, dt.nextElementSibling.textContent]))""")


# -- 1: one form of a date on the report -------------------------------------------------------
@pytest.mark.parametrize("lang", ["en", "fr"])
def test_every_date_on_the_report_is_said_with_its_months_name(box, view, lang):  # noqa: F811
    """The journaled exam's report (its last period 140 days before today, entered today):
    the exam's date, the last period and the day its age by dates is for are each said as
    "5 July 2026" ("5 juillet 2026" in French), and no date on it, printed or on screen, is
    written with figures only."""
    page, errors = open_page(box)
    url = f"{box['base']}/report/{box['journaled']}?lang={lang}"
    # as the box sends it, before the report's script has run (and if it never does)
    served = page.request.get(url).text()
    words = re.sub(r"<[^>]+>", " ", served.split("<main>", 1)[1])
    assert not NUMERIC_DATE.findall(words), NUMERIC_DATE.findall(words)
    when, shown = re.search(r'<time datetime="([^"]+)" data-part="date">([^<]*)</time>',
                            served).groups()
    assert shown == in_words(dt.datetime.fromisoformat(when).date(), lang)  # the box's UTC
    page.goto(url)
    page.wait_for_selector("section.facts")
    said = facts(page)
    date, period = said["Date"], said["Last period" if lang == "en" else "Dernières règles"]
    # the exam's date, in the tablet's own time zone as before
    started = page.get_attribute("section.facts time[data-part=date]", "datetime")
    assert date == in_words(dt.datetime.fromisoformat(started).astimezone().date(), lang), date
    lmp, today = in_words(day(-140), lang), in_words(day(), lang)
    assert period.startswith(lmp + " ("), period
    assert (f"on {today}, the day of the exam" if lang == "en"
            else f"le {today}, jour de l'examen") in period, period
    main = page.text_content("main")
    assert not NUMERIC_DATE.findall(main), NUMERIC_DATE.findall(main)
    # printed, the same words
    page.emulate_media(media="print")
    assert facts(page)["Date"] == date
    page.emulate_media(media="screen")
    assert not errors


# -- 2: the focused field and its label clear of the status strip on a phone -----------------------
def clear_of_the_strip(page, field: str, strip: str) -> str:
    """A JavaScript condition: the field's label and the field lie between the bottom of the
    strip and the bottom of the screen the keyboard leaves."""
    return f"""(() => {{
        const field = document.querySelector({field!r});
        const label = field.labels[0];
        const strip = document.querySelector({strip!r}).getBoundingClientRect();
        const vv = window.visualViewport;
        const bottom = vv ? vv.offsetTop + vv.height : innerHeight;
        return document.activeElement === field
            && label.getBoundingClientRect().top >= strip.bottom
            && field.getBoundingClientRect().top >= strip.bottom
            && field.getBoundingClientRect().bottom <= bottom;
    }})()"""


def where(page, field: str, strip: str) -> dict:
    return page.evaluate(f"""(() => {{
        const field = document.querySelector({field!r});
        return {{label: field.labels[0].getBoundingClientRect().top,
                 field: [field.getBoundingClientRect().top, field.getBoundingClientRect().bottom],
                 strip: document.querySelector({strip!r}).getBoundingClientRect().bottom,
                 screen: innerHeight, scrolled: scrollY}};
    }})()""")


def stays_clear(page, field: str, strip: str) -> None:
    """The field and its label come clear of the strip within a moment (a frame or two)."""
    try:
        page.wait_for_function(clear_of_the_strip(page, field, strip),
                               timeout=3000, polling=50)
    except Exception:  # noqa: BLE001 (said with where they are)
        raise AssertionError(
            f"under the strip or the keyboard: {where(page, field, strip)}") from None


def label_under_the_strip(page, field: str, strip: str) -> None:
    """The page scrolled (by her finger, or by the browser bringing the field into view)
    so the field's label lies under the strip, the field just below it."""
    page.evaluate(f"""(() => {{
        const label = document.querySelector({field!r}).labels[0];
        const strip = document.querySelector({strip!r}).getBoundingClientRect();
        window.scrollBy(0, label.getBoundingClientRect().top - strip.top - 2);
    }})()""")
    spot = where(page, field, strip)
    assert spot["label"] < spot["strip"], spot  # the case to put right


def test_the_date_field_and_its_label_stay_clear_of_the_strip_on_a_phone(box, view):  # noqa: F811
    """On a phone she taps the date field low on the screen and the keyboard rises: the
    field and its label stay in sight, below the status strip. With the keyboard up and the
    label under the strip, a tap on the field brings the label out from under it."""
    view.exam = exam("exam-strip", bio=BIO_20W)
    page, errors = open_page(box)
    page.set_viewport_size(PHONE)
    shows_exam(page, "exam-strip")
    page.wait_for_function("document.querySelector('#models').textContent !== ''", **WAIT)
    # the field near the bottom of the screen, then the keyboard takes the lower half
    page.evaluate("""(() => {
        const field = document.querySelector('#lmp');
        window.scrollBy(0, field.getBoundingClientRect().bottom - innerHeight + 20);
    })()""")
    page.focus("#lmp")
    page.set_viewport_size(KEYBOARD_UP)
    stays_clear(page, "#lmp", "#status")
    # the keyboard up, the label under the strip: she taps the field
    page.evaluate("document.activeElement.blur()")
    label_under_the_strip(page, "#lmp", "#status")
    page.focus("#lmp")
    stays_clear(page, "#lmp", "#status")
    assert not errors


def test_the_reports_date_field_and_its_label_stay_clear_of_its_bar_on_a_phone(
        box, view):  # noqa: F811
    """The report's bar (Back, Print) is sticky too: its date field, tapped with the
    keyboard up and its label under the bar, comes into view with its label."""
    page, errors = open_page(box)
    page.goto(f"{box['base']}/report/{box['journaled']}?lang=en")
    page.wait_for_selector("#report-lmp-date")
    page.set_viewport_size(KEYBOARD_UP)
    label_under_the_strip(page, "#report-lmp-date", "nav.bar")
    page.focus("#report-lmp-date")
    stays_clear(page, "#report-lmp-date", "nav.bar")
    assert not errors


def test_on_a_desktop_the_strip_and_the_layout_are_as_before(box, view):  # noqa: F811
    """A wide landscape screen: the strip still sits at the top as the page scrolls, the
    image beside the exam, and a field in plain sight does not move the page when it has
    focus."""
    view.exam = exam("exam-desk", bio=BIO_20W)
    page, errors = open_page(box)
    page.set_viewport_size(DESKTOP)
    shows_exam(page, "exam-desk")
    assert page.evaluate("getComputedStyle(document.querySelector('#status')).position") \
        == "sticky"
    assert page.evaluate("getComputedStyle(document.querySelector('main')).flexDirection") \
        == "row"
    page.evaluate("""(() => {  // the field in the middle of the screen
        const field = document.querySelector('#lmp');
        window.scrollBy(0, field.getBoundingClientRect().top - innerHeight / 2);
    })()""")
    spot = where(page, "#lmp", "#status")
    assert spot["label"] >= spot["strip"] and spot["field"][1] <= spot["screen"], spot
    page.focus("#lmp")
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert where(page, "#lmp", "#status")["scrolled"] == spot["scrolled"]
    assert not errors
