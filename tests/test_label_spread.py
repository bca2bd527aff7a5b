"""The labels' own spread, from the HC18 patients measured on more than one frame."""

from __future__ import annotations

import numpy as np
import pytest

from quantize.label_spread import bootstrap, decompose, pairs_within_patients


def test_frames_of_one_patient_pair_up_and_no_others():
    names = ["010_HC.png", "010_2HC.png", "011_HC.png", "746_2HC.png", "746_3HC.png",
             "746_HC.png"]
    assert sorted(pairs_within_patients(names)) == [(0, 1), (3, 4), (3, 5), (4, 5)]


def synthetic(label_sd: float, net_sd: float, seed: int = 1, patients: int = 4000):
    """Patients with two frames each, whose true HCs differ by a lot (as HC18's do): the
    label and the net each err independently around the frame's own truth."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(rng.uniform(60, 340, patients), 2) + rng.normal(0, 5, 2 * patients)
    label = truth + rng.normal(0, label_sd, truth.size)
    net = truth + rng.normal(0, net_sd, truth.size)
    names = [f"{p:04d}_{k}HC.png" for p in range(patients) for k in ("", "2")]
    return label, net, names


@pytest.mark.parametrize(("label_sd", "net_sd"), [(2.0, 1.0), (1.0, 2.0), (1.5, 0.0)])
def test_the_labels_noise_and_the_nets_are_told_apart(label_sd, net_sd):
    label, net, names = synthetic(label_sd, net_sd)
    found = decompose(label, net, pairs_within_patients(names))
    assert found.label_sd == pytest.approx(label_sd, abs=0.25)
    assert found.net_sd == pytest.approx(net_sd, abs=0.35)
    assert found.frame_sd == pytest.approx(5.0, abs=0.3)
    assert found.pairs == 4000 and found.frames == 8000


def test_a_declined_frame_leaves_its_pair_out_and_no_pair_at_all_is_said():
    label, net, names = synthetic(2.0, 1.0, patients=50)
    net = net.astype(object)
    net[0] = None  # the device declined one frame: its patient has no pair left
    found = decompose(label, np.array([np.nan if v is None else v for v in net], float),
                      pairs_within_patients(names))
    assert (found.pairs, found.frames) == (49, 98)  # its partner has no pair left either
    with pytest.raises(ValueError, match="no frame pair"):
        decompose(label[::2], net[::2].astype(float), pairs_within_patients(names[::2]))


def test_the_interval_over_patients_holds_the_truth_and_narrows_with_more_of_them():
    small = bootstrap(*synthetic(2.0, 1.0, seed=3, patients=150), draws=300)
    large = bootstrap(*synthetic(2.0, 1.0, seed=3, patients=1500), draws=300)
    for found in (small, large):
        lo, _, hi = found["label_sd"]
        assert lo < 2.0 < hi
    assert np.diff(large["label_sd"][::2]) < np.diff(small["label_sd"][::2])


def test_a_model_that_is_no_model_is_one_line_and_nothing_measured(tmp_path, capsys):
    from quantize.label_spread import main

    bad = tmp_path / "head_segmenter.tflite"
    bad.write_bytes(b"not a flatbuffer" * 64)
    assert main(["--model", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"label_spread: {bad}")
    assert not (tmp_path / "out").exists()
