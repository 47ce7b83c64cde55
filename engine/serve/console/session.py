"""Console sessions and CSRF tokens: what the browser holds instead of the API token.

A session cookie is ``<nonce>.<expires>.<signature>``: an HMAC, under a key derived from the
API token, of a random nonce and an expiry. It never contains the token, and changing the
token ends every session. With ``--no-auth`` (loopback only) there is no token: the key is
random per process, and a session is handed out on the first page, so forms still carry a
CSRF token bound to a SameSite=Strict cookie that a cross-site page cannot send.

A form's CSRF token is an HMAC of the session nonce: only a page served to this session
could have it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass

COOKIE_NAME = "probewatch_console"
_KEY_LABEL = b"probewatch console session v1"
_MAX_EXPIRY_DIGITS = 12  # Unix seconds until the year 33658


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int

    @property
    def cookie_value(self) -> str:
        return f"{self.nonce}.{self.expires}"


class SessionKeeper:
    """Issues and checks session cookies and CSRF tokens for one app."""

    def __init__(self, api_token: str | None, ttl_s: float):
        secret = api_token.encode() if api_token is not None else os.urandom(32)
        self._key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()
        self.ttl_s = ttl_s
        # nonce -> expiry of sessions signed out before they expired. Kept in memory: a restart
        # forgets them (changing the API token ends every session, signed out or not).
        self._revoked: dict[str, int] = {}

    def _sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        session = Session(secrets.token_urlsafe(18), expires)
        return session, f"{session.cookie_value}.{self._sign(session.cookie_value)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None when it is missing, forged or expired."""
        # compare_digest takes ASCII str only, and isdigit() passes "²" and 5,000-digit runs
        # that int() refuses: any other cookie is no session, never an error
        if not cookie or not cookie.isascii():
            return None
        nonce, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        if not nonce or not expires.isdigit() or len(expires) > _MAX_EXPIRY_DIGITS or not signature:
            return None
        session = Session(nonce, int(expires))
        if not hmac.compare_digest(signature, self._sign(session.cookie_value)):
            return None
        if session.expires <= (time.time() if now is None else now) or session.nonce in self._revoked:
            return None
        return session

    def revoke(self, session: Session, now: float | None = None) -> None:
        """Sign ``session`` out: its cookie is refused from now on, though its signature holds."""
        now = time.time() if now is None else now
        self._revoked = {nonce: expires for nonce, expires in self._revoked.items() if expires > now}
        self._revoked[session.nonce] = session.expires

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf:{session.nonce}")

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf_token(session))
