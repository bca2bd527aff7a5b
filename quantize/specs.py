"""What the teacher and the student see: their preprocessing, shared by every toolchain step.

Its own module so that the steps (cache, distil, convert, gate, variants, manifest) read
one definition without importing each other.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from edge.models.preprocess import PreprocessSpec, normalise

TEACHER_SPEC = PreprocessSpec(224, 288, scale=255.0)
# The student reads the teacher's own 224x288 view (z-scored, scale 1): a 112x144
# area-resized input lost detail the teacher's answers hang on (the teacher itself agrees
# with its full-res answer on only 91% of held-out frames when fed the 112x144 view
# upsampled). The 1.2 student unshuffles it into 4x4 blocks; the 1.0-1.1 VGG student halved
# it with a stride-2 first conv (quantize.distil.STUDENT_STEM_STRIDE).
STUDENT_SPEC = PreprocessSpec(224, 288, scale=1.0)

# The device reads a student's region from the frame's half-resolution grey wherever the
# region there is still at least its input size (`PreprocessSpec.half_res_from`): a quarter
# of the greying and resizing per frame. Training views stay full resolution. Measured on
# the shipped models (2026-12-02, through the device path), full resolution -> half: plane
# student 223/271 held-out heads agreeing with the teacher -> 223/271 (the same heads), 13/13
# example screens -> 13/13; head segmenter HC MAD on the 262 validation heads, one pass
# 1.849 -> 1.840 mm, its own passes 1.779 -> 1.779 mm; blind sweeps 208/214 -> 208/214.
# The teacher is the reference and reads full resolution.
DEVICE_HALF_RES_FROM = 1.0


def device_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """A student's preprocessing as its manifest gives it to the device."""
    return replace(spec, half_res_from=DEVICE_HALF_RES_FROM)


def norm_batch(views: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 views (n, h, w) as a model's input batch (n, 1, h, w), as the device feeds it."""
    return torch.from_numpy(np.stack([normalise(v, spec) for v in views])[:, None])
