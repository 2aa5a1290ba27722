"""Leader leases: one contract over the embedded and the Redis lease, then what only a shared lease can show
(one holder among contenders, expiry, a holder cut off from Redis). Redis is the real server on this
machine, under a unique key; those cases skip only when it is down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from infaas.leadership import InProcessLease, Lease, RedisLease, front_end_id
from tests.redis_server import REDIS_URL, delete_keys, redis_up

needs_redis = pytest.mark.skipif(not redis_up(), reason="needs Redis on 127.0.0.1:6379")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key() -> Iterator[str]:
    prefix = f"infaas-test-lease-{uuid.uuid4().hex[:10]}"
    yield f"{prefix}:autoscaler:leader"
    if redis_up():
        delete_keys(prefix)


def redis_lease(
    key: str, holder: str = "a", ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic
) -> RedisLease:
    return RedisLease(REDIS_URL, key, holder=holder, ttl_s=ttl_s, clock=clock)


@pytest.fixture(params=["inprocess", pytest.param("redis", marks=needs_redis)])
def lease(request: pytest.FixtureRequest, key: str) -> Iterator[Lease]:
    made: Lease = InProcessLease("a") if request.param == "inprocess" else redis_lease(key)
    yield made
    made.close()


def test_lease_contract(lease: Lease) -> None:
    assert not lease.held and not lease.renew()  # nothing to renew before it is taken
    assert lease.try_acquire() and lease.held
    assert lease.renew() and lease.held
    assert lease.try_acquire() and lease.held  # asking again while holding keeps it
    lease.release()
    assert not lease.held and not lease.renew()
    lease.release()  # releasing what is not held is harmless
    assert lease.try_acquire() and lease.held


def test_front_end_id_names_this_process() -> None:
    import os

    assert front_end_id().endswith(f"/{os.getpid()}")


@needs_redis
def test_one_holder_among_contenders_and_release_hands_over(key: str) -> None:
    first, second = redis_lease(key, "a"), redis_lease(key, "b")
    try:
        assert first.try_acquire()
        assert not second.try_acquire() and not second.held
        assert not second.renew()  # cannot renew what it never took
        stored = redis.Redis.from_url(REDIS_URL).get(key)
        assert stored is not None and stored.decode().startswith("a/")  # the token names the holder
        first.release()
        assert second.try_acquire() and second.held
        assert not first.try_acquire() and not first.held
    finally:
        first.close()
        second.close()


@needs_redis
def test_an_expired_lease_is_lost_by_its_holder_and_taken_by_another(key: str) -> None:
    """The holder's own view expires no later than Redis's: it stops before another can start."""
    clock = FakeClock()
    holder = redis_lease(key, "a", ttl_s=0.3, clock=clock)
    other = redis_lease(key, "b", ttl_s=0.3)
    try:
        assert holder.try_acquire()
        clock.now += 0.3  # its TTL as measured here, from before the acquire was sent
        assert not holder.held  # no I/O: it knows by the clock
        assert not other.try_acquire()  # still held in Redis: the key outlives the holder's own view
        time.sleep(0.35)  # the same TTL running out in Redis
        assert other.try_acquire()
        assert not holder.renew() and not holder.held  # renewal is refused: the token is not its own any more
        assert other.held
        holder.release()  # compare-and-delete: the new holder's lease is left alone
        assert other.renew()
    finally:
        holder.close()
        other.close()


def test_a_holder_cut_off_from_redis_stops_holding() -> None:
    """Redis unreachable: acquire and renew fail quickly, so the holder stops acting before its TTL ends."""
    lost = RedisLease("redis://127.0.0.1:1/0", "k", holder="a", ttl_s=0.6)
    try:
        assert not lost.try_acquire() and not lost.held
        assert not lost.renew()
        lost.release()
    finally:
        lost.close()


@needs_redis
def test_renewal_failing_mid_lease_drops_it_at_once(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lease = redis_lease(key, "a", ttl_s=30.0)
    try:
        assert lease.try_acquire()

        def unreachable(*_args: object, **_kwargs: object) -> None:
            raise redis.ConnectionError("connection refused")

        monkeypatch.setattr(lease._lock, "reacquire", unreachable)
        assert not lease.renew()
        assert not lease.held  # 29 s of TTL left, but a holder that cannot renew must stop now
    finally:
        monkeypatch.undo()
        lease.close()


def test_a_lease_needs_a_positive_ttl() -> None:
    with pytest.raises(ValueError, match="TTL must be positive"):
        RedisLease(REDIS_URL, "k", holder="a", ttl_s=0)
