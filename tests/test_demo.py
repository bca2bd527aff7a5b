"""The demo clip: real screens when ../shared/data is there, a labelled phantom otherwise.

Every build goes into tmp dirs; data is copied only into tmp dirs, never into the repo.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.demo import (
    REPO_ROOT,
    SCREEN_H,
    SCREEN_W,
    SONONET_BMODE,
    build_demo_clip,
    default_cache_dir,
    default_data_dir,
)
from edge.capture.sources import open_source

DATA = default_data_dir()
EXAMPLES = DATA / "sononet" / "examples"
HC_IMAGES = DATA / "hc18" / "images"
needs_data = pytest.mark.skipif(not (EXAMPLES.is_dir() and HC_IMAGES.is_dir()),
                                reason=f"real data not found under {DATA}")


def _small_data(root: Path, n_tiff: int = 2, n_hc: int = 3) -> Path:
    """A tiny copy of the real layout in tmp, so content-change tests stay fast."""
    (root / "sononet" / "examples").mkdir(parents=True)
    (root / "hc18" / "images").mkdir(parents=True)
    for p in sorted(EXAMPLES.glob("*.tiff"))[:n_tiff]:
        shutil.copy(p, root / "sononet" / "examples" / p.name)
    for p in sorted(HC_IMAGES.glob("*.png"))[:n_hc]:
        shutil.copy(p, root / "hc18" / "images" / p.name)
    return root


def _read_all(path: Path) -> list[np.ndarray]:
    with open_source(path) as src:
        frames = list(src)
    assert all(f.ok for f in frames)
    return [f.image for f in frames]


def test_phantom_without_data_says_so_and_plays(tmp_path):
    no_data = tmp_path / "no_data"
    no_data.mkdir()
    t0 = time.monotonic()
    clip = build_demo_clip(tmp_path / "cache", no_data)
    assert time.monotonic() - t0 < 10
    assert clip.kind == "phantom" and "phantom" in clip.description
    assert str(no_data) in clip.description
    assert 100 <= clip.frames <= 200 and len(clip.frame_sources) == clip.frames
    imgs = _read_all(clip.path)
    assert len(imgs) == clip.frames
    assert imgs[0].shape == (SCREEN_H, SCREEN_W, 3)
    # the sector has speckle texture; the corners of the screen are black
    assert imgs[60][300:500, 400:620].std() > 5 and imgs[60][700:, :60].max() < 40
    assert "phantom:head" in clip.frame_sources and "phantom:background" in clip.frame_sources


@needs_data
def test_real_clip_sweeps_all_example_screens_and_head_frames(tmp_path):
    t0 = time.monotonic()
    clip = build_demo_clip(tmp_path / "cache", DATA)
    assert time.monotonic() - t0 < 10
    assert clip.kind == "real" and "phantom" not in clip.description
    assert 100 <= clip.frames <= 200
    sono = {s for s in clip.frame_sources if s.startswith("sononet:")}
    heads = {s for s in clip.frame_sources if s.startswith("hc18:")}
    assert len(sono) == 13 and 20 <= len(heads) <= 40
    assert "transition" in clip.frame_sources

    imgs = _read_all(clip.path)
    assert len(imgs) == clip.frames and imgs[0].shape == (SCREEN_H, SCREEN_W, 3)
    # the first frame of the 4CH screen is the real TIFF, unmoved, centred on the screen
    i = clip.frame_sources.index("sononet:4CH")
    tiff = cv2.imread(str(EXAMPLES / "4CH.tiff"))
    oy, ox = (SCREEN_H - tiff.shape[0]) // 2, (SCREEN_W - tiff.shape[1]) // 2
    ys, xs = SONONET_BMODE
    shown = imgs[i][oy + ys.start:oy + ys.stop, ox + xs.start:ox + xs.stop]
    assert np.abs(shown.astype(int) - tiff[ys, xs].astype(int)).mean() < 6  # MJPG only
    # and the next frames move slightly: a sweep, not a still
    nxt = imgs[i + 1][oy + ys.start:oy + ys.stop, ox + xs.start:ox + xs.stop]
    assert np.abs(nxt.astype(int) - shown.astype(int)).mean() > 2


@needs_data
def test_build_is_deterministic_and_reused_from_cache(tmp_path):
    data = _small_data(tmp_path / "data")
    a = build_demo_clip(tmp_path / "a", data)
    b = build_demo_clip(tmp_path / "b", data)
    assert a.kind == "real" and a.content_hash == b.content_hash
    assert a.frame_sources == b.frame_sources
    assert all(np.array_equal(x, y) for x, y in zip(_read_all(a.path), _read_all(b.path),
                                                    strict=True))

    mtime = a.path.stat().st_mtime_ns
    again = build_demo_clip(tmp_path / "a", data)
    assert again.reused and again.path == a.path and a.path.stat().st_mtime_ns == mtime


@needs_data
def test_changed_data_rebuilds_and_keeps_one_clip_in_cache(tmp_path):
    data = _small_data(tmp_path / "data")
    cache = tmp_path / "cache"
    first = build_demo_clip(cache, data)
    extra = sorted(HC_IMAGES.glob("*.png"))[10]
    shutil.copy(extra, data / "hc18" / "images" / extra.name)
    second = build_demo_clip(cache, data)
    assert second.content_hash != first.content_hash and not second.reused
    assert not first.path.exists() and second.path.exists()
    assert sorted(p.suffix for p in cache.glob("demo-*")) == [".avi", ".json"]


@needs_data
def test_folder_format_when_mjpg_is_not_available(tmp_path):
    clip = build_demo_clip(tmp_path / "cache", _small_data(tmp_path / "data"), fmt="folder")
    assert clip.path.is_dir()
    files = sorted(clip.path.glob("frame_*.jpg"))
    assert len(files) == clip.frames
    assert len(_read_all(clip.path)) == clip.frames


@needs_data
def test_open_source_demo_uses_env_data_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SONOEDGE_DATA", str(_small_data(tmp_path / "data")))
    monkeypatch.setenv("SONOEDGE_DEMO_CACHE", str(tmp_path / "cache"))
    with open_source("demo") as src:
        frames = list(src)
    assert src.name == "demo:real" and src.demo.kind == "real"
    assert len(frames) == src.demo.frames and all(f.ok for f in frames)
    assert src.demo.path.parent == tmp_path / "cache"


def test_open_source_demo_without_data_logs_phantom(tmp_path, monkeypatch, caplog):
    (tmp_path / "nothing").mkdir()
    monkeypatch.setenv("SONOEDGE_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("SONOEDGE_DEMO_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="edge.capture.sources"):
        src = open_source("demo")
        first = next(iter(src))
        src.close()
    assert src.name == "demo:phantom" and first.ok and first.source == "demo:phantom"
    assert any("phantom" in r.getMessage() and r.levelno >= logging.WARNING
               for r in caplog.records)


def test_default_cache_is_git_ignored(monkeypatch):
    monkeypatch.delenv("SONOEDGE_DEMO_CACHE", raising=False)
    cache = default_cache_dir()
    assert REPO_ROOT in cache.parents
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    probe = cache / "demo-real-0000.avi"
    r = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=REPO_ROOT,
                       timeout=10, check=False)
    assert r.returncode == 0, f"{probe} would be committable"


@needs_data
def test_the_demos_heads_are_measured_at_their_own_scale(tmp_path, monkeypatch):
    """`make run` showed no HC at all: the probe's calibration ([biometry] pixel_size_mm)
    is unknown on a fresh box, and the demo's HC18 heads each have their own. The clip
    knows each head's mm per screen pixel (HC18's pixel size, as scaled and zoomed onto its
    screen): its heads are measured with it, near what HC18's sonographers measured, and
    nothing else in the clip claims one."""
    import csv

    from edge.config import load_settings
    from edge.scorer import make_scorer

    monkeypatch.setenv("SONOEDGE_DATA", str(DATA))
    monkeypatch.setenv("SONOEDGE_DEMO_CACHE", str(tmp_path / "cache"))
    with (DATA / "hc18" / "training_set_pixel_size_and_HC.csv").open() as f:
        truth = {row["filename"]: float(row["head circumference (mm)"])
                 for row in csv.DictReader(f)}
    scorer = make_scorer(load_settings())
    assert not scorer.head.pixel_size_mm  # a fresh box: the probe's calibration unknown
    errors, with_size = [], 0
    with open_source("demo") as src:
        for frame in src:
            label = src.demo.frame_sources[frame.index]
            assert bool(frame.pixel_size_mm) == label.startswith("hc18:"), label
            with_size += bool(frame.pixel_size_mm)
            bio = scorer.score(frame).to_dict().get("biometry")
            if bio and bio.get("hc_mm") and label.startswith("hc18:"):
                hc = truth[label.split(":", 1)[1]]
                errors.append(abs(bio["hc_mm"] - hc) / hc)
    assert with_size >= 60 and len(errors) >= 20
    assert float(np.median(errors)) < 0.03, sorted(errors)
    # a probe's calibration set in the config measures none of the clip's other screens
    # (SonoNet's brain planes are of another scale): the clip knows its frames' scales
    probe = make_scorer(load_settings(None, {"biometry": {"pixel_size_mm": 0.15}}))
    with open_source("demo") as src:
        for frame in src:
            bio = probe.score(frame).to_dict().get("biometry")
            if not src.demo.frame_sources[frame.index].startswith("hc18:"):
                assert frame.pixel_size_mm == 0.0 and not (bio or {}).get("hc_mm")


@needs_data
def test_a_frames_own_scale_out_of_the_plausible_range_measures_nothing(data_dir):
    from dataclasses import replace

    from edge.config import load_settings
    from edge.scorer import make_scorer

    scorer = make_scorer(load_settings())
    with open_source(data_dir / "hc18" / "images" / "200_HC.png") as src:
        frame = next(iter(src))
    assert scorer.score(replace(frame, pixel_size_mm=0.13)).to_dict()["biometry"]["hc_mm"]
    for bad in (5.0, float("nan"), float("inf"), -0.1, 0.0):
        got = scorer.score(replace(frame, pixel_size_mm=bad)).to_dict().get("biometry")
        assert not (got or {}).get("hc_mm"), bad


@needs_data
def test_a_cached_clips_damaged_pixel_sizes_are_rebuilt_or_left_unknown(tmp_path):
    import json

    data = _small_data(tmp_path / "data")
    csv_name = "training_set_pixel_size_and_HC.csv"
    shutil.copy(DATA / "hc18" / csv_name, data / "hc18" / csv_name)
    cache = tmp_path / "cache"
    clip = build_demo_clip(cache, data)
    meta = next(cache.glob("demo-*.json"))
    body = json.loads(meta.read_text())
    sizes = body["pixel_sizes"]
    heads = [i for i, v in enumerate(sizes) if v is not None]
    assert heads and clip.pixel_sizes == tuple(sizes)
    for junk in ("0.1", -1, 0, True, None, [0.1]):  # numbers out of range: the scorer's
        sizes[heads[0]] = junk
        meta.write_text(json.dumps({**body, "pixel_sizes": sizes}))
        again = build_demo_clip(cache, data)
        assert again.reused and again.pixel_sizes[heads[0]] is None, junk
    meta.write_text(json.dumps({**body, "pixel_sizes": sizes[:-1]}))  # not one per frame
    again = build_demo_clip(cache, data)
    assert not again.reused and again.pixel_sizes == clip.pixel_sizes
