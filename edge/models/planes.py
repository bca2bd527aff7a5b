"""Which standard plane a frame shows: the plane model's answer as a small result.

No I/O here: a frame and its region in, a `PlaneResult` out. The softmax temperature and
the abstain threshold come from the model's manifest (`thresholds`), so a recalibrated
model brings its own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.models.manifest import Manifest
from edge.models.preprocess import prepare
from edge.models.roi import Roi
from edge.models.runtime import Model

UNCERTAIN = "uncertain"


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


def classify_plane(model: Model, image: np.ndarray, roi: Roi | None) -> PlaneResult:
    manifest = model.manifest
    return plane_from_output(manifest, model.run(prepare(image, roi, manifest.preprocessing)))
