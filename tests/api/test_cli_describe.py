"""``infaas describe MODEL``: the signature, the input shapes recorded at registration, and rewrites."""

from __future__ import annotations

import importlib

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

import infaas.cli.client
from infaas.cli.main import app as cli
from infaas.services import Services
from tests.factories import linear_model, profiles, seed_model
from tests.shaped_models import strided_concat_model


@pytest.fixture
def describe(client: TestClient, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Runs ``infaas describe NAME`` against the test app; returns its output on one line."""
    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    monkeypatch.setattr(importlib.import_module("infaas.cli.main"), "out", Console(width=300))

    def run(name: str) -> str:
        result = CliRunner().invoke(cli, ["describe", name])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    return run


def test_describe_prints_the_recorded_input_shapes(services: Services, describe) -> None:  # type: ignore[no-untyped-def]
    seed_model(services, "det", strided_concat_model().SerializeToString(), task="detect", public=True)
    model = services.metadata.get_model("det")
    assert model is not None
    recorded = list(model.input_shapes["images"])
    assert recorded[2:] != [1, 1]  # registration found a size the model runs at
    assert f"input images recorded at shape {recorded}" in describe("det")


def test_describe_of_a_model_without_dynamic_dimensions_shows_no_shape(services: Services, describe) -> None:  # type: ignore[no-untyped-def]
    seed_model(services, "lin", linear_model(), task="t", public=True, variants={"fp32": profiles({1: 1.0})})
    shown = describe("lin")
    assert "input x:" in shown and "recorded at shape" not in shown
