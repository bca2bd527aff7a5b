"""Which standard plane a frame shows: the plane model's answer as a small result.

No I/O here: a frame and its region in, a `PlaneResult` out. The softmax temperature and
the abstain threshold come from the model's manifest (`thresholds`), so a recalibrated
model brings its own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.models.manifest import Manifest, ModelError
from edge.models.preprocess import prepare
from edge.models.roi import Roi
from edge.models.runtime import Model
from wire.schema import UNCERTAIN  # the wire's word for an abstention, also on the device
from wire.shown import shown

CLASS_MAPS = "class_maps"  # the optional second output: SonoNet's per-class maps
TASK = "plane_classification"


@dataclass(frozen=True)
class PlaneResult:
    plane: str  # one of the manifest's labels, or "uncertain" below the abstain threshold
    confidence: float  # calibrated probability of the top label
    top_label: str  # the top label even when abstaining, for the journal
    probabilities: tuple[float, ...]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities over the last axis (one row of logits, or a batch of rows): the device
    and the toolchain's calibration share this one function and so the same temperature."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def plane_from_output(manifest: Manifest, output: np.ndarray) -> PlaneResult:
    """The model's raw output (logits or probabilities, per the manifest) as a result."""
    if manifest.output_kind == "logits":
        probs = softmax(np.reshape(output, -1), manifest.setting("temperature", 1.0))
    else:
        probs = np.asarray(output, dtype=np.float64).reshape(-1)
    top = int(np.argmax(probs))
    confidence = float(probs[top])
    label = manifest.labels[top]
    abstain_below = manifest.setting("abstain_below", 0.0)
    plane = label if confidence >= abstain_below else UNCERTAIN
    return PlaneResult(plane, confidence, label, tuple(float(p) for p in probs))


def check_plane_model(manifest: Manifest) -> None:
    """The manifest is a plane classifier (its task, its class maps' declaration), or one
    line naming it: `[models] plane` naming the head segmenter ran its per-pixel map as
    plane scores and ended every frame in an IndexError."""
    if manifest.task != TASK:
        raise ModelError(f"{manifest.path}: task {shown(manifest.task)} is not {TASK!r}")
    class_maps_layout(manifest)


def group_mass(labels: tuple[str, ...], probabilities: tuple[float, ...],
               group: frozenset[str]) -> float:
    """The probability the model gives the planes of `group` together."""
    return sum(p for label, p in zip(labels, probabilities, strict=False) if label in group)


def settle_within_group(result: PlaneResult, labels: tuple[str, ...], group: frozenset[str],
                        abstain_below: float) -> PlaneResult:
    """An abstention that is only a split between planes of one group becomes the group's
    likelier plane, with the group's combined probability.

    The head planes are the case: SonoNet's transventricular and transcerebellar planes are
    neighbouring axial sections, both measured for biometry, and a head the model gives 45%
    and 40% is a head plane it is sure of, not a frame to throw away. Measured on held-out
    HC18 heads: 12 of 264 clean head frames were abstentions of this kind (see the README).
    """
    if result.plane != UNCERTAIN or result.top_label not in group:
        return result
    mass = group_mass(labels, result.probabilities, group)
    if mass < abstain_below:
        return result
    return PlaneResult(result.top_label, float(mass), result.top_label, result.probabilities)


def classify_plane(model: Model, image: np.ndarray, roi: Roi | None) -> PlaneResult:
    manifest = model.manifest
    return plane_from_output(manifest, model.run(prepare(image, roi, manifest.preprocessing)))


# --------------------------------------------------------------------------- class maps
#
# Where the plane model looked. A SonoNet-style model ends in one map per class (a 1x1
# convolution) and takes their global mean as its logits, so the map of the named plane is
# its class-localisation heatmap (Baumgartner et al., IEEE TMI 2017). A model exposes them
# as a second output declared in its manifest:
#
#   "outputs": [{"name": "logits", "shape": [1, 14], "dtype": "int8"},
#               {"name": "class_maps", "shape": [1, 14, h, w], "dtype": "int8",
#                "layout": "NCHW"}]
#
# "outputs"[0] is the primary output (the same as "output"); class_maps has one map per
# label in the labels' order, "NCHW" (the default) or "NHWC", and covers the model's whole
# input (the region, stretched to the input size). The logits must be the mean of the maps
# over h and w; `check_class_maps` verifies the declaration at load time.


def class_maps_layout(manifest: Manifest) -> str | None:
    """"NCHW" or "NHWC" when the manifest declares class maps; None when it does not.
    A declaration that breaks the contract above is a `ModelError` naming the manifest."""
    outputs = manifest.raw.get("outputs")
    if not isinstance(outputs, list):
        return None
    entry = next((o for o in outputs if isinstance(o, dict) and o.get("name") == CLASS_MAPS),
                 None)
    if entry is None:
        return None
    first = outputs[0] if isinstance(outputs[0], dict) else {}
    primary = manifest.raw.get("output", {}).get("shape")
    if primary is not None and first.get("shape") != primary:
        raise ModelError(f"{manifest.path}: outputs[0] must be the primary output "
                         f"{shown(primary)} (got {shown(first.get('shape'))})")
    layout = str(entry.get("layout", "NCHW"))
    shape = entry.get("shape")
    n = len(manifest.labels)
    ok = isinstance(shape, list) and len(shape) == 4 and shape[0] == 1 and all(
        isinstance(v, int) and v > 0 for v in shape)
    if ok:
        ok = (shape[1] == n) if layout == "NCHW" else (layout == "NHWC" and shape[3] == n)
    if not ok:
        raise ModelError(f"{manifest.path}: class_maps must be [1, {n}, h, w] (NCHW) or "
                         f"[1, h, w, {n}] (NHWC), one map per label; got {shown(shape)} "
                         f"{shown(layout)}")
    return layout


def class_map(maps: np.ndarray, index: int, layout: str = "NCHW") -> np.ndarray:
    """The (h, w) map of label `index` from the class_maps output."""
    maps = np.asarray(maps, dtype=np.float32)
    return maps[0, index] if layout == "NCHW" else maps[0, :, :, index]


def heatmap(plane_map: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """A class map as a uint8 heatmap for display: the map's own range stretched to 0..255
    above its median (the background of a class-activation map), so the brightest region is
    where the model found the most evidence for the class. A flat map gives zeros."""
    m = np.asarray(plane_map, dtype=np.float32)
    base = float(np.median(m))
    top = float(m.max())
    if not np.isfinite(top) or top - base < floor:
        return np.zeros(m.shape, np.uint8)
    return np.clip((m - base) / (top - base) * 255.0, 0, 255).astype(np.uint8)
