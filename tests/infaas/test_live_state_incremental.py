"""The Redis live state's incremental snapshot refresh sees exactly what a full fetch sees.

A writer process makes random changes (registrations, heartbeats, instances, depths, draining, removals, and
workers left to expire); after each batch a reader that only ever refreshes incrementally must hold the same
workers, instances and depths as a reader fetching everything.
"""

from __future__ import annotations

import random
import time

import pytest

from infaas.live_state import InstanceState, LiveSnapshot, WorkerState
from infaas.live_state.redis import RedisLiveState
from tests.redis_server import REDIS_URL, redis_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379"),
]


def _view(snap: LiveSnapshot, pairs: set[tuple[str, str]]) -> tuple[object, ...]:
    return snap.workers, dict(snap.instances), {p: snap.depth(*p) for p in pairs}


def test_incremental_refresh_matches_a_full_fetch(prefix: str) -> None:
    rng = random.Random(20)
    writer = RedisLiveState(REDIS_URL, prefix, worker_ttl_s=0.6, snapshot_ttl_s=0.0)
    reader = RedisLiveState(REDIS_URL, prefix, worker_ttl_s=0.6, snapshot_ttl_s=0.0, full_refresh_s=1e9)
    ids, keys = [f"w{i}" for i in range(8)], [f"m{i}/v" for i in range(6)]
    pairs = {(w, k) for w in ids for k in keys}
    full_fetches = 0
    try:
        reader.snapshot()  # the one full fetch it makes
        for step in range(60):
            for _ in range(rng.randint(1, 6)):
                w, k, op = rng.choice(ids), rng.choice(keys), rng.random()
                if op < 0.2:
                    writer.register_worker(WorkerState(w, "a", rng.randint(1, 8), 1000.0, rng.uniform(0, 900)))
                elif op < 0.45:
                    writer.heartbeat(w, rng.uniform(0, 1000))
                elif op < 0.65:
                    writer.set_instance(InstanceState(w, k, rng.randint(1, 3), 10.0))
                elif op < 0.75:
                    writer.remove_instance(w, k)
                elif op < 0.88:
                    writer.set_queue_depth(w, k, rng.randint(0, 9))
                elif op < 0.94:
                    writer.set_draining(w, rng.random() < 0.5)
                else:
                    writer.remove_worker(w)
            writer.flush()
            if step % 15 == 14:
                time.sleep(0.7)  # every worker not heartbeaten since expires
            for _attempt in range(3):  # a key may expire between the two reads on a loaded machine: read again
                full = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
                try:
                    want = _view(full.snapshot(), pairs)
                finally:
                    full.close()
                before = reader._full_at
                got = _view(reader.snapshot(), pairs)
                full_fetches += reader._full_at != before
                if got == want:
                    break
            assert got == want, f"step {step}"  # a change the incremental refresh missed stays missed
        assert full_fetches == 0  # every refresh after the first was incremental
    finally:
        writer.close()
        reader.close()


def test_a_refresh_with_only_depth_changes_keeps_the_snapshot_object(prefix: str) -> None:
    """The selector's per-snapshot index survives refreshes that moved only depths (no rebuild per refresh)."""
    live = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    other = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    try:
        live.register_worker(WorkerState("w1", "a", 2, 100.0))
        live.set_instance(InstanceState("w1", "m/v", 1, 10.0))
        first = other.snapshot()
        live.set_queue_depth("w1", "m/v", 4)
        live.flush()
        second = other.snapshot()
        assert second is first and second.depth("w1", "m/v") == 4
        live.heartbeat("w1", 50.0)
        third = other.snapshot()
        assert third is not first and third.workers[0].memory_used_mb == 50.0
        assert third.instances is first.instances  # instances unchanged: the same mapping
    finally:
        live.close()
        other.close()
