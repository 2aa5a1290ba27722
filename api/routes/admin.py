"""API key administration (``/v1/admin/keys``): admin keys only.

Secrets are returned exactly once, by the create call; listings carry only a key's public facts, never
the secret or its hash, so a leaked listing cannot be replayed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field

from api.deps import AdminDep, ServicesDep
from api.schemas import ErrorOut
from infaas.auth import TENANT_PATTERN
from infaas.catalog import ApiKeyInfo
from infaas.errors import NotFound

# pydantic matches these with Rust's regex engine, where ``$`` is the end of the text (a trailing newline
# is refused), unlike Python's ``re``.
TENANT_FIELD_PATTERN = f"^{TENANT_PATTERN.pattern}$"
KEY_ID_PATTERN = r"^[0-9a-f]{1,32}$"

# Documented so clients (and schemathesis) know every status these routes can answer with.
AUTH_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorOut, "description": "missing, invalid or revoked API key"},
    403: {"model": ErrorOut, "description": "the key is not an admin key"},
    413: {"model": ErrorOut, "description": "request body past INFAAS_MAX_BODY_MB"},
    429: {"model": ErrorOut, "description": "too many concurrent requests with this key; see Retry-After"},
}

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"], responses=AUTH_RESPONSES)


class KeyCreateIn(BaseModel):
    """A new key for a tenant; admin keys may use every model and the admin routes."""

    tenant: str = Field(
        pattern=TENANT_FIELD_PATTERN,
        description="tenant name: letters, digits, '-' or '_'; 'admin' and 'local' are reserved",
    )
    admin: bool = False


class KeyOut(BaseModel):
    """A key's public facts."""

    id: str
    tenant: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: ApiKeyInfo) -> KeyOut:
        """From the catalog record (which never holds the secret)."""
        return cls(
            id=info.id,
            tenant=info.tenant,
            is_admin=info.is_admin,
            created_at=_aware(info.created_at),
            revoked_at=_aware(info.revoked_at) if info.revoked_at else None,
        )


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; the stored values are UTC, and RFC 3339 needs the offset."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class KeyCreatedOut(KeyOut):
    """A new key with its secret: the only time the secret is ever shown."""

    secret: str


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreatedOut,
    responses={
        400: {"model": ErrorOut, "description": "the body is not JSON, or the tenant name is reserved"},
        422: {"model": ErrorOut, "description": "invalid tenant name"},
    },
)
def create_key(
    body: KeyCreateIn,
    services: ServicesDep,
    _admin: AdminDep,
) -> KeyCreatedOut:
    """Create a key for a tenant; store the returned secret now, it cannot be shown again."""
    created = services.keyring.create(body.tenant, is_admin=body.admin)
    return KeyCreatedOut(**KeyOut.of(created.info).model_dump(), secret=created.secret)


@router.get("", response_model=list[KeyOut])
def list_keys(services: ServicesDep, _admin: AdminDep) -> list[KeyOut]:
    """Every key, revoked ones included, oldest first; never secrets or hashes."""
    return [KeyOut.of(info) for info in services.metadata.list_api_keys()]


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    responses={404: {"model": ErrorOut, "description": "no key with this id"}},
)
def revoke_key(
    services: ServicesDep,
    _admin: AdminDep,
    key_id: str = Path(pattern=KEY_ID_PATTERN),
) -> KeyOut:
    """Revoke a key: refused at once by this process, by others within the key cache's lifetime."""
    if not services.keyring.revoke(key_id):
        raise NotFound(f"no API key {key_id!r}")
    info = next(k for k in services.metadata.list_api_keys() if k.id == key_id)
    return KeyOut.of(info)
