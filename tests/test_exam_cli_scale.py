"""`sonoedge exam` is given a head's scale as `score` is: `--pixel-size MM` is these frames'
scale, whatever ruler the config reads, and `--ruler-tick MM` reads each frame's scale from
the scanner's depth ruler. Before, an installer checking a folder of frames with
`exam --pixel-size` on a box set to read the ruler got "head: not measured (ruler_unread)"
for every head, and `exam` had no way to try the ruler on a recording. Real frames: HC18
heads (no ruler drawn) and the SonoNet Voluson screens (a tick every 5 mm)."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.cli_run import sonoedge
from tests.conftest import DATA

pytestmark = pytest.mark.skipif(not (DATA / "hc18").is_dir(), reason="no shared data")
HEADS = ("205_HC.png", "250_HC.png", "414_HC.png")


def _hc(stdout: str) -> float:
    found = re.search(r"head: HC ([0-9.]+) mm", stdout)
    assert found, stdout
    return float(found.group(1))


def test_a_pixel_size_given_to_exam_measures_the_heads_on_a_box_that_reads_the_ruler(
        tmp_path):
    folder = tmp_path / "heads"
    folder.mkdir()
    for name in HEADS:
        shutil.copy(DATA / "hc18" / "images" / name, folder / name)
    config = tmp_path / "box.toml"
    config.write_text("[biometry]\nruler_tick_mm = 5.0\n")
    plain = sonoedge("exam", "--config", str(config), str(folder))
    assert plain.returncode == 0, plain.stderr
    # the box's own setting, as before, said in words with what undoes it
    assert "not measured (depth scale not read on 3 frames): the depth scale beside the " \
        "image could not be read" in plain.stdout, plain.stdout
    given = sonoedge("exam", "--config", str(config), "--pixel-size", "0.15", str(folder))
    assert given.returncode == 0, given.stderr
    assert "depth scale" not in given.stdout
    assert 100 < _hc(given.stdout) < 300


def test_exam_reads_the_depth_ruler_when_told_its_tick():
    screens = [str(DATA / "sononet" / "examples" / f"{n}.tiff") for n in ("BRAIN-TV",
                                                                          "BRAIN-CB")]
    done = sonoedge("exam", "--ruler-tick", "5", *screens)
    assert done.returncode == 0, done.stderr
    assert 165 < _hc(done.stdout) < 195  # 171 and 189 mm: mid-pregnancy heads
    refused = sonoedge("exam", "--ruler-tick", "0.5", *screens)
    assert refused.returncode != 0 and "ruler_tick_mm" in refused.stderr
