"""`make bench`'s agreement lines: the student against the teacher through the device's own
path (quantize.agreement), and the 13 SonoNet example screens."""

from __future__ import annotations

from pathlib import Path

import cv2

from edge.exam.session import HEAD_PLANES
from edge.models.manifest import read_manifest
from edge.models.planes import classify_plane
from edge.models.roi import find_roi
from edge.models.runtime import load_model
from quantize.agreement import Agreement
from quantize.data import EXAMPLE_LABELS


def example_planes(student_manifest: Path, examples_dir: Path, threads: int = 2) -> dict:
    """The student's answer on the 13 SonoNet example screens, against their true labels,
    as `sonoedge score` reports it: the plane, or `uncertain` below the abstain threshold."""
    student = load_model(read_manifest(student_manifest), "litert", threads)
    answers = {}
    for path in sorted(examples_dir.glob("*.tiff")):
        image = cv2.imread(str(path))
        answers[path.stem] = (EXAMPLE_LABELS[path.stem],
                              classify_plane(student, image, find_roi(image)).plane)
    return answers


def summarise(agreement: Agreement, head_planes: tuple[str, ...] = HEAD_PLANES) -> str:
    """The agreement, and apart: on the frames the teacher names a head plane, and on the
    rest. The held-out frames are mostly HC18 heads, which the student is taught to name a
    head plane whatever the teacher says (Background, Kidneys...): the first part is its
    fidelity where the two are meant to agree."""
    lines = [f"device-path top-1 agreement, student int8 vs teacher fp32: "
             f"{agreement.agree}/{agreement.frames} = {100 * agreement.rate:.1f}%"]
    named = sum(agreement.per_teacher_label[p] for p in head_planes)
    if named:
        kept = sum(agreement.agree_per_teacher_label[p] for p in head_planes)
        others = agreement.frames - named
        lines.append(f"  where the teacher names a head plane ({', '.join(head_planes)}): "
                     f"{kept}/{named} = {100 * kept / named:.1f}%; on its other {others} "
                     f"frames: {agreement.agree - kept}")
    if agreement.disagreements:
        worst = ", ".join(f"{k} x{v}" for k, v in agreement.disagreements.most_common(6))
        lines.append(f"  disagreements: {worst}")
    labels = ", ".join(f"{k} {v}" for k, v in agreement.per_teacher_label.most_common())
    lines.append(f"  teacher's labels on these frames: {labels}")
    return "\n".join(lines)
