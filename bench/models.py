"""Model speed and the device path, measured in one run so ratios compare like with like.

Each (model, threads) pair runs in a fresh subprocess, so peak RSS is that model's own and
one model's warm caches do not flatter the next. Inputs are real frames through the device
preprocessing. Timing is wall-clock per invoke: median and p90 over a fixed count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

@dataclass(frozen=True)
class Timing:
    label: str
    threads: int
    median_ms: float
    p90_ms: float
    rss_mb: float
    macs: int | None = None  # multiply-adds per frame, from the model's manifest

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms


def _worker(*args: str, env: dict[str, str] | None = None) -> dict:
    """`env`: the worker's environment, e.g. bench.isa's with AVX-512 and VNNI hidden."""
    proc = subprocess.run([sys.executable, "-m", "bench.worker", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench worker failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_model(label: str, manifest: Path, threads: int, frame: Path, runs: int,
               env: dict[str, str] | None = None) -> Timing:
    data = _worker("model", str(manifest), str(threads), str(frame), str(runs), env=env)
    return Timing(label, threads, data["median_ms"], data["p90_ms"], data["rss_mb"],
                  manifest_macs(manifest))


def manifest_macs(manifest: Path) -> int | None:
    """The multiply-adds a manifest records (`architecture.macs`), if any: latency is
    reported beside them because int8 speed depends on the CPU and MACs do not."""
    try:
        macs = json.loads(Path(manifest).read_text()).get("architecture", {}).get("macs")
    except (OSError, ValueError, AttributeError):
        return None
    return int(macs) if isinstance(macs, (int, float)) else None


def time_device_path(manifest: Path, threads: int, pixel_size_mm: float = 0.0,
                     paced: bool = False, decoded: bool = False,
                     env: dict[str, str] | None = None) -> dict:
    return _worker("path", str(manifest.parent), manifest.stem, str(threads),
                   str(pixel_size_mm), *(["paced"] if paced else []),
                   *(["decoded"] if decoded else []), env=env)


def time_idle(models_dir: Path, names: list[str], threads: int, frame: Path) -> dict:
    """The same models on the same frame back to back, paced asleep, paced spinning
    (bench.worker idle): the host's charge for idle cores, apart from the code's."""
    return _worker("idle", str(models_dir), str(threads), str(frame), *names)


def time_passes(manifest: Path, threads: int, margin: float, max_zoom: float,
                frames: list[tuple[Path, float]]) -> dict:
    """ms per head frame of each pass option of the head segmenter (bench.worker passes)."""
    return _worker("passes", str(manifest), str(threads), str(margin), str(max_zoom),
                   *(f"{path}={pixel}" for path, pixel in frames))


def model_table(models: list[tuple[str, Path]], frame: Path, runs: int = 200,
                env: dict[str, str] | None = None) -> list[Timing]:
    return [time_model(label, path, threads, frame, runs, env)
            for threads in (1, 2) for label, path in models]


def format_table(rows: list[Timing]) -> str:
    lines = ["| model | M MACs | threads | median ms | p90 ms | fps | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        macs = f"{row.macs / 1e6:.1f}" if row.macs else "-"
        lines.append(f"| {row.label} | {macs} | {row.threads} | {row.median_ms:.2f} | "
                     f"{row.p90_ms:.2f} | {row.fps:.0f} | {row.rss_mb:.0f} |")
    return "\n".join(lines)
