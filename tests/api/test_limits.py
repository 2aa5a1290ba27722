"""Every limit answers with its documented status: 413 for uploads and bodies past their size (declared or
streamed), 400 for too large a batch or too many inputs, 429 with ``Retry-After`` past the per-key
concurrency limit; and the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from api.concurrency import ConcurrencyLimit
from infaas.auth import Principal
from infaas.services import Services, build_services
from tests.factories import upload_model
from tests.fuzz import Tenants, mlp_bytes, route_exists, secure_app, secure_settings, secure_world


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Tenants]]:
    with secure_world(
        tmp_path / "home", max_upload_mb=0.01, max_body_mb=0.001, max_batch_per_query=4, max_inputs_per_request=1
    ) as world:
        yield world


def test_upload_past_limit_is_413_and_stores_nothing(limited: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = limited
    big = mlp_bytes(in_dim=64, hidden=64)
    assert len(big) > 10_000
    response = upload_model(client, "m", big, headers=tenants.alice)
    assert response.status_code == 413, response.text
    assert services.metadata.get_model("m") is None and services.store.list("models/") == []
    assert upload_model(client, "m", mlp_bytes(), headers=tenants.alice).status_code == 201


def _chunks(size: int) -> Iterator[bytes]:
    """A JSON body sent without Content-Length (chunked): only the streamed count can catch it."""
    yield b'{"tenant": "'
    for _ in range(size // 500):
        yield b"a" * 500
    yield b'"}'


def test_body_past_limit_is_413(limited: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = limited
    declared = client.post("/v1/admin/keys", json={"tenant": "a" * 5000}, headers=tenants.admin)
    assert declared.status_code == 413, declared.text
    if route_exists(client.app, "/v1/infer", "POST"):  # reads the raw body itself
        streamed = client.post(
            "/v1/infer", content=_chunks(5000), headers={**tenants.alice, "content-type": "application/json"}
        )
        assert streamed.status_code == 413, streamed.text
    assert client.get("/v1/models", headers=tenants.alice).status_code == 200


def test_streamed_body_past_limit_is_413_on_pydantic_routes(limited: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = limited
    streamed = client.post(
        "/v1/admin/keys", content=_chunks(5000), headers={**tenants.admin, "content-type": "application/json"}
    )
    assert streamed.status_code == 413, streamed.text


def test_batch_and_input_count_limits_are_400(limited: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = limited
    if not route_exists(client.app, "/v1/infer", "POST"):
        pytest.fail("POST /v1/infer is not served by the app")
    assert upload_model(client, "m", mlp_bytes(), headers=tenants.alice).status_code == 201
    too_big = client.post(
        "/v1/infer", json={"model": "alice.m", "inputs": {"x": [[0.0] * 8] * 5}}, headers=tenants.alice
    )
    assert too_big.status_code == 400 and "at most 4 per query" in too_big.text, too_big.text
    too_many = client.post(
        "/v1/infer", json={"model": "alice.m", "inputs": {"x": [[0.0] * 8], "z": [[0.0]]}}, headers=tenants.alice
    )
    assert too_many.status_code == 400 and "inputs" in too_many.text, too_many.text


class _AuthenticatedAs:
    """Stands in for ``api.admission`` outside the limiter: the bearer token is the key id (no token on
    health probes, which admission never authenticates)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = dict(scope.get("headers") or []).get(b"authorization", b"").partition(b" ")[2]
        if scope["type"] == "http" and token and not scope["path"].startswith("/v2/health"):
            scope["infaas.principal"] = Principal(tenant="t", is_admin=False, key_id=token.decode())
        await self.app(scope, receive, send)


def _slow_app(limit: int) -> tuple[FastAPI, asyncio.Event]:
    """An app whose /v1/slow and /v2/health/slow routes wait until released, behind the limiter."""
    app = FastAPI()
    release = asyncio.Event()

    @app.get("/v1/slow")
    @app.get("/v2/health/slow")
    async def slow() -> dict[str, bool]:
        await release.wait()
        return {"ok": True}

    app.add_middleware(ConcurrencyLimit, limit=limit)
    app.add_middleware(_AuthenticatedAs)
    return app, release


def test_concurrency_limit_per_key_is_429_with_retry_after() -> None:
    async def scenario() -> None:
        app, release = _slow_app(limit=2)
        limiter = app.build_middleware_stack()
        transport = httpx.ASGITransport(app=limiter)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            key_a = {"Authorization": "Bearer key-a"}
            held = [asyncio.create_task(http.get("/v1/slow", headers=key_a)) for _ in range(2)]
            await asyncio.sleep(0.05)
            refused = await http.get("/v1/slow", headers=key_a)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert "INFAAS_MAX_CONCURRENT_PER_KEY" in refused.json()["detail"]
            # Another key has its own budget, and health probes are never limited.
            other = asyncio.create_task(http.get("/v1/slow", headers={"Authorization": "Bearer key-b"}))
            probe = asyncio.create_task(http.get("/v2/health/slow", headers=key_a))
            await asyncio.sleep(0.05)
            assert not other.done() and not probe.done()
            release.set()
            results = await asyncio.gather(*held, other, probe)
            assert [r.status_code for r in results] == [200] * 4
            # Slots are given back: the key is served again, and the table is empty when idle.
            assert (await http.get("/v1/slow", headers=key_a)).status_code == 200

    asyncio.run(scenario())


def test_concurrency_slot_released_when_the_route_fails() -> None:
    app = FastAPI()

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("route bug")

    app.add_middleware(ConcurrencyLimit, limit=1)
    app.add_middleware(_AuthenticatedAs)
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(3):
            assert client.get("/v1/boom", headers={"Authorization": "Bearer k"}).status_code == 500


def test_concurrency_limit_is_wired_with_the_configured_limit(tmp_path: Path) -> None:
    settings = secure_settings(tmp_path / "home", max_concurrent_per_key=1)
    services = build_services(settings)
    app = secure_app(settings, services)
    limiters = [m for m in app.user_middleware if m.cls is ConcurrencyLimit]
    assert len(limiters) == 1 and limiters[0].kwargs["limit"] == 1
    services.close()
