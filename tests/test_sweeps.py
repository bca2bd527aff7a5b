"""Blind sweeps: out of a novice's sweep (real heads of held-out patients, each also
degraded twice, other anatomy and a blank frame, shuffled), the device keeps a clean head
frame, never another anatomy, and measures it as well as any clean frame."""

from __future__ import annotations

import numpy as np

from edge.models.roi import find_roi, to_grey
from quantize import degrade as dg
from quantize import sweeps
from quantize.data import list_frames, read_frame, split
from quantize.seg_data import annotation_path, fill_ellipse, fit_annotation


def test_blind_sweeps_of_the_earliest_heads_never_choose_another_anatomy():
    """The first 30 held-out patients are HC18's earliest heads (HC 44-130 mm), the hardest
    sweeps: small heads the plane model least often calls a head plane, and that fail the
    zoom rule. Plane student 1.4.0 with segmenter 1.3.0 and quality head 1.1.0 chooses a
    clean head in 25 of them, 19 of them captured (2 choices the plane model abstained on,
    outlined by the segmenter); another anatomy in none. (23 before the sweeps' cut-off
    frames were made to cut the head: two "degraded" choices were whole heads.) Choices
    below the protocol's bar are shown with what to change: on these early heads, to zoom
    in."""
    result = sweeps.run(30, 0)
    outcome = result["outcome"]
    assert sum(outcome.values()) == result["sweeps"] == 30
    assert outcome["other"] == 0
    assert outcome["clean"] >= 24, sweeps.report(result)
    assert outcome["clean"] > 3 * (outcome["degraded"] + outcome["none"])
    assert result["clean_captured"] >= 16 and 1 <= result["unsure"] <= outcome["clean"]
    assert max(result["advice_below_bar"], key=result["advice_below_bar"].get) == "zoom"
    # Choosing costs no accuracy: the chosen heads measure as well as every clean frame.
    assert result["hc_mad_chosen_mm"] <= result["hc_mad_all_clean_mm"] + 0.2


def test_training_patients_sweeps_are_other_patients_than_the_reported_ones():
    """The sweeps a selection rule is tuned on share no patient with the reported ones."""
    train = {s.patient for s in sweeps.build_sweeps(40, 0, "train")}
    held = {s.patient for s in sweeps.build_sweeps(40, 0, "held")}
    assert len(train) == len(held) == 40 and not train & held


def test_a_sweeps_cut_off_frame_cuts_the_head(data_dir):
    """A slide moves the whole image, so a drawn cut-off slide may leave a small or
    off-centre head whole: such a frame is a whole head, and counting its choice as a
    degraded one was the sweeps' error (5 of the 11 wrong choices of 214 held-out sweeps).
    `cutoff_kept` says how much of the annotated head a slide leaves on screen, as the
    degraded picture shows it; `cutting_slide` keeps a drawn slide that cuts, and replaces
    one that does not by one that does, never milder."""
    _, held = split(list_frames(data_dir))
    replaced = 0
    for f in [f for f in held if f.source == "hc18"][:12]:
        grey = to_grey(read_frame(f.path))
        roi = find_roi(grey)
        head = fill_ellipse(grey.shape, fit_annotation(annotation_path(f.path)))
        part, clean = roi.crop(head), roi.crop(grey)
        for direction in dg.CUTOFF_DIRECTIONS:
            for s in (0.25, 0.5, 1.0):
                kept = dg.cutoff_kept(grey, roi, head, s, direction)
                out = roi.crop(dg.degrade(grey, roi, "cutoff", s, np.random.default_rng(0),
                                          direction=direction, filler="black"))
                axis = 0 if direction == "down" else 1
                step = round(s * dg.CUTOFF_SHIFT_AT_ONE * clean.shape[axis])
                step = -step if direction == "left" else step
                # The head's echoes, slid: how much of them the picture still shows.
                echoes = np.roll(part, step, axis) * (np.roll(clean, step, axis) > 8)
                shown = float((echoes * (out > 0)).sum() / echoes.sum()) * part.sum() / head.sum()
                assert abs(shown - kept) < 0.03, (f.path.name, direction, s, kept, shown)
            level, chosen = sweeps.cutting_slide(grey, roi, head, 0.4, direction)
            assert dg.cutoff_kept(grey, roi, head, level, chosen) <= 1 - sweeps.MIN_CUT
            assert level >= 0.4
            if dg.cutoff_kept(grey, roi, head, 0.4, direction) <= 1 - sweeps.MIN_CUT:
                assert (level, chosen) == (0.4, direction)
            else:
                replaced += 1
    assert replaced >= 3  # the heads include ones a drawn slide leaves whole
