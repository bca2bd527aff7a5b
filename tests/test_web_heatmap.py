"""Where the plane model looked: its class maps, from the manifest to the heatmap.

Today's shipped student has only logits. A tiny untrained int8 fixture with the same two
outputs (tests/make_two_output_model.py) tests the runtime and the scorer now; the last
test runs on the shipped model itself as soon as its manifest declares class maps, and
fails if they are not SonoNet's (logits = their mean) or do not look at the head.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edge.capture.sources import Frame
from edge.config import load_settings
from edge.models.manifest import ModelError, find_manifest, read_manifest
from edge.models.planes import class_map, class_maps_layout, heatmap
from edge.models.preprocess import prepare
from edge.models.roi import find_roi
from edge.models.runtime import load_model
from edge.scorer import make_scorer
from tests.conftest import MODELS, PLANE_MODEL
from tests.web_harness import MAPS_OUTPUTS, maps_models_dir


@pytest.fixture(scope="module")
def maps_dir(tmp_path_factory):
    return maps_models_dir(tmp_path_factory.mktemp("maps") / "models")


@pytest.fixture(scope="module")
def head(data_dir):
    return cv2.imread(str(data_dir / "hc18" / "images" / "250_HC.png"))


def _logits_are_the_maps_mean(model, x) -> None:
    out = model.run_all(x)
    maps, logits = out["class_maps"], out["logits"]
    steps = [d["quantization"][0] for d in model._outputs.values()]
    assert np.abs(maps.mean(axis=(2, 3)) - logits).max() <= 3 * max(steps)
    assert np.array_equal(model.run(x), logits)


def test_the_runtime_reads_every_declared_output(maps_dir, head):
    model = load_model(find_manifest(maps_dir, PLANE_MODEL), "litert", 2)
    assert model.output_names == ("logits", "class_maps")
    x = prepare(head, find_roi(head), model.manifest.preprocessing)
    out = model.run_all(x)
    assert out["logits"].shape == (1, 14) and out["class_maps"].shape == (1, 14, 14, 18)
    assert all(v.dtype == np.float32 for v in out.values())  # dequantized
    _logits_are_the_maps_mean(model, x)


@pytest.mark.parametrize("outputs, needle", [
    ([{"name": "logits", "shape": [1, 14]}], "declares 1 outputs, the model has 2"),
    ([{"name": "logits", "shape": [1, 14]}, {"name": "class_maps", "shape": [1, 14, 7, 9]}],
     "is not an output of the model"),
    ([{"name": "logits", "shape": [1, 14]}, {"name": "logits", "shape": [1, 14, 14, 18]}],
     "declared twice"),
])
def test_a_wrong_outputs_declaration_is_one_line(tmp_path, outputs, needle):
    models = maps_models_dir(tmp_path / "models", outputs)
    with pytest.raises(ModelError, match=needle):
        load_model(find_manifest(models, PLANE_MODEL), "litert", 1)


def test_class_maps_must_have_one_map_per_label(tmp_path):
    bad = [MAPS_OUTPUTS[0], {**MAPS_OUTPUTS[1], "shape": [1, 14, 14, 18], "layout": "NHWC"}]
    manifest = read_manifest(maps_models_dir(tmp_path / "models", bad) / "plane_student.json")
    with pytest.raises(ModelError, match="one map per label"):
        class_maps_layout(manifest)


def test_the_scorer_keeps_the_named_plane_s_map(maps_dir, head):
    scorer = make_scorer(load_settings(None, {"models": {"dir": str(maps_dir)}}))
    assert scorer.has_class_maps
    result = scorer.score(Frame("250_HC.png", 0, head, 0.0, 0.0))
    top = result.plane if result.plane != "uncertain" else None
    assert scorer.last_class_map.shape == (14, 18)
    assert "class_map" not in json.dumps(result.to_dict())  # not journaled
    x = prepare(head, find_roi(head), scorer.manifest.preprocessing)
    maps = scorer.model.run_all(x)["class_maps"]
    probs = scorer.model.run_all(x)["logits"]
    index = int(np.argmax(probs)) if top is None else scorer.manifest.labels.index(top)
    assert np.array_equal(scorer.last_class_map, class_map(maps, index))
    shown = heatmap(scorer.last_class_map)
    assert shown.dtype == np.uint8 and shown.max() == 255


def test_today_s_shipped_model_says_it_has_no_maps():
    manifest = read_manifest(MODELS / f"{PLANE_MODEL}.json")
    if class_maps_layout(manifest) is None:
        scorer_settings = load_settings(None)
        assert not make_scorer(scorer_settings).has_class_maps


def _head_mask(data_dir, name: str, shape) -> np.ndarray:
    outline = cv2.imread(str(data_dir / "hc18" / "annotations" /
                             name.replace(".png", "_Annotation.png")), cv2.IMREAD_GRAYSCALE)
    points = np.argwhere(outline > 0)[:, ::-1].astype(np.float32)
    mask = np.zeros(shape[:2], np.uint8)
    cv2.ellipse(mask, cv2.fitEllipse(points), 255, -1)
    return mask > 0


def test_the_shipped_plane_model_s_heatmap_looks_at_the_head(data_dir):
    """Runs once models/plane_student.json declares class_maps (see README, "Where the
    plane model looked"); until then it says why it is skipped."""
    manifest = read_manifest(MODELS / f"{PLANE_MODEL}.json")
    layout = class_maps_layout(manifest)
    if layout is None:
        pytest.skip(f"{manifest.ident} declares no class_maps output yet")
    model = load_model(manifest, "litert", 2)
    names = sorted(p.name for p in (data_dir / "hc18" / "images").glob("*_HC.png"))[::40][:20]
    inside = 0
    for name in names:
        image = cv2.imread(str(data_dir / "hc18" / "images" / name))
        roi = find_roi(image)
        x = prepare(image, roi, manifest.preprocessing)
        _logits_are_the_maps_mean(model, x)
        out = model.run_all(x)
        top = int(np.argmax(out["logits"]))
        plane_map = class_map(out["class_maps"], top, layout)
        rx, ry, rw, rh = roi.as_list() if roi else (0, 0, image.shape[1], image.shape[0])
        big = cv2.resize(plane_map, (rw, rh), interpolation=cv2.INTER_LINEAR)
        py, px = np.unravel_index(int(np.argmax(big)), big.shape)
        inside += bool(_head_mask(data_dir, name, image.shape)[ry + py, rx + px])
    assert inside >= 0.8 * len(names), f"the map peaks on the head in {inside}/{len(names)}"
