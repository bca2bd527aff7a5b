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
from dataclasses import dataclass

from central.dashboard import config as C
from central.dashboard.store import Db
from wire.shown import shown

ROLES = ("admin", "viewer")
# \Z, not $: `$` also matches before a final newline, and took "bob\n" as a user name.
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
DISTRICT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


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


class Brake:
    """Wrong passwords from one address: the first few are free, then each waits twice as
    long as the one before (2 s up to 15 min). In memory: a restart forgives."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by: dict[str, tuple[int, float]] = {}  # address -> (failures, blocked until)

    def wait_s(self, address: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            _, until = self._by.get(address, (0, 0.0))
            return max(0.0, until - now)

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            n, _ = self._by.get(address, (0, 0.0))
            n += 1
            wait = 0.0 if n <= C.LOGIN_FREE_FAILURES else min(
                C.LOGIN_BRAKE_MAX_S, C.LOGIN_BRAKE_S * 2 ** (n - C.LOGIN_FREE_FAILURES - 1))
            self._by[address] = (n, now + wait)
            if len(self._by) > 10_000:  # a flood of addresses must not grow memory
                self._by.pop(next(iter(self._by)))

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._by.pop(address, None)
