"""Leader leases: which one of several front-ends may act for the whole cluster (the autoscaler).

Every ``infaas serve`` front-end runs an autoscaler loop; only the holder of the lease acts, so N
front-ends make one set of decisions, not N. The lease is Redis's own atomic primitive, through
redis-py's ``Lock`` (``SET key token NX PX ttl`` to acquire; renewal and release are Lua scripts that
act only while the stored token is still ours), not an election written here. A holder that stops
renewing — killed, hung, or cut off from Redis — loses the lease when its TTL runs out, and another
front-end takes it at its next try.

``held`` is decided locally and conservatively: the lease counts as ours until the TTL measured from
*before* the last successful acquire or renew was sent, so it expires here no later than in Redis and
a holder that could not renew stops acting before anyone else can start. The embedded deployment has
one front-end, so its lease (``InProcessLease``) is held whenever asked for.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import redis
from redis.lock import Lock


def front_end_id() -> str:
    """This process's name in leases and decisions: host and process id (unique among live front-ends)."""
    return f"{socket.gethostname()}/{os.getpid()}"


class Lease(Protocol):
    """A lease one process at a time holds; the holder renews it well within its TTL."""

    holder: str  # who this process is, as recorded in decisions

    @property
    def held(self) -> bool:
        """Whether this process holds the lease now (no I/O: safe to ask before every action)."""
        ...

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or still ours); whether it is held afterwards."""
        ...

    def renew(self) -> bool:
        """Extend the lease for another TTL if it is still ours; ``False`` (and not held) otherwise."""
        ...

    def release(self) -> None:
        """Give the lease up now if it is ours, so another process takes it without waiting for the TTL."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class InProcessLease:
    """The embedded deployment's lease: this process is the only candidate, so it leads whenever it asks."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        self._held = True
        return True

    def renew(self) -> bool:
        return self._held

    def release(self) -> None:
        self._held = False

    def close(self) -> None:
        self._held = False


class RedisLease:
    """A lease on one Redis key, shared by every front-end of a cluster (redis-py ``Lock``, non-blocking).

    Commands time out after a third of the TTL, so an unreachable Redis makes ``renew`` fail (and the
    holder stop) before the TTL would have run out anyway.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        holder: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"a lease TTL must be positive, not {ttl_s}")
        self.holder = holder
        self.key = key
        self.ttl_s = ttl_s
        self._clock = clock
        timeout_s = min(ttl_s / 3, 2.0)
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._lock = Lock(self._redis, key, timeout=ttl_s, blocking=False, thread_local=False)
        self._ours = False  # the stored token may still be ours (acquired, not known lost or released)
        self._valid_until = float("-inf")

    @property
    def held(self) -> bool:
        return self._ours and self._clock() < self._valid_until

    def try_acquire(self) -> bool:
        if self._ours and self.renew():
            return True
        sent_at = self._clock()
        try:
            acquired = bool(self._lock.acquire(blocking=False, token=f"{self.holder}/{uuid.uuid4().hex}"))
        except redis.RedisError:
            acquired = False
        self._note(acquired, sent_at)
        return acquired

    def renew(self) -> bool:
        if not self._ours:
            return False
        sent_at = self._clock()
        try:
            renewed = bool(self._lock.reacquire())  # compare-and-expire: LockNotOwnedError once taken or expired
        except redis.RedisError:  # LockError too: a lock error is a RedisError
            renewed = False
        self._note(renewed, sent_at)
        return renewed

    def release(self) -> None:
        was_ours, self._ours, self._valid_until = self._ours, False, float("-inf")
        if not was_ours:
            return
        try:
            self._lock.release()  # compare-and-delete: a lease someone else holds now is left alone
        except redis.RedisError:
            pass  # not ours any more, or Redis is away: the TTL ends it either way

    def close(self) -> None:
        self.release()
        self._redis.close()

    def _note(self, held: bool, sent_at: float) -> None:
        self._ours = held
        self._valid_until = sent_at + self.ttl_s if held else float("-inf")
