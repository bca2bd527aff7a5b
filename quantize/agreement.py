"""Student-vs-teacher agreement through the device's own path, on held-out real frames.

The quantize gate measures agreement on the views it cached; this measures it the way the
box will see frames: the full frame, `find_roi`, each model's manifest preprocessing, the
.tflite on LiteRT. A difference between the two would be train/serve skew. `make bench`
reports it (bench.agreement) and `quantize.agreement_ceiling` bounds it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from edge.models.manifest import read_manifest
from edge.models.planes import classify_plane
from edge.models.roi import find_roi
from edge.models.runtime import load_model


@dataclass
class Agreement:
    frames: int = 0
    agree: int = 0
    per_teacher_label: Counter = field(default_factory=Counter)
    agree_per_teacher_label: Counter = field(default_factory=Counter)
    disagreements: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.agree / max(1, self.frames)


def device_path_agreement(teacher_manifest: Path, student_manifest: Path,
                          frames: list[Path], threads: int = 2) -> Agreement:
    teacher = load_model(read_manifest(teacher_manifest), "litert", threads)
    student = load_model(read_manifest(student_manifest), "litert", threads)
    result = Agreement()
    for path in frames:
        image = cv2.imread(str(path))
        if image is None:
            continue
        roi = find_roi(image)
        want = classify_plane(teacher, image, roi).top_label
        got = classify_plane(student, image, roi).top_label
        result.frames += 1
        result.per_teacher_label[want] += 1
        if want == got:
            result.agree += 1
            result.agree_per_teacher_label[want] += 1
        else:
            result.disagreements[f"{want} -> {got}"] += 1
    return result
