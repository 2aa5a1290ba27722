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


@functools.lru_cache(maxsize=1024)
def _is_loopback_host(host: str) -> bool:
    if host in {"testclient", "localhost"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback(request: Request) -> bool:
    client = request.scope.get("client")
    return _is_loopback_host(client[0] if client else "")


_LOCAL_PRINCIPAL = Principal(tenant=LOCAL_TENANT, is_admin=True)


def authenticate(request: Request, services: Services) -> Principal:
    """Authenticate the caller (blocking: a key not seen lately is looked up in the database).

    With an admin key configured, a bearer key is required. Without one (embedded default), only
    loopback clients are served and they act as the single local tenant with admin rights.
    """
    cached = request.scope.get("infaas.principal")
    if cached is not None:
        return cached
    if not services.settings.auth_enabled:
        if not _is_loopback(request):
            raise Forbidden("no INFAAS_ADMIN_KEY is set: only localhost is served")
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
    """The named model if the caller may use it; 404 otherwise (never revealing that it exists)."""
    model = services.metadata.get_model(name)
    if model is None or not can_use(principal, model):
        raise NotFound(f"model {name!r} not found")
    return model
