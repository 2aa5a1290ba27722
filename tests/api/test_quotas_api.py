"""Issue 14, finding 7, in the app: re-profiling another tenant's model is admin-only, and each tenant's
background work is bounded (registrations per hour, re-profiles per model per hour, jobs in flight) with
429 + Retry-After that names the setting; a refused request stores and queues nothing, and other tenants
are served as before."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from infaas.db.models import Job
from infaas.services import Services, build_services
from tests.factories import upload_model
from tests.fuzz import Tenants, make_tenants, mlp_bytes, secure_app, secure_settings

PUBLIC = "alice.shared"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Tenants, list[tuple[str, dict[str, Any]]]]]:
    """Quotas of 2 registrations, 2 re-profiles per model and 1 job in flight; alice owns a public model.

    Background tasks are recorded instead of run, so that what a refusal queued can be asserted.
    """
    settings = secure_settings(
        tmp_path / "home", max_registrations_per_hour=2, max_reprofiles_per_model_per_hour=2, max_jobs_per_tenant=1
    )
    services = build_services(settings)
    queued: list[tuple[str, dict[str, Any]]] = []
    assert services.jobs is not None
    services.jobs.submit = lambda name, **kwargs: queued.append((name, kwargs))  # type: ignore[method-assign]
    with TestClient(secure_app(settings, services)) as client:
        tenants = make_tenants(services)
        assert upload_model(client, "shared", mlp_bytes(), headers=tenants.alice, public="true").status_code == 201
        yield client, services, tenants, queued
    services.close()


def _assert_quota_refusal(response: httpx.Response, setting: str) -> None:
    assert response.status_code == 429, response.text
    assert setting in response.json()["detail"], response.text
    assert int(response.headers["retry-after"]) >= 1


def test_reprofiling_another_tenants_model_is_admin_only(world: tuple[TestClient, Services, Tenants, list]) -> None:
    client, _, tenants, queued = world
    refused = client.post(f"/v1/models/{PUBLIC}/profile", headers=tenants.bob)
    assert refused.status_code == 403 and "owner or an admin" in refused.json()["detail"], refused.text
    assert queued == []
    for _ in range(5):  # admins are exempt from the quota
        assert client.post(f"/v1/models/{PUBLIC}/profile", headers=tenants.admin).status_code == 202
    assert len(queued) == 5


def test_owner_reprofiles_within_the_hourly_quota(world: tuple[TestClient, Services, Tenants, list]) -> None:
    client, _, tenants, queued = world
    for _ in range(2):
        assert client.post(f"/v1/models/{PUBLIC}/profile", headers=tenants.alice).status_code == 202
    _assert_quota_refusal(
        client.post(f"/v1/models/{PUBLIC}/profile", headers=tenants.alice), "INFAAS_MAX_REPROFILES_PER_MODEL_PER_HOUR"
    )
    assert [name for name, _ in queued] == ["profile_variants"] * 2


def test_registrations_past_the_hourly_quota_are_429_and_store_nothing(
    world: tuple[TestClient, Services, Tenants, list],
) -> None:
    client, services, tenants, _ = world
    assert upload_model(client, "second", mlp_bytes(), headers=tenants.alice).status_code == 201
    assert client.delete("/v1/models/alice.second", headers=tenants.alice).status_code == 200
    stored = services.store.list("models/")
    # Deleting a model does not give its registration back.
    _assert_quota_refusal(
        upload_model(client, "third", mlp_bytes(), headers=tenants.alice), "INFAAS_MAX_REGISTRATIONS_PER_HOUR"
    )
    assert services.metadata.get_model("alice.third") is None and services.store.list("models/") == stored
    # Other tenants are unaffected.
    assert upload_model(client, "own", mlp_bytes(), headers=tenants.bob).status_code == 201


def test_jobs_past_the_quota_in_flight_are_429_and_store_nothing(
    world: tuple[TestClient, Services, Tenants, list],
) -> None:
    client, services, tenants, _ = world
    running = str(uuid.uuid4())
    services.metadata.add_job(Job(id=running, owner="alice", model_name=PUBLIC, input_key="k", status="running"))
    npy = ("in.npy", b"\x93NUMPY" + b"\0" * 64, "application/octet-stream")
    refused = client.post("/v1/jobs", data={"model": PUBLIC}, files={"input": npy}, headers=tenants.alice)
    _assert_quota_refusal(refused, "INFAAS_MAX_JOBS_PER_TENANT")
    assert [j.id for j in services.metadata.list_jobs(owner="alice")] == [running]
    assert services.store.list("jobs/") == []
    other = client.post("/v1/jobs", data={"model": PUBLIC}, files={"input": npy}, headers=tenants.bob)
    assert other.status_code != 429, other.text
    services.metadata.update_job(running, status="done")
    again = client.post("/v1/jobs", data={"model": PUBLIC}, files={"input": npy}, headers=tenants.alice)
    assert again.status_code != 429, again.text
