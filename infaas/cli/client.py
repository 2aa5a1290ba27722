"""HTTP client for CLI commands: base URL and key from settings, errors printed as one clear line."""

from __future__ import annotations

from typing import Any

import httpx
import typer
from rich.console import Console

from infaas.config import get_settings

err = Console(stderr=True)


def client(timeout: float = 120.0) -> httpx.Client:
    """A client for ``INFAAS_URL`` carrying ``INFAAS_API_KEY`` (or the admin key) as a bearer token."""
    settings = get_settings()
    key = settings.api_key or settings.admin_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=settings.url, headers=headers, timeout=timeout)


def call(method: str, path: str, **kwargs: Any) -> Any:
    """Send a request; exit with the server's message on an error status or a connection failure."""
    try:
        with client() as http:
            response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach infaas at {get_settings().url}: {exc}[/red] (is `infaas serve` running?)")
        raise typer.Exit(2) from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail") or response.json().get("error")
        except ValueError:
            detail = response.text
        err.print(f"[red]error {response.status_code}:[/red] {detail}")
        raise typer.Exit(1)
    return response.json() if response.content else None
