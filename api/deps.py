"""FastAPI dependencies: services, the calling principal, and model visibility.

Auth lives here once: every route asks for ``get_principal`` (or ``require_admin``) instead of checking
keys itself.
"""

from __future__ import annotations

import ipaddress

from fastapi import Depends, HTTPException, Request, status

from infaas.auth import LOCAL_TENANT, Principal
from infaas.catalog import ModelInfo
from infaas.services import Services


def get_services(request: Request) -> Services:
    """The process's services, built in the app lifespan."""
    return request.app.state.services


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    if host in {"testclient", "localhost"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def get_principal(request: Request, services: Services = Depends(get_services)) -> Principal:
    """Authenticate the caller.

    With an admin key configured, a bearer key is required. Without one (embedded default), only
    loopback clients are served and they act as the single local tenant with admin rights.
    """
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    if not services.settings.auth_enabled:
        if not _is_loopback(request):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "no INFAAS_ADMIN_KEY is set: only localhost is served")
        principal = Principal(tenant=LOCAL_TENANT, is_admin=True)
    else:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        found = services.extras["keyring"].verify(token.strip())
        if found is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid or revoked API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        principal = found
    request.state.principal = principal
    return principal


def require_admin(principal: Principal = Depends(get_principal)) -> Principal:
    """Admin routes: refuse tenant keys."""
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs an admin key")
    return principal


def can_use(principal: Principal, model: ModelInfo) -> bool:
    """A model is visible to its owner, to everyone when public, and to admins."""
    return principal.is_admin or model.public or model.owner == principal.tenant


def visible_model(services: Services, principal: Principal, name: str) -> ModelInfo:
    """The named model if the caller may use it; 404 otherwise (never revealing that it exists)."""
    model = services.metadata.get_model(name)
    if model is None or not can_use(principal, model):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model {name!r} not found")
    return model
