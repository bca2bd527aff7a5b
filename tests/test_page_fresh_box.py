"""What the midwife's page says of the head on a fresh box, and where the exam's head
figures stand (a midwife's walk, 6 December).

A box whose calibration (`[biometry] pixel_size_mm`, the scanner's mm per pixel) is not set
found the heads, ticked "Head for HC and BPD" and never gave an HC, a BPD or an age, with
not a word of why: its frames carried no biometry at all, so the page's "Not measured: no
calibration" could never show, the exam had nothing to say, and the start-up log was
silent. She took the exam as measured. And on a face (Lips) that the segmenter outlined in
yellow, the exam's HC, BPD and age stood on the image as if measured there.

Real parts: `sonoedge run --web` on a clip of real frames (HC18 heads, then SonoNet's
example screens), headless Chromium.
"""

from __future__ import annotations

import json

import pytest

from tests.web_harness import chromium, device, make_clip, unlocked_page

pytest.importorskip("playwright")

POLL = {"timeout": 90_000, "polling": 200}
# Every instruction the page shows under the image, with the plane named above it, from the
# moment it is unlocked: the head frames pass while the other tests look elsewhere.
WATCH = """() => {
  window.__instructions = [];
  const read = () => {
    const i = document.querySelector('#instruction');
    const row = {text: i.textContent, cls: i.className,
                 plane: document.querySelector('#plane').textContent};
    const last = window.__instructions[window.__instructions.length - 1];
    if (!last || JSON.stringify(last) !== JSON.stringify(row)) window.__instructions.push(row);
  };
  new MutationObserver(read).observe(document.querySelector('#live'),
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def fresh_box(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("fresh")
    clip = make_clip(data_dir, tmp / "clip.avi", black_s=2.0, rounds=1)
    with chromium(tmp) as context, device(tmp, clip, pixel_size_mm=0) as (base, proc):
        page = unlocked_page(context, base)
        page.evaluate(WATCH)
        page.proc = proc  # the last test takes the box away
        yield page, tmp


def test_a_box_without_calibration_says_the_head_was_not_measured_and_why(fresh_box):
    page, tmp = fresh_box
    page.wait_for_function(
        "() => { const s = window.sonoedge.lastState, b = s && s.exam && s.exam.biometry;"
        " return b && b.declined && b.declined.pixel_size_missing > 0; }", **POLL)
    exam = page.evaluate("() => window.sonoedge.lastState.exam")
    assert exam["biometry"]["measured"] == 0 and exam["biometry"].get("hc_mm") is None
    page.wait_for_function("() => document.querySelector('#exam-bio').textContent", **POLL)
    card = page.locator("#exam-bio")
    assert card.text_content() == ("Head not measured: this box has no calibration for the "
                                   "scanner (its pixel size). Ask for it to be set.")
    assert card.is_visible() and "flag" in (card.get_attribute("class") or "")
    # on the image, under a head frame's plane: why its outline has no figures
    page.wait_for_function(
        "() => document.querySelector('#ga').innerText.includes('Not measured: no calibration')",
        **POLL)
    log = (tmp / "device.log").read_text()
    assert "no [biometry] pixel_size_mm" in log and "not measured" in log


def test_a_good_head_image_says_the_head_is_not_measured_and_the_slot_too(fresh_box):
    """Over a good image of the head plane the instruction said "Good image: hold still" in
    green, and the checklist ticked the head slot "✓ Head for HC and BPD", where her eyes
    are, while only the card said the head was not measured. Now the instruction says the
    head is not measured, and under it why, in the fix-needed style, without turning back
    to "hold still" over the head; and the slot says it is not measured."""
    page, _ = fresh_box
    said = "Head not measured No calibration: ask for it to be set."
    page.wait_for_function(
        f"() => window.__instructions.some((r) => r.text === {json.dumps(said)})", **POLL)
    seen = page.evaluate("() => window.__instructions")
    first = next(i for i, r in enumerate(seen) if r["text"] == said)
    assert seen[first]["cls"] == "instruction fix", seen[first]
    assert seen[first]["plane"].startswith("Head ("), seen[first]
    good = page.evaluate("() => window.sonoedge.t('instruction.good')")
    assert not [r for r in seen[first:] if r["text"] == good
                and r["plane"].startswith("Head (")], seen[first:]
    # the checklist: captured, not measured, in the page's language
    slot = "#checklist li.captured .name"
    page.wait_for_function(f"() => document.querySelector({json.dumps(slot)})", **POLL)
    assert page.text_content(slot) == "✓ Head for HC and BPD — not measured"
    # and the exam's "1 of 1" is not the green of an exam done (nor, ended, in the list)
    page.wait_for_function("() => document.querySelector('#progress').textContent "
                           "=== '1 of 1'", **POLL)
    assert page.get_attribute("#progress", "class") == "badge refused"
    page.select_option("#controls select.lang", "fr")
    page.wait_for_function(
        f"() => document.querySelector({json.dumps(slot)}).textContent === "
        "'✓ Tête pour PC et BIP — sans mesure'", **POLL)
    assert page.evaluate(
        "() => [window.sonoedge.t('instruction.not_measured'),"
        " window.sonoedge.t('instruction.not_measured_pixel_size_missing')]") == [
        "Tête non mesurée", "Pas d'étalonnage\u202f: demandez qu'on le règle."]
    page.select_option("#controls select.lang", "en")
    page.wait_for_function(
        f"() => document.querySelector({json.dumps(slot)}).textContent === "
        "'✓ Head for HC and BPD — not measured'", **POLL)


def test_the_exam_figures_stand_on_the_image_only_over_a_head_not_beside_any_outline(
        fresh_box):
    page, _ = fresh_box
    shown = page.evaluate("""() => {
      const heads = state.protocol.head_planes;
      const outline = [300, 200, 80, 60, 0];
      return {
        heads,
        face: overAHead("Lips", {ellipse: outline, biometry: {status: "ok", hc_mm: null}}),
        head_plane: overAHead(heads[0], {ellipse: null, biometry: null}),
        measured_here: overAHead("Lips", {ellipse: outline, biometry: {hc_mm: 170}}),
        heart: overAHead("4CH", {ellipse: null, biometry: null}),
      };
    }""")
    assert shown["heads"] and "Lips" not in shown["heads"]
    assert shown == {**shown, "face": False, "head_plane": True, "measured_here": True,
                     "heart": False}


def test_the_age_range_says_it_is_the_best_frames_spread(fresh_box):
    page, _ = fresh_box
    label = page.evaluate("() => rangeOf(gaLine({ga_weeks: 19.2, ga_low_weeks: 19.1,"
                          " ga_high_weeks: 19.6})[1])")
    assert label == "best frames 19w 1d – 19w 4d"
    assert page.evaluate("() => rangeOf('')") == ""


def test_dates_outside_14_to_42_weeks_still_flag_a_head_far_older_than_them(fresh_box):
    """A last period 10 weeks ago against a head of 19 weeks read "outside 14–42 weeks, no
    reference" and no more. The device's flag for it (edge/exam/screening.py) is said, in
    the card's flagged style, as the report says it."""
    page, _ = fresh_box
    lines = page.evaluate("""() => {
      renderScreening({cephalic_index: null, hc_dates: {ga_dates_weeks: 10.0,
        status: "dates_out_of_range", flag: "large", hc_mm: 168.3, ga_hc_weeks: 19.5,
        hc_expected_mm: null, tolerance_days: null}});
      return [...document.querySelectorAll('#flags li')].map((li) => [li.textContent,
        li.className]);
    }""")
    assert ["By dates 10w 0d: outside 14–42 weeks, but the HC measured, 168 mm, is that of "
            "19w 4d: much larger than these dates. Check the date of the last period; if it "
            "is sure, refer.", "flag"] in lines, lines


def test_a_box_out_of_reach_leaves_nothing_reading_live(fresh_box):
    """Runs last: it kills the box. Before, the page kept "Live 15.1 fps" and a green "Good
    image: hold still" under "Reconnecting to the box…" while the box was down."""
    page, _ = fresh_box
    assert page.evaluate("() => document.querySelector('#signal').textContent")
    page.proc.kill()
    page.wait_for_function("() => !document.querySelector('#banner').hidden", **POLL)
    seen = page.evaluate("""() => ({banner: document.querySelector('#banner').textContent,
      signal: document.querySelector('#signal').textContent,
      fps: document.querySelector('#fps').textContent,
      instruction: document.querySelector('#instruction').textContent,
      quality: document.querySelector('#quality').hidden,
      stale: document.querySelector('#stage').classList.contains('stale')})""")
    assert seen == {"banner": "Reconnecting to the box…", "signal": "Box out of reach",
                    "fps": "", "instruction": "", "quality": True, "stale": True}
