"""Regenerate tests/fixtures/plane_maps_int8.tflite: a tiny, untrained int8 plane model with
SonoNet's two outputs, logits (1, 14) and class maps (1, 14, 14, 18), logits = the maps'
global mean, converted and quantized by the same toolchain as the shipped student
(litert-torch, ai-edge-quantizer). It is what `quantize/` must export for the heatmap, at
3 kB, so the runtime's and the page's heatmap path are tested today without the real one.

    python -m tests.make_two_output_model
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "plane_maps_int8.tflite"
INPUT = (1, 1, 224, 288)


def main() -> int:
    import torch
    from torch import nn

    from quantize.convert import export_fp32, quantize_int8

    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(1, 8, 5, stride=4, padding=2), nn.ReLU(),
                                      nn.MaxPool2d(4))
            self.head = nn.Conv2d(8, 14, 1)  # one map per class, as SonoNet

        def forward(self, x):
            maps = self.head(self.body(x))
            return maps.mean(dim=(2, 3)), maps

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_fp32(TwoOutputs(), INPUT, Path(tmp) / "fp32.tflite")
        calibration = [rng.normal(size=INPUT).astype(np.float32) for _ in range(16)]
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        quantize_int8(fp32, calibration, FIXTURE)
    print(f"{FIXTURE}: {FIXTURE.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
