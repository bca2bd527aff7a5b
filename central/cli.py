"""``sonoedge-central ...``: run the collector, or print its report.

    sonoedge-central --mqtt-url mqtt://central:PW@broker:1883 --db postgresql://...
    sonoedge-central report --db sonoedge-central.sqlite3 [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys

from central.db import DEFAULT_DB, DbError, Store
from wire.cli import OneLineParser
from wire.shown import one_line, shown

USAGE = ("sonoedge-central [run] --mqtt-url URL [--db URL] ... | sonoedge-central "
         "report|serve|users|districts|seed|bundle ... (COMMAND --help)")
VERBS_HELP = """sonoedge-central COMMAND ... (each COMMAND --help says more):
  run        the MQTT collector (the default; its flags below)
  report     per-device and per-clinic counts from the collector's database
  serve      the district dashboard (web)
  users      the dashboard's users: add, list, remove
  districts  the map of clinics to districts and names: a CSV replaces it
  seed       a simulated district, for scale tests and a first look
  bundle     publish or export a signed model bundle
"""


def check_collector_numbers(args: argparse.Namespace) -> None:
    """Bounds the collector's numbers: a NaN --duration-s ran for ever, and a negative
    --max-bytes or --reconnect-max-s was taken without a word."""
    if not 1 <= args.max_bytes <= 1 << 20:
        raise ValueError(f"--max-bytes {args.max_bytes}: must be 1-{1 << 20}")
    if not 0.1 <= args.reconnect_max_s <= 3600:  # also false for NaN
        raise ValueError(f"--reconnect-max-s {args.reconnect_max_s}: must be within 0.1-3600")
    if args.duration_s is not None and not (math.isfinite(args.duration_s)
                                            and args.duration_s > 0):
        raise ValueError(f"--duration-s {args.duration_s}: must be a number of seconds over 0")
    if not 0 <= args.dead_letter_quota <= 10 ** 9:
        raise ValueError(f"--dead-letter-quota {args.dead_letter_quota}: must be 0-{10 ** 9}")
    if not 1 <= args.dead_letter_window_s <= 366 * 86400:  # also false for NaN
        raise ValueError(f"--dead-letter-window-s {args.dead_letter_window_s}: must be within "
                         f"1-{366 * 86400} seconds")
    for flag, value in (("--exam-quota", args.exam_quota),
                        ("--health-quota", args.health_quota)):
        if not 1 <= value <= 10 ** 9:  # 0: no exam ever receipted, and a new box's lost
            raise ValueError(f"{flag} {value}: must be 1-{10 ** 9}")
    if not 1 <= args.message_window_s <= 366 * 86400:  # also false for NaN
        raise ValueError(f"--message-window-s {args.message_window_s}: must be within "
                         f"1-{366 * 86400} seconds")
    if not 1 <= args.alive_every_s <= 300:  # also false for NaN; the dashboard waits 900 s
        raise ValueError(f"--alive-every-s {args.alive_every_s}: must be within 1-300 seconds")


def _collector_parser() -> argparse.ArgumentParser:
    from central.collector import CollectorSettings as defaults  # the numbers live there

    ap = OneLineParser(prog="sonoedge-central", description="MQTT collector: "
                                 "stores every device message once, bad ones dead-lettered.")
    # required, but checked after the words it does not know (`collector_main`): `run frob`
    # was answered "--mqtt-url is required"
    ap.add_argument("--mqtt-url", default="",
                    help="mqtt[s]://user@host:port (the password from --password-file); "
                         "required")
    ap.add_argument("--password-file", default="",
                    help="file holding the MQTT password (mode 0600); never put it in the URL")
    ap.add_argument("--registry", default="",
                    help="device_id,clinic_id per line (board/provision.py --registry): the "
                         "clinic of each device; payloads cannot choose it")
    ap.add_argument("--db", default=DEFAULT_DB,
                    help=f"SQLite path or postgresql://... (default {DEFAULT_DB})")
    ap.add_argument("--client-id", default="",
                    help="MQTT client id; keep it stable, the broker keeps its session")
    ap.add_argument("--share-group", default="",
                    help="shared-subscription group to split the load between collectors: "
                         "a secret of 16+ random characters, the same for each (default: "
                         "none, a plain subscription)")
    ap.add_argument("--share-group-file", default="",
                    help="the group's name read from this file (mode 0600), off the "
                         "command line that ps shows")
    ap.add_argument("--no-share", action="store_true",
                    help="plain subscription, no $share (the default now; kept for scripts)")
    ap.add_argument("--max-bytes", type=int, default=4096,
                    help="larger messages are dead-lettered (default 4096)")
    ap.add_argument("--tls-ca", default="")
    ap.add_argument("--tls-cert", default="")
    ap.add_argument("--tls-key", default="")
    ap.add_argument("--reconnect-max-s", type=float, default=30.0)
    ap.add_argument("--dead-letter-quota", type=int, default=defaults.dead_letter_quota,
                    help="dead letters written per device per --dead-letter-window-s; the "
                         "rest are counted and logged, not stored (default %(default)s)")
    ap.add_argument("--dead-letter-window-s", type=float,
                    default=defaults.dead_letter_window_s,
                    help="the window of --dead-letter-quota, a fixed one its first letter "
                         "opens: at most twice the quota in any rolling window (default "
                         "%(default)s)")
    ap.add_argument("--exam-quota", type=int, default=defaults.exam_quota,
                    help="exams, and dates and withdrawals, each, stored per device per "
                         "--message-window-s; the rest get no receipt and their boxes send "
                         "them again later (default %(default)s)")
    ap.add_argument("--health-quota", type=int, default=defaults.health_quota,
                    help="health and status messages, each, stored per device per "
                         "--message-window-s; the rest are counted and dropped (default "
                         "%(default)s)")
    ap.add_argument("--message-window-s", type=float, default=defaults.message_window_s,
                    help="the window of --exam-quota and --health-quota, a fixed one its "
                         "first message opens (default %(default)s)")
    ap.add_argument("--duration-s", type=float, default=None,
                    help="stop after this many seconds (default: run until SIGTERM)")
    ap.add_argument("--alive-every-s", type=float, default=defaults.alive_every_s,
                    help="how often this collector marks itself alive in the database; the "
                         "dashboard says no collector runs after 15 minutes without a mark "
                         "(default %(default)s)")
    ap.add_argument("--log-level", default="INFO")
    return ap


def _report_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="sonoedge-central report",
                                 description="Per-device and per-clinic counts.")
    ap.add_argument("--db", default=DEFAULT_DB, help="SQLite path or postgresql://...")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--registry", default="",
                    help="device_id,clinic_id per line (board/provision.py --registry): "
                         "also list the boxes provisioned and never heard from")
    ap.add_argument("--seq-jump", type=int, default=1000,
                    help="a hole in a device's seq longer than this is a jump (a broken or "
                         "hostile counter), flagged and not counted as lost (default 1000)")
    return ap


def report_main(argv: list[str]) -> int:
    from central.fleet import format_fleet
    from central.report import build_report, format_report

    args = _report_parser().parse_args(argv)
    if args.seq_jump < 1:  # was taken as 1 without a word
        print(f"sonoedge-central report: --seq-jump {args.seq_jump}: must be 1 or more",
              file=sys.stderr)
        return 2
    registry = None
    if args.registry:
        from central.collector import read_registry

        try:
            registry = read_registry(args.registry)
        except (OSError, ValueError) as exc:  # names the file (and line)
            print(f"sonoedge-central report: --registry: {one_line(exc)}", file=sys.stderr)
            return 2
    try:
        store = Store(args.db, create=False)
        try:
            rep = build_report(store, seq_jump=args.seq_jump, registry=registry)
        finally:
            store.close()
    except DbError as exc:
        print(f"sonoedge-central report: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(rep, indent=1) if args.json
              else format_report(rep) + format_fleet(rep["fleet"]))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head` closed the pipe: not an error
        sys.stderr.close()
    return 0


def collector_main(argv: list[str]) -> int:
    from central.collector import Collector, CollectorSettings
    from wire.mqtt import URL_PASSWORD_WARNING, url_has_password

    ap = _collector_parser()
    args, unknown = ap.parse_known_args(argv)
    if unknown:  # a word it does not know, said first (`run frob`), as itself
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        print(f"sonoedge-central: error: unknown argument {shown(unknown[0])}{more}: "
              "the collector (run) takes only its flags (see sonoedge-central --help)",
              file=sys.stderr)
        return 2
    if not args.mqtt_url:
        ap.error("the following arguments are required: --mqtt-url")
    try:
        check_collector_numbers(args)
    except ValueError as exc:
        print(f"sonoedge-central: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if url_has_password(args.mqtt_url):
        print(f"sonoedge-central: warning: {URL_PASSWORD_WARNING} (--password-file)",
              file=sys.stderr)
    share_group = args.share_group
    if args.share_group_file:
        from wire.mqtt import read_secret_file

        try:
            share_group = read_secret_file(args.share_group_file)
        except ValueError as exc:  # names the file and what is wrong with it, one line
            print(f"sonoedge-central: --share-group-file: {exc}", file=sys.stderr)
            return 2
    settings = CollectorSettings(
        mqtt_url=args.mqtt_url, db_url=args.db, client_id=args.client_id,
        share_group="" if args.no_share else share_group, max_bytes=args.max_bytes,
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        reconnect_max_s=args.reconnect_max_s, duration_s=args.duration_s,
        password_file=args.password_file, registry=args.registry,
        dead_letter_quota=args.dead_letter_quota,
        dead_letter_window_s=args.dead_letter_window_s, exam_quota=args.exam_quota,
        health_quota=args.health_quota, message_window_s=args.message_window_s,
        alive_every_s=args.alive_every_s,
    )
    try:
        collector = Collector(settings)
    except (ValueError, DbError) as exc:
        print(f"sonoedge-central: {exc}", file=sys.stderr)
        return 2

    def _stop(_signum, _frame):
        collector.stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, _stop)
        except ValueError:  # not the main thread (embedded use)
            pass
    return collector.run()


# The first words `main` takes; the collector (`run`) is also started with its flags alone.
COMMANDS = ("run", "report", "serve", "users", "districts", "seed", "bundle")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv  # the console script passes nothing
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        # a mistyped command was taken as the collector's and refused as "--mqtt-url is
        # required" (a user's walk): said as what it is, with the commands there are
        print(f"sonoedge-central: error: unknown command {shown(argv[0])}: choose one "
              f"of {', '.join(COMMANDS)} (see sonoedge-central --help)", file=sys.stderr)
        return 2
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] == "bundle":  # publish or export a signed model bundle
        from central.fleet import bundle_main

        return bundle_main(argv[1:])
    if argv and argv[0] in ("serve", "users", "districts", "seed"):  # the dashboard's verbs
        from central.dashboard.cli import VERBS

        return VERBS[argv[0]](argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help") and len(argv) == 1:
        print(VERBS_HELP)  # first: the collector's flags alone hid the other commands
        _collector_parser().print_help()
        print(f"\nusage: {USAGE}")
        return 0 if argv else 2
    return collector_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
