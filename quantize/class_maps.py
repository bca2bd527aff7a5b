"""Does the plane student's class map show where it looked? Judged before the maps ship.

The midwife's page can lay the named plane's class map over the frame (README, "Where the
plane model looked"). A map that peaks beside the head would tell her the model looked at
the wrong thing, so the build attaches the maps only if, on the held-out HC18 heads, the
named plane's map peaks inside the sonographer's head ellipse on at least
`MIN_PEAKS_IN_HEAD` of them, through the device's own path (find_roi, prepare, the int8
twin, the map upsampled over the region). The same rule is the test
`tests/test_web_heatmap.py::test_the_shipped_plane_model_s_heatmap_looks_at_the_head`.

Measured on the 264 held-out heads of the patient split: SonoNet-16 (fp32) 246 peak inside
the head (93%); plane student 1.3.0's int8 twin 149 (56%; 13 of the test's 19), so 1.3.0
ships without maps. Its training matches the teacher's maps with a small weight (0.2,
`distil.TrainSettings.map_weight`), and that does not carry the teacher's localisation.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from quantize.data import Frame, read_frame
from quantize.seg_data import annotation_path, fit_annotation

MIN_PEAKS_IN_HEAD = 0.8


def head_mask(frame: Frame, shape: tuple[int, ...]) -> np.ndarray:
    """The sonographer's filled head ellipse (HC18 annotation), bool (H, W)."""
    e = fit_annotation(annotation_path(frame.path))
    mask = np.zeros(shape[:2], np.uint8)
    cv2.ellipse(mask, ((e.cx, e.cy), (e.width, e.height), e.angle), 255, -1)
    return mask > 0


def peaks_in_head(model_path: Path, frames: list[Frame]) -> tuple[int, int]:
    """(heads whose named plane's map peaks inside the head, heads judged) for annotated
    HC18 frames, through the device path with the manifest beside `model_path`'s outputs."""
    from edge.models.planes import class_map
    from edge.models.preprocess import prepare
    from edge.models.roi import find_roi
    from edge.models.runtime import open_model_file
    from quantize.convert import class_maps_outputs
    from quantize.specs import STUDENT_SPEC

    model = open_model_file(model_path, "litert", 2, class_maps_outputs(model_path))
    inside = judged = 0
    for frame in frames:
        if frame.source != "hc18" or not annotation_path(frame.path).is_file():
            continue
        image = read_frame(frame.path)
        roi = find_roi(image)
        out = model.run_all(prepare(image, roi, STUDENT_SPEC))
        plane_map = class_map(out["class_maps"], int(np.argmax(out["logits"])))
        rx, ry, rw, rh = roi.as_list() if roi else (0, 0, image.shape[1], image.shape[0])
        big = cv2.resize(plane_map, (rw, rh), interpolation=cv2.INTER_LINEAR)
        py, px = np.unravel_index(int(np.argmax(big)), big.shape)
        inside += bool(head_mask(frame, image.shape)[ry + py, rx + px])
        judged += 1
    return inside, judged
