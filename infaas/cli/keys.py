"""``infaas keys``: create, list and revoke API keys.

Through the server's admin routes by default (needs an admin key in ``INFAAS_API_KEY`` or
``INFAAS_ADMIN_KEY``). ``--local`` works directly on the metadata database instead, so the first admin
key can be made before any server runs, or when the only admin key is lost; it needs write access to
the database, which is exactly the privilege an operator already has.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from infaas.auth import KeyRing
from infaas.cli.client import call
from infaas.config import get_settings
from infaas.errors import InfaasError

keys_app = typer.Typer(help="API keys and tenants (admin only).", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

LOCAL_HELP = "work directly on INFAAS_DATABASE_URL instead of the server (bootstrap)"


@contextmanager
def _local_keyring() -> Iterator[KeyRing]:
    """A key ring on the configured database, with migrations applied and no background workers."""
    from infaas.services import build_services

    settings = get_settings()
    services = build_services(settings, with_jobs=False)
    try:
        yield services.keyring
    finally:
        services.close()


def _row(key: dict[str, Any]) -> list[str]:
    return [
        key["id"],
        key["tenant"],
        "yes" if key["is_admin"] else "",
        str(key["created_at"]),
        str(key["revoked_at"] or ""),
    ]


@keys_app.command("create")
def create(
    tenant: str = typer.Option(..., help="tenant the key acts as: letters, digits, '-' or '_'"),
    admin: bool = typer.Option(False, "--admin", help="an admin key (admin routes, every model)"),
    local: bool = typer.Option(False, "--local", help=LOCAL_HELP),
) -> None:
    """Create a key and print its secret once: it is stored only as a hash."""
    if local:
        with _local_keyring() as ring:
            try:
                created = ring.create(tenant, is_admin=admin)
            except InfaasError as exc:
                err.print(f"[red]error:[/red] {exc}")
                raise typer.Exit(1) from exc
        key_id, secret = created.info.id, created.secret
    else:
        body = call("POST", "/v1/admin/keys", json={"tenant": tenant, "admin": admin})
        key_id, secret = body["id"], body["secret"]
    err.print(f"key {key_id} for tenant {tenant}{' (admin)' if admin else ''}; store it now, it is not shown again:")
    # The secret alone on stdout, so `KEY=$(infaas keys create ...)` works.
    print(secret)


@keys_app.command("list")
def list_keys(local: bool = typer.Option(False, "--local", help=LOCAL_HELP)) -> None:
    """List keys (never their secrets)."""
    if local:
        with _local_keyring() as ring:
            keys = [
                {
                    "id": k.id,
                    "tenant": k.tenant,
                    "is_admin": k.is_admin,
                    "created_at": k.created_at,
                    "revoked_at": k.revoked_at,
                }
                for k in ring.metadata.list_api_keys()
            ]
    else:
        keys = call("GET", "/v1/admin/keys")
    table = Table("id", "tenant", "admin", "created", "revoked")
    for key in keys:
        table.add_row(*_row(key))
    out.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="the key's id, as `infaas keys list` shows it"),
    local: bool = typer.Option(False, "--local", help=LOCAL_HELP),
) -> None:
    """Revoke a key; requests with it are refused from then on."""
    if not re.fullmatch(r"[0-9a-f]{1,32}", key_id):
        # Also keeps a hostile argument such as '../x' from being spliced into the URL path.
        err.print(f"[red]error:[/red] {key_id!r} is not a key id (hex digits, see `infaas keys list`)")
        raise typer.Exit(1)
    if local:
        with _local_keyring() as ring:
            if not ring.revoke(key_id):
                err.print(f"[red]error:[/red] no API key {key_id!r}")
                raise typer.Exit(1)
    else:
        call("DELETE", f"/v1/admin/keys/{key_id}")
    out.print(f"revoked {key_id}")
