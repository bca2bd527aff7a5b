"""Blind sweeps: out of a novice's sweep (real heads of held-out patients, each also
degraded twice, other anatomy and a blank frame, shuffled), the device keeps a clean head
frame, never another anatomy, and measures it as well as any clean frame."""

from __future__ import annotations

from quantize import sweeps


def test_blind_sweeps_of_the_earliest_heads_never_choose_another_anatomy():
    """The first 30 held-out patients are HC18's earliest heads (HC 44-130 mm), the hardest
    sweeps: small heads the plane model least often calls a head plane, and that fail the
    zoom rule. Plane student 1.4.0 with the shipped segmenter and quality head chooses a
    clean head in 24 of them (1 of those the plane model abstained on, outlined by the
    segmenter; 1.3.0: 25, 3 of them so), 19 of them captured; another anatomy in none.
    Choices below the protocol's bar are shown with what to change: on these early
    heads, to zoom in."""
    result = sweeps.run(30, 0)
    outcome = result["outcome"]
    assert sum(outcome.values()) == result["sweeps"] == 30
    assert outcome["other"] == 0
    assert outcome["clean"] >= 23, sweeps.report(result)
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
