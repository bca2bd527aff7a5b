"""`python -m bench.paired` compares two checkouts on the same clip, or refuses to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A checkout's stand-in worker: it reports the frames of the clip its data would give, as
# the real one does (the phantom clip has 120 frames, the real demo 177), and its speed.
WORKER = '''
import json, os, sys
from pathlib import Path
data = os.environ.get("SONOEDGE_DATA")
real = data is not None and (Path(data) / "sononet").is_dir()
frames = {frames} if real else 120
print(json.dumps({{"frames": frames, "median_ms": {ms}, "p90_ms": {ms} + 2,
                  "head_frame_median_ms": {ms} + 1, "head_frame_p90_ms": {ms} + 3,
                  "capture_ms": 0.0}}))
'''


def fake_checkout(root: Path, frames: int, ms: float) -> Path:
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "__init__.py").write_text("")
    (root / "bench" / "worker.py").write_text(WORKER.format(frames=frames, ms=ms))
    return root


def paired(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.paired", "--runs", "2", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_both_checkouts_score_the_demo_clip_of_the_shared_data_even_from_elsewhere(tmp_path):
    """A `git worktree` in /tmp has no ../shared beside it: left alone its demo clip would be
    the phantom, and the comparison one of two different clips."""
    old = fake_checkout(tmp_path / "old", 177, 10.0)
    new = fake_checkout(tmp_path / "new", 177, 8.5)
    run = paired(str(old), str(new))
    assert run.returncode == 0, run.stderr
    assert "paired median_ms, new minus old: median -1.50 ms" in run.stdout


def test_two_checkouts_that_scored_different_clips_are_refused_not_compared(tmp_path):
    old = fake_checkout(tmp_path / "old", 176, 10.0)  # another clip: another demo version
    new = fake_checkout(tmp_path / "new", 177, 8.5)
    run = paired(str(old), str(new))
    assert run.returncode == 1
    assert "different clips (176 and 177 frames)" in run.stderr
    assert "paired" not in run.stdout.replace("bench.paired", "")
    assert "Traceback" not in run.stderr

