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
* ``catalog`` (counter) and the ``catalog`` channel — catalog changes, for candidate caches.

Per-query cost is kept off the query path: ``set_queue_depth`` and ``record_query`` only touch
local buffers, flushed by one background thread in a single pipeline every few milliseconds, and
``snapshot()`` serves a copy at most ``snapshot_ttl_s`` old, refreshed by one Lua call (one round
trip, however many workers). Depths this process wrote itself are overlaid on the shared ones, so
a process always sees its own latest depths without waiting for a round trip.
"""

from __future__ import annotations

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
return out
"""

# Heartbeat of a known worker only (like the in-memory state); refreshes every TTL of the worker.
_HEARTBEAT_LUA = """
local p, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. 'w:' .. id) == 0 then return 0 end
redis.call('HSET', p .. 'w:' .. id, 'heartbeat_at', ARGV[3], 'memory_used_mb', ARGV[4])
for _, k in ipairs({'w:', 'inst:', 'depth:'}) do redis.call('PEXPIRE', p .. k .. id, ARGV[5]) end
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
    ) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        self._p = f"{prefix}:"
        self._ttl_ms = max(1, int(worker_ttl_s * 1000))
        self._snapshot_ttl_s = snapshot_ttl_s
        self._flush_interval_s = flush_interval_s
        self._recent_max = recent
        self._snapshot_script = self._redis.register_script(_SNAPSHOT_LUA)
        self._heartbeat_script = self._redis.register_script(_HEARTBEAT_LUA)
        self._draining_script = self._redis.register_script(_SET_DRAINING_LUA)
        self._forget_stats_script = self._redis.register_script(_FORGET_INSTANCE_STATS_LUA)
        # Snapshot cache: one refresh at a time; other threads keep reading the previous one.
        self._local_depth: dict[tuple[str, str], int] = {}
        self._snap = LiveSnapshot(workers=(), instances=MappingProxyType({}), queue_depth=_Depths({}, {}))
        self._snap_at = float("-inf")
        self._fetch_lock = threading.Lock()
        # Write buffers, swapped out by the flusher thread.
        self._buffer_lock = threading.Lock()
        self._dirty_depth: dict[tuple[str, str], int] = {}
        self._records: list[QueryRecord] = []
        self._rejections: list[Rejection] = []
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
    def from_settings(cls, settings: Settings) -> RedisLiveState:
        """The live state named by ``INFAAS_REDIS_URL`` / ``INFAAS_REDIS_PREFIX``."""
        if not settings.redis_url:
            raise ValueError("INFAAS_REDIS_URL is not set")
        return cls(settings.redis_url, settings.redis_prefix, worker_ttl_s=settings.heartbeat_ttl_s)

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
            },
        )
        for key in (w, self._k("inst", worker.id), self._k("depth", worker.id)):
            pipe.pexpire(key, self._ttl_ms)
        pipe.sadd(self._k("workers"), worker.id)
        pipe.execute()
        self._stale()

    def heartbeat(self, worker_id: str, memory_used_mb: float) -> None:
        self._heartbeat_script(args=[self._p, worker_id, repr(time.time()), repr(memory_used_mb), self._ttl_ms])
        self._stale()

    def set_draining(self, worker_id: str, draining: bool) -> None:
        self._draining_script(keys=[self._k("w", worker_id)], args=["1" if draining else "0"])
        self._stale()

    def remove_worker(self, worker_id: str) -> None:
        pipe = self._redis.pipeline()
        pipe.delete(self._k("w", worker_id), self._k("inst", worker_id), self._k("depth", worker_id))
        pipe.srem(self._k("workers"), worker_id)
        pipe.srem(self._k("iw"), worker_id)
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
        pipe.sadd(self._k("iw"), instance.worker_id)
        pipe.execute()
        self._stale()

    def remove_instance(self, worker_id: str, variant_key: str) -> None:
        with self._buffer_lock:
            self._local_depth.pop((worker_id, variant_key), None)
            self._dirty_depth.pop((worker_id, variant_key), None)
        pipe = self._redis.pipeline()
        pipe.hdel(self._k("inst", worker_id), variant_key)
        pipe.hdel(self._k("depth", worker_id), variant_key)
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

    def _fetch(self) -> None:
        started = time.monotonic()
        rows = self._snapshot_script(args=[self._p])
        workers: list[WorkerState] = []
        by_variant: dict[str, list[InstanceState]] = {}
        shared: dict[tuple[str, str], int] = {}
        for worker_id, w, inst, depth in rows:
            if w:
                workers.append(_worker_from_hash(worker_id, dict(_pairs(w))))
            for key, value in _pairs(inst):
                replicas, memory, last_used = value.split("|")
                by_variant.setdefault(key, []).append(
                    InstanceState(worker_id, key, int(replicas), float(memory), float(last_used))
                )
            for key, value in _pairs(depth):
                shared[(worker_id, key)] = int(value)
        workers.sort(key=lambda x: x.id)
        self._snap = LiveSnapshot(
            workers=tuple(workers),
            instances=MappingProxyType({k: tuple(sorted(v, key=lambda i: i.worker_id)) for k, v in by_variant.items()}),
            queue_depth=_Depths(shared, self._local_depth),
        )
        self._snap_at = started

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
        """Send buffered depths and query records in one pipeline (one round trip).

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
        if not depths and not records and not rejections:
            return
        pipe = self._redis.pipeline(transaction=False)
        per_worker: dict[str, dict[str, int]] = {}
        for (worker_id, key), depth in depths.items():
            per_worker.setdefault(worker_id, {})[key] = depth
        for worker_id, mapping in per_worker.items():
            pipe.hset(self._k("depth", worker_id), mapping=mapping)
            pipe.pexpire(self._k("depth", worker_id), self._ttl_ms)
        if records:
            by_variant: dict[str, list[str]] = {}
            by_instance: dict[tuple[str, str], list[str]] = {}
            for r in records:
                sample = _encode(r)
                by_variant.setdefault(r.variant_key, []).append(sample)
                by_instance.setdefault((r.worker, r.variant_key), []).append(sample)
            for key, samples in by_variant.items():
                pipe.lpush(self._k("samples", key), *samples)
                pipe.ltrim(self._k("samples", key), 0, WINDOW_SAMPLES - 1)
                pipe.hincrby(self._k("totals"), key, len(samples))
            pipe.sadd(self._k("variants"), *by_variant)
            for (worker_id, key), samples in by_instance.items():
                pipe.lpush(self._k("isamples", worker_id, key), *samples)
                pipe.ltrim(self._k("isamples", worker_id, key), 0, WINDOW_SAMPLES - 1)
                pipe.hincrby(self._k("itotals", worker_id), key, len(samples))
                pipe.sadd(self._k("ivariants", worker_id), key)
            pipe.sadd(self._k("iworkers"), *{worker_id for worker_id, _key in by_instance})
            pipe.lpush(self._k("recent"), *(orjson.dumps(r.__dict__) for r in records))
            pipe.ltrim(self._k("recent"), 0, self._recent_max - 1)
        if rejections:
            by_target: dict[str, list[str]] = {}
            for rejection in rejections:
                at, max_cost = rejection_sample_of(rejection)
                by_target.setdefault(rejection.target, []).append(f"{at!r}|{max_cost:.0f}")
            for target, samples in by_target.items():
                pipe.lpush(self._k("rejects", target), *samples)
                pipe.ltrim(self._k("rejects", target), 0, WINDOW_SAMPLES - 1)
                pipe.hincrby(self._k("rtotals"), target, len(samples))
            pipe.sadd(self._k("rtargets"), *by_target)
        pipe.execute()

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
