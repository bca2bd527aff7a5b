"""The advice audit (`quantize.advice_audit`): which instruction a fault gets, judged by
the words the midwife sees, on real frames through the device's own scorer."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import load_settings
from edge.models.quality import audit, load_rules
from edge.models.roi import find_roi, to_grey
from edge.scorer import make_scorer
from quantize import advice_audit
from quantize.data import read_frame
from quantize.degrade import degrade
from tests.conftest import DATA

needs_data = pytest.mark.skipif(not (DATA / "hc18").is_dir(), reason="no shared data")


def test_every_expected_instruction_is_a_shipped_rule():
    rules = {r.name: r for r in load_rules().criteria}
    for row, _kind, _, want in advice_audit.FAULTS:
        for label in want | advice_audit.SAME_WAY.get(row, frozenset()):
            name, _, side = label.partition(".")
            assert name in rules, (row, label)
            if side:  # a one-sided instruction names a rule with two messages
                assert rules[name].message_low != rules[name].message_high, label


def test_the_words_decide_not_the_criterions_name():
    """A dim frame's contrast speaks the gain's "Too dark: turn the gain up": right for a
    dark frame, wrong for a bright one; the contrast's own "lower the gain" is wrong for a
    dark frame."""
    rules = load_rules()
    dim = audit(rules, {"tissue_fraction": 0.8, "bright_level": 70.0,
                        "dynamic_range": 0.2}).to_dict()
    assert dim["advice"] == "contrast"
    label = advice_audit.said(rules, dim)
    assert label == "contrast=gain.low"
    assert advice_audit.is_right(label, frozenset({"gain.low"}))
    assert not advice_audit.is_right(label, frozenset({"gain.high"}))
    washed = audit(rules, {"tissue_fraction": 0.8, "bright_level": 140.0,
                           "dynamic_range": 0.15}).to_dict()
    assert advice_audit.said(rules, washed) == "contrast"
    assert not advice_audit.is_right("contrast", frozenset({"gain.low"}))
    assert advice_audit.said(rules, audit(rules, {"tissue_fraction": 0.8,
                                                  "bright_level": 150.0}).to_dict()) \
        == advice_audit.NONE


@needs_data
@pytest.mark.parametrize("direction,side", [(-1, "gain.low"), (1, "gain.high")])
def test_a_real_head_with_the_gain_turned_4x_is_told_the_right_way(direction, side):
    """500_HC, a held-out head: at /4 or x4 gain the one instruction is the gain's, on the
    right side (the audit: 92% and 99% of the held-out heads)."""
    scorer = make_scorer(load_settings())
    grey = to_grey(read_frame(DATA / "hc18" / "images" / "500_HC.png"))
    bad = degrade(grey, find_roi(grey), "gain", 1.0, np.random.default_rng(0),
                  direction=direction)
    result = advice_audit.score(scorer, bad, "500_HC.png", 0.1)
    assert advice_audit.said(scorer.quality.rules, result["quality"]) == side


@needs_data
def test_the_audit_runs_bounded_and_prints_every_fault():
    text = advice_audit.report(advice_audit.run("held", 1, 0))
    for row, *_ in advice_audit.FAULTS:
        assert f"| heads | {row} | 0.5 |" in text and f"| heads | {row} | 1 |" in text
    assert "| heads | clean | 0 |" in text
