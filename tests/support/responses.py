"""Every admin API response and page a test receives without the phi role, kept for the identifier scan.

The session's last step (``tests/conftest.py``) greps this file with the logs for
the test patients' names, IDs and birth dates. Responses to the ``phi`` role may
name the patient and are not kept; a request counts as ``phi`` when it carries a
token from :data:`PHI_TOKENS` or a session cookie opened with one. A phi token
not listed here is treated as an operator's, so a forgotten entry fails the scan
instead of hiding a leak.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

PHI_TOKENS = frozenset({"phi-secret", "phi"})
SESSION_COOKIE = "tace_session"

_lock = threading.Lock()
_path: Path | None = None
_phi_sessions: set[str] = set()


def record(method: str, url: str, status: int, body: bytes | str) -> None:
    """Keep one response (called for responses the test client or a test fetched itself)."""
    if _path is None:
        return
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    with _lock, _path.open("a") as handle:
        handle.write(f"--- {method} {url} -> {status}\n{text}\n")


def _cookie_sessions(header: str) -> set[str]:
    cookies: SimpleCookie = SimpleCookie()
    cookies.load(header)
    return {morsel.value for name, morsel in cookies.items() if name == SESSION_COOKIE}


def is_phi_request(headers: Any, form: bytes = b"", path: str = "") -> bool:
    authorization = headers.get("authorization", "")
    if authorization.startswith("Bearer ") and authorization.removeprefix("Bearer ").strip() in PHI_TOKENS:
        return True
    if path == "/login" and set(parse_qs(form.decode(errors="replace")).get("token", [])) & PHI_TOKENS:
        return True
    return bool(_cookie_sessions(headers.get("cookie", "")) & _phi_sessions)


def _remember_phi_session(response: Any) -> None:
    for hop in (*response.history, response):
        for header in hop.headers.get_list("set-cookie"):
            _phi_sessions.update(_cookie_sessions(header))


@contextmanager
def recording(path: Path) -> Iterator[None]:
    """Record every response an in-process test client (Starlette's TestClient) receives."""
    global _path
    import httpx
    from starlette.testclient import TestClient

    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        response = original(self, request, **kwargs)
        if isinstance(self, TestClient):
            form = request.content if request.method == "POST" else b""
            if is_phi_request(request.headers, form, request.url.path):
                if request.url.path == "/login":
                    _remember_phi_session(response)
            else:
                record(request.method, str(request.url), response.status_code, response.read())
        return response

    _path = path
    httpx.Client.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        httpx.Client.send = original  # type: ignore[method-assign]
        _path = None
