"""The district dashboard: ``sonoedge-central serve --db URL --listen HOST:PORT``.

Routes (every ``/api/`` route answers 401 without a session; pages send the browser to the
login form):

- ``GET /login``, ``POST /login`` (form: username, password), ``POST /logout``
- ``GET /clinics``, ``/completeness``, ``/quality``, ``/biometry``, ``/devices``: the pages,
  each with ``?weeks=8|26|52|104`` and, for an admin, ``?district=NAME``
- ``GET /clinic/<clinic_id>``: one clinic's page, with the same parameters; a clinic the
  user's scope does not hold is not found (404), as one that does not exist
- ``GET /api/<plot>.csv`` with the same parameters: the numbers behind each plot
  (clinics, completeness, missed, quality, deficiencies, biometry, devices; and
  ``clinic.csv?clinic=<clinic_id>``, a clinic's weeks)
- ``GET /api/me``: who is logged in
- ``GET /static/dash.css``: the one asset; the pages use the system's fonts and no script

The pages are HTML with the plots inline as SVG, made on the server (see ``svg.py`` for
why). Database work runs on a small thread pool, never on the event loop; a background
thread rolls new messages up every few seconds (``store.refresh``). The dashboard only reads
the collector's tables and writes its own (``store.py``), so it never holds up ingestion.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from central.dashboard import auth as A
from central.dashboard import config as C
from central.dashboard import pages as P
from central.dashboard import queries as Q
from central.dashboard.store import Db, open_db, refresh, rolled_up_to
from central.dashboard.svg import esc
from central.db import DbError, redact
from wire.http_log import one_line_bad_requests, refuse_coded_body

# The signed-in user of a request (None on the public pages), attached by `_auth`. A typed
# key: aiohttp 3.14 warns (NotAppKeyWarning) on a plain string key in a request.
USER = web.RequestKey("user", object)

log = logging.getLogger("sonoedge.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
CSS = (STATIC / "dash.css").read_bytes()
CSS_VERSION = hashlib.sha256(CSS).hexdigest()[:12]
PAGES = ("clinics", "completeness", "quality", "biometry", "devices")
TITLES = {"clinics": "Clinics", "completeness": "Exam completeness", "quality": "Quality",
          "biometry": "Biometry", "devices": "Devices"}
CSVS = {"clinics": "clinics", "completeness": "completeness",
        "completeness_protocols": "completeness", "missed": "completeness",
        "quality": "quality", "quality_clinics": "quality", "deficiencies": "quality",
        "biometry": "biometry",
        "devices": "devices", "fleet_errors": "devices"}
SECURITY_HEADERS = {
    # no script at all; the charts are inline SVG with presentation attributes, no style=
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; "
                                "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes form POSTs say Origin: null
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _secure(resp: web.StreamResponse) -> web.StreamResponse:
    """Every answer's security headers, and no caching unless the handler said otherwise."""
    resp.headers.update(SECURITY_HEADERS)
    if "Cache-Control" not in resp.headers:
        resp.headers["Cache-Control"] = "no-store"
    return resp


async def _no_server_header(_request: web.Request, resp: web.StreamResponse) -> None:
    """No "Server: Python/3.11 aiohttp/3.14" for scanners, as on the device's page. aiohttp
    sets it as it sends the head, after every middleware: this hook runs after it. A request
    aiohttp cannot parse (a line too long, a Host twice) is answered 400 before the app sees
    it, without this hook: wire/http_log.py names it "sonoedge" there."""
    resp.headers.pop("Server", None)


@dataclass
class ServeSettings:
    db_url: str
    host: str = "127.0.0.1"
    port: int = 8090
    refresh_every_s: float = C.REFRESH_EVERY_S
    secure_cookie: bool = False  # set behind TLS (a reverse proxy): the cookie never goes clear
    cache: bool = True  # False makes every view query the database (for measuring)
    nice: int = C.SERVE_NICE


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8090")
    return host.strip("[]"), int(port)


class Dashboard:
    def __init__(self, settings: ServeSettings):
        self.settings = settings
        db = open_db(settings.db_url)  # tables, index; a bad --db fails here, in one line
        db.close()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(C.QUERY_THREADS, thread_name_prefix="dash-db")
        self._dbs: list[Db] = []
        self._dbs_lock = threading.Lock()
        self.brake = A.Brake()
        # Addresses with a login being checked: one at a time each. The brake is charged
        # only once scrypt has said no, so logins sent together all passed its check and
        # were all verified (as on the device's page, found by a security review).
        self._logins_in_flight: set[str] = set()
        self.stop_event = threading.Event()
        self.refresher: threading.Thread | None = None
        self.last_refresh: dict = {}
        self.generation = 0  # rollup passes that added something: the cache's clock
        self.clock_said = ""  # the banner while its clock and the collector's differ (_clock)
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- database, off the event loop --------------------------------------------------------
    def _db(self) -> Db:
        db = getattr(self._local, "db", None)
        if db is None:
            db = Db(self.settings.db_url)
            self._local.db = db
            with self._dbs_lock:
                self._dbs.append(db)
        return db

    async def cached(self, key: tuple, fn, *args):
        """``run_db(fn, *args)``, made once per rollup generation (and per CACHE_MAX_S) and
        UTC day: a page's period ends today, and one made before midnight kept yesterday's
        days (and a CSV's the name of today's) for up to CACHE_MAX_S after it."""
        now, day = time.monotonic(), int(Q.district_now() // C.DAY_S)  # before fn reads it
        with self._cache_lock:
            hit = self._cache.get(key) if self.settings.cache else None
            if (hit and hit[0] == self.generation and now - hit[1] < C.CACHE_MAX_S
                    and hit[3] == day):
                self._cache.move_to_end(key)
                return hit[2]
        generation = self.generation
        value = await self.run_db(fn, *args)
        with self._cache_lock:
            self._cache[key] = (generation, now, value, day)
            self._cache.move_to_end(key)
            while len(self._cache) > C.CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value

    async def run_db(self, fn, *args):
        loop = asyncio.get_running_loop()

        def call():
            try:
                return fn(self._db(), *args)
            except DbError:
                self._local.db = None  # reconnect next time (PostgreSQL restarted, ...)
                raise

        return await loop.run_in_executor(self._pool, call)

    def _read_clock(self, db: Db) -> None:
        """This server's clock against the collector's (`Q.set_collector_clock`), and the
        pages' banner for it; a page made before a change must not outlive it."""
        clock = Q.collector_clock_behind_s(db)
        Q.set_collector_clock(clock)
        said = _clock(clock)
        if said != self.clock_said:
            self.clock_said = said
            self.generation += 1

    def start_refresher(self) -> None:
        try:  # before the first page: a rollup's catch-up may take a while
            first = Db(self.settings.db_url)
            try:
                self._read_clock(first)
            finally:
                first.close()
        except DbError as exc:
            log.warning("dashboard clock: %s", exc)

        def loop():
            db = None
            while not self.stop_event.is_set():
                try:
                    db = db or Db(self.settings.db_url)
                    if not self.last_refresh:  # a restart: say where the rollup stands at once
                        self.last_refresh = {"behind": True, "rolled_to": rolled_up_to(db)}
                    stats = refresh(db, max_batches=C.REFRESH_STEP_BATCHES)
                    behind = stats.more  # more wait: the pages say so meanwhile
                    self._read_clock(db)
                    before = self.last_refresh
                    self.last_refresh = {"at": time.time(), "messages": stats.messages,
                                         "seconds": round(stats.seconds, 3),
                                         "behind": behind,
                                         "rolled": before.get("rolled", 0) + stats.messages,
                                         "rolled_to": rolled_up_to(db) if behind else None}
                    # pages are cached per generation: one made while the note was up must
                    # not outlive it (the first pass, or a catch-up that found nothing more)
                    if stats.messages or stats.dead or behind != before.get("behind", True):
                        self.generation += 1
                    if stats.messages or stats.dead:
                        log.info("rolled up %d messages in %.2f s%s", stats.messages,
                                 stats.seconds, "; more wait" if behind else "")
                    if behind:
                        continue  # the next step at once
                except Exception as exc:  # DbError, or a message the rollup cannot take:
                    # one line, and the next pass tries again (the thread must not die)
                    log.warning("dashboard refresh: %s", exc if isinstance(exc, DbError) else
                                f"{type(exc).__name__}: {str(exc)[:300]}")
                    if db is not None:
                        db.close()
                    db = None
                self.stop_event.wait(self.settings.refresh_every_s)
            if db is not None:
                db.close()

        self.refresher = threading.Thread(target=loop, name="dash-refresh", daemon=True)
        self.refresher.start()

    def close(self) -> None:
        self.stop_event.set()
        if self.refresher is not None:
            self.refresher.join(timeout=30)
        self._pool.shutdown(wait=True)
        with self._dbs_lock:
            for db in self._dbs:
                db.close()

    # -- the app -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        one_line_bad_requests()
        app = web.Application(client_max_size=C.MAX_BODY,
                              middlewares=[self._headers, self._auth])
        app.on_response_prepare.append(_no_server_header)
        app.router.add_get("/", self.home)
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/static/dash.css", self.css)
        app.router.add_get("/favicon.ico", self.favicon)
        for name in PAGES:
            app.router.add_get(f"/{name}", self.page)
        # any path under /clinic/ (a line break included: "." stops at one): an id with a
        # "/", or none, is told apart in one line as any other
        app.router.add_get(r"/clinic/{clinic_id:[\s\S]*}", self.clinic)
        app.router.add_get("/api/me", self.me)
        app.router.add_get("/api/{name}.csv", self.csv)
        app.router.add_route("*", "/api/{tail:.*}", self.api_not_found)
        return app

    @web.middleware
    async def _headers(self, request: web.Request, handler):
        try:
            refuse_coded_body(request)
            resp = await handler(request)
        except web.HTTPException as exc:  # raised on, with the same headers (aiohttp 4
            _secure(exc)                  # refuses a returned HTTPException)
            raise
        except DbError as exc:
            log.warning("%s %s: %s", request.method, request.path[:100], exc)
            resp = web.Response(status=503, text="The database is not reachable; try again "
                                "in a minute.\n")
        return _secure(resp)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        """Attach the session's user; refuse /api/ without one (401) and send a browser to
        the login form for a page."""
        public = request.path in ("/login", "/static/dash.css", "/", "/favicon.ico")
        token = request.cookies.get(C.COOKIE)
        user = await self.run_db(A.session_user, token) if token else None
        request[USER] = user
        if user is None and not public:
            if request.path.startswith("/api/"):
                return web.json_response({"error": "login required"}, status=401)
            raise web.HTTPSeeOther("/login")
        if request.method == "POST" and not _same_origin(request):
            return web.Response(status=403, text="cross-origin request refused\n")
        return await handler(request)

    async def home(self, request: web.Request):
        raise web.HTTPSeeOther("/clinics" if request[USER] else "/login")

    async def favicon(self, request: web.Request):
        return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})

    async def css(self, request: web.Request):
        return web.Response(body=CSS, content_type="text/css",
                            headers={"Cache-Control": "public, max-age=86400"})

    async def login_page(self, request: web.Request, error: str = "", status: int = 200):
        body = (f'<form class="login" method="post" action="/login">'
                f"<h1>sonoedge district dashboard</h1>"
                f'{f"<p class=error>{esc(error)}</p>" if error else ""}'
                f'<label>User <input name="username" autocomplete="username" '
                f'maxlength="64" required autofocus></label>'
                f'<label>Password <input name="password" type="password" '
                f'autocomplete="current-password" maxlength="{C.PASSWORD_MAX}" required></label>'
                f'<button type="submit">Log in</button></form>')
        return _html(_document("Log in", body), status)

    async def login(self, request: web.Request):
        address = request.remote or "?"
        wait = self.brake.wait_s(address)
        # A braked address is refused before its form is read, unless the browser shows a
        # known-browser cookie: an office behind one address (a NAT, a proxy) is not kept
        # out by one guesser among them. Whether it is known is checked below, with the name.
        if wait > 0 and not request.cookies.get(C.KNOWN_COOKIE):
            return await self._braked(request, wait)
        # The form is read before the address's slot is taken: a login that announces a body
        # and never sends it held the slot, so every login from that address (an office's
        # NAT) was told to wait until its 10 s ran out.
        try:
            async with asyncio.timeout(C.BODY_TIMEOUT_S):
                form = await request.post()
        except TimeoutError:
            return await self.login_page(request, "The form did not arrive in time.", 408)
        except (ValueError, LookupError, web.HTTPRequestEntityTooLarge):  # LookupError:
            return await self.login_page(request, "Bad request.", 400)  # unknown charset
        if address in self._logins_in_flight:
            return await self._braked(request, 1.0, "A login from this address is being "
                                                    "checked: try again in a moment.")
        self._logins_in_flight.add(address)
        try:
            return await self._login(request, address, form)
        finally:
            self._logins_in_flight.discard(address)

    async def _login(self, request: web.Request, address: str, form):
        username = str(form.get("username", ""))[:64]
        password = str(form.get("password", ""))[:C.PASSWORD_MAX + 1]
        known_cookie = request.cookies.get(C.KNOWN_COOKIE)
        known = await self.run_db(A.known_browser, username, known_cookie)
        # counted as wrong before it is checked (Brake.begin), taken back if right
        wait, charge = self.brake.begin(address, username, known)
        if charge is None:
            return await self._braked(request, wait)
        try:
            user = await self.run_db(A.check_login, username, password)
        except BaseException:  # not checked (the database): no wrong password either
            self.brake.refund(charge)
            raise
        if user is None:
            return await self.login_page(request, "Wrong user or password.", 401)
        # a known browser behind the address says nothing of its guesser
        self.brake.refund(charge)
        token = await self.run_db(A.open_session, user)
        resp = web.HTTPSeeOther("/clinics")  # raised: aiohttp 4 refuses a returned one
        resp.set_cookie(C.COOKIE, token, httponly=True, samesite="Strict", path="/",
                        secure=self.settings.secure_cookie, max_age=int(C.SESSION_MAX_S))
        resp.set_cookie(C.KNOWN_COOKIE, await self.run_db(
            A.known_cookie_after_login, user.username, known_cookie), httponly=True,
            samesite="Strict", path="/login", secure=self.settings.secure_cookie,
            max_age=C.KNOWN_COOKIE_MAX_AGE_S)
        raise resp

    async def _braked(self, request: web.Request, wait: float,
                      why: str = "") -> web.Response:
        resp = await self.login_page(
            request, why or f"Too many wrong passwords: wait {wait:.0f} s.", 429)
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp

    async def logout(self, request: web.Request):
        token = request.cookies.get(C.COOKIE)
        if token:
            await self.run_db(A.close_session, token)
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(C.COOKIE, path="/")
        raise resp

    async def me(self, request: web.Request):
        u: A.User = request[USER]
        return web.json_response({"username": u.username, "role": u.role,
                                  "district": u.district or None})

    async def api_not_found(self, request: web.Request):
        return web.json_response({"error": "no such API"}, status=404)

    # -- pages and CSV -----------------------------------------------------------------------
    def _params(self, request: web.Request, page: str) -> tuple[Q.Scope, int]:
        user: A.User = request[USER]
        weeks = _weeks_offered(request.query.get("weeks", "")) or C.DEFAULT_WEEKS[page]
        if not user.admin:
            return Q.Scope(user.district), weeks
        district = request.query.get("district", "")[:C.MAX_PARAM_CHARS]
        return Q.Scope(district if A.DISTRICT_RE.match(district) else None), weeks

    async def _bad_param(self, request: web.Request) -> str | None:
        """What is wrong with a `weeks` or `district` asked for, in one line naming it; None
        when nothing is (an empty one means the default). Both were replaced silently: a
        script asking for 12 weeks got 8, an admin's unknown district an empty page."""
        raw = request.query.get("weeks", "")
        if raw and _weeks_offered(raw) is None:
            offered = ", ".join(str(w) for w in C.PERIODS_WEEKS)
            return f"weeks: {raw[:20]!r} is not offered; choose {offered}"
        return await self._bad_district(request)

    async def _bad_district(self, request: web.Request) -> str | None:
        """What is wrong with an admin's `district`, in one line naming it; None when
        nothing is. The monthly return, which takes no `weeks`, checks only this: it had
        served a garbled district as every district's return, and said of a misspelt one
        that no box of it had sent anything."""
        district = request.query.get("district", "")
        user: A.User = request[USER]
        if not district or not user.admin:  # a viewer sees her own district whatever asked
            return None
        if len(district) > C.MAX_PARAM_CHARS or not A.DISTRICT_RE.match(district):
            return f"district: {district[:20]!r} is not a district name"
        known = await self.cached(("districts",), Q.districts)
        if district not in known:
            return (f"district: {district[:40]!r} is not in the districts map "
                    "(sonoedge-central districts)")
        return None

    async def page(self, request: web.Request):
        name = request.path.strip("/")
        bad = await self._bad_param(request)
        if bad is not None:
            return _refused(400, TITLES[name], bad, name)
        scope, weeks = self._params(request, name)
        user: A.User = request[USER]
        return _sent(request, *await self.cached(("page", name, scope.district, weeks, user),
                                                 self._page_doc, name, scope, weeks, user))

    async def clinic(self, request: web.Request):
        """One clinic's page: what the district pages say of it, beside the period before."""
        bad = await self._bad_param(request)
        if bad is not None:
            return _refused(400, "Clinic", bad, "clinics")
        scope, weeks = self._params(request, "clinic")
        one, missing = await self._clinic_scope(request.match_info["clinic_id"], scope)
        if one is None:
            return _refused(404, "Clinic", missing, "clinics")
        user: A.User = request[USER]
        return _sent(request, *await self.cached(
            ("clinic", one.clinic, scope.district, weeks, user), self._clinic_doc, one, weeks,
            user))

    async def _clinic_scope(self, clinic: str, scope: Q.Scope) -> tuple[Q.Scope | None, str]:
        """The scope of the one clinic a request names, or None and why not, in a line. The
        name is hostile input (any length and characters). A clinic the scope does not hold
        is not found in the same words as one that does not exist: a viewer learns nothing
        of another district's clinics (a 403 would say it exists)."""
        if not A.CLINIC_RE.match(clinic):
            return None, (f"clinic: {clinic[:20]!r} is not a clinic id (1 to 64 letters, "
                          "digits, '.', '_' or '-')")
        known = await self.cached(("clinics-known", scope.district), Q.clinics_known, scope)
        if clinic not in known:
            where = (f"of district {scope.district}" if scope.district else
                     "heard from or on the districts map")
            return None, f"clinic: {clinic!r} is not among the clinics {where}"
        return Q.Scope(scope.district, clinic), ""

    def _clinic_doc(self, db: Db, scope: Q.Scope, weeks: int, user: A.User
                    ) -> tuple[bytes, bytes, float]:
        t0 = time.perf_counter()
        rollup = self.last_refresh  # before the figures are read (`_doc`)
        per = Q.period(weeks)
        page = Q.clinic_page(db, scope, per)
        who = P.clinic_text(page.clinic_id, page.name)
        # the menu's pages keep the period and the district asked for; its periods are this
        # clinic's, and where it is, its district (a district's menu would leave it)
        where = f"<span>{esc(page.district or 'in no district')}</span>"
        nav = _nav(user, f"clinic/{page.clinic_id}", scope, weeks, [], where)
        raw, gz = self._doc(db, who, nav, _period_line(per, weeks)
                            + self._body_clinic(page, scope, weeks), rollup)
        return raw, gz, (time.perf_counter() - t0) * 1000

    def _body_clinic(self, page: Q.ClinicPage, scope: Q.Scope, weeks: int) -> str:
        now, one = Q.district_now(), Q.Scope(scope.district)
        last = page.last_message
        heard = ("No box of the clinic has sent anything yet." if last is None else
                 f"Last message: <strong>{esc(P.seen_ago(last.last_seen, now))}</strong> "
                 f"({esc(P.utc(last.last_seen))} UTC, from {esc(last.device_id)}).")
        before, fig = page.before.days.period, page.now
        district = page.district or "none (not on the districts map)"
        return (f'<h2 class="clinic">{P.clinic_html(page.clinic_id, page.name)}</h2>'
                f'<p class="lead">District {esc(district)}; '
                f"{P.plural(len(page.devices), 'box', 'boxes')}. {heard}</p>"
                + "<h2>This period against the one before</h2>"
                  f'<p class="lead">The period before: the same {len(before.days)} days '
                  f"{weeks} weeks earlier. Each figure is the district pages' own for this "
                  "clinic: completeness and quality count by whole weeks (the period "
                  "before takes its last week whole), the rest by day.</p>"
                + P.clinic_compare_table(page)
                + (f"<h2>This month so far: {esc(page.month.title)}</h2>" if page.month
                   else "")
                + P.month_table(page, scope.district)
                + "<h2>Boxes</h2>"
                  '<p class="lead">As the devices page lists them: the most urgent first, '
                  "with why each may need a visit.</p>"
                + P.devices_table(page.devices, now, weeks)
                + f"<h2>Exams per week, last {weeks} weeks</h2>"
                  '<p class="lead">A bar a week; the dark tick across it, the same week of '
                  "the period before.</p>"
                  f'<div class="plot recent">{P.clinic_weeks_svg(page)}</div>'
                + self._csv_link("clinic", one, weeks, clinic=page.clinic_id)
                + f"<h2>Days heard and silent spells, last {weeks} weeks</h2>"
                  f'<div class="plot recent">{P.clinics_svg(fig.days)}</div>'
                + P.silent_table(fig.days)
                + "<h2>Complete exams, and the slots missed most</h2>"
                + P.completeness_table(fig.completeness, missed_shown=5)
                + f'<div class="plot">{P.missed_svg(fig.completeness)}</div>'
                + "<h2>Slots missed: never found, or found but not clear enough</h2>"
                + f'<p class="lead">{P.MISSED_KINDS_LEAD}</p>'
                + P.missed_kinds_table(fig.completeness)
                # not the plane-by-week heatmap: a clinic's cells have too few exams
                + f"<h2>Best frames under {C.MIN_QUALITY} (not captured), and the "
                  "deficiencies seen most</h2>"
                + P.quality_clinics_table(fig.quality)
                + f'<div class="plot">{P.deficiencies_svg(fig.quality)}</div>'
                + "<h2>Heads: the age by dates</h2>" + P.dating_table(fig.biometry)
                + "<h2>Heads outside the 3rd-97th centile, furthest out first</h2>"
                + P.outliers_table(fig.biometry))

    def _page_doc(self, db: Db, name: str, scope: Q.Scope, weeks: int, user: A.User
                  ) -> tuple[bytes, bytes, float]:
        """The whole page, plain and gzipped (made once per rollup generation and user, on
        a DB thread: the event loop only sends bytes)."""
        t0 = time.perf_counter()
        rollup = self.last_refresh  # before the figures are read (`_doc`)
        body, districts = self._page_body(db, name, scope, weeks)
        raw, gz = self._doc(db, TITLES[name], _nav(user, name, scope, weeks, districts), body,
                            rollup)
        return raw, gz, (time.perf_counter() - t0) * 1000

    def _doc(self, db: Db, title: str, nav: str, body: str, rollup: dict
             ) -> tuple[bytes, bytes]:
        """A page under its menu and the notes every page says, plain and gzipped.
        `rollup`: the rollup's state as it was before the body's figures were read. Read
        after, a rollup that finished meanwhile took the note away from a page whose figures
        were read before its last batch (a rehearsal under load: 388 of 401 exams counted,
        no note)."""
        raw = _document(title, nav + self.clock_said + _quiet(Q.collectors_quiet_since(db))
                        + _rolling(rollup) + body + _footer(rollup)).encode("utf-8")
        return raw, gzip.compress(raw, 6)

    def _page_body(self, db: Db, name: str, scope: Q.Scope, weeks: int) -> tuple[str, list]:
        per = Q.period(C.CLINICS_WEEKS if name == "clinics" and weeks == 8 else weeks)
        districts = Q.districts(db)
        return _period_line(per, weeks) + getattr(self, f"_body_{name}")(db, scope, per,
                                                                           weeks), districts

    def _csv_link(self, name: str, scope: Q.Scope, weeks: int, under: str = "plot",
                  text: str = "", clinic: str = "") -> str:
        """The download under a plot or, with `under="table"`, under a table; `text`, the
        link's own words instead; `clinic`, the one clinic of `clinic.csv`."""
        q = (f"?clinic={clinic}&" if clinic else "?") + f"weeks={weeks}" + (
            f"&district={scope.district}" if scope.district else "")
        return (f'<p class="csv"><a href="/api/{esc(name)}.csv{esc(q)}" download>'
                f"{esc(text or f'The numbers behind this {under}')} (CSV)</a></p>")

    def _body_clinics(self, db: Db, scope: Q.Scope, per: Q.Period, weeks: int) -> str:
        page = Q.clinics_page(db, scope, per)
        # the last 7 days the district could hear: up to a stopped collector's day
        heard = [d for d in per.days if page.quiet_day is None or d < page.quiet_day][-7:]
        silent = sum(1 for c in page.clinics
                     if heard and all(page.cells[(c, d)].silent for d in heard))
        daily = weeks <= C.CLINICS_DAILY_WEEKS
        unit = "day" if daily else "week"
        grey = ("no message from any box of the clinic that day" if daily else
                "the share of the week's weekdays with no message from any box of the "
                "clinic (all grey: none all week)")
        return (_no_district(Q.clinics_in_no_district(db) if scope.district is None else [])
                + f"<h2>Exams per {unit}, last {weeks} weeks</h2>"
                f'<p class="lead">{P.plural(len(page.clinics), "clinic")}; '
                f"<strong>{silent}</strong> sent nothing in the last 7 days"
                + ("" if page.quiet_day is None else " before the collector stopped")
                + f". Grey: {grey}; silent weekdays count from the "
                f"clinic's first message on (a box not yet set up is not a silent clinic). "
                f"An orange dot: a box's messages of that {unit} are missing (a hole in its "
                f"sequence: lost on the way or dropped by a full outbox). "
                + ("" if daily else "The CSV has every day. ")
                + "The table under the plot gives each clinic's silent spells, its exams "
                  "withdrawn by the midwife (in no other figure; many is a sign to coach, "
                  "or of a box misused), and where "
                  f"the box's set-up refused the heads of {C.SETUP_FAULT_MIN_EXAMS} exams or "
                  "more (no calibration, depth scale not read, picture stretched): a fault "
                  "for a technician, not the midwife's scanning.</p>"
                f'<div class="plot recent">{P.clinics_svg(page)}</div>'
                + self._csv_link("clinics", scope, weeks)
                + f"<h2>Silent spells, last {weeks} weeks</h2>" + P.silent_table(page)
                + "<h2>Monthly return</h2>"
                + P.monthly_links(Q.months_returned(Q.recent_months(), Q.first_heard(
                    (page.first_day or {}).values())), scope.district))

    def _body_completeness(self, db: Db, scope: Q.Scope, per: Q.Period, weeks: int) -> str:
        page = Q.completeness_page(db, scope, per)
        shown = page.shown
        more = page.protocols[len(shown):]
        each = "".join(
            f"<li><strong>{esc(C.protocol_title(p.protocol))}</strong>: "
            f"{P.share_of(p.share, p.exams)}{' complete' if p.exams else ''}</li>"
            for p in shown)
        if more:
            each += (f"<li>{P.plural(len(more), 'other protocol')}, "
                     f"{P.plural(sum(p.exams for p in more), 'exam')}: in the CSV by "
                     "protocol</li>")
        charts = "".join(
            f"<h3>{esc(C.protocol_title(p.protocol))}</h3>"
            f'<div class="plot">{P.completeness_svg(page, p.protocol)}</div>' for p in shown)
        return (f"<h2>Complete exams, last {weeks} weeks</h2>"
                f'<p class="lead">The share of exams that captured every slot of their '
                f"protocol (each slot's best frame scoring at least {C.MIN_QUALITY}), "
                f"per protocol: a head measurement has one slot, a screen many.</p>"
                + (f'<ul class="lead">{each}</ul>' if each else
                   '<p class="lead">No exam named its protocol in this period.</p>'
                   if any(c.exams for c in page.clinics) else
                   f'<p class="lead">{P.NO_EXAMS.capitalize()}.</p>')
                + '<p class="lead">Orange: under half of a clinic\'s exams of that '
                  "protocol.</p>" + charts
                + self._csv_link("completeness_protocols", scope, weeks,
                                 text="The numbers behind these plots, a row per clinic and "
                                      "protocol")
                + self._csv_link("completeness", scope, weeks,
                                 text="A row per clinic, every protocol together")
                + "<h2>Slots most often missed</h2>"
                  f'<p class="lead">{P.MISSED_KINDS_LEAD}</p>'
                  f'<div class="plot">{P.missed_svg(page)}</div>'
                + self._csv_link("missed", scope, weeks)
                + '<h2>Per clinic: complete exams, and the slots missed most</h2>'
                  '<p class="lead">Least complete first: by the lowest share in the '
                  "clinic's row, in whole percent as shown (a tie: its next lowest, then "
                  "the more exams of its lowest first), so a clinic is ranked by the "
                  "protocols it does, however many of each. A clinic's slots missed most "
                  "are by their share of its exams of that slot's protocol (each of them "
                  "required it).</p>"
                + P.completeness_table(page))

    def _body_quality(self, db: Db, scope: Q.Scope, per: Q.Period, weeks: int) -> str:
        page = Q.quality_page(db, scope, per)
        return (f"<h2>Best frames not captured, per plane, by week, last {weeks} weeks</h2>"
                f'<p class="lead">Each cell is the share of the week\'s exams that found the '
                f"plane whose best frame of it scored under {C.MIN_QUALITY}, the quality the "
                "checklist takes a plane from: found, but not captured. "
                + P.shading_words(page)
                + f"{P.funnel_rule(page)} The clinics' table below is flagged by the "
                "same rule. Hatched: too few to judge, where fewer than "
                f"{C.QUALITY_CELL_MIN_EXAMS} of the week's exams found the plane (the last "
                "column is this week so far). A cell's title (and the CSV) gives its counts, "
                "its interval and the mean best-frame quality. "
                f"{P.plural(page.exams, 'exam') if page.exams else P.NO_EXAMS.capitalize()}.</p>"
                f'<div class="plot recent">{P.quality_svg(page)}</div>'
                + self._csv_link("quality", scope, weeks)
                + "<h2>Per clinic: best frames under "
                  f"{C.MIN_QUALITY}, last {weeks} weeks</h2>"
                  '<p class="lead">Each exam\'s best frame of each plane it found, every plane '
                  f"together; a plane found but under {C.MIN_QUALITY} is not captured. "
                  f"Orange: a share clearly above {page.against} "
                  f"{P.pct(page.district_share)}, by the rule above (a share's interval in "
                  "its title); flagged clinics first.</p>"
                + P.quality_clinics_table(page)
                + self._csv_link("quality_clinics", scope, weeks, "table")
                + "<h2>Deficiencies seen most often</h2>"
                  '<p class="lead">Each exam names the quality criteria its frames failed most '
                  "(up to four); the bar is the share of exams naming each.</p>"
                  f'<div class="plot">{P.deficiencies_svg(page)}</div>'
                + self._csv_link("deficiencies", scope, weeks))

    def _body_biometry(self, db: Db, scope: Q.Scope, per: Q.Period, weeks: int) -> str:
        page = Q.biometry_page(db, scope, per)
        dated, n = page.dated, page.measured
        if not dated:
            caveat = ("" if not n else
                      '<p class="caveat"><strong>Read this first.</strong> No exam here carries '
                      "the age by dates (the midwife enters the last period on the device's "
                      "page during the exam), so the age plotted is the device's estimate from "
                      "the same head circumference (Hadlock 1984). Every point therefore lies "
                      "on Hadlock's curve, and the chart shows how Hadlock's dating sits "
                      "against the standard, not whether a head is small or large for its "
                      "age. A head can fall outside the band only when the two references "
                      "disagree that much.</p>")
        else:
            undated = (f" Not drawn: the other {n - dated}, whose only age is the device's "
                       "estimate from the same head circumference (Hadlock 1984), against "
                       "which no head can be small or large for its age; they are in the "
                       "CSV." if dated < n else "")
            later = (f" or, for {page.dated_later} of them, after it (the box sent them "
                     "as a correction)" if page.dated_later else "")
            caveat = (f'<p class="caveat">Drawn: the {P.plural(dated, "exam")} with the age '
                      f"by dates, which the midwife entered during the exam{later}.{undated} "
                      "A head outside the band is small or large for its dates, or its dates "
                      "are wrong: a remembered last period can be a week or more out, and a "
                      "week moves a head by 1.6 SD of the standard at 20 weeks, 0.9 at 30 "
                      "(INTERGROWTH-21st's own curves). The table lists the heads "
                      "furthest out first; the midwife's own flag uses ACOG's redating "
                      "tolerance (7 to 21 days by age).</p>")
        # with no head measured, that in words: "0 measured exams; 0 of those drawn ..."
        counts = ("No head measured in this period." if not n else
                  f"{P.plural(n, 'measured exam')}"
                  f"{f', {dated} of them with the age by dates (drawn)' if 0 < dated < n else ''}"
                  f"; {page.outside} of those drawn outside the 3rd-97th centile; "
                  f"{page.not_comparable} without an age inside 14-40 weeks (not compared).")
        return (f"<h2>Head circumference against gestational age, last {weeks} weeks</h2>"
                f'<p class="lead">{counts} Reference: INTERGROWTH-21st fetal growth standard '
                f"(Papageorghiou et al., Lancet 2014), which publishes the 3rd, 5th, 10th, "
                f"50th, 90th, 95th and 97th centiles for 14-40 weeks; drawn: 3rd, 10th, 50th, "
                f"90th, 97th. Dashed black: Hadlock 1984's HC for each age (its paper gives "
                f"the age's spread, not HC centiles).</p>{caveat}"
                f'<div class="plot">{P.biometry_svg(page)}</div>'
                + self._csv_link("biometry", scope, weeks)
                + "<h2>Per clinic: the age by dates</h2>"
                  '<p class="lead">How often each clinic\'s midwives entered the last period, '
                  "fewest first, and where its dated heads fall: about 3% of heads fall on "
                  "each side by the standard itself, so many more on one side is a clinic "
                  "to visit (the dating, or a real growth problem). \"Entered after the "
                  "exam\": dates taken only after the scan, too late for her page to flag "
                  "the head while the woman was there. \"Told\": the heads her "
                  "page called smaller or larger than the dates (beyond ACOG's redating "
                  "tolerance), the women she was asked to check the dates of and refer "
                  "if sure.</p>"
                + P.dating_table(page)
                + "<h2>Exams outside the 3rd-97th centile, furthest out first</h2>"
                + P.outliers_table(page))

    def _body_devices(self, db: Db, scope: Q.Scope, per: Q.Period, weeks: int) -> str:
        rows = Q.devices_page(db, scope, per)
        errors, more = Q.fleet_errors(db, scope, per)
        per_device: dict[str, int] = {}
        for e in errors:
            per_device[e.device_id] = per_device.get(e.device_id, 0) + 1
        for dev, n in more.items():
            per_device[dev] = per_device.get(dev, 0) + n
        flagged = sum(1 for d in rows if d.flags)
        extra = ""
        if scope.district is None:
            n = Q.unattributed_dead_letters(db, per)
            extra = (f'<p class="muted">Dead letters of the last {weeks} weeks that name no '
                     f"device (malformed topics): {n}.</p>" if n else "")
        return (f"<h2>Devices</h2>"
                f'<p class="lead">{P.plural(len(rows), "box", "boxes")}; '
                f"<strong>{flagged}</strong> may need a "
                f"visit (listed in the district's registry and never heard from, silent "
                f"over {C.SILENT_AFTER_S / C.DAY_S:.0f} days, disk under "
                f"{C.LOW_DISK_MB:.0f} MB, {C.HOT_C:.0f} °C or more, a backlog of "
                f"{C.BACKLOG_WARN}+ messages, or, in the last {weeks} weeks, a dead letter (a "
                f"message from the box the collector could not read), over "
                f"{C.MISSING_WARN_SHARE:.0%} of its messages missing or "
                f"{C.EXAMS_PER_DAY_WARN}+ exams ended on one day, or the heads of "
                f"{C.SETUP_FAULT_MIN_EXAMS}+ exams refused by the box's set-up: no calibration "
                f"or an impossible one, the depth scale not read, the picture stretched by "
                f"the video grabber; a technician's work, not the midwife's scanning; or "
                f"heads of {C.SETUP_FAULT_MIN_EXAMS}+ exams measured before the box could "
                f"check the picture's shape, to check at the next visit). "
                f"Missing messages and "
                f"dead letters are counted over the last {weeks} weeks, so an old one does "
                f"not keep a box flagged. Backlog: messages queued on the box at its last "
                f"health; behind: messages allocated on the box beyond what arrived.</p>"
                f"{P.devices_table(rows, Q.district_now(), weeks, per_device)}{extra}"
                + self._csv_link("devices", scope, weeks, "table")
                + f"<h2>Model update errors, last {weeks} weeks</h2>"
                  '<p class="lead">What each box\'s health messages said when a signed model '
                  "bundle was refused or failed to install, latest first: the bundle column "
                  "above shows only the last one. One row per distinct error and bundle "
                  "installed, with when it was first and last reported and by how many health "
                  f"messages (a box repeats its error until the next install); at most "
                  f"{C.FLEET_ERRORS_SHOWN} a box here, all in the CSV.</p>"
                + P.fleet_errors_table(errors, more, Q.district_now(), weeks)
                + self._csv_link("fleet_errors", scope, weeks, "table"))

    async def csv(self, request: web.Request):
        name = request.match_info["name"]
        if name == "monthly":
            return await self._monthly_csv(request)
        if name == "clinic":
            return await self._clinic_csv(request)
        if name not in CSVS:
            return web.json_response({"error": "no such CSV"}, status=404)
        bad = await self._bad_param(request)
        if bad is not None:
            return web.json_response({"error": bad}, status=400)
        scope, weeks = self._params(request, CSVS[name])
        per = Q.period(weeks)  # one period for the rows and the name, even at midnight
        text = await self.cached(("csv", name, scope.district, per), self._csv_text, name,
                                 scope, per)
        # the period's dates in the name: a folder of downloads tells them apart
        return _csv_response(text, f"{name}-{_scope_word(scope)}-{Q.day_text(per.first_day)}"
                                   f"-to-{Q.day_text(per.last_day)}.csv")

    async def _clinic_csv(self, request: web.Request):
        """A clinic's weeks, the rows of its page's chart (`?clinic=ID`, and the pages'
        parameters): refused as its page is."""
        bad = await self._bad_param(request)
        if bad is not None:
            return web.json_response({"error": bad}, status=400)
        scope, weeks = self._params(request, "clinic")
        one, missing = await self._clinic_scope(request.query.get("clinic", ""), scope)
        if one is None:
            return web.json_response({"error": missing}, status=404)
        per = Q.period(weeks)
        text = await self.cached(("csv", "clinic", one.clinic, scope.district, per),
                                 self._clinic_csv_text, one, per)
        return _csv_response(text, f"clinic-{one.clinic}-{Q.day_text(per.first_day)}-to-"
                                   f"{Q.day_text(per.last_day)}.csv")

    def _clinic_csv_text(self, db: Db, scope: Q.Scope, per: Q.Period) -> str:
        return P.with_district(P.clinic_csv(Q.clinic_page(db, scope, per)),
                               Q.clinic_districts(db))

    async def _monthly_csv(self, request: web.Request):
        bad = await self._bad_district(request)
        if bad is not None:
            return web.json_response({"error": bad}, status=400)
        scope, _ = self._params(request, "clinics")
        raw = request.query.get("month", "")[:C.MAX_PARAM_CHARS]
        month = Q.month_of(raw)
        if month is None:
            return web.json_response(
                {"error": f"month: {raw[:20]!r} is not a month from "
                          f"{C.MONTHLY_FIRST_YEAR}-01 to this one, as YYYY-MM"}, status=400)
        rows, _ = await self.cached(("monthly", scope.district, month.text),
                                    Q.monthly_return, scope, month)
        # a month wholly before any box of the scope was heard has no return: refused as a
        # month before MONTHLY_FIRST_YEAR is (a file of zeros would be filed as no exams
        # done where no box existed yet); a month it began in is served, each clinic's row
        # saying from which day it counts (first_heard_day, days_counted)
        first = Q.first_heard(r.first_heard_day for r in rows)
        where = f"district {scope.district}" if scope.district else "any clinic"
        if first is None:
            return web.json_response(
                {"error": f"month: no box of {where} has sent anything yet, so no month "
                          "has a return"}, status=400)
        if month.last_day < first:
            return web.json_response(
                {"error": f"month: {month.text} is before the first message from {where} "
                          f"({Q.day_text(first)}): its first return is "
                          f"{Q.this_month(first * C.DAY_S).text}"},
                status=400)
        text = P.with_district(P.monthly_csv(rows, month),
                               await self.cached(("districts-map",), Q.clinic_districts))
        return _csv_response(text, f"monthly-{_scope_word(scope)}-{month.text}.csv")

    def _csv_text(self, db: Db, name: str, scope: Q.Scope, per: Q.Period) -> str:
        return P.with_district(self._csv_body(db, name, scope, per), Q.clinic_districts(db))

    def _csv_body(self, db: Db, name: str, scope: Q.Scope, per: Q.Period) -> str:
        if name == "clinics":
            return P.clinics_csv(Q.clinics_page(db, scope, per))
        if CSVS[name] == "completeness":
            page = Q.completeness_page(db, scope, per)
            return {"completeness": P.completeness_csv, "missed": P.missed_csv,
                    "completeness_protocols": P.completeness_protocols_csv}[name](page)
        if CSVS[name] == "quality":
            page = Q.quality_page(db, scope, per)
            return {"quality": P.quality_csv, "quality_clinics": P.quality_clinics_csv,
                    "deficiencies": P.deficiencies_csv}[name](page)
        if name == "biometry":
            return P.biometry_csv(Q.biometry_exams(db, scope, per))
        if name == "fleet_errors":
            return P.fleet_errors_csv(Q.fleet_errors(db, scope, per, shown=None)[0])
        return P.devices_csv(Q.devices_page(db, scope, per))


def _sent(request: web.Request, raw: bytes, gz: bytes, made_ms: float) -> web.Response:
    """A page made (`Dashboard.cached`), gzipped where the browser takes it."""
    gzip_ok = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
    resp = web.Response(body=gz if gzip_ok else raw, content_type="text/html",
                        charset="utf-8", headers={"Vary": "Accept-Encoding"})
    if gzip_ok:
        resp.headers["Content-Encoding"] = "gzip"
    resp.headers["Server-Timing"] = f"db;dur={made_ms:.1f}"  # when the page was made
    return resp


def _refused(status: int, title: str, line: str, back: str) -> web.Response:
    """A request the pages cannot answer, in one line, and a link to a page that can."""
    return web.Response(
        status=status, content_type="text/html", charset="utf-8",
        text=_document(title, f'<main><p class="warn">{esc(line)}.</p><p><a href="/{back}">'
                              f"{esc(TITLES[back])}{', as usual' if status == 400 else ''}"
                              "</a></p></main>"))


def _csv_response(text: str, filename: str) -> web.Response:
    resp = web.Response(text=text, content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{filename}"'})
    resp.enable_compression()
    return resp


def _scope_word(scope: Q.Scope) -> str:
    """The scope in a file name: its district (A.DISTRICT_RE: safe in a name), or "all"."""
    return scope.district or "all"


def _same_origin(request: web.Request) -> bool:
    """Browsers send Origin on every POST; one naming another site is a forged form."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1] == request.host


def _accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding takes gzip (RFC 9110 12.5.3): named (or ``*``) with a
    weight over 0. A substring test sent gzip to "gzip;q=0", which refuses it."""
    weights: dict[str, float] = {}
    for item in header.split(",")[:32]:
        coding, *params = (x.strip() for x in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[coding.lower()] = q
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _document(title: str, body: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)} · sonoedge district</title>"
            f'<link rel="stylesheet" href="/static/dash.css?v={CSS_VERSION}"></head>'
            f"<body>{body}</body></html>")


def _nav(user: A.User, current: str, scope: Q.Scope, weeks: int, districts: list,
         where: str | None = None) -> str:
    """The menu: the pages, the periods of `current` (a path) and, for an admin, its
    districts; `where`, what to show instead of those (a clinic's page: its district)."""
    def q(**kw) -> str:
        params = {"weeks": weeks, "district": scope.district, **kw}
        return "?" + "&".join(f"{k}={v}" for k, v in params.items() if v)

    links = "".join(f'<a href="/{p}{esc(q())}"{" class=on" if p == current else ""}>'
                    f"{TITLES[p]}</a>" for p in PAGES)
    periods = "".join(f'<a href="/{current}{esc(q(weeks=w))}"'
                      f'{" class=on" if w == weeks else ""}>{w} weeks</a>'
                      for w in C.PERIODS_WEEKS)
    if where is None and user.admin:
        opts = [f'<a href="/{current}{esc(q(district=""))}"'
                f'{" class=on" if scope.district is None else ""}>all districts</a>']
        opts += [f'<a href="/{current}{esc(q(district=d))}"'
                 f'{" class=on" if d == scope.district else ""}>{esc(d)}</a>' for d in districts]
        where = "".join(opts)
    elif where is None:
        where = f"<span>{esc(user.district)}</span>"
    who = (f'<form method="post" action="/logout" class="who">{esc(user.username)} '
           f"({esc(user.role)}) <button>Log out</button></form>")
    return (f'<header><div class="brand">sonoedge district</div><nav>{links}</nav>{who}'
            f'</header><div class="filters"><span class="where">{where}</span>'
            f'<span class="periods">{periods}</span></div><main>')


def _weeks_offered(raw: str) -> int | None:
    """A `weeks` the pages offer (C.PERIODS_WEEKS), or None. ASCII digits, a few: "²" is a
    digit to isdigit() but not to int(), and 4,400 digits are past int()'s limit; either
    was a 500 with a traceback."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 3 and int(raw) in C.PERIODS_WEEKS:
        return int(raw)
    return None


def _period_line(per: Q.Period, weeks: int) -> str:
    """The days "last N weeks" covers: whole weeks from a Monday, the last one still under
    way, so on a Monday "8 weeks" is 50 days (an officer's walk: only the CSV's file name
    said which days)."""
    def day(d: int, year: bool = True) -> str:
        return time.strftime("%a %d %b %Y" if year else "%a %d %b", time.gmtime(d * C.DAY_S))

    first, last = per.first_day, per.last_day
    same_year = day(first)[-4:] == day(last)[-4:]
    return (f'<p class="period">Last {weeks} weeks: <strong>{esc(day(first, not same_year))} '
            f"to today, {esc(day(last))}</strong> (UTC days; {len(per.days)} days: whole weeks "
            "from a Monday, this week to date).</p>")


def _rolling(last: dict) -> str:
    """Said above every page while the rollup has not caught up with the collector (a
    dashboard just started on months of messages): its figures are not all there yet."""
    if last and not last.get("behind"):
        return ""
    # how far it has come, from the database: a count of this process's own (it said
    # "(N so far)") started again from 0 at each restart of the dashboard
    so_far = (f" (those received up to {P.utc(last['rolled_to'])} UTC so far)"
              if last.get("rolled_to") else "")
    return (f'<p class="warn rolling">Still rolling up the collector\'s messages{so_far}: '
            "the figures below are not complete yet. This note goes once they are.</p>")


def _no_district(clinics: list[str]) -> str:
    """Said atop the clinics page of every district (an admin's) while a clinic heard from
    is on no district's map: only the pages of every district show it, with no district,
    and nothing else said so."""
    if not clinics:
        return ""
    named = ", ".join(clinics[:C.NO_DISTRICT_NAMED])
    if len(clinics) > C.NO_DISTRICT_NAMED:
        named += f" and {len(clinics) - C.NO_DISTRICT_NAMED} more"
    one = len(clinics) == 1
    return (f'<p class="caveat no-district"><strong>{P.plural(len(clinics), "clinic")} '
            f"{'is' if one else 'are'} in no district</strong> ({esc(named)}): add "
            f"{'it' if one else 'them'} to the districts file (sonoedge-central districts), or "
            f"no district's viewer sees {'it' if one else 'them'}.</p>")


def _quiet(since: float | None) -> str:
    """Said above every page while no collector runs: the boxes' silence since then is the
    district's, not theirs."""
    if since is None:
        return ""
    return (f'<p class="caveat quiet"><strong>No collector has received anything since '
            f"{esc(P.utc(since))} UTC ({esc(P.ago(since, Q.district_now()))}).</strong> "
            "What the boxes sent since then waits on them and on the broker, and arrives once "
            "a collector runs again (<code>sonoedge-central run</code>). Until then no box "
            "or clinic is counted silent after that time: start the collector before sending "
            "anyone to a clinic.</p>")


def _clock(behind_s: float | None) -> str:
    """Said above every page while this server's clock and the collector's differ by more
    than COLLECTOR_CLOCK_SKEW_S: the pages then count by the collector's."""
    if behind_s is None or abs(behind_s) <= C.COLLECTOR_CLOCK_SKEW_S:
        return ""
    return (f'<p class="caveat clock"><strong>This server\'s clock is '
            f"{esc(Q.age_text(abs(behind_s)))} {'ahead of' if behind_s > 0 else 'behind'} the "
            "collector's</strong> (each read against the database's clock). These pages count "
            "time by the collector's clock, which stamped every message's arrival. Set both "
            "hosts' clocks by NTP.</p>")


def _footer(last: dict) -> str:
    when = P.utc(last["at"]) if last.get("at") else "starting"
    return (f'</main><footer>Dates are UTC days of the device clock when plausible (an '
            "exam's moved by its box's clock lag where that clock is an hour or more behind), "
            f"else of arrival. Data rolled up at {esc(when)} UTC.</footer>")


def serve(settings: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop."""
    dash = Dashboard(settings)
    try:
        os.nice(settings.nice)
    except OSError:
        pass
    dash.start_refresher()
    app = dash.app()

    async def on_cleanup(_app):
        await asyncio.get_running_loop().run_in_executor(None, dash.close)

    app.on_cleanup.append(on_cleanup)
    listening = (f"sonoedge-central serve: http://{settings.host}:{settings.port}/ "
                 f"on {redact(settings.db_url)}")
    # said once the port is bound (aiohttp's own banner replaced): before, it was said
    # and then the bind failed, "address already in use"
    web.run_app(app, host=settings.host, port=settings.port,
                print=lambda _banner: print(listening, flush=True),
                access_log=None, handle_signals=True)
    return 0



