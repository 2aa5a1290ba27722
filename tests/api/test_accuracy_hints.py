"""``min_fidelity`` on /v1, /v2 and the CLI, with every error case; accuracy shown with its metric and source in the
catalog, the CLI and the console (issue 12 point 1)."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from typer.testing import CliRunner

import infaas.cli.client
from infaas.cli.main import app as cli
from infaas.services import Services
from tests.factories import linear_model, profiles, seed_model

IN = 4
TINY = linear_model(IN, 3)


def _measured(fidelity: float, accuracy: float | None = None) -> tuple:
    base = profiles({1: 0.1, 4: 0.4}, accuracy=accuracy, memory_mb=20.0)
    metric = "top1" if accuracy is not None else None
    return tuple(replace(p, accuracy_metric=metric, fidelity=fidelity, fidelity_metric="agreement") for p in base)


@pytest.fixture
def client(client: TestClient, services: Services) -> TestClient:
    # Declared 0.9, no labels: the variant's accuracy is estimated, 0.9 - (1 - 0.95).
    seed_model(services, "tiny", TINY, task="tiny-task", declared_accuracy=0.9, variants={"q": _measured(0.95)})
    return client


def _infer(client: TestClient, **hints: object) -> tuple[int, dict]:
    response = client.post("/v1/infer", json={"model": "tiny", "inputs": {"x": [[0.0] * IN]}, **hints})
    return response.status_code, response.json()


@pytest.mark.parametrize("value", ["high", -0.1, 1.5, True, [0.5]])
def test_v1_bad_min_fidelity_is_400_naming_it(client: TestClient, value: object) -> None:
    status, body = _infer(client, min_fidelity=value)
    assert status == 400 and "'min_fidelity'" in body["detail"], body


def test_v1_nan_hint_is_400(client: TestClient) -> None:
    body = b'{"model": "tiny", "inputs": {"x": [[0, 0, 0, 0]]}, "min_fidelity": NaN}'
    response = client.post("/v1/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


def test_v1_min_fidelity_is_met_or_422_fidelity_unavailable(client: TestClient) -> None:
    status, body = _infer(client, min_fidelity=0.9)
    assert status == 200 and body["served_by"]["variant"] == "q"
    status, body = _infer(client, min_fidelity=0.99)
    assert status == 422 and body["code"] == "fidelity_unavailable"
    assert "min_fidelity 0.99" in body["detail"] and "best available is 0.95" in body["detail"]
    # The estimated accuracy (0.85) serves a floor below it and not one above.
    assert _infer(client, min_accuracy=0.8)[0] == 200
    status, body = _infer(client, min_accuracy=0.9)
    assert status == 422 and "best available is 0.85 (top1, estimated)" in body["detail"]


def _v2(client: TestClient, **parameters: object) -> tuple[int, dict]:
    request = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, IN], "data": [0.0] * IN}],
        "parameters": parameters,
    }
    response = client.post("/v2/models/tiny/infer", json=request)
    return response.status_code, response.json()


@pytest.mark.parametrize("key", ["slo_min_fidelity", "slo_min_accuracy"])
@pytest.mark.parametrize("value", ["high", -0.1, 1.5, True])
def test_v2_bad_floors_are_400_naming_the_parameter(client: TestClient, key: str, value: object) -> None:
    status, body = _v2(client, **{key: value})
    assert status == 400 and repr(key) in body["error"], body


def test_v2_min_fidelity_is_met_or_400(client: TestClient) -> None:
    status, body = _v2(client, slo_min_fidelity=0.9)
    assert status == 200 and body["parameters"]["variant"] == "tiny/q"
    status, body = _v2(client, slo_min_fidelity=0.99)
    assert status == 400 and "min_fidelity 0.99" in body["error"]  # Triton has no 422


def test_catalog_cli_and_console_show_value_metric_source_and_fidelity(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_model(services, "labelled", TINY, task="tiny-task", variants={"q": _measured(0.97, accuracy=0.91)})
    [variant] = client.get("/v1/models/tiny/variants").json()
    assert (variant["accuracy"], variant["accuracy_metric"], variant["accuracy_source"]) == (
        pytest.approx(0.85),
        "top1",
        "estimated",
    )
    assert (variant["fidelity"], variant["fidelity_metric"]) == (0.95, "agreement")
    assert variant["profiles"][0]["accuracy"] is None  # a profile holds only what was measured
    listed = {m["name"]: m["accuracy"] for m in client.get("/v1/models").json()}
    assert listed["labelled"] == {"value": 0.91, "metric": "top1", "source": "measured"}
    assert listed["tiny"]["source"] == "estimated"

    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    monkeypatch.setattr(
        importlib.import_module("infaas.cli.main"), "out", Console(width=300)
    )  # a table wide enough not to elide cells
    shown = " ".join(CliRunner().invoke(cli, ["variants", "tiny"]).output.split())
    assert "0.850 top1 (estimated)" in shown and "0.950 agreement" in shown
    described = " ".join(CliRunner().invoke(cli, ["describe", "tiny"]).output.split())
    assert "accuracy 0.850 top1 (estimated), fidelity 0.950 agreement" in described
    listing = " ".join(CliRunner().invoke(cli, ["models"]).output.split())
    assert "0.910 top1 (measured)" in listing and "0.850 top1 (estimated)" in listing

    page = client.get("/console/models/tiny").text
    assert "estimated" in page and "0.850" in page and "0.950 agreement" in page


def test_cli_query_min_fidelity(client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    import numpy as np

    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    path = f"{tmp_path}/x.npy"
    np.save(path, np.zeros((1, IN), dtype=np.float32))
    served = CliRunner().invoke(cli, ["query", "tiny", "--input", path, "--min-fidelity", "0.9"])
    assert served.exit_code == 0 and "served by tiny/q" in served.output, served.output
    refused = CliRunner().invoke(cli, ["query", "tiny", "--input", path, "--min-fidelity", "0.99"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 1 and "422" in said and "min_fidelity" in said
    malformed = CliRunner().invoke(cli, ["query", "tiny", "--input", path, "--min-fidelity", "1.5"])
    assert malformed.exit_code == 1 and "400" in malformed.output and "min_fidelity" in malformed.output
