"""The status strip on a small phone (a user's walk, 7 December): at 320x568 the sticky
strip took 150 px, a quarter of the screen, held at the top through every scroll, three of
its lines the model versions ("plane_student 1.5.0 · head_segmenter 1.4.0 · ..."), words a
midwife never reads; with the keyboard up for the date field, half of what was left. On a
phone the versions are now at the page's foot; on a tablet they stay in the strip.

The real server (`edge.web.server.WebServer`, its `LiveView` set by hand as the loop sets
it) in headless Chromium.
"""

from __future__ import annotations

import pytest

from tests.web_harness import page_on_view, scanning_view

pytest.importorskip("playwright.sync_api")
WAIT = {"timeout": 10_000, "polling": 100}
MODELS = {"plane_student": "1.5.0", "head_segmenter": "1.4.0", "quality_head": "1.1.0",
          "quality_rules": "1.3.8"}
VERSIONS = " · ".join(f"{k} {v}" for k, v in MODELS.items())
SHOWN = "e => e.getClientRects().length > 0"


def test_on_a_small_phone_the_strip_is_short_and_the_versions_are_at_the_foot(tmp_path):
    view = scanning_view(MODELS)
    with page_on_view(tmp_path, view, (320, 568)) as (page, errors):
        page.wait_for_function(f"document.querySelector('#models').textContent "
                               f"=== {VERSIONS!r}", **WAIT)
        strip = page.eval_on_selector("#status", "e => e.getBoundingClientRect().height")
        assert strip <= 0.15 * 568, f"the strip takes {strip:.0f} px of 568"
        assert not page.eval_on_selector("#models", SHOWN)
        assert page.text_content("#models-foot") == VERSIONS
        assert page.eval_on_selector("#models-foot", SHOWN)
        # a tablet in landscape: the versions in the strip, as before, once only
        page.set_viewport_size({"width": 1280, "height": 800})
        page.wait_for_function("document.querySelector('#models')"
                               ".getClientRects().length > 0", **WAIT)
        assert page.text_content("#models") == VERSIONS
        assert not page.eval_on_selector("#models-foot", SHOWN)
