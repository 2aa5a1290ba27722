"""The Redis live state's flush: everything buffered reaches Redis in one command, and what it writes reads back.

Accounting is the Redis cost a front-end pays per query (issue 20: at most one command per query amortised), so
one flush must be one command however many depths, records and rejections it carries; and a flush bigger than a
Lua call's argument stack (pushed in chunks) must lose nothing.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from infaas.live_state import InstanceState, QueryRecord, Rejection, WorkerState
from infaas.live_state.base import WINDOW_SAMPLES
from infaas.live_state.redis import RedisLiveState
from tests.redis_server import REDIS_URL, redis_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379"),
]


def _record(variant: str, worker: str, actual: float, i: int) -> QueryRecord:
    return QueryRecord(
        at=time.time(), tenant="t", model="m", variant=variant, worker=worker, batch=1, latency_ms=20.0,
        min_accuracy=0.0, max_cost=None, estimated_ms=8.0, actual_ms=actual, queue_ms=0.0, cost=1e-9,
        slo_at_risk=False, reason=f"r{i}",
    )  # fmt: skip


def test_one_flush_is_one_command_and_reads_back(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    live = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0, recent=50)
    other = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    try:
        for w in ("w1", "w2"):
            live.register_worker(WorkerState(id=w, address="a", cores=2, memory_budget_mb=100))
            for k in ("m/a", "m/b"):
                live.set_instance(InstanceState(w, k, 1, 10.0))
        live.flush()
        sent: list[Any] = []
        execute = live._redis.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            sent.append(args[0])
            return execute(*args, **kwargs)

        monkeypatch.setattr(live._redis, "execute_command", counted)
        n = 2500  # more than one chunk of a Lua call's arguments, and fewer than WINDOW_SAMPLES
        with live._buffer_lock:  # all buffered before the background flusher can take a part of them
            for i in range(n):
                live._records.append(_record("a", "w1", float(i), i))
            live._records.append(_record("b", "w2", 7.0, n))
            live._rejections.extend(
                Rejection(time.time(), "t", "task:x", unmet) for unmet in ("latency_ms", "max_cost")
            )
            live._dirty_depth.update({("w1", "m/a"): 3, ("w1", "m/b"): 0, ("w2", "m/b"): 12})
        live.flush()
        assert sent == ["EVALSHA"]
        monkeypatch.undo()
        snap = other.snapshot()
        assert (snap.depth("w1", "m/a"), snap.depth("w1", "m/b"), snap.depth("w2", "m/b")) == (3, 0, 12)
        stats = live.variant_stats()
        assert stats["m/a"].total_requests == n and stats["m/a"].requests == n and stats["m/b"].total_requests == 1
        assert stats["m/a"].p99_ms == pytest.approx(0.99 * (n - 1), rel=0.01)
        by_instance = live.instance_stats()
        assert set(by_instance) == {("w1", "m/a"), ("w2", "m/b")} and by_instance[("w1", "m/a")].requests == n
        recent = live.recent_queries(limit=100)
        assert len(recent) == 50 and recent[0].reason == f"r{n}" and recent[1].reason == f"r{n - 1}"  # newest first
        rejected = live.rejection_stats()["task:x"]
        assert (rejected.total_rejected, rejected.unmet_latency, rejected.unmet_max_cost) == (2, 1, 1)
        # The windows stay bounded: a second large flush trims every list to WINDOW_SAMPLES.
        for i in range(WINDOW_SAMPLES):
            live.record_query(_record("a", "w1", 1.0, i))
        live.flush()
        client = redis.Redis.from_url(REDIS_URL)
        assert client.llen(f"{prefix}:samples:m/a") == WINDOW_SAMPLES
        assert client.llen(f"{prefix}:isamples:w1:m/a") == WINDOW_SAMPLES
        assert live.variant_stats()["m/a"].total_requests == n + WINDOW_SAMPLES
    finally:
        live.close()
        other.close()


def test_depths_expire_no_earlier_than_instances(prefix: str) -> None:
    """A depth flushed before a later instance write must not expire first: nothing tracks that expiry, so a
    refreshed snapshot would keep the depth a full fetch no longer sees."""
    live = RedisLiveState(REDIS_URL, prefix, worker_ttl_s=2.0, snapshot_ttl_s=0.0)
    try:
        live.register_worker(WorkerState(id="w1", address="a", cores=2, memory_budget_mb=100))
        live.set_queue_depth("w1", "m/v", 4)
        live.flush()
        time.sleep(0.5)
        live.set_instance(InstanceState("w1", "m/v", 1, 10.0))
        client = redis.Redis.from_url(REDIS_URL)
        assert client.pttl(f"{prefix}:depth:w1") >= client.pttl(f"{prefix}:inst:w1") - 50
    finally:
        live.close()
