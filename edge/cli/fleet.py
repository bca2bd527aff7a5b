"""`sonoedge keys new`, `sonoedge bundle make|install|verify|status`: signed model bundles.

    sonoedge keys new --out keys/ --name district-a        # district-a.key (0600), .pub
    sonoedge bundle make --models models/ --key keys/district-a.key --out b.bundle \
        --version 2025.6.1 --group district-a --frames selftest-frames/
    sonoedge bundle install b.bundle [--config /etc/sonoedge/device.toml]   # e.g. from USB
    sonoedge bundle verify b.bundle --keys keys/
    sonoedge bundle status [--config ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from edge.cli import STATE_DIR_HELP
from edge.fleet.settings import fleet_root, selftest_names
from wire.fleet import BundleError


def open_fleet(settings, config: Path | None = None):
    """The device's slots, made on first use from `[models] dir`; BundleError when off."""
    from edge.fleet.slots import Fleet

    if not settings.fleet.enabled and config is None:
        raise BundleError("no --config: give the device's, as `sonoedge run` is given it "
                          "(--config /etc/sonoedge/device.toml), with [fleet] on")
    if not settings.fleet.enabled:
        raise BundleError("the fleet is off in this config: set [fleet] enabled = true and "
                          "group")
    fleet = Fleet(fleet_root(settings), settings.fleet)
    fleet.ensure(Path(settings.models.dir))
    return fleet


def _keys_new(args: argparse.Namespace) -> int:
    from edge.fleet.keys import new_keypair

    key, pub = new_keypair(Path(args.out), args.name)
    print(f"private key {key} (mode 0600: keep it off the devices and off-line); public key "
          f"{pub} (install it in each device's [fleet] trusted_keys folder)")
    return 0


def _make(args: argparse.Namespace) -> int:
    from edge.fleet.bundle import make_bundle
    from edge.fleet.selftest import rules_version
    from wire.fleet import LEARNED_MEMBER, MADE_WITH_MEMBER

    t0 = time.monotonic()
    try:
        tolerance = json.loads(args.tolerance) if args.tolerance else None
    except ValueError as exc:
        raise BundleError(f"--tolerance must be a JSON object ({exc})") from None
    if tolerance is not None and not isinstance(tolerance, dict):
        raise BundleError("--tolerance must be a JSON object")
    manifest = make_bundle(Path(args.models), Path(args.key), Path(args.out),
                           version=args.version, group=args.group,
                           min_app_version=args.min_app, frames=[Path(f) for f in args.frames],
                           pixel_size_mm=args.pixel_size, tolerance=tolerance, note=args.note)
    size = Path(args.out).stat().st_size
    unpacked = sum(f["size"] for f in manifest["files"])
    # the rules its expectations were scored with: a box under others does not compare the
    # quality score, and the district learned that only when a box installed it (a walk)
    paths = {f["path"] for f in manifest["files"]}
    rules = rules_version(Path(args.models)) if MADE_WITH_MEMBER in paths else None
    # and whether a box under other rules can check the learned quality head's numbers
    learned = ("but does the learned quality head's severities" if LEARNED_MEMBER in paths
               else "and no learned quality head's numbers are recorded")
    print(f"{args.out}: bundle {manifest['version']} for group {manifest['group']}, "
          f"{len(manifest['files'])} files, {size} bytes ({unpacked} unpacked), "
          f"{len(manifest['selftest']['frames'])} self-test frames scored with "
          + (f"quality rules {rules} (a box under other rules does not compare their "
             f"quality scores, {learned})" if rules else "no quality rules (the audit is off)")
          + f", {time.monotonic() - t0:.1f} s")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edge.fleet.bundle import Limits, read_bundle
    from edge.fleet.keys import load_trusted_keys

    keys = load_trusted_keys(Path(args.keys))
    t0 = time.monotonic()
    manifest, signer = read_bundle(Path(args.file), keys, Limits(1 << 32, 1 << 34))
    print(f"{args.file}: bundle {manifest.version} for group {manifest.group}, signed by "
          f"{signer}, {len(manifest.files)} files verified in {time.monotonic() - t0:.2f} s")
    return 0


def _install(args: argparse.Namespace) -> int:
    from edge.config import load_settings
    from edge.fleet.keys import load_trusted_keys

    settings = load_settings(args.config, {"device": {"state_dir": args.state_dir}})
    fleet = open_fleet(settings, args.config)
    keys = load_trusted_keys(Path(settings.fleet.trusted_keys))
    before = fleet.status()["bundle"]
    manifest = fleet.install(Path(args.file), keys, selftest_names(settings))
    t = getattr(fleet, "timings", {})
    print(f"bundle {manifest.version} installed (was {before}): verify "
          f"{t.get('verify_s', 0):.2f} s, self-test {t.get('selftest_s', 0):.2f} s, swap "
          f"{t.get('swap_s', 0) * 1000:.1f} ms; on trial for {settings.fleet.trial_min:g} "
          f"min of running; a running loop picks it up within seconds")
    if fleet.selftest_rules:
        print(f"self-test: scored with quality rules {fleet.selftest_rules}")
    for note in fleet.selftest_notes:
        print(f"self-test: {note}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from edge.config import load_settings

    settings = load_settings(args.config, {"device": {"state_dir": args.state_dir}})
    root = fleet_root(settings)
    if settings.fleet.enabled and not os.path.lexists(root):
        # a look must not make what it looks at: a mistyped --state-dir was made whole,
        # seeded with the factory models and shown as a healthy "factory" box (and a
        # `sudo` look before the first start left the service root's files)
        raise BundleError(f"{root}: no fleet here yet (the loop or `bundle install` makes it "
                          "on its first start); is this the device's state dir?")
    print(json.dumps(open_fleet(settings, args.config).status(), indent=1))
    return 0


def add_parser(verbs) -> None:
    keys = verbs.add_parser("keys", help="Ed25519 signing keys for model bundles")
    keys_verbs = keys.add_subparsers(dest="keys_verb", required=True)
    new = keys_verbs.add_parser("new", help="make a key pair (NAME.key 0600, NAME.pub)")
    new.add_argument("--out", default=".", help="folder (default: here)")
    new.add_argument("--name", default="sonoedge-bundles",
                     help="the key's name: NAME.key and NAME.pub (default: sonoedge-bundles)")
    new.set_defaults(func=_keys_new)

    bundle = verbs.add_parser("bundle", help="signed model bundles: make, install, verify")
    sub = bundle.add_subparsers(dest="bundle_verb", required=True)
    make = sub.add_parser("make", help="pack and sign a models folder")
    make.add_argument("--models", required=True, help="folder of manifests and .tflite files")
    make.add_argument("--key", required=True, help="the Ed25519 private key (keys new)")
    make.add_argument("--out", required=True, help="the bundle file to write")
    make.add_argument("--version", required=True, help="dotted numbers, e.g. 2025.6.1; "
                      "devices refuse a version not above every one they installed")
    make.add_argument("--group", required=True, help="the device group it is for")
    make.add_argument("--min-app", default="0.1.0", help="oldest sonoedge that may run it")
    make.add_argument("--frames", nargs="+", required=True,
                      help="self-test frames (images or folders; 1-32 frames)")
    make.add_argument("--pixel-size", type=float, default=0.0,
                      help="mm per pixel of the frames: the self-test also checks HC")
    make.add_argument("--tolerance", default="",
                      help='JSON, e.g. {"plane_confidence": 0.05, "quality_score": 0.05, '
                           '"hc_mm": 1.0} (the defaults)')
    make.add_argument("--note", default="", help="a free note kept in the signed manifest")
    make.set_defaults(func=_make)

    install = sub.add_parser("install", help="install a bundle by hand (e.g. from a USB stick)")
    install.add_argument("file", help="the .bundle file")
    install.add_argument("--config", type=Path, help="the device's config, as given to "
                         "`sonoedge run` (its [fleet] section must be on)")
    install.add_argument("--state-dir", help=STATE_DIR_HELP)
    install.set_defaults(func=_install)

    verify = sub.add_parser("verify", help="check a bundle's signature and every file")
    verify.add_argument("file", help="the .bundle file")
    verify.add_argument("--keys", required=True, help="folder of trusted *.pub")
    verify.set_defaults(func=_verify)

    status = sub.add_parser("status", help="the installed bundle, its trial, the last rollback")
    status.add_argument("--config", type=Path, help="the device's config, as given to "
                        "`sonoedge run`")
    status.add_argument("--state-dir", help=STATE_DIR_HELP)
    status.set_defaults(func=_status)
