"""Blind sweeps: out of a novice's sweep (real heads of held-out patients, each also
degraded twice, other anatomy and a blank frame, shuffled), the device keeps a clean head
frame, never another anatomy, and measures it as well as any clean frame."""

from __future__ import annotations

from quantize import sweeps


def test_blind_sweeps_of_the_earliest_heads_never_choose_another_anatomy():
    """The first 30 held-out patients are HC18's earliest heads (HC 44-130 mm), the hardest
    sweeps: small heads the plane model least often calls a head plane, and that fail the
    zoom rule. Plane student 1.3.0 with the shipped segmenter and quality head chooses a
    clean head in 17 of them; another anatomy in none."""
    result = sweeps.run(30, 0)
    outcome = result["outcome"]
    assert sum(outcome.values()) == result["sweeps"] == 30
    assert outcome["other"] == 0
    assert outcome["clean"] >= 15, sweeps.report(result)
    assert outcome["clean"] > outcome["degraded"] + outcome["none"]
    # Choosing costs no accuracy: the chosen heads measure as well as every clean frame.
    assert result["hc_mad_chosen_mm"] <= result["hc_mad_all_clean_mm"] + 0.2
    # Where nothing is good enough, what the midwife is shown is mostly the clean frame.
    assert result["below_bar_clean"] >= outcome["none"] // 2
