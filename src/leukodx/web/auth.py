"""Users, passwords, API tokens and login sessions.

Passwords: scrypt (stdlib hashlib), salted. API tokens and session cookies: random, high-entropy; only
their SHA-256 is stored. Roles: `clinician` (cases, uploads, reviews, exports) and `admin` (also deletes
cases and manages users and tokens).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from leukodx.errors import LeukodxError
from leukodx.web.db import ApiToken, LoginSession, User, audit, utcnow

ROLES = ("clinician", "admin")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
TOKEN_PREFIX = "ldx_"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
        return hmac.compare_digest(got, base64.urlsafe_b64decode(digest))
    except (ValueError, TypeError):
        return False


_DUMMY_HASH = hash_password(secrets.token_hex(8))


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise LeukodxError(f"Unknown role {role!r}.", f"Choose one of: {', '.join(ROLES)}.")
    return role


def add_user(db: Session, username: str, password: str, role: str = "clinician", actor: str = "cli") -> User:
    """Create a user (the caller commits). Raises LeukodxError on a bad name, weak password or duplicate."""
    check_role(role)
    if not USERNAME_RE.match(username):
        raise LeukodxError(
            f"User name {username!r} is not accepted.",
            "Use 2-64 letters, digits, or the characters _ . @ - (no spaces).",
        )
    if len(password) < MIN_PASSWORD:
        raise LeukodxError(f"The password is shorter than {MIN_PASSWORD} characters.", "Choose a longer one.")
    if db.scalar(select(User).where(func.lower(User.username) == username.lower())) is not None:
        raise LeukodxError(
            f"User {username!r} already exists.", "Choose another name, or reset it with `leukodx user passwd`."
        )
    user = User(username=username, password_hash=hash_password(password), role=role)
    db.add(user)
    audit(db, actor, "user.add", f"user:{username}", role=role)
    return user


def set_password(db: Session, username: str, password: str, actor: str = "cli") -> User:
    if len(password) < MIN_PASSWORD:
        raise LeukodxError(f"The password is shorter than {MIN_PASSWORD} characters.", "Choose a longer one.")
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise LeukodxError(f"No user {username!r}.", "Create it with `leukodx user add`.")
    user.password_hash = hash_password(password)
    db.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
    audit(db, actor, "user.passwd", f"user:{username}")
    return user


def authenticate(db: Session, username: str, password: str) -> User | None:
    user = db.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        verify_password(password, _DUMMY_HASH)  # same work either way
        return None
    return user if verify_password(password, user.password_hash) else None


def create_token(db: Session, name: str, role: str = "clinician", actor: str = "cli") -> tuple[ApiToken, str]:
    """A new API token: returns (row, secret). The secret is shown once; only its hash is stored."""
    check_role(role)
    name = name.strip()
    if not name or len(name) > 100:
        raise LeukodxError("A token needs a name of 1-100 characters.", "Pass --name, e.g. --name lab-pc-1.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=sha256_hex(secret), prefix=secret[:10], role=role, created_by=actor)
    db.add(row)
    audit(db, actor, "token.create", f"token:{name}", role=role)
    return row, secret


def token_lookup(db: Session, secret: str) -> ApiToken | None:
    if not secret.startswith(TOKEN_PREFIX):
        return None
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == sha256_hex(secret)))
    return None if row is None or row.revoked_at is not None else row


def start_session(db: Session, user: User, hours: float) -> tuple[str, LoginSession]:
    """A login session: returns (cookie value, row)."""
    cookie = secrets.token_urlsafe(32)
    row = LoginSession(
        id=sha256_hex(cookie),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=utcnow() + timedelta(hours=hours),
    )
    db.add(row)
    return cookie, row


def session_lookup(db: Session, cookie: str) -> LoginSession | None:
    row = db.get(LoginSession, sha256_hex(cookie))
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=utcnow().tzinfo)
    if expires < utcnow() or not row.user.active:
        return None
    return row


class LoginThrottle:
    """At most `limit` failed log-ins per (address, user name) in `window_s`; then refuse for the window."""

    def __init__(self, limit: int = 5, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s
        self._fails: dict[tuple, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key) -> list[float]:
        now = time.monotonic()
        times = [t for t in self._fails.get(key, []) if now - t < self.window_s]
        self._fails[key] = times
        return times

    def blocked(self, key) -> bool:
        with self._lock:
            return len(self._recent(key)) >= self.limit

    def fail(self, key) -> None:
        with self._lock:
            self._recent(key).append(time.monotonic())
            if len(self._fails) > 10_000:  # bounded memory
                self._fails.clear()

    def clear(self, key) -> None:
        with self._lock:
            self._fails.pop(key, None)
