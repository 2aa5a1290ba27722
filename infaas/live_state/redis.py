"""Redis live state: the scaled-out implementation shared by every front-end and worker process.

Layout (every key under ``<prefix>:``):

* ``workers`` (set of ids) and ``w:<id>`` (hash) — a worker; the hash carries a TTL that every
  heartbeat refreshes, so a worker that stops heartbeating disappears on its own within the TTL.
* ``inst:<id>`` / ``depth:<id>`` (hashes keyed by ``model/variant``) — loaded instances and queue
  depths of one worker, expiring with it and emptied when a worker registers (a worker restarted under
  the same id within the TTL starts with nothing loaded); ``iw`` lists the workers with instance hashes.
* ``samples:<model/variant>`` (list, LPUSH + LTRIM) — recent (time, actual, estimate, missed, infeasible)
  samples; ``totals`` (hash) counts queries since start; ``variants`` (set) names sampled variants.
* ``isamples:<worker>:<model/variant>`` (list) — the same samples per instance; ``ivariants:<worker>`` (set)
  and ``itotals:<worker>`` (hash) name and count them; ``iworkers`` (set) names the workers that have them.
  Removing a worker deletes its instance statistics.
* ``rejects:<target>`` (list) — recent (time, max_cost unmet) samples of queries refused as infeasible, per
  model named (or ``task:<name>``); ``rtotals`` (hash) counts them since start; ``rtargets`` (set) names them.
* ``recent`` (list, LPUSH + LTRIM) — the recent-queries ring, newest first.
* ``parr:<pipeline>`` (sorted set scored by ``time.time()``) — when each pipeline query reached a front end, for
  the pipeline tuner; trimmed to the last ``PIPELINE_ARRIVALS_KEEP_S`` seconds (and ``PIPELINE_ARRIVALS_MAX``
  members) on every write, expiring when no front end writes for that long.
* ``catalog`` (counter) and the ``catalog`` channel — catalog changes, for candidate caches.
* ``seq`` (counter), ``changed`` (sorted set: worker id scored by the ``seq`` of its last change) and ``alive``
  (sorted set: worker id scored by when its keys expire, server milliseconds) — what a front-end's snapshot
  refresh reads instead of the whole fleet (below).

Per-query cost is kept off the query path: ``set_queue_depth`` and ``record_query`` only touch
local buffers, flushed by one background thread in a single pipeline every few milliseconds, and
``snapshot()`` serves a copy at most ``snapshot_ttl_s`` old, refreshed by one Lua call (one round
trip, however many workers). Depths this process wrote itself are overlaid on the shared ones, so
a process always sees its own latest depths without waiting for a round trip.

The refresh is incremental: every write to a worker's keys bumps ``seq`` and scores the worker in ``changed``,
and a refresh fetches only the workers changed since the ``seq`` it last saw (workers whose keys expired are
found through ``alive`` and reported as changed), applied to the copy this process keeps. A full fetch
(``full_refresh_s``, and whenever the counter is unknown, went back, or is too far ahead) is the safety net.
Needs Redis 6.2 or later (``ZADD GT``); the deployments run Redis 7.
Measured (``benchmarks/scale.py``): a full fetch of 1,000 workers with 20,000 instances costs hundreds of
milliseconds in Lua, transfer and parsing; a refresh after a few heartbeats a handful of workers.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import orjson
import redis

from infaas.config import Settings
from infaas.live_state.base import (
    PIPELINE_ARRIVALS_KEEP_S,
    PIPELINE_ARRIVALS_MAX,
    WINDOW_SAMPLES,
    InstanceState,
    LiveSnapshot,
    LiveState,
    QueryRecord,
    Rejection,
    RejectionStats,
    VariantStats,
    WorkerState,
    rejection_sample_of,
    rejection_stats_from_samples,
    sample_of,
    stats_from_samples,
)

log = logging.getLogger(__name__)


# One round trip for the whole snapshot: every worker's hash, instances and depths. Workers whose
# hash expired are dropped from the index sets here, so the sets never grow without bound.
_SNAPSHOT_LUA = """
local p = ARGV[1]
local seq = tonumber(redis.call('GET', p .. 'seq') or '0')
for _, part in ipairs({'w', 'i', 'd'}) do
  redis.call('ZREMRANGEBYSCORE', p .. 'changed:' .. part, '-inf', seq - tonumber(ARGV[2]))
end
local ids = redis.call('SUNION', p .. 'workers', p .. 'iw')
local out = {}
for _, id in ipairs(ids) do
  local w = redis.call('HGETALL', p .. 'w:' .. id)
  local inst = redis.call('HGETALL', p .. 'inst:' .. id)
  if #w == 0 then redis.call('SREM', p .. 'workers', id) end
  if #inst == 0 then redis.call('SREM', p .. 'iw', id) end
  if #w > 0 or #inst > 0 then
    table.insert(out, {id, w, inst, redis.call('HGETALL', p .. 'depth:' .. id)})
  end
end
return {seq, out}
"""

# The workers changed since ARGV[2] (a ``seq``): {id, parts, w, inst, depth} where ``parts`` names what changed
# (``w`` the worker hash, ``i`` its instances, ``d`` its depths) and only those hashes are sent ({} when gone); first,
# the workers whose keys expired since (``alive``) count as changed. {-1} asks for a full fetch: the counter went
# back (Redis restarted empty) or the change log was trimmed past the caller's ``seq``.
_DELTA_LUA = """
local p, since = ARGV[1], tonumber(ARGV[2])
local seq = tonumber(redis.call('GET', p .. 'seq') or '0')
if seq < since or since < seq - tonumber(ARGV[3]) then return {-1} end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'alive', '-inf', now)) do
  local lw, li = redis.call('PTTL', p .. 'w:' .. id), redis.call('PTTL', p .. 'inst:' .. id)
  if lw == -2 then redis.call('SREM', p .. 'workers', id) end
  if li == -2 then redis.call('SREM', p .. 'iw', id) end
  local left = math.max(lw, li)
  if left > 0 then redis.call('ZADD', p .. 'alive', now + left, id) else redis.call('ZREM', p .. 'alive', id) end
  seq = redis.call('INCR', p .. 'seq')
  for _, part in ipairs({'w', 'i', 'd'}) do redis.call('ZADD', p .. 'changed:' .. part, seq, id) end
end
local parts, order = {}, {}
for _, part in ipairs({'w', 'i', 'd'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'changed:' .. part, '(' .. since, '+inf')) do
    if parts[id] == nil then parts[id] = ''; table.insert(order, id) end
    parts[id] = parts[id] .. part
  end
end
local out = {}
for _, id in ipairs(order) do
  local f, w, inst, depth = parts[id], {}, {}, {}
  -- depths written while the worker was unknown (dropped then) count once its instances make it known
  if string.find(f, 'i', 1, true) and not string.find(f, 'd', 1, true) then f = f .. 'd' end
  if string.find(f, 'w', 1, true) then w = redis.call('HGETALL', p .. 'w:' .. id) end
  if string.find(f, 'i', 1, true) then inst = redis.call('HGETALL', p .. 'inst:' .. id) end
  local known = redis.call('EXISTS', p .. 'w:' .. id, p .. 'inst:' .. id) > 0
  if string.find(f, 'd', 1, true) and known then
    depth = redis.call('HGETALL', p .. 'depth:' .. id)
  end
  table.insert(out, {id, f, w, inst, depth})
end
return {seq, out}
"""

# Marks parts (ARGV[3]: letters of ``w``, ``i``, ``d``) of workers (ARGV[4:]) changed; with a TTL (ARGV[2] > 0) their
# keys now expire that far from now at the latest.
_MARK_LUA = """
local p, ttl, parts = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local seq = redis.call('INCR', p .. 'seq')
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i = 4, #ARGV do
  for part in string.gmatch(parts, '.') do redis.call('ZADD', p .. 'changed:' .. part, seq, ARGV[i]) end
  if ttl > 0 then redis.call('ZADD', p .. 'alive', 'GT', now + ttl, ARGV[i]) end
end
return seq
"""

# One flush of a process's buffers (``RedisLiveState._flush``): one EVALSHA instead of a pipeline of ~6 commands per
# query (``benchmarks/scale.py``). ARGV: prefix, the worker TTL (ms), samples kept per list, recent queries kept, the
# JSON of {"d": [[worker, [key, depth, ...]]], "v": [[variant, [sample, ...]]], "i": [[worker, variant, [sample,
# ...]]], "j": [[target, [sample, ...]]]}, then the recent-query records (oldest first). Depths mark their workers
# changed (as ``_MARK_LUA`` with no TTL: a depth hash never expires before the worker's other keys, since every
# write that extends those extends it too). Lists are pushed in chunks: Lua's stack holds ~8,000 arguments.
_FLUSH_LUA = """
local p, ttl, window, recent_max = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local u = cjson.decode(ARGV[5])
local function push(key, items, first, keep)
  for i = first, #items, 1000 do redis.call('LPUSH', key, unpack(items, i, math.min(i + 999, #items))) end
  redis.call('LTRIM', key, 0, keep - 1)
end
local function add(key, items)
  for i = 1, #items, 1000 do redis.call('SADD', key, unpack(items, i, math.min(i + 999, #items))) end
end
if #u.d > 0 then
  local seq = redis.call('INCR', p .. 'seq')
  for _, wd in ipairs(u.d) do
    local key, flat = p .. 'depth:' .. wd[1], wd[2]
    for i = 1, #flat, 1000 do redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat))) end
    redis.call('PEXPIRE', key, ttl)
    redis.call('ZADD', p .. 'changed:d', seq, wd[1])
  end
end
local names = {}
for _, vs in ipairs(u.v) do
  push(p .. 'samples:' .. vs[1], vs[2], 1, window)
  redis.call('HINCRBY', p .. 'totals', vs[1], #vs[2])
  table.insert(names, vs[1])
end
add(p .. 'variants', names)
names = {}
for _, ws in ipairs(u.i) do
  local id, key, samples = ws[1], ws[2], ws[3]
  push(p .. 'isamples:' .. id .. ':' .. key, samples, 1, window)
  redis.call('HINCRBY', p .. 'itotals:' .. id, key, #samples)
  redis.call('SADD', p .. 'ivariants:' .. id, key)
  table.insert(names, id)
end
add(p .. 'iworkers', names)
if #ARGV > 7 then push(p .. 'recent', ARGV, 8, recent_max) end
names = {}
for _, ts in ipairs(u.j) do
  push(p .. 'rejects:' .. ts[1], ts[2], 1, window)
  redis.call('HINCRBY', p .. 'rtotals', ts[1], #ts[2])
  table.insert(names, ts[1])
end
add(p .. 'rtargets', names)
local keep, most = tonumber(ARGV[6]), tonumber(ARGV[7])
for _, pa in ipairs(u.a) do
  local key, flat = p .. 'parr:' .. pa[1], pa[2]
  for i = 1, #flat, 1000 do redis.call('ZADD', key, unpack(flat, i, math.min(i + 999, #flat))) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (tonumber(pa[3]) - keep))
  redis.call('ZREMRANGEBYRANK', key, 0, -most - 1)
  redis.call('PEXPIRE', key, math.ceil(keep * 1000))
end
return 1
"""

_CHANGE_LOG = 1_000_000  # changes kept in ``changed:*``; a front-end further behind fetches everything

# Heartbeat of a known worker only (like the in-memory state); refreshes every TTL of the worker.
_HEARTBEAT_LUA = """
local p, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. 'w:' .. id) == 0 then return 0 end
redis.call('HSET', p .. 'w:' .. id, 'heartbeat_at', ARGV[3], 'memory_used_mb', ARGV[4])
for _, k in ipairs({'w:', 'inst:', 'depth:'}) do redis.call('PEXPIRE', p .. k .. id, ARGV[5]) end
local t = redis.call('TIME')
redis.call('ZADD', p .. 'alive', 'GT', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[5]), id)
redis.call('ZADD', p .. 'changed:w', redis.call('INCR', p .. 'seq'), id)
return 1
"""

# A removed worker's instance statistics, in one round trip.
_FORGET_INSTANCE_STATS_LUA = """
local p, id = ARGV[1], ARGV[2]
for _, key in ipairs(redis.call('SMEMBERS', p .. 'ivariants:' .. id)) do
  redis.call('DEL', p .. 'isamples:' .. id .. ':' .. key)
end
redis.call('DEL', p .. 'ivariants:' .. id, p .. 'itotals:' .. id)
redis.call('SREM', p .. 'iworkers', id)
return 1
"""

_SET_DRAINING_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'draining', ARGV[1])
redis.call('ZADD', ARGV[2] .. 'changed:w', redis.call('INCR', ARGV[2] .. 'seq'), ARGV[3])
return 1
"""


class _Depths(Mapping[tuple[str, str], int]):
    """Shared depths as of the last refresh, overlaid with the depths this process wrote since."""

    __slots__ = ("_shared", "_local")

    def __init__(self, shared: dict[tuple[str, str], int], local: dict[tuple[str, str], int]) -> None:
        self._shared = shared
        self._local = local

    def get(self, key: tuple[str, str], default: Any = 0) -> Any:  # type: ignore[override]
        local = self._local.get(key)
        shared = self._shared.get(key)
        if local is None:
            return default if shared is None else shared
        return local if shared is None else max(local, shared)

    def __getitem__(self, key: tuple[str, str]) -> int:
        value = self.get(key, None)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._shared.keys() | self._local.keys())

    def __len__(self) -> int:
        return len(self._shared.keys() | self._local.keys())


def _worker_from_hash(worker_id: str, h: dict[str, str]) -> WorkerState:
    return WorkerState(
        id=worker_id,
        address=h.get("address", ""),
        cores=int(h.get("cores", "1")),
        memory_budget_mb=float(h.get("memory_budget_mb", "0")),
        memory_used_mb=float(h.get("memory_used_mb", "0")),
        hardware=tuple(x for x in h.get("hardware", "cpu").split(",") if x),
        heartbeat_at=float(h.get("heartbeat_at", "0")),
        draining=h.get("draining") == "1",
        device=h.get("device", ""),
        device_memory_mb=float(h.get("device_memory_mb", "0")),
        cpus=float(h.get("cpus", "0")),
    )


def _instance_value(instance: InstanceState) -> str:
    return f"{instance.replicas}|{instance.memory_mb!r}|{instance.last_used_at!r}"


def _encode(record: QueryRecord) -> str:
    at, actual, estimated, missed, infeasible = sample_of(record)
    return f"{at!r}|{actual!r}|{estimated!r}|{missed:.0f}|{infeasible:.0f}"


def _samples(raw: list[str], fields: int) -> list[Any]:
    """Decoded samples; ones written before a field existed read it as 0 (a rolling upgrade shares Redis)."""
    padding = (0.0,) * fields
    return [(tuple(float(x) for x in s.split("|")) + padding)[:fields] for s in raw]


def _pairs(flat: list[str]) -> Iterator[tuple[str, str]]:
    return zip(flat[0::2], flat[1::2], strict=True)


class RedisLiveState(LiveState):
    """Live state in Redis, shared by every process configured with the same URL and prefix."""

    def __init__(
        self,
        url: str,
        prefix: str = "infaas",
        *,
        worker_ttl_s: float = 3.0,
        snapshot_ttl_s: float = 0.005,
        flush_interval_s: float = 0.002,
        recent: int = 1000,
        full_refresh_s: float = 30.0,
    ) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        self._p = f"{prefix}:"
        self._ttl_ms = max(1, int(worker_ttl_s * 1000))
        self._snapshot_ttl_s = snapshot_ttl_s
        self._flush_interval_s = flush_interval_s
        self._recent_max = recent
        self._snapshot_script = self._redis.register_script(_SNAPSHOT_LUA)
        self._delta_script = self._redis.register_script(_DELTA_LUA)
        self._mark_script = self._redis.register_script(_MARK_LUA)
        self._heartbeat_script = self._redis.register_script(_HEARTBEAT_LUA)
        self._draining_script = self._redis.register_script(_SET_DRAINING_LUA)
        self._forget_stats_script = self._redis.register_script(_FORGET_INSTANCE_STATS_LUA)
        self._flush_script = self._redis.register_script(_FLUSH_LUA)
        # Snapshot cache: one refresh at a time; other threads keep reading the previous one.
        self._local_depth: dict[tuple[str, str], int] = {}
        self._snap = LiveSnapshot(workers=(), instances=MappingProxyType({}), queue_depth=_Depths({}, {}))
        self._snap_at = float("-inf")
        self._fetch_lock = threading.Lock()
        # This process's copy of the fleet, kept up to date by incremental refreshes (``_fetch``).
        self._full_refresh_s = full_refresh_s
        self._seq: int | None = None  # the ``seq`` the copy reflects; None: fetch everything
        self._full_at = float("-inf")
        self._workers_by_id: dict[str, WorkerState] = {}
        self._inst_by_worker: dict[str, dict[str, InstanceState]] = {}
        self._by_variant: dict[str, tuple[InstanceState, ...]] = {}
        self._depth_keys: dict[str, list[str]] = {}
        self._shared_depth: dict[tuple[str, str], int] = {}
        # Write buffers, swapped out by the flusher thread.
        self._buffer_lock = threading.Lock()
        self._dirty_depth: dict[tuple[str, str], int] = {}
        self._records: list[QueryRecord] = []
        self._rejections: list[Rejection] = []
        self._arrivals: list[tuple[str, float]] = []
        self._arrival_ids = itertools.count()  # with ``_token``: a unique member per arrival
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="live-state-flush", daemon=True)
        self._flusher.start()
        # Catalog change fan-out.
        self._token = uuid.uuid4().hex[:12]
        self._catalog_callbacks: list[Callable[[str], None]] = []
        self._subscriber: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, flush_interval_s: float = 0.002) -> RedisLiveState:
        """The live state named by ``INFAAS_REDIS_URL`` / ``INFAAS_REDIS_PREFIX`` (a worker process flushes its
        depths less often: ``infaas.worker.server.DEPTH_REPORT_S``)."""
        if not settings.redis_url:
            raise ValueError("INFAAS_REDIS_URL is not set")
        return cls(
            settings.redis_url,
            settings.redis_prefix,
            worker_ttl_s=settings.heartbeat_ttl_s,
            flush_interval_s=flush_interval_s,
        )

    @property
    def prefix(self) -> str:
        """The key prefix (with its trailing colon); tests and tools delete ``prefix*`` to clean up."""
        return self._p

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def close(self) -> None:
        """Flush buffered writes and stop the background threads."""
        self._closed.set()
        self._wake.set()
        self._flusher.join(5)
        if self._subscriber is not None:
            self._subscriber.join(5)
        self._flush()
        self._redis.close()

    # -- workers --------------------------------------------------------------------------------
    def register_worker(self, worker: WorkerState) -> None:
        w = self._k("w", worker.id)
        pipe = self._redis.pipeline()
        # A registration is a fresh process (or a re-registration that re-adds its instances next): the
        # instances and depths an earlier process of this id left must not live on under its heartbeats.
        pipe.delete(self._k("inst", worker.id), self._k("depth", worker.id))
        pipe.hset(
            w,
            mapping={
                "address": worker.address,
                "cores": worker.cores,
                "memory_budget_mb": repr(worker.memory_budget_mb),
                "memory_used_mb": repr(worker.memory_used_mb),
                "hardware": ",".join(worker.hardware),
                "heartbeat_at": repr(worker.heartbeat_at or time.time()),
                "draining": "1" if worker.draining else "0",
                "device": worker.device,
                "device_memory_mb": repr(worker.device_memory_mb),
                "cpus": repr(worker.cpus),
            },
        )
        for key in (w, self._k("inst", worker.id), self._k("depth", worker.id)):
            pipe.pexpire(key, self._ttl_ms)
        pipe.sadd(self._k("workers"), worker.id)
        self._mark(pipe, self._ttl_ms, "wid", worker.id)
        pipe.execute()
        self._stale()

    def heartbeat(self, worker_id: str, memory_used_mb: float) -> None:
        self._heartbeat_script(args=[self._p, worker_id, repr(time.time()), repr(memory_used_mb), self._ttl_ms])
        self._stale()

    def set_draining(self, worker_id: str, draining: bool) -> None:
        self._draining_script(keys=[self._k("w", worker_id)], args=["1" if draining else "0", self._p, worker_id])
        self._stale()

    def remove_worker(self, worker_id: str) -> None:
        pipe = self._redis.pipeline()
        pipe.delete(self._k("w", worker_id), self._k("inst", worker_id), self._k("depth", worker_id))
        pipe.srem(self._k("workers"), worker_id)
        pipe.srem(self._k("iw"), worker_id)
        self._mark(pipe, 0, "wid", worker_id)
        pipe.execute()
        self._forget_stats_script(args=[self._p, worker_id])
        with self._buffer_lock:
            for key in [k for k in list(self._local_depth) if k[0] == worker_id]:
                self._local_depth.pop(key, None)
                self._dirty_depth.pop(key, None)
        self._stale()

    def workers(self) -> list[WorkerState]:
        return list(self._refresh().workers)

    # -- instances ------------------------------------------------------------------------------
    def set_instance(self, instance: InstanceState) -> None:
        inst = self._k("inst", instance.worker_id)
        pipe = self._redis.pipeline()
        pipe.hset(inst, instance.variant_key, _instance_value(instance))
        pipe.pexpire(inst, self._ttl_ms)
        # Depths expire no earlier than instances: an expiry nothing tracks (``alive`` follows these two) would
        # leave refreshed snapshots with depths a full fetch no longer sees.
        pipe.pexpire(self._k("depth", instance.worker_id), self._ttl_ms)
        pipe.sadd(self._k("iw"), instance.worker_id)
        self._mark(pipe, self._ttl_ms, "i", instance.worker_id)
        pipe.execute()
        self._stale()

    def remove_instance(self, worker_id: str, variant_key: str) -> None:
        with self._buffer_lock:
            self._local_depth.pop((worker_id, variant_key), None)
            self._dirty_depth.pop((worker_id, variant_key), None)
        pipe = self._redis.pipeline()
        pipe.hdel(self._k("inst", worker_id), variant_key)
        pipe.hdel(self._k("depth", worker_id), variant_key)
        self._mark(pipe, 0, "id", worker_id)
        pipe.execute()
        self._stale()

    def instances(self, worker_id: str | None = None) -> list[InstanceState]:
        found = [i for group in self._refresh().instances.values() for i in group]
        return [i for i in found if worker_id is None or i.worker_id == worker_id]

    # -- per-query path -------------------------------------------------------------------------
    def set_queue_depth(self, worker_id: str, variant_key: str, depth: int) -> None:
        key = (worker_id, variant_key)
        with self._buffer_lock:
            self._local_depth[key] = depth
            self._dirty_depth[key] = depth
        self._wake.set()

    def note_local_depth(self, worker_id: str, variant_key: str, depth: int) -> None:
        """Rows this process itself has outstanding on a (remote) worker; never written to Redis.

        A front-end dispatching a burst would otherwise see the worker's depth only after the worker's
        next flush and the next snapshot refresh, and send the whole burst to one worker.
        """
        self._local_depth[(worker_id, variant_key)] = depth

    def record_query(self, record: QueryRecord) -> None:
        with self._buffer_lock:
            self._records.append(record)
        self._wake.set()

    def record_rejection(self, rejection: Rejection) -> None:
        with self._buffer_lock:
            self._rejections.append(rejection)
        self._wake.set()

    def record_pipeline_arrival(self, pipeline: str, at: float) -> None:
        with self._buffer_lock:
            self._arrivals.append((pipeline, at))
        self._wake.set()

    def pipeline_arrivals(self, pipeline: str, since: float) -> list[float]:
        self._flush()
        found = self._redis.zrangebyscore(self._k("parr", pipeline), since, "+inf", withscores=True)
        return [score for _member, score in found]

    def snapshot(self) -> LiveSnapshot:
        if time.monotonic() - self._snap_at < self._snapshot_ttl_s:
            return self._snap
        if not self._fetch_lock.acquire(blocking=self._snap_at == float("-inf")):
            return self._snap  # another thread is refreshing it right now
        try:
            if time.monotonic() - self._snap_at >= self._snapshot_ttl_s:
                self._fetch()
            return self._snap
        finally:
            self._fetch_lock.release()

    def _refresh(self) -> LiveSnapshot:
        """A snapshot fetched now (console and autoscaler reads, which must see their own writes)."""
        with self._fetch_lock:
            self._fetch()
            return self._snap

    def _stale(self) -> None:
        self._snap_at = float("-inf")

    def _mark(self, pipe: Any, ttl_ms: int, parts: str, *worker_ids: str) -> None:
        """Queue on ``pipe`` the note that ``parts`` (``w`` worker, ``i`` instances, ``d`` depths) of these workers
        changed: what incremental refreshes read (a heartbeat resends a worker's hash, not its 20 instances)."""
        self._mark_script(args=[self._p, ttl_ms, parts, *worker_ids], client=pipe)

    def _fetch(self) -> None:
        started = time.monotonic()
        if self._seq is not None and started - self._full_at < self._full_refresh_s:
            reply = self._delta_script(args=[self._p, self._seq, _CHANGE_LOG])
            if reply[0] >= 0:  # else {-1}: fetch everything
                self._apply(reply[0], reply[1], full=False)
                self._snap_at = started
                return
        seq, rows = self._snapshot_script(args=[self._p, _CHANGE_LOG])
        self._apply(seq, rows, full=True)
        self._full_at = self._snap_at = started

    def _apply(self, seq: int, rows: list[Any], *, full: bool) -> None:
        """Bring this process's copy up to ``seq`` with the workers in ``rows`` (every worker when ``full``).

        The snapshot object is replaced only when workers or instances changed (so the selector's per-snapshot
        index survives refreshes that only moved depths); depths are updated in place, as the interface allows.
        """
        if full:
            self._workers_by_id, self._inst_by_worker, self._depth_keys = {}, {}, {}
            self._shared_depth = {}
        shared, touched = self._shared_depth, set()
        workers_changed = full
        for row in rows:
            worker_id, parts, w, inst, depth = row if len(row) == 5 else (row[0], "wid", *row[1:])
            if "d" in parts:
                for key in self._depth_keys.pop(worker_id, ()):
                    shared.pop((worker_id, key), None)
                keys = []
                for key, value in _pairs(depth):
                    shared[(worker_id, key)] = int(value)
                    keys.append(key)
                if keys:
                    self._depth_keys[worker_id] = keys
            if "i" in parts:
                before = self._inst_by_worker.pop(worker_id, {})
                mine: dict[str, InstanceState] = {}
                for key, value in _pairs(inst):
                    replicas, memory, last_used = value.split("|")
                    mine[key] = InstanceState(worker_id, key, int(replicas), float(memory), float(last_used))
                if mine:
                    self._inst_by_worker[worker_id] = mine
                touched.update(k for k in before.keys() | mine.keys() if before.get(k) != mine.get(k))
            if "w" in parts:
                worker = _worker_from_hash(worker_id, dict(_pairs(w))) if w else None
                if self._workers_by_id.get(worker_id) != worker:
                    workers_changed = True
                    if worker is None:
                        del self._workers_by_id[worker_id]
                    else:
                        self._workers_by_id[worker_id] = worker
        self._seq = seq
        if full:
            by_variant: dict[str, list[InstanceState]] = {}
            for mine in self._inst_by_worker.values():
                for key, instance in mine.items():
                    by_variant.setdefault(key, []).append(instance)
            self._by_variant = {k: tuple(sorted(v, key=lambda i: i.worker_id)) for k, v in by_variant.items()}
        elif touched:
            changed = {row[0] for row in rows}
            self._by_variant = dict(self._by_variant)  # snapshots handed out keep the mapping they were given
            for key in touched:
                kept = [i for i in self._by_variant.get(key, ()) if i.worker_id not in changed]
                kept += [self._inst_by_worker[w][key] for w in changed if key in self._inst_by_worker.get(w, ())]
                if kept:
                    self._by_variant[key] = tuple(sorted(kept, key=lambda i: i.worker_id))
                else:
                    self._by_variant.pop(key, None)
        if not (full or workers_changed or touched):
            return
        snap = self._snap
        self._snap = LiveSnapshot(
            workers=tuple(sorted(self._workers_by_id.values(), key=lambda x: x.id))
            if workers_changed
            else snap.workers,
            instances=MappingProxyType(self._by_variant) if (full or touched) else snap.instances,
            queue_depth=_Depths(shared, self._local_depth) if full else snap.queue_depth,
        )

    # -- buffered writes ------------------------------------------------------------------------
    def _flush_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait()
            if self._closed.is_set():
                return
            time.sleep(self._flush_interval_s)  # coalesce a burst into one pipeline
            self._wake.clear()
            try:
                self._flush()
            except redis.RedisError:
                log.exception("could not flush live state to Redis; dropping one batch of updates")

    def _flush(self) -> None:
        """Send buffered depths and query records in one script call (one command, one round trip).

        Flushes are serialised so that a reader flushing before it reads (``variant_stats``) also waits
        for a background flush that already took records out of the buffer but has not sent them yet.
        """
        with self._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self._buffer_lock:
            depths, self._dirty_depth = self._dirty_depth, {}
            records, self._records = self._records, []
            rejections, self._rejections = self._rejections, []
            arrivals, self._arrivals = self._arrivals, []
        if not depths and not records and not rejections and not arrivals:
            return
        per_worker: dict[str, list[str]] = {}
        for (worker_id, key), depth in depths.items():
            per_worker.setdefault(worker_id, []).extend((key, str(depth)))
        by_variant: dict[str, list[str]] = {}
        by_instance: dict[tuple[str, str], list[str]] = {}
        for r in records:
            sample = _encode(r)
            by_variant.setdefault(r.variant_key, []).append(sample)
            by_instance.setdefault((r.worker, r.variant_key), []).append(sample)
        by_target: dict[str, list[str]] = {}
        for rejection in rejections:
            at, max_cost = rejection_sample_of(rejection)
            by_target.setdefault(rejection.target, []).append(f"{at!r}|{max_cost:.0f}")
        by_pipeline: dict[str, list[str]] = {}
        newest: dict[str, float] = {}
        for pipeline, at in arrivals:
            by_pipeline.setdefault(pipeline, []).extend((repr(at), f"{at!r}:{self._token}:{next(self._arrival_ids)}"))
            newest[pipeline] = max(newest.get(pipeline, at), at)
        update = {
            "d": list(per_worker.items()),
            "v": list(by_variant.items()),
            "i": [(worker_id, key, samples) for (worker_id, key), samples in by_instance.items()],
            "j": list(by_target.items()),
            "a": [(pipeline, flat, repr(newest[pipeline])) for pipeline, flat in by_pipeline.items()],
        }
        self._flush_script(
            args=[
                self._p,
                self._ttl_ms,
                WINDOW_SAMPLES,
                self._recent_max,
                orjson.dumps(update),
                PIPELINE_ARRIVALS_KEEP_S,
                PIPELINE_ARRIVALS_MAX,
                *(orjson.dumps(r.__dict__) for r in records),
            ]
        )

    def flush(self) -> None:
        """Write buffered updates now (reads of this process's own statistics call it first)."""
        self._flush()

    # -- reads ----------------------------------------------------------------------------------
    def variant_stats(self, window_s: float = 60.0) -> dict[str, VariantStats]:
        self._flush()
        keys = sorted(self._redis.smembers(self._k("variants")))
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(self._k("samples", key), 0, -1)
        pipe.hgetall(self._k("totals"))
        *lists, totals = pipe.execute()
        now = time.time()
        out: dict[str, VariantStats] = {}
        for key, raw in zip(keys, lists, strict=True):
            total = int(totals.get(key, 0))
            out[key] = stats_from_samples(key, _samples(raw, 5), total, now, window_s)
        return out

    def instance_stats(self, window_s: float = 60.0) -> dict[tuple[str, str], VariantStats]:
        self._flush()
        workers = sorted(self._redis.smembers(self._k("iworkers")))
        pipe = self._redis.pipeline(transaction=False)
        for worker_id in workers:
            pipe.smembers(self._k("ivariants", worker_id))
            pipe.hgetall(self._k("itotals", worker_id))
        listed = pipe.execute()
        instances: list[tuple[str, str, int]] = []
        for worker_id, keys, totals in zip(workers, listed[0::2], listed[1::2], strict=True):
            instances.extend((worker_id, key, int(totals.get(key, 0))) for key in sorted(keys))
        for worker_id, key, _total in instances:
            pipe.lrange(self._k("isamples", worker_id, key), 0, -1)
        lists = pipe.execute()
        now = time.time()
        return {
            (worker_id, key): stats_from_samples(key, _samples(raw, 5), total, now, window_s)
            for (worker_id, key, total), raw in zip(instances, lists, strict=True)
        }

    def rejection_stats(self, window_s: float = 60.0) -> dict[str, RejectionStats]:
        self._flush()
        targets = sorted(self._redis.smembers(self._k("rtargets")))
        pipe = self._redis.pipeline(transaction=False)
        for target in targets:
            pipe.lrange(self._k("rejects", target), 0, -1)
        pipe.hgetall(self._k("rtotals"))
        *lists, totals = pipe.execute()
        now = time.time()
        return {
            target: rejection_stats_from_samples(target, _samples(raw, 2), int(totals.get(target, 0)), now, window_s)
            for target, raw in zip(targets, lists, strict=True)
        }

    def recent_queries(self, limit: int = 100) -> list[QueryRecord]:
        if limit <= 0:
            return []
        self._flush()
        raw = self._redis.lrange(self._k("recent"), 0, limit - 1)
        return [QueryRecord(**orjson.loads(item)) for item in raw]

    # -- catalog changes across processes -------------------------------------------------------
    def catalog_changed(self, model_name: str) -> None:
        """Tell every other process that a model, its variants or profiles changed (a metadata listener).

        Never raises: the catalog change itself is already committed, and other front-ends still
        notice it through the version counter once Redis is reachable again.
        """
        pipe = self._redis.pipeline()
        pipe.incr(self._k("catalog"))
        pipe.publish(self._k("catalog"), f"{self._token}:{model_name}")
        try:
            pipe.execute()
        except redis.RedisError:
            log.warning("could not announce a change to %s through Redis", model_name, exc_info=True)

    def on_catalog_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(model_name)`` when another process changes the catalog.

        Pub/sub delivers changes at once; the ``catalog`` counter is polled every second as well, so a
        message lost while reconnecting still invalidates (with ``""`` as the model name).
        """
        self._catalog_callbacks.append(callback)
        if self._subscriber is None:
            self._subscriber = threading.Thread(target=self._subscribe_loop, name="catalog-subscriber", daemon=True)
            self._subscriber.start()

    def _notify(self, model_name: str) -> None:
        for callback in list(self._catalog_callbacks):
            try:
                callback(model_name)
            except Exception:
                log.exception("catalog change callback failed")

    def _subscribe_loop(self) -> None:
        seen: str | None = None
        while not self._closed.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._k("catalog"))
                seen = self._poll_version(seen)
                last_poll = time.monotonic()
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        token, _, model_name = str(message["data"]).partition(":")
                        if token != self._token:
                            self._notify(model_name)
                    if time.monotonic() - last_poll >= 1.0:
                        seen = self._poll_version(seen)
                        last_poll = time.monotonic()
            except redis.RedisError:
                log.warning("catalog subscription lost; reconnecting", exc_info=True)
                self._closed.wait(0.5)
            finally:
                pubsub.close()

    def _poll_version(self, seen: str | None) -> str | None:
        version = self._redis.get(self._k("catalog"))
        if seen is not None and version != seen:
            self._notify("")
        return version

    def delete_all(self) -> int:
        """Delete every key under this prefix (tests and ``reset`` tools); returns how many."""
        keys = list(self._redis.scan_iter(match=f"{self._p}*", count=1000))
        return int(self._redis.delete(*keys)) if keys else 0
