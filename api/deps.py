"""FastAPI dependencies: services, the calling principal, and model visibility.

Auth lives here once: every route asks for ``PrincipalDep`` (or ``AdminDep``) instead of checking keys
itself. The ``Annotated`` aliases put each route's needs in its signature.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from api.cross_site import refuse_cross_site
from infaas.auth import LOCAL_TENANT, Principal
from infaas.catalog import ModelInfo
from infaas.errors import Forbidden, NotFound, Unauthenticated
from infaas.services import Services


async def get_services(request: Request) -> Services:
    """The process's services, built in the app lifespan.

    ``async`` so that FastAPI calls it on the event loop: a plain ``def`` dependency costs a thread-pool
    round trip on every request.
    """
    return request.app.state.services


# Starlette's TestClient puts this peer name in the scope and sends ``Host: testserver``. A server only
# ever puts the socket peer's IP address there (uvicorn with forwarded headers off, the ``infaas serve``
# default), so the name cannot come from a client; with trusted proxies configured, a proxy's
# X-Forwarded-For could say anything, and then no name is believed.
_TEST_CLIENT = "testclient"
_TEST_SERVER = "testserver"
_LOOPBACK_NAMES = frozenset({"localhost"})


@functools.lru_cache(maxsize=1024)
def _is_loopback_address(host: str) -> bool:
    """Whether ``host`` is a loopback IP address (names never are: they may come from a header)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)
def _host_name(header: str) -> str | None:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]`` or ``[v6]:port``); ``None`` if
    malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, port = header[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
        return name
    name, colon, port = header.partition(":")
    if colon and not port.isdigit():
        return None
    return name or None


def _from_test_client(request: Request, services: Services) -> bool:
    client = request.scope.get("client")
    return bool(client) and client[0] == _TEST_CLIENT and not services.settings.trusted_proxies


def _check_keyless_caller(request: Request, services: Services) -> None:
    """Authentication off: the peer must be on loopback and the ``Host`` must name loopback.

    The address check keeps other machines out. The ``Host`` check stops DNS rebinding: a page on
    ``evil.example`` whose name is re-pointed at 127.0.0.1 makes the browser send same-origin requests to
    this server, but with ``Host: evil.example`` (issue 14: ``GET /console/actions`` then handed out a
    session and a CSRF token and a model was deleted). A browser always sends the name it resolved.
    """
    test_client = _from_test_client(request, services)
    client = request.scope.get("client")
    if not (test_client or (client and _is_loopback_address(client[0]))):
        raise Forbidden("no INFAAS_ADMIN_KEY is set: only localhost is served")
    host = _host_name(request.headers.get("host", ""))
    allowed = host is not None and (
        host in _LOOPBACK_NAMES or _is_loopback_address(host) or (test_client and host == _TEST_SERVER)
    )
    if not allowed:
        raise Forbidden(
            f"no INFAAS_ADMIN_KEY is set: only requests to a loopback host are served (Host "
            f"{request.headers.get('host', '')[:100]!r}); use http://127.0.0.1, http://[::1] or http://localhost"
        )


_LOCAL_PRINCIPAL = Principal(tenant=LOCAL_TENANT, is_admin=True)


def authenticate(request: Request, services: Services) -> Principal:
    """Authenticate the caller (blocking: a key not seen lately is looked up in the database).

    With an admin key configured, a bearer key is required. Without one (embedded default), only
    loopback clients asking for a loopback host are served, they act as the single local tenant with
    admin rights, and state-changing requests a browser marks as cross-site are refused
    (``api.cross_site``): being on loopback is a credential every page the local user opens shares.
    """
    cached = request.scope.get("infaas.principal")
    if cached is not None:
        return cached
    if not services.settings.auth_enabled:
        _check_keyless_caller(request, services)
        refuse_cross_site(request.method, request.headers)
        principal = _LOCAL_PRINCIPAL
    else:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        found = services.keyring.verify(token.strip())
        if found is None:
            raise Unauthenticated("invalid or revoked API key")
        principal = found
    request.scope["infaas.principal"] = principal
    return principal


async def get_principal(request: Request) -> Principal:
    """The calling principal (see ``authenticate``), as a dependency of every route.

    Without an admin key this is a dict lookup and runs on the event loop; with keys, verification may
    query the database and runs in the thread pool. It reads the services straight from the app state
    (no sub-dependency), and the inference routes await it directly: each ``Depends`` costs FastAPI
    tens of microseconds per request.
    """
    cached = request.scope.get("infaas.principal")  # set by api.admission before the body was read
    if cached is not None:
        return cached
    services: Services = request.app.state.services
    if not services.settings.auth_enabled:
        return authenticate(request, services)
    return await run_in_threadpool(authenticate, request, services)


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """Admin routes: refuse tenant keys."""
    if not principal.is_admin:
        raise Forbidden("this route needs an admin key")
    return principal


ServicesDep = Annotated[Services, Depends(get_services)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]


def can_use(principal: Principal, model: ModelInfo) -> bool:
    """A model is visible to its owner, to everyone when public, and to admins."""
    return principal.is_admin or model.public or model.owner == principal.tenant


def visible_model(services: Services, principal: Principal, name: str) -> ModelInfo:
    """The named model if the caller may use it; 404 otherwise (never revealing that it exists).

    Visibility is decided from the engine's in-memory catalog before anything is read, so a name the
    caller may not see costs one dict lookup, exactly like a name that does not exist. Loading first
    told them apart by time (issue 14: 5.7 ms for another tenant's private model, 2.3 ms for none).
    Only a visible model is then read from the database, for its current variants and profiles.
    """
    cached = services.engine.cache.model(name)
    model = services.metadata.get_model(name) if cached is not None and can_use(principal, cached) else None
    if model is None or not can_use(principal, model):  # deleted, or made private, since the cache was built
        raise NotFound(f"model {name!r} not found")
    return model
