"""Per-tenant quotas on background work: offline jobs in flight, registrations and re-profiles per hour.

Background work is what one tenant can use to starve everyone else: 40 re-profiles of another tenant's
model made that tenant's next registration take 43 s to become ready instead of 1.3 s, and 30 jobs and
30 registrations from one tenant were all accepted at once (issue 14). Admins are exempt: they are the
operator.

Every count lives where every front-end process sees it, never in a per-process counter:

* jobs in flight are ``jobs`` rows (queued or running) in the metadata database;
* registration attempts and re-profiles are events in a sliding window (``EventWindow``): in Redis when
  the deployment has one (shared by every front-end), in this process otherwise (the embedded default
  is one process). Attempts count, not successes: a registration that fails its checks still cost a
  test inference, and a model deleted after registering must not give its slot back.

A refusal is ``TooManyRequests`` (429) with ``Retry-After``: when the oldest event in the window ages
out, or a guess for jobs (they finish when they finish).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque

from sqlalchemy import ColumnElement, func, select

from infaas.auth import Principal
from infaas.config import Settings
from infaas.db.models import Job
from infaas.db.session import Database
from infaas.errors import TooManyRequests

HOUR_S = 3600.0
ACTIVE_JOB_STATES = ("queued", "running")  # JobStatus.QUEUED / RUNNING (infaas.offline imports the services)
JOB_RETRY_AFTER_S = 10.0  # a job's end cannot be predicted; ask the client to poll at this pace


class EventWindow(ABC):
    """A sliding-window event counter keyed by name, shared by every process that needs the same answer."""

    @abstractmethod
    def admit(self, key: str, limit: int, window_s: float) -> float | None:
        """Record one event under ``key`` if fewer than ``limit`` happened in the last ``window_s``.

        ``None`` when recorded; otherwise the seconds until the oldest event leaves the window. Checking
        and recording are one atomic step, so concurrent callers can never both take the last slot.
        """

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class MemoryEventWindow(EventWindow):
    """The window in this process: the embedded default, where one process serves every request."""

    def __init__(self) -> None:
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, limit: int, window_s: float) -> float | None:
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - window_s:
                events.popleft()
            if len(events) >= limit:
                return events[0] + window_s - now
            events.append(now)
            return None

    def close(self) -> None:
        """Nothing to release in memory."""


# Trim, count and add in one script, on the Redis server's clock (front-ends' clocks may disagree).
_ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(window))
  return nil
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + window - now)
"""


class RedisEventWindow(EventWindow):
    """The window in Redis (one sorted set per key, expiring with the window): every front-end agrees."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis  # only when scaled out

        self._redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        self._prefix = f"{prefix}:quota:"
        self._admit = self._redis.register_script(_ADMIT_LUA)

    def admit(self, key: str, limit: int, window_s: float) -> float | None:
        wait = self._admit(keys=[self._prefix + key], args=[window_s, limit, uuid.uuid4().hex])
        return None if wait is None else float(wait)

    def close(self) -> None:
        self._redis.close()


class Quotas:
    """The quota checks routes and the admission middleware call; each raises ``TooManyRequests``."""

    def __init__(self, settings: Settings, db: Database, window: EventWindow) -> None:
        self.settings = settings
        self.db = db
        self.window = window

    def admit_registration(self, principal: Principal) -> None:
        """Count one registration attempt of the caller's tenant; 429 past the hourly quota."""
        if principal.is_admin:
            return
        limit = self.settings.max_registrations_per_hour
        wait = self.window.admit(f"register:{principal.tenant}", limit, HOUR_S)
        if wait is not None:
            raise TooManyRequests(
                f"tenant {principal.tenant!r} has made {limit} registrations in the last hour "
                f"(INFAAS_MAX_REGISTRATIONS_PER_HOUR); retry in {math.ceil(wait)} s",
                retry_after_s=wait,
            )

    def admit_reprofile(self, principal: Principal, model_name: str) -> None:
        """Count one re-profile of ``model_name``; 429 past the hourly quota for that model."""
        if principal.is_admin:
            return
        limit = self.settings.max_reprofiles_per_model_per_hour
        wait = self.window.admit(f"reprofile:{model_name}", limit, HOUR_S)
        if wait is not None:
            raise TooManyRequests(
                f"model {model_name!r} was re-profiled {limit} times in the last hour "
                f"(INFAAS_MAX_REPROFILES_PER_MODEL_PER_HOUR); retry in {math.ceil(wait)} s",
                retry_after_s=wait,
            )

    def check_jobs(self, principal: Principal) -> None:
        """429 when the caller's tenant already has its quota of jobs queued or running (before any work)."""
        if principal.is_admin:
            return
        with self.db.session() as session:
            active = session.scalar(select(func.count()).select_from(Job).where(_active_jobs_of(principal.tenant)))
        if (active or 0) >= self.settings.max_jobs_per_tenant:
            raise self._too_many_jobs(principal)

    def confirm_job(self, principal: Principal, job_id: str) -> None:
        """429 unless the just-recorded ``job_id`` is among the tenant's first ``limit`` active jobs.

        ``check_jobs`` alone lets concurrent submissions (in one process or several) all pass before any
        of them is recorded; ranking the recorded rows decides the race the same way in every process.
        The caller removes a refused job.
        """
        if principal.is_admin:
            return
        limit = self.settings.max_jobs_per_tenant
        with self.db.session() as session:
            first = session.scalars(
                select(Job.id).where(_active_jobs_of(principal.tenant)).order_by(Job.created_at, Job.id).limit(limit)
            ).all()
        if job_id not in first:
            raise self._too_many_jobs(principal)

    def _too_many_jobs(self, principal: Principal) -> TooManyRequests:
        return TooManyRequests(
            f"tenant {principal.tenant!r} already has {self.settings.max_jobs_per_tenant} jobs queued or running "
            "(INFAAS_MAX_JOBS_PER_TENANT); retry when one finishes",
            retry_after_s=JOB_RETRY_AFTER_S,
        )

    def close(self) -> None:
        """Release the event window's connections."""
        self.window.close()


def _active_jobs_of(tenant: str) -> ColumnElement[bool]:
    return (Job.owner == tenant) & Job.status.in_(ACTIVE_JOB_STATES)
