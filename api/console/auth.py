"""Who may use the console, and how a browser proves it on every request.

A browser cannot attach a bearer header to a navigation, so ``/console/login`` trades the admin key
for a signed session cookie (HttpOnly, SameSite=Strict). The cookie holds no secret: only a random
session id, its issue time and which key signed in, with an HMAC over them. The HMAC key is derived
from ``INFAAS_ADMIN_KEY``, so every front-end process accepts the cookie and rotating the admin key
signs every console user out. Keys created through ``/v1/admin/keys`` with admin rights may sign in
too; their sessions die as soon as the key is revoked.

Forms carry a per-session CSRF token (an HMAC of the session id) on top of SameSite=Strict, and
cookie-authenticated POSTs (sign-in included) that a browser marks as cross-site (``Origin`` of another
site, ``Sec-Fetch-Site: cross-site``; ``api.cross_site``) are refused before anything else. Requests
authenticated by a bearer header (scripts) need no token: a browser never sends one cross-site.

With no admin key configured the console follows ``authenticate``: loopback clients asking for a
loopback ``Host`` only (no DNS rebinding), and they get a session cookie automatically so that forms
still carry a CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Response

from api.cross_site import refuse_cross_site
from api.deps import ServicesDep, authenticate
from infaas.auth import ADMIN_TENANT, LOCAL_TENANT, Principal
from infaas.errors import Forbidden, Unauthenticated
from infaas.services import Services

COOKIE_NAME = "infaas_console"
COOKIE_PATH = "/console"
SESSION_TTL_S = 12 * 3600
_ROOT = "-"  # key id recorded for sessions opened with INFAAS_ADMIN_KEY itself
# Key-less mode serves one process's localhost; a per-process random key is enough.
_KEYLESS_SECRET = secrets.token_bytes(32)


class LoginRequired(Unauthenticated):
    """No valid session or key: a 401, which ``ConsoleRoute`` turns into the sign-in page on page routes."""

    code = "login_required"

    def __init__(self, message: str = "sign in with the admin key at /console/login") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class ConsoleSession:
    """The signed-in admin of one console request.

    ``session_id`` is ``None`` when the request was authenticated by a bearer header; such requests
    need no CSRF token. ``new_cookie`` is set when the session was opened by this very request (the
    key-less localhost case) and must be sent back with the response.
    """

    principal: Principal
    session_id: str | None
    csrf_token: str
    new_cookie: str | None = None


def _secret(services: Services) -> bytes:
    """The HMAC key for cookies and CSRF tokens."""
    admin_key = services.settings.admin_key
    if admin_key:
        return hmac.new(admin_key.encode(), b"infaas-console-session-v1", hashlib.sha256).digest()
    return _KEYLESS_SECRET


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def csrf_token_for(services: Services, session_id: str) -> str:
    """The CSRF token every form of this session must carry."""
    return _sign(_secret(services), f"csrf:{session_id}")[:40]


def issue_cookie(services: Services, key_id: str | None) -> tuple[str, str]:
    """A new session: ``(session_id, cookie value)``."""
    session_id = secrets.token_urlsafe(18)
    payload = f"{session_id}.{int(time.time())}.{key_id or _ROOT}"
    return session_id, f"{payload}.{_sign(_secret(services), payload)}"


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """Attach the session cookie with the flags that keep it out of scripts and cross-site requests."""
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=SESSION_TTL_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response: Response) -> None:
    """Sign out: the browser drops the cookie."""
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")


def _admin_key_active(services: Services, key_id: str) -> Principal | None:
    """The principal of a stored admin key that is still valid, else ``None``."""
    for info in services.metadata.list_api_keys():
        if info.id == key_id:
            if info.is_admin and info.revoked_at is None:
                return Principal(tenant=info.tenant, is_admin=True, key_id=info.id)
            return None
    return None


def _from_cookie(services: Services, value: str) -> tuple[str, Principal] | None:
    """``(session_id, principal)`` of a valid, unexpired cookie."""
    parts = value.split(".")
    if len(parts) != 4:
        return None
    session_id, issued, key_id, signature = parts
    if not hmac.compare_digest(signature, _sign(_secret(services), f"{session_id}.{issued}.{key_id}")):
        return None
    if not issued.isdigit() or time.time() - int(issued) > SESSION_TTL_S:
        return None
    if key_id == _ROOT:
        settings = services.settings
        tenant = ADMIN_TENANT if settings.auth_enabled else LOCAL_TENANT
        return session_id, Principal(tenant=tenant, is_admin=True)
    principal = _admin_key_active(services, key_id)
    return (session_id, principal) if principal is not None else None


def console_session(request: Request, services: ServicesDep) -> ConsoleSession:
    """The console's one auth dependency: a session cookie or an admin bearer key, never a tenant key."""
    if not services.settings.auth_enabled:
        return _keyless_session(request, services)
    cookie = request.cookies.get(COOKIE_NAME)
    found = _from_cookie(services, cookie) if cookie else None
    if found is not None:
        refuse_cross_site(request.method, request.headers)  # the cookie is a browser's ambient credential
        session_id, principal = found
        return ConsoleSession(principal, session_id, csrf_token_for(services, session_id))
    if not request.headers.get("authorization"):
        raise LoginRequired()
    principal = authenticate(request, services)  # 401 for an unknown or revoked key
    if not principal.is_admin:
        raise Forbidden("the console needs an admin key")
    return ConsoleSession(principal, None, "")


ConsoleSessionDep = Annotated[ConsoleSession, Depends(console_session)]


def _keyless_session(request: Request, services: Services) -> ConsoleSession:
    """No admin key: loopback clients only (as ``authenticate``), each given a session for CSRF tokens."""
    principal = authenticate(request, services)  # 403 unless on loopback, for a loopback Host, same-site
    cookie = request.cookies.get(COOKIE_NAME)
    found = _from_cookie(services, cookie) if cookie else None
    if found is not None:
        return ConsoleSession(principal, found[0], csrf_token_for(services, found[0]))
    session_id, value = issue_cookie(services, None)
    return ConsoleSession(principal, session_id, csrf_token_for(services, session_id), new_cookie=value)


def check_origin(request: Request) -> None:
    """Refuse a POST a browser marks as cross-site (login included, which has no session yet).

    Without ``Origin`` (not a browser, or an old one) the CSRF token still applies.
    """
    refuse_cross_site(request.method, request.headers)


def check_csrf(request: Request, session: ConsoleSession, token: str) -> None:
    """A console form's CSRF token must match its session (bearer-authenticated calls need none)."""
    check_origin(request)
    if session.session_id is None:
        return
    if not token or not hmac.compare_digest(token.encode(), session.csrf_token.encode()):
        raise Forbidden("missing or stale form token: reload the page and retry")
