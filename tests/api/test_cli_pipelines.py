"""``infaas pipeline register FILE.yaml``, ``infaas pipeline plan``, ``infaas pipelines`` against the test app."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

import infaas.cli.client
from infaas.cli.main import app as cli
from infaas.pipelines.registry import store_of
from infaas.services import Services
from tests.api.test_pipelines_api import _pipeline, zoo  # noqa: F401  (the fixture)


@pytest.fixture
def run(client: TestClient, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    monkeypatch.setattr(importlib.import_module("infaas.cli.pipelines"), "out", Console(width=300))

    def invoke(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == code, result.output
        return " ".join(result.output.split())

    return invoke


def test_register_plan_list_delete(run, tmp_path: Path, services: Services, zoo: dict) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    path = tmp_path / "cascade.yaml"
    path.write_text(yaml.safe_dump(_pipeline(p99_ms=20)))
    registered = run("pipeline", "register", str(path))
    assert "registered cascade" in registered and "f 100%" in registered and "(validation)" in registered
    assert "not planned yet" in run("pipeline", "show", "cascade")
    planned = run("pipeline", "plan", "cascade")
    stored = _stored_plan(services)
    assert f"meets the 20 ms objective, ${stored['cost_per_hour']:.4f}/h" in planned
    assert "filter/cpu-fp32" in planned and "head/cpu-fp32" in planned
    listed = run("pipelines")
    assert "cascade" in listed and "f -> h -> w" in listed and "20 ms" in listed
    path.write_text("stages: [")
    assert "cannot read" in run("pipeline", "register", str(path), code=1)
    assert "deleted cascade" in run("pipeline", "delete", "cascade")
    assert "no pipelines" in run("pipelines")


def _stored_plan(services: Services) -> dict:
    info = store_of(services).get("cascade")
    assert info is not None and info.plan is not None
    return info.plan
