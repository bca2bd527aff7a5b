"""PyTorch -> fp32 .tflite -> fully int8 .tflite (ai-edge-quantizer static_wi8_ai8), and a runner.

The recipe of TOOLCHAIN.md: `litert_torch.convert(...).export(fp32)`, then the quantizer with
`static_wi8_ai8` calibrated on real frames, through the device's own preprocessing. The
result takes an int8 input and gives int8 logits; `run_tflite` quantizes and dequantizes
with the scale and zero-point read from the file, as the device does.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from quantize.data import Frame, device_view, read_frame


@dataclass(frozen=True)
class ModelPaths:
    fp32: Path
    int8: Path
    calibration: str  # what the int8 model was calibrated on
    # The same int8 model with its class maps as a second output: the one that ships.
    int8_with_maps: Path | None = None


def class_maps_outputs(path: Path) -> list[dict]:
    """The plane student's outputs as its manifest declares them (edge.models.runtime
    matches them by shape): the logits, then the class maps they are the global mean of."""
    from edge.models.runtime import make_interpreter

    details = make_interpreter(Path(path), "litert", 1).get_output_details()
    logits = [d["shape"] for d in details if len(d["shape"]) == 2]
    maps = [d["shape"] for d in details if len(d["shape"]) == 4]
    if len(details) != 2 or len(logits) != 1 or len(maps) != 1 or \
            int(maps[0][1]) != int(logits[0][1]):
        raise ValueError(f"{path}: expected logits (1, n) and class maps (1, n, h, w)")
    return [{"name": "logits", "shape": [int(v) for v in logits[0]], "dtype": "int8"},
            {"name": "class_maps", "shape": [int(v) for v in maps[0]], "dtype": "int8",
             "layout": "NCHW"}]


class WithClassMaps(nn.Module):
    """A student whose `forward_maps` gives (logits, class maps), exported with both."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_maps(x)


@contextlib.contextmanager
def _quiet():
    """The converters print pages of progress; keep the build log readable."""
    logging.disable(logging.WARNING)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    finally:
        logging.disable(logging.NOTSET)


def export_fp32(model: nn.Module, input_shape: tuple[int, ...], dest: Path) -> Path:
    import litert_torch

    model = model.to(memory_format=torch.contiguous_format).eval()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.no_grad():
        litert_torch.convert(model, (torch.zeros(input_shape),)).export(str(dest))
    return dest


def _running_min_max(old: dict, new: dict) -> dict:
    return {"min": np.minimum(old["min"], new["min"]), "max": np.maximum(old["max"], new["max"])}


def quantize_int8(fp32: Path, calibration: list[np.ndarray], dest: Path) -> Path:
    """Full int8 (weights, activations, input and output) calibrated on `calibration`.

    Activation ranges are the true min/max over all calibration frames. The quantizer's
    default (an exponential moving average, factor 0.95, of per-frame min/max) follows the
    last ~20 frames and clips activations on frames unlike them: on our 112x144 student it
    flipped 8 of 140 held-out answers (5.7%), against 1 of 140 with the true min/max.
    """
    from ai_edge_quantizer import Quantizer, calibrator, recipe

    if not calibration:
        raise ValueError(f"{fp32}: no calibration inputs")
    with _quiet():
        quantizer = Quantizer(str(fp32))
        quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
        data = {"serving_default": [{"args_0": x.astype(np.float32)} for x in calibration]}
        # Quantizer.calibrate offers no choice of range statistic, so build its Calibrator
        # the same way but with the running min/max (ai-edge-quantizer 0.10.0).
        calib = calibrator.Calibrator(quantizer._float_model_buffer, num_threads=2,
                                      qsv_update_func=_running_min_max)
        calib.calibrate(data, quantizer._recipe_manager)
        result = quantizer.quantize(calib.get_model_qsvs())
        tmp = dest.with_suffix(".tmp.tflite")
        if tmp.exists():
            tmp.unlink()
        result.export_model(str(tmp), overwrite=True)
    os.replace(tmp, dest)
    return dest


def open_for_toolchain(path: Path, threads: int = 2):
    """A .tflite as the device's runtime opens it: with the outputs that the manifest beside
    it declares (a plane student with its class maps), or with its one output. The manifest
    is read by the device's own reader, so a broken one is a `ModelError` naming it."""
    from edge.models.manifest import read_manifest
    from edge.models.runtime import open_model_file

    side = Path(path).with_suffix(".json")
    outputs = read_manifest(side).raw.get("outputs") if side.is_file() else None
    return open_model_file(Path(path), "litert", threads, outputs)


def run_tflite(path: Path, inputs: np.ndarray, threads: int = 2) -> np.ndarray:
    """Float primary outputs for float inputs (n, 1, H, W), through the device's runtime."""
    model = open_for_toolchain(path, threads)
    return np.stack([model.run(x[None].astype(np.float32))[0].astype(np.float32)
                     for x in inputs])


def calibration_inputs(frames: list[Frame], spec, limit: int, seed: int) -> list[np.ndarray]:
    """Device-path inputs (find_roi + prepare) of up to `limit` training frames (with the
    running min/max their order does not matter)."""
    from edge.models.preprocess import normalise

    rng = np.random.default_rng([seed, 4])
    must = [f for f in frames if f.source != "hc18"]
    rest = [f for f in frames if f.source == "hc18"]
    chosen = must + [rest[i] for i in rng.permutation(len(rest))[: max(0, limit - len(must))]]
    return [normalise(device_view(read_frame(f.path), spec), spec)[None, None] for f in chosen]


def convert_student(student: nn.Module, train: list[Frame], work: Path, seed: int,
                    stamp: Path, n_calibration: int = 500) -> ModelPaths:
    """fp32 and int8 .tflite of the student under `work`; reused when already there."""
    from quantize.specs import STUDENT_SPEC

    spec = STUDENT_SPEC
    fp32 = work / "plane_student_fp32.tflite"
    int8 = work / "plane_student_int8.tflite"
    calib_note = work / "calibration.txt"
    # Reuse only a conversion of this very checkpoint: a build with other settings (another
    # checkpoint, perhaps older) must not pick up the last build's .tflite.
    source = work / "converted_from.txt"
    made_from = f"{stamp.name} {stamp.stat().st_mtime_ns}" if stamp.exists() else stamp.name
    maps_fp32 = work / "plane_student_maps_fp32.tflite"
    maps_int8 = work / "plane_student_maps_int8.tflite"
    stale = not (int8.exists() and maps_int8.exists() and source.exists()
                 and source.read_text() == made_from)
    if stale:
        export_fp32(student, (1, 1, spec.height, spec.width), fp32)
        calib = calibration_inputs(train, spec, n_calibration, seed)
        quantize_int8(fp32, calib, int8)
        with_class_maps(student, calib, int8, maps_fp32, maps_int8)
        n_ex = sum(f.source == "examples" for f in train)
        n_pl = sum(f.source == "planes" for f in train)
        calib_note.write_text(
            f"{len(calib)} real training frames through find_roi + prepare: all {n_ex} "
            f"SonoNet examples, all {n_pl} training planes frames, {len(calib) - n_ex - n_pl} "
            f"HC18 training frames drawn with seed {seed}; no held-out frame")
        source.write_text(made_from)
    return ModelPaths(fp32=fp32, int8=int8, calibration=calib_note.read_text(),
                      int8_with_maps=maps_int8)


def with_class_maps(student: nn.Module, calibration: list[np.ndarray], int8: Path,
                    fp32_dest: Path, int8_dest: Path) -> Path:
    """The int8 `int8` model again, with the class maps as a second output.

    Converted from the same net and calibrated on the same frames, so every tensor gets the
    same range; it ships only if its logits are bit for bit those of `int8` on every
    calibration frame, so every figure measured on `int8` holds for it."""
    from edge.models.runtime import open_model_file

    spec_shape = tuple(int(v) for v in calibration[0].shape)
    export_fp32(WithClassMaps(student), spec_shape, fp32_dest)
    quantize_int8(fp32_dest, calibration, int8_dest)
    plain = open_model_file(int8, "litert", 2)
    both = open_model_file(int8_dest, "litert", 2, class_maps_outputs(int8_dest))
    for x in calibration:
        a = plain.run(x.astype(np.float32))
        b = both.run_all(x.astype(np.float32))["logits"]
        if not np.array_equal(a, b):
            raise ValueError(f"{int8_dest}: its logits differ from {int8.name}'s "
                             f"(max {float(np.abs(a - b).max()):.4g}); not shipped")
    return int8_dest
