"""fp32 .tflite exports for `make bench`: the teacher (always) and the student (after a build).

    export_teacher_fp32(dest) -> path of sononet16_fp32.tflite, with sononet16_fp32.json
    export_student_fp32(dest) -> path of plane_student_fp32.tflite, with its .json

`dest` is a directory (created) or a path ending in .tflite. A file already there whose
manifest sha256 matches is reused.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from quantize.manifest import TEACHER_CREDIT, base, finish, sha256_file

REPO = Path(__file__).resolve().parents[1]
STUDENT_BUILD = REPO / "build" / "plane_student"


def _target(dest: Path, default_name: str) -> Path:
    dest = Path(dest)
    path = dest if dest.suffix == ".tflite" else dest / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _fresh(path: Path) -> bool:
    man = path.with_suffix(".json")
    if not (path.is_file() and man.is_file()):
        return False
    try:
        return json.loads(man.read_text())["sha256"] == sha256_file(path)
    except (ValueError, KeyError, OSError):
        return False


def export_teacher_fp32(dest: Path) -> Path:
    """The fp32 SonoNet-16 .tflite (224x288 input, logits out) and its manifest."""
    from quantize.convert import export_fp32
    from quantize.data import data_dir
    from quantize.macs import count_macs, count_params
    from quantize.specs import TEACHER_SPEC
    from quantize.teacher import load_teacher

    path = _target(dest, "sononet16_fp32.tflite")
    if _fresh(path):
        return path
    npz = data_dir() / "sononet" / "SonoNet16.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"{npz}: teacher weights not found")
    teacher = load_teacher(npz)
    shape = (1, 1, TEACHER_SPEC.height, TEACHER_SPEC.width)
    export_fp32(teacher, shape, path)
    macs = count_macs(teacher, shape)
    man = base("sononet16_teacher", path.name, list(shape), "float32", TEACHER_SPEC.to_dict())
    man.update({
        "quantization": {"scheme": "none (fp32)"},
        "architecture": {"family": "SonoNet-16 (VGG-like, 13 conv + 1x1 head, GAP)",
                         "params": count_params(teacher), "macs": macs, "teacher_macs": macs},
        "metrics": {},
        "teacher": TEACHER_CREDIT,
        "training_data": [{"name": "SonoNet authors' iFIND data (not available here)",
                           "frames": 0, "licence": "n/a", "split": "n/a"}],
        "licences": {"model": "Apache-2.0", "notes": "Released SonoNet-16 weights, converted."},
    })
    path.with_suffix(".json").write_text(json.dumps(finish(man, path), indent=2) + "\n")
    return path


def export_student_fp32(dest: Path, seed: int = 0) -> Path:
    """The fp32 student of the last `make models` build (same weights as the shipped int8)."""
    src = STUDENT_BUILD / f"seed{seed}" / "plane_student_fp32.tflite"
    src_man = src.with_suffix(".json")
    if not (src.is_file() and src_man.is_file()):
        raise FileNotFoundError(f"{src}: no fp32 student yet (run `make models` first)")
    path = _target(dest, "plane_student_fp32.tflite")
    if path.resolve() != src.resolve():
        shutil.copyfile(src, path)
        shutil.copyfile(src_man, path.with_suffix(".json"))
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "build" / "bench"
    try:
        print(export_teacher_fp32(out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        sys.exit(2)
