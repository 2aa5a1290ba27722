"""What only the Redis live state does, against the real Redis: expiry, snapshot caching, and state and
catalog changes shared across processes. What every backend does is in ``test_live_state_contract.py``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import pytest
import redis

from infaas.live_state import InstanceState, WorkerState
from infaas.live_state.redis import RedisLiveState
from tests.redis_server import REDIS_URL, redis_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379"),
]


@pytest.fixture
def live(prefix: str) -> Iterator[RedisLiveState]:
    state = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    yield state
    state.close()


def test_queue_depth_reaches_other_processes(live: RedisLiveState, prefix: str) -> None:
    live.register_worker(WorkerState(id="w1", address="local", cores=2, memory_budget_mb=100))
    live.set_instance(InstanceState("w1", "m/v", 2, 20.0))
    live.set_queue_depth("w1", "m/v", 3)
    # Another process sees the depth once the buffer is flushed.
    other = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    try:
        live.flush()
        assert other.snapshot().depth("w1", "m/v") == 3
    finally:
        other.close()


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


def test_a_query_recorded_before_min_fidelity_existed_reads_as_no_fidelity_floor(
    live: RedisLiveState, prefix: str
) -> None:
    """A rolling upgrade shares Redis: an older front-end's records lack the field and must still be read."""
    old = {
        "at": time.time(), "tenant": "t", "model": "m", "variant": "v", "worker": "w1", "batch": 1, "latency_ms": 20.0,
        "min_accuracy": 0.5, "max_cost": None, "estimated_ms": 8.0, "actual_ms": 10.0, "queue_ms": 0.0, "cost": 1e-9,
        "slo_at_risk": False, "reason": "r", "infeasible": False,
    }  # fmt: skip
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.lpush(f"{prefix}:recent", orjson.dumps(old))
    client.close()
    (record,) = live.recent_queries(1)
    assert (record.min_accuracy, record.min_fidelity) == (0.5, 0.0)


def test_pipeline_arrivals_of_two_front_ends_meet(live: RedisLiveState, prefix: str) -> None:
    """The leader's tuner reads the arrivals another front end served (the same instant twice counts twice)."""
    other = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    try:
        now = time.time()
        live.record_pipeline_arrival("p", now - 1.0)
        other.record_pipeline_arrival("p", now - 1.0)
        other.record_pipeline_arrival("p", now - 0.5)
        other.flush()
        assert live.pipeline_arrivals("p", now - 60.0) == [now - 1.0, now - 1.0, now - 0.5]
    finally:
        other.close()
