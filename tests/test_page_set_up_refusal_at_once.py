"""A fresh box whose grabber stretches the picture: over the first head frames it refuses for
its set-up, the page said the previous instruction, "Good image: hold still" in green, for
about a second before the yellow "Head not measured" (then "Good image, but the head is not
measured: ...") took over.

Where the second came from: the box cannot know the picture is stretched until it has read
the probe's fan on a few head frames (`edge/scorer.py`, every 5th frame of a new screen),
and measures those first heads; once it knows, it refuses every head. The refusal was
steadied as any instruction (`edge/web/live.py` SteadySetUp, on `edge/exam/feedback.py`'s
Hysteresis): it was said only once the measured verdict had been absent from the last
`message_change_frames` head frames, 15, a second of the loop's 15 frames a second. For that
second she was told to hold still while nothing was measured. Now a set-up refusal is said
on the first head frame the box refuses; going back to "hold still" is held as before.

`sonoedge run --web` on real HC18 fan heads stretched to 16:9 (tests/test_page_stretch.py's
clip), recorded frame by frame in headless Chromium as tests/test_page_scan_screen_s41.py
records them.
"""

from __future__ import annotations

import pytest

from tests.test_page_stretch import _stretched_clip
from tests.web_harness import chromium, device, unlocked_page

pytest.importorskip("playwright")

POLL = {"timeout": 120_000, "polling": 200}
SAID = ("instruction.not_measured", "instruction.not_measured_screen_stretched")  # and why

# Every frame the page draws: its header (the frame's plane and biometry, the shown plane
# and the box's instruction) and what the instruction under the image then says.
RECORD = """() => {
  window.__rows = [];
  let last = -1;
  const tick = () => {
    const h = window.sonoedge.lastHeader;
    if (h && h.seq !== last) {
      last = h.seq;
      const el = document.querySelector('#instruction');
      window.__rows.push({seq: h.seq, ts: h.ts, frame: h.error ? null : h.plane,
        status: h.biometry ? h.biometry.status : null,
        shown: h.shown ? h.shown.plane : null, held: !!(h.shown && h.shown.held),
        key: h.shown && h.shown.instruction ? h.shown.instruction.key : null,
        detail: h.shown && h.shown.instruction ? h.shown.instruction.detail || null : null,
        text: el.textContent, cls: el.className});
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


@pytest.fixture(scope="module")
def stretched_scan(tmp_path_factory, data_dir):
    """The rows of the whole recording, on a fresh box (no remembered screen shape)."""
    tmp = tmp_path_factory.mktemp("set-up-at-once")
    # six seconds of black first: the page is unlocked and recording before the first head
    clip = _stretched_clip(data_dir, tmp / "stretched.avi", black=90)
    # every frame streamed (the loop's 15 a second), so the page draws nearly all of them
    with chromium(tmp) as context, \
            device(tmp, clip, pixel_size_mm=0.15, extra_config="max_fps = 30\n") as (base, _):
        page = unlocked_page(context, base)
        page.evaluate(RECORD)
        page.wait_for_function("() => window.sonoedge.lastState && "
                               "window.sonoedge.lastState.status.phase === 'ended'", **POLL)
        rows = page.evaluate("window.__rows")
        heads = page.evaluate("window.sonoedge.lastState.protocol.head_planes")
        words = page.evaluate(f"window.sonoedge.t({SAID[0]!r}) + ' ' + "
                              f"window.sonoedge.t({SAID[1]!r})")
        good = page.evaluate("window.sonoedge.t('instruction.good')")
        page.close()
    yield rows, heads, words, good, (tmp / "device.log").read_text()


def test_the_set_up_instruction_is_said_on_the_first_head_frame_the_box_refuses(
        stretched_scan):
    """Over every head-plane frame the box refused for its stretched picture, on a head
    plane shown, the page said the set-up instruction and nothing else: never "hold still",
    from the first such frame on."""
    rows, heads, words, good, log = stretched_scan
    assert "the picture is stretched sideways, so heads are not measured" in log
    assert rows and rows[0]["frame"] not in heads, "the page was not recording before the heads"
    refused = [r for r in rows if r["frame"] in heads and r["shown"] in heads
               and r["status"] == "screen_stretched"]
    assert len(refused) >= 10, f"only {len(refused)} refused head frames drawn"
    wrong = [r for r in refused if (r["key"], r["detail"]) != SAID or r["text"] != words
             or r["cls"] != "instruction fix"]
    span = (wrong[-1]["ts"] or 0) - (refused[0]["ts"] or 0) if wrong else 0
    assert not wrong, (f"{len(wrong)} of {len(refused)} refused head frames said something "
                       f"else, up to {span:.2f} s after the first: "
                       + str([(r["seq"], r["text"]) for r in wrong][:3]))
    assert not [r for r in refused if "hold still" in r["text"]]
    # the box measured the first heads, before it could see the fan's shape: "hold still"
    # there was true, and it gave way to the refusal at once
    first = rows.index(refused[0])
    before = [r for r in rows[:first] if r["frame"] in heads and r["status"] == "ok"]
    if before:
        assert any(r["text"] == good for r in rows[:first]), rows[:first][-5:]


def test_once_refused_the_head_does_not_turn_back_to_hold_still(stretched_scan):
    """After the first refusal every head of the clip is refused: the page never again says
    "hold still" over a head plane (no flicker back to green)."""
    rows, heads, _words, good, _log = stretched_scan
    first = next(i for i, r in enumerate(rows) if r["status"] == "screen_stretched")
    after = [r for r in rows[first:] if r["shown"] in heads and r["text"] == good]
    assert not after, [(r["seq"], r["frame"], r["status"]) for r in after][:5]
