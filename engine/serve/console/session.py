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

    def _sign(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie value."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        session = Session(secrets.token_urlsafe(18), expires)
        return session, f"{session.cookie_value}.{self._sign(session.cookie_value)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None when it is missing, forged or expired."""
        if not cookie:
            return None
        nonce, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        if not nonce or not expires.isdigit() or not signature:
            return None
        session = Session(nonce, int(expires))
        if not hmac.compare_digest(signature, self._sign(session.cookie_value)):
            return None
        if session.expires <= (time.time() if now is None else now):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf:{session.nonce}")

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf_token(session))
