"""Selection and live state at scale (issue 20 point 1): synthetic catalogs and fleets up to 10,000 variants
and 1,000 workers, measured in one run per size.

Per size (``variants`` = models × 10 variants, in tasks of 20 models; ``workers`` with 20 loaded instances
each, half of them with rows outstanding):

* ``selection``: decision time per query of ``infaas.fast_selector.fast_select`` (what the engine calls) and of
  the reference ``infaas.selector.select``, for model queries (a Zipf-popular model, mixed needs: 10% without a
  budget, 10% below the fastest profile, the rest 1-10x the median tail; some accuracy floors, some ``max_cost``,
  some ``reject``, batches 1-8) and task queries over the largest task (every ready variant of its 20 models).
  Wall and thread CPU time (p50/p99), the CPU time also per outcome (served, at risk, each error): on a shared
  machine the wall p99 is mostly other processes' scheduler quanta. The reference is timed on as many queries
  as fit ``--reference-seconds``; every query timed on both must get the same decision (``mismatches``).
  ``index_build``: the per-snapshot worker index, paid once per new workers tuple.
* ``redis``: with the real Redis (``--redis-url``, a spare db; the benchmark's keys are deleted after) holding
  the fleet: ``full_refresh`` (a front-end fetching everything: its first refresh, and every ``full_refresh_s``)
  and ``incremental_refresh`` (after what 5 ms brings at 1,000 workers: 5 heartbeats and 5 depth reports); then
  at steady state one front-end serving queries as the engine does (snapshot, select, depth up, depth down,
  record) while every worker heartbeats once a second: Redis commands and round trips per query, counted in the
  client, for the selection path (snapshot refreshes) apart from accounting (the background flush of depths and
  query records).
* ``fleet_load``: heartbeats and depth reports of simulated workers (each heartbeat the real Lua call, each depth
  report the flush a worker's live state sends: one script call): Redis commands and server µs per call (``INFO
  commandstats`` deltas: server-wide, so other clients' calls in the same window count too; a script's time, which
  includes the commands it runs), and from them the load of the fleet: heartbeats every second, and a busy worker
  reporting depths every ``DEPTH_REPORT_S`` (and, for comparison, at the front-ends' 2 ms).

Each cost gets its growth curve and a slope (log-log least squares against the size: 1 is linear).

    python benchmarks/scale.py [--sizes 10:1,100:10,1000:100,3000:300,10000:1000] [--queries 2000]
                               [--reference-seconds 20] [--redis-url redis://127.0.0.1:6379/15]

Writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infaas.calibration import Calibration  # noqa: E402
from infaas.catalog import ModelInfo, ProfileInfo, VariantInfo  # noqa: E402
from infaas.config import DEFAULT_PRICES  # noqa: E402
from infaas.errors import InfaasError  # noqa: E402
from infaas.fast_selector import FastSelector, _WorkerIndex  # noqa: E402
from infaas.live_state import InstanceState, LiveSnapshot, QueryRecord, WorkerState  # noqa: E402
from infaas.live_state.redis import RedisLiveState  # noqa: E402
from infaas.selector import Candidate, Requirements, Selection, select  # noqa: E402
from infaas.worker.server import DEPTH_REPORT_S  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
VARIANTS_PER_MODEL = 10
MODELS_PER_TASK = 20
INSTANCES_PER_WORKER = 20
# (name, hardware, threads, latency factor, memory factor, accuracy drop, fidelity)
KINDS = (
    ("fp32-t1", "cpu", 1, 1.0, 1.0, 0.0, 1.0),
    ("fp32-t2", "cpu", 2, 0.55, 1.0, 0.0, 1.0),
    ("fp32-t4", "cpu", 4, 0.32, 1.0, 0.0, 1.0),
    ("fp32-all", "cpu", 0, 0.2, 1.0, 0.0, 1.0),
    ("int8-t1", "cpu", 1, 0.45, 0.3, 0.01, 0.985),
    ("int8-t2", "cpu", 2, 0.26, 0.3, 0.01, 0.985),
    ("int8-t4", "cpu", 4, 0.16, 0.3, 0.01, 0.985),
    ("gpu-fp32", "gpu", 1, 0.05, 1.2, 0.0, 1.0),
    ("gpu-fp16", "gpu", 1, 0.03, 0.7, 0.002, 0.998),
    ("gpu-int8", "gpu", 1, 0.02, 0.4, 0.01, 0.985),
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Fleet:
    candidates: dict[str, tuple[Candidate, ...]]  # model -> its ready variants
    tasks: dict[str, list[str]]  # task -> models
    live: LiveSnapshot


def build_fleet(n_variants: int, n_workers: int, rng: random.Random) -> Fleet:
    """A synthetic catalog and live state; profiles scale a per-model base latency by the variant's kind."""
    n_models = max(1, n_variants // VARIANTS_PER_MODEL)
    n_tasks = max(1, n_models // MODELS_PER_TASK)
    candidates: dict[str, tuple[Candidate, ...]] = {}
    tasks: dict[str, list[str]] = {}
    for m in range(n_models):
        name, task = f"model-{m}", f"task-{m % n_tasks}"
        tasks.setdefault(task, []).append(name)
        base_ms, memory, acc = rng.lognormvariate(math.log(8), 0.8), rng.uniform(100, 1500), rng.uniform(0.7, 0.95)
        info = ModelInfo(
            m, name, task, "onnx", (), (), 17, None, 16, "bench", True, "ready", None, f"k{m}", None, 0, NOW
        )
        variants = []
        for v, (kind, hw, threads, lat, mem, drop, fid) in enumerate(KINDS[:VARIANTS_PER_MODEL]):
            profiles = tuple(
                ProfileInfo(
                    batch_size=b,
                    threads=threads,
                    load_ms=memory * 0.5 + 50,
                    latency_p50_ms=base_ms * lat * (1 + 0.25 * (b - 1)),
                    latency_p99_ms=base_ms * lat * (1 + 0.25 * (b - 1)) * 1.3,
                    throughput_per_s=b * 1000 / (base_ms * lat * (1 + 0.25 * (b - 1))),
                    memory_mb=memory * mem,
                    accuracy=acc - drop,
                    fidelity=fid,
                    fidelity_metric="agreement",
                )
                for b in (1, 4, 16)
            )
            variant = VariantInfo(
                id=m * 100 + v, model_name=name, name=kind, kind=kind, precision="fp32", hardware=hw, threads=threads,
                providers=(), artifact_key="a", status="ready", reason=None, profiles=profiles,
            )  # fmt: skip
            variants.append(Candidate.of(info, variant))
        candidates[name] = tuple(variants)
    every = [c for cs in candidates.values() for c in cs]
    weights = [1.0 / (i + 1) for i in range(len(every))]  # Zipf popularity of what is loaded
    rng.shuffle(every)
    workers, instances, depth = [], {}, {}
    for w in range(n_workers):
        hardware = ("cpu", "gpu") if rng.random() < 0.2 else ("cpu",)
        placed, used = set(), 0.0
        for c in rng.choices(every, weights, k=INSTANCES_PER_WORKER * 3):
            if len(placed) == INSTANCES_PER_WORKER:
                break
            if c.key in placed or c.variant.hardware not in hardware:
                continue
            placed.add(c.key)
            used += c.curve.memory_mb
            instances.setdefault(c.key, []).append(
                InstanceState(f"w{w}", c.key, rng.choice((1, 1, 2)), c.curve.memory_mb)
            )
            if rng.random() < 0.5:
                depth[(f"w{w}", c.key)] = min(64, int(rng.expovariate(1 / 6)))
        workers.append(
            WorkerState(
                f"w{w}", f"http://w{w}", rng.choice((4, 8, 16)), 32_000.0, used + rng.uniform(0, 2000), hardware
            )
        )
    live = LiveSnapshot(tuple(workers), {k: tuple(v) for k, v in instances.items()}, depth)
    return Fleet(candidates, tasks, live)


def queries(fleet: Fleet, n: int, rng: random.Random, task: str | None) -> list[tuple[Requirements, list[Candidate]]]:
    """Mixed needs over a Zipf-popular model (``task`` None) or over every model of ``task``."""
    models = list(fleet.candidates)
    weights = [1.0 / (i + 1) for i in range(len(models))]
    out = []
    for _ in range(n):
        if task is None:
            model = rng.choices(models, weights)[0]
            candidates = list(fleet.candidates[model])
        else:
            candidates = [c for m in fleet.tasks[task] for c in fleet.candidates[m]]  # as the engine builds it
        tails = sorted(c.curve.tail_ms(1) for c in candidates)
        r = rng.random()  # 10% no budget, 10% below the fastest profile (at risk or rejected), else 1-10x the median
        budget = None if r < 0.1 else tails[0] * 0.5 if r < 0.2 else tails[len(tails) // 2] * rng.uniform(1, 10)
        out.append(
            (
                Requirements(
                    model=None if task else candidates[0].model.name,
                    task=task,
                    latency_ms=budget,
                    min_accuracy=rng.choice((0.0, 0.0, 0.0, 0.8)),
                    max_cost=rng.choice((None,) * 9 + (2e-6,)),
                    batch=rng.choice((1, 1, 1, 4, 8)),
                    on_infeasible=rng.choice(("best_effort",) * 4 + ("reject",)),
                ),
                candidates,
            )
        )
    return out


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def timed(choose: Callable[..., Selection], *args: Any) -> tuple[float, float, object]:
    """Wall and thread CPU seconds of one decision, and the decision (or the error's type and message).

    The CPU time is what the code costs; the wall time adds whatever the machine's other processes took from it
    (on a shared 2-core machine, a scheduler quantum lands in the wall p99)."""
    start, cpu = time.perf_counter(), time.thread_time()
    try:
        out: object = choose(*args)
    except InfaasError as exc:
        out = (type(exc).__name__, str(exc))
    return time.perf_counter() - start, time.thread_time() - cpu, out


def decision(out: object) -> object:
    if isinstance(out, Selection):
        return (out.variant.key, out.worker, out.estimated_ms, out.estimated_cost, out.loaded, out.slo_at_risk)
    return out


def calibration_for(fleet: Fleet, rng: random.Random) -> Calibration:
    """A calibration that has seen queries on a sample of the loaded placements (factors around 1)."""
    calibration = Calibration()
    placements = [(k, i.worker_id) for k, insts in fleet.live.instances.items() for i in insts]
    for key, worker in rng.sample(placements, min(len(placements), 2000)):
        for _ in range(3):
            calibration.observe(key, worker, 10.0, 10.0 * rng.uniform(0.8, 1.6) + 0.3, worker_ms=10.0, budget_ms=None)
    return calibration


def measure_selection(fleet: Fleet, n: int, reference_s: float, rng: random.Random) -> dict[str, Any]:
    prices = dict(DEFAULT_PRICES)
    correct = calibration_for(fleet, rng).correct
    largest = max(fleet.tasks, key=lambda t: len(fleet.tasks[t]))
    out: dict[str, Any] = {}
    for kind, task in (("model", None), ("task", largest)):
        qs = queries(fleet, n, rng, task)
        selector = FastSelector()
        fast = [timed(selector.select, req, cands, fleet.live, prices, (), correct) for req, cands in qs]
        ref: list[tuple[float, object]] = []
        deadline = time.monotonic() + reference_s
        for req, cands in qs:
            if time.monotonic() > deadline and len(ref) >= 5:
                break
            ref.append(timed(select, req, cands, fleet.live, prices, (), correct))
        mismatches = sum(decision(f[2]) != decision(r[2]) for f, r in zip(fast, ref, strict=False))
        by_outcome: dict[str, list[float]] = {}
        for _, cpu, o in fast:
            name = ("at_risk" if o.slo_at_risk else "served") if isinstance(o, Selection) else o[0]  # type: ignore[index]
            by_outcome.setdefault(name, []).append(cpu)
        out[kind] = {
            "candidates_per_query": float(np.mean([len(c) for _, c in qs])),
            "fast": percentiles([t for t, _, _ in fast]),
            "fast_cpu": percentiles([c for _, c, _ in fast]),
            "fast_cpu_by_outcome": {name: percentiles(cpu) for name, cpu in by_outcome.items()},
            "reference": percentiles([t for t, _, _ in ref]),
            "reference_cpu": percentiles([c for _, c, _ in ref]),
            "mismatches": mismatches,
            "compared": len(ref),
        }
    builds = []
    for _ in range(20):
        workers = tuple(replace(w) for w in fleet.live.workers)  # a new snapshot: new objects, as a refresh makes
        start = time.perf_counter()
        _WorkerIndex(workers)
        builds.append(time.perf_counter() - start)
    out["index_build"] = percentiles(builds)
    return out


class Counter:
    """Redis commands and round trips this process sends (a pipeline: its commands, one round trip), per thread:
    the query thread's (snapshot refreshes) apart from the flusher's (accounting) and the simulated workers'."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        single, execute = redis.Redis.execute_command, redis.client.Pipeline.execute
        counter = self

        def counted_single(client: Any, *args: Any, **kwargs: Any) -> Any:
            counter.add(1, 1)
            return single(client, *args, **kwargs)

        def counted_pipeline(pipe: Any, raise_on_error: bool = True) -> Any:
            counter.add(len(pipe.command_stack), 1 if pipe.command_stack else 0)
            return execute(pipe, raise_on_error)

        redis.Redis.execute_command = counted_single  # type: ignore[method-assign]
        redis.client.Pipeline.execute = counted_pipeline  # type: ignore[method-assign]

    def add(self, commands: int, trips: int) -> None:
        with self._lock:
            count = self.counts.setdefault(threading.current_thread().name, [0, 0])
            count[0] += commands
            count[1] += trips

    def read(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {name: (c, t) for name, (c, t) in self.counts.items()}


def populate(state: RedisLiveState, live: LiveSnapshot) -> None:
    """The fleet as its workers would write it (registration, one write per loaded instance, reported depths)."""
    for w in live.workers:
        state.register_worker(w)
    for insts in live.instances.values():
        for inst in insts:
            state.set_instance(inst)
    for insts in live.instances.values():
        for inst in insts:
            state.set_queue_depth(inst.worker_id, inst.variant_key, live.depth(inst.worker_id, inst.variant_key))
    state.flush()


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """``INFO commandstats``: per command, (calls, server µs)."""
    raw = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in raw.items()}


def server_cost(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> tuple[int, int, int]:
    """Commands (those scripts run included), script calls and server µs between two ``commandstats`` (without
    the INFO calls themselves). A script's time includes the commands it runs, which ``commandstats`` also times
    on their own: when scripts ran, the server time is theirs alone (every call measured here is a script)."""
    keys = [k for k in after if k != "info"]
    delta = {k: (after[k][0] - before.get(k, (0, 0))[0], after[k][1] - before.get(k, (0, 0))[1]) for k in keys}
    scripts = [delta[k] for k in ("evalsha", "eval") if k in delta]
    calls = sum(c for c, _ in delta.values())
    if scripts:
        return calls, sum(c for c, _ in scripts), sum(us for _, us in scripts)
    return calls, calls, sum(us for _, us in delta.values())


class Heartbeats:
    """Simulated workers heartbeating (the real Lua call) every ``period_s``, spread evenly, from one thread."""

    def __init__(self, url: str, prefix: str, workers: list[str], period_s: float) -> None:
        self._state = RedisLiveState(url, prefix, worker_ttl_s=600.0)
        self._workers, self._period_s = workers, period_s
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="simulated-workers", daemon=True)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._state.close()

    def _run(self) -> None:
        start, gap = time.perf_counter(), self._period_s / len(self._workers)
        while not self._stop.is_set():
            due = int((time.perf_counter() - start) / gap)
            while self.sent < due and not self._stop.is_set():
                self._state.heartbeat(self._workers[self.sent % len(self._workers)], 1000.0)
                self.sent += 1
            time.sleep(min(gap, 0.002))


def measure_redis(fleet: Fleet, state: RedisLiveState, url: str, counter: Counter, seconds: float) -> dict[str, Any]:
    """Snapshot refresh (full and incremental) and, at steady state, Redis commands per query."""
    full = []
    for _ in range(10):
        state._seq = None  # forget the copy: the next refresh fetches everything
        start = time.perf_counter()
        state._refresh()
        full.append(time.perf_counter() - start)
    snap = state.snapshot()
    fetched = {"workers": len(snap.workers), "instances": sum(len(v) for v in snap.instances.values())}
    ids = [w.id for w in fleet.live.workers]
    rng = random.Random(2)
    incremental = []
    for _ in range(100):  # what 5 ms brings at 1,000 workers: 5 heartbeats and 5 depth reports
        for w in rng.sample(ids, min(5, len(ids))):
            state.heartbeat(w, 1000.0)
        for w in rng.sample(ids, min(5, len(ids))):
            state.set_queue_depth(w, rng.choice(list(fleet.live.instances)), rng.randint(0, 9))
        state.flush()
        start = time.perf_counter()
        state._refresh()
        incremental.append(time.perf_counter() - start)
    # Steady state: one front-end serving queries as the engine does while every worker heartbeats once a second.
    prices, selector = dict(DEFAULT_PRICES), FastSelector()
    qs = queries(fleet, 5000, random.Random(1), None)
    snapshot_s, select_s = [], []
    with Heartbeats(url, state.prefix.rstrip(":"), ids, 1.0):
        state.flush()
        before = counter.read()
        served, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            req, cands = qs[served % len(qs)]
            served += 1
            t0 = time.perf_counter()
            live = state.snapshot()
            t1 = time.perf_counter()
            try:
                chosen = selector.select(req, cands, live, prices)
            except InfaasError:
                continue
            finally:
                snapshot_s.append(t1 - t0)
                select_s.append(time.perf_counter() - t1)
            key, worker = chosen.candidate.key, chosen.worker
            state.set_queue_depth(worker, key, 1)
            state.set_queue_depth(worker, key, 0)
            state.record_query(
                QueryRecord(time.time(), "t", chosen.variant.model_name, chosen.variant.name, worker, 1, req.latency_ms,
                            0.0, None, chosen.estimated_ms, chosen.estimated_ms, 0.0, chosen.estimated_cost, False, "")
            )  # fmt: skip
        elapsed = time.perf_counter() - start
        state.flush()
        after = counter.read()

    def per_query(thread: str) -> dict[str, float]:
        c0, t0 = before.get(thread, (0, 0))
        c1, t1 = after.get(thread, (0, 0))
        return {"commands": (c1 - c0) / served, "round_trips": (t1 - t0) / served}

    steady = {
        "queries": served,
        "queries_per_s": served / elapsed,
        "selection_path": per_query(threading.current_thread().name),  # snapshot refreshes
        "accounting": per_query("live-state-flush"),  # depths and query records, flushed in the background
        "snapshot_call": percentiles(snapshot_s),
        "selection_call": percentiles(select_s),
    }
    return {
        "full_refresh": percentiles(full),
        "incremental_refresh": percentiles(incremental),
        "fetched": fetched,
        "steady_state": steady,
    }


def measure_fleet_load(fleet: Fleet, state: RedisLiveState, heartbeat_s: float, report_s: float) -> dict[str, Any]:
    """Server CPU per heartbeat and per depth report, so that the load of the whole fleet is rate × cost.

    A busy worker's depths change all the time, so it reports at every flush: every ``report_s`` (the workers'
    ``DEPTH_REPORT_S``), and at the 2 ms front-ends flush at, for comparison."""
    admin = state._redis
    workers = [w.id for w in fleet.live.workers]
    keys: dict[str, list[str]] = {}
    for key, insts in fleet.live.instances.items():
        for inst in insts:
            keys.setdefault(inst.worker_id, []).append(key)
    before = commandstats(admin)
    start = time.perf_counter()
    for w in workers:
        state.heartbeat(w, 1000.0)
    beat_wall = (time.perf_counter() - start) / len(workers)
    middle = commandstats(admin)
    start = time.perf_counter()
    for w in workers:  # one flush of a busy worker: three changed depths in one call
        for k in keys.get(w, [])[:3]:
            state.set_queue_depth(w, k, 2)
        state.flush()
    report_wall = (time.perf_counter() - start) / len(workers)
    after = commandstats(admin)
    n = len(workers)
    beat_commands, beat_calls, beat_us = server_cost(before, middle)
    report_commands, report_calls, report_us = server_cost(middle, after)
    return {
        "workers": n,
        "heartbeat": {
            "client_commands_per_call": beat_calls / n,
            "server_commands_per_call": beat_commands / n,
            "server_us_per_call": beat_us / n,
            "client_wall_us_per_call": beat_wall * 1e6,
            "fleet_calls_per_s": n / heartbeat_s,
            "fleet_redis_core_share": beat_us / heartbeat_s / 1e6,
        },
        "depth_report": {
            "interval_s": report_s,
            "client_commands_per_call": report_calls / n,
            "server_commands_per_call": report_commands / n,
            "server_us_per_call": report_us / n,
            "client_wall_us_per_call": report_wall * 1e6,
            "busy_fleet_calls_per_s": n / report_s,
            "busy_fleet_redis_core_share": report_us / report_s / 1e6,
            "busy_fleet_redis_core_share_at_2ms": report_us / 0.002 / 1e6,
        },
    }


def slope(sizes: list[float], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(size): 1 is linear growth, 0 is flat."""
    pairs = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if s > 0 and v > 0]
    if len(pairs) < 2:
        return None
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10:1,100:10,1000:100,3000:300,10000:1000", help="variants:workers,...")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--reference-seconds", type=float, default=20.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--steady-seconds", type=float, default=3.0)
    args = parser.parse_args()
    sizes = [tuple(int(x) for x in s.split(":")) for s in args.sizes.split(",")]
    counter = Counter()
    rows = []
    for n_variants, n_workers in sizes:
        rng = random.Random(n_variants * 7919 + n_workers)
        built = time.perf_counter()
        fleet = build_fleet(n_variants, n_workers, rng)
        # The catalog and fleet live as long as a server does: frozen out of the collector, a full collection
        # of their millions of objects does not land as a pause on whichever query triggers it.
        gc.collect()
        gc.freeze()
        row: dict[str, Any] = {
            "variants": sum(len(c) for c in fleet.candidates.values()),
            "workers": n_workers,
            "instances": sum(len(v) for v in fleet.live.instances.values()),
            "queue_depths": sum(1 for v in fleet.live.queue_depth.values() if v),
            "build_s": time.perf_counter() - built,
        }
        row["selection"] = measure_selection(fleet, args.queries, args.reference_seconds, rng)
        row["selection_p99_ms"] = max(row["selection"][k]["fast"]["p99_ms"] for k in ("model", "task"))
        row["selection_p99_cpu_ms"] = max(row["selection"][k]["fast_cpu"]["p99_ms"] for k in ("model", "task"))
        state = RedisLiveState(args.redis_url, f"scale-bench-{uuid.uuid4().hex[:8]}", worker_ttl_s=600.0)
        try:
            populate(state, fleet.live)
            row["redis"] = measure_redis(fleet, state, args.redis_url, counter, args.steady_seconds)
            row["fleet_load"] = measure_fleet_load(fleet, state, 1.0, DEPTH_REPORT_S)
        finally:
            state.delete_all()
            state.close()
        rows.append(row)
        sel, red = row["selection"], row["redis"]
        print(
            f"{row['variants']:>6} variants {n_workers:>5} workers: "
            f"model p99 {sel['model']['fast']['p99_ms']:.3f} ms cpu {sel['model']['fast_cpu']['p99_ms']:.3f} "
            f"(ref {sel['model']['reference']['p99_ms']:.3f}), task p99 {sel['task']['fast']['p99_ms']:.3f} ms "
            f"cpu {sel['task']['fast_cpu']['p99_ms']:.3f} (ref {sel['task']['reference']['p99_ms']:.1f}), "
            f"mismatches {sel['model']['mismatches'] + sel['task']['mismatches']}, "
            f"index {sel['index_build']['p50_ms']:.3f} ms, refresh full {red['full_refresh']['p50_ms']:.1f} ms "
            f"incremental {red['incremental_refresh']['p50_ms']:.2f} ms, selection-path cmds/query "
            f"{red['steady_state']['selection_path']['commands']:.3f}, accounting cmds/query "
            f"{red['steady_state']['accounting']['commands']:.2f}",
            flush=True,
        )
    x = [float(r["variants"] * r["workers"]) for r in rows]
    w = [float(r["workers"]) for r in rows]
    vw = "variants x workers"
    curves = {
        "model_fast_p99_ms": ([r["selection"]["model"]["fast"]["p99_ms"] for r in rows], vw, x),
        "task_fast_p99_ms": ([r["selection"]["task"]["fast"]["p99_ms"] for r in rows], vw, x),
        "model_fast_p99_cpu_ms": ([r["selection"]["model"]["fast_cpu"]["p99_ms"] for r in rows], vw, x),
        "task_fast_p99_cpu_ms": ([r["selection"]["task"]["fast_cpu"]["p99_ms"] for r in rows], vw, x),
        "model_reference_p50_ms": ([r["selection"]["model"]["reference"]["p50_ms"] for r in rows], vw, x),
        "task_reference_p50_ms": ([r["selection"]["task"]["reference"]["p50_ms"] for r in rows], vw, x),
        "index_build_p50_ms": ([r["selection"]["index_build"]["p50_ms"] for r in rows], "workers", w),
        "full_refresh_p50_ms": ([r["redis"]["full_refresh"]["p50_ms"] for r in rows], "workers", w),
        "incremental_refresh_p50_ms": ([r["redis"]["incremental_refresh"]["p50_ms"] for r in rows], "workers", w),
        "selection_path_commands_per_query": (
            [r["redis"]["steady_state"]["selection_path"]["commands"] for r in rows], "workers", w),
        "accounting_commands_per_query": (
            [r["redis"]["steady_state"]["accounting"]["commands"] for r in rows], "workers", w),
    }  # fmt: skip
    largest = rows[-1]
    steady = largest["redis"]["steady_state"]
    result = {
        "benchmark": "scale",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version()},
        "gc_frozen_after_building_each_fleet": True,
        "args": vars(args),
        "sizes": rows,
        "growth": {
            name: {"against": against, "values": values, "loglog_slope": slope(xs, values)}
            for name, (values, against, xs) in curves.items()
        },
        "targets": {
            "selection_p99_ms_le_1": largest["selection_p99_ms"] <= 1.0,
            "selection_p99_cpu_ms_le_1": largest["selection_p99_cpu_ms"] <= 1.0,
            "selection_path_commands_per_query_le_1": steady["selection_path"]["commands"] <= 1.0,
            "all_commands_per_query_le_1": steady["selection_path"]["commands"] + steady["accounting"]["commands"]
            <= 1.0,
            "all_round_trips_per_query_le_1": steady["selection_path"]["round_trips"]
            + steady["accounting"]["round_trips"]
            <= 1.0,
            "incremental_refresh_p99_ms_le_10": largest["redis"]["incremental_refresh"]["p99_ms"] <= 10.0,
            "busy_fleet_heartbeats_and_depth_reports_le_half_a_redis_core": largest["fleet_load"]["heartbeat"][
                "fleet_redis_core_share"
            ]
            + largest["fleet_load"]["depth_report"]["busy_fleet_redis_core_share"]
            <= 0.5,
            "full_refresh_p50_ms_le_10": largest["redis"]["full_refresh"]["p50_ms"] <= 10.0,
            "smallest_fast_not_slower": rows[0]["selection"]["model"]["fast_cpu"]["p50_ms"]
            <= rows[0]["selection"]["model"]["reference_cpu"]["p50_ms"],
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
