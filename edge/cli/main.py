"""`sonoedge` verbs. Bad input ends in one line naming the file or field, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from edge.capture.sources import SourceError
from edge.cli import BACKEND_HELP, CONFIG_HELP, MODELS_DIR_HELP, STATE_DIR_HELP, THREADS_HELP
from edge.cli import biometry as biometry_cli
from edge.cli import exam as exam_cli
from edge.cli import fleet as fleet_cli
from edge.cli import pin as pin_cli
from edge.config import MAX_LOOP_FRAMES, ConfigError, ModelSettings, Settings, load_settings
from edge.exam.protocol import ProtocolError
from edge.models.manifest import Manifest, ModelError, list_manifests
from edge.models.quality import RulesError
from edge.store.outbox import OutboxError
from edge.store.state import StateError
from edge.web.auth import PinError
from edge.web.settings import WebError
from wire.cli import OneLineParser
from wire.fleet import BundleError
from wire.mqtt import URL_PASSWORD_WARNING, url_has_password
from wire.shown import shown, shown_path

EXPECTED_ERRORS = (ConfigError, ModelError, SourceError, biometry_cli.InputError,
                   ProtocolError, RulesError, PinError, WebError)
DELEGATED = {"status": "uplink and device status",
             "outbox": "messages waiting to be published"}
EXPECTED_ERRORS += (StateError, OutboxError)  # the state dir, the journal and the outbox
EXPECTED_ERRORS += (BundleError,)  # model bundles, keys and slots (edge/fleet)


def _score(args: argparse.Namespace) -> int:
    from edge.capture.sources import narrowing, open_sources
    from edge.config import frame_limits
    from edge.scorer import make_scorer, timed_frames

    overrides = {"models": {"dir": args.models_dir, "backend": args.backend,
                            "num_threads": args.threads},
                 "biometry": {"pixel_size_mm": args.pixel_size,
                              # a pixel size given here is these frames' scale: no ruler
                              "ruler_tick_mm": args.ruler_tick if args.ruler_tick is not None
                              else 0.0 if args.pixel_size is not None else None}}
    settings = load_settings(args.config, overrides)
    scorer = make_scorer(settings)
    failed = 0
    with open_sources(args.paths, limits=frame_limits(settings)) as source:
        for frame, capture_s in timed_frames(source, scorer.prepare_frame,
                                             reshape=narrowing(settings.source.stretch)):
            result = scorer.score(frame, capture_s)
            failed += result.error is not None
            if result.error:
                print(f"sonoedge: {result.error}", file=sys.stderr)
            print(json.dumps(result.to_dict(), separators=(",", ":")), flush=True)
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from edge.fleet.agent import RESTART_EXIT
    from edge.loop import run

    overrides = {
        "source": {"spec": args.source},
        "device": {"state_dir": args.state_dir, "device_id": args.device_id},
        "mqtt": {"url": args.mqtt_url, "device_id": args.device_id},
        "loop": {"max_frames": args.max_frames},
        "web": {"listen": args.web},
    }
    settings = load_settings(args.config, overrides)
    # -1 was taken as "stop after the first frame"; a billion frames is a year at 30 fps
    if not 0 <= settings.loop.max_frames <= MAX_LOOP_FRAMES:
        where = "--max-frames" if args.max_frames is not None else \
            f"{shown_path(args.config)}: loop.max_frames"
        raise ConfigError(f"{where} must be 0 (until the source ends) to {MAX_LOOP_FRAMES}, "
                          f"got {shown(settings.loop.max_frames)}")
    if args.mqtt_url and url_has_password(args.mqtt_url):
        print(f"sonoedge: warning: {URL_PASSWORD_WARNING} ([mqtt] password_file)",
              file=sys.stderr)
    if settings.logging.file:
        from edge.logfile import log_to_file

        log_to_file(settings.logging)
    while (code := run(settings, once=args.once)) == RESTART_EXIT:
        pass  # new models were installed: the loop starts again on them (edge/fleet)
    return code


def _describe(manifest: Manifest) -> dict:
    raw = manifest.raw
    return {"name": manifest.name, "version": manifest.version, "task": manifest.task,
            "file": str(manifest.model_path), "sha256": manifest.sha256, "verified": True,
            "input": raw.get("input"), "labels": list(manifest.labels),
            "preprocessing": raw.get("preprocessing"), "quantization": raw.get("quantization"),
            "metrics": raw.get("metrics"), "licences": raw.get("licences")}


def _models_dir(args: argparse.Namespace, settings: Settings | None) -> str:
    """--models-dir, else the models the config's loop loads: with the fleet on, the slot
    `current` names once the loop has seeded it, else `[models] dir`. Without --config, the
    shipped models/ alone were listed, whatever the box ran (a user's walk)."""
    if args.models_dir:
        return args.models_dir
    if settings is None:
        return ModelSettings().dir
    from edge.fleet.settings import fleet_root
    from edge.fleet.slots import CURRENT

    current = fleet_root(settings) / CURRENT
    if settings.fleet.enabled and current.exists():
        return str(current)
    return settings.models.dir


def _needed_models(settings: Settings) -> list[tuple[str, str]]:
    """(manifest name, what its absence does) of each model the config's loop loads: the
    plane model always; the head segmenter where `[biometry]` gives a scale to measure at
    (without one a box may go without it: absent is how a site says no biometry); the
    learned quality head where the audit is on, names one and has criteria it measures.
    Listing only what was there, `models --config` let an installer believe a box
    complete that would start without biometry, or not at all (a user's walk)."""
    from edge.models.quality import load_rules

    needed = [(settings.models.plane,
               "[models] plane: `run` and `score` do not start without it")]
    bio = settings.biometry
    scale = "ruler_tick_mm" if bio.ruler_tick_mm else "pixel_size_mm" if bio.pixel_size_mm \
        else None
    if scale:
        needed.append((bio.segmenter, f"[biometry] segmenter: [biometry] {scale} is set, "
                                      "but no head is measured without it"))
    cfg = settings.quality
    if cfg.enabled and cfg.learned and load_rules(cfg.rules or None).needs_learned_head():
        needed.append((cfg.learned, "[quality] learned: the quality criteria it measures "
                                    "are left out without it"))
    return needed


def _models(args: argparse.Namespace) -> int:
    from edge.models.runtime import load_model

    settings = None if args.config is None else load_settings(args.config)
    args.models_dir = _models_dir(args, settings)
    folder = Path(args.models_dir)
    # What the loop needs and the folder lacks, each one line naming the folder and the
    # model (said beside the listing of what is there), as `run` would find it missing.
    missing = [f"sonoedge: {shown_path(folder)}: {shown_path(name, 80)} is missing ({why})"
               for name, why in (_needed_models(settings) if settings else [])
               if not (folder / f"{name}.json").is_file()]
    # The same checks `run` and `score` make before they use a model: manifest fields,
    # sha256, and the model's own tensors against the manifest (input shape, label count).
    found = [item if isinstance(item, ModelError) else _loads(load_model, item)
             for item in list_manifests(folder)]
    if not found:
        print(f"sonoedge: {shown_path(folder)}: no model manifests", file=sys.stderr)
        for line in missing:
            print(line, file=sys.stderr)
        return 1
    bad = len(missing)
    for item in found:
        if isinstance(item, ModelError):
            bad += 1
            print(f"sonoedge: {item}", file=sys.stderr)
        elif args.json:
            print(json.dumps(_describe(item)))
        else:
            raw = item.raw
            size = raw.get("size_bytes", item.model_path.stat().st_size)
            shape = "x".join(str(v) for v in item.input_shape)
            print(f"{item.ident}  {item.task}  {item.model_path.name}  {size / 1024:.0f} KiB  "
                  f"input {shape} {raw['input'].get('dtype', '?')}  sha256 {item.sha256[:12]} ok")
            for name, metric in sorted((raw.get("metrics") or {}).items()):
                print(f"    {name}: {_metric_value(metric)}")
    for line in missing:
        print(line, file=sys.stderr)
    return 1 if bad else 0


def _metric_value(metric: object) -> str:
    """A metric's figure: its `value`, or, for a table of figures without one (the plane
    model's calibration), its figures as key=value; one line whatever a manifest holds."""
    if isinstance(metric, dict) and "value" in metric:
        metric = metric["value"]
    elif isinstance(metric, dict):
        return " ".join(f"{shown_path(k, 40)}={shown_path(v, 40)}"
                        for k, v in list(metric.items())[:24])
    return shown_path(metric, 200)


def _loads(load_model, manifest: Manifest) -> Manifest | ModelError:
    from edge.models import biometry, planes, quality

    # What `score` and `run` check of a model in its role (the plane model's task and class
    # maps, the segmenter's biometry block, the quality head's task and labels): the role
    # its manifest's name has in the default config, else the one its task names.
    checks = (planes.check_plane_model, biometry.check_segmenter, quality.check_quality_head)
    defaults = Settings()
    names = (defaults.models.plane, defaults.biometry.segmenter, defaults.quality.learned)
    tasks = (planes.TASK, biometry.TASK, quality.TASK)
    role = dict(zip(names, checks, strict=True)).get(manifest.path.stem) or dict(
        zip(tasks, checks, strict=True)).get(manifest.task)
    try:
        load_model(manifest, "litert", 1)
        if role is not None:
            role(manifest)
    except ModelError as exc:
        return exc
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sonoedge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    score = verbs.add_parser("score", help="score images, folders or videos; JSON per frame")
    score.add_argument("paths", nargs="+", help="image files, folders (sorted) or video files")
    score.add_argument("--config", type=Path, help=CONFIG_HELP)
    score.add_argument("--models-dir", help=MODELS_DIR_HELP)
    score.add_argument("--backend", choices=["litert", "edgetpu", "tflite-runtime"],
                       help=BACKEND_HELP)
    score.add_argument("--threads", type=int, help=THREADS_HELP)
    score.add_argument("--pixel-size", type=float, metavar="MM",
                       help="mm per pixel of these frames: head-plane frames get head biometry "
                            "(default: the config's [biometry] pixel_size_mm; 0 = off)")
    score.add_argument("--ruler-tick", type=float, metavar="MM",
                       help="read each frame's scale from the scanner's depth ruler, a tick "
                            "every MM mm (default: the config's [biometry] ruler_tick_mm; "
                            "0 = off)")
    score.set_defaults(func=_score)

    run = verbs.add_parser("run", help="the on-device loop: capture, score, journal, publish")
    run.add_argument("--config", type=Path, help=CONFIG_HELP)
    run.add_argument("--source", help="demo | file | folder | v4l2:N | /dev/videoN | picamera2")
    run.add_argument("--mqtt-url", help="mqtt[s]://user@host:port (the password: the "
                     "config's [mqtt] password_file, never a command line others can read)")
    run.add_argument("--device-id", help="this box's id, its broker user name (default: the "
                     "config's [device] device_id, else one derived from the machine)")
    run.add_argument("--state-dir", help=STATE_DIR_HELP)
    run.add_argument("--max-frames", type=int, help="stop after this many frames (default: "
                     "the config's [loop] max_frames; 0 = until the source ends)")
    run.add_argument("--web", metavar="HOST:PORT",
                     help="serve the midwife's page here (needs `sonoedge pin set` first)")
    run.add_argument("--once", action="store_true",
                     help="process the source to its end, try to drain the outbox, exit 0")
    run.set_defaults(func=_run)

    biometry_cli.add_parser(verbs)
    exam_cli.add_parser(verbs)
    pin_cli.add_parser(verbs)
    fleet_cli.add_parser(verbs)

    models = verbs.add_parser("models", help="installed models with their manifests")
    models.add_argument("--models-dir", help="a models folder (default: the config's, else "
                                             "the shipped models/)")
    models.add_argument("--config", help="the device's config: its [models] dir, or with "
                                         "[fleet] on the set its loop runs")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models.set_defaults(func=_models)

    for name, text in DELEGATED.items():
        verbs.add_parser(name, help=text, add_help=False)  # listed in --help; see main()
    return parser


def _delegate(name: str, argv: list[str]) -> int:
    from edge.cli import outbox as outbox_cli

    return (outbox_cli.status_main if name == "status" else outbox_cli.outbox_main)(argv)


def quiet_opencv(verbose: bool) -> None:
    """OpenCV's decoders print their own lines ("[ERROR:0@0.3] global grfmt_png.cpp:296
    readHeader ...") beside ours for one corrupt frame; the frame's error already names the
    file and says what is wrong, once. With -v, or OPENCV_LOG_LEVEL set, OpenCV speaks."""
    if verbose or os.environ.get("OPENCV_LOG_LEVEL"):
        return
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_FATAL)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    quiet_opencv(verbose)
    rest = argv[1:] if verbose else argv
    try:
        if rest and rest[0] in DELEGATED:
            # These verbs own their whole argument list (argparse's REMAINDER would drop
            # a leading option such as --state-dir).
            return _delegate(rest[0], rest[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except EXPECTED_ERRORS as exc:
        print(f"sonoedge: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `sonoedge score ... | head -1`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
