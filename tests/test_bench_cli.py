"""The benchmark modules the README names answer --help instead of running or crashing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_worker_says_its_usage(capsys):
    from bench import worker

    assert worker.main(["--help"]) == 0
    assert "bench.worker path MODELS_DIR" in capsys.readouterr().out
    assert worker.main([]) == 2
    assert "usage:" in capsys.readouterr().err
    assert worker.main(["nonsense", "a", "b", "c"]) == 2
    assert worker.main(["model", "m.json", "2", "frame.png"]) == 2  # RUNS missing


def test_bench_web_help_does_not_start_the_benchmark():
    done = subprocess.run([sys.executable, "-m", "bench.web", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: python -m bench.web" in done.stdout
    assert "## The midwife's page" not in done.stdout
