"""Offline jobs scaled out: REST API → Redis broker → a real Celery worker process → PostgreSQL.

Also checks at-least-once delivery: a worker killed with SIGKILL in the middle of a job leaves the
message unacknowledged (``acks_late``), and a fresh worker runs the job to completion.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from infaas.config import Settings
from infaas.jobs.celery_runner import CeleryRunner
from infaas.services import Services, build_services
from tests.factories import TASK, npy_bytes, profiles, reference_outputs, seed_model, wait_for, wait_for_job
from tests.pg import temporary_database

pytestmark = pytest.mark.integration

REDIS_HOST = "127.0.0.1"
CELERY = str(Path(sys.executable).with_name("celery"))
VISIBILITY_S = 2


def _free_redis_db() -> int:
    """An empty Redis database number, so nothing else's keys are touched (or flushed) by this test."""
    numbers = list(range(8, 16))
    random.shuffle(numbers)
    for number in numbers:
        if redis.Redis(host=REDIS_HOST, db=number).dbsize() == 0:
            return number
    pytest.skip("no empty Redis database between 8 and 15")


class Deployment:
    """One scaled-out deployment: its environment, and worker processes started from it."""

    def __init__(self, tmp_path: Path, database_url: str, redis_db: int) -> None:
        self.tmp_path = tmp_path
        self.queue = f"infaas-test-{uuid.uuid4().hex[:8]}"
        self.redis = redis.Redis(host=REDIS_HOST, db=redis_db)
        self.env = {
            "INFAAS_HOME": str(tmp_path / "home"),
            "INFAAS_DATABASE_URL": database_url,
            "INFAAS_MODEL_STORE": str(tmp_path / "store"),
            "INFAAS_BROKER_URL": f"redis://{REDIS_HOST}:6379/{redis_db}",
            "INFAAS_BUILD_VARIANTS": "false",
            "INFAAS_AUTOSCALER": "off",
            "INFAAS_JOBS_QUEUE": self.queue,
            "INFAAS_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        }
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start ``celery worker`` and wait until it consumes."""
        log_path = self.tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")} | self.env
        command = [CELERY, "-A", "infaas.celery_worker", "worker", "--pool=solo", "-c", "1"]
        command += ["-Q", self.queue, "-n", f"{name}@%h", "-l", "info"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(worker)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "ready." in log_path.read_text(errors="replace"):
                return worker
            if worker.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"celery worker {name} did not start:\n{log_path.read_text(errors='replace')}")

    def close(self) -> None:
        """Stop every worker this test started and remove the broker keys it used."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(10)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        self.redis.flushdb()  # the database was empty when this test picked it
        self.redis.close()


@pytest.fixture
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Deployment, Services]]:
    try:
        redis.Redis(host=REDIS_HOST).ping()
    except redis.ConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    with temporary_database() as database_url:
        setup = Deployment(tmp_path, database_url, _free_redis_db())
        for key, value in setup.env.items():
            monkeypatch.setenv(key, value)
        services = build_services(Settings())
        try:
            yield setup, services
        finally:
            setup.close()
            services.close()


def test_celery_worker_runs_jobs_and_survives_a_killed_worker(
    deployment: tuple[Deployment, Services], mlp_path: Path
) -> None:
    setup, services = deployment
    assert isinstance(services.jobs, CeleryRunner)
    # Best throughput at batch 1, so a big input takes many small batches (slow enough to kill mid-way).
    variants = {"cpu-fp32-1t": profiles({1: 0.1, 8: 1.0})}
    seed_model(services, "mlp", mlp_path.read_bytes(), task=TASK, max_batch=32, variants=variants)
    first = setup.start_worker("w1")

    with TestClient(create_app(services.settings, services=services)) as client:
        x = np.random.default_rng(7).normal(size=(64, 8)).astype(np.float32)
        started = time.monotonic()
        response = client.post("/v1/jobs", data={"model": "mlp"}, files={"input": ("x.npy", npy_bytes(x), "a/b")})
        assert response.status_code == 202, response.text
        body = wait_for_job(client, response.json()["id"], timeout_s=30)
        assert body["status"] == "done", body
        print(f"small job through Celery: {time.monotonic() - started:.2f}s")
        outputs = np.load(io.BytesIO(client.get(f"/v1/jobs/{body['id']}/result").content))
        np.testing.assert_allclose(outputs["y"], reference_outputs(mlp_path, x), rtol=1e-5)

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
    assert setup.redis.llen(setup.queue) == 0 and setup.redis.hlen("unacked") == 0  # acknowledged once done
