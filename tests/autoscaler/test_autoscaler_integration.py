"""The control loop end to end: a burst makes a replica and then a worker appear, the quiet after it makes
them go away, and every step is a recorded decision. Real QueryEngine, LocalWorkers and ONNX Runtime; the
profile is hand-made (20 ms per query) so that a modest burst overloads it on any machine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from autoscaler import Autoscaler, PolicyConfig
from autoscaler.providers.inprocess import InProcessProvider
from infaas.catalog import ProfileInfo
from infaas.config import Settings
from infaas.engine import Query, QueryEngine
from infaas.selector import Requirements
from infaas.services import Services, build_services
from tests.factories import mlp_model, profiles, seed_model, wait_for
from tests.redis_server import REDIS_URL, redis_up

MODEL = "burst"
MLP = mlp_model().SerializeToString()


def burst_variant(p50_ms: float = 20.0) -> dict[str, tuple[ProfileInfo, ...]]:
    """A ready variant whose profile says one replica serves 50/s (batch 1) or 100/s (batch 4)."""
    return {"fp32-t1": profiles({1: p50_ms, 4: 2 * p50_ms}, p99_factor=1.2, memory_mb=50.0)}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Services, QueryEngine, Autoscaler]]:
    settings = Settings(
        home=tmp_path / "home",
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
    engine = services.engine
    provider = InProcessProvider(services.store, engine.live, memory_budget_mb=500.0, cores=2, heartbeat_s=0.2)
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
    yield services, engine, scaler
    scaler.stop()
    services.close()


def burst(engine: QueryEngine, stop: threading.Event, per_thread_qps: float, served: list[str]) -> None:
    """Paced open-ish loop: one query every 1/qps seconds, recording which worker served it."""
    x = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    period = 1.0 / per_thread_qps
    next_at = time.monotonic()
    while not stop.is_set():
        how = engine.infer(Query(Requirements(model=MODEL), {"x": x}, tenant="t")).served_by
        served.append(how.worker)
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))


def replicas(engine: QueryEngine, worker_id: str) -> int:
    client = engine.workers.get(worker_id)
    if client is None:
        return 0
    return sum(i.replicas for i in client.status().instances if i.variant_key == f"{MODEL}/fp32-t1")


def test_burst_adds_replica_then_worker_and_quiet_removes_them(
    cluster: tuple[Services, QueryEngine, Autoscaler],
) -> None:
    services, engine, scaler = cluster
    scaler.start()
    stop = threading.Event()
    served: list[str] = []
    threads = [threading.Thread(target=burst, args=(engine, stop, 60.0, served)) for _ in range(5)]  # ~300/s
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: replicas(engine, "local") >= 2, 15), "no replica was added during the burst"
        assert wait_for(lambda: any(w.id.startswith("inproc-") for w in engine.live.workers()), 15), (
            "no worker was added during the burst"
        )
        new_worker = next(w.id for w in engine.live.workers() if w.id.startswith("inproc-"))
        # The selector can choose it: the variant is loaded there and the engine reaches it. (It seldom does
        # here: the real model is far faster than its hand-made profile, so the local queue stays short.)
        placed = lambda: any(  # noqa: E731
            i.worker_id == new_worker for i in engine.live.snapshot().instances.get(f"{MODEL}/fp32-t1", ())
        )
        assert wait_for(placed, 10), "nothing was placed on the new worker"
        variant = services.metadata.get_model(MODEL).variants[0]  # type: ignore[union-attr]
        x = np.ones((2, 8), dtype=np.float32)
        assert engine.workers.get(new_worker).infer(variant, {"x": x}, None).outputs["y"].shape == (2, 3)  # type: ignore[union-attr]
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert wait_for(lambda: all(w.id == "local" for w in engine.live.workers()), 20), "the added worker stayed"
    assert wait_for(lambda: replicas(engine, "local") <= 1, 15), "the extra replica stayed"

    actions = {d.action for d in services.metadata.list_decisions(limit=500)}
    assert {"add_replica", "add_worker", "worker_started", "drain_worker", "remove_worker"} <= actions
    assert actions & {"remove_replica", "unload"}
    decided = services.metadata.list_decisions(limit=500)
    assert all(d.reason and d.inputs and not d.dry_run for d in decided)
    added = next(d for d in decided if d.action == "add_replica")
    assert added.inputs["utilization"] > 0.8 and added.outcome and "replica" in added.outcome


def test_dry_run_records_without_acting(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", build_variants=False, autoscaler="dry-run", worker_cores=2, worker_memory_mb=500.0
    )
    services = build_services(settings, with_jobs=False)
    seed_model(services, MODEL, MLP, task="classify", declared_accuracy=0.9, public=True, variants=burst_variant())
    services.start_serving()
    engine = services.engine
    provider = InProcessProvider(services.store, engine.live, memory_budget_mb=500.0, cores=2)
    scaler = Autoscaler(services, provider=provider, config=PolicyConfig(up_periods=1), stats_window_s=1.0)
    try:
        stop = threading.Event()
        served: list[str] = []
        threads = [threading.Thread(target=burst, args=(engine, stop, 100.0, served)) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.2)
        assert scaler.lead()  # the embedded lease: always this front-end's
        actions = scaler.step_model() + scaler.step_vm()
        stop.set()
        for t in threads:
            t.join()
        assert "add_replica" in {a.action for a in actions}
        recorded = [d for d in services.metadata.list_decisions() if d.level != "leader"]
        assert recorded and all(d.dry_run and d.outcome is None for d in recorded)
        assert replicas(engine, "local") == 1  # nothing was done
        assert [w.id for w in engine.live.workers()] == ["local"]
    finally:
        scaler.stop()
        services.close()


@pytest.mark.skipif(not redis_up(), reason="`infaas worker` needs Redis on 127.0.0.1:6379")
def test_local_provider_worker_really_serves_queries(tmp_path: Path) -> None:
    from autoscaler.providers.local import LocalProvider

    settings = Settings(
        home=tmp_path / "home", build_variants=False, autoscaler="on", worker_memory_mb=500.0, redis_url=REDIS_URL
    )
    services = build_services(settings, with_jobs=False)
    seed_model(services, MODEL, MLP, task="classify", declared_accuracy=0.9, public=True, variants=burst_variant(1.0))
    provider = LocalProvider(settings)
    try:
        handle = provider.start_worker()
        client = provider.connect(handle)
        variant = services.metadata.get_model(MODEL).variants[0]  # type: ignore[union-attr]
        x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
        result = client.infer(variant, {"x": x}, None)
        assert result.outputs["y"].shape == (3, 3)
        assert provider.owns(handle.id)
        provider.stop_worker(handle.id)
        assert provider.workers() == []
    finally:
        provider.close()
        services.close()


def test_provider_that_cannot_start_workers_is_recorded_not_fatal(tmp_path: Path) -> None:
    """Embedded mode has no Redis, so `local` workers could not find this front-end: say so in a decision."""
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="on", provider="local", min_workers=2)
    services = build_services(settings, with_jobs=False)
    services.start_serving()
    engine = services.engine
    scaler = Autoscaler(services)
    try:
        scaler.start()
        assert wait_for(lambda: any(d.action == "worker_failed" for d in services.metadata.list_decisions()), 10), (
            "the failed start was not recorded"
        )
        failed = next(d for d in services.metadata.list_decisions() if d.action == "worker_failed")
        assert "INFAAS_REDIS_URL" in (failed.outcome or "")
        assert [w.id for w in engine.live.workers()] == ["local"]
    finally:
        scaler.stop()
        services.close()
