"""The per-frame path of two checkouts, in turn, on the same box: `python -m bench.paired`.

A shared box's speed drifts within minutes (a VM's host), so two `make bench` runs an hour
apart cannot say whether a change made the path shorter. This runs `bench.worker path`
(the whole per-frame path with the audit and head biometry on the demo clip, as `make
bench` runs it) on the OLD and the NEW checkout in turn, RUNS times each, and prints the
medians of each side and the paired differences, run by run. Each side runs in its own
checkout with its own code and models, on this venv's Python, and on the same demo clip:
both read the shared data this checkout reads (a checkout elsewhere, a `git worktree` in
/tmp, has no ../shared beside it and would score the synthetic phantom clip instead), and
two sides that scored different numbers of frames are refused, not compared.

    python -m bench.paired OLD_DIR NEW_DIR [--runs 6] [--pixel-size 0.15]

OLD_DIR is, for example, `git worktree add /tmp/old <commit>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edge.capture.demo import default_data_dir
from quantize.args import bounded_float, bounded_int

KEYS = ("median_ms", "p90_ms", "head_frame_median_ms", "head_frame_p90_ms", "capture_ms")


def path_once(root: Path, pixel_size_mm: float, data_dir: Path) -> dict:
    """One fresh process's per-frame path figures in the checkout at `root`, its demo clip
    built from `data_dir`."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.worker", "path", "models", "plane_student", "2",
         str(pixel_size_mm)], cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "SONOEDGE_DATA": str(data_dir)},
        capture_output=True, text=True, timeout=600, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{root}: bench.worker failed: {out.stderr.strip()[-300:]}")
    return json.loads(lines[-1])


def checkout(text: str) -> Path:
    """An argparse `type`: a folder holding a checkout's bench/worker.py."""
    root = Path(text).resolve() if text.strip() else None
    if root is None or not (root / "bench" / "worker.py").is_file():
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a checkout with "
                                         "bench/worker.py")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("old", type=checkout)
    parser.add_argument("new", type=checkout)
    parser.add_argument("--runs", type=bounded_int(1, 50), default=6)
    parser.add_argument("--pixel-size", type=bounded_float(0.01, 1.0), default=0.15)
    args = parser.parse_args(argv)
    runs = args.runs
    data_dir = default_data_dir()
    if not (data_dir / "sononet").is_dir():
        print(f"bench.paired: {data_dir}: no shared data (the demo clip would be the phantom)",
              file=sys.stderr)
        return 1
    sides = {"old": args.old, "new": args.new}
    rows: dict[str, list[dict]] = {"old": [], "new": []}
    try:
        for _ in range(runs):
            for name, root in sides.items():
                data = path_once(root, args.pixel_size, data_dir)
                rows[name].append(data)
                print(time.strftime("%H:%M:%S"), name,
                      {k: round(data.get(k, float("nan")), 2) for k in KEYS}, flush=True)
            clips = {name: rows[name][-1].get("frames") for name in sides}
            if clips["old"] != clips["new"]:
                raise RuntimeError(f"the two checkouts scored different clips ({clips['old']} "
                                   f"and {clips['new']} frames): not a paired comparison")
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        print(f"bench.paired: {exc}", file=sys.stderr)
        return 1
    for name, root in sides.items():
        print(f"{name} ({root}): medians of {runs}:",
              {k: round(statistics.median(r.get(k, float("nan")) for r in rows[name]), 2)
               for k in KEYS})
    for key in KEYS[:4]:
        diffs = [b[key] - a[key] for a, b in zip(rows["old"], rows["new"], strict=True)]
        print(f"paired {key}, new minus old: median {statistics.median(diffs):+.2f} ms "
              f"(runs: {', '.join(f'{d:+.2f}' for d in diffs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
