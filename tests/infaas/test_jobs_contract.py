"""What every job runner promises, checked on each: in-process (embedded) and Celery (scaled out).

A job submitted through ``/v1/jobs`` runs and ends ``done`` with ONNX Runtime's own outputs, or
``failed`` with a reason; an unknown task name is refused by ``submit`` itself, in the caller. What only
Celery does (redelivery after a killed worker) is in ``test_celery_jobs.py``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infaas.jobs.celery_runner import CeleryRunner
from infaas.jobs.runner import InProcessRunner, JobRunner
from infaas.services import Services
from tests.celery_deployment import celery_deployment
from tests.factories import TASK, npy_bytes, profiles, reference_outputs, seed_model, wait_for_job


@pytest.fixture(
    params=[InProcessRunner, pytest.param(CeleryRunner, marks=pytest.mark.integration)], ids=["in-process", "celery"]
)
def jobs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Services]:
    """Services whose job runner is the one under test (embedded, or a broker and a worker process)."""
    runner: type[JobRunner] = request.param
    if runner is InProcessRunner:
        services: Services = request.getfixturevalue("services")
        assert services.jobs is not None and isinstance(services.jobs.transport, runner)
        yield services
        return
    with celery_deployment(tmp_path, monkeypatch) as (deployment, services):
        assert services.jobs is not None and isinstance(services.jobs.transport, runner)
        deployment.start_worker("w1")
        yield services


@pytest.fixture
def client(jobs: Services) -> Iterator[TestClient]:
    with TestClient(create_app(jobs.settings, services=jobs)) as test_client:
        yield test_client


@pytest.fixture
def mlp(jobs: Services, mlp_path: Path) -> Path:
    """The MLP, ready in the catalog with one profiled variant."""
    variants = {"cpu-fp32-1t": profiles({1: 0.25, 8: 1.0})}
    seed_model(jobs, "mlp", mlp_path.read_bytes(), task=TASK, max_batch=32, variants=variants)
    return mlp_path


def test_a_submitted_job_runs_to_the_models_own_outputs(client: TestClient, mlp: Path) -> None:
    x = np.random.default_rng(7).normal(size=(64, 8)).astype(np.float32)
    response = client.post("/v1/jobs", data={"model": "mlp"}, files={"input": ("x.npy", npy_bytes(x), "a/b")})
    assert response.status_code == 202, response.text
    body = wait_for_job(client, response.json()["id"], timeout_s=30)
    assert body["status"] == "done", body
    outputs = np.load(io.BytesIO(client.get(f"/v1/jobs/{body['id']}/result").content))
    np.testing.assert_allclose(outputs["y"], reference_outputs(mlp, x), rtol=1e-5)


def test_a_job_that_cannot_run_is_failed_with_a_reason(client: TestClient, jobs: Services, mlp: Path) -> None:
    jobs.store.delete_prefix("models/mlp/")  # accepted (the catalog says ready), but nothing to load
    x = npy_bytes(np.ones((2, 8), np.float32))
    response = client.post("/v1/jobs", data={"model": "mlp"}, files={"input": ("x.npy", x, "a/b")})
    assert response.status_code == 202, response.text
    body = wait_for_job(client, response.json()["id"], timeout_s=30)
    assert body["status"] == "failed" and body["error"], body
    assert client.get(f"/v1/jobs/{body['id']}/result").status_code == 409


def test_an_unknown_task_is_refused_by_submit(jobs: Services) -> None:
    assert jobs.jobs is not None
    with pytest.raises(KeyError, match="unknown background task 'no-such-task'"):
        jobs.jobs.submit("no-such-task")
