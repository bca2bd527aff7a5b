"""A montage of the synthesised images: one labelled row per class (PNG, not committed).

    python -m quantize.montage [--seed 0] [--per-row 8] [--out PATH] [--all]

Default output: build/plane_student/seed<seed>/synth_montage.png. Only the images the
teacher kept are shown unless --all (then rejected ones are outlined in red).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from quantize.data import LABELS

REPO = Path(__file__).resolve().parents[1]


def montage(data: dict[str, np.ndarray], per_row: int = 8, thumb: tuple[int, int] = (112, 144),
            label_width: int = 130) -> np.ndarray:
    """BGR uint8 grid: a row per class, the first `per_row` images of that class."""
    th, tw = thumb
    rows = []
    for c, name in enumerate(LABELS):
        row = np.full((th + 4, label_width + per_row * (tw + 4), 3), 32, np.uint8)
        cv2.putText(row, name, (6, th // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        idx = np.flatnonzero(data["target"] == c)[:per_row]
        for j, i in enumerate(idx):
            im = cv2.resize(data["images"][i], (tw, th), interpolation=cv2.INTER_AREA)
            x0 = label_width + j * (tw + 4) + 2
            row[2: 2 + th, x0: x0 + tw] = im[:, :, None]
            if not data["kept"][i]:
                cv2.rectangle(row, (x0, 2), (x0 + tw - 1, 1 + th), (0, 0, 255), 2)
        kept = int(data["kept"][data["target"] == c].sum())
        made = int((data["target"] == c).sum())
        cv2.putText(row, f"{kept}/{made} kept", (6, th // 2 + 26), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (180, 180, 180), 1, cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.montage",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-row", type=int, default=8)
    parser.add_argument("--synth", type=Path, default=None, help="synthesis folder")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--all", action="store_true", help="also show rejected images")
    args = parser.parse_args(argv)
    from quantize.synth import load_synth

    work = REPO / "build" / "plane_student" / f"seed{args.seed}"
    synth = args.synth or work / "synth"
    out = args.out or work / "synth_montage.png"
    try:
        data = load_synth(synth, kept_only=not args.all)
    except (FileNotFoundError, ValueError) as exc:
        print(f"montage: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), montage(data, args.per_row)):
        print(f"montage: {out}: cannot write the PNG", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(data['target'])} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
