"""A scaled-out jobs deployment for tests: PostgreSQL, a Redis broker, and real ``celery worker`` processes.

Each deployment has its own database, Redis database and queue, so it never sees another test's jobs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from infaas.config import Settings
from infaas.services import Services, build_services
from tests.factories import wait_for
from tests.pg import temporary_database

REDIS_HOST = "127.0.0.1"
CELERY = str(Path(sys.executable).with_name("celery"))
VISIBILITY_S = 2  # how soon the broker redelivers a message whose worker died without acknowledging it
WORK_LEASE_S = 2  # how soon a killed worker's work item may be claimed again


def free_redis_db() -> int:
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
            "INFAAS_CASCADES": "0",  # the tests follow each job's own work item, not the cascade decision after builds
            "INFAAS_JOBS_QUEUE": self.queue,
            "INFAAS_BROKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
            # Work of a killed worker is claimable again after this lease (infaas.jobs.durable).
            "INFAAS_WORK_LEASE_S": str(WORK_LEASE_S),
            "INFAAS_RECOVERY_PERIOD_S": "0.5",
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

        def ready() -> bool:
            return "ready." in log_path.read_text(errors="replace")

        wait_for(lambda: ready() or worker.poll() is not None, 30, interval_s=0.1)  # started, or died trying
        if ready():
            return worker
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


@contextmanager
def celery_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Deployment, Services]]:
    """A deployment whose services submit jobs through Celery; skipped where Redis is not running."""
    try:
        redis.Redis(host=REDIS_HOST).ping()
    except redis.ConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    with temporary_database() as database_url:
        setup = Deployment(tmp_path, database_url, free_redis_db())
        for key, value in setup.env.items():
            monkeypatch.setenv(key, value)
        services = build_services(Settings())
        try:
            yield setup, services
        finally:
            setup.close()
            services.close()
