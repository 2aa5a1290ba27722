"""Selection and live state at scale (issue 20 point 1): synthetic catalogs and fleets up to 10,000 variants
and 1,000 workers, measured in one run per size.

Per size (``variants`` = models × 10 variants, in tasks of 20 models; ``workers`` with 20 loaded instances
each, half of them with rows outstanding):

* ``selection``: decision time per query (p50/p99) of ``infaas.fast_selector.fast_select`` (what the engine
  calls) and of the reference ``infaas.selector.select``, for model queries (a Zipf-popular model, mixed
  needs: budgets from tight to loose, some accuracy floors, some ``max_cost``, some ``reject``, batches 1-8)
  and task queries over the largest task (every ready variant of its 20 models); the reference is timed on as
  many queries as fit a time box at the large sizes, and every query timed on both must get the same
  decision (``mismatches``). ``index_build_ms``: building the per-snapshot worker index, paid once per
  new snapshot (per refresh with Redis, per change in memory).
* ``redis``: with the real Redis (``--redis-url``, a spare db; the benchmark's keys are deleted after) holding
  the fleet: ``snapshot_refresh_ms`` (p50/p99 of one full fetch, ``RedisLiveState`` as a front-end runs it),
  and at steady state, one front-end serving queries as the engine does (snapshot, select, depth up, depth
  down, record): Redis commands and round trips per query, counted in the client.
* ``fleet_load``: heartbeats and depth reports of simulated worker clients (each heartbeat the real Lua call,
  each depth report the flush pipeline a worker's live state sends): Redis server CPU per call (from
  ``INFO commandstats``, this benchmark's calls only), so the load 1,000 workers put on Redis is commands/s and
  the share of one Redis core they take (heartbeat every ``heartbeat_s``; a busy worker reports depths at
  most once per flush interval, 2 ms).

Each cost gets its growth curve and a slope (log-log least squares against the size: 1 is linear).

    python benchmarks/scale.py [--sizes 10:1,100:10,1000:100,3000:300,10000:1000] [--queries 2000]
                               [--reference-seconds 20] [--redis-url redis://127.0.0.1:6379/15]

Writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
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


def timed(choose: Callable[..., Selection], *args: Any) -> tuple[float, object]:
    start = time.perf_counter()
    try:
        out: object = choose(*args)
    except InfaasError as exc:
        out = (type(exc).__name__, str(exc))
    return time.perf_counter() - start, out


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
        mismatches = sum(decision(f[1]) != decision(r[1]) for f, r in zip(fast, ref, strict=False))
        outcomes: dict[str, int] = {}
        for _, o in fast:
            name = ("at_risk" if o.slo_at_risk else "served") if isinstance(o, Selection) else o[0]  # type: ignore[index]
            outcomes[name] = outcomes.get(name, 0) + 1
        out[kind] = {
            "candidates_per_query": float(np.mean([len(c) for _, c in qs])),
            "fast": percentiles([t for t, _ in fast]),
            "reference": percentiles([t for t, _ in ref]),
            "mismatches": mismatches,
            "outcomes": outcomes,
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
    """Redis commands and round trips this process sends (pipelines: their commands, one round trip)."""

    def __init__(self) -> None:
        self.commands = 0
        self.trips = 0
        self._lock = threading.Lock()
        single, execute = redis.Redis.execute_command, redis.client.Pipeline.execute
        counter = self

        def counted_single(client: Any, *args: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.commands += 1
                counter.trips += 1
            return single(client, *args, **kwargs)

        def counted_pipeline(pipe: Any, raise_on_error: bool = True) -> Any:
            with counter._lock:
                counter.commands += len(pipe.command_stack)
                counter.trips += 1 if pipe.command_stack else 0
            return execute(pipe, raise_on_error)

        redis.Redis.execute_command = counted_single  # type: ignore[method-assign]
        redis.client.Pipeline.execute = counted_pipeline  # type: ignore[method-assign]

    def read(self) -> tuple[int, int]:
        with self._lock:
            return self.commands, self.trips


def populate(state: RedisLiveState, live: LiveSnapshot) -> None:
    for w in live.workers:
        state.register_worker(w)
    for insts in live.instances.values():
        for inst in insts:
            state.set_instance(inst)
    for w in live.workers:  # depths as the workers report them
        for key in [k for k in live.instances if any(i.worker_id == w.id for i in live.instances[k])]:
            state.set_queue_depth(w.id, key, live.depth(w.id, key))
    state.flush()


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """``INFO commandstats``: per command, (calls, server µs)."""
    raw = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in raw.items()}


def measure_redis(fleet: Fleet, url: str, counter: Counter, seconds: float) -> dict[str, Any]:
    prefix = f"scale-bench-{uuid.uuid4().hex[:8]}"
    state = RedisLiveState(url, prefix, worker_ttl_s=600.0)
    try:
        populate(state, fleet.live)
        refresh = []
        for _ in range(20):
            start = time.perf_counter()
            state._refresh()
            refresh.append(time.perf_counter() - start)
        snap = state.snapshot()
        found = {"workers": len(snap.workers), "instances": sum(len(v) for v in snap.instances.values())}
        # Steady state: one front-end serving as the engine does, as fast as it can.
        prices, selector, rng = dict(DEFAULT_PRICES), FastSelector(), random.Random(1)
        qs = queries(fleet, 5000, rng, None)
        state.flush()
        c0, t0 = counter.read()
        served, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            req, cands = qs[served % len(qs)]
            try:
                chosen = selector.select(req, cands, state.snapshot(), prices)
            except InfaasError:
                served += 1
                continue
            key, worker = chosen.candidate.key, chosen.worker
            state.set_queue_depth(worker, key, 1)
            state.set_queue_depth(worker, key, 0)
            state.record_query(
                QueryRecord(time.time(), "t", chosen.variant.model_name, chosen.variant.name, worker, 1, req.latency_ms,
                            0.0, None, chosen.estimated_ms, chosen.estimated_ms, 0.0, chosen.estimated_cost, False, "")
            )  # fmt: skip
            served += 1
        elapsed = time.perf_counter() - start
        state.flush()
        c1, t1 = counter.read()
        steady = {
            "queries": served,
            "queries_per_s": served / elapsed,
            "commands_per_query": (c1 - c0) / served,
            "round_trips_per_query": (t1 - t0) / served,
        }
        return {"snapshot_refresh": percentiles(refresh), "fetched": found, "steady_state": steady}
    finally:
        state.delete_all()
        state.close()


def measure_fleet_load(fleet: Fleet, url: str, heartbeat_s: float) -> dict[str, Any]:
    """Server CPU per heartbeat and per depth report, so the load of the whole fleet is rate × cost."""
    prefix = f"scale-bench-{uuid.uuid4().hex[:8]}"
    state = RedisLiveState(url, prefix, worker_ttl_s=600.0)
    admin = redis.Redis.from_url(url)
    try:
        populate(state, fleet.live)
        workers = [w.id for w in fleet.live.workers]
        keys = {
            w: [k for k, insts in fleet.live.instances.items() if any(i.worker_id == w for i in insts)] for w in workers
        }
        before = commandstats(admin)
        start = time.perf_counter()
        for w in workers:
            state.heartbeat(w, 1000.0)
        beat_wall = (time.perf_counter() - start) / len(workers)
        middle = commandstats(admin)
        start = time.perf_counter()
        for w in workers:  # one flush of a busy worker: its changed depths in one pipeline
            for k in keys[w][:3]:
                state.set_queue_depth(w, k, 2)
            state.flush()
        report_wall = (time.perf_counter() - start) / len(workers)
        after = commandstats(admin)

        def server_us(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> tuple[int, int]:
            calls = sum(b[k][0] - a.get(k, (0, 0))[0] for k in b if k not in ("info",))
            usec = sum(b[k][1] - a.get(k, (0, 0))[1] for k in b if k not in ("info",))
            return calls, usec

        beat_calls, beat_us = server_us(before, middle)
        report_calls, report_us = server_us(middle, after)
        n = len(workers)
        per_beat_us, per_report_us = beat_us / n, report_us / n
        flushes_per_s = 1 / 0.002
        return {
            "workers": n,
            "heartbeat": {
                "server_commands_per_call": beat_calls / n,
                "server_us_per_call": per_beat_us,
                "client_wall_us_per_call": beat_wall * 1e6,
                "fleet_calls_per_s": n / heartbeat_s,
                "fleet_server_commands_per_s": beat_calls / heartbeat_s,
                "fleet_redis_core_share": per_beat_us * n / heartbeat_s / 1e6,
            },
            "depth_report": {
                "server_commands_per_call": report_calls / n,
                "server_us_per_call": per_report_us,
                "client_wall_us_per_call": report_wall * 1e6,
                "busy_fleet_calls_per_s": n * flushes_per_s,
                "busy_fleet_server_commands_per_s": report_calls * flushes_per_s,
                "busy_fleet_redis_core_share": per_report_us * n * flushes_per_s / 1e6,
            },
        }
    finally:
        state.delete_all()
        state.close()
        admin.close()


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
        row: dict[str, Any] = {
            "variants": sum(len(c) for c in fleet.candidates.values()),
            "workers": n_workers,
            "instances": sum(len(v) for v in fleet.live.instances.values()),
            "queue_depths": sum(1 for v in fleet.live.queue_depth.values() if v),
            "build_s": time.perf_counter() - built,
        }
        row["selection"] = measure_selection(fleet, args.queries, args.reference_seconds, rng)
        row["selection_p99_ms"] = max(row["selection"][k]["fast"]["p99_ms"] for k in ("model", "task"))
        row["redis"] = measure_redis(fleet, args.redis_url, counter, args.steady_seconds)
        row["fleet_load"] = measure_fleet_load(fleet, args.redis_url, 1.0)
        rows.append(row)
        sel, red = row["selection"], row["redis"]
        print(
            f"{row['variants']:>6} variants {n_workers:>5} workers: "
            f"model p99 {sel['model']['fast']['p99_ms']:.3f} ms (ref {sel['model']['reference']['p99_ms']:.3f}), "
            f"task p99 {sel['task']['fast']['p99_ms']:.3f} ms (ref {sel['task']['reference']['p99_ms']:.1f}), "
            f"mismatches {sel['model']['mismatches'] + sel['task']['mismatches']}, "
            f"index {sel['index_build']['p50_ms']:.3f} ms, refresh p50 {red['snapshot_refresh']['p50_ms']:.1f} ms, "
            f"cmds/query {red['steady_state']['commands_per_query']:.2f} "
            f"trips/query {red['steady_state']['round_trips_per_query']:.3f}",
            flush=True,
        )
    x = [float(r["variants"] * r["workers"]) for r in rows]
    w = [float(r["workers"]) for r in rows]
    vw = "variants x workers"
    curves = {
        "model_fast_p99_ms": ([r["selection"]["model"]["fast"]["p99_ms"] for r in rows], vw, x),
        "task_fast_p99_ms": ([r["selection"]["task"]["fast"]["p99_ms"] for r in rows], vw, x),
        "model_reference_p50_ms": ([r["selection"]["model"]["reference"]["p50_ms"] for r in rows], vw, x),
        "task_reference_p50_ms": ([r["selection"]["task"]["reference"]["p50_ms"] for r in rows], vw, x),
        "index_build_p50_ms": ([r["selection"]["index_build"]["p50_ms"] for r in rows], "workers", w),
        "snapshot_refresh_p50_ms": ([r["redis"]["snapshot_refresh"]["p50_ms"] for r in rows], "workers", w),
        "commands_per_query": ([r["redis"]["steady_state"]["commands_per_query"] for r in rows], "workers", w),
    }  # fmt: skip
    largest = rows[-1]
    result = {
        "benchmark": "scale",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version()},
        "args": vars(args),
        "sizes": rows,
        "growth": {
            name: {"against": against, "values": values, "loglog_slope": slope(xs, values)}
            for name, (values, against, xs) in curves.items()
        },
        "targets": {
            "selection_p99_ms_le_1": largest["selection_p99_ms"] <= 1.0,
            "commands_per_query_le_1": largest["redis"]["steady_state"]["commands_per_query"] <= 1.0,
            "round_trips_per_query_le_1": largest["redis"]["steady_state"]["round_trips_per_query"] <= 1.0,
            "snapshot_refresh_ms_le_10": largest["redis"]["snapshot_refresh"]["p50_ms"] <= 10.0,
            "smallest_fast_not_slower": rows[0]["selection"]["model"]["fast"]["p50_ms"]
            <= rows[0]["selection"]["model"]["reference"]["p50_ms"],
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["targets"], indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
