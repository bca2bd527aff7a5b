"""The faults of quantize.degrade on real frames, and the shipped learned quality head.

Each fault must move a real frame the way its docstring claims, monotonically in its
severity; the shipped head must load through the device runtime with its sha256 checked,
and must rank a clean real held-out frame below badly degraded copies of it on the right
branch. Fast: a few frames, no training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.models.manifest import ModelError, read_manifest, verify
from edge.models.preprocess import prepare
from edge.models.roi import Roi, find_roi, to_grey
from edge.models.runtime import load_model
from quantize import degrade as dg
from quantize.data import list_frames, read_frame, split

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "quality_head.json"
LEVELS = (0.0, 0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def frames(data_dir):
    """Three real frames: two HC18 heads (held-out patients) and a GE example screen,
    each as (grey, its clean find_roi region)."""
    _, held = split(list_frames(data_dir), seed=0)
    heads = [f for f in held if f.source == "hc18"][:2]
    screen = data_dir / "sononet" / "examples" / "FEMUR.tiff"
    out = []
    for path in [f.path for f in heads] + [screen]:
        grey = np.ascontiguousarray(to_grey(read_frame(path)))
        roi = find_roi(grey)
        assert roi is not None, path
        out.append((path.name, grey, roi))
    return out


def apply(grey, roi, kind, s, seed=0, **options):
    return dg.degrade(grey, roi, kind, s, np.random.default_rng(seed), **options)


def inside(image: np.ndarray, roi: Roi) -> np.ndarray:
    return roi.crop(image).astype(np.float64)


def outside_unchanged(before: np.ndarray, after: np.ndarray, roi: Roi) -> bool:
    mask = np.ones(before.shape, bool)
    mask[roi.y: roi.y + roi.h, roi.x: roi.x + roi.w] = False
    return np.array_equal(before[mask], after[mask])


def strictly_decreasing(values) -> bool:
    return all(b < a for a, b in zip(values, values[1:], strict=False))


def test_api_rejects_bad_input_and_is_seeded(frames):
    _, grey, roi = frames[0]
    assert dg.KINDS == ("blur", "gain", "noise", "shadow", "cutoff", "zoom")
    with pytest.raises(ValueError, match="unknown kind"):
        apply(grey, roi, "fog", 0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="outside 0..1"):
            apply(grey, roi, "blur", bad)
    with pytest.raises(ValueError, match="grey uint8"):
        apply(grey.astype(np.float32), roi, "blur", 0.5)
    for kind in dg.KINDS:
        assert np.array_equal(apply(grey, roi, kind, 0.0), grey), kind
        a, b = apply(grey, roi, kind, 0.7, seed=3), apply(grey, roi, kind, 0.7, seed=3)
        assert np.array_equal(a, b), kind
        assert not np.array_equal(a, grey), kind
        # Faults act on the ultrasound region only: the screen around it is untouched.
        assert outside_unchanged(grey, a, roi), kind
    many = dg.degrade_many(grey, roi, {"blur": 0.5, "gain": 0.5}, np.random.default_rng(0))
    assert many.shape == grey.shape and many.dtype == np.uint8


def interior(grey: np.ndarray, roi: Roi, margin: int = 15) -> np.ndarray:
    """The clean region's image pixels (quantize.degrade.footprint), away from its edge."""
    fp = dg.footprint(roi.crop(grey)).astype(np.uint8)
    return cv2.erode(fp, np.ones((margin, margin), np.uint8)) > 0


def sharpness(image: np.ndarray, roi: Roi, keep: np.ndarray) -> float:
    """Variance of the Laplacian inside the image: falls as detail is lost."""
    lap = cv2.Laplacian(roi.crop(image).astype(np.float64), cv2.CV_64F)
    return float(lap[keep].var())


def test_blur_lowers_sharpness_monotonically(frames):
    for name, grey, roi in frames:
        keep = interior(grey, roi)
        values = [sharpness(apply(grey, roi, "blur", s), roi, keep) for s in LEVELS]
        assert strictly_decreasing(values), (name, values)
        assert values[-1] < 0.1 * values[0], (name, values)


def test_gain_moves_the_mean_both_ways_and_clips(frames):
    for name, grey, roi in frames:
        up = [inside(apply(grey, roi, "gain", s, direction=1), roi).mean() for s in LEVELS]
        down = [inside(apply(grey, roi, "gain", s, direction=-1), roi).mean() for s in LEVELS]
        assert strictly_decreasing(down), (name, down)
        assert strictly_decreasing(up[::-1]), (name, up)
        assert down[-1] < 0.3 * down[0], (name, down)
        bright = inside(apply(grey, roi, "gain", 1.0, direction=1), roi)
        assert (bright == 255).mean() > 0.05, name  # the display clips, it does not wrap
    _, grey, roi = frames[0]
    with pytest.raises(ValueError, match="direction"):
        apply(grey, roi, "gain", 0.5, direction=2)


def test_noise_fills_dark_fluid_and_spares_bright_echoes(frames):
    for name, grey, roi in frames:
        clean = inside(grey, roi)
        image = dg.footprint(roi.crop(grey)) > 0  # noise is added inside the sector only
        dark = image & (clean <= np.percentile(clean[image], 20))
        bright = image & (clean >= np.percentile(clean[image], 95))
        floor, echoes = [], []
        for s in LEVELS:
            noisy = inside(apply(grey, roi, "noise", s), roi)
            floor.append(noisy[dark].mean())
            echoes.append(noisy[bright].mean())
        assert strictly_decreasing(floor[::-1]), (name, floor)
        assert floor[-1] > floor[0] + 30, (name, floor)
        assert abs(echoes[-1] - echoes[0]) < 0.15 * echoes[0], (name, echoes)


def test_shadow_darkens_a_ray_below_the_occluder(frames):
    for name, grey, roi in frames:
        clean = inside(grey, roi)
        h, w = clean.shape
        # The ray's foot at the bottom centre; above the occluder's shallowest depth nothing
        # changes.
        foot = (slice(int(0.9 * h), h), slice(int(0.49 * w), int(0.51 * w)))
        top = slice(0, int(dg.SHADOW_START[0] * h) - 2)
        areas = []
        for s in LEVELS[1:]:
            out = inside(apply(grey, roi, "shadow", s, centre=0.5), roi)
            assert out[foot].mean() <= dg.SHADOW_RESIDUAL * clean[foot].mean() + 1.0, name
            assert np.array_equal(out[top], clean[top]), name
            areas.append(float((out < 0.5 * clean - 1).mean()))
        assert strictly_decreasing(areas[::-1]), (name, areas)


def test_cutoff_slides_the_anatomy_under_a_fan_that_stays_put(frames):
    """The probe moved, not the screen: the image slides, what passes the fan's side is
    lost, other tissue comes in behind it (the frame's own far side, or speckle; nothing
    only on request), and the fan's outline does not move."""
    for name, grey, roi in frames:
        clean = roi.crop(grey)
        h, w = clean.shape
        fan = dg.footprint(clean) > 0
        seam = int(np.ceil(3 * max(1.0, 0.015 * w))) + 1  # the soft seam's half-width
        grow = np.ones((2 * seam + 1, 2 * seam + 1), np.uint8)
        rolled_in = 0
        for filler in ("roll", "tissue", "black"):
            incoming = []
            for s in LEVELS[1:]:
                d = int(round(s * dg.CUTOFF_SHIFT_AT_ONE * w))
                out = roi.crop(apply(grey, roi, "cutoff", s, direction="right", filler=filler))
                assert (out[~fan] == 0).all(), name  # the screen beside the fan stays black
                # Away from the seam and the fans' sides, the anatomy is the clean one, slid.
                both = np.zeros((h, w), np.uint8)
                both[:, d + seam:] = fan[:, d + seam:] & fan[:, seam: w - d]
                both = cv2.erode(both, grow) > 0
                slid = np.roll(clean, d, 1).astype(int)
                assert np.abs(out.astype(int) - slid)[both].max() <= 1, (name, filler)
                band = np.zeros((h, w), bool)
                band[:, : max(1, d - seam)] = fan[:, : max(1, d - seam)]
                if filler == "black":
                    assert (out[band] == 0).all(), name
                elif filler == "roll":  # the far side's own pixels, where it has image
                    far = band & (cv2.erode(np.roll(fan, d, 1).astype(np.uint8), grow) > 0)
                    rolled_in += int(far.sum())
                    if far.any():
                        assert np.abs(out.astype(int) - slid)[far].max() <= 1, name
                else:
                    assert out[band].mean() > 20, name
                incoming.append(float(band.sum()))
                down = roi.crop(apply(grey, roi, "cutoff", s, direction="down", filler=filler))
                assert (down[~fan] == 0).all(), name
            assert strictly_decreasing(incoming[::-1]), (name, filler, incoming)
        assert rolled_in > 0.01 * h * w, name  # the far side's image did come in
    with pytest.raises(ValueError, match="filler"):
        apply(grey, roi, "cutoff", 0.5, filler="mirror")


def test_zoom_shrinks_the_anatomy_about_the_transducer(frames):
    for name, grey, roi in frames:
        clean = roi.crop(grey)
        h, w = clean.shape
        for s in (0.5, 1.0):
            z = dg.ZOOM_AT_ONE ** -s
            sw, sh = round(w * z), round(h * z)
            out = roi.crop(apply(grey, roi, "zoom", s)).astype(np.float64)
            small = cv2.resize(clean, (sw, sh), interpolation=cv2.INTER_AREA).astype(float)
            left = (w - sw) // 2
            # The shrunken image (clear of its blended edge) is the whole clean region at z
            # times its size, under the transducer at the top centre, wherever both it and
            # the clean sector are image.
            fp = dg.footprint(clean).astype(np.uint8)
            m = int(0.06 * w)
            shrunk = np.zeros_like(fp)
            shrunk[:sh, left: left + sw] = cv2.resize(fp, (sw, sh),
                                                      interpolation=cv2.INTER_NEAREST)
            shrunk[0] = shrunk[1]
            keep = (cv2.erode(shrunk, np.ones((2 * m + 1, 2 * m + 1), np.uint8)) > 0) & (fp > 0)
            keep[sh - m:] = False
            placed = np.zeros_like(out)
            placed[:sh, left: left + sw] = small
            assert keep.mean() > 0.3 * z * z, (name, s)
            assert np.abs(out[keep] - placed[keep]).mean() < 2.0, (name, s)
            # ... and the clean region's own content no longer fills the region: the
            # image at full size differs from the zoomed one almost everywhere.
            assert np.abs(out - clean).mean() > 10, (name, s)


# --- the shipped model -------------------------------------------------------------------

needs_model = pytest.mark.skipif(not SHIPPED.exists(), reason="models/quality_head.json not "
                                 "built yet (make models)")


@needs_model
def test_shipped_manifest_loads_and_verifies(tmp_path):
    manifest = read_manifest(SHIPPED)
    verify(manifest)
    model = load_model(manifest, "litert", 2)
    assert manifest.task == "quality_regression" and manifest.version == "1.1.0"
    assert list(manifest.labels) == ["blur", "gain", "noise", "shadow", "cutoff", "zoom"]
    spec = manifest.preprocessing
    assert (spec.roi, spec.resize, spec.normalise) == ("auto", "area", "unit")
    assert manifest.input_shape == (1, 1, spec.height, spec.width)
    assert model._input["dtype"] == np.int8 and model._output["dtype"] == np.int8
    raw = manifest.raw
    assert raw["output"] == {"shape": [1, 6], "dtype": "int8", "kind": "logits"}
    for kind in manifest.labels:
        branch = raw["severity"][kind]
        assert branch["at_1"] and branch["model"], kind
        spear = branch["metrics"]["heldout_spearman"]
        assert -1 <= spear["value"] <= 1 and spear["how"], kind
    auroc = raw["metrics"]["heldout_auroc_usable_vs_unusable"]
    assert 0.5 < auroc["value"] <= 1 and "usable" in auroc["how"]
    # A damaged copy is refused by the same check the device runs.
    shutil.copy(SHIPPED, tmp_path / SHIPPED.name)
    blob = bytearray((REPO / "models" / raw["file"]).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / raw["file"]).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="sha256"):
        verify(read_manifest(tmp_path / SHIPPED.name))
    assert json.loads(SHIPPED.read_text())["sha256"] == manifest.sha256


def severities(model, image: np.ndarray) -> np.ndarray:
    """The device's path: find_roi on the frame itself, prepare, run, sigmoid."""
    spec = model.manifest.preprocessing
    return 1 / (1 + np.exp(-model.run(prepare(image, find_roi(image), spec))[0]))


# (fault, options, branch): a clean frame must score below these copies on the branch.
FAULTS = (("blur", {}, "blur"), ("gain", {"direction": -1}, "gain"),
          ("gain", {"direction": 1}, "gain"), ("noise", {}, "noise"),
          ("shadow", {"centre": 0.5}, "shadow"), ("cutoff", {"direction": "left"}, "cutoff"),
          ("zoom", {}, "zoom"))


@needs_model
def test_shipped_head_ranks_clean_below_degraded_on_the_right_branch(frames):
    model = load_model(read_manifest(SHIPPED), "litert", 2)
    labels = list(model.manifest.labels)
    for name, grey, roi in frames:
        clean = severities(model, grey)
        for kind, options, branch in FAULTS:
            k = labels.index(branch)
            bad = severities(model, apply(grey, roi, kind, 0.9, seed=1, **options))
            assert bad[k] > clean[k] + 0.2, (name, kind, options, clean[k], bad[k])


def test_the_quality_heads_cached_views_are_reused_exactly_and_a_damaged_chunk_is_named(
        data_dir, tmp_path):
    """`make models` keeps the quality head's degraded views in chunks and reuses them on
    the next run. A reused chunk gives the very views it was built with; one cut short
    (a disk that filled during a copy) is one line naming the chunk and what to do, where
    it was a zipfile traceback."""
    from quantize import quality_head as qh
    from quantize.data import DataError

    _, held = split(list_frames(data_dir), seed=0)
    two = [f for f in held if f.source == "hc18"][:2]
    settings = qh.ViewSettings(views_hc18=2, chunk=1)
    built = qh.build_pool(two, tmp_path / "pool", 5, settings)
    assert len(built["x"]) == 4
    reused = qh.build_pool(two, tmp_path / "pool", 5, settings)
    assert all(np.array_equal(built[k], reused[k]) for k in built)

    chunk = tmp_path / "pool" / "chunk001.npz"
    chunk.write_bytes(chunk.read_bytes()[:300])
    with pytest.raises(DataError, match=r"chunk001.npz: not a readable cache"):
        qh.build_pool(two, tmp_path / "pool", 5, settings)
