"""``infaas cascades TASK``: the kept cascade with its numbers, and with --all every pair's decision; the console's
model page shows it beside the variants."""

from __future__ import annotations

import importlib

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

import infaas.cli.client
from infaas.cli.main import app as cli
from infaas.services import Services
from tests.variant_generator.test_cascades import TASK, seed_pair
from variant_generator.cascades.construct import build_task_cascades


def test_cascades_command_shows_the_kept_cascade_and_every_decision(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    monkeypatch.setattr(importlib.import_module("infaas.cli.cascades"), "out", Console(width=400))
    seed_pair(services, cheap_ms=0.01)
    build_task_cascades(services, TASK, "local")
    result = CliRunner().invoke(cli, ["cascades", TASK, "--all"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())  # cells, without the table's borders
    assert "big/cascade-cpu-fp32 ready cheap/cpu-fp32 -> big/cpu-fp32 max_prob >=" in text
    assert "] pt" in text and "yes cheap/cpu-fp32 big/cpu-fp32 cascade cheap/cpu-fp32 -> big/cpu-fp32" in text
    page = client.get("/console/models/big").text  # the console's model page, beside the variants
    assert 'data-cascade="big/cascade-cpu-fp32" data-status="ready"' in page
    assert "cheap/cpu-fp32 &rarr; big/cpu-fp32" in page
    missing = CliRunner().invoke(cli, ["cascades", "no-such-task"])
    assert missing.exit_code != 0 and "no model registered for task" in missing.output
