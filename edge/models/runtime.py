"""One way to run a shipped model, whatever executes it.

A backend is a small function that turns a .tflite path into a TFLite-style interpreter
(LiteRT on the CPU, LiteRT with the Edge TPU delegate, the legacy tflite-runtime), in the
manner of pycoral's `make_interpreter`. Everything above this module sees only `Model.run`:
float in, float out, int8 scales and zero points handled here once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.models.manifest import Manifest, ModelError, verified_bytes
from wire.shown import shown

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"
_EDGETPU_FALLBACK_SAID = False
# What LiteRT's C++ logger prints on stderr when it loads a model, with no switch to turn it
# off: a banner, not news. Only these lines go to our log (debug); any other is passed on.
RUNTIME_BANNER = re.compile(rb"INFO: (Created TensorFlow Lite XNNPACK delegate for CPU|"
                            rb"Initialized TensorFlow Lite runtime|Replacing \d+ node)")
_BANNER_LOCK = threading.Lock()


def _said_edgetpu_fallback() -> None:
    global _EDGETPU_FALLBACK_SAID
    _EDGETPU_FALLBACK_SAID = True


def _litert_module():
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        return None
    return litert


def _tflite_runtime_module():
    try:
        from tflite_runtime import interpreter as tflite
    except ImportError:
        return None
    return tflite


def _source(model_path: Path, content: bytes | None) -> dict:
    """What the interpreter reads: the bytes already verified when there are some."""
    return {"model_content": content} if content is not None else \
        {"model_path": str(model_path)}


def _cpu(model_path: Path, num_threads: int, content: bytes | None = None, module=None):
    module = module or _litert_module() or _tflite_runtime_module()
    if module is None:
        raise ModelError("no TFLite runtime installed: pip install ai-edge-litert")
    return module.Interpreter(**_source(model_path, content), num_threads=num_threads)


def _litert(model_path: Path, num_threads: int, content: bytes | None = None):
    return _cpu(model_path, num_threads, content, _litert_module())


def _tflite_runtime(model_path: Path, num_threads: int, content: bytes | None = None):
    module = _tflite_runtime_module()
    if module is None:
        log.warning("tflite-runtime is not installed; using LiteRT instead")
    return _cpu(model_path, num_threads, content, module)


def _edgetpu(model_path: Path, num_threads: int, content: bytes | None = None):
    """The Edge TPU delegate where it loads; otherwise the CPU, said once in the log."""
    module = _litert_module() or _tflite_runtime_module()
    if module is None:
        raise ModelError("no TFLite runtime installed: pip install ai-edge-litert")
    try:
        # Probe the library first: LiteRT's Delegate prints a traceback from __del__ when
        # the library itself is missing, and the user must see one clear line instead.
        ctypes.CDLL(EDGETPU_LIBRARY)
        delegate = module.load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # Said once per process: the device loads several models, one line is enough.
        say = log.debug if _EDGETPU_FALLBACK_SAID else log.warning
        say("Edge TPU delegate unavailable (%s: %s); running %s on the CPU",
            EDGETPU_LIBRARY, reason, "the models" if say is log.warning else model_path.name)
        _said_edgetpu_fallback()
        return module.Interpreter(**_source(model_path, content), num_threads=num_threads)
    return module.Interpreter(**_source(model_path, content), num_threads=num_threads,
                              experimental_delegates=[delegate])


@contextlib.contextmanager
def runtime_banner_to_log() -> Iterator[None]:
    """Holds the process's stderr (fd 2) in a file while a model loads, then writes back
    every line but the runtime's banner (RUNTIME_BANNER), which goes to the log at debug.

    The banner was the first line `make run` showed. A file, not a pipe: nothing blocks
    however much is written; what another thread writes meanwhile comes out after."""
    with _BANNER_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr to hold
            yield
            return
        try:
            with tempfile.TemporaryFile() as held:
                os.dup2(held.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    held.seek(0)
                    for line in held:  # our own file: its size is what was written
                        if RUNTIME_BANNER.match(line):
                            log.debug("runtime: %s", line.decode("utf-8", "replace").strip())
                        else:
                            os.write(2, line)
        finally:
            os.close(saved)


# A backend: (model path, threads, the model's verified bytes or None) -> an interpreter.
BACKENDS: dict[str, Callable[[Path, int, bytes | None], object]] = {
    "litert": _litert,
    "edgetpu": _edgetpu,
    "tflite-runtime": _tflite_runtime,
}


def make_interpreter(model_path: Path, backend: str = "litert", num_threads: int = 2,
                     content: bytes | None = None):
    """`content`: the model's bytes, already read and verified; `model_path` then only
    names it in messages."""
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    try:
        with runtime_banner_to_log():
            interpreter = BACKENDS[backend](Path(model_path), num_threads, content)
            interpreter.allocate_tensors()
    except ModelError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model_path}: cannot load model ({first})") from None
    return interpreter


@dataclass
class Model:
    """A loaded .tflite: float in, float out, whatever the tensors' dtypes.

    The device gets one through `load_model` (manifest verified); the toolchain opens a
    freshly converted file with `open_model_file`, so the gate and the bench see int8
    exactly as the device does. A model may have several outputs, declared by name in its
    manifest's `outputs` (see `match_outputs`): `run` gives the primary one, `run_all` all
    of them by name, each dequantized.
    """

    interpreter: object
    _input: dict
    _output: dict
    manifest: Manifest | None = None
    _outputs: dict[str, dict] = field(default_factory=dict)  # name -> tensor detail

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)

    def _invoke(self, x: np.ndarray) -> None:
        detail = self._input
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])
        else:
            x = x.astype(np.float32, copy=False)
        self.interpreter.set_tensor(detail["index"], x)
        self.interpreter.invoke()

    def _read(self, detail: dict) -> np.ndarray:
        out = self.interpreter.get_tensor(detail["index"])
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            out = (out.astype(np.float32) - zero) * scale
        return out

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float input of the model's shape -> float output (dequantized)."""
        self._invoke(x)
        return self._read(self._output)

    def run_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One invoke; every declared output by name, dequantized (the primary output is
        under its manifest name, or "output" for a model without `outputs`)."""
        self._invoke(x)
        if not self._outputs:
            return {"output": self._read(self._output)}
        return {name: self._read(detail) for name, detail in self._outputs.items()}


def match_outputs(path: Path, declared: list, tensors: list[dict]) -> dict[str, dict]:
    """The manifest's `outputs` ([{name, shape, ...}]) matched to the model's tensors.

    Each declared output is matched by its exact shape, so the converter's tensor names and
    order do not matter; the model must have exactly the declared outputs, with distinct
    shapes. Anything else is one `ModelError` naming the file.
    """
    if not isinstance(declared, list) or not declared:
        raise ModelError(f"{path}: manifest 'outputs' must be a non-empty list")
    if len(declared) != len(tensors):
        raise ModelError(f"{path}: manifest declares {len(declared)} outputs, the model has "
                         f"{len(tensors)}")
    by_shape: dict[tuple, dict] = {}
    for detail in tensors:
        by_shape.setdefault(tuple(int(v) for v in detail["shape"]), detail)
    if len(by_shape) != len(tensors):
        raise ModelError(f"{path}: two outputs share a shape; they cannot be told apart")
    matched: dict[str, dict] = {}
    for entry in declared:
        try:
            name = str(entry["name"])
            shape = tuple(int(v) for v in entry["shape"])
        except (TypeError, KeyError, ValueError):
            raise ModelError(f"{path}: each manifest output needs a name and a shape") from None
        if name in matched:
            raise ModelError(f"{path}: manifest output {shown(name)} is declared twice")
        if shape not in by_shape:  # a hostile shape may be 100,000 numbers: shown cut
            raise ModelError(f"{path}: manifest output {shown(name)} {shown(list(shape))} is "
                             f"not an output of the model ({[list(s) for s in by_shape]})")
        matched[name] = by_shape[shape]
    return matched


def open_model_file(path: Path, backend: str = "litert", num_threads: int = 2,
                    outputs: list | None = None, content: bytes | None = None) -> Model:
    """A .tflite with one input and one output, without a manifest (toolchain use); or with
    several outputs when `outputs` declares them (a manifest's `outputs`, first = primary).
    `content`: its bytes already read (and verified), loaded instead of the path."""
    interpreter = make_interpreter(path, backend, num_threads, content)
    inputs = interpreter.get_input_details()
    tensors = interpreter.get_output_details()
    if outputs is not None:
        if len(inputs) != 1:
            raise ModelError(f"{path}: expected one input")
        matched = match_outputs(path, outputs, tensors)
        return Model(interpreter, inputs[0], next(iter(matched.values())), _outputs=matched)
    if len(inputs) != 1 or len(tensors) != 1:
        raise ModelError(f"{path}: expected one input and one output")
    return Model(interpreter, inputs[0], tensors[0])


def load_model(manifest: Manifest, backend: str = "litert", num_threads: int = 2) -> Model:
    """Verify the file against its manifest, then load it on the chosen backend."""
    model = open_model_file(manifest.model_path, backend, num_threads,
                            manifest.raw.get("outputs"), verified_bytes(manifest))
    shape = tuple(int(v) for v in model._input["shape"])  # "(1, 1, 224, 288)", not np.int32
    if shape != manifest.input_shape:
        raise ModelError(f"{manifest.model_path}: input shape {shape} "
                         f"differs from its manifest {manifest.input_shape}")
    # What the manifest says of the file must be true of it: `sonoedge models` and the
    # district show it, and a bundle that lies about its model is a bundle built wrong.
    for side, detail in (("input", model._input), ("output", model._output)):
        declared = (manifest.raw.get(side) or {}).get("dtype")
        actual = np.dtype(detail["dtype"]).name
        if declared is not None and declared != actual:
            raise ModelError(f"{manifest.model_path}: {side} dtype {actual} differs from its "
                             f"manifest {shown(declared)}")
    if manifest.task.endswith("_segmentation"):
        # A segmenter answers per pixel: its map has the input's height and width.
        out = tuple(int(v) for v in model._output["shape"])
        if out[-2:] != shape[-2:]:
            raise ModelError(f"{manifest.model_path}: output shape {out} does not match "
                             f"its input {shape}")
    elif model._output["shape"][-1] != len(manifest.labels):
        raise ModelError(f"{manifest.model_path}: {model._output['shape'][-1]} outputs but "
                         f"{len(manifest.labels)} labels in its manifest")
    model.manifest = manifest
    return model
