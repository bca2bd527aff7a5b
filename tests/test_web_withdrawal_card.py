"""Withdrawing the exam that just ended from its own card on the midwife's page, and the
withdraw control's size on a phone, against `sonoedge run --web` over TLS on a clip of two
real exams (HC18 heads, a gap, other heads), in Chromium.

A midwife who realises at the end of an exam that it was a test scan, or the wrong woman,
looks at the card that shows it first, not at the list below. The card offers what the
list and the report offer (withdraw.js): a reason from the fixed list, a second tap to
confirm, "Withdrawn: <reason>" on the card, and Undo; the card, the list and the report
say the same thing. On a phone the control is quiet text at the card's foot (as a full
button it was as large as the exam's row above it), its target still a thumb's: 48 px each
way at least, as every control on the page.
"""

from __future__ import annotations

import time

import pytest

from tests.test_web_withdrawal import (  # noqa: F401  (box: a device of this module's own)
    POLL,
    TABLET,
    box,
    journaled,
    queued,
    row_of,
)
from tests.web_harness import unlock_if_asked

pytest.importorskip("playwright")
PHONE = {"width": 390, "height": 844}
TOUCH_PX = 48  # a thumb's target, as every control on the page (base.css --touch)
CARD = "#exam-withdraw"  # the just-ended exam's withdraw controls, at its card's foot
MARK = "#exam-withdrawn"  # "Withdrawn: <reason>" under the card's state


def open_page(box, size: dict, lang: str = "en"):  # noqa: F811
    """The midwife's page at `size` in `lang`, once the card offers its exam's withdrawal."""
    page = box["browser"].new_page()
    page.set_viewport_size(size)
    page.goto(box["base"] + "/")
    unlock_if_asked(page)
    page.wait_for_selector("#app:not([hidden])")
    page.select_option("#controls select.lang", lang)
    page.wait_for_function(
        f"document.documentElement.lang === '{lang}' && "
        "document.querySelectorAll('#earlier-list a').length === 2 && "
        f"!!document.querySelector('{CARD} button.open, {CARD} button.undo')", **POLL)
    return page


def report_says(box, exam_id: str) -> str | None:  # noqa: F811
    """The withdrawn line at the top of the exam's report, or None where it has none."""
    report = box["browser"].new_page()
    try:
        report.set_viewport_size(TABLET)
        report.goto(f"{box['base']}/report/{exam_id}?lang=en")
        report.wait_for_selector("#report-withdraw button")
        return report.text_content("#withdrawn") if report.query_selector("#withdrawn") else None
    finally:
        report.close()


def list_mark(page, exam_id: str) -> str | None:
    mark = page.query_selector(f"{row_of(page, exam_id)} .withdrawn-mark")
    return None if mark is None else mark.text_content()


def test_the_midwife_withdraws_the_exam_she_just_ended_from_its_card_then_undoes_it(box):  # noqa: F811
    state = box["state"]
    first_id, last_id = box["exams"]
    page = open_page(box, TABLET)
    assert page.evaluate("window.sonoedge.lastState.exam.exam_id") == last_id  # on the card
    assert page.is_hidden(MARK)
    # one tap opens the reasons; Withdraw waits for one; Keep closes them unchanged
    page.click(f"{CARD} button.open")
    assert page.is_visible(f"{CARD} fieldset.confirm")
    assert [t.strip() for t in page.locator(f"{CARD} fieldset.confirm label").all_text_contents()
            ] == ["Started by mistake", "Test scan", "Wrong woman", "Two women in one exam"]
    assert page.is_disabled(f"{CARD} button.confirm")
    # the same exam's row below has reasons of its own: a choice on one is not the other's
    row = row_of(page, last_id)
    page.click(f"{row} button.open")
    page.check(f"{row} input[value='two_women']")
    page.check(f"{CARD} input[value='test_scan']")
    assert page.is_checked(f"{row} input[value='two_women']")
    # the state comes every second: two more drawn, the card's reasons stay open, her
    # choice with them
    states = page.evaluate("window.sonoedge.states")
    page.wait_for_function(f"window.sonoedge.states >= {states + 2}", **POLL)
    assert page.is_visible(f"{CARD} fieldset.confirm")
    assert page.is_checked(f"{CARD} input[value='test_scan']")
    page.click(f"{row} button.cancel")
    page.click(f"{CARD} button.cancel")
    assert not page.is_visible(f"{CARD} fieldset.confirm")
    time.sleep(0.5)
    assert journaled(state, last_id) is None  # a slip withdrew nothing
    # a reason, then Withdraw: the card says so, and the list and the report agree
    page.click(f"{CARD} button.open")
    page.check(f"{CARD} input[value='wrong_woman']")
    page.click(f"{CARD} button.confirm")
    page.wait_for_function(f"document.querySelector('{MARK}').textContent === "
                           "'Withdrawn: Wrong woman'", **POLL)
    assert page.is_visible(MARK) and page.is_visible(f"{CARD} button.undo")
    assert list_mark(page, last_id) == "Withdrawn: Wrong woman"
    assert list_mark(page, first_id) is None
    assert journaled(state, last_id) == (1, "wrong_woman", 1)
    [sent] = queued(state, last_id, 1)
    assert (sent["withdrawn"], sent["reason"]) == (True, "wrong_woman")
    assert report_says(box, last_id).startswith(
        "Withdrawn: Wrong woman. This exam is not counted by the district.")
    # Undo on the card: restored on the card, in the list and on the report
    page.click(f"{CARD} button.undo")
    page.wait_for_selector(f"{CARD} button.open", timeout=POLL["timeout"])
    assert page.is_hidden(MARK) and list_mark(page, last_id) is None
    assert journaled(state, last_id) == (0, "wrong_woman", 2)
    _, restored = queued(state, last_id, 2)
    assert restored["withdrawn"] is False
    assert report_says(box, last_id) is None
    # withdrawn from its row in the list, the card says so too; and Undo there restores it
    page.click(f"{row} button.open")
    page.check(f"{row} input[value='mistake']")
    page.click(f"{row} button.confirm")
    page.wait_for_function(f"document.querySelector('{MARK}').textContent === "
                           "'Withdrawn: Started by mistake'", **POLL)
    page.click(f"{CARD} button.undo")
    page.wait_for_selector(f"{CARD} button.open", timeout=POLL["timeout"])
    assert page.is_hidden(MARK) and list_mark(page, last_id) is None
    assert journaled(state, last_id) == (0, "mistake", 4)
    page.close()


# What a control is on the screen (the box of its border or fill, else its words': a
# borderless transparent button shows them and no more), its whole box (where a thumb
# counts), and the box of the exam it belongs to (the card, or the list's row).
MEASURE = """([sel, owner]) => {
  const b = document.querySelector(sel), o = document.querySelector(owner);
  const hit = b.getBoundingClientRect(), of = o.getBoundingClientRect();
  const s = getComputedStyle(b);
  const filled = parseFloat(s.borderTopWidth) > 0 || s.backgroundColor !== "rgba(0, 0, 0, 0)";
  const words = document.createRange();
  words.selectNodeContents(b);
  const ink = filled ? hit : words.getBoundingClientRect();
  const lines = new Set([...words.getClientRects()].map((r) => Math.round(r.top))).size;
  return { hit: [hit.width, hit.height], ink: [ink.width, ink.height], owner: [of.width, of.height],
           within: hit.left >= of.left - 1 && hit.right <= of.right + 1,
           whole: b.scrollWidth <= b.clientWidth && lines === 1 };
}"""


def assert_quiet(page, button: str, owner: str) -> None:
    """A quiet control, small against its exam's box, its target a thumb's."""
    m = page.evaluate(MEASURE, [button, owner])
    (hit_w, hit_h), (ink_w, ink_h), (own_w, own_h) = m["hit"], m["ink"], m["owner"]
    assert hit_h >= TOUCH_PX and hit_w >= TOUCH_PX, (button, m)  # a thumb's target
    assert ink_h <= own_h / 3 and ink_w * ink_h <= 0.12 * own_w * own_h, (button, owner, m)
    assert m["within"] and m["whole"], (button, m)  # its words on one line, across its exam


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_on_a_phone_withdraw_is_quiet_text_at_the_exams_foot_with_a_thumb_sized_target(
        box, lang):  # noqa: F811
    state = box["state"]
    first_id, last_id = box["exams"]
    page = open_page(box, PHONE, lang)
    words = page.evaluate("[window.sonoedge.t('withdraw.action'), window.sonoedge.t("
                          "'withdraw.undo'), window.sonoedge.t('withdraw.reason_mistake')]")
    assert page.text_content(f"{CARD} button.open") == words[0]
    # on the list, beside each exam's row; on the card, at its foot, below the planes
    for exam_id in (first_id, last_id):
        row = row_of(page, exam_id)
        assert_quiet(page, f"{row} button.open", f"{row} a.earlier-row")
    assert_quiet(page, f"{CARD} button.open", "#exam")
    assert page.evaluate(f"document.querySelector('{CARD}').getBoundingClientRect().top >= "
                         "document.querySelector('#checklist').getBoundingClientRect().bottom")
    # still a confirm step away: a tap opens the reasons, within the card and the screen
    page.click(f"{CARD} button.open")
    assert page.is_visible(f"{CARD} fieldset.confirm")
    assert page.is_disabled(f"{CARD} button.confirm")
    assert page.evaluate(f"""(() => {{
      const f = document.querySelector('{CARD} fieldset').getBoundingClientRect();
      const c = document.querySelector('#exam').getBoundingClientRect();
      return f.left >= c.left && f.right <= c.right &&
        document.documentElement.scrollWidth <= {PHONE['width']}; }})()""")
    page.click(f"{CARD} button.cancel")
    time.sleep(0.5)
    assert journaled(state, last_id)[0] == 0  # nothing withdrawn by opening it
    # withdrawn: the card says so within its width, and Undo is as quiet and as easy to hit
    page.click(f"{CARD} button.open")
    page.check(f"{CARD} input[value='mistake']")
    page.click(f"{CARD} button.confirm")
    page.wait_for_function(f"document.querySelector('{MARK}').textContent.endsWith("
                           f"{words[2]!r})", **POLL)
    assert page.evaluate(f"document.querySelector('{MARK}').scrollWidth <= "
                         f"document.querySelector('{MARK}').clientWidth")
    assert page.text_content(f"{CARD} button.undo") == words[1]
    assert_quiet(page, f"{CARD} button.undo", "#exam")
    assert_quiet(page, f"{row_of(page, last_id)} button.undo", f"{row_of(page, last_id)} a")
    page.click(f"{CARD} button.undo")
    page.wait_for_selector(f"{CARD} button.open", timeout=POLL["timeout"])
    assert journaled(state, last_id)[0] == 0
    page.close()
