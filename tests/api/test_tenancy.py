"""Cross-tenant isolation on every model route: another tenant's private model answers exactly like a model
that does not exist (404, same message shape), so its existence cannot be learned; public models are usable
but not deletable by other tenants; admins see everything."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from infaas.db.models import Job
from infaas.live_state import Rejection
from infaas.services import Services
from tests.factories import TASK, upload_model
from tests.fuzz import Tenants, mlp_bytes, route_exists, secure_world

# Tenant models live in the tenant's namespace: "<tenant>.<name>".
PRIVATE = "alice.private"
PUBLIC = "alice.public"
GHOST = "alice.no-such-model"
SECRET_TASK = "alice-secret-task"
GHOST_TASK = "nobody-serves-this-task"
ROW = [[0.5] * 8]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Tenants]]:
    """Alice owns a private model (sole model of its task) and a public one; Bob owns nothing."""
    with secure_world(tmp_path / "home") as (client, services, tenants):
        for name, task, public in ((PRIVATE, SECRET_TASK, "false"), (PUBLIC, TASK, "true")):
            response = upload_model(client, name, mlp_bytes(), headers=tenants.alice, task=task, public=public)
            assert response.status_code == 201, response.text
        yield client, services, tenants


def _same_as_missing(hidden: httpx.Response, missing: httpx.Response, hidden_name: str, missing_name: str) -> None:
    """The answer about a hidden resource must be indistinguishable from the answer about a missing one."""
    assert hidden.status_code == missing.status_code == 404, (hidden.status_code, hidden.text)
    assert hidden.text.replace(hidden_name, "<name>") == missing.text.replace(missing_name, "<name>")


def _require(client: TestClient, path: str, method: str) -> None:
    if not route_exists(client.app, path, method):
        pytest.fail(f"{method} {path} is not served by the app")


def test_list_shows_only_usable_models(world: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = world
    assert [m["name"] for m in client.get("/v1/models", headers=tenants.bob).json()] == [PUBLIC]
    assert {m["name"] for m in client.get("/v1/models", headers=tenants.alice).json()} == {PRIVATE, PUBLIC}
    assert {m["name"] for m in client.get("/v1/models", headers=tenants.admin).json()} == {PRIVATE, PUBLIC}


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("GET", "/variants"), ("POST", "/profile"), ("DELETE", "")]
)
def test_private_model_routes_are_404_for_other_tenants(
    world: tuple[TestClient, Services, Tenants], method: str, suffix: str
) -> None:
    client, services, tenants = world
    hidden = client.request(method, f"/v1/models/{PRIVATE}{suffix}", headers=tenants.bob)
    missing = client.request(method, f"/v1/models/{GHOST}{suffix}", headers=tenants.bob)
    _same_as_missing(hidden, missing, PRIVATE, GHOST)
    assert services.metadata.get_model(PRIVATE) is not None
    # The owner and the admin do see it: the 404 is about tenancy, not a broken route.
    if method == "GET":
        assert client.get(f"/v1/models/{PRIVATE}{suffix}", headers=tenants.alice).status_code == 200
        assert client.get(f"/v1/models/{PRIVATE}{suffix}", headers=tenants.admin).status_code == 200


def test_public_model_usable_but_not_deletable_by_others(world: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = world
    assert client.get(f"/v1/models/{PUBLIC}", headers=tenants.bob).status_code == 200
    assert client.get(f"/v1/models/{PUBLIC}/variants", headers=tenants.bob).status_code == 200
    assert client.delete(f"/v1/models/{PUBLIC}", headers=tenants.bob).status_code == 403
    assert services.metadata.get_model(PUBLIC) is not None
    assert client.delete(f"/v1/models/{PRIVATE}", headers=tenants.admin).status_code == 200


def test_registered_model_belongs_to_its_tenant(world: tuple[TestClient, Services, Tenants]) -> None:
    client, services, _ = world
    assert services.metadata.get_model(PRIVATE).owner == "alice"
    assert services.metadata.get_model(PRIVATE).public is False
    assert services.metadata.get_model(PUBLIC).public is True


def test_registration_does_not_reveal_private_names(world: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = world

    def register(name: str) -> httpx.Response:
        return upload_model(client, name, mlp_bytes(), headers=tenants.bob)

    taken, fresh = register(PRIVATE), register("fresh-name")
    assert taken.status_code == fresh.status_code == 201
    # Each lands in bob's own namespace; alice's model is untouched.
    assert taken.json()["name"] == f"bob.{PRIVATE}" and fresh.json()["name"] == "bob.fresh-name"
    assert register("bob.fresh-name").status_code == 409  # bob's own names do collide, as they should


def test_tenant_names_are_qualified_admin_names_are_not(world: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = world
    by_bob = upload_model(client, "plain", mlp_bytes(), headers=tenants.bob)
    by_admin = upload_model(client, "plain", mlp_bytes(), headers=tenants.admin)
    assert (by_bob.json()["name"], by_admin.json()["name"]) == ("bob.plain", "plain")


def test_an_admin_cannot_take_a_name_in_a_tenants_namespace(world: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = world
    squat = upload_model(client, "bob.later", mlp_bytes(), headers=tenants.admin)
    assert squat.status_code == 400 and "reserved for tenant namespaces" in squat.json()["detail"]
    assert services.metadata.get_model("bob.later") is None
    # So bob's own registration of that name never collides with (and learns of) an admin's model.
    by_bob = upload_model(client, "later", mlp_bytes(), headers=tenants.bob)
    assert by_bob.status_code == 201 and by_bob.json()["name"] == "bob.later"


def test_v1_infer_by_name_is_404(world: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = world
    _require(client, "/v1/infer", "POST")
    hidden = client.post("/v1/infer", json={"model": PRIVATE, "inputs": {"x": ROW}}, headers=tenants.bob)
    missing = client.post("/v1/infer", json={"model": GHOST, "inputs": {"x": ROW}}, headers=tenants.bob)
    _same_as_missing(hidden, missing, PRIVATE, GHOST)
    # The owner gets past visibility (no ready variant yet, so not a 404 "unknown model").
    owner = client.post("/v1/infer", json={"model": PRIVATE, "inputs": {"x": ROW}}, headers=tenants.alice)
    assert owner.status_code != 404, owner.text


def test_v1_infer_by_task_ignores_models_the_caller_may_not_use(world: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = world
    _require(client, "/v1/infer", "POST")
    hidden = client.post("/v1/infer", json={"task": SECRET_TASK, "inputs": {"x": ROW}}, headers=tenants.bob)
    missing = client.post("/v1/infer", json={"task": GHOST_TASK, "inputs": {"x": ROW}}, headers=tenants.bob)
    _same_as_missing(hidden, missing, SECRET_TASK, GHOST_TASK)
    owner = client.post("/v1/infer", json={"task": SECRET_TASK, "inputs": {"x": ROW}}, headers=tenants.alice)
    assert owner.status_code != 404, owner.text


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/v2/models/{name}"),
        ("GET", "/v2/models/{name}/ready"),
        ("GET", "/v2/models/{name}/versions/1"),
        ("POST", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/{name}/versions/1/infer"),
    ],
)
def test_v2_routes_are_404(world: tuple[TestClient, Services, Tenants], method: str, template: str) -> None:
    client, _, tenants = world
    declared = template.replace("{name}", "{name}").replace("/versions/1", "/versions/{version}")
    _require(client, declared, method)
    body = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": ROW[0]}]}
    kwargs = {"json": body} if method == "POST" else {}
    hidden = client.request(method, template.format(name=PRIVATE), headers=tenants.bob, **kwargs)
    missing = client.request(method, template.format(name=GHOST), headers=tenants.bob, **kwargs)
    _same_as_missing(hidden, missing, PRIVATE, GHOST)
    if method == "GET" and not template.endswith("/ready"):
        assert client.get(template.format(name=PRIVATE), headers=tenants.alice).status_code == 200


def _alice_job(services: Services) -> str:
    job_id = str(uuid.uuid4())
    services.metadata.add_job(
        Job(id=job_id, owner="alice", model_name=PRIVATE, input_key=f"jobs/{job_id}/input.npy", status="done")
    )
    return job_id


def test_jobs_of_other_tenants_are_invisible(world: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = world
    _require(client, "/v1/jobs/{job_id}", "GET")
    job_id = _alice_job(services)
    ghost_id = str(uuid.uuid4())
    for suffix in ("", "/result"):
        hidden = client.get(f"/v1/jobs/{job_id}{suffix}", headers=tenants.bob)
        missing = client.get(f"/v1/jobs/{ghost_id}{suffix}", headers=tenants.bob)
        _same_as_missing(hidden, missing, job_id, ghost_id)
    assert client.get(f"/v1/jobs/{job_id}", headers=tenants.alice).status_code == 200
    assert client.get("/v1/jobs", headers=tenants.bob).json() == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=tenants.alice).json()] == [job_id]


def test_jobs_cannot_target_hidden_models_or_inputs(world: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = world
    _require(client, "/v1/jobs", "POST")
    npy = ("in.npy", b"\x93NUMPY" + b"\0" * 64, "application/octet-stream")

    def submit(**fields: str) -> httpx.Response:
        return client.post("/v1/jobs", data=fields, files={"input": npy}, headers=tenants.bob)

    _same_as_missing(submit(model=PRIVATE), submit(model=GHOST), PRIVATE, GHOST)
    _same_as_missing(submit(task=SECRET_TASK), submit(task=GHOST_TASK), SECRET_TASK, GHOST_TASK)
    # Another tenant's job input cannot be reused as ours.
    job_id = _alice_job(services)
    stolen = client.post(
        "/v1/jobs", data={"model": PUBLIC, "input_key": f"jobs/{job_id}/input.npy"}, headers=tenants.bob
    )
    assert stolen.status_code in (400, 404, 422), stolen.text
    assert client.get("/v1/jobs", headers=tenants.bob).json() == []


def test_stats_show_rejected_queries_only_of_models_the_caller_may_use(
    world: tuple[TestClient, Services, Tenants],
) -> None:
    client, services, tenants = world
    for target in (PRIVATE, PUBLIC, f"task:{SECRET_TASK}"):  # a task's rejections span models: admins only
        services.live.record_rejection(Rejection(at=time.time(), tenant="alice", target=target, unmet="latency_ms"))

    def rejected(headers: dict[str, str]) -> list[str]:
        return [r["target"] for r in client.get("/v1/stats", headers=headers).json()["rejected"]]

    assert rejected(tenants.alice) == sorted([PRIVATE, PUBLIC])
    assert rejected(tenants.bob) == [PUBLIC]
    assert rejected(tenants.admin) == sorted([PRIVATE, PUBLIC, f"task:{SECRET_TASK}"])


def test_stats_show_estimate_corrections_per_placement_to_admins_only(
    world: tuple[TestClient, Services, Tenants],
) -> None:
    client, services, tenants = world
    services.engine.calibration.observe(f"{PRIVATE}/cpu-fp32", "local", 1.0, 2.0, worker_ms=1.5, budget_ms=None)
    seen_by_bob = client.get("/v1/stats", headers=tenants.bob).json()["estimates"]
    assert seen_by_bob["observed"] == 1 and "factors" not in seen_by_bob  # the key would name Alice's private model
    assert "worker_priors" not in seen_by_bob  # names the workers, shown to admins only
    seen_by_admin = client.get("/v1/stats", headers=tenants.admin).json()["estimates"]
    assert list(seen_by_admin["factors"]) == [f"{PRIVATE}/cpu-fp32 on local"]
    assert list(seen_by_admin["worker_priors"]) == ["local"]
