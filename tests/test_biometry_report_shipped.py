"""`make eval-biometry` on a checkout that has not run `make models`: the shipped segmenter
is measured on the validation patients, so a release's figures can be checked in minutes."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantize import seg_data
from quantize.biometry_report import evaluate_all, shipped_report
from quantize.data import data_dir
from quantize.eval_biometry import truth_masks

pytestmark = pytest.mark.skipif(not (data_dir() / "hc18").is_dir(), reason="needs ../shared")


def test_without_a_build_the_shipped_segmenter_is_measured_by_band_and_pass(tmp_path: Path):
    _, val_frames = seg_data.hc18_split(data_dir(), 0)
    val = seg_data.build_cache(val_frames[:6], tmp_path / "val_cache.npz", data_dir())
    report = shipped_report(val, truth_masks(val), 0, tmp_path / "out", tmp_path / "work")
    assert report.startswith("# Head biometry on validation patients: models/ head_segmenter@")
    assert "mask Dice 0.9" in report
    for option in ("| one pass | 1 |", "| flip | 2 |", "| crop | 2 |", "| crop + flip | 4 |"):
        assert option in report
    assert "| HC under 100 |" in report and "| pixel under 0.10 |" in report
    assert (tmp_path / "out" / "report.md").read_text() == report


def test_an_empty_build_directory_no_longer_stops_the_report(tmp_path: Path, monkeypatch):
    """It used to end in "no finished segmenter (run `make models` first)"; now it falls
    back to models/ (here on six frames, the rest of the path as `make eval-biometry`)."""
    import quantize.biometry_report as report_module

    def few(work: Path, seed: int):
        train, val = seg_data.hc18_split(data_dir(), seed)
        return (seg_data.build_cache(train[:3], work / "train_cache.npz", data_dir()),
                seg_data.build_cache(val[:6], work / "val_cache.npz", data_dir()))

    monkeypatch.setattr(report_module, "work_dir", lambda seed: tmp_path / "work")
    monkeypatch.setattr(report_module, "load_caches", few)
    report = evaluate_all(0, tmp_path / "out")
    assert "6 HC18 frames of" in report
    # the same net on the heads it was trained on, band by band beside the validation ones
    assert "on the heads it was trained on" in report and "on the 3 training frames" in report
    assert "| HC band | training: frames |" in report
