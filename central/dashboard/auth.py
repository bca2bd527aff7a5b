"""Users, passwords, sessions and the brake on wrong passwords.

Passwords are stored only as salted scrypt hashes (hashlib.scrypt, RFC 7914; cost in
config.py), in ``dash.users``. A user is an ``admin`` (every clinic) or a ``viewer`` (the
clinics of one district, from ``dash.clinics``). A login opens a session: a random token in
an HttpOnly, SameSite=Strict cookie; the database keeps only its SHA-256, so a copied
sessions table opens nothing. A session ends after ``SESSION_IDLE_S`` unused and after
``SESSION_MAX_S`` in any case. Sessions live in the database, so several dashboard processes
share them and a restart keeps them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from central.dashboard import config as C
from central.dashboard.store import Db
from wire.shown import shown

ROLES = ("admin", "viewer")
# \Z, not $: `$` also matches before a final newline, and took "bob\n" as a user name.
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
DISTRICT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# A clinic id as the districts file and the registry take it (board/provision.py): what a
# clinic's page may be asked for, its URL being no more to be trusted than a form.
CLINIC_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")


class AuthError(ValueError):
    """One line saying what is wrong with a user, a password or a district."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    district: str  # "" for an admin

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=C.SCRYPT_MAXMEM, dklen=32)


def hash_password(password: str) -> str:
    if not C.PASSWORD_MIN <= len(password) <= C.PASSWORD_MAX:
        raise AuthError(f"a password has {C.PASSWORD_MIN} to {C.PASSWORD_MAX} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):  # NUL, a pasted newline, ...
        raise AuthError("a password has no control characters (NUL, newline, tab...)")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, C.SCRYPT_N, C.SCRYPT_R, C.SCRYPT_P)
    return "$".join(["scrypt", str(C.SCRYPT_N), str(C.SCRYPT_R), str(C.SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or len(password) > C.PASSWORD_MAX:
            return False
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


# A hash to check against when the user does not exist, so the time taken does not say
# which user names exist.
_DUMMY = None


def _dummy_hash() -> str:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password(secrets.token_urlsafe(16))
    return _DUMMY


def add_user(db: Db, username: str, role: str, district: str, password: str) -> User:
    if not USER_RE.match(username or ""):
        raise AuthError(f"bad user name {shown(username)}: letters, digits, '_.@-', at most "
                        "64")
    if role not in ROLES:
        raise AuthError(f"role must be one of {', '.join(ROLES)}, not {shown(role)}")
    if role == "viewer" and not DISTRICT_RE.match(district or ""):
        raise AuthError("a viewer needs --district (letters, digits, '_.-', at most 64)")
    if role == "admin":
        district = ""
    pw = hash_password(password)
    with db.tx():
        db.execute("INSERT INTO dash.users (username, role, district, pw, created) VALUES "
                   "(?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET role = excluded.role,"
                   " district = excluded.district, pw = excluded.pw",
                   (username, role, district, pw, time.time()))
        # a changed password or role ends the sessions opened under the old one
        db.execute("DELETE FROM dash.sessions WHERE username = ?", (username,))
    return User(username, role, district)


def remove_user(db: Db, username: str) -> bool:
    if not USER_RE.match(username or ""):  # no such user could have been added
        return False
    with db.tx():
        db.execute("DELETE FROM dash.sessions WHERE username = ?", (username,))
        return db.execute("DELETE FROM dash.users WHERE username = ?", (username,)) > 0


def list_users(db: Db) -> list[User]:
    return [User(*r) for r in db.query("SELECT username, role, district FROM dash.users "
                                       "ORDER BY username")]


def check_login(db: Db, username: str, password: str) -> User | None:
    rows = db.query("SELECT username, role, district, pw FROM dash.users WHERE username = ?",
                    (username[:64],)) if USER_RE.match(username or "") else []
    if not rows:
        verify_password(password, _dummy_hash())
        return None
    name, role, district, pw = rows[0]
    return User(name, role, district) if verify_password(password, pw) else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def open_session(db: Db, user: User, now: float | None = None) -> str:
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(32)
    with db.tx():
        db.execute("DELETE FROM dash.sessions WHERE created < ? OR last_used < ?",
                   (now - C.SESSION_MAX_S, now - C.SESSION_IDLE_S))
        db.execute("INSERT INTO dash.sessions (token_hash, username, created, last_used) "
                   "VALUES (?, ?, ?, ?)", (_token_hash(token), user.username, now, now))
    return token


def session_user(db: Db, token: str | None, now: float | None = None) -> User | None:
    """The user of a live session, or None (no, unknown, idle or too old a session)."""
    if not token or len(token) > 100:
        return None
    now = time.time() if now is None else now
    th = _token_hash(token)
    rows = db.query("SELECT u.username, u.role, u.district, s.created, s.last_used FROM "
                    "dash.sessions s JOIN dash.users u ON u.username = s.username "
                    "WHERE s.token_hash = ?", (th,))
    if not rows:
        return None
    name, role, district, created, last_used = rows[0]
    if now - created > C.SESSION_MAX_S or now - last_used > C.SESSION_IDLE_S:
        close_session(db, token)
        return None
    if now - last_used > C.SESSION_TOUCH_S:
        with db.tx():
            db.execute("UPDATE dash.sessions SET last_used = ? WHERE token_hash = ?", (now, th))
    return User(name, role, district)


def close_session(db: Db, token: str) -> None:
    with db.tx():
        db.execute("DELETE FROM dash.sessions WHERE token_hash = ?", (_token_hash(token),))


def known_token(stored_pw: str) -> str:
    """What a browser that logged into this account keeps: an HMAC keyed by the account's
    stored hash, so it needs no secret of its own and a new password forgets it."""
    return hmac.new(stored_pw.encode("utf-8"), b"sonoedge-dash-known-browser",
                    hashlib.sha256).hexdigest()


def _known_tokens(cookie: str | None) -> list[str]:
    """The tokens a known-browser cookie holds: bounded, and only what a token looks like."""
    return [t for t in (cookie or "")[:C.KNOWN_COOKIE_CHARS].split(".")
            if re.fullmatch(r"[0-9a-f]{64}", t)]


def known_browser(db: Db, username: str, cookie: str | None) -> bool:
    """Did this browser log into `username` before (the known-browser cookie names it)?"""
    given = _known_tokens(cookie)
    if not given or not USER_RE.match(username or ""):
        return False
    rows = db.query("SELECT pw FROM dash.users WHERE username = ?", (username,))
    if not rows:
        return False
    want = known_token(rows[0][0]).encode()
    return any(hmac.compare_digest(t.encode(), want) for t in given)


def known_cookie_after_login(db: Db, username: str, cookie: str | None) -> str:
    """The cookie with this account's token first: a shared browser remembers a few."""
    rows = db.query("SELECT pw FROM dash.users WHERE username = ?", (username,))
    token = known_token(rows[0][0]) if rows else ""
    kept = [t for t in _known_tokens(cookie) if t != token]
    return ".".join([token, *kept][:C.KNOWN_TOKENS])


@dataclass(frozen=True)
class LoginCharge:
    """A login counted as a wrong password before its check (`Brake.begin`), and what its
    account's count was before, to take it back when the password is right."""
    address: str
    username: str
    known: bool
    at: float
    address_before: tuple | None
    account_before: tuple | None
    address_set: tuple | None
    account_set: tuple | None


def _restore(counts: dict, key: str, before: tuple | None, charged: tuple | None) -> None:
    """`counts[key]` back to `before` where it still holds the charge (no other wrong
    password came since: that one stays counted)."""
    if charged is None or counts.get(key) != charged:
        return
    if before is None:
        del counts[key]
    else:
        counts[key] = before


class Brake:
    """Wrong passwords. From one address: the first few are free, then each waits twice as
    long as the one before (2 s up to 15 min). On one account name, and on the server as a
    whole, counted over every address, so that guessing from many addresses gains nothing;
    a browser that logged into that account before (its known-browser cookie) is held by
    neither, else anyone guessing would keep the officers out for as long as they kept at
    it. In memory: a restart forgives."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by: dict[str, tuple[int, float]] = {}  # address -> (failures, blocked until)
        self._accounts: dict[str, tuple[int, float, float]] = {}  # name -> (n, until, last)
        self._recent: deque[float] = deque()  # the server's failures from unknown browsers
        # Known browsers pass every other brake (their address's too: an office behind one
        # NAT is not kept out by one guesser), so their own wrong passwords are braked per
        # account: a stolen known-browser cookie gives no unbraked guessing.
        self._known: dict[str, tuple[int, float]] = {}  # account -> (failures, blocked until)

    def wait_s(self, address: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            _, until = self._by.get(address, (0, 0.0))
            return max(0.0, until - now)

    def account_wait_s(self, username: str, known: bool, now: float | None = None) -> float:
        """The wait on this account name and on the server; none for a known browser."""
        if known:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._account_wait_locked(username, now)

    def begin(self, address: str, username: str, known: bool,
              now: float | None = None) -> tuple[float, LoginCharge | None]:
        """The wait for this login (a known browser of the account only for its own wrong
        passwords; any other for the account, the server and its address) or, with none,
        its charge as a wrong password already, in one step under the lock: a password is
        then checked only once counted. Checked first and charged after its scrypt failed, 150 wrong
        passwords sent at once from 150 addresses all passed the check before any was
        counted: 145 were tried on one account (a red-team burst). `refund` the charge
        when the password is right."""
        now = time.monotonic() if now is None else now
        with self._lock:
            account = (0.0 if known else self._account_wait_locked(username, now))
            own = self._known.get(username, (0, 0.0))[1] if known \
                else self._by.get(address, (0, 0.0))[1]
            wait = max(account, own - now, 0.0)
            if wait > 0:
                return wait, None
            before = (self._by.get(address), self._accounts.get(username))
            self._failed_locked(address, username, known, now)
            return 0.0, LoginCharge(address, username, known, now, *before,
                                    self._by.get(address), self._accounts.get(username))

    def refund(self, charge: LoginCharge) -> None:
        """The password was right (or could not be checked): the charge `begin` made is
        taken back (the account's count as it was, or one less where other wrong passwords
        came since; the server's without it),
        and the address, or the known browser's own count, is cleared (`succeeded`)."""
        with self._lock:
            _restore(self._by, charge.address, charge.address_before, charge.address_set)
            if not charge.known:
                try:
                    self._recent.remove(charge.at)
                except ValueError:  # forgotten already (its window passed)
                    pass
                if self._accounts.get(charge.username) == charge.account_set:
                    _restore(self._accounts, charge.username, charge.account_before,
                             charge.account_set)
                elif charge.username in self._accounts:  # others came since: one less
                    n, _, last = self._accounts[charge.username]
                    if n <= 1:
                        del self._accounts[charge.username]
                    else:
                        self._accounts[charge.username] = (
                            n - 1, last + _doubling(n - 1, C.LOGIN_ACCOUNT_FREE_FAILURES),
                            last)
        self.succeeded(charge.address, charge.username, charge.known)

    def failed(self, address: str, username: str = "", known: bool = False,
               now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._failed_locked(address, username, known, now)

    def _account_wait_locked(self, username: str, now: float) -> float:
        self._forget(now)
        wait = 0.0
        if len(self._recent) >= C.LOGIN_SERVER_MAX:
            wait = self._recent[0] + C.LOGIN_SERVER_WINDOW_S - now
        _, until, _ = self._accounts.get(username, (0, 0.0, 0.0))
        return max(0.0, wait, until - now)

    def _failed_locked(self, address: str, username: str, known: bool, now: float) -> None:
        n, _ = self._by.get(address, (0, 0.0))
        self._by[address] = (n + 1, now + _doubling(n + 1, C.LOGIN_FREE_FAILURES))
        _bounded(self._by)
        if known:
            n, _ = self._known.get(username, (0, 0.0))
            self._known[username] = (n + 1, now + _doubling(n + 1, C.LOGIN_FREE_FAILURES))
            _bounded(self._known)
            return
        self._forget(now)
        self._recent.append(now)
        n, _, _ = self._accounts.pop(username, (0, 0.0, 0.0))
        self._accounts[username] = (
            n + 1, now + _doubling(n + 1, C.LOGIN_ACCOUNT_FREE_FAILURES), now)
        _bounded(self._accounts)

    def succeeded(self, address: str, username: str = "", known: bool = False) -> None:
        """Clears the address (or, for a known browser, its own count) only: an account's
        count ends when the guessing does."""
        with self._lock:
            if known:
                self._known.pop(username, None)
            else:
                self._by.pop(address, None)

    def _forget(self, now: float) -> None:
        while self._recent and now - self._recent[0] >= C.LOGIN_SERVER_WINDOW_S:
            self._recent.popleft()
        while len(self._recent) > C.LOGIN_SERVER_MAX:
            self._recent.popleft()
        for name, (_, _, last) in list(self._accounts.items())[:64]:  # oldest first
            if now - last < C.LOGIN_ACCOUNT_FORGET_S:
                break
            del self._accounts[name]


def _doubling(failures: int, free: int) -> float:
    return 0.0 if failures <= free else min(
        C.LOGIN_BRAKE_MAX_S, C.LOGIN_BRAKE_S * 2 ** min(32, failures - free - 1))


def _bounded(table: dict) -> None:
    if len(table) > 10_000:  # a flood of addresses or names must not grow memory
        table.pop(next(iter(table)))
