"""The scale of a head frame is read from the scanner's depth ruler on the screen
(`[biometry] ruler_tick_mm`, edge/models/ruler.py): a box calibrated once holds for one
depth, and the audit's "Zoom in" asks the midwife to change it. Specified on real screens:
the 13 SonoNet examples (GE Voluson E8, a tick every 5 mm), the 20 umbilical-cord frames
(GE Voluson E10) and HC18's bare heads (no ruler at all)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edge.capture.demo import DEMO_RULER_TICK_MM, build_demo_clip
from edge.capture.sources import Frame
from edge.config import ConfigError, load_settings
from edge.models.biometry import RULER_UNREAD
from edge.models.ruler import RulerReader, read_ruler
from edge.scorer import make_scorer
from tests.conftest import DATA

EXAMPLES = DATA / "sononet" / "examples"
PLANES = DATA / "planes" / "images"
needs_data = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="no shared data")
VOLUSON_TICK_MM = 5.0  # the E8's ruler: a tick every 5 mm, a longer one every centimetre


def _screen(name: str) -> np.ndarray:
    image = cv2.imread(str(EXAMPLES / f"{name}.tiff"))
    assert image is not None, name
    return image


def _deeper(screen: np.ndarray, factor: float) -> np.ndarray:
    """The same screen after a change of depth: image and ruler drawn `factor` times as
    large, from the top left where the ruler and the skin line stay."""
    h, w = screen.shape[:2]
    grown = cv2.resize(screen, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA
                       if factor < 1 else cv2.INTER_LINEAR)
    out = np.zeros_like(screen)
    gh, gw = min(h, grown.shape[0]), min(w, grown.shape[1])
    out[:gh, :gw] = grown[:gh, :gw]
    return out


def _head(scorer, image: np.ndarray, index: int = 0) -> dict:
    frame = Frame("screen", index, image, time.monotonic(), time.time())
    result = scorer.score(frame).to_dict()
    assert result["plane"] in ("Brain (Tv.)", "Brain (Cb.)"), result["plane"]
    return result["biometry"]


@needs_data
def test_the_voluson_ruler_is_read_tick_for_tick():
    """BRAIN-TV's ruler: 16 ticks in column 28 from row 75 to row 599 (read off the pixels
    by hand), so 34.87 px apart, and its longer centimetre ticks are not taken for it."""
    ruler = read_ruler(_screen("BRAIN-TV"))
    assert ruler is not None and 27 <= ruler.x <= 30
    assert ruler.ticks == 16 and ruler.hidden == 0
    assert ruler.spacing_px == pytest.approx((598.5 - 75.5) / 15, abs=0.1)
    assert ruler.first_y == pytest.approx(75.5, abs=0.5)


@needs_data
def test_every_real_screen_with_a_ruler_is_read_and_no_bare_head_is():
    """Every SonoNet screen, where tissue lies over the ruler too (BRAIN-CB, 3VV), and 19 of
    the 20 Voluson E10 JPEGs are read on the left margin where they draw it; not one of
    HC18's bare heads, which have no ruler, is said to have one."""
    for path in sorted(EXAMPLES.glob("*.tiff")):
        ruler = read_ruler(cv2.imread(str(path)))
        assert ruler is not None and ruler.x < 40 and ruler.ticks >= 7, path.name
    cords = sorted(PLANES.glob("*cord*.jpg"))
    read = [read_ruler(cv2.imread(str(p))) for p in cords]
    assert len(cords) == 20 and sum(r is not None for r in read) >= 19
    assert all(r.x < 30 for r in read if r is not None)
    heads = sorted((DATA / "hc18" / "images").glob("*_HC.png"))[:300]
    assert len(heads) == 300
    assert not [p.name for p in heads if read_ruler(cv2.imread(str(p))) is not None]


# The depth each screen's header prints (read by eye off the screens: "10.4cm / 1.6 /
# 35Hz" on BRAIN-TV). It bounds what the ruler's ticks may span below the skin line.
PRINTED_DEPTH_MM = {"BRAIN-TV": 104.0, "BRAIN-CB": 152.0, "4CH": 75.0, "FEMUR": 120.0}


@needs_data
def test_the_voluson_ticks_are_5_mm_apart_by_the_depth_each_screen_prints():
    """At 5 mm a tick, the ticks from the skin line to the screen's foot span less than
    the depth printed in its header; at 1 cm they would span more on every screen, which
    no scanner draws. BRAIN-TV and BRAIN-CB tick alike at depths of 10.4 and 15.2 cm (the
    second is zoomed): the printed depth alone does not give the scale, the ruler does."""
    for name, depth_mm in PRINTED_DEPTH_MM.items():
        screen = _screen(name)
        ruler = read_ruler(screen)
        ticks_shown = (screen.shape[0] - ruler.first_y) / ruler.spacing_px
        assert ticks_shown * VOLUSON_TICK_MM <= depth_mm < ticks_shown * 10.0, name


@needs_data
def test_a_real_head_is_measured_at_its_own_rulers_scale_and_dated_mid_pregnancy():
    """Without any calibration, the two real Voluson head screens are measured at the
    scale of their own rulers, and date to mid-pregnancy, when the anomaly scan whose
    standard planes SonoNet names is done."""
    scorer = make_scorer(load_settings(overrides={"biometry": {
        "ruler_tick_mm": VOLUSON_TICK_MM}}))
    for name in ("BRAIN-TV", "BRAIN-CB"):
        bio = _head(scorer, _screen(name))
        assert bio["status"] == "ok" and bio["scale"] == "ruler", (name, bio)
        assert 18.0 <= bio["ga_weeks"] <= 23.0, (name, bio)
        spacing = read_ruler(_screen(name)).spacing_px
        assert bio["pixel_size_mm"] == pytest.approx(VOLUSON_TICK_MM / spacing, rel=1e-4)


@needs_data
@pytest.mark.parametrize("factor", [1.1, 0.8])
def test_after_a_change_of_depth_the_ruler_keeps_the_hc_and_a_fixed_calibration_does_not(
        factor):
    """The midwife obeys "Zoom in" (the screen draws the head a tenth larger) or goes
    deeper (a fifth smaller). Read from the ruler, the HC stays within 2%: the ruler
    changed with the head. With the calibration set at the first depth, the HC changes by
    the factor: the error this mends."""
    screen = _screen("BRAIN-TV")
    changed = _deeper(screen, factor)
    ruler_scorer = make_scorer(load_settings(overrides={"biometry": {
        "ruler_tick_mm": VOLUSON_TICK_MM}}))
    before, after = _head(ruler_scorer, screen, 0), _head(ruler_scorer, changed, 1)
    assert before["status"] == after["status"] == "ok"
    assert after["hc_mm"] == pytest.approx(before["hc_mm"], rel=0.02)
    assert after["pixel_size_mm"] == pytest.approx(before["pixel_size_mm"] / factor,
                                                   rel=0.01)
    fixed = make_scorer(load_settings(overrides={"biometry": {
        "pixel_size_mm": before["pixel_size_mm"]}}))
    at_first, at_change = _head(fixed, screen, 0), _head(fixed, changed, 1)
    assert at_first["scale"] == "calibration"
    assert at_change["hc_mm"] == pytest.approx(factor * at_first["hc_mm"], rel=0.03)


@needs_data
def test_a_hidden_ruler_withholds_the_head_even_with_a_calibration_set():
    """A box told to read the ruler measures on no guess: with the ruler covered, the head
    is found but not measured, and says why, rather than fall back to a calibration that
    may belong to another depth."""
    screen = _screen("BRAIN-TV").copy()
    screen[:, :60] = 0  # the margin with the ruler, blacked out
    assert read_ruler(screen) is None
    scorer = make_scorer(load_settings(overrides={"biometry": {
        "ruler_tick_mm": VOLUSON_TICK_MM, "pixel_size_mm": 0.14}}))
    bio = _head(scorer, screen)
    assert bio["status"] == RULER_UNREAD and bio.get("hc_mm") is None
    assert bio["scale"] == "ruler"


@needs_data
def test_the_reader_follows_a_new_depth_in_the_same_column():
    """The reader reads the last ruler's column first; a new depth rescales the ticks in
    that column, and the new spacing is what it returns, not the one it remembered."""
    reader = RulerReader(VOLUSON_TICK_MM)
    screen = _screen("BRAIN-TV")
    first = reader.read(screen)
    again = reader.read(_deeper(screen, 1.25))
    assert first is not None and again is not None
    assert again.spacing_px == pytest.approx(1.25 * first.spacing_px, rel=0.005)
    assert reader.read(np.zeros_like(screen)) is None and reader.last is None


@needs_data
def test_the_demo_draws_a_ruler_that_reads_true(tmp_path):
    """The demo's heads carry a Voluson-like ruler at their own scale, zoom included:
    read back, every head frame's mm per pixel is within 0.5% of the scale it was drawn
    at, so `[biometry] ruler_tick_mm = 5` measures the demo like a scanner."""
    clip = build_demo_clip(tmp_path / "cache", DATA)
    reader, errors = RulerReader(DEMO_RULER_TICK_MM), []
    capture = cv2.VideoCapture(str(clip.path))
    try:
        for size in clip.pixel_sizes:
            ok, image = capture.read()
            assert ok
            ruler = reader.read(image)
            if size:
                assert ruler is not None
                errors.append(abs(ruler.mm_per_px(DEMO_RULER_TICK_MM) / size - 1))
    finally:
        capture.release()
    assert len(errors) >= 20 and max(errors) < 0.005


def test_hostile_screens_read_no_ruler():
    """Blank, saturated, striped, tiny and odd-shaped frames end in None, never a raise:
    stripes evenly spaced but as thick as the screen's rows are no ticks."""
    rng = np.random.default_rng(0)
    stripes = np.zeros((480, 640), np.uint8)
    stripes[::2] = 255  # one-pixel lines every other row: too close to be ticks
    thick = np.zeros((480, 640), np.uint8)
    for y in range(0, 480, 30):
        thick[y:y + 12] = 255  # evenly spaced, but bands, not ticks
    for screen in (np.zeros((480, 640), np.uint8), np.full((480, 640, 3), 255, np.uint8),
                   rng.integers(0, 256, (480, 640), dtype=np.uint8), stripes, thick,
                   np.zeros((3, 3), np.uint8), np.zeros((480, 1), np.uint8),
                   np.zeros((1, 640, 3), np.uint8)):
        assert read_ruler(screen) is None


def test_a_tick_spacing_out_of_range_is_one_line_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    for value in ("0.1", "500", "-5"):
        config.write_text(f"[biometry]\nruler_tick_mm = {value}\n")
        with pytest.raises(ConfigError, match=r"biometry\.ruler_tick_mm must be 0 .*got"):
            load_settings(config)
    config.write_text("[biometry]\nruler_tick_mm = 5\n")
    assert load_settings(config).biometry.ruler_tick_mm == 5.0


@needs_data
def test_zoom_in_is_not_said_where_the_scale_is_a_calibration_fixed_for_one_depth():
    """BRAIN-TV's head fills 0.2 of its image, under the zoom criterion's 0.3. Where the
    box reads the ruler (or has no scale, so no HC to spoil) the midwife is told "Zoom in";
    where the head is measured at a calibration set for one depth, obeying would make every
    HC after it wrong, so the criterion is still judged and shown but is not said, and
    (rules 1.3.9) takes nothing off the score: a bigger head would rank better."""
    screen = _screen("BRAIN-TV")
    said = {}
    for name, biometry in (("ruler", {"ruler_tick_mm": VOLUSON_TICK_MM}),
                           ("fixed", {"pixel_size_mm": 0.14}), ("none", {})):
        scorer = make_scorer(load_settings(overrides={"biometry": biometry}))
        frame = Frame("screen", 0, screen, time.monotonic(), time.time())
        said[name] = scorer.score(frame).to_dict()["quality"]
    assert said["ruler"]["advice"] == said["none"]["advice"] == "zoom"
    assert said["fixed"]["advice"] is None
    assert said["fixed"]["criteria"]["zoom"]["pass"] is False
    assert said["fixed"]["withheld"] == ["zoom"]
    assert said["fixed"]["score"] > said["ruler"]["score"] == said["none"]["score"]


def test_a_rule_that_changes_the_scale_says_so_with_a_true_or_false(tmp_path):
    from edge.models.quality import RULES_FILE, RulesError, load_rules

    text = RULES_FILE.read_text()
    assert "changes_scale = true" in text
    bad = tmp_path / "rules.toml"
    bad.write_text(text.replace("changes_scale = true", "changes_scale = 1"))
    with pytest.raises(RulesError, match=r"criteria\.zoom\.changes_scale: expected bool"):
        load_rules(bad)


@needs_data
def test_the_ruler_read_is_logged_once_and_again_at_a_new_depth(caplog):
    """What an installer checks against the depth the scanner prints: BRAIN-TV's 16 ticks
    34.87 px apart are 0.1434 mm a pixel, its 735 rows 10.5 cm, where the screen says
    "10.4cm". Said once, again when the depth changes, and when the ruler is lost."""
    scorer = make_scorer(load_settings(overrides={"biometry": {
        "ruler_tick_mm": VOLUSON_TICK_MM}}))
    screen = _screen("BRAIN-TV")
    covered = screen.copy()
    covered[:, :60] = 0  # the margin with the ruler, blacked out
    with caplog.at_level("INFO", logger="edge.scorer"):
        for index, image in enumerate((screen, screen, _deeper(screen, 0.8), covered,
                                       _deeper(screen, 0.8), covered)):
            _head(scorer, image, index)  # lost, found, lost again: its loss said once
    said = [r.getMessage() for r in caplog.records if "depth ruler" in r.getMessage()]
    assert len(said) == 3, said
    assert "16 ticks 34.87 px apart in column 28" in said[0]
    assert "0.1434 mm per pixel; the frame's height spans 10.5 cm" in said[0]
    assert "27.89 px apart" in said[1], said[1]
    assert "not read" in said[2]


@needs_data
def test_a_calibration_screen_without_a_ruler_says_none_was_found(caplog):
    """The installer's one calibration screen (README "The scale, once per scanner model")
    with no ruler in sight: one line says none was found, where nothing was said at all and
    the head went unmeasured without a word."""
    scorer = make_scorer(load_settings(overrides={"biometry": {
        "ruler_tick_mm": VOLUSON_TICK_MM}}))
    covered = _screen("BRAIN-TV").copy()
    covered[:, :60] = 0  # the margin with the ruler, blacked out
    with caplog.at_level("INFO", logger="edge.scorer"):
        for index in range(3):
            assert _head(scorer, covered, index)["status"] == RULER_UNREAD
    said = [r.getMessage() for r in caplog.records if "depth ruler" in r.getMessage()]
    assert said == ["depth ruler: none found on this frame; heads are not measured until "
                    "one is (the scanner's depth ruler must show beside the image)"], said


def test_a_value_just_past_a_bound_is_shown_as_given_not_rounded_onto_it(tmp_path):
    """50.0000001 was refused "must be 1-50 mm, got 50": the bound itself, read as allowed."""
    config = tmp_path / "edge.toml"
    config.write_text("[biometry]\nruler_tick_mm = 50.0000001\n")
    with pytest.raises(ConfigError, match=r"got 50\.0000001$"):
        load_settings(config)
