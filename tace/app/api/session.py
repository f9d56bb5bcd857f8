"""Browser sessions of the admin page: a signed cookie instead of the token, and CSRF checks.

The operator token is long-lived and opens the JSON API; a cookie that held it
would hand it to anything able to read the cookie jar. The browser therefore
gets a signed, expiring session naming its role, a fingerprint of the token it
was opened with (changing the token ends every session) and a per-session CSRF
token. Every state-changing form carries that CSRF token, and a request whose
Origin (or Referer) names another site is refused before its form is read:
SameSite=Strict alone does not stop a page on another port of the same host,
which browsers count as the same site.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from tace.app.api.auth import Principal, TokenCheck
from tace.settings import Settings
from tace.storage import read_or_create_secret

COOKIE = "tace_session"
CSRF_FIELD = "csrf_token"
MAX_AGE_SECONDS = 12 * 3600
_KEY_FILE = "api-session.key"
_SALT = "tace-admin-session"


class CsrfRefused(Exception):
    """A state-changing request that did not come from one of our own pages; the message says how."""


@dataclass(frozen=True)
class BrowserSession:
    principal: Principal
    csrf_token: str


class Sessions:
    """Issues and reads the session cookie; the signing key is shared by every API process."""

    def __init__(self, settings: Settings, tokens: TokenCheck) -> None:
        key = read_or_create_secret(Path(settings.data_dir) / _KEY_FILE, lambda: secrets.token_urlsafe(48))
        self._serializer = URLSafeTimedSerializer(key, salt=_SALT)
        self._key = key.encode()
        self._tokens = tokens

    def _fingerprint(self, role: str) -> str:
        token = self._tokens.token_of(role)
        if token is None:
            return ""
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, principal: Principal) -> str:
        payload = {
            "role": principal.role,
            "token": self._fingerprint(principal.role),
            "csrf": secrets.token_urlsafe(32),
        }
        return self._serializer.dumps(payload)

    def read(self, cookie: str | None) -> BrowserSession | None:
        if not cookie:
            return None
        try:
            payload = self._serializer.loads(cookie, max_age=MAX_AGE_SECONDS)
        except BadSignature:
            return None
        if not isinstance(payload, dict):
            return None
        role, fingerprint, csrf = payload.get("role"), payload.get("token"), payload.get("csrf")
        if not isinstance(role, str) or not isinstance(csrf, str) or not isinstance(fingerprint, str):
            return None
        expected = self._fingerprint(role)
        if not expected or not hmac.compare_digest(fingerprint, expected):
            return None
        return BrowserSession(Principal(role), csrf)


def is_tls(request: Request) -> bool:
    """Served over TLS, directly or through a proxy uvicorn trusts (X-Forwarded-Proto)."""
    return request.url.scheme == "https"


def check_same_origin(request: Request) -> None:
    """Refuse a request that a browser says comes from a page of another origin."""
    own = f"{request.url.scheme}://{request.url.netloc}".lower()
    claimed = request.headers.get("origin")
    if claimed is None:
        referer = request.headers.get("referer")
        if referer:
            parts = urlsplit(referer)
            claimed = f"{parts.scheme}://{parts.netloc}"
    if claimed is not None and claimed.lower() != own:
        raise CsrfRefused(f"request from {claimed} to a page served as {own}")


def check_csrf(request: Request, session: BrowserSession, submitted: str | None) -> None:
    """Refuse a form that does not carry this session's CSRF token or comes from another origin."""
    check_same_origin(request)
    if not submitted or not hmac.compare_digest(submitted.encode(), session.csrf_token.encode()):
        raise CsrfRefused("the form does not carry this session's CSRF token; reload the page")
