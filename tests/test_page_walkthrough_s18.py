"""The midwife's page walked through as a midwife would use it (session 18), in headless
Chromium against `sonoedge run --web` on the harness's clip of real frames (HC18 heads,
then SonoNet's example screens): the head figures on the image agree with each other and
with what the exam records and stand on the image only over a head, the exam's HC stays
readable once the clip has ended, and every control is big enough for a thumb.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.web_harness import chromium, device, make_clip, unlocked_page
from wire.dating import redate_days

pytest.importorskip("playwright")

POLL = {"timeout": 90_000, "polling": 200}
# the overlay's right tag and the exam's own figures, as the page shows and holds them
READ = """() => {
  const s = window.sonoedge.lastState, bio = s && s.exam && s.exam.biometry;
  const h = window.sonoedge.lastHeader, heads = s && s.protocol && s.protocol.head_planes;
  // the plane the image shows: the one named, or this frame's while the name is held
  // against the frames (trailing a change of view, session 41)
  const plane = h && h.shown ? (h.shown.held ? h.plane : h.shown.plane) : null;
  return {tag: document.querySelector('#ga').innerText,
          plane: plane, head_planes: heads || null,
          measured: !!(h && h.biometry && h.biometry.hc_mm != null),
          exam_hc: bio && bio.hc_mm != null ? Math.round(bio.hc_mm) : null,
          tolerance: s && s.screening ? s.screening.ga_tolerance_days : null,
          card: (document.querySelector('#exam-bio') || {}).textContent || null,
          signal: s && s.status && s.status.signal};
}"""


@pytest.fixture(scope="module")
def page(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("walk")
    # the other planes shown 2 s a round, not 1: a loaded host's slow reads still get
    # more than ten over them (it got fewer with 8 frames each)
    clip = make_clip(data_dir, tmp / "clip.avi", black_s=2.0, rounds=2, per_example=16)
    with chromium(tmp) as context, device(tmp, clip) as (base, _proc):
        page = unlocked_page(context, base)
        yield page


def _hc(text: str) -> int | None:
    m = re.search(r"HC (\d+) mm", text)
    return None if m is None else int(m.group(1))


def test_the_hc_on_the_image_is_the_exam_s_and_only_over_a_head(page):
    """Before: the tag showed this frame's HC and BPD beside the exam's GA ("HC 211 mm,
    GA 18w 6d" on a real run), two sources that disagree, and the HC lines came and went
    frame by frame. Now HC, BPD and GA come from the exam once it has measured a head.
    And they sit on the image only over a head: on the clip's heart, abdomen and femur
    screens the exam's "HC 154 mm" stood in the corner as if measured on that image."""
    page.wait_for_function("() => { const s = window.sonoedge.lastState;"
                           " return s && s.exam && s.exam.biometry &&"
                           " s.exam.biometry.hc_mm != null; }", **POLL)
    over_head, elsewhere, deadline = [], [], time.monotonic() + 25
    while time.monotonic() < deadline:
        r = page.evaluate(READ)
        if r["signal"] != "ok":
            break
        if r["exam_hc"] is not None and r["plane"] and r["head_planes"]:
            shown = (_hc(r["tag"]), r["exam_hc"], r["plane"], r["tag"], r["tolerance"])
            # a head measured on this frame, or a plane the exam measures: an outline
            # alone is not one (test_page_fresh_box.py)
            head = r["measured"] or r["plane"] in r["head_planes"]
            (over_head if head else elsewhere).append(shown)
        time.sleep(0.1)
    assert len(over_head) > 20 and len(elsewhere) > 10, (over_head, elsewhere)
    wrong = [s for s in over_head if s[0] != s[1]]
    assert not wrong, (f"{len(wrong)} of {len(over_head)} reads over a head: the image's "
                       f"HC is not the exam's: {wrong[:3]}")
    # and they say whose they are: the exam's medians, not this frame's measurement
    unlabelled = [s for s in over_head if s[0] is not None
                  and "Exam, best heads:" not in s[3]]
    assert not unlabelled, unlabelled[:3]
    # the exam's age on the image is said give or take, as the card says it (it was
    # "GA 19w 4d" there beside "GA 19w 4d ± 10 days" in the card)
    bare = [s for s in over_head if s[0] is not None and s[4]
            and re.search(r"GA \d+w \d+d", s[3]) and f"± {s[4]} d" not in s[3]]
    assert not bare, bare[:3]
    stray = [s for s in elsewhere if s[0] is not None or "GA" in s[3]]
    assert not stray, (f"{len(stray)} of {len(elsewhere)} reads over another plane show "
                       f"the head's figures on the image: {stray[:3]}")


def test_after_the_clip_ends_the_exam_s_hc_and_age_stay_in_the_exam_card(page):
    """Before: once the exam was over the page showed the GA but its HC and BPD nowhere."""
    page.wait_for_function("() => { const s = window.sonoedge.lastState;"
                           " return s && s.status.signal === 'ended'; }", **POLL)
    r = page.evaluate(READ)
    assert r["exam_hc"] is not None
    assert r["card"] and f"HC {r['exam_hc']} mm" in r["card"], r
    assert "BPD" in r["card"] and "GA" in r["card"], r
    assert page.is_visible("#exam-bio")
    # the age give or take what a scan at that age can tell (ACOG's redating threshold)
    ga = page.evaluate("() => window.sonoedge.lastState.exam.biometry.ga_weeks")
    assert ga is not None and f"± {redate_days(ga)} days" in r["card"], (ga, r["card"])


def test_every_control_is_at_least_48_px_for_a_thumb(page):
    """Before: Set, Lock, the language list and the date field were 44 px high."""
    small = page.evaluate("""() => [...document.querySelectorAll(
        '#app button, #app select, #app input:not([type=checkbox]), #app label.toggle')]
      .filter((el) => el.offsetParent !== null)
      .map((el) => [el.id || el.className, el.getBoundingClientRect().height])
      .filter(([, h]) => h < 48)""")
    assert not small, small


def test_a_ga_range_with_a_bound_outside_hadlock_s_span_still_shows_that_bound(page):
    """An exam whose smallest best head is under Hadlock's 14 weeks sends its range's low
    bound as null (the command line prints "under 14"); the page dropped the whole range,
    so the midwife saw a single age where the heads spanned several weeks."""
    low, high, both = page.evaluate(
        "() => [gaLine({ga_weeks: 15.2, ga_low_weeks: null, ga_high_weeks: 16.1}),"
        " gaLine({ga_weeks: 41.5, ga_low_weeks: 40.9, ga_high_weeks: null}),"
        " gaLine({ga_weeks: 20.0, ga_low_weeks: 19.5, ga_high_weeks: 20.5})]")
    assert low[1].startswith("< 14w 0d") and "16w 1d" in low[1], low
    assert high[1].startswith("40w 6d") and high[1].endswith("> 42w 0d"), high
    assert both[1] == "19w 4d – 20w 4d", both


def test_a_ga_range_whose_bounds_fall_on_one_day_is_not_shown(page):
    """An exam with one best head, or heads a few hours of growth apart, sent bounds under a
    day apart: the card said "GA 19w 1d (19w 1d – 19w 1d)"."""
    one, two = page.evaluate(
        "() => [gaLine({ga_weeks: 19.15, ga_low_weeks: 19.14, ga_high_weeks: 19.16}),"
        " gaLine({ga_weeks: 19.15, ga_low_weeks: 19.14, ga_high_weeks: 19.29})]")
    assert one == ["GA 19w 1d", ""], one
    assert two[1] == "19w 1d – 19w 2d", two
