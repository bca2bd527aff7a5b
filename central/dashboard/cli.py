"""The dashboard's verbs of ``sonoedge-central``:

    sonoedge-central serve --db URL --listen HOST:PORT
    sonoedge-central users add NAME --role viewer --district D --db URL   (password on stdin)
    sonoedge-central users list|remove NAME --db URL
    sonoedge-central districts FILE --db URL     (clinic_id,district[,name] per line)
    sonoedge-central seed --db URL [--clinics 50 --days 730]   (a simulated district)

A bad --db, a missing database, a malformed districts file or a bad user is one line on
standard error and exit status 2.
"""

from __future__ import annotations

import getpass
import logging
import re
import sys
from pathlib import Path

from central.db import DEFAULT_DB, DbError, redact
from wire.cli import OneLineParser
from wire.schema import PayloadError, read_regular_file
from wire.shown import shown

CLINIC_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
# A country's clinics fit in well under 1 MiB (64 + 64 + 100 characters a line); a larger
# file was read whole (53 MB: 760 MB of memory), and a FIFO was waited on for ever.
MAX_DISTRICTS_BYTES = 4 * 1024 * 1024


def serve_main(argv: list[str]) -> int:
    from central.dashboard.server import ServeSettings, parse_listen, serve

    ap = OneLineParser(prog="sonoedge-central serve",
                                 description="The district's web dashboard over the "
                                             "collector's database.")
    ap.add_argument("--db", default=DEFAULT_DB, help="SQLite path or postgresql://...")
    ap.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT (default "
                    "127.0.0.1:8090; put TLS in front of it for anything beyond loopback)")
    ap.add_argument("--secure-cookie", action="store_true",
                    help="mark the session cookie Secure (behind an HTTPS proxy)")
    ap.add_argument("--refresh-s", type=float, default=None,
                    help="how often new messages are rolled up (default 5 s)")
    ap.add_argument("--nice", type=int, default=None,
                    help="CPU priority (default 10: the collector on the same box comes first)")
    ap.add_argument("--no-cache", action="store_true",
                    help="make every page from the database on every view (for measuring)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        host, port = parse_listen(args.listen)
        settings = ServeSettings(db_url=args.db, host=host, port=port,
                                 secure_cookie=args.secure_cookie, cache=not args.no_cache)
        if args.refresh_s is not None:
            if not 0.1 <= args.refresh_s <= 3600:
                raise ValueError("--refresh-s must be within 0.1-3600")
            settings.refresh_every_s = args.refresh_s
        if args.nice is not None:
            if not 0 <= args.nice <= 19:
                raise ValueError("--nice must be within 0-19")
            settings.nice = args.nice
        return serve(settings)
    except (ValueError, DbError) as exc:
        print(f"sonoedge-central serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the address is taken or cannot be bound
        print(f"sonoedge-central serve: cannot listen on {args.listen}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2


def users_main(argv: list[str]) -> int:
    from central.dashboard import auth
    from central.dashboard.store import open_db

    ap = OneLineParser(prog="sonoedge-central users",
                                 description="Dashboard users: add (or change), list, remove.")
    ap.add_argument("action", choices=("add", "list", "remove"))
    ap.add_argument("username", nargs="?", default="")
    ap.add_argument("--role", choices=auth.ROLES, default="viewer")
    ap.add_argument("--district", default="", help="the district a viewer sees")
    ap.add_argument("--db", default=DEFAULT_DB)
    args = ap.parse_args(argv)
    try:
        if args.action != "list" and not args.username:
            raise auth.AuthError(f"users {args.action} needs a user name")
        password = _read_password() if args.action == "add" else ""
        db = open_db(args.db)
        try:
            if args.action == "add":
                user = auth.add_user(db, args.username, args.role, args.district, password)
                where = f" of {user.district}" if user.district else ""
                print(f"user {user.username}: {user.role}{where}")
                if user.district and not db.query(
                        "SELECT 1 FROM dash.clinics WHERE district = ? LIMIT 1",
                        (user.district,)):
                    # a typo, or districts not loaded yet: the viewer would see empty pages
                    print(f"sonoedge-central users: warning: no clinic is in district "
                          f"{shown(user.district)} yet, so {user.username} sees nothing until "
                          f"`sonoedge-central districts FILE` puts some there", file=sys.stderr)
            elif args.action == "remove":
                if not auth.remove_user(db, args.username):
                    raise auth.AuthError(f"no user {shown(args.username)}")
                print(f"user {args.username} removed")
            else:
                users = auth.list_users(db)
                for u in users:
                    print(f"{u.username}\t{u.role}\t{u.district or '-'}")
                if not users:
                    print("no users yet: `sonoedge-central users add NAME --role admin "
                          f"--db {redact(args.db)}` makes the first", file=sys.stderr)
        finally:
            db.close()
    except (auth.AuthError, DbError) as exc:
        print(f"sonoedge-central users: {exc}", file=sys.stderr)
        return 2
    return 0


def _read_password() -> str:
    from central.dashboard import config as C
    from central.dashboard.auth import AuthError

    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AuthError("the two passwords differ")
        return first
    # Bytes, bounded: a 300 MB line was read whole, and bytes that are not UTF-8 were a
    # traceback. Anything past the first line is not the password.
    line = sys.stdin.buffer.readline(4 * C.PASSWORD_MAX + 2)
    if not line:
        raise AuthError("no password on standard input")
    if len(line) > 4 * C.PASSWORD_MAX and not line.endswith(b"\n"):
        raise AuthError(f"the password on standard input is over {C.PASSWORD_MAX} "
                        "characters")
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise AuthError("the password on standard input is not UTF-8 text") from None


def _read_bounded(path: str | Path) -> bytes:
    """A regular file's bytes, at most MAX_DISTRICTS_BYTES; ValueError names the file."""
    try:
        return read_regular_file(path, MAX_DISTRICTS_BYTES)[0]
    except PayloadError as exc:  # a folder, a FIFO (waited on for ever), too large
        raise ValueError(f"{path}: {exc}; not a districts file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_districts(path: str | Path) -> list[tuple[str, str, str]]:
    """``clinic_id,district[,name]`` per line, ``#`` comments; ValueError names the line.

    A clinic named twice is refused: which district it is in would depend on the order."""
    from central.dashboard.auth import DISTRICT_RE

    data = _read_bounded(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{lineno}: not UTF-8 text") from None
    out = []
    where: dict[str, int] = {}
    # split("\n"), not splitlines(): a CR or U+0085 inside a name is an error on its own
    # line number, not a line of its own.
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        parts = [x.strip() for x in line.split(",")]
        if len(parts) not in (2, 3) or not CLINIC_RE.match(parts[0]) \
                or not DISTRICT_RE.match(parts[1]) or len(parts[-1]) > 100 \
                or not parts[-1].isprintable():
            raise ValueError(f"{path}:{lineno}: expected clinic_id,district[,name], got "
                             f"{shown(line, 80)}")
        if parts[0] in where:
            raise ValueError(f"{path}:{lineno}: clinic {parts[0]} is already on line "
                             f"{where[parts[0]]}")
        where[parts[0]] = lineno
        out.append((parts[0], parts[1], parts[2] if len(parts) == 3 else parts[0]))
    return out


def districts_main(argv: list[str]) -> int:
    from central.dashboard.store import open_db

    ap = OneLineParser(prog="sonoedge-central districts",
                                 description="Load which district each clinic belongs to.")
    ap.add_argument("file", help="clinic_id,district[,name] per line")
    ap.add_argument("--db", default=DEFAULT_DB)
    args = ap.parse_args(argv)
    try:
        entries = read_districts(args.file)
        db = open_db(args.db)
        try:
            with db.tx():
                for clinic, district, name in entries:
                    db.execute("INSERT INTO dash.clinics (clinic_id, district, name) VALUES "
                               "(?, ?, ?) ON CONFLICT (clinic_id) DO UPDATE SET district = "
                               "excluded.district, name = excluded.name",
                               (clinic, district, name))
        finally:
            db.close()
    except (ValueError, DbError) as exc:
        print(f"sonoedge-central districts: {exc}", file=sys.stderr)
        return 2
    print(f"{len(entries)} clinics in {len({d for _, d, _ in entries})} districts")
    return 0


def seed_main(argv: list[str]) -> int:
    from central.dashboard.seed import SeedSettings, seed

    ap = OneLineParser(prog="sonoedge-central seed",
                                 description="Fill an empty collector database with a "
                                             "simulated district (for scale tests).")
    ap.add_argument("--db", required=True)
    ap.add_argument("--clinics", type=int, default=50)
    ap.add_argument("--districts", type=int, default=5)
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args(argv)
    if not (1 <= args.clinics <= 1000 and 1 <= args.districts <= args.clinics
            and 1 <= args.days <= 3650):
        print("sonoedge-central seed: --clinics 1-1000, --districts 1-clinics, --days 1-3650",
              file=sys.stderr)
        return 2
    try:
        res = seed(args.db, SeedSettings(clinics=args.clinics, districts=args.districts,
                                         days=args.days, seed=args.seed))
    except DbError as exc:
        print(f"sonoedge-central seed: {exc}", file=sys.stderr)
        return 2
    print(f"{res.exam} exams, {res.health} health, {res.status} status, {res.dates} "
          f"age-by-dates corrections from {res.devices} devices in {res.seconds:.0f} s")
    return 0


VERBS = {"serve": serve_main, "users": users_main, "districts": districts_main,
         "seed": seed_main}
