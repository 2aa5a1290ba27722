"""Offline jobs scaled out, what only Celery does: at-least-once delivery. A worker killed with SIGKILL in
the middle of a job leaves the message unacknowledged (``acks_late``) and its work item leased to a dead
process; Celery's redelivery and the front-end's recovery sweep both try to run it again, the claim lets
exactly one of them, and a fresh worker runs the job to completion once. What every runner does (a job
runs, fails with a reason) is in ``test_jobs_contract.py``.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infaas.db.models import WorkState
from infaas.jobs.celery_runner import CeleryRunner
from infaas.services import Services
from tests.celery_deployment import VISIBILITY_S, Deployment, celery_deployment
from tests.factories import TASK, npy_bytes, profiles, reference_outputs, seed_model, wait_for, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Deployment, Services]]:
    with celery_deployment(tmp_path, monkeypatch) as deployed:
        yield deployed


def test_a_job_whose_worker_is_killed_is_redelivered_and_finished(
    deployment: tuple[Deployment, Services], mlp_path: Path
) -> None:
    setup, services = deployment
    assert services.jobs is not None and isinstance(services.jobs.transport, CeleryRunner)
    # Best throughput at batch 1, so a big input takes many small batches (slow enough to kill mid-way).
    variants = {"cpu-fp32-1t": profiles({1: 0.1, 8: 1.0})}
    seed_model(services, "mlp", mlp_path.read_bytes(), task=TASK, max_batch=32, variants=variants)
    first = setup.start_worker("w1")

    with TestClient(create_app(services.settings, services=services)) as client:
        big = np.random.default_rng(8).normal(size=(200_000, 8)).astype(np.float32)
        services.store.put_bytes("uploads/local/big.npy", npy_bytes(big))
        response = client.post("/v1/jobs", data={"model": "mlp", "input_key": "uploads/local/big.npy"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        body = wait_for(
            lambda: client.get(f"/v1/jobs/{job_id}").json(),
            30,
            until=lambda b: b["status"] == "running" and b["progress"] > 0,
            interval_s=0.02,
        )
        assert body["status"] == "running" and 0 < body["progress"] < 1, body
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # nobody finished it

        time.sleep(VISIBILITY_S)  # the unacknowledged message becomes visible again after this
        started = time.monotonic()
        setup.start_worker("w2")
        body = wait_for_job(client, job_id, timeout_s=60)
        assert body["status"] == "done", body
        elapsed = time.monotonic() - started
        print(f"redelivered job: {elapsed:.1f}s for {len(big)} samples at batch 1 ({len(big) / elapsed:.0f}/s)")
        outputs = np.load(io.BytesIO(client.get(f"/v1/jobs/{job_id}/result").content))
        assert outputs["y"].shape == (len(big), 3)
        np.testing.assert_allclose(outputs["y"][-100:], reference_outputs(mlp_path, big[-100:]), rtol=1e-5)
    [item] = services.metadata.list_work_items()
    assert (item.task, item.state, item.attempts) == ("offline_job", WorkState.DONE, 2)  # killed once, run once more
    assert services.store.list(f"jobs/{job_id}/") == [f"jobs/{job_id}/result.npz"]  # one result, written once
    assert setup.redis.llen(setup.queue) == 0 and setup.redis.hlen("unacked") == 0  # acknowledged once done
