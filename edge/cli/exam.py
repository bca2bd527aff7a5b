"""`sonoedge exam`: a clip, a video or a folder (sorted) as one exam.

Every frame is scored and audited; the best frame of each plane is kept (and, with
`--thumbs DIR`, written as a thumbnail). Prints the protocol's checklist and the exam
summary, or with `--json` one JSON object: the summary (`exam`), the `checklist`, and
`best_frames` ({plane: {"source", "frame", "quality", ...}} for every plane whose best frame
reaches the protocol's minimum quality; a plane without one is absent) and, where a head was
measured, `head_measured` (the frame its HC is from, with `--thumbs` its thumbnail with the
fitted ellipse drawn, `head-measured.jpg`). This is also the
blind-sweep mode: a novice's sweep in, the best frame per plane (or none) out. Stopped with
Ctrl-C, it still prints the exam of the frames scored so far (ended by "command"), exit 130.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge.capture.sources import narrowing, open_sources
from edge.cli import BACKEND_HELP, CONFIG_HELP, MODELS_DIR_HELP, THREADS_HELP
from edge.config import frame_limits, load_settings
from edge.exam.protocol import (
    Protocol,
    ProtocolError,
    check_anatomy,
    check_head_planes,
    check_named,
    find_protocol,
    load_protocols,
)
from edge.exam.session import ExamSession, format_exam
from edge.exam.thumbs import ThumbStore
from edge.models.roi import Roi
from edge.scorer import make_scorer, timed_frames
from wire.shown import shown


def given_protocol(name: str, protocols_file: str | None) -> Protocol:
    """The protocol `--protocol` names, checked here as `run` checks `--max-frames`: given
    to the config's loader, an unknown one was blamed on the config's key ("command line:
    exam.protocol: ..."), and the flag went unnamed."""
    protocols = load_protocols(protocols_file)
    if name not in protocols:
        raise ProtocolError(f"--protocol: unknown protocol {shown(name)}: choose one of "
                            f"{', '.join(sorted(protocols))}")
    return protocols[name]


def main(args) -> int:
    overrides = {"models": {"dir": args.models_dir, "backend": args.backend,
                            "num_threads": args.threads},
                 "biometry": {"pixel_size_mm": args.pixel_size,
                              # as `score`: a pixel size given here is these frames' scale,
                              # not a config's ruler, which measured none of them
                              "ruler_tick_mm": args.ruler_tick if args.ruler_tick is not None
                              else 0.0 if args.pixel_size is not None else None}}
    settings = load_settings(args.config, overrides)
    protocols_file = settings.exam.protocols_file or None
    protocol = find_protocol(settings.exam.protocol, protocols_file) if args.protocol is None \
        else given_protocol(args.protocol, protocols_file)
    scorer = make_scorer(settings)
    check_named(protocol, scorer.manifest.labels, scorer.manifest.ident)
    check_head_planes(tuple(settings.biometry.head_planes), scorer.manifest.labels,
                      scorer.manifest.ident)
    check_anatomy(protocol, scorer.quality.rules if scorer.quality else None)
    thumbs = None
    if args.thumbs:
        # printed as given, so the path shown is one the user can open from here
        thumbs = ThumbStore(Path(args.thumbs), int(settings.exam.thumbs_quota_mb * 1e6),
                            shown_as=str(Path(args.thumbs)))
    session = ExamSession(protocol, thumbs, settings.exam, measure_kept=scorer.measure_kept,
                          rules=scorer.quality.rules if scorer.quality else None,
                          head_planes=tuple(settings.biometry.head_planes))
    failed, ended_by = 0, "source_end"
    # The exam lasts from its first frame to its last on the scan's clock (each result's
    # mono_s): a video's own length, however fast it was read, not the models' start-up.
    first_last = None
    try:
        # strict: a path that gives no frames at all (missing, an empty folder) is one
        # error line before any work, not an exam of one failed frame
        with open_sources(args.paths, strict=True, limits=frame_limits(settings)) as source:
            for frame, capture_s in timed_frames(
                    source, scorer.prepare_frame,
                    reshape=narrowing(settings.source.stretch)):
                result = scorer.score(frame, capture_s)
                failed += result.error is not None
                if result.error:  # one line naming the file; the frame is skipped
                    print(f"sonoedge: {result.error}", file=sys.stderr)
                roi = Roi(*result.roi) if result.roi else None
                now = result.mono_s
                if first_last is None:
                    session.started_ts, session.started_mono = frame.t_wall, now
                first_last = (frame.t_wall, now)
                session.add(result.to_dict(), frame.image, roi, now)
    except KeyboardInterrupt:  # Ctrl-C on a long video: the frames scored are the exam
        ended_by = "command"
    body = session.finish(ended_by, scorer.model_versions(), *(first_last or (None, None)))
    if args.json:
        shown = {"head_measured": session.measured_head} if session.measured_head else {}
        print(json.dumps({"exam": body, "checklist": session.checklist(),
                          "best_frames": session.best_frames(), **shown},
                         separators=(",", ":")))
    else:
        print(format_exam(session, body, " (--pixel-size MM, the scanner's mm per pixel at "
                                         "this depth, or [biometry] pixel_size_mm)"))
    if ended_by == "command":
        return 130
    return 1 if failed and failed == body["frames"] else 0


def add_parser(verbs) -> None:
    parser = verbs.add_parser(
        "exam", help="a clip, video or folder as one exam: checklist, best frames, summary",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="video files, image files or folders")
    parser.add_argument("--protocol", help="biometry | second-trimester (default: the "
                                           "config's [exam] protocol)")
    parser.add_argument("--pixel-size", type=float, metavar="MM",
                        help="mm per pixel: head-plane frames get head biometry")
    parser.add_argument("--ruler-tick", type=float, metavar="MM",
                        help="read each frame's scale from the scanner's depth ruler, a tick "
                             "every MM mm (default: the config's [biometry] ruler_tick_mm; "
                             "0 = off; a --pixel-size given turns it off)")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--thumbs", metavar="DIR", help="write the best frames here as JPEGs")
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.add_argument("--models-dir", help=MODELS_DIR_HELP)
    parser.add_argument("--backend", choices=["litert", "edgetpu", "tflite-runtime"],
                        help=BACKEND_HELP)
    parser.add_argument("--threads", type=int, help=THREADS_HELP)
    parser.set_defaults(func=main)
