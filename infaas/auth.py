"""API keys and tenants: keys are random, shown once, and kept only as SHA-256 hashes.

Key checks sit on the query path, so verified keys are cached in memory for a few seconds; a revoke
through this process drops the cache at once, other processes see it within ``CACHE_TTL_S``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from infaas.catalog import ApiKeyInfo
from infaas.errors import BadRequest, Unprocessable
from infaas.metadata import MetadataStore

KEY_PREFIX = "infaas_"
CACHE_TTL_S = 5.0
ADMIN_TENANT = "admin"
LOCAL_TENANT = "local"
# ASCII only, matched whole (``fullmatch``: ``$`` would also accept a trailing newline).
TENANT_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Tenant names the code gives a meaning of their own: the principal of INFAAS_ADMIN_KEY and of every
# console session opened with it, and the owner of everything registered with authentication off. A
# key for such a tenant would own (list, describe, delete) their private models. Compared without case.
RESERVED_TENANTS = frozenset({ADMIN_TENANT, LOCAL_TENANT})


class ReservedTenant(BadRequest):
    """A key was asked for a tenant name the system uses itself."""

    code = "reserved_tenant"


def is_reserved_tenant(tenant: str) -> bool:
    """Whether ``tenant`` names the admin or the key-less local tenant (any letter case)."""
    return tenant.lower() in RESERVED_TENANTS


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, and whether it may use admin routes."""

    tenant: str
    is_admin: bool
    key_id: str | None = None


@dataclass(frozen=True)
class CreatedKey:
    """A new key: the secret is only ever returned here."""

    info: ApiKeyInfo
    secret: str


def model_namespace(principal: Principal) -> str | None:
    """The namespace a principal registers models in: its tenant, or none (unqualified names) for admins.

    Each tenant registers as ``<tenant>.<name>``, so a registration can never collide with (and so never
    reveal) another tenant's private model.
    """
    return None if principal.is_admin else principal.tenant


def hash_key(secret: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """Creates, verifies and revokes keys against the metadata store."""

    def __init__(self, metadata: MetadataStore, admin_key: str | None) -> None:
        self.metadata = metadata
        self.admin_key = admin_key
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def create(self, tenant: str, is_admin: bool = False) -> CreatedKey:
        """A new random key for ``tenant``; ``ReservedTenant`` (400) for ``admin``/``local``, nothing stored."""
        if not TENANT_PATTERN.fullmatch(tenant):
            raise Unprocessable("tenant must be 1-128 letters, digits, '-' or '_'")
        if is_reserved_tenant(tenant):
            raise ReservedTenant(
                f"tenant name {tenant!r} is reserved ({', '.join(sorted(RESERVED_TENANTS))} name the admin key and "
                "the key-less local mode): pick another name; for admin rights create the key with admin=true"
            )
        key_id = secrets.token_hex(8)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        info = self.metadata.add_api_key(key_id, tenant, hash_key(secret), is_admin)
        return CreatedKey(info=info, secret=secret)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; effective at once in this process."""
        revoked = self.metadata.revoke_api_key(key_id)
        with self._lock:
            self._cache.clear()
        return revoked

    def verify(self, secret: str) -> Principal | None:
        """The principal a bearer secret stands for, or ``None`` when unknown or revoked.

        A tenant key stored for a reserved name (made before such names were refused) is refused too: it
        would see the admin's or the local tenant's private models.
        """
        if self.admin_key and hmac.compare_digest(secret.encode(), self.admin_key.encode()):
            return Principal(tenant=ADMIN_TENANT, is_admin=True)
        digest = hash_key(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and now - cached[0] < CACHE_TTL_S:
            return cached[1]
        info = self.metadata.find_api_key(digest)
        principal = (
            Principal(tenant=info.tenant, is_admin=info.is_admin, key_id=info.id)
            if info is not None and info.revoked_at is None and (info.is_admin or not is_reserved_tenant(info.tenant))
            else None
        )
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, principal)
        return principal
