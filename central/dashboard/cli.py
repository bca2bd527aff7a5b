"""The dashboard's verbs of ``sonoedge-central``:

    sonoedge-central serve --db URL --listen HOST:PORT
    sonoedge-central users add NAME --role viewer --district D --db URL   (password on stdin)
    sonoedge-central users list|remove NAME --db URL
    sonoedge-central districts FILE --db URL [--replace] [--dry-run]   (clinic_id,district
                                                 [,name] per line: the whole map, replaced)
    sonoedge-central seed --db URL [--clinics 50 --days 730]   (a simulated district)

A bad --db, a missing database, a malformed districts file or a bad user is one line on
standard error and exit status 2.
"""

from __future__ import annotations

import csv
import getpass
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from central.db import DEFAULT_DB, DbError, redact
from wire.cli import OneLineParser
from wire.schema import PayloadError, read_regular_file
from wire.shown import printable, shown

# A country's clinics fit in well under 1 MiB (64 + 64 + 100 characters a line); a larger
# file was read whole (53 MB: 760 MB of memory), and a FIFO was waited on for ever.
MAX_DISTRICTS_BYTES = 4 * 1024 * 1024
# clinics a districts summary names of each change before "and N more"
NAMED_IN_SUMMARY = 5


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
                # `add` on a name taken changes that user: said, since a new colleague given
                # a taken name had silently taken over the account (role, district, password)
                was = {u.username: u for u in auth.list_users(db)}.get(args.username)
                user = auth.add_user(db, args.username, args.role, args.district, password)
                where = f" of {user.district}" if user.district else ""
                print(f"user {user.username}: {user.role}{where}" + (
                    "" if was is None else
                    f" (an existing user, was {was.role}"
                    f"{f' of {was.district}' if was.district else ''}: changed, with the new "
                    "password; signed out)"))
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


def _is_header(parts: list[str]) -> bool:
    """A spreadsheet's header line: its first two fields are ``clinic_id`` and ``district``."""
    return len(parts) >= 2 and parts[0].lower() == "clinic_id" \
        and parts[1].lower() == "district"


def _fields(line: str) -> list[str] | None:
    """A line's fields as a spreadsheet saves them: a name holding a comma comes quoted
    (`clinic-03,north,"Kibaha, Ward 3"`), which split on every comma had been refused. None
    for a line no CSV reader takes (a quote left open, a line break in a field)."""
    try:
        return [x.strip() for x in next(csv.reader([line], strict=True))]
    except csv.Error:
        return None


def _why_not(line: str, parts: list[str] | None, clinic_re, district_re) -> str:
    """What is wrong with a line's fields, in words naming the field ("" for nothing): the
    line alone had said "expected clinic_id,district[,name]" of a district with a space."""
    if parts is None:
        return ("a control character (a tab, a line break)" if not line.isprintable()
                else "a quote left open" if line.count('"') % 2
                else f"a field over {csv.field_size_limit():,} characters")
    if len(parts) not in (2, 3):
        return (f"{len(parts)} field{'' if len(parts) == 1 else 's'} (a name holding a "
                'comma is quoted: "Kibaha, Ward 3")')
    if not clinic_re.match(parts[0]):
        return (f"clinic_id {shown(parts[0], 30)} is not a clinic id: 1 to 64 letters, "
                "digits, '.', '_' or '-'")
    if not district_re.match(parts[1]):
        return (f"district {shown(parts[1], 30)} is not a district name: a letter or "
                "digit, then up to 63 letters, digits, '.', '_' or '-' (no spaces)")
    if len(parts[-1]) > 100:
        return "the name is over 100 characters"
    if not parts[-1].isprintable():
        return "the name holds a control character (a tab, a line break)"
    return ""


def read_districts(path: str | Path) -> tuple[list[tuple[str, str, str | None]], int | None]:
    """``clinic_id,district[,name]`` per line, ``#`` comments; ValueError names the line.
    A line that gives no name (two fields, or an empty third) has None for it: what name
    the clinic keeps is the map's to say (`replace_map`). Also the number of the header line
    skipped (``clinic_id,district[,...]`` as the first line that is not a comment), or None:
    loaded as a clinic, a header put a clinic called ``clinic_id`` in a district called
    ``district`` for ever.

    A clinic named twice is refused: which district it is in would depend on the order."""
    from central.dashboard.auth import CLINIC_RE, DISTRICT_RE

    data = _read_bounded(path)
    try:
        # a spreadsheet's "CSV UTF-8" starts with a byte order mark
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        lineno = data[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{lineno}: not UTF-8 text") from None
    out = []
    where: dict[str, int] = {}
    header = None
    first = True
    # split("\n"), not splitlines(): a CR or U+0085 inside a name is an error on its own
    # line number, not a line of its own.
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        parts = _fields(line)
        if parts is not None and _is_header(parts):
            if not first:  # two files run together: which lines are whose is a guess
                raise ValueError(f"{path}:{lineno}: a header line (clinic_id,district) "
                                 "after the first line; only the first may be one")
            header = lineno
            first = False
            continue
        first = False
        why = _why_not(line, parts, CLINIC_RE, DISTRICT_RE)
        if why:
            raise ValueError(f"{path}:{lineno}: expected clinic_id,district[,name], got "
                             f"{shown(line, 80)}: {why}")
        if parts[0] in where:
            raise ValueError(f"{path}:{lineno}: clinic {parts[0]} is already on line "
                             f"{where[parts[0]]}")
        where[parts[0]] = lineno
        out.append((parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None))
    return out, header


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _some(items: list[str]) -> str:
    """The first few of `items`, then how many more: a line, however long the map."""
    more = len(items) - NAMED_IN_SUMMARY
    return ", ".join(items[:NAMED_IN_SUMMARY]) + (f" and {more} more" if more > 0 else "")


@dataclass
class MapChange:
    """What loading a districts file does to the map (``dash.clinics``)."""
    old: dict[str, tuple[str, str]]  # clinic -> (district, name), before
    new: dict[str, tuple[str, str]]  # after: the file
    viewed: set[str] = field(default_factory=set)  # the districts of viewers (dash.users)

    @property
    def added(self) -> list[str]:
        return sorted(set(self.new) - set(self.old))

    @property
    def removed(self) -> list[str]:
        return sorted(set(self.old) - set(self.new))

    @property
    def moved(self) -> list[str]:
        return sorted(c for c in set(self.old) & set(self.new)
                      if self.old[c][0] != self.new[c][0])

    @property
    def renamed(self) -> list[str]:
        return sorted(c for c in set(self.old) & set(self.new)
                      if self.old[c][1] != self.new[c][1])

    def emptied(self) -> list[str]:
        """The viewers' districts every clinic of which the file removes (not moves
        elsewhere): their viewers would see empty pages."""
        gone = set(self.removed)
        return sorted(({d for c, (d, _) in self.old.items() if c in gone}
                       - {d for c, (d, _) in self.old.items() if c not in gone})
                      & self.viewed)

    def too_much(self) -> str:
        """Why the change looks like a partial file loaded by mistake, or "": half the map
        or more removed, or every clinic of a district a viewer sees (loaded one district's
        file at a time, as before the file replaced the map, the last would drop the
        others)."""
        removed, emptied = self.removed, self.emptied()
        if not removed or (2 * len(removed) < len(self.old) and not emptied):
            return ""
        why = (f"would remove {len(removed)} of the {len(self.old)} clinics on the map "
               f"({_some([printable(c) for c in removed])})")
        if emptied:
            why += (f", every clinic of {_some([printable(d) for d in emptied])}, whose "
                    "viewers would see nothing")
        return why

    def summary(self) -> str:
        districts = {d for d, _ in self.new.values()}
        parts = []
        if self.added:
            parts.append(f"{len(self.added)} added: {_some(self.added)}")
        if self.removed:
            parts.append(f"{len(self.removed)} removed: "
                         f"{_some([printable(c) for c in self.removed])}")
        if self.moved:
            parts.append(f"{len(self.moved)} moved: " + _some(
                [f"{c} {printable(self.old[c][0])} -> {self.new[c][0]}" for c in self.moved]))
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed: {_some(self.renamed)}")
        return (f"{_plural(len(self.new), 'clinic')} in "
                f"{_plural(len(districts), 'district')} ({'; '.join(parts) or 'no change'})")

    def every_change(self) -> list[str]:
        """Each clinic the file would change, a line each, for a dry run: the summary names
        five of each kind, and an admin checking a country's new map before loading it
        needs to see every move (the file is bounded: MAX_DISTRICTS_BYTES)."""
        out = [f"add {c}: {self.new[c][0]}" + (f", {self.new[c][1]}" if self.new[c][1] else "")
               for c in self.added]
        out += [f"remove {printable(c)}: from {printable(self.old[c][0])}" for c in self.removed]
        out += [f"move {c}: {printable(self.old[c][0])} -> {self.new[c][0]}" for c in self.moved]
        out += [f"rename {c}: {printable(self.old[c][1]) or '(no name)'} -> "
                f"{self.new[c][1] or '(no name)'}" for c in self.renamed]
        return out


def name_kept(clinic: str, name: str | None, old: dict[str, tuple[str, str]]) -> str:
    """The name a clinic has after a load: the file's; where the file gives none, the one
    the map already has, and only a clinic with none yet its id (a two-column file renamed
    every clinic of the map to its id)."""
    return name or old.get(clinic, ("", ""))[1] or clinic


def replace_map(db, entries: list[tuple[str, str, str | None]], replace: bool = False,
                source: str = "the file", dry_run: bool = False) -> MapChange:
    """The districts file as the whole map, in one transaction: its clinics inserted or
    updated (a name the file does not give kept: `name_kept`), every other clinic's map row
    deleted (its messages and rollups stay: only which district it is in goes). ValueError,
    and nothing changed, where the change looks like a partial file (`MapChange.too_much`)
    and `replace` is not given."""
    with db.tx():
        if db.pg:  # two loads at once: each reads the map the other is about to change
            db.execute("LOCK TABLE dash.clinics IN EXCLUSIVE MODE")
        old = {c: (d, n) for c, d, n in db.query(
            "SELECT clinic_id, district, name FROM dash.clinics")}
        change = MapChange(old, {c: (d, name_kept(c, n, old)) for c, d, n in entries},
                           {r[0] for r in db.query("SELECT DISTINCT district FROM dash.users "
                                                   "WHERE role = 'viewer'")})
        if dry_run:  # read, never written: the refusal below is the caller's to say
            return change
        why = change.too_much()
        if why and not replace:
            raise ValueError(f"{source} {why}: the file replaces the whole map; nothing "
                             "changed (run again with --replace if that is meant)")
        for clinic in change.removed:
            db.execute("DELETE FROM dash.clinics WHERE clinic_id = ?", (clinic,))
        for clinic, (district, name) in change.new.items():
            if change.old.get(clinic) != (district, name):
                db.execute("INSERT INTO dash.clinics (clinic_id, district, name) VALUES "
                           "(?, ?, ?) ON CONFLICT (clinic_id) DO UPDATE SET district = "
                           "excluded.district, name = excluded.name",
                           (clinic, district, name))
    return change


def districts_main(argv: list[str]) -> int:
    from central.dashboard.store import open_db

    ap = OneLineParser(prog="sonoedge-central districts",
                                 description="Load which district each clinic belongs to: "
                                             "the file replaces the whole map.")
    ap.add_argument("file", help="clinic_id,district[,name] per line (a first line "
                                 "clinic_id,district,name is skipped; without a name, a "
                                 "clinic keeps the one it has, a new one takes its id)")
    ap.add_argument("--replace", action="store_true",
                    help="let the file remove half the map or more, or every clinic of a "
                         "viewer's district (refused without it: a partial file loaded by "
                         "mistake)")
    ap.add_argument("--dry-run", action="store_true",
                    help="say every change the file would make, and change nothing")
    ap.add_argument("--db", default=DEFAULT_DB)
    args = ap.parse_args(argv)
    try:
        entries, header = read_districts(args.file)
        db = open_db(args.db)
        try:
            change = replace_map(db, entries, args.replace, str(args.file), args.dry_run)
        finally:
            db.close()
    except (ValueError, DbError) as exc:
        print(f"sonoedge-central districts: {exc}", file=sys.stderr)
        return 2
    if header is not None:
        print(f"{args.file}:{header}: a header line, skipped")
    if args.dry_run:
        print(f"dry run, nothing changed: {change.summary()}")
        for line in change.every_change():
            print(f"  {line}")
        why = change.too_much()
        if why and not args.replace:  # 1: a script can tell it from a map that would load
            print(f"it would be refused: it {why} (the file replaces the whole map; "
                  "--replace if that is meant)")
            return 1
        return 0
    print(change.summary())
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
          f"age-by-dates corrections, {res.withdrawal} withdrawals from {res.devices} "
          f"devices in {res.seconds:.0f} s")
    return 0


VERBS = {"serve": serve_main, "users": users_main, "districts": districts_main,
         "seed": seed_main}
