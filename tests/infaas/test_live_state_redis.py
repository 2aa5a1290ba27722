"""The Redis live state against the real Redis: the in-memory state's behaviours, plus expiry and fan-out."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from infaas.live_state import InstanceState, QueryRecord, WorkerState
from infaas.live_state.redis import RedisLiveState

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379"),
]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique key prefix, every key under it deleted afterwards."""
    name = f"infaas-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def live(prefix: str) -> Iterator[RedisLiveState]:
    state = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    yield state
    state.close()


def record(
    variant: str = "v", actual: float = 10.0, estimated: float = 8.0, budget: float | None = 20.0
) -> QueryRecord:
    return QueryRecord(
        at=time.time(), tenant="t", model="m", variant=variant, worker="w1", batch=1, latency_ms=budget,
        min_accuracy=0.0, max_cost=None, estimated_ms=estimated, actual_ms=actual, queue_ms=0.0, cost=1e-9,
        slo_at_risk=False, reason="r",
    )  # fmt: skip


def test_workers_heartbeat_and_draining(live: RedisLiveState) -> None:
    live.register_worker(WorkerState(id="w1", address="http://127.0.0.1:1", cores=2, memory_budget_mb=100))
    before = live.snapshot()
    live.heartbeat("w1", 40.0)
    live.set_draining("w1", True)
    (w,) = live.workers()
    assert w.memory_used_mb == 40.0 and w.memory_free_mb == 60.0 and w.draining and w.heartbeat_at > 0
    assert w.address == "http://127.0.0.1:1" and w.hardware == ("cpu",)
    assert before.workers[0].memory_used_mb == 0.0  # snapshots already handed out do not change
    live.heartbeat("unknown", 1.0)  # ignored
    live.set_draining("unknown", True)  # ignored
    assert [x.id for x in live.workers()] == ["w1"]
    live.remove_worker("w1")
    assert live.workers() == []


def test_instances_and_queue_depth(live: RedisLiveState, prefix: str) -> None:
    live.register_worker(WorkerState(id="w1", address="local", cores=2, memory_budget_mb=100))
    live.set_instance(InstanceState("w1", "m/v", 2, 20.0))
    live.set_instance(InstanceState("w2", "m/v", 1, 10.0))
    live.set_queue_depth("w1", "m/v", 3)
    snap = live.snapshot()
    assert {i.worker_id for i in snap.instances["m/v"]} == {"w1", "w2"}
    assert snap.depth("w1", "m/v") == 3 and snap.depth("w2", "m/v") == 0
    # Another process sees the depth once the buffer is flushed.
    other = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    try:
        live.flush()
        assert other.snapshot().depth("w1", "m/v") == 3
    finally:
        other.close()
    live.remove_instance("w1", "m/v")
    assert [i.worker_id for i in live.instances()] == ["w2"]
    assert live.snapshot().depth("w1", "m/v") == 0
    live.remove_worker("w2")
    assert live.instances() == []


def test_a_worker_that_stops_heartbeating_expires(prefix: str) -> None:
    live = RedisLiveState(REDIS_URL, prefix, worker_ttl_s=0.4, snapshot_ttl_s=0.0)
    try:
        live.register_worker(WorkerState(id="alive", address="a", cores=1, memory_budget_mb=10))
        live.register_worker(WorkerState(id="dead", address="d", cores=1, memory_budget_mb=10))
        live.set_instance(InstanceState("dead", "m/v", 1, 5.0))
        live.set_instance(InstanceState("alive", "m/v", 1, 5.0))
        for _ in range(4):
            time.sleep(0.2)
            live.heartbeat("alive", 1.0)
        snap = live.snapshot()
        assert [w.id for w in snap.workers] == ["alive"]
        assert [i.worker_id for i in snap.instances["m/v"]] == ["alive"]
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        assert client.smembers(f"{prefix}:workers") == {"alive"}  # the index is cleaned as well
        client.close()
    finally:
        live.close()


def test_variant_stats_over_the_window(live: RedisLiveState, prefix: str) -> None:
    for ms in range(1, 101):
        live.record_query(record(actual=float(ms), estimated=float(ms) - 2, budget=50.0))
    live.record_query(record(variant="other", budget=None))
    stats = live.variant_stats(window_s=10.0)
    s = stats["m/v"]
    assert s.requests == 100 and s.total_requests == 100
    assert s.p50_ms == pytest.approx(50.5) and s.p99_ms == pytest.approx(99.01)
    assert s.slo_miss_rate == pytest.approx(0.5)  # 51..100 exceed 50 ms
    assert s.mean_estimate_error_ms == pytest.approx(2.0)
    assert s.rate_per_s == pytest.approx(10.0)
    assert stats["m/other"].slo_miss_rate == 0.0
    old = RedisLiveState(REDIS_URL, prefix + "-old")
    try:
        old.record_query(QueryRecord(**{**record().__dict__, "at": time.time() - 100}))
        assert old.variant_stats(window_s=10.0)["m/v"].requests == 0
    finally:
        old.delete_all()
        old.close()


def test_recent_queries_are_a_bounded_ring_newest_first(prefix: str) -> None:
    live = RedisLiveState(REDIS_URL, prefix, recent=5)
    try:
        for i in range(8):
            live.record_query(record(actual=float(i)))
        recent = live.recent_queries(limit=3)
        assert [r.actual_ms for r in recent] == [7.0, 6.0, 5.0]
        assert recent[0] == QueryRecord(**{**record(actual=7.0).__dict__, "at": recent[0].at})  # every field survives
        assert len(live.recent_queries(limit=100)) == 5
    finally:
        live.close()


def test_recording_is_thread_safe(live: RedisLiveState) -> None:
    r = record()
    threads = [threading.Thread(target=lambda: [live.record_query(r) for _ in range(5000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert live.variant_stats()["m/v"].total_requests == 20000


def test_snapshot_is_cached_between_refreshes(prefix: str) -> None:
    live = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=60.0)
    try:
        live.register_worker(WorkerState(id="w1", address="a", cores=1, memory_budget_mb=10))
        first = live.snapshot()
        assert [w.id for w in first.workers] == ["w1"]
        assert live.snapshot() is first  # no round trip while fresh
        live.register_worker(WorkerState(id="w2", address="b", cores=1, memory_budget_mb=10))
        assert [w.id for w in live.snapshot().workers] == ["w1", "w2"]  # own writes are seen at once
    finally:
        live.close()


def test_catalog_changes_reach_other_processes(prefix: str) -> None:
    publisher = RedisLiveState(REDIS_URL, prefix)
    subscriber = RedisLiveState(REDIS_URL, prefix)
    seen: list[str] = []
    got = threading.Event()
    subscriber.on_catalog_change(lambda name: (seen.append(name), got.set()))
    own: list[str] = []
    publisher.on_catalog_change(own.append)
    try:
        time.sleep(0.3)  # let both subscriptions start
        publisher.catalog_changed("resnet")
        assert got.wait(3.0)
        assert seen[0] == "resnet"
        assert "resnet" not in own  # a process does not hear its own change
    finally:
        publisher.close()
        subscriber.close()
