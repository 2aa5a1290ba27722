"""GET /v1/decisions: newest first, filter by level, admin only; the CLI prints them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from infaas.services import Services


def _record(services: Services) -> None:
    services.metadata.record_decision(
        level="model",
        action="add_replica",
        target="local/m/fp32",
        inputs={"rate_per_s": 300.0, "utilization": 1.5},
        reason="overloaded",
        outcome="2 replica(s)",
    )
    services.metadata.record_decision(
        level="vm", action="add_worker", target="cluster", inputs={"utilization": 0.9}, reason="hot", dry_run=True
    )


def test_lists_decisions_newest_first_with_inputs(client: TestClient, services: Services) -> None:
    _record(services)
    rows = client.get("/v1/decisions").json()
    assert [r["action"] for r in rows] == ["add_worker", "add_replica"]
    assert rows[0]["dry_run"] is True and rows[0]["outcome"] is None
    assert rows[1]["inputs"] == {"rate_per_s": 300.0, "utilization": 1.5}
    assert rows[1]["reason"] == "overloaded" and rows[1]["target"] == "local/m/fp32"


def test_filters_by_level_and_limits(client: TestClient, services: Services) -> None:
    _record(services)
    assert [r["level"] for r in client.get("/v1/decisions", params={"level": "model"}).json()] == ["model"]
    assert len(client.get("/v1/decisions", params={"limit": 1}).json()) == 1
    services.metadata.record_decision(
        level="leader", action="leader", target="front-end-1", inputs={}, reason="took the lease", outcome=None
    )
    assert [r["action"] for r in client.get("/v1/decisions", params={"level": "leader"}).json()] == ["leader"]
    assert client.get("/v1/decisions", params={"level": "bogus"}).status_code == 422
    assert client.get("/v1/decisions", params={"limit": 0}).status_code == 422


@pytest.fixture
def auth_client(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from api.app import create_app
    from infaas.config import Settings
    from infaas.services import build_services

    settings = Settings(home=tmp_path / "authhome", build_variants=False, autoscaler="off", admin_key="admin-secret")
    services = build_services(settings)
    with TestClient(create_app(settings, services=services)) as test_client:
        yield test_client, services
    services.close()


def test_admin_only(auth_client) -> None:  # type: ignore[no-untyped-def]
    test_client, services = auth_client
    tenant = services.keyring.create("tenant-a", is_admin=False)
    assert test_client.get("/v1/decisions").status_code == 401
    assert test_client.get("/v1/decisions", headers={"Authorization": "Bearer admin-secret"}).status_code == 200
    response = test_client.get("/v1/decisions", headers={"Authorization": f"Bearer {tenant.secret}"})
    assert response.status_code == 403


def test_cli_prints_decisions(client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from infaas.cli import decisions as cli

    _record(services)
    monkeypatch.setattr(cli, "call", lambda method, path, **kw: client.request(method, path, **kw).json())
    app = typer.Typer()
    app.command()(cli.decisions_command)
    result = CliRunner().invoke(app, ["--limit", "5", "--inputs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "add_replica" in result.output and "add_worker" in result.output
    assert "dry-run" in result.output and "utilization" in result.output
