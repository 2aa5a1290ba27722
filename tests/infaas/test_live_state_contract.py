"""What every live state promises, checked on each backend: in-memory (embedded) and Redis (scaled out).

The selector, the engine and the autoscaler only see ``LiveState``; a behaviour they rely on belongs
here, so that both backends keep it. What only Redis does (expiry, caching, fan-out across processes) is
in ``test_live_state_redis.py``.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from infaas.live_state import InstanceState, LiveState, MemoryLiveState, QueryRecord, Rejection, WorkerState
from infaas.live_state.redis import RedisLiveState
from tests.redis_server import REDIS_URL, delete_keys, redis_up

# Makes a fresh, empty live state of the backend under test (keyword arguments go to its constructor).
MakeLiveState = Callable[..., LiveState]


@pytest.fixture(
    params=[
        "memory",
        pytest.param(
            "redis",
            marks=[pytest.mark.integration, pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")],
        ),
    ]
)
def make_live(request: pytest.FixtureRequest) -> Iterator[MakeLiveState]:
    """Each call is a new state with nothing in it; all are closed (and their Redis keys deleted) afterwards."""
    made: list[LiveState] = []
    prefix = f"infaas-test-{uuid.uuid4().hex[:10]}"
    numbers = itertools.count()

    def make(**kwargs: object) -> LiveState:
        if request.param == "memory":
            state: LiveState = MemoryLiveState(**kwargs)  # type: ignore[arg-type]
        else:
            kwargs.setdefault("snapshot_ttl_s", 0.0)
            state = RedisLiveState(REDIS_URL, f"{prefix}-{next(numbers)}", **kwargs)  # type: ignore[arg-type]
        made.append(state)
        return state

    yield make
    for state in made:
        state.close()
    if request.param == "redis":
        delete_keys(prefix)


def record(
    variant: str = "v",
    actual: float = 10.0,
    estimated: float = 8.0,
    budget: float | None = 20.0,
    worker: str = "w1",
    infeasible: bool = False,
    min_fidelity: float = 0.0,
) -> QueryRecord:
    return QueryRecord(
        at=time.time(), tenant="t", model="m", variant=variant, worker=worker, batch=1, latency_ms=budget,
        min_accuracy=0.0, max_cost=None, estimated_ms=estimated, actual_ms=actual, queue_ms=0.0, cost=1e-9,
        slo_at_risk=infeasible, reason="r", infeasible=infeasible, min_fidelity=min_fidelity,
    )  # fmt: skip


def test_workers_heartbeat_and_draining(make_live: MakeLiveState) -> None:
    live = make_live()
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


def test_instances_and_queue_depth(make_live: MakeLiveState) -> None:
    live = make_live()
    live.register_worker(WorkerState(id="w1", address="local", cores=2, memory_budget_mb=100))
    live.set_instance(InstanceState("w1", "m/v", 2, 20.0))
    live.set_instance(InstanceState("w2", "m/v", 1, 10.0))
    live.set_queue_depth("w1", "m/v", 3)
    snap = live.snapshot()
    assert {i.worker_id for i in snap.instances["m/v"]} == {"w1", "w2"}
    assert snap.depth("w1", "m/v") == 3 and snap.depth("w2", "m/v") == 0
    live.remove_instance("w1", "m/v")
    assert [i.worker_id for i in live.instances()] == ["w2"]
    assert live.snapshot().depth("w1", "m/v") == 0
    live.remove_worker("w2")
    assert live.instances() == []


def test_a_worker_registering_again_starts_with_nothing_loaded_or_queued(make_live: MakeLiveState) -> None:
    # A worker killed and restarted under the same id (ids default to host-port) registers again before
    # its old entries expired: the dead process's instances and queue depths must not outlive it.
    live = make_live()
    live.register_worker(WorkerState(id="w1", address="http://127.0.0.1:1", cores=2, memory_budget_mb=100))
    live.register_worker(WorkerState(id="w2", address="http://127.0.0.1:2", cores=2, memory_budget_mb=100))
    for worker in ("w1", "w2"):
        live.set_instance(InstanceState(worker, "m/v", 2, 20.0))
        live.set_queue_depth(worker, "m/v", 5)
    if isinstance(live, RedisLiveState):  # the restarted worker is another process on the same keys
        live.flush()
        restarted: LiveState = RedisLiveState(REDIS_URL, live.prefix.rstrip(":"), snapshot_ttl_s=0.0)
    else:
        restarted = live
    try:
        restarted.register_worker(WorkerState(id="w1", address="http://127.0.0.1:1", cores=2, memory_budget_mb=100))
        snap = restarted.snapshot()
        assert [i.worker_id for i in snap.instances["m/v"]] == ["w2"]  # the other worker keeps its own
        assert snap.depth("w1", "m/v") == 0 and snap.depth("w2", "m/v") == 5
    finally:
        if restarted is not live:
            restarted.close()


def test_variant_stats_over_the_window(make_live: MakeLiveState) -> None:
    live = make_live()
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
    old = make_live()
    old.record_query(QueryRecord(**{**record().__dict__, "at": time.time() - 100}))
    assert old.variant_stats(window_s=10.0)["m/v"].requests == 0


def test_recent_queries_are_a_bounded_ring_newest_first(make_live: MakeLiveState) -> None:
    live = make_live(recent=5)
    for i in range(8):
        live.record_query(record(actual=float(i)))
    recent = live.recent_queries(limit=3)
    assert [r.actual_ms for r in recent] == [7.0, 6.0, 5.0]
    assert recent[0] == QueryRecord(**{**record(actual=7.0).__dict__, "at": recent[0].at})  # every field survives
    live.record_query(record(actual=9.0, infeasible=True))
    assert live.recent_queries(limit=1)[0].infeasible  # the new field too
    live.record_query(record(min_fidelity=0.97))
    assert live.recent_queries(limit=1)[0].min_fidelity == 0.97  # the autoscaler's fidelity floor comes from it
    assert len(live.recent_queries(limit=100)) == 5


def test_recording_is_thread_safe(make_live: MakeLiveState) -> None:
    live = make_live()
    r = record()
    threads = [threading.Thread(target=lambda: [live.record_query(r) for _ in range(5000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert live.variant_stats()["m/v"].total_requests == 20000


def test_infeasible_queries_are_counted_apart_from_misses_capacity_can_fix(make_live: MakeLiveState) -> None:
    live = make_live()
    for _ in range(6):
        live.record_query(record(actual=30.0, budget=20.0, infeasible=True))  # missed, but no placement could meet it
    for ms in (10.0, 10.0, 10.0, 30.0):
        live.record_query(record(actual=ms, budget=20.0))  # feasible: one of four missed
    s = live.variant_stats(window_s=10.0)["m/v"]
    assert s.requests == 10 and s.infeasible_rate == pytest.approx(0.6)
    assert s.slo_miss_rate == pytest.approx(0.25)  # over the feasible queries only
    assert live.instance_stats(window_s=10.0)[("w1", "m/v")].slo_miss_rate == pytest.approx(0.25)


def test_statistics_per_instance_keep_one_slow_worker_apart(make_live: MakeLiveState) -> None:
    live = make_live()
    live.register_worker(WorkerState(id="w1", address="local", cores=2, memory_budget_mb=100))
    live.register_worker(WorkerState(id="w2", address="http://127.0.0.1:2", cores=2, memory_budget_mb=100))
    for _ in range(30):
        live.record_query(record(worker="w1", actual=5.0, budget=20.0))
    for _ in range(10):
        live.record_query(record(worker="w2", actual=50.0, budget=20.0))
    stats = live.instance_stats(window_s=10.0)
    fast, slow = stats[("w1", "m/v")], stats[("w2", "m/v")]
    assert fast.variant_key == slow.variant_key == "m/v"
    assert fast.requests == 30 and fast.p99_ms == pytest.approx(5.0) and fast.slo_miss_rate == 0.0
    assert slow.requests == 10 and slow.p99_ms == pytest.approx(50.0) and slow.slo_miss_rate == 1.0
    assert fast.rate_per_s == pytest.approx(3.0) and slow.total_requests == 10
    both = live.variant_stats(window_s=10.0)["m/v"]  # the per-variant aggregate the console shows
    assert both.requests == 40 and both.slo_miss_rate == pytest.approx(0.25)
    live.remove_worker("w2")
    assert set(live.instance_stats(window_s=10.0)) == {("w1", "m/v")}  # a removed worker's stats go with it
    assert live.variant_stats(window_s=10.0)["m/v"].requests == 40


def test_rejections_are_counted_per_target_and_not_as_served_queries(make_live: MakeLiveState) -> None:
    live = make_live()
    now = time.time()
    for unmet in ("latency_ms", "latency_ms", "max_cost"):
        live.record_rejection(Rejection(at=now, tenant="t", target="m", unmet=unmet))
    live.record_rejection(Rejection(at=now, tenant="t", target="task:classify", unmet="latency_ms"))
    live.record_rejection(Rejection(at=now - 100, tenant="t", target="m", unmet="latency_ms"))  # out of the window
    stats = live.rejection_stats(window_s=10.0)
    assert stats["m"].rejected == 3 and stats["m"].total_rejected == 4
    assert (stats["m"].unmet_latency, stats["m"].unmet_max_cost) == (2, 1)
    assert stats["m"].rate_per_s == pytest.approx(0.3)
    assert stats["task:classify"].rejected == 1
    assert live.recent_queries() == [] and live.variant_stats() == {}  # nothing ran


def test_pipeline_arrivals_are_shared_by_every_front_end(make_live: MakeLiveState) -> None:
    """The pipeline tuner runs in the leader and sizes stages by every front end's arrivals, not its own."""
    first = make_live()
    now = time.time()
    first.record_pipeline_arrival("p", now - 100.0)  # older than the tuner's longest window: dropped on write
    for i in range(5):
        first.record_pipeline_arrival("p", now - 5.0 + i)
    first.record_pipeline_arrival("other", now)
    assert first.pipeline_arrivals("p", now - 10.0) == [now - 5.0 + i for i in range(5)]
    assert first.pipeline_arrivals("p", now - 2.5) == [now - 2.0, now - 1.0]
    assert first.pipeline_arrivals("missing", now - 10.0) == []
    assert first.pipeline_arrivals("p", now - 200.0) == [now - 5.0 + i for i in range(5)]
