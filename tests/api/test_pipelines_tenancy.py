"""Pipelines across tenants: a tenant's pipeline is named in its namespace, invisible to others (answered
exactly like a missing one), and built only from models its owner may use; admins see every pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from infaas.services import Services
from tests.factories import TASK, upload_model
from tests.fuzz import Tenants, mlp_bytes, secure_world

PRIVATE = "alice.private"


def _definition(name: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "p99_ms": 100,
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 8]}],
        "stages": [{"name": "only", "model": model}],
        "edges": [{"from": "input.x", "to": "only.x"}],
        "arrivals": {"rate_per_s": 10, "duration_s": 10},
    }


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Tenants]]:
    with secure_world(tmp_path / "home") as (client, services, tenants):
        response = upload_model(client, PRIVATE, mlp_bytes(), headers=tenants.alice, task=TASK, public="false")
        assert response.status_code == 201, response.text
        yield client, services, tenants


def test_a_tenants_pipeline_is_named_in_its_namespace_and_hidden_from_others(
    world: tuple[TestClient, Services, Tenants],
) -> None:
    client, _services, tenants = world
    created = client.post("/v1/pipelines", json=_definition("p", PRIVATE), headers=tenants.alice)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "alice.p" and created.json()["owner"] == "alice"

    # Bob: alice's pipeline answers exactly as a missing one, on every route.
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/plan"), ("POST", "/infer")):
        hidden = client.request(method, f"/v1/pipelines/alice.p{suffix}", headers=tenants.bob, json={"inputs": {}})
        missing = client.request(method, f"/v1/pipelines/alice.q{suffix}", headers=tenants.bob, json={"inputs": {}})
        assert hidden.status_code == missing.status_code == 404, (method, suffix, hidden.text)
        assert hidden.text.replace("alice.p", "<n>") == missing.text.replace("alice.q", "<n>")
    assert client.get("/v1/pipelines", headers=tenants.bob).json() == []
    # ... and his own "p" does not collide with hers.
    assert upload_model(client, "bob.m", mlp_bytes(), headers=tenants.bob, task=TASK).status_code == 201
    mine = client.post("/v1/pipelines", json=_definition("p", "bob.m"), headers=tenants.bob)
    assert mine.status_code == 201 and mine.json()["name"] == "bob.p", mine.text

    # A pipeline on alice's private model is refused to bob just as one on a model that does not exist.
    private = client.post("/v1/pipelines", json=_definition("b", PRIVATE), headers=tenants.bob)
    ghost = client.post("/v1/pipelines", json=_definition("b", "alice.ghost"), headers=tenants.bob)
    assert private.status_code == ghost.status_code == 400
    assert private.json()["detail"].replace(PRIVATE, "<m>") == ghost.json()["detail"].replace("alice.ghost", "<m>")

    assert [p["name"] for p in client.get("/v1/pipelines", headers=tenants.admin).json()] == ["alice.p", "bob.p"]
    assert client.get("/v1/pipelines/alice.p", headers=tenants.alice).status_code == 200
