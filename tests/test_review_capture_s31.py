"""What a fuzzing pass of the frame readers found scored that should not have been."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_score_of_an_empty_path_scores_no_frame_of_the_current_folder(tmp_path, data_dir):
    """`Path("")` is the current folder: `sonoedge score ""` run in a folder of images
    scored them all, as if named. `sonoedge run` refused the empty source; `score` now
    refuses it too, in one line, and goes on with the other paths it was given."""
    example = data_dir / "sononet" / "examples" / "4CH.tiff"
    shutil.copyfile(example, tmp_path / "someone_elses.tiff")
    run = subprocess.run([sys.executable, "-m", "edge.cli", "score", "", str(example)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr  # one failed
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["source"] for r in records] == ["", "4CH.tiff"]
    assert records[0]["error"] and records[0]["plane"] is None
    assert records[1]["plane"] == "4CH"
    assert "an empty path names no file or folder" in run.stderr
