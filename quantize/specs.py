"""What the teacher and the student see: their preprocessing, shared by every toolchain step.

Its own module so that the steps (cache, distil, convert, gate, variants, manifest) read
one definition without importing each other.
"""

from __future__ import annotations

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


def norm_batch(views: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    """uint8 views (n, h, w) as a model's input batch (n, 1, h, w), as the device feeds it."""
    return torch.from_numpy(np.stack([normalise(v, spec) for v in views])[:, None])
