"""Replay one bursty open-loop trace at three loads against three deployments of the example zoo.

What is real: the four zoo models (trained offline, ``infaas.examples.zoo``), their variants built and
profiled by the real pipeline (registration → ``build_variants`` job → profiler), the real
``QueryEngine`` (selector, candidate cache, live state) driven through ``QueryEngine.serve``, the coroutine the
HTTP server awaits, from one asyncio loop (planning on the loop, short runs inline, the rest in the thread pool,
as ``infaas serve`` does; no HTTP and no JSON), real ``LocalWorker``s with ONNX Runtime sessions, adaptive
batching and replicas, and the real autoscaler loop (both levels) and its ``InProcessProvider``. Every latency
is measured wall-clock from the query's *scheduled* arrival (so dispatch lag under load counts: a query the
loop could not start within its budget is a miss, ``timed-out``) to its answer.

What is simulated: the time scale is compressed (a one-to-two-minute trace; autoscaler periods of 0.5 s
and 1.5 s instead of 1 s and 10 s), and every "worker" is a ``LocalWorker`` in this process. They all share
this machine's cores, so the VM level may hold only as many workers as the cores hold (``INPROCESS_MAX_WORKERS``:
one 2-core worker on two cores); a worker it added beyond that would add *accounted* capacity (its declared
cores are billed from the moment it starts until it is stopped), not physical CPU. Cost is therefore
price table × declared worker core-seconds held, the way a VM bill would be. The same holds for the
fixed deployments: (c)'s workers are billed for the peak but run on the same two cores, so its misses
say little; its cost is the point of comparison.

Setups (same trace, run one after the other in one process, at every level):

a. ``infaas``: per-query selection by latency budget and accuracy floor, both autoscalers on;
b. ``fixed-accurate``: the most accurate variant, one replica, one worker, for every query;
c. ``fixed-peak``: the fastest variant meeting the highest accuracy floor, with enough replicas
   (and workers) for the peak rate, held for the whole trace.

The offered load is calibrated, not derived from a profile: before the trace, the engine is offered the
trace's class mix open loop at steady rates rising in small steps (``--calibrate-window`` seconds each,
autoscaler off, each window from the deployment the trace starts from) until a rate twice answers fewer than 99%
of the queries in time (or 1 point fewer than at low load, if that is lower); the capacity is the median over
``--calibrate-repeats`` such staircases of the last rate that met the bar, and every window is recorded.
One timing of one variant's profile used to set the rates, and the same command then offered 21,585 queries
in one run and 34,846 in the next (issue 12). A load level ``L`` scales the trace so that its spike, the
busiest part, offers ``L`` × capacity; base and step keep their ratios to it.

Outcomes are counted apart: a query is *infeasible* when its class's need cannot be met even on the idle
system (found by asking the engine three times per class before the clock starts, with ``on_infeasible:
"reject"``); a feasible query is *rejected* when infaas answered 503 ``infeasible`` (nothing ran; with
``Retry-After`` when queueing was the cause), *shed* when it answered 429 ``over_fair_share``
(``infaas.fair_share``; nothing ran), *missed* when it was answered late, failed, served below its floor, or
given up by the client before it could be sent, and *in time* otherwise. Only infaas refuses: the fixed
deployments serve whatever arrives. A last pair of infaas runs, at ``--burst-level``, makes the spike's extra
queries come from one tenant of ``--burst-class``, without and with the fair share, to compare each tenant's
share of queries in time.

Run from the repository root: ``python -m benchmarks.trace`` (builds the zoo into ``--zoo`` first if it is
not there, which takes ~2-15 min on two cores). ``--home DIR`` keeps the registered, profiled zoo for the
next run. Writes ``benchmarks/results/trace.json`` and ``trace.png``. ``--provider docker`` runs every worker as
a container with a CPU limit instead (``benchmarks/trace_docker.py``; ``trace_docker.json`` and ``.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import math
import os
import random
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from autoscaler import Autoscaler, PolicyConfig
from autoscaler.providers.inprocess import InProcessProvider
from infaas import offload, switch_interval
from infaas.calibration import Calibration
from infaas.catalog import VariantInfo
from infaas.config import Settings
from infaas.db.models import WorkState
from infaas.engine import Query
from infaas.examples.zoo import TASK, load_zoo
from infaas.fair_share import FairShare, OverFairShare
from infaas.live_state import MemoryLiveState
from infaas.registration import RegistrationRequest, register_model
from infaas.selector import AccuracyUnavailable, Infeasible, OnInfeasible, ProfileCurve, Requirements
from infaas.services import Services, build_services
from infaas.worker import LocalWorker, WorkerClient

log = logging.getLogger("trace")
ROOT = Path(__file__).resolve().parents[1]
WORKER_CORES = 2
WORKER_MEMORY_MB = 2048.0
# The VM level's ceiling here: in-process workers share this host's cores, so it holds as many workers as it has
# cores for. At 4, the 1.5× spike of c92eeec's run had the VM level add two workers that brought no CPU (and drain
# them 12 s later); their replicas only took cores from the one already serving. ``--provider docker`` gives each
# worker its own CPU quota and keeps its own ceiling.
INPROCESS_MAX_WORKERS = max(1, (os.cpu_count() or 1) // WORKER_CORES)
SAMPLE_S = 0.25
ROWS = 256  # rows per query (clients send mini-batches); INFAAS_MAX_BATCH_PER_QUERY allows 256
PROFILED_BATCH = 64  # the largest batch the variant builds profile
ACCURATE_BUDGET_MS = 100.0  # the latency budget of the class that asks for the highest accuracy floor


LEVELS = (0.7, 1.0, 1.5)
SETUPS = ("infaas", "fixed-accurate", "fixed-peak")
# Capacity staircases (``calibrate``): window rates rise by these factors; the fine ones start below the estimate.
COARSE_STEP = 1.5
STAIR_STEP = 1.12
STAIR_START = 0.8
STAIR_PAUSE_S = 1.0
# Windows per staircase, at most. A staircase still passing at the last one has found a lower bound, not the
# capacity, and is not counted: with 12, a coarse bracket one noisy window set at 30 q/s (2 of 153 late at
# 45 q/s) capped the next staircases at 59 and 165 q/s while still passing, and their median was reported.
MAX_STAIRS = 30
MIN_WINDOW_QUERIES = 100  # fewer cannot tell 99% in time from 98%: such a window never passes
# Windows at the low-load rate whose median share in time is the baseline: one was too few on a busy host, where a
# loop stalled 50-110 ms by other work makes tight queries late at any rate (session 8: windows failed at 2.7-25
# q/s with 2-5% late while a lucky 20 q/s baseline had set the bar at 99%, and the capacity was 31.4 q/s).
BASELINE_WINDOWS = 3
BASELINE_MARGIN = 0.01  # the bar is at most this far under the share in time at low load...
LOWEST_BAR = 0.9  # ...and never under this

# ------------------------------------------------------------------------------------------ the trace


@dataclass(frozen=True)
class QueryClass:
    """A kind of client: its share of the traffic, its latency budget, its accuracy floor, and what it wants
    when the budget cannot be met (served late and flagged, or a 503 so that it can go elsewhere)."""

    name: str
    share: float
    budget_ms: float
    floor: float
    rows: int  # samples per query: clients send mini-batches
    on_infeasible: OnInfeasible = "best_effort"


@dataclass(frozen=True)
class Arrival:
    at_s: float
    cls: QueryClass
    sample: int
    tenant: str = ""  # who sends it: the class's own client unless set (a bursting tenant)

    @property
    def who(self) -> str:
        return self.tenant or self.cls.name


@dataclass(frozen=True)
class Shape:
    """The offered load: base rate, a step up from 25% to 65% of the trace, a spike inside the step.

    The spike may ramp up (``ramp_s``) instead of jumping: the autoscalers react to measured load (a
    windowed rate, then a few periods of hysteresis), so a zero-time jump far past one replica's capacity
    can only be absorbed by headroom, while a burst that builds over seconds is what they can follow.

    With ``burst_class`` set, the spike is one tenant bursting: the step's traffic keeps its class mix
    and only the extra ``spike - step`` queries/s are of that class, sent by a tenant of their own
    (``<class>-burst``). Without it the whole mix scales up.
    """

    duration: float
    base: float
    step: float
    spike: float
    spike_from: float = 0.45  # fraction of the trace
    spike_to: float = 0.55
    burst_class: str | None = None
    ramp_s: float = 0.0  # the spike rises linearly from the step rate over this long

    def in_spike(self, t: float) -> bool:
        return self.spike_from * self.duration <= t < self.spike_to * self.duration

    def rate_at(self, t: float) -> float:
        if self.in_spike(t):
            into = t - self.spike_from * self.duration
            if into < self.ramp_s:
                return self.step + (self.spike - self.step) * into / self.ramp_s
            return self.spike
        if 0.25 * self.duration <= t < 0.65 * self.duration:
            return self.step
        return self.base


def make_trace(classes: list[QueryClass], shape: Shape, samples: int, seed: int) -> list[Arrival]:
    """Poisson arrivals (thinning of a peak-rate process) with the piecewise rate of ``shape``."""
    rng = random.Random(seed)
    peak = max(shape.base, shape.step, shape.spike)
    out: list[Arrival] = []
    t = 0.0
    weights = [c.share for c in classes]
    burst = next((c for c in classes if c.name == shape.burst_class), None)
    while True:
        t += rng.expovariate(peak)
        if t >= shape.duration:
            return out
        rate = shape.rate_at(t)
        if rng.random() < rate / peak:
            if burst is not None and shape.in_spike(t) and rng.random() >= shape.step / rate:
                cls, tenant = burst, f"{burst.name}-burst"
            else:
                cls, tenant = rng.choices(classes, weights)[0], ""
            out.append(Arrival(t, cls, rng.randrange(samples - cls.rows), tenant))


# -------------------------------------------------------------------------------------- measurements

# A query class's client call: (arrival, its rows, its deadline on ``time.monotonic``) -> (variant key, accuracy).
Serve = Callable[[Arrival, np.ndarray, float], Awaitable[tuple[str, float | None]]]


@dataclass
class Outcome:
    """One query of the trace. ``status``: ``ok`` (in time, floor met), ``late``, ``below-floor``,
    ``failed``, ``timed-out`` (the client gave up before sending), ``rejected`` (503 ``infeasible``, nothing
    ran) or ``shed`` (429 ``over_fair_share``: at risk from a tenant over its share; nothing ran)."""

    at_s: float
    cls: str
    tenant: str
    latency_ms: float
    status: str
    accuracy: float | None
    variant: str
    retry_after: bool = False  # a rejection that said when to retry (queueing was the cause)
    reason: str = ""  # why it was rejected or failed
    sent_lag_ms: float = 0.0  # from the scheduled arrival to the client's sending it (the loop's dispatch lag)


def tally(group: list[Outcome], duration: float) -> dict:
    """Counts of one group of queries; ``missed`` excludes rejections and sheds, which are counted apart."""
    n = len(group)
    by_status: dict[str, int] = {}
    for o in group:
        by_status[o.status] = by_status.get(o.status, 0) + 1
    rejected = by_status.get("rejected", 0)
    shed = by_status.get("shed", 0)
    in_time = by_status.get("ok", 0)
    missed = n - in_time - rejected - shed
    answered = [o.latency_ms for o in group if o.status in {"ok", "late", "below-floor"}]
    return {
        "queries": n,
        "in_time": in_time,
        "missed": missed,
        "rejected": rejected,
        "rejected_with_retry_after": sum(o.status == "rejected" and o.retry_after for o in group),
        "shed": shed,
        "miss_rate": round(missed / n, 4) if n else 0.0,
        "reject_rate": round(rejected / n, 4) if n else 0.0,
        "shed_rate": round(shed / n, 4) if n else 0.0,
        "goodput_qps": round(in_time / duration, 2),
        "p99_ms": round(float(np.percentile(answered, 99)), 2) if answered else None,
        "by_status": dict(sorted(by_status.items())),
        "why_not_served": _top_reasons(group),
    }


def _top_reasons(group: list[Outcome], top: int = 3) -> dict[str, dict]:
    """The commonest reasons for rejections and failures (numbers masked so that alike messages count
    together), each with its count and its first message as it was."""
    counts: dict[str, dict] = {}
    for o in group:
        if o.reason:
            key = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", o.reason)[:240]
            counts.setdefault(key, {"count": 0, "example": o.reason[:400]})["count"] += 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]["count"])[:top])


TIMELINE_S = 5.0  # seconds per bucket of ``timeline``


def timeline(group: list[Outcome]) -> list[dict]:
    """Per ``TIMELINE_S`` of the trace (by scheduled arrival): queries, each class's outcomes other than in time, and
    the longest wait to be sent, so that where the misses fall (the step, the spike, after it), of which kind, and
    whether the process itself was behind (the loop busy, a collector pause) is on record."""
    buckets: dict[int, dict] = {}
    for o in group:
        b = buckets.setdefault(int(o.at_s // TIMELINE_S), {"queries": 0, "not_ok": {}, "max_sent_lag_ms": 0.0})
        b["queries"] += 1
        b["max_sent_lag_ms"] = max(b["max_sent_lag_ms"], round(o.sent_lag_ms, 1))
        if o.status != "ok":
            by_status = b["not_ok"].setdefault(o.cls, {})
            by_status[o.status] = by_status.get(o.status, 0) + 1
    return [{"t_s": i * TIMELINE_S, **buckets[i]} for i in sorted(buckets)]


def jain_index(values: list[float]) -> float | None:
    """Jain's fairness index of ``values``: 1 when all are equal, 1/n when one class gets everything."""
    if not values or not any(values):
        return None
    return round(sum(values) ** 2 / (len(values) * sum(v * v for v in values)), 4)


@dataclass
class Run:
    """What one setup did over the trace at one load level."""

    name: str
    level: float
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, workers, replicas)
    started_wall: float = 0.0  # time.time() when the trace clock started
    decisions: list[dict] = field(default_factory=list)  # the autoscaler's, with trace time t_s
    estimates: dict = field(default_factory=dict)  # the engine's estimate correction and its error, at the end
    gc_pauses_ms: list[tuple[int, float]] = field(default_factory=list)  # (generation, ms) of each collection
    cpu: dict = field(default_factory=dict)  # the replay's CPU: this process's and the machine's (``_replay``)
    worker_cores: float = WORKER_CORES  # billed per worker sample (a container's CPU limit with --provider docker)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def summary(self, duration: float, prices: dict[str, float], infeasible: set[str]) -> dict:
        per_core_s = prices["cpu-core"] / 3600.0
        worker_core_s = sum(w * self.worker_cores * SAMPLE_S for _t, w, _r in self.samples)
        feasible = [o for o in self.outcomes if o.cls not in infeasible]
        by_class = {
            name: {"feasible": name not in infeasible, **tally([o for o in self.outcomes if o.cls == name], duration)}
            for name in sorted({o.cls for o in self.outcomes})
        }
        by_tenant = {
            name: tally([o for o in feasible if o.tenant == name], duration)
            for name in sorted({o.tenant for o in feasible})
        }
        class_share = {c: v["in_time"] / v["queries"] for c, v in by_class.items() if v["feasible"]}
        tenant_share = {t: v["in_time"] / v["queries"] for t, v in by_tenant.items()}
        served: dict[str, int] = {}
        for o in self.outcomes:
            if o.accuracy is not None:
                served[o.variant] = served.get(o.variant, 0) + 1
        accuracies = [o.accuracy for o in feasible if o.accuracy is not None]
        out = {
            "feasible": tally(feasible, duration),
            "infeasible": tally([o for o in self.outcomes if o.cls in infeasible], duration),
            "mean_accuracy": round(float(np.mean(accuracies)), 4) if accuracies else None,
            "worker_core_seconds": round(worker_core_s, 1),
            "cost_usd": round(worker_core_s * per_core_s, 6),
            "max_workers": max((w for _t, w, _r in self.samples), default=0),
            "max_replicas": max((r for _t, _w, r in self.samples), default=0),
            "fairness": {
                "in_time_share_by_class": {c: round(v, 4) for c, v in class_share.items()},
                "jain_index_classes": jain_index(list(class_share.values())),
                "in_time_share_by_tenant": {t: round(v, 4) for t, v in tenant_share.items()},
                "jain_index_tenants": jain_index(list(tenant_share.values())),
            },
            "by_class": by_class,
            "by_tenant": by_tenant,
            "served_by": dict(sorted(served.items(), key=lambda kv: -kv[1])),
            "timeline": timeline(feasible),
        }
        lags = [o.sent_lag_ms for o in self.outcomes]
        pauses = [ms for _gen, ms in self.gc_pauses_ms]
        out["process"] = {
            "sent_lag_ms": {
                "p50": round(float(np.percentile(lags, 50)), 2),
                "p99": round(float(np.percentile(lags, 99)), 2),
                "max": round(max(lags), 2),
            }
            if lags
            else None,
            "gc_collections_by_generation": {
                str(g): sum(1 for gen, _ms in self.gc_pauses_ms if gen == g) for g in (0, 1, 2)
            },
            "gc_pause_ms": {"total": round(sum(pauses), 1), "max": round(max(pauses), 2)} if pauses else None,
            **self.cpu,
        }
        if self.estimates:
            out["estimates"] = self.estimates
        if self.decisions:
            by_action: dict[str, int] = {}
            for d in self.decisions:
                by_action[d["action"]] = by_action.get(d["action"], 0) + 1
            out["decisions_by_action"] = dict(sorted(by_action.items()))
            out["decisions"] = self.decisions
        return out


def host_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy since boot (``/proc/stat``: all but idle and iowait), or None
    where there is no ``/proc/stat``. With this process's CPU over the same time, what the host's other processes
    took from the cores while a run was measured (``fleet_sim.trace_host`` replays it)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def replay(
    trace: list[Arrival],
    inputs: np.ndarray,
    serve: Serve,
    run: Run,
    sample: Callable[[], tuple[int, int]],
) -> None:
    """Open loop: submit each query at its scheduled time whatever the backlog; latency from the schedule.

    The client is one asyncio loop that starts a task per arrival, and ``serve`` is a coroutine: for infaas the
    coroutine the HTTP server awaits (``QueryEngine.serve``), so the loop plans on its own thread and hands runs
    that may block to the thread pool exactly as ``infaas serve`` does. It replaced 1,024 client threads calling
    the blocking ``QueryEngine.infer``, which in the same interpreter competed with the server for the GIL: at
    1.5× (2,448 q/s) 5,134 queries of one run could not even be sent within their budget (``timed-out``).
    """
    asyncio.run(_replay(trace, inputs, serve, run, sample))


async def _replay(
    trace: list[Arrival],
    inputs: np.ndarray,
    serve: Serve,
    run: Run,
    sample: Callable[[], tuple[int, int]],
) -> None:
    stop = threading.Event()
    # Every run starts from the same collector state, off the clock: a full collection of this process's ~150,000
    # objects takes ~90-110 ms, and one left half-due by the previous run (or the set-up) would land in this one.
    # What survives it is the server's start-up state, frozen as ``infaas serve`` freezes its own (``api.app``):
    # the run's full collections then scan only what the run made (88 ms of CPU before the freeze, ~0 after, on
    # this benchmark's set-up; session 7's second run had full collections of 99-163 ms stop its loop at 1x/1.5x).
    gc.collect()
    gc.freeze()
    run.started_wall = time.time()
    start = time.monotonic()  # the event loop's clock too: arrivals are scheduled and measured on it

    def sampler() -> None:
        while not stop.is_set():
            workers, replicas = sample()
            run.samples.append((time.monotonic() - start, workers, replicas))
            stop.wait(SAMPLE_S)

    async def one(arrival: Arrival) -> None:
        cls = arrival.cls
        scheduled = start + arrival.at_s
        waited = time.monotonic() - scheduled
        if waited * 1000.0 > cls.budget_ms:
            # The query could not even be sent within its budget (this process was too busy to dispatch it):
            # the client gives up without sending it (a miss), as a real one with a timeout would.
            lag = waited * 1000.0
            run.add(Outcome(arrival.at_s, cls.name, arrival.who, lag, "timed-out", None, "timed-out", sent_lag_ms=lag))
            return
        deadline = scheduled + cls.budget_ms / 1000.0
        retry_after, reason, status = False, "", ""
        try:
            rows = inputs[arrival.sample : arrival.sample + cls.rows]
            variant, accuracy = await serve(arrival, rows, deadline)
        except Infeasible as exc:  # the 503: nothing ran
            variant, accuracy, status = "rejected", None, "rejected"
            retry_after, reason = "Retry-After" in exc.headers, str(exc)
        except OverFairShare as exc:  # the 429: nothing ran
            variant, accuracy, status = "shed", None, "shed"
            retry_after, reason = "Retry-After" in exc.headers, str(exc)
        except Exception as exc:  # a failed query is a missed one
            log.debug("query failed: %s", exc)
            variant, accuracy, status, reason = "error", None, "failed", f"{type(exc).__name__}: {exc}"
        latency = (time.monotonic() - scheduled) * 1000.0
        if not status:  # answered; an unknown accuracy meets only a floor of 0
            late = latency > cls.budget_ms
            status = "late" if late else "below-floor" if (accuracy or 0.0) < cls.floor else "ok"
        lag = waited * 1000.0
        run.add(
            Outcome(arrival.at_s, cls.name, arrival.who, latency, status, accuracy, variant, retry_after, reason, lag)
        )

    collecting: dict[str, float] = {}

    def on_gc(phase: str, info: dict) -> None:  # the collector's pauses, which stop this loop and every thread
        if phase == "start":
            collecting["at"] = time.perf_counter()
        elif "at" in collecting:
            run.gc_pauses_ms.append((info["generation"], (time.perf_counter() - collecting.pop("at")) * 1000.0))

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    gc.callbacks.append(on_gc)
    pending: set[asyncio.Task[None]] = set()
    cpu_at, host_at = time.process_time(), host_busy_s()
    try:
        for arrival in trace:
            delay = start + arrival.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(arrival))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        host_now = host_busy_s()
        run.cpu = {
            "cpu_s": round(time.process_time() - cpu_at, 3),  # every thread of this process
            "wall_s": round(time.monotonic() - start, 3),
        }
        if host_at is not None and host_now is not None:
            run.cpu["host_cpu_s"] = round(host_now - host_at, 2)
    finally:
        gc.callbacks.remove(on_gc)
        gc.unfreeze()  # the next run's collection frees what this one's set-up left
        stop.set()
        watcher.join()
    if len(run.outcomes) != len(trace):  # a query's task failed outside the query: say so, never hide it
        log.error("%s: %d of %d queries have no outcome", run.name, len(trace) - len(run.outcomes), len(trace))


def call(serve: Serve, arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
    """One query outside a replay (probes and warm-up), on an event loop of its own."""
    return asyncio.run(serve(arrival, x, deadline))


# ------------------------------------------------------------------------------------------- setups


def prepare(zoo_dir: Path, home: Path) -> Services:
    """Register the zoo with variant builds on and wait until every model is ready (real pipeline)."""
    settings = Settings(
        home=home,
        build_variants=True,
        autoscaler="on",
        autoscaler_period_s=0.5,
        vm_autoscaler_period_s=1.5,
        idle_unload_s=15.0,
        min_workers=1,
        max_workers=INPROCESS_MAX_WORKERS,
        worker_cores=WORKER_CORES,
        worker_memory_mb=WORKER_MEMORY_MB,
        profile_max_seconds=2.0,
        heartbeat_s=0.25,
    )
    # This process serves as ``infaas serve`` does, with its GIL switch interval (clients share it too).
    switch_interval.apply(settings.switch_interval_ms)
    return register_zoo(build_services(settings), zoo_dir)


def register_zoo(services: Services, zoo_dir: Path) -> Services:
    """The zoo registered in ``services`` (built and profiled by its jobs), once every model is ready or failed."""
    registered = {m.name for m in services.metadata.list_models()}
    for model in load_zoo(zoo_dir):
        if model.name in registered:
            continue  # a reused --home: built and profiled by an earlier run
        register_model(
            services,
            RegistrationRequest(
                name=model.name,
                task=model.task,
                model_path=model.onnx_path,
                validation_path=model.validation_path,
                max_batch=PROFILED_BATCH,
                public=True,
            ),
        )
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        statuses = {m.name: m.status for m in services.metadata.list_models()}
        # Background work a ready model leaves (the task's cascade search) is waited for too: a cascade finished
        # mid-calibration changed the catalog under it (two of five staircases of one run served about half their
        # queries in time at every rate from 13 q/s up, after the first three found 59-279 q/s).
        working = services.metadata.list_work_items(WorkState.PENDING, WorkState.RUNNING)
        if all(s in {"ready", "failed"} for s in statuses.values()) and not working:
            break
        time.sleep(1.0)
    log.info("models: %s", {m.name: m.status for m in services.metadata.list_models()})
    return services


def ready_variants(services: Services) -> list[VariantInfo]:
    return [v for _m, v in services.metadata.ready_variants() if v.accuracy is not None]


def engine_serve(services: Services) -> Serve:
    """Setup (a)'s client call: the remaining budget, the class's floor and ``on_infeasible``, the class as tenant."""
    engine = services.engine
    accuracy = {v.key: v.accuracy for v in ready_variants(services)}

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        cls = arrival.cls
        remaining_ms = max(0.1, (deadline - time.monotonic()) * 1000.0)
        requirements = Requirements(
            task=TASK, latency_ms=remaining_ms, min_accuracy=cls.floor, on_infeasible=cls.on_infeasible
        )
        query = Query(requirements, {"input": x}, tenant=arrival.who)
        # The body's size decides where the server parses; nothing is parsed here (the arrays are ready), so it
        # is the arrays' own size: 256 rows of 64 float32 are 64 KiB, planned on the loop as a small body is.
        answer, _ = await engine.serve(lambda: (query, None), x.nbytes)
        how = answer.served_by
        key = f"{how.model}/{how.variant}"
        return key, accuracy.get(key)

    return serve


def find_infeasible(serve: Serve, classes: list[QueryClass], inputs: np.ndarray, tries: int = 3) -> dict[str, str]:
    """The classes whose need no placement meets on the idle system: each asked ``tries`` times with
    ``on_infeasible: "reject"`` and a generous head start; infeasible only if every try was refused.

    A class refused every time is asked again after one query of it with a 10 s deadline (the warm-up's), which
    loads what it needs: on the idle system nothing is loaded, and a cold load alone can put a class out of
    reach that is served in time once loaded (``tight``, when only digits-mlp-large met its floor: a ~50 ms
    load against its 10 ms budget, 2 ms once loaded), while a rejected probe never loads anything.
    """
    out: dict[str, str] = {}
    for cls in classes:
        probe = Arrival(0.0, QueryClass(cls.name, cls.share, cls.budget_ms, cls.floor, cls.rows, "reject"), 0)
        refusals: list[str] = []
        for attempt in range(2):
            if attempt:
                try:
                    call(serve, probe, inputs[: cls.rows], time.monotonic() + 10.0)
                except Exception:
                    log.debug("loading probe failed", exc_info=True)
            refusals = []
            for _ in range(tries):
                try:
                    call(serve, probe, inputs[: cls.rows], time.monotonic() + cls.budget_ms / 1000.0)
                except (Infeasible, AccuracyUnavailable) as exc:
                    refusals.append(str(exc))
                time.sleep(0.05)
            if len(refusals) < tries:
                break
        if len(refusals) == tries:
            out[cls.name] = refusals[-1]
    return out


def calibrate(
    serve: Serve,
    classes: list[QueryClass],
    inputs: np.ndarray,
    *,
    repeats: int,
    window_s: float,
    start_qps: float,
    target: float = 0.99,
    seed: int = 0,
    fresh: Callable[[], None] = lambda: None,
) -> dict:
    """Capacity of the deployment the trace starts from: the highest steady Poisson rate of the trace's (feasible)
    class mix at which at least ``target`` of the queries are answered in time (a 503 or 429 is not in time).

    Measured the way the trace offers load, open loop through ``replay``: a closed-loop measurement (4 clients
    sending back to back) gave 458 q/s on this machine (busy with other work, load average ~14), and the trace
    with its spike at that rate missed 59% in the same conditions: clients that wait for their answers never
    queue up the way independent arrivals do, so a closed-loop rate is not one the open-loop trace is served at.

    ``fresh`` runs before every window and puts back the deployment every trace run starts from
    (``start_state``: what the warm-up loads, the engine's learnt state from scratch), so that a window past
    capacity does not decide the next one: what the estimate correction learns in an overloaded window would
    refuse the next window's tight queries for hundreds of queries, and a variant an overloaded window loaded
    stayed loaded for every later window. Each window records which variants served its queries.
    """
    seed_of = iter(range(seed, seed + 10_000))

    def window(rate: float) -> dict:
        seconds = max(window_s, 1.3 * MIN_WINDOW_QUERIES / rate)  # long enough for MIN_WINDOW_QUERIES at low rates
        trace = make_trace(classes, Shape(seconds, rate, rate, rate), len(inputs), next(seed_of))
        fresh()
        run = Run("calibration", 0.0)
        replay(trace, inputs, serve, run, lambda: (0, 0))
        counts = tally(run.outcomes, seconds)
        time.sleep(STAIR_PAUSE_S)  # let queues drain before the next window
        in_time = counts["in_time"] / counts["queries"] if counts["queries"] else 1.0
        not_ok = {k: v for k, v in counts["by_status"].items() if k != "ok"}  # what kept a window under the bar
        served: dict[str, int] = {}
        for o in run.outcomes:
            if o.accuracy is not None:
                served[o.variant] = served.get(o.variant, 0) + 1
        return {
            "qps": round(rate, 1),
            "queries": counts["queries"],
            "in_time": round(in_time, 4),
            "not_ok": not_ok,
            "served_by": dict(sorted(served.items(), key=lambda kv: -kv[1])),
        }

    result = capacity(window, repeats=repeats, start_qps=start_qps, target=target)
    method = (
        f"open-loop Poisson windows of {window_s:g} s of the feasible class mix (autoscaler off), rates rising "
        f"×{STAIR_STEP:g} until the share of queries in time falls under the bar ({target:.0%}, or 1 point under "
        f"the median share of {BASELINE_WINDOWS} windows at {start_qps:g} q/s if lower) twice in a row at one rate; "
        f"capacity = the median over {repeats} staircases of the last rate that met it (a coarse ×{COARSE_STEP:g} "
        "staircase first, not counted); every window starts from the deployment the trace runs start from"
    )
    return {"method": method, **result}


def capacity(measure: Callable[[float], dict], *, repeats: int, start_qps: float, target: float) -> dict:
    """Repeated staircases over ``measure`` (offered rate -> a window's outcome with its ``in_time`` share).

    First ``BASELINE_WINDOWS`` baseline windows at ``start_qps`` (low load): a deployment that already misses 2% there
    (timer and scheduling jitter against a 10 ms budget on a busy machine) would never reach 99% at any rate, so the
    bar is ``target`` or ``BASELINE_MARGIN`` under the baseline windows' median share, whichever is lower, never
    under ``LOWEST_BAR``. One staircase runs windows at rates rising by ``STAIR_STEP`` until a rate falls short of the
    bar twice in a row (a failing window is measured once more at its rate: one stall of a busy host fails a window
    whatever the load); its capacity is the last rate that met it (with at least ``MIN_WINDOW_QUERIES`` queries).
    A coarse staircase (×``COARSE_STEP`` from ``start_qps``) brackets the capacity and is not counted; then
    ``repeats`` fine staircases, each from ``STAIR_START`` × the capacity so far, are the measurement: their median,
    with every window kept.
    """

    def staircase(rate: float, step: float) -> tuple[float | None, float | None, list[dict]]:
        """(capacity found or None, highest rate that passed, windows)."""
        windows: list[dict] = []
        passed: float | None = None
        again = False  # this rate failed once and is being measured again
        lowest = rate / 10.0  # a staircase failing that far below where it started has found nothing
        while len(windows) < MAX_STAIRS:
            windows.append(measure(rate))
            if windows[-1].get("queries", MIN_WINDOW_QUERIES) < MIN_WINDOW_QUERIES:
                rate *= step  # too few queries to tell: a higher rate gives more
            elif windows[-1]["in_time"] >= bar:
                passed, again = rate, False
                rate *= step
            elif not again:
                # A failure counts only when the same rate fails again: in docker mode one noisy first window (4 of
                # 135 refused at 20 q/s, which the baseline had just passed) walked a staircase down to 2.8 q/s for
                # a worker that served 333 of 333 in time at 60 q/s; in-process, one stalled window ended staircases
                # at 25.8-36 q/s in a run whose 1.5x trace (47 q/s at its spike) then missed nothing.
                again = True
            elif passed is not None or rate / (step * step) < lowest:
                return passed, passed, windows
            else:
                rate /= step * step  # failed twice before any pass: start lower
                again = False
        return None, passed, windows  # never failed after a pass: a lower bound, not counted (MAX_STAIRS)

    baselines = [measure(start_qps) for _ in range(BASELINE_WINDOWS)]
    baseline = baselines[0]
    counted = [b["in_time"] for b in baselines if b.get("queries", MIN_WINDOW_QUERIES) >= MIN_WINDOW_QUERIES]
    bar = target
    if counted:
        bar = max(LOWEST_BAR, min(target, float(np.median(counted)) - BASELINE_MARGIN))
    bracket, bound, coarse = staircase(start_qps, COARSE_STEP)
    estimate = bracket or bound or start_qps
    stairs: list[dict] = []
    for _ in range(repeats):
        passed, bound, windows = staircase(STAIR_START * estimate, STAIR_STEP)
        stairs.append({"capacity_qps": None if passed is None else round(passed, 1), "windows": windows})
        found = [s["capacity_qps"] for s in stairs if s["capacity_qps"] is not None]
        # Nothing found yet: the next staircase starts from the highest rate that passed, not below it again.
        estimate = float(np.median(found)) if found else max(estimate, bound or 0.0)
    found = sorted(s["capacity_qps"] for s in stairs if s["capacity_qps"] is not None)
    median = float(np.median(found)) if found else 0.0
    return {
        "capacity_qps": round(median, 1),
        "baseline": baseline,
        "baseline_windows": baselines,
        "in_time_bar": round(bar, 4),
        "staircases_qps": [s["capacity_qps"] for s in stairs],
        "min_qps": found[0] if found else None,
        "max_qps": found[-1] if found else None,
        "spread_over_median": round((found[-1] - found[0]) / median, 3) if median else None,
        "coarse": {"capacity_qps": None if bracket is None else round(bracket, 1), "windows": coarse},
        "staircases": stairs,
    }


class AdmitAll(FairShare):
    """The burst run's control: the engine's fair share replaced by one that admits every query."""

    def admit(self, tenant: str, at_risk: bool) -> None:
        return None


def start_state(services: Services, serve: Serve, classes: list[QueryClass], inputs: np.ndarray) -> None:
    """Put back the deployment every trace run starts from, on the workers already running: every instance
    unloaded, the engine's learnt state fresh, then the warm-up's loads (``_warm``), as ``run_infaas`` starts.

    Before, a calibration window kept whatever the previous ones had loaded: when an overloaded window made the
    selector load a cold variant to meet a budget, every later window ran with it too, so the staircases
    measured two deployments, whichever the first overload happened to leave.
    """
    engine = services.engine
    for instance in engine.live.instances():
        client = engine.workers.get(instance.worker_id)
        if client is not None:
            client.unload(instance.variant_key)
    fresh_engine_state(services)
    _warm(serve, [Arrival(0.0, c, 0) for c in classes], inputs)


def fresh_engine_state(services: Services, fair_share: FairShare | None = None) -> None:
    """The engine's learnt state from scratch, as in a restarted front-end: estimate correction and fair share.

    Without it, what the correction learnt during the capacity measurement (past capacity on purpose) or the
    previous level's spike decides the next run's first few hundred queries: its serving-path overhead, learnt
    at 76 ms there, made every 10 ms query of the next (0.7×) level infeasible.
    """
    services.engine.calibration = Calibration()
    services.engine.fair_share = fair_share or FairShare()


def run_infaas(
    services: Services,
    trace: list[Arrival],
    inputs: np.ndarray,
    config: PolicyConfig,
    level: float,
    fair_share: FairShare | None = None,
    infeasible: Collection[str] = (),
) -> Run:
    """Setup (a): the engine picks a variant per query; both autoscalers run.

    Each run starts from the same state: the front-end's worker, emptied (every instance unloaded) and started
    again, and the engine's learnt state fresh (``fresh_engine_state``; ``fair_share`` replaces the engine's).
    The ``infeasible`` classes are not warmed up.
    """
    services.start_serving()
    engine = services.engine
    fresh_engine_state(services, fair_share)
    provider = InProcessProvider(
        services.store,
        engine.live,
        memory_budget_mb=WORKER_MEMORY_MB,
        cores=WORKER_CORES,
        heartbeat_s=0.25,
        prefix=f"inproc-x{level:g}",
    )
    scaler = Autoscaler(services, provider=provider, config=config, stats_window_s=3.0)
    return run_infaas_with(services, scaler, trace, inputs, level, infeasible)


def run_infaas_with(
    services: Services,
    scaler: Autoscaler,
    trace: list[Arrival],
    inputs: np.ndarray,
    level: float,
    infeasible: Collection[str] = (),
) -> Run:
    """Setup (a) with ``scaler`` (and its provider): warm up, replay, stop the scaler and its workers."""
    engine = services.engine
    serve = engine_serve(services)
    run = Run("infaas", level)

    def sample() -> tuple[int, int]:
        return len(engine.live.workers()), sum(i.replicas for i in engine.live.instances())

    _warm(serve, trace, inputs, infeasible)
    scaler_started = time.time()
    scaler.start()
    try:
        replay(trace, inputs, serve, run, sample)
    finally:
        scaler.stop()  # stops the workers it started
        engine.workers.stop()  # the next run starts from an empty front-end worker
    report = engine.calibration.report()
    run.estimates = {k: v for k, v in report.items() if k != "factors"}  # per placement: too many to keep
    run.estimates["run_factors"] = engine.calibration.run_factors()  # what the loop rule read, per placement
    run.decisions = [
        {
            "t_s": round(_utc(d.at).timestamp() - run.started_wall, 2),
            "at": d.at.isoformat(),
            "level": d.level,
            "action": d.action,
            "target": d.target,
            "outcome": d.outcome,
            "reason": d.reason,
        }
        for d in reversed(services.metadata.list_decisions(limit=1000))
        if _utc(d.at).timestamp() >= scaler_started  # not an earlier run's
    ]
    return run


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def run_fixed(
    name: str,
    services: Services,
    variant: VariantInfo,
    workers: int,
    replicas: int,
    trace: list[Arrival],
    inputs: np.ndarray,
    level: float,
) -> Run:
    """Setups (b) and (c): one variant for every query, ``replicas`` spread over ``workers``, no autoscaling."""
    live = MemoryLiveState()  # private: no selector and no autoscaler read it
    pool = [
        LocalWorker(f"{name}-{i}", services.store, live, memory_budget_mb=WORKER_MEMORY_MB, cores=WORKER_CORES)
        for i in range(workers)
    ]
    for w in pool:
        w.start()
        w.load(variant)
    for i in range(replicas - workers):
        pool[i % workers].add_replica(variant)
    try:
        return run_fixed_on(name, pool, variant, replicas, trace, inputs, level)
    finally:
        for w in pool:
            w.stop()


def run_fixed_on(
    name: str,
    pool: list[WorkerClient],
    variant: VariantInfo,
    replicas: int,
    trace: list[Arrival],
    inputs: np.ndarray,
    level: float,
) -> Run:
    """Replay ``trace`` on ``pool`` (``variant`` loaded, ``replicas`` in all), least outstanding first.

    Each query runs where infaas's would (``infaas.offload``): on the client's loop when the replica is free and the
    run is short, else in the thread pool, so the fixed setups' client costs what infaas's does.
    """
    workers = len(pool)
    outstanding = [0] * workers
    run = Run(name, level)
    curve = ProfileCurve.of(variant)

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        # Least-outstanding balancing, as a load balancer in front of fixed replicas would do (one loop: no lock).
        i = min(range(workers), key=lambda k: outstanding[k])
        outstanding[i] += 1
        feeds = {"input": x}
        try:
            await offload.short_inline_else_pool(
                curve.service_ms(len(x)),
                lambda: pool[i].try_infer_now(variant, feeds),
                lambda: pool[i].infer(variant, feeds, deadline),
            )
        finally:
            outstanding[i] -= 1
        return variant.key, variant.accuracy

    _warm(serve, trace, inputs)
    replay(trace, inputs, serve, run, lambda: (workers, replicas))
    return run


def _warm(serve: Serve, trace: list[Arrival], inputs: np.ndarray, skip: Collection[str] = ()) -> None:
    """Load what each query class uses before the clock starts (cold loads are not the point here).

    Classes in ``skip`` (the infeasible ones) are not warmed: with the warm-up's 10 s budget, ``strict`` loaded
    the CNN, whose instance the autoscaler then saw busy and gave replicas and a worker of its own.
    """
    seen = {a.cls.name: a for a in trace if a.cls.name not in skip}
    for arrival in seen.values():
        for _ in range(3):
            try:
                call(serve, arrival, inputs[: arrival.cls.rows], time.monotonic() + 10.0)
            except Exception:
                log.debug("warm-up query failed", exc_info=True)


class Deployment:
    """Where the workers run, for ``main``: in this process (``LocalWorker``s sharing its cores), or with
    ``--provider docker`` in containers with CPU limits (``benchmarks/trace_docker.py``)."""

    results = "trace"  # benchmarks/results/<results>.json and .png
    worker_cores: float = WORKER_CORES  # what each worker is billed for
    max_workers: int | None = None  # the most workers a fixed deployment gets (None: as many as the peak needs)
    what_is_simulated: str | None = None  # None: this module's docstring says it

    def prepare(self, zoo_dir: Path, home: Path) -> Services:
        return prepare(zoo_dir, home)

    def start(self, services: Services) -> None:
        """The deployment the runs start from: the front-end's worker."""
        services.start_serving()

    def stop(self, services: Services) -> None:
        services.engine.workers.stop()

    def run_infaas(
        self,
        services: Services,
        trace: list[Arrival],
        inputs: np.ndarray,
        config: PolicyConfig,
        level: float,
        fair_share: FairShare | None = None,
        infeasible: Collection[str] = (),
    ) -> Run:
        return run_infaas(services, trace, inputs, config, level, fair_share, infeasible)

    def run_fixed(
        self,
        name: str,
        services: Services,
        variant: VariantInfo,
        workers: int,
        replicas: int,
        trace: list[Arrival],
        inputs: np.ndarray,
        level: float,
    ) -> Run:
        return run_fixed(name, services, variant, workers, replicas, trace, inputs, level)

    def calibrate(self, services: Services, serve: Serve, classes: list[QueryClass], inputs: np.ndarray) -> dict | None:
        """The deployment's own capacity measurement, or ``None`` for ``calibrate``'s (``--provider docker``
        measures its container's CPU instead)."""
        return None

    def describe(self) -> dict:
        return {"provider": "inprocess", "max_workers": INPROCESS_MAX_WORKERS}

    def close(self, services: Services | None) -> None:
        if services is not None:
            services.close()


# ------------------------------------------------------------------------------------------ reporting


def plot(report: dict, path: Path) -> None:
    """Misses (and refusals, stacked and hatched) per class per load level for infaas; the feasible queries' miss
    rate and cost of every setup per level; and, for the burst run, each tenant's share of queries in time
    without and with the fair share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(report["levels"])
    classes = [c["name"] for c in report["trace"]["classes"]]
    infeasible = set(report["infeasible_classes"])
    burst = report.get("burst") or {}
    fig, axes = plt.subplots(3 if burst else 2, 1, figsize=(10, 12 if burst else 8))
    width = 0.8 / len(classes)
    colours = plt.get_cmap("tab10")
    for j, name in enumerate(classes):
        rows = [
            report["levels"][level]["setups"].get("infaas", {}).get("by_class", {}).get(name, {}) for level in levels
        ]
        missed = np.array([100.0 * row.get("miss_rate", 0.0) for row in rows])
        rejected = np.array([100.0 * row.get("reject_rate", 0.0) for row in rows])
        shed = np.array([100.0 * row.get("shed_rate", 0.0) for row in rows])
        x = np.arange(len(levels)) + (j - (len(classes) - 1) / 2) * width
        label = f"{name} (infeasible)" if name in infeasible else name
        axes[0].bar(x, missed, width, color=colours(j), label=f"{label}: missed")
        axes[0].bar(x, rejected, width, bottom=missed, color=colours(j), alpha=0.35, hatch="//", label="503")
        axes[0].bar(x, shed, width, bottom=missed + rejected, color=colours(j), alpha=0.2, hatch="xx", label="429")
    axes[0].set_xticks(np.arange(len(levels)), [f"{level}× capacity" for level in levels])
    axes[0].set_ylabel("% of the class's queries")
    axes[0].set_title("infaas per class: missed (solid), refused 503 infeasible (//), shed 429 over fair share (xx)")
    axes[0].legend(fontsize=7, ncol=len(classes), columnspacing=0.8, loc="upper left")
    axes[0].set_ylim(0, 135)
    setups = [name for name in SETUPS if any(name in report["levels"][level]["setups"] for level in levels)]
    width = 0.8 / len(setups)
    for j, name in enumerate(setups):
        rates, costs = [], []
        for level in levels:
            summary = report["levels"][level]["setups"].get(name)
            rates.append(100.0 * summary["feasible"]["miss_rate"] if summary else np.nan)
            costs.append(summary["cost_usd"] if summary else np.nan)
        x = np.arange(len(levels)) + (j - (len(setups) - 1) / 2) * width
        bars = axes[1].bar(x, rates, width, color=colours(j), label=name)
        for bar, cost in zip(bars, costs, strict=True):
            if not np.isnan(cost):
                axes[1].annotate(
                    f"${cost:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", fontsize=7
                )
    axes[1].set_xticks(np.arange(len(levels)), [f"{level}× capacity" for level in levels])
    axes[1].set_ylabel("% of feasible queries missed")
    axes[1].set_title("every setup: feasible queries missed (bar) and cost (label)")
    axes[1].legend(fontsize=8)
    if burst:
        runs = {"without fair share": burst["infaas_without_fair_share"], "with fair share": burst["infaas"]}
        tenants = sorted({t for r in runs.values() for t in r["fairness"]["in_time_share_by_tenant"]})
        width = 0.8 / len(runs)
        for j, (name, summary) in enumerate(runs.items()):
            shares = [100.0 * summary["fairness"]["in_time_share_by_tenant"].get(t, np.nan) for t in tenants]
            x = np.arange(len(tenants)) + (j - (len(runs) - 1) / 2) * width
            axes[2].bar(x, shares, width, color=colours(j + 2), label=name)
        axes[2].set_xticks(np.arange(len(tenants)), tenants)
        axes[2].set_ylabel("% of the tenant's queries in time")
        axes[2].set_title(
            f"one {burst['burst_class']} tenant bursting at {burst['level']}× capacity: each tenant's share"
        )
        axes[2].legend(fontsize=8)
    fig.suptitle(f"bursty open-loop trace at calibrated load (capacity {report['calibration']['capacity_qps']} q/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path(tempfile.gettempdir()) / "infaas-zoo")
    parser.add_argument("--quick-zoo", action="store_true", help="train the zoo briefly if it must be built")
    parser.add_argument("--duration", type=float, default=60.0, help="trace length per run, seconds")
    parser.add_argument(
        "--levels", type=float, nargs="+", default=list(LEVELS), help="load levels: spike rate / calibrated capacity"
    )
    parser.add_argument("--base", type=float, default=0.2, help="base rate, as a fraction of the spike's")
    parser.add_argument("--step", type=float, default=0.45, help="rate after the step up, as a fraction of the spike's")
    parser.add_argument("--spike-from", type=float, default=0.45, help="spike start, fraction of the trace")
    parser.add_argument("--spike-to", type=float, default=0.6, help="spike end, fraction of the trace")
    parser.add_argument(
        "--burst-class",
        default="accurate",
        help="one more infaas run, at --burst-level, whose spike's extra queries all come from one tenant of this "
        "class (tight, cheap, accurate); empty: none",
    )
    parser.add_argument("--burst-level", type=float, default=max(LEVELS), help="load level of the burst run")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds the spike takes to build up")
    parser.add_argument("--calibrate-window", type=float, default=3.0, help="seconds per calibration window")
    parser.add_argument("--calibrate-repeats", type=int, default=5, help="calibration staircases (at least 5)")
    parser.add_argument("--calibrate-start", type=float, default=20.0, help="first rate of the coarse staircase, q/s")
    parser.add_argument("--capacity", type=float, help="skip the calibration and take this capacity, q/s")
    parser.add_argument(
        "--util-scale",
        type=float,
        default=0.75,
        help="scale the autoscaler's high/target/low utilization thresholds (profiled capacity is optimistic here)",
    )
    parser.add_argument(
        "--home", type=Path, help="keep the registered, profiled zoo here and reuse it next time (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--only", choices=SETUPS, action="append", help="run only these setups")
    parser.add_argument(
        "--provider",
        choices=("inprocess", "docker"),
        default="inprocess",
        help="where workers run: this process, or containers with CPU limits (benchmarks/trace_docker.py; "
        "writes trace_docker.json)",
    )
    from benchmarks import trace_docker  # its module imports this one

    trace_docker.add_arguments(parser)
    args = parser.parse_args()
    deployment = trace_docker.DockerDeployment(args) if args.provider == "docker" else Deployment()
    if args.calibrate_repeats < 5:
        parser.error("--calibrate-repeats must be at least 5: one staircase is not a measurement")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("infaas").setLevel(logging.WARNING)

    if not (args.zoo / "zoo.json").exists():
        from infaas.examples.zoo import build_zoo

        build_zoo(args.zoo, quick=args.quick_zoo)
    zoo = load_zoo(args.zoo)
    inputs = np.load(zoo[0].validation_path)["inputs"].astype(np.float32)
    load_at_start = os.getloadavg()
    code_at_start = code_version()  # other sessions commit while it runs

    with tempfile.TemporaryDirectory(prefix="infaas-trace-") as scratch:
        services = None
        try:
            services = deployment.prepare(args.zoo, args.home or Path(scratch))
            variants = ready_variants(services)
            by_model: dict[str, list[VariantInfo]] = {}
            for v in variants:
                by_model.setdefault(v.model_name, []).append(v)
            # A floor is only worth asking for if some model meets it within the budget: a model whose
            # fastest variant needs more than a quarter of ACCURATE_BUDGET_MS for one query (the CNN on
            # two cores) cannot serve that class in any deployment, so the floor comes from those that can.
            feasible = {
                m: vs
                for m, vs in by_model.items()
                if min(ProfileCurve.of(v).service_ms(ROWS) for v in vs) <= ACCURATE_BUDGET_MS / 4
            }
            best_of = {m: max(vs, key=lambda v: v.accuracy or 0.0) for m, vs in feasible.items()}
            ranked = sorted(best_of.values(), key=lambda v: v.accuracy or 0.0, reverse=True)
            # The highest floor only the most accurate feasible model reaches; the tight budget only fast
            # models meet: its floor sits between the second and the least accurate (a fixed 0.9 did so for a
            # zoo whose small MLP scored 0.95; a rebuild scored it 0.893, leaving tight only the large MLP).
            high_floor = round(((ranked[0].accuracy or 0) + (ranked[1].accuracy or 0)) / 2, 4)
            tight_floor = round(((ranked[1].accuracy or 0) + (ranked[-1].accuracy or 0)) / 2, 4)
            top_model = ranked[0].model_name
            top_fast = min(
                (v for v in by_model[top_model] if (v.accuracy or 0.0) >= high_floor),
                key=lambda v: ProfileCurve.of(v).service_ms(ROWS),
            )
            # tight asks for a 503 rather than a late answer (an interactive caller with a fallback);
            # strict asks for an accuracy only a model too slow for its budget has: infeasible on any
            # deployment of this machine, so infaas should refuse it at once and run nothing.
            classes = [
                QueryClass("tight", 0.25, 10.0, tight_floor, ROWS, "reject"),
                QueryClass("cheap", 0.25, 50.0, 0.0, ROWS),
                QueryClass("accurate", 0.45, ACCURATE_BUDGET_MS, high_floor, ROWS),
            ]
            too_slow = [v.accuracy or 0.0 for m, vs in by_model.items() if m not in feasible for v in vs]
            if too_slow and max(too_slow) > (ranked[0].accuracy or 0.0):
                strict_floor = round((max(too_slow) + (ranked[0].accuracy or 0.0)) / 2, 4)
                classes.append(QueryClass("strict", 0.05, ACCURATE_BUDGET_MS, strict_floor, ROWS, "reject"))
            # Among the models that can serve the accurate class at all; ties (INT8 often keeps the
            # accuracy) go to the variant as registered (cpu-fp32): what a deployment without a variant
            # generator would serve.
            most_accurate = max(
                (v for v in variants if v.model_name in feasible),
                key=lambda v: (v.accuracy or 0.0, v.name == "cpu-fp32"),
            )
            profile = max(top_fast.profiles, key=lambda p: p.throughput_per_s)
            # Profiled capacity is one ONNX session alone on the machine; here every worker, the engine and
            # the client threads share two cores and one interpreter, so a replica sustains less. Scaling
            # the three utilization thresholds together keeps the hysteresis band's shape.
            default = PolicyConfig()
            config = PolicyConfig(
                high_utilization=default.high_utilization * args.util_scale,
                target_utilization=default.target_utilization * args.util_scale,
                low_utilization=default.low_utilization * args.util_scale,
                idle_unload_s=15.0,
                up_periods=2,
                down_periods=6,
                cooldown_s=1.5,
                down_after_up_s=6.0,
                vm_up_periods=2,
                vm_down_periods=3,
                vm_cooldown_s=4.0,
                vm_down_after_up_s=10.0,
                drain_timeout_s=10.0,
            )

            # Which classes no placement can serve, then the capacity, both on the deployment every run starts
            # from (the front-end's worker, warmed, autoscaler off).
            deployment.start(services)
            serve = engine_serve(services)
            _warm(serve, [Arrival(0.0, c, 0) for c in classes], inputs)
            infeasible = find_infeasible(serve, classes, inputs)
            log.info("infeasible on the idle system: %s", infeasible or "none")
            if len(infeasible) == len(classes):  # nothing to offer: the machine is too busy for these budgets
                failed = args.out / f"{deployment.results}-infeasible.json"
                failed.write_text(
                    json.dumps(
                        {
                            "infeasible_classes": infeasible,
                            "classes": [asdict(c) for c in classes],
                            "load_average_at_start": [round(x, 2) for x in load_at_start],
                            "load_average_now": [round(x, 2) for x in os.getloadavg()],
                            "deployment": deployment.describe(),
                        },
                        indent=2,
                    )
                    + "\n"
                )
                raise SystemExit(f"every class is infeasible on the idle system, nothing was run (see {failed})")
            deployment.stop(services)  # unload what warming the infeasible classes loaded
            deployment.start(services)
            _warm(serve, [Arrival(0.0, c, 0) for c in classes], inputs, infeasible)
            if args.capacity:
                calibration = {"method": "given on the command line (--capacity)", "capacity_qps": args.capacity}
            else:
                feasible_classes = [c for c in classes if c.name not in infeasible]
                calibration = deployment.calibrate(services, serve, feasible_classes, inputs) or calibrate(
                    serve,
                    feasible_classes,
                    inputs,
                    repeats=args.calibrate_repeats,
                    window_s=args.calibrate_window,
                    start_qps=args.calibrate_start,
                    seed=args.seed,
                    fresh=lambda: start_state(services, serve, feasible_classes, inputs),
                )
            deployment.stop(services)
            capacity = calibration["capacity_qps"]
            log.info("capacity %.1f q/s (staircases %s)", capacity, calibration.get("staircases_qps"))
            if not capacity:
                args.out.mkdir(parents=True, exist_ok=True)
                failed = args.out / f"{deployment.results}-calibration.json"
                failed.write_text(json.dumps(calibration, indent=2) + "\n")
                raise SystemExit(
                    f"no offered rate kept 99% of queries in time (windows in {failed}): "
                    "the machine is too busy to calibrate; nothing else was run"
                )

            def shape_at(level: float, burst_class: str | None = None) -> Shape:
                spike = level * capacity
                return Shape(
                    args.duration,
                    args.base * spike,
                    args.step * spike,
                    spike,
                    args.spike_from,
                    args.spike_to,
                    burst_class,
                    args.ramp,
                )

            levels: dict[str, dict] = {}
            for level in args.levels:
                shape = shape_at(level)
                spike = shape.spike
                rates = {"base": shape.base, "step": shape.step, "spike": spike}
                trace = make_trace(classes, shape, len(inputs), args.seed)
                log.info("level %g: %d queries over %.0f s (spike %.0f q/s)", level, len(trace), args.duration, spike)
                peak_rows = spike * ROWS
                peak_replicas = max(1, math.ceil(peak_rows / (profile.throughput_per_s * config.target_utilization)))
                per_worker = max(1, int(deployment.worker_cores) // max(1, top_fast.threads or WORKER_CORES))
                peak_workers = min(math.ceil(peak_replicas / per_worker), deployment.max_workers or peak_replicas)
                level_runs = []
                for name in SETUPS:
                    if args.only and name not in args.only:
                        continue
                    if name == "infaas":
                        level_runs.append(
                            deployment.run_infaas(services, trace, inputs, config, level, None, infeasible)
                        )
                    elif name == "fixed-accurate":
                        level_runs.append(
                            deployment.run_fixed(name, services, most_accurate, 1, 1, trace, inputs, level)
                        )
                    else:
                        level_runs.append(
                            deployment.run_fixed(
                                name, services, top_fast, peak_workers, peak_replicas, trace, inputs, level
                            )
                        )
                levels[f"{level:g}"] = {
                    "rates_qps": {k: round(v, 1) for k, v in rates.items()},
                    "queries": len(trace),
                    "queries_by_class": {c.name: sum(a.cls is c for a in trace) for c in classes},
                    "fixed_peak": f"{top_fast.key}, {peak_replicas} replicas on {peak_workers} worker(s)",
                    "setups": {r.name: r.summary(args.duration, prices_of(), set(infeasible)) for r in level_runs},
                }
            burst: dict = {}
            if args.burst_class and (not args.only or "infaas" in args.only):
                # Fairness across tenants: the same spike, but its extra queries all come from one tenant of one
                # class; the steady tenants' share of queries in time should not fall with it. Run once without
                # the fair share first (the control), then with it.
                shape = shape_at(args.burst_level, args.burst_class)
                trace = make_trace(classes, shape, len(inputs), args.seed)
                control = deployment.run_infaas(
                    services, trace, inputs, config, args.burst_level, AdmitAll(), infeasible
                )
                run = deployment.run_infaas(services, trace, inputs, config, args.burst_level, None, infeasible)
                burst = {
                    "level": args.burst_level,
                    "burst_class": args.burst_class,
                    "rates_qps": {
                        "base": round(shape.base, 1),
                        "step": round(shape.step, 1),
                        "spike": round(shape.spike, 1),
                    },
                    "queries_by_tenant": {t: sum(a.who == t for a in trace) for t in sorted({a.who for a in trace})},
                    "infaas": run.summary(args.duration, prices_of(), set(infeasible)),
                    "infaas_without_fair_share": control.summary(args.duration, prices_of(), set(infeasible)),
                }
        finally:
            deployment.close(services)

    report = {
        "what_is_real": __doc__.split("What is simulated")[0].split("What is real: ")[1].strip(),
        "what_is_simulated": deployment.what_is_simulated
        or "What is simulated" + __doc__.split("What is simulated")[1].split("Setups")[0].rstrip(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in load_at_start],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "code": code_at_start,
        "deployment": deployment.describe(),
        "calibration": calibration,
        "trace": {
            "duration_s": args.duration,
            "levels": args.levels,
            "shape": {"base": args.base, "step": args.step, "spike": 1.0, "unit": "fraction of the spike rate"},
            "spike_window_s": [args.spike_from * args.duration, args.spike_to * args.duration],
            "spike_ramp_s": args.ramp,
            "classes": [asdict(c) for c in classes],
            "seed": args.seed,
            "models_too_slow_for_the_accurate_budget": sorted(set(by_model) - set(feasible)),
        },
        "infeasible_classes": infeasible,
        "variants": {
            v.key: {
                "accuracy": v.accuracy,
                "threads": v.threads,
                "p50_b1_ms": round(ProfileCurve.of(v).service_ms(1), 4),
                f"p50_b{ROWS}_ms": round(ProfileCurve.of(v).service_ms(ROWS), 4),
                "best_throughput_per_s": round(max(p.throughput_per_s for p in v.profiles), 1),
            }
            for v in sorted(variants, key=lambda v: v.key)
        },
        "setups": {
            "infaas": "per-query selection, model- and VM-level autoscalers on",
            "fixed-accurate": f"{most_accurate.key}, 1 replica, 1 worker",
            "fixed-peak": f"{top_fast.key} (fastest meeting floor {high_floor}), replicas for the level's spike at "
            f"{config.target_utilization:.0%} of its profiled {profile.throughput_per_s:.0f} rows/s",
        },
        "levels": levels,
        "burst": burst,
        "policy": {
            k: getattr(config, k)
            for k in ("high_utilization", "target_utilization", "low_utilization", "up_periods", "down_periods")
        },
        "prices": prices_of(),
        "worker_cores": deployment.worker_cores,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{deployment.results}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / f"{deployment.results}.png")
    print(f"capacity {capacity} q/s (staircases {calibration.get('staircases_qps')}); infeasible {list(infeasible)}")
    for level, row in levels.items():
        for name, s in row["setups"].items():
            by_class = {c: (v["miss_rate"], v["reject_rate"], v["shed_rate"]) for c, v in s["by_class"].items()}
            print(
                f"{level:>4}× {name:15s} feasible: miss {s['feasible']['miss_rate']:.2%} rejected "
                f"{s['feasible']['reject_rate']:.2%} shed {s['feasible']['shed_rate']:.2%}  cost ${s['cost_usd']:.6f}  "
                f"jain {s['fairness']['jain_index_classes']}  (miss, reject, shed) by class {by_class}  "
                f"decisions {s.get('decisions_by_action')}"
            )
    if burst:
        for name in ("infaas_without_fair_share", "infaas"):
            print(
                f"burst of {args.burst_class} at {args.burst_level}×, {name}: "
                f"in time by tenant {burst[name]['fairness']['in_time_share_by_tenant']}"
            )


def code_version() -> dict:
    """The commit the run's code is at and whether the working tree differed from it (other sessions' edits too)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty_files": dirty}


def prices_of() -> dict[str, float]:
    return dict(Settings().prices)


if __name__ == "__main__":
    main()
