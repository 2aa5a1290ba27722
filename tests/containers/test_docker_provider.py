"""The docker provider against the real engine: a burst makes the VM level add a worker container with its own CPU
and memory limit, queries reach it, and the quiet after it removes the container. Real QueryEngine, PostgreSQL,
Redis and Docker; the profile is hand-made (20 ms per query) so that a modest burst overloads it on any machine,
as in tests/autoscaler/test_autoscaler_integration.py."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import numpy as np
import pytest

from autoscaler import Autoscaler, PolicyConfig
from autoscaler.providers import make_provider
from autoscaler.providers.docker import CLUSTER_LABEL, DockerProvider
from infaas.config import Settings
from infaas.engine import QueryEngine
from infaas.services import Services, build_services
from tests.autoscaler.test_autoscaler_integration import MLP, MODEL, burst, burst_variant
from tests.containers.engine import ensure_images
from tests.factories import seed_model, wait_for
from tests.pg import temporary_database
from tests.redis_server import REDIS_URL, delete_keys, redis_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not redis_up(), reason="needs the Redis server of this machine"),
]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Services, Autoscaler, str]]:
    ensure_images("worker")
    name = f"infaas-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("INFAAS_DOCKER_CLUSTER", name)
    monkeypatch.setenv("INFAAS_DOCKER_CPUS", "1")
    monkeypatch.setenv("INFAAS_DOCKER_MEMORY_MB", "1024")
    with temporary_database() as database_url:
        settings = Settings(
            home=tmp_path / "home",
            database_url=database_url,
            redis_url=REDIS_URL,
            redis_prefix=name,
            model_store=str(tmp_path / "store"),
            provider="docker",
            build_variants=False,
            autoscaler="on",
            autoscaler_period_s=0.2,
            vm_autoscaler_period_s=0.4,
            idle_unload_s=2.0,
            min_workers=1,
            max_workers=2,
            worker_cores=2,
            worker_memory_mb=500.0,
            heartbeat_s=0.2,
        )
        services = build_services(settings, with_jobs=False)
        seed_model(services, MODEL, MLP, task="classify", declared_accuracy=0.9, public=True, variants=burst_variant())
        services.start_serving()
        provider = make_provider(services)  # chosen by configuration, like the other providers
        assert isinstance(provider, DockerProvider)
        config = PolicyConfig(
            idle_unload_s=2.0,
            up_periods=2,
            down_periods=3,
            cooldown_s=0.5,
            down_after_up_s=1.5,
            vm_up_periods=2,
            vm_down_periods=2,
            vm_cooldown_s=1.0,
            vm_down_after_up_s=2.0,
            drain_timeout_s=5.0,
        )
        scaler = Autoscaler(services, provider=provider, config=config, stats_window_s=1.5)
        try:
            yield services, scaler, name
        finally:
            scaler.stop()
            provider.close()  # removes any worker container it started
            services.close()
            delete_keys(f"{name}:")
            leftover = docker.from_env().containers.list(all=True, filters={"label": f"{CLUSTER_LABEL}={name}"})
            for container in leftover:
                container.remove(force=True)  # only if the test failed before the provider could


def test_burst_adds_a_limited_worker_container_that_serves_and_quiet_removes_it(
    cluster: tuple[Services, Autoscaler, str],
) -> None:
    services, scaler, name = cluster
    engine: QueryEngine = services.engine
    engine_docker = docker.from_env()

    def containers() -> list[docker.models.containers.Container]:
        """This test's worker containers in any state: a stopped one that is not removed yet still counts."""
        return engine_docker.containers.list(
            all=True, ignore_removed=True, filters={"label": f"{CLUSTER_LABEL}={name}"}
        )

    scaler.start()
    stop = threading.Event()
    served: list[str] = []
    threads = [threading.Thread(target=burst, args=(engine, stop, 60.0, served)) for _ in range(5)]  # ~300/s
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: any(w.id.startswith(f"{name}-worker-") for w in engine.live.workers()), 90), (
            "no worker container joined during the burst"
        )
        new_worker = next(w.id for w in engine.live.workers() if w.id.startswith(f"{name}-worker-"))
        started = {c.name: c for c in containers()}
        assert new_worker in started and len(started) <= 2, sorted(started)  # max_workers: "local" and one more
        limits = started[new_worker].attrs["HostConfig"]
        assert (limits["NanoCpus"], limits["Memory"]) == (1_000_000_000, 1024 * 2**20)
        assert started[new_worker].attrs["Config"]["User"] != ""  # the store's owner, not the image's default
        # Queries reach it: the variant is placed there, and a query through the engine's client runs in it.
        placed = lambda: any(  # noqa: E731
            i.worker_id == new_worker for i in engine.live.snapshot().instances.get(f"{MODEL}/fp32-t1", ())
        )
        assert wait_for(placed, 30), "nothing was placed on the worker container"
        variant = services.metadata.get_model(MODEL).variants[0]  # type: ignore[union-attr]
        x = np.ones((2, 8), dtype=np.float32)
        assert engine.workers.get(new_worker).infer(variant, {"x": x}, None).outputs["y"].shape == (2, 3)  # type: ignore[union-attr]
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert wait_for(lambda: all(w.id == "local" for w in engine.live.workers()), 60), "the worker container stayed"
    assert wait_for(lambda: not containers(), 30), "the worker container was not removed"
    actions = lambda: {d.action for d in services.metadata.list_decisions(limit=500)}  # noqa: E731
    assert wait_for(lambda: {"add_worker", "worker_started", "drain_worker", "remove_worker"} <= actions(), 15), [
        (d.action, d.outcome) for d in services.metadata.list_decisions(limit=500) if "worker" in d.action
    ]
    print(f"served by {sorted(set(served))}: {len(served)} queries")
