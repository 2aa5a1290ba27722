"""A backing service that does not answer is a 503 with ``Retry-After``, not a 500: the database's,
Redis's and the broker's connection errors are translated once (``api.errors``), for routes and for the
inference fast path alike. ``tests/crash/test_service_outages.py`` stops the real services under load."""

from __future__ import annotations

import kombu.exceptions
import pytest
import redis.exceptions
import sqlalchemy.exc
from fastapi.testclient import TestClient

from infaas.services import Services
from tests.factories import linear_model, profiles, seed_model

OUTAGES = [
    (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("connection refused")), "the metadata database"),
    (sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection closed")), "the metadata database"),
    (redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379"), "Redis"),
    (redis.exceptions.TimeoutError("Timeout reading from socket"), "Redis"),
    (kombu.exceptions.OperationalError("Error 111 connecting to the broker"), "the job broker"),
]


@pytest.mark.parametrize(
    ("outage", "service"), OUTAGES, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else ""
)
def test_a_route_meeting_an_outage_answers_503_with_retry_after(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch, outage: Exception, service: str
) -> None:
    def down() -> None:
        raise outage

    monkeypatch.setattr(services.metadata, "list_models", down)
    response = client.get("/v1/models")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json() == {
        "detail": f"{service} is not answering; retry in a few seconds",
        "code": "backend_unavailable",
    }


def test_the_inference_fast_path_answers_an_outage_the_same_way(
    client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*_args: object, **_kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    seed_model(services, "m", linear_model(in_dim=1), task="t", variants={"cpu-fp32": profiles({1: 1.0})})
    monkeypatch.setattr(services.engine, "serve", down)
    v1 = client.post("/v1/infer", json={"model": "m", "inputs": {"x": [[1.0]]}})
    assert (v1.status_code, v1.headers.get("retry-after"), v1.json()["code"]) == (503, "2", "backend_unavailable")
    v2 = client.post(
        "/v2/models/m/infer", json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    )
    assert (v2.status_code, v2.headers.get("retry-after")) == (503, "2"), v2.text
    assert v2.json() == {"error": "Redis is not answering; retry in a few seconds"}


def test_other_errors_are_still_500s(client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))  # a bug, not an outage

    monkeypatch.setattr(services.metadata, "list_models", broken)
    with TestClient(client.app, raise_server_exceptions=False) as unraised:
        assert unraised.get("/v1/models").status_code == 500
