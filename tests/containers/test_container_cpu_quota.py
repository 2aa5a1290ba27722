"""A worker container started with a CPU limit advertises it: the docker provider runs ``infaas worker`` with
``--cpus 0.5``, the worker reads its cgroup's quota (``infaas.hardware.cgroup_cpu_limit``) and registers one core at
half a core's share in live state, which is what the autoscaler judges its load against. Real Docker engine,
PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import docker
import pytest

from autoscaler.providers.docker import CLUSTER_LABEL, DockerProvider, DockerSettings
from infaas.config import Settings
from infaas.live_state.redis import RedisLiveState
from tests.containers.engine import ensure_images
from tests.factories import wait_for
from tests.pg import temporary_database
from tests.redis_server import REDIS_URL, delete_keys, redis_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not redis_up(), reason="needs the Redis server of this machine"),
]


def test_a_worker_container_registers_the_cpu_its_quota_allows(tmp_path: Path) -> None:
    ensure_images("worker")
    name = f"infaas-test-{uuid.uuid4().hex[:8]}"
    with temporary_database() as database_url:
        settings = Settings(
            home=tmp_path / "home",
            database_url=database_url,
            redis_url=REDIS_URL,
            redis_prefix=name,
            model_store=str(tmp_path / "store"),
            worker_memory_mb=500.0,
            heartbeat_s=0.2,
        )
        provider = DockerProvider(settings, DockerSettings(cpus=0.5, memory_mb=1024, cluster=name))
        live = RedisLiveState.from_settings(settings)
        try:
            handle = provider.start_worker()
            assert wait_for(lambda: any(w.id == handle.id for w in live.workers()), 30)
            (state,) = [w for w in live.workers() if w.id == handle.id]
            assert (state.cores, state.cpus, state.cpu_share) == (1, 0.5, 0.5)
        finally:
            provider.close()
            live.close()
            delete_keys(f"{name}:")
            for container in docker.from_env().containers.list(all=True, filters={"label": f"{CLUSTER_LABEL}={name}"}):
                container.remove(force=True)  # only if the test failed before the provider could
