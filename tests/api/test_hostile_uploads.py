"""Hostile uploads and malformed OIP binary requests: each refused with a 4xx, nothing stored, and the
server still serving afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from infaas.services import Services
from tests.factories import upload_model
from tests.fuzz import (
    Tenants,
    hostile_models,
    mlp_bytes,
    random_header_bytes,
    route_exists,
    secure_world,
)

HOSTILE = hostile_models()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Services, Tenants]]:
    # One tenant attempts far more registrations here than the hourly quota allows (tested on its own).
    with secure_world(tmp_path_factory.mktemp("hostile") / "home", max_registrations_per_hour=1000) as world:
        yield world


def _still_serving(client: TestClient, services: Services, tenants: Tenants) -> None:
    assert client.get("/v1/models", headers=tenants.alice).status_code == 200
    assert services.metadata.list_models() == [] and services.store.list("models/") == []


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_model_rejected(server: tuple[TestClient, Services, Tenants], kind: str) -> None:
    client, services, tenants = server
    response = upload_model(
        client, f"hostile-{kind}", HOSTILE[kind], headers=tenants.alice, filename="../../etc/cron.d/evil.onnx"
    )
    assert 400 <= response.status_code < 500, (kind, response.status_code, response.text)
    _still_serving(client, services, tenants)


def test_random_bytes_behind_onnx_header(server: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = server
    rng = np.random.default_rng(7)
    for i in range(20):
        response = upload_model(client, f"noise-{i}", random_header_bytes(rng, 2048), headers=tenants.alice)
        assert 400 <= response.status_code < 500, response.text
    _still_serving(client, services, tenants)


def test_hostile_file_name_never_reaches_a_path(server: tuple[TestClient, Services, Tenants], tmp_path: Path) -> None:
    client, services, tenants = server
    for filename in ("../../../../tmp/pwned.onnx", "/etc/passwd", "a\x00b.onnx", "..\\..\\x.onnx"):
        response = upload_model(client, "named", mlp_bytes(), headers=tenants.alice, filename=filename)
        assert response.status_code == 201, response.text
        assert services.store.exists("models/alice.named/model.onnx")
        assert not Path("/tmp/pwned.onnx").exists()
        assert client.delete("/v1/models/alice.named", headers=tenants.alice).status_code == 200


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "x" * 300, "", " "])
def test_hostile_model_names_rejected(server: tuple[TestClient, Services, Tenants], name: str) -> None:
    client, services, tenants = server
    response = upload_model(client, name, mlp_bytes(), headers=tenants.alice)
    assert 400 <= response.status_code < 500, (name, response.text)
    _still_serving(client, services, tenants)


@pytest.mark.parametrize("length", ["99999", "-1", "abc", "", "1e3", "0x10", " 12", "18446744073709551617"])
def test_malformed_oip_binary_header_is_400(server: tuple[TestClient, Services, Tenants], length: str) -> None:
    client, services, tenants = server
    if not route_exists(client.app, "/v2/models/{name}/infer", "POST"):
        pytest.fail("POST /v2/models/{name}/infer is not served by the app")
    if services.metadata.get_model("alice.oip") is None:
        registered = upload_model(client, "oip", mlp_bytes(), headers=tenants.alice)
        assert registered.status_code == 201, registered.text
    header = b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","parameters":{"binary_data_size":32}}]}'
    body = header + np.zeros(8, np.float32).tobytes()
    response = client.post(
        "/v2/models/alice.oip/infer",
        content=body,
        headers={
            **tenants.alice,
            "Inference-Header-Content-Length": length,
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 400, (length, response.status_code, response.text)
    # Control: the same body with the right length gets past the decoder (no ready variant yet: 503).
    control = client.post(
        "/v2/models/alice.oip/infer",
        content=body,
        headers={**tenants.alice, "Inference-Header-Content-Length": str(len(header))},
    )
    assert control.status_code != 400, control.text
    assert client.get("/v1/models", headers=tenants.alice).status_code == 200
    client.delete("/v1/models/oip", headers=tenants.alice)
