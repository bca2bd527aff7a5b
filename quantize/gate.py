"""The quantization gate: the int8 model must answer like its own fp32 model on held-out frames.

Metric: top-1 agreement of the int8 .tflite with the fp32 .tflite of the same student, on
held-out real frames (patients never trained on) through the device path (find_roi +
prepare). Threshold: INT8_VS_FP32_MIN = 0.95.

Why 0.95: a correct static int8 conversion moves a classifier's outputs by a fraction of a
percent of their range, which only flips frames sitting right on a decision boundary; our
held-out frames are mostly heads between `Brain (Tv.)`, `Brain (Cb.)` and `Background`,
where the teacher itself changes 6-9% of its answers under a 4% border crop, so a few
boundary flips are expected and allowed (0.95 = at most 7 of 140 frames). Measured: with
the true min/max calibration on real frames the shipped students flip 1 of 140 (99.3%);
the quantizer's default moving-average ranges, which clip activations on unusual frames,
flipped 8 of 140 (94.3%) and failed; calibration on flat or noise frames and perturbed
weights fall far below (tests/test_quantize.py). The agreement with the teacher is
reported beside it, and the int8 model may not lose more than MAX_TEACHER_DROP (0.03) of
agreement with the teacher relative to its fp32 model. And the model must be fully int8: no
op may read or write a float32 tensor (`float_ops`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from quantize.convert import run_tflite

INT8_VS_FP32_MIN = 0.95
MAX_TEACHER_DROP = 0.03
WHY = ("a correct int8 conversion only flips frames on a decision boundary (the teacher "
       "itself changes 6-9% of held-out head answers under a 4% border crop), so >=95% top-1 "
       "agreement with the fp32 model (<=7 of 140 held-out frames changed) passes it: "
       "measured 99.3% (1/140) with true min/max calibration on real frames, while the "
       "quantizer's default moving-average ranges (clipping on unusual frames) gave 94.3% and "
       "fail, and flat/noise calibration or perturbed weights fall far below; int8 may also "
       "lose at most 3 points of agreement with the teacher relative to fp32")


def float_ops(path: Path) -> list[str]:
    """The ops of a .tflite that read or write a float32 tensor ("OP:tensor"). A fully int8
    model has none: int8 input, activations and output (weights int8, biases int32), so
    every op can run in XNNPACK's int8 kernels and nothing is dequantized in between."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes = {t["index"]: (t["dtype"], t["name"]) for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():
        for i in [*op["inputs"], *op["outputs"]]:
            if i >= 0 and dtypes[i][0] == np.float32:
                found.append(f"{op['op_name']}:{dtypes[i][1]}")
    return found


@dataclass(frozen=True)
class GateResult:
    n: int
    int8_vs_fp32: float
    int8_vs_teacher: float | None
    fp32_vs_teacher: float | None
    threshold: float = INT8_VS_FP32_MIN
    max_teacher_drop: float = MAX_TEACHER_DROP
    float_ops: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        if self.float_ops:
            return (f"the int8 model is not fully int8: {len(self.float_ops)} float32 "
                    f"tensor(s), first {self.float_ops[0]}")
        if self.int8_vs_fp32 < self.threshold:
            return (f"int8 agrees with fp32 on {self.int8_vs_fp32:.1%} of {self.n} held-out "
                    f"frames, below the gate's {self.threshold:.0%}")
        if self.int8_vs_teacher is not None and self.fp32_vs_teacher is not None and \
                self.fp32_vs_teacher - self.int8_vs_teacher > self.max_teacher_drop:
            return (f"int8 agrees with the teacher on {self.int8_vs_teacher:.1%}, "
                    f"{self.fp32_vs_teacher - self.int8_vs_teacher:.1%} below fp32 "
                    f"({self.fp32_vs_teacher:.1%}); at most {self.max_teacher_drop:.0%} allowed")
        return ""

    @property
    def passed(self) -> bool:
        return not self.reason

    def summary(self) -> str:
        parts = [f"gate on {self.n} held-out frames: int8 vs fp32 {self.int8_vs_fp32:.1%} "
                 f"(min {self.threshold:.0%})"]
        if self.int8_vs_teacher is not None:
            parts.append(f"int8 vs teacher {self.int8_vs_teacher:.1%}, fp32 vs teacher "
                         f"{self.fp32_vs_teacher:.1%}")
        return "; ".join(parts) + (" -> PASS" if self.passed else " -> FAIL")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "reason": self.reason}


def check(int8: Path, fp32: Path, inputs: np.ndarray, teacher_top1: np.ndarray | None = None,
          threshold: float = INT8_VS_FP32_MIN, threads: int = 2) -> GateResult:
    """Compare the two .tflite files on float inputs (n, 1, H, W) that went through `prepare`."""
    q = run_tflite(int8, inputs, threads).argmax(1)
    f = run_tflite(fp32, inputs, threads).argmax(1)
    t8 = tf = None
    if teacher_top1 is not None:
        t8 = float((q == teacher_top1).mean())
        tf = float((f == teacher_top1).mean())
    return GateResult(n=len(inputs), int8_vs_fp32=float((q == f).mean()), int8_vs_teacher=t8,
                      fp32_vs_teacher=tf, threshold=threshold,
                      float_ops=tuple(float_ops(int8)))


def views_for(data: dict[str, np.ndarray], spec) -> np.ndarray:
    """The stored uint8 views (n, H, W) at the spec's resolution (student or teacher size)."""
    for key in ("student", "teacher", "teacher_small"):
        if key in data and tuple(data[key].shape[1:]) == (spec.height, spec.width):
            return data[key]
    raise ValueError(f"no cached views at {spec.height}x{spec.width}")


def run_gate(paths, heldout: dict[str, np.ndarray], work: Path) -> GateResult:
    """The build's gate on the cached held-out set (device-path views and teacher answers)."""
    from edge.models.preprocess import normalise
    from quantize.specs import STUDENT_SPEC

    inputs = np.stack([normalise(v, STUDENT_SPEC)[None] for v in views_for(heldout, STUDENT_SPEC)])
    return check(paths.int8, paths.fp32, inputs, heldout["logits"].argmax(1))
