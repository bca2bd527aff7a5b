"""`make bench`: what the quality audit costs per frame, and blind-sweep selection.

The audit's cost is measured three ways in this run, on the demo clip at 2 threads: the
whole per-frame path with the audit off and on (the difference is what the audit adds,
head segmentation on frames that may show a head included), and the audit's own time
(image statistics, the learned quality head, the criteria) as the scorer records it.
"""

from __future__ import annotations

from pathlib import Path

from bench.models import _worker
from quantize import sweeps


def audit_section(manifest: Path, pixel_size_mm: float) -> None:
    args = [str(manifest.parent), manifest.stem, "2"]
    off = _worker("path", *args, "0", "noaudit")
    on = _worker("path", *args, "0")
    both = _worker("path", *args, str(pixel_size_mm))
    learned = "with" if on.get("learned_quality_head") else "WITHOUT (not installed)"
    print(f"\n## The quality audit per frame ({on['frames']} demo frames, 2 threads, {learned}"
          " the learned quality head)\n")
    print("| per-frame path | median ms | p90 ms |\n|---|---|---|")
    print(f"| audit off | {off['median_ms']:.2f} | {off['p90_ms']:.2f} |")
    print(f"| audit on | {on['median_ms']:.2f} | {on['p90_ms']:.2f} |")
    print(f"| audit on + biometry at {pixel_size_mm} mm/px | {both['median_ms']:.2f} | "
          f"{both['p90_ms']:.2f} |")
    if both.get("head_frames"):
        print(f"| ... head-plane frames only ({both['head_frames']}) | "
              f"{both['head_frame_median_ms']:.2f} | {both['head_frame_p90_ms']:.2f} |")
        print(f"\nthe heads the exam reports, measured again with the segmenter's own passes "
              f"when it ended, off the frames' path: {both.get('measured_again', 0)} frames "
              f"in {both.get('exam_end_ms', float('nan')):.1f} ms")
    print(f"\nthe loop's throughput (the clip's wall time per frame, the exam keeping "
          f"its heads included): audit off {off['wall_ms_per_frame']:.2f} ms, on "
          f"{on['wall_ms_per_frame']:.2f} ms, + biometry {both['wall_ms_per_frame']:.2f} ms; "
          f"the frames' decode, on its own thread, waited for: median "
          f"{both['capture_ms']:.2f} ms")
    print(f"\naudit's own time (statistics + learned head + criteria): median "
          f"{on.get('quality_ms_median', float('nan')):.2f} ms, p90 "
          f"{on.get('quality_ms_p90', float('nan')):.2f} ms; it adds "
          f"{on['median_ms'] - off['median_ms']:+.2f} ms to the median frame (head "
          f"segmentation on the {on.get('head_judged_frames', 0)} frames that may show a "
          f"head included: median {on.get('head_judged_ms_median', float('nan')):.2f} ms, p90 "
          f"{on.get('head_judged_ms_p90', float('nan')):.2f} ms on those)")


def sweeps_section() -> None:
    print("\n## Blind sweeps on held-out patients (biometry protocol, `python -m bench.sweeps`)"
          "\n", flush=True)
    print(sweeps.report(sweeps.run(None, 0)))
