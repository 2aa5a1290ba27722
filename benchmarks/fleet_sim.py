"""A simulated fleet of up to 1,000 workers, a compressed day of traffic, driven by the real policies (issue 20 §3).

What is real (imported, never copied): the engine's selector (``infaas.fast_selector.fast_select``, the decisions of
``infaas.selector.select`` from indexes) places every chunk of queries (below);
``Autoscaler.view`` (``autoscaler/loop.py``) builds the policies' ``ClusterView`` from a stand-in live state and
worker clients; ``model_level.decide`` and ``vm_level.decide`` decide, exactly as ``step_model`` / ``step_vm``
call them; the instance's batching rule (``infaas.worker.instance.flush_at`` / ``batch_size``) forms batches;
service times are the zoo's measured profiles (p50 and p99 per batch size, load time, memory) read from a
registered, profiled zoo home (``--home``, made by ``benchmarks/trace.py`` or ``estimate_honesty.py``).

What is simulated, on SimPy's clock: arrivals, worker start-up delays, loads, a worker dying and a zone of
workers dying (their queued queries fail; live state keeps them until the heartbeat TTL, so the selector can
still pick them meanwhile), and each instance as a FIFO served by its replicas in batches.

Simplifications (what makes a day at tens of thousands of queries/s run in minutes on two cores):

* Time advances in ticks (``--tick``). Per tick and query class the arrivals (Poisson) are routed in *chunks*:
  ``select`` is called once per chunk, and the chunk goes where it chose; the next call sees the rows the chunk
  added to that instance's queue depth, so the traffic spreads as it does query by query. A chunk is at most
  what the chosen instance serves in one tick (replicas × queries per batch × batches per tick), at least one
  batch.
* ``select`` reads the live snapshot of one *group* of ``--group`` workers (a front-end's shard); a class's
  arrivals are split over groups by their active cores. With one group (the validation run) this is exact.
  The reference ``select`` over 1,000 workers cost 10-40 ms a call here, and one chunk per instance per tick is
  still thousands of calls a simulated second at the peak, which is why.
* Within a chunk, arrivals are spread evenly over the tick; latency = wait behind the backlog + the batching
  rule's gather wait (sparse arrivals) + service; service is the batch's occupancy (``occupancy_ms``: the
  profiled p50, or the time the profiled throughput allows when longer) plus, for 1% of queries, the gap to the
  profiled p99 (the profile's own tail); a worker whose instances want more cores than
  it has slows them in proportion (processor sharing). A later chunk at the same instance in the same tick
  arrives interleaved with the earlier ones: behind the work carried into the tick, at the rate they leave.
* Per-instance statistics (rate, p99, feasible misses) are kept over the autoscaler's window from those
  latencies, as live state's ``instance_stats`` does.

Validated by replaying each load level of ``benchmarks/trace.py``'s recorded run (``validate``: the same arrivals,
rebuilt from trace.json; its 2-core in-process workers, periods and window; 10 ms ticks) on the host that run had
(``Host``, replay only: every query's serving-path work queued for the one interpreter, the client giving up on
what it could not send within the budget, the selector asked with the budget left, its 503s and the real fair
share's 429s, the machine's cores shared by the interpreter, the workers' runs and the host's other processes), and
comparing the feasible queries' miss rate (within 1 point) and p99 (within 0.5-2x), counted as trace.py counts
them, with ``benchmarks/results/trace.json`` (or ``--trace-json``); benchmarks/README.md has the outcome.

Run: ``python -m benchmarks.fleet_sim --home /tmp/T-home`` (a copy of the home's database is read; nothing is
written there). Writes ``benchmarks/results/fleet_sim.json``; ``--validation-only`` replays trace.json alone and
writes ``fleet_sim_validation.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from itertools import dropwhile, takewhile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import simpy

from autoscaler import model_level, vm_level
from autoscaler.loop import Autoscaler
from autoscaler.policy_types import Action, History, PolicyConfig
from infaas.calibration import Calibration
from infaas.catalog import VariantInfo
from infaas.fair_share import FairShare, OverFairShare
from infaas.fast_selector import fast_select
from infaas.live_state.base import InstanceState, LiveSnapshot, VariantStats, WorkerState
from infaas.selector import (
    AccuracyUnavailable,
    Candidate,
    Infeasible,
    NoWorkerAvailable,
    OnInfeasible,
    Requirements,
    Selection,
)
from infaas.worker.instance import batch_size, flush_at

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRICES = {"cpu-core": 0.048, "gpu": 2.5}  # $/hour, as benchmarks/trace.py
TAIL_SHARE = 0.01  # queries whose service reaches the profiled p99
STARTUP_S = (30.0, 90.0)  # a worker's start-up, uniform between these (billed from the request: per-second billing)
VM_STEP_INPUTS = ("utilization", "need_cores", "expected_need_cores", "active_workers", "pending_workers", "streak")
WINDOW_KEPT_S = 30.0  # routed chunks kept per instance: statistics windows and queries a failure finds queued


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class QueryClass:
    """A kind of query: latency budget, accuracy floor, rows, and its share of traffic at the start and end of
    the day (the task mix shifts linearly between them)."""

    name: str
    budget_ms: float
    floor: float
    rows: int
    share_start: float
    share_end: float
    on_infeasible: OnInfeasible = "best_effort"  # what the selector does when the budget cannot be met

    def share(self, fraction: float) -> float:
        return self.share_start + (self.share_end - self.share_start) * fraction


@dataclass(frozen=True)
class Day:
    """A compressed day: diurnal curve from ``trough_qps`` to ``peak_qps`` with bursts (multipliers on the curve)."""

    length_s: float
    trough_qps: float
    peak_qps: float
    bursts: tuple[tuple[float, float, float], ...] = ((0.30, 20.0, 2.0), (0.55, 15.0, 1.6), (0.80, 20.0, 2.5))

    def rate(self, t: float) -> float:
        x = t / self.length_s
        diurnal = (0.5 - 0.5 * math.cos(2 * math.pi * x)) ** 2  # 0 at midnight, 1 at noon
        rate = self.trough_qps + (self.peak_qps - self.trough_qps) * diurnal
        for at, length, factor in self.bursts:
            if at * self.length_s <= t < at * self.length_s + length:
                rate *= factor
        return rate


def load_candidates(home: Path) -> list[Candidate]:
    """The zoo's ready, profiled variants from a home's database (copied first: the home may be in use).

    Without their measured replica speedups (``infaas.replica_scaling``): a simulated worker runs replicas by
    processor sharing (a replica on a free core serves its full profile), and the policies and the selector are told
    what the simulated workers do. Profiled on a busy two-core host, two one-thread replicas of the zoo's CNN INT8
    measured 0.9-1.07x one; told that, the VM level read the simulated load at 2.6x the cores it kept busy (720 s
    day, 60-worker peak, t = 480 s: 106 busy cores for 41) and held twice the workers it needed.
    """
    from infaas.db.session import Database
    from infaas.metadata import MetadataStore

    copy = Path(tempfile.mkdtemp(prefix="fleet-sim-")) / "infaas.db"
    src = sqlite3.connect(f"file:{home / 'infaas.db'}?mode=ro", uri=True)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.close()
    try:
        metadata = MetadataStore(Database(f"sqlite:///{copy}"))
        return [Candidate.of(m, _linear_replicas(v)) for m, v in metadata.ready_variants()]
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def _linear_replicas(variant: VariantInfo) -> VariantInfo:
    """``variant`` with no replica speedups measured: replicas serve as the simulated workers run them."""
    return replace(variant, profiles=tuple(replace(p, replica_throughput_per_s=()) for p in variant.profiles))


# ------------------------------------------------------------------------------------- the fleet model


def occupancy_ms(candidate: Candidate, rows: int) -> float:
    """How long one batch of ``rows`` rows holds a replica: the profiled p50 at that batch, or, when longer, the time
    its profiled throughput allows (the smallest profiled batch holding the rows; linear past the largest).

    Throughput is timed over all of a profile's runs, their tails and the gaps between them, and it is what the
    policies read capacity from (``VariantOption.capacity``). Serving at the p50 alone, replicas here ran up to
    twice as fast as the policies assumed (``digits-mlp-large/cpu-int8-static-t1`` at 64 rows: 0.915 ms p50,
    34,490 rows/s profiled, 1.86 ms a batch), so the autoscaler provisioned for a fleet half as fast as the one
    simulated while static provisioning was sized on the p50. At least 1 µs (profiles of tiny models read 0).
    """
    profiles = sorted(candidate.variant.profiles, key=lambda p: p.batch_size)
    at = next((p for p in profiles if p.batch_size >= rows), profiles[-1])
    mean_ms = 1000.0 * rows / at.throughput_per_s if at.throughput_per_s > 0 else 0.0
    return max(candidate.curve.service_ms(rows), mean_ms, 1e-3)


@dataclass
class Instance:
    worker: str
    candidate: Candidate
    replicas: int
    ready_at: float
    backlog_until: float = 0.0  # when the queries already routed here are done (replicas pooled)
    last_used: float = 0.0
    assigned_rows: int = 0  # routed this tick (counted as queued for the selector)
    routed_at: float | None = None  # the tick it was last routed queries in (they arrive over that tick)
    queued_from: float = 0.0  # rows waiting when that tick began
    queued_to: float = 0.0  # rows waiting when its arrivals ended (the tick's end)
    tick_from: float = 0.0  # ``backlog_until`` when that tick's first chunk came: the work carried into the tick
    tick_work_s: float = 0.0  # seconds of full-rate work the tick's chunks routed so far bring (``serve``)
    window: deque = field(default_factory=deque)  # (t, latencies array, misses)
    busy_core_s: float = 0.0  # this tick's demand on its worker's cores

    @property
    def key(self) -> str:
        return self.candidate.key


@dataclass
class Worker:
    id: str
    cores: int
    memory_mb: float
    zone: int
    started_at: float  # billed from here
    ready: bool = False
    draining: bool = False
    dead_at: float | None = None
    gone: bool = False  # removed from live state (dead past the TTL, or removed by the VM level)
    slow: float = 1.0
    instances: dict[str, Instance] = field(default_factory=dict)

    def state(self) -> WorkerState:
        used = sum(i.candidate.curve.memory_mb * max(i.replicas, 1) for i in self.instances.values())
        return WorkerState(self.id, "sim", self.cores, self.memory_mb, used, draining=self.draining)


@dataclass
class Tally:
    """Every query counted once: ``in_time``, ``missed`` (late), ``failed`` (its worker died), ``rejected`` (no
    placement, or the 503 of ``on_infeasible: "reject"``), and on a modelled host (``Host``) ``timed_out`` (the
    client could not send it within its budget) and ``shed`` (the fair share's 429)."""

    arrived: int = 0
    in_time: int = 0
    missed: int = 0
    failed: int = 0
    rejected: int = 0
    timed_out: int = 0
    shed: int = 0
    infeasible: int = 0  # of the served: no placement could meet the budget even on empty queues
    missed_infeasible: int = 0  # of ``missed``: late, but infeasible when selected (not a miss capacity fixes)
    accuracy_sum: float = 0.0
    served_by: dict = field(default_factory=lambda: defaultdict(int))
    hist: np.ndarray = field(default_factory=lambda: np.zeros(20_001, dtype=np.int64))  # 0.5 ms bins to 10 s

    def add(self, latencies: np.ndarray, budget: float, accuracy: float, key: str, infeasible: bool) -> int:
        n = len(latencies)
        late = int(np.count_nonzero(latencies > budget))
        self.missed += late
        self.in_time += n - late
        if infeasible:
            self.infeasible += n
            self.missed_infeasible += late
        self.accuracy_sum += accuracy * n
        self.served_by[key] += n
        np.add.at(self.hist, np.minimum((latencies * 2).astype(np.int64), len(self.hist) - 1), 1)
        return late

    def p(self, q: float) -> float:
        total = int(self.hist.sum())
        if total == 0:
            return 0.0
        return float(np.searchsorted(np.cumsum(self.hist), q * total) / 2.0)


class _Live:
    """What ``Autoscaler.view`` reads of live state, answered from the simulated fleet."""

    def __init__(self, sim: FleetSim) -> None:
        self.sim = sim

    def snapshot(self) -> LiveSnapshot:
        return self.sim.snapshot(self.sim.visible())

    def instance_stats(self, window_s: float) -> dict[tuple[str, str], VariantStats]:
        return self.sim.instance_stats(window_s)

    def recent_queries(self, limit: int) -> list[SimpleNamespace]:
        now, wall = self.sim.env.now, time.time()
        return [
            SimpleNamespace(
                variant_key=r.variant_key,
                worker=r.worker,
                at=wall - (now - r.at),
                min_accuracy=r.min_accuracy,
                min_fidelity=0.0,
                batch=r.batch,
                latency_ms=r.latency_ms,
            )
            for r in list(self.sim.recent)[-limit:]
        ]


class _Clients:
    def __init__(self, sim: FleetSim) -> None:
        self.sim = sim

    def get(self, worker_id: str) -> SimpleNamespace | None:
        worker = self.sim.workers.get(worker_id)
        if worker is None:
            return None
        now = self.sim.env.now
        instances = [
            SimpleNamespace(variant_key=i.key, replicas=i.replicas, idle_s=now - i.last_used)
            for i in worker.instances.values()
        ]
        return SimpleNamespace(status=lambda: SimpleNamespace(instances=instances))


class _Cache:
    def __init__(self, candidates: Sequence[Candidate]) -> None:
        self.by_model: dict[str, list[Candidate]] = defaultdict(list)
        self.models = {}
        for c in candidates:
            self.by_model[c.model.name].append(c)
            self.models[c.model.name] = c.model

    def all_models(self) -> list:
        return list(self.models.values())

    def for_model(self, name: str) -> tuple[Candidate, ...]:
        return tuple(self.by_model.get(name, ()))


@dataclass
class GroupView:
    group: list[Worker]
    snapshot: LiveSnapshot
    depth: dict[tuple[str, str], int]
    by_id: dict[str, Worker]


@dataclass(frozen=True)
class Setup:
    name: str
    model_level: bool
    vm_level: bool
    workers: int  # at the start (and for good, without the VM level)
    preload: bool  # instances sized for the class mix at the start (static provisioning)


@dataclass(frozen=True)
class Host:
    """The one machine ``benchmarks/trace.py``'s in-process deployment ran on, for the validation replay only (in a
    fleet run every simulated worker is a machine of its own and there is no host).

    trace.py runs the load-generating client, the front end's serving path (the query's task started by the client's
    loop, parsing, selection, the fair share, dispatch, accounting) and every in-process worker in one process on
    ``cores`` cores. So, per query, in arrival order:

    * the path's CPU work (``path_cpu_ms``) is served first come first served by the one interpreter (the GIL): a
      query waits until the interpreter is free, and one that waited longer than its budget is never sent
      (trace.py's ``timed-out``: the client gives up before sending);
    * the engine selects with the budget that is left after that wait (``trace.engine_serve`` passes the remaining
      time), through the real selector: a class with ``on_infeasible: "reject"`` gets the 503 (``rejected``) when
      nothing meets what is left; then the real fair share (``infaas.fair_share.FairShare``, on the simulated clock,
      one tenant per class as in trace.py) may shed an at-risk query of a tenant over its share (``shed``);
    * the interpreter's work, the workers' runs and the host's other processes (``other_cores``) share the cores by
      processor sharing: when they want more than ``cores``, the path and every run slow down in proportion.

    Where the numbers come from (``trace_host``): from a run's own recorded CPU when trace.json has it
    (``process.cpu_s``, ``host_cpu_s``, ``wall_s``), else the engine's measured path time (``overhead_ms``).
    """

    cores: int
    path_cpu_ms: float  # the interpreter's work per query (parse, select, dispatch, account, the client's share)
    other_cores: float  # cores the host's other processes kept busy
    source: str


class FleetSim:
    """One run of one setup over one day."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        classes: Sequence[QueryClass],
        setup: Setup,
        *,
        arrivals: object,  # Day, or a list of (t, class name) for replay
        length_s: float,
        cores: int,
        memory_mb: float,
        config: PolicyConfig,
        tick_s: float,
        group: int,
        model_period_s: float = 1.0,
        vm_period_s: float = 10.0,
        stats_window_s: float = 5.0,
        heartbeat_ttl_s: float = 3.0,
        startup_s: tuple[float, float] = STARTUP_S,
        failures: Sequence[tuple[float, str]] = (),
        max_workers: int = 2000,
        zones: int = 4,
        seed: int = 1,
        max_chunks: int = 64,
        host: Host | None = None,
    ) -> None:
        self.env = simpy.Environment()
        self.candidates = list(candidates)
        self.classes = list(classes)
        self.setup = setup
        self.arrivals = arrivals
        self.length_s = length_s
        self.cores, self.memory_mb = cores, memory_mb
        self.config = config
        self.tick_s, self.group = tick_s, group
        self.model_period_s, self.vm_period_s = model_period_s, vm_period_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.startup_s = startup_s
        self.failures = list(failures)
        self.zones = zones
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.max_chunks = max_chunks
        self.plans: dict[tuple[str, int], tuple[int, float]] = {}
        # The engine's online correction of the selector's estimates, on the simulated clock: what it has not
        # observed for STALE_S of simulated time expires, as it would in the engine.
        self.calibration = Calibration(lambda: self.env.now)
        self.workers: dict[str, Worker] = {}
        self.next_id = 0
        self.tally = {c.name: Tally() for c in self.classes}
        self.budgets = {c.name: c.budget_ms for c in self.classes}
        self.recent: deque = deque(maxlen=1000)
        self.decisions: list[dict] = []
        self.policy_calls = {"select": 0, "model_level.decide": 0, "vm_level.decide": 0, "view": 0}
        self.worker_seconds = 0.0
        self.peak_workers = 0
        self.pending = 0
        self.timeline: list[dict] = []
        self.select_wall_s = 0.0
        self.policy_wall_s = 0.0
        self.chunks_capped = 0
        self.model_history = History()
        self.vm_history = History()
        self.unmet: tuple[str, ...] = ()
        # The trace deployment's host (``Host``): its interpreter's queue, the slowdown of a shared machine, and
        # the front end's fair share on the simulated clock.
        self.host = host
        self.by_name = {c.name: c for c in self.classes}
        self.interpreter_free = 0.0  # when the interpreter has done the path work queued so far
        self.interpreter_cpu_s = 0.0  # path CPU queued this tick (its demand on the host's cores)
        self.host_slow = 1.0
        self.host_now = 0.0
        self.fair_share = FairShare(clock=lambda: self.host_now)
        settings = SimpleNamespace(
            autoscaler="on",
            autoscaler_lease_renew_s=1.0,
            autoscaler_lease_s=3.0,
            idle_unload_s=config.idle_unload_s,
            worker_cores=cores,
            prices=PRICES,
            min_workers=1,
            max_workers=max_workers,
        )
        engine = SimpleNamespace(live=_Live(self), workers=_Clients(self), cache=_Cache(self.candidates))
        services = SimpleNamespace(settings=settings, engine=engine, leadership=None)
        self.scaler = Autoscaler(
            services,  # type: ignore[arg-type]  # the parts view() reads
            config=config,
            stats_window_s=stats_window_s,
            clock=lambda: self.env.now,
        )
        for _ in range(setup.workers):
            worker = self.add_worker(ready=True)
            if setup.preload:
                self.preload(worker)

    # -- fleet ----------------------------------------------------------------------------------------
    def add_worker(self, ready: bool) -> Worker:
        self.next_id += 1
        wid = f"w{self.next_id:04d}"
        worker = Worker(wid, self.cores, self.memory_mb, self.next_id % self.zones, self.env.now, ready=ready)
        self.workers[wid] = worker
        self.scaler._owned.add(wid)  # every simulated worker was started by the provider: removable
        return worker

    def visible(self) -> list[Worker]:
        """Workers live state lists: registered, not yet timed out."""
        return [w for w in self.workers.values() if w.ready and not w.gone]

    def snapshot(self, workers: Sequence[Worker]) -> LiveSnapshot:
        states = tuple(w.state() for w in workers)
        instances: dict[str, list[InstanceState]] = defaultdict(list)
        depth: dict[tuple[str, str], int] = {}
        now = self.env.now
        for w in workers:
            for inst in w.instances.values():
                instances[inst.key].append(InstanceState(w.id, inst.key, inst.replicas, inst.candidate.curve.memory_mb))
                rows = self.depth_rows(inst, now)
                if rows:
                    depth[(w.id, inst.key)] = rows
        return LiveSnapshot(states, {k: tuple(v) for k, v in instances.items()}, depth)

    def depth_rows(self, inst: Instance, now: float) -> int:
        """Rows waiting at ``now``: queries that have arrived and are not done, plus those routed in this tick.

        Queries routed at a tick arrive over it, so the queue is read between the one when the tick began and
        the one when its arrivals ended, then drains at the instance's rate. Reading the time until the last
        routed query is done as queued work counted queries that had not arrived yet: a tick's arrivals at an
        idle instance read as up to a second of full-rate work (57,000 rows on an instance serving 661 rows/s
        with a 0.2 ms p99, 11.9 million on a logistic regression), which made idle instances overloaded (queue
        time), derated them to the floor, reported unmet demand that added workers at 0.2% utilization, and
        kept every worker from reading as idle.
        """
        if inst.routed_at is None:
            return inst.assigned_rows
        into = now - inst.routed_at
        if into <= self.tick_s:
            waiting = inst.queued_from + (inst.queued_to - inst.queued_from) * max(0.0, into) / self.tick_s
        else:
            last = inst.window[-1] if inst.window else None
            cls_rows = last[3] if last else 1
            budget_ms = self.budgets.get(last[6]) if last else None
            drained = (into - self.tick_s) * self.round_rate(inst, cls_rows, budget_ms) * cls_rows
            waiting = max(0.0, inst.queued_to - drained)
        return int(math.ceil(waiting)) + inst.assigned_rows

    def batch_plan(self, inst: Instance, rows: int, budget_ms: float | None) -> tuple[int, float]:
        """Queries per batch (the instance's batching rule, queries of ``rows`` rows waiting together, each with
        ``budget_ms`` left) and its service seconds."""
        plan = self.plans.get((inst.key, rows, budget_ms))
        if plan is None:
            curve = inst.candidate.curve
            best = max(1, curve.best_batch)
            deadlines = [None if budget_ms is None else budget_ms / 1000.0] * best
            k = batch_size([rows] * best, best, deadlines, lambda r: curve.service_ms(r) / 1000.0)
            plan = self.plans[(inst.key, rows, budget_ms)] = (k, occupancy_ms(inst.candidate, k * rows) / 1000.0)
        return plan

    def round_rate(self, inst: Instance, rows: int, budget_ms: float | None) -> float:
        k, service_s = self.batch_plan(inst, rows, budget_ms)
        worker = self.workers[inst.worker]
        return max(inst.replicas, 1) * k / (service_s * worker.slow)

    def preload(self, worker: Worker) -> None:
        """Static provisioning: the variant the selector picks for each class on an idle worker, with replicas
        shared out in proportion to each class's busy cores over the day."""
        need: dict[str, float] = {}
        picks: dict[str, Candidate] = {}
        for cls in self.classes:
            pick = self.pick_idle(cls)
            k, service_s = self.batch_plan(Instance(worker.id, pick, 1, 0.0), cls.rows, cls.budget_ms)
            share = (cls.share_start + cls.share_end) / 2
            picks[pick.key] = pick
            need[pick.key] = need.get(pick.key, 0.0) + share * service_s / k * (pick.variant.threads or self.cores)
        total = sum(need.values()) or 1.0
        for key, demand in need.items():
            threads = picks[key].variant.threads or self.cores
            replicas = max(1, round(self.cores * demand / total / threads))
            worker.instances[key] = Instance(worker.id, picks[key], replicas, 0.0)

    def pick_idle(self, cls: QueryClass) -> Candidate:
        state = WorkerState("idle", "sim", self.cores, self.memory_mb)
        return fast_select(self.requirements(cls), self.candidates, LiveSnapshot((state,), {}), PRICES).candidate

    def requirements(self, cls: QueryClass, latency_ms: float | None = None) -> Requirements:
        task = self.candidates[0].model.task  # the engine sets batch to the rows a query carries
        return Requirements(
            task=task,
            latency_ms=cls.budget_ms if latency_ms is None else latency_ms,
            min_accuracy=cls.floor,
            batch=cls.rows,
            on_infeasible=cls.on_infeasible,
        )

    # -- traffic --------------------------------------------------------------------------------------
    def arrivals_in(self, t: float) -> dict[str, int]:
        if isinstance(self.arrivals, Day):
            x = t / self.length_s
            rate = self.arrivals.rate(t)
            shares = [c.share(x) for c in self.classes]
            total = sum(shares)
            return {
                c.name: int(self.np_rng.poisson(rate * s / total * self.tick_s))
                for c, s in zip(self.classes, shares, strict=True)
            }
        counts: dict[str, int] = defaultdict(int)
        replay: deque = self.arrivals  # type: ignore[assignment]
        while replay and replay[0][0] < t + self.tick_s:
            counts[replay.popleft()[1]] += 1
        return counts

    def replay_in(self, t: float) -> list[tuple[float, str]]:
        """The replayed arrivals of the tick starting at ``t``, with their times."""
        replay: deque = self.arrivals  # type: ignore[assignment]
        out = []
        while replay and replay[0][0] < t + self.tick_s:
            out.append(replay.popleft())
        return out

    def tick(self) -> simpy.events.Event:
        while self.env.now < self.length_s:
            now = self.env.now
            self.detect_dead(now)
            live = [w for w in self.visible() if not w.draining]
            self.update_slowdown(live)
            if self.host is not None:
                self.route_on_host(self.replay_in(now), live, now)
                self.end_tick(now)
                yield self.env.timeout(self.tick_s)
                continue
            counts = self.arrivals_in(now)
            groups = self.groups(live)
            views: list[GroupView | None] = [None] * len(groups)
            for cls in self.classes:
                n = counts.get(cls.name, 0)
                self.tally[cls.name].arrived += n
                if n == 0:
                    continue
                if not groups:
                    self.tally[cls.name].rejected += n
                    continue
                weights = np.array([sum(w.cores for w in g) for g in groups], dtype=float)
                split = self.np_rng.multinomial(n, weights / weights.sum())
                for i, m in enumerate(split):
                    if m:
                        if views[i] is None:
                            views[i] = self.group_view(groups[i])
                        self.route(cls, views[i], int(m), now)
            self.end_tick(now)
            yield self.env.timeout(self.tick_s)

    def end_tick(self, now: float) -> None:
        for w in self.workers.values():
            for inst in w.instances.values():
                inst.assigned_rows = 0
        self.account(now)

    def route_on_host(self, arrivals: list[tuple[float, str]], live: list[Worker], now: float) -> None:
        """Each arrival of the tick, in order, through the host's interpreter, then selected and served one by one
        (``Host``): the front end sees every worker (one group)."""
        host = self.host
        assert host is not None
        view = self.group_view(live) if live else None
        for at, name in arrivals:
            cls = self.by_name[name]
            tally = self.tally[name]
            tally.arrived += 1
            start = max(at, self.interpreter_free)
            wait_s = start - at
            if wait_s * 1000.0 > cls.budget_ms:  # the client gives up before sending: nothing runs
                tally.timed_out += 1
                continue
            path_s = host.path_cpu_ms / 1000.0 * self.host_slow
            self.interpreter_free = start + path_s
            self.interpreter_cpu_s += host.path_cpu_ms / 1000.0
            if view is None:
                tally.rejected += 1
                continue
            self.route_one(cls, view, now, at, wait_s, path_s)

    def route_one(self, cls: QueryClass, view: GroupView, now: float, at: float, wait_s: float, path_s: float) -> None:
        """One query that reached the engine ``wait_s`` after it arrived, selected with the budget left then (as
        ``trace.engine_serve`` asks), admitted by the fair share, and at its instance when its path work is done."""
        tally = self.tally[cls.name]
        req = self.requirements(cls, max(0.1, cls.budget_ms - wait_s * 1000.0))
        started = time.perf_counter()
        try:
            choice = fast_select(req, self.candidates, view.snapshot, PRICES, correct=self.calibration.correction())
        except (Infeasible, NoWorkerAvailable, AccuracyUnavailable):  # the 503 (or no variant to its floor)
            tally.rejected += 1
            return
        finally:
            self.select_wall_s += time.perf_counter() - started
            self.policy_calls["select"] += 1
        self.host_now = at + wait_s
        try:
            self.fair_share.admit(cls.name, choice.slo_at_risk and not choice.infeasible)
        except OverFairShare:  # the 429: nothing runs
            tally.shed += 1
            return
        worker = view.by_id[choice.worker]
        inst = worker.instances.get(choice.candidate.key)
        if inst is None:
            inst = self.load(worker, choice.candidate, now)
            fresh = self.snapshot(view.group)
            view.snapshot = LiveSnapshot(fresh.workers, fresh.instances, view.depth)
        host_s = wait_s + path_s
        self.serve(inst, worker, cls, choice, 1, now, at=np.array([at + host_s]), host_ms=host_s * 1000.0)
        view.depth[(worker.id, inst.key)] = view.depth.get((worker.id, inst.key), 0) + cls.rows

    def groups(self, live: list[Worker]) -> list[list[Worker]]:
        if not live:
            return []
        count = max(1, math.ceil(len(live) / self.group))
        ordered = sorted(live, key=lambda w: w.id)
        return [ordered[i::count] for i in range(count)]

    def group_view(self, group: list[Worker]) -> GroupView:
        """A group's live snapshot for this tick, shared by every class routed in it: the depths it holds grow
        with every chunk routed, as live state's do with every query."""
        snap = self.snapshot(group)
        depth = dict(snap.queue_depth)
        return GroupView(group, LiveSnapshot(snap.workers, snap.instances, depth), depth, {w.id: w for w in group})

    def route(self, cls: QueryClass, view: GroupView, n: int, now: float) -> None:
        req = self.requirements(cls)
        tally = self.tally[cls.name]
        snap, depth, by_id = view.snapshot, view.depth, view.by_id
        chunks = 0
        while n > 0:
            started = time.perf_counter()
            try:
                choice = fast_select(req, self.candidates, snap, PRICES, correct=self.calibration.correction())
            except (NoWorkerAvailable, AccuracyUnavailable):  # the engine refuses: no worker, no variant to its floor
                tally.rejected += n
                return
            finally:
                self.select_wall_s += time.perf_counter() - started
                self.policy_calls["select"] += 1
            worker = by_id[choice.worker]
            inst = worker.instances.get(choice.candidate.key)
            if inst is None:
                inst = self.load(worker, choice.candidate, now)
                fresh = self.snapshot(view.group)
                snap = view.snapshot = LiveSnapshot(fresh.workers, fresh.instances, depth)
            chunks += 1
            k, service_s = self.batch_plan(inst, cls.rows, cls.budget_ms)
            per_tick = max(k, int(self.round_rate(inst, cls.rows, cls.budget_ms) * self.tick_s))
            m = n if chunks >= self.max_chunks else min(n, per_tick)
            if chunks >= self.max_chunks and n > per_tick:
                self.chunks_capped += 1
            self.serve(inst, worker, cls, choice, m, now)
            depth[(worker.id, inst.key)] = depth.get((worker.id, inst.key), 0) + m * cls.rows
            n -= m

    def load(self, worker: Worker, candidate: Candidate, now: float) -> Instance:
        """A cold placement: load (evicting idle instances, least recently used first, when memory is short)."""
        curve = candidate.curve
        state = worker.state()
        free = state.memory_free_mb
        for victim in sorted(worker.instances.values(), key=lambda i: i.last_used):
            if free >= curve.memory_mb:
                break
            if victim.backlog_until <= now and victim.assigned_rows == 0:
                free += victim.candidate.curve.memory_mb * victim.replicas
                del worker.instances[victim.key]
        ready = now + curve.load_ms / 1000.0
        inst = Instance(worker.id, candidate, 1, ready, backlog_until=ready, last_used=now)  # idle from its load
        worker.instances[candidate.key] = inst
        return inst

    def serve(
        self,
        inst: Instance,
        worker: Worker,
        cls: QueryClass,
        choice: Selection,
        m: int,
        now: float,
        at: np.ndarray | None = None,
        host_ms: float = 0.0,
    ) -> None:
        """Latencies of ``m`` queries arriving evenly over this tick at ``inst`` (see the module docstring), or at
        ``at``; ``host_ms`` is what each spent on the host before it reached the instance (``Host``)."""
        tally = self.tally[cls.name]
        if worker.dead_at is not None:
            tally.failed += m
            return
        curve = inst.candidate.curve
        k, service_s = self.batch_plan(inst, cls.rows, cls.budget_ms)
        service_s *= worker.slow
        rate = self.round_rate(inst, cls.rows, cls.budget_ms)  # queries/s with full batches
        gap = self.tick_s / m
        arrive = now + (np.arange(m) + 0.5) * gap if at is None else at
        if inst.routed_at != now:  # the first chunk of this tick: what waited when it began
            inst.queued_from = float(self.depth_rows(inst, now) - inst.assigned_rows)
            inst.routed_at = now
            inst.tick_from = inst.backlog_until
            inst.tick_work_s = 0.0
        start, share = max(inst.backlog_until, inst.ready_at), rate
        if at is None and inst.tick_work_s > 0.0:
            # Another chunk of this tick (another class's, or more of the same class's) arrives over the same tick
            # as the earlier ones, interleaved with them: it waits behind the work carried into the tick and gets
            # the rate the earlier chunks leave, not the end of their last arrival. Queued behind that end, a
            # sparse tight chunk at one of the large MLP's variants made every cheap chunk after it in the tick
            # wait ~1 s (session 9's 1,000-worker 2,880 s day: cheap 8.5% late, p99 886 ms, none of them on the
            # small MLP, which the tight class does not use). Queued stays when sooner (the earlier chunks fill
            # the tick).
            spare = 1.0 - inst.tick_work_s / self.tick_s
            alone = max(inst.tick_from, inst.ready_at)
            if spare > 0.0 and max(alone, arrive[0]) + m / (rate * spare) < max(start, arrive[0]) + m / rate:
                start, share = alone, rate * spare
        if start > arrive[0] or gap * share < 1.0:  # backlog, or arrivals faster than full batches drain
            wait = np.maximum(0.0, (start - arrive[0]) + np.arange(m) * (1.0 / share - gap))
            done = max(start, arrive[0]) + m / share
            lat = wait + service_s
        else:  # sparse: the batching rule decides how long a batch gathers
            flush = flush_at(
                [(arrive[0], cls.rows, arrive[0] + cls.budget_ms / 1000.0)], max(1, curve.best_batch), curve
            )
            hold = 0.0 if flush is None else max(0.0, flush - arrive[0])
            b = max(1, min(k, 1 + int(hold / gap)))
            b_service = occupancy_ms(inst.candidate, b * cls.rows) / 1000.0 * worker.slow
            position = np.arange(m) % b
            lat = np.minimum(hold, (b - 1) * gap) - position * gap
            lat = np.maximum(lat, 0.0) + b_service
            done = arrive[-1] + b_service
        tail = self.np_rng.random(m) < TAIL_SHARE
        lat_ms = lat * 1000.0 + tail * (curve.tail_ms(k * cls.rows) - curve.service_ms(k * cls.rows)) + host_ms
        inst.tick_work_s += m / rate
        inst.backlog_until = max(inst.backlog_until, done)
        inst.queued_to = max(0.0, inst.backlog_until - (now + self.tick_s)) * rate * cls.rows
        inst.last_used = now
        inst.assigned_rows += m * cls.rows
        inst.busy_core_s += m / k * service_s / worker.slow * (inst.candidate.variant.threads or self.cores)
        late = tally.add(lat_ms, cls.budget_ms, inst.candidate.accuracy or 0.0, inst.key, choice.infeasible)
        if choice.loaded:  # as the engine does, from served queries of loaded instances (three of the chunk)
            for i in sorted({0, m // 2, m - 1}):
                actual = float(lat_ms[i])
                self.calibration.observe(
                    inst.key,
                    worker.id,
                    choice.raw_estimated_ms,
                    actual,
                    worker_ms=actual - host_ms,  # the engine learns the path's time as its overhead
                    budget_ms=cls.budget_ms,
                )
        inst.window.append(
            (now, lat_ms, 0 if choice.infeasible else late, cls.rows, m, choice.infeasible, cls.name, late)
        )
        while inst.window[0][0] < now - WINDOW_KEPT_S:  # what a failure or the autoscaler's window can still need
            inst.window.popleft()
        self.recent.append(
            SimpleNamespace(
                variant_key=inst.key,
                worker=worker.id,
                at=now,
                min_accuracy=cls.floor,
                batch=cls.rows,
                latency_ms=cls.budget_ms,
            )
        )

    def update_slowdown(self, live: list[Worker]) -> None:
        if self.host is not None:
            # One machine: a running thread shares the cores with the host's other work and the rest of this
            # tick's average demand, itself counted as at least one core (the interpreter is one thread).
            runs = sum(i.busy_core_s for w in live for i in w.instances.values()) / self.tick_s
            path = min(1.0, self.interpreter_cpu_s / self.tick_s)
            other, cores = self.host.other_cores, self.host.cores
            self.host_slow = max(1.0, (1.0 + runs + other) / cores)
            run_slow = max(1.0, (max(1.0, runs + path) + other) / cores)
            self.interpreter_cpu_s = 0.0
            for w in live:
                w.slow = run_slow
                for i in w.instances.values():
                    i.busy_core_s = 0.0
            return
        for w in live:
            demand = sum(i.busy_core_s for i in w.instances.values()) / self.tick_s
            w.slow = max(1.0, demand / w.cores)
            for i in w.instances.values():
                i.busy_core_s = 0.0

    def account(self, now: float) -> None:
        billed = [w for w in self.workers.values() if w.dead_at is None and not (w.gone)]
        self.worker_seconds += len(billed) * self.tick_s
        self.peak_workers = max(self.peak_workers, len(billed))

    def instance_stats(self, window_s: float) -> dict[tuple[str, str], VariantStats]:
        now = self.env.now
        out = {}
        since = now - window_s
        for w in self.visible():
            for inst in w.instances.values():
                # Read, not trimmed: the 1 s window read after the 5 s one had popped what the 5 s window and a
                # failure's accounting still needed (rates read at a fifth; ``serve`` trims to WINDOW_KEPT_S).
                # Only chunks whose queries have all arrived (a chunk arrives over the tick it was routed in): the
                # chunk routed at ``now`` as well read one tick more than the window, the 1 s rate at twice the
                # arrivals (an instance at 26,000 rows/s read 52,000: overloaded, no room, unmet, workers added
                # at 20-50% utilization on the 1,440 s day).
                arrived = dropwhile(lambda e: e[0] + self.tick_s > now + 1e-9, reversed(inst.window))
                entries = list(takewhile(lambda e: e[0] >= since, arrived))
                if not entries:
                    continue
                lats = np.concatenate([e[1] for e in entries])
                queries = sum(e[4] for e in entries)
                infeasible = sum(e[4] for e in entries if e[5])
                feasible = queries - infeasible
                misses = sum(e[2] for e in entries)
                out[(w.id, inst.key)] = VariantStats(
                    inst.key,
                    queries,
                    queries / window_s,
                    float(np.percentile(lats, 50)),
                    float(np.percentile(lats, 99)),
                    misses / feasible if feasible else 0.0,
                    0.0,
                    queries,
                    infeasible / queries,
                )
        return out

    # -- failures -------------------------------------------------------------------------------------
    def fail(self, what: str) -> None:
        alive = [w for w in self.workers.values() if w.ready and w.dead_at is None]
        if not alive:
            return
        if what == "worker":
            victims = [self.rng.choice(alive)]
        else:
            zone = self.rng.randrange(self.zones)
            victims = [w for w in alive if w.zone == zone]
        now = self.env.now
        for w in victims:
            w.dead_at = now
            for inst in w.instances.values():  # queries not finished by now fail instead of finishing
                for routed, lat_ms, _miss, _rows, m, infeasible, name, _late in inst.window:
                    done = routed + (np.arange(m) + 0.5) * (self.tick_s / m) + lat_ms / 1000.0
                    lost = done > now
                    n_lost = int(np.count_nonzero(lost))
                    if not n_lost:
                        continue
                    lost_late = int(np.count_nonzero(lost & (lat_ms > self.budgets[name])))
                    tally = self.tally[name]
                    tally.failed += n_lost
                    tally.missed -= lost_late
                    tally.in_time -= n_lost - lost_late
                    if infeasible:  # failed by the fault, not by the budget: counted as a feasible query's failure
                        tally.infeasible -= n_lost
                        tally.missed_infeasible -= lost_late
        self.decisions.append({"t_s": round(now, 2), "level": "failure", "action": what, "workers": len(victims)})

    def detect_dead(self, now: float) -> None:
        for w in self.workers.values():
            if w.dead_at is not None and not w.gone and now - w.dead_at >= self.heartbeat_ttl_s:
                w.gone = True
                w.instances.clear()

    def failures_process(self) -> simpy.events.Event:
        for at, what in sorted(self.failures):
            yield self.env.timeout(max(0.0, at - self.env.now))
            self.fail(what)

    # -- the autoscaler -------------------------------------------------------------------------------
    def step_model(self) -> list[Action]:
        started = time.perf_counter()
        view = self.scaler.view()
        plan = model_level.decide(view, self.model_history, self.config)
        self.policy_wall_s += time.perf_counter() - started
        self.policy_calls["view"] += 1
        self.policy_calls["model_level.decide"] += 1
        self.model_history, self.unmet = plan.history, plan.unmet
        return list(plan.actions)

    def step_vm(self) -> list[Action]:
        started = time.perf_counter()
        self.scaler._pending = self.pending  # what loop.view reports as workers asked for, not yet registered
        view = self.scaler.view()
        plan = vm_level.decide(view, self.vm_history, self.config, self.unmet, self.model_history.derate)
        self.policy_wall_s += time.perf_counter() - started
        self.policy_calls["view"] += 1
        self.policy_calls["vm_level.decide"] += 1
        self.vm_history = plan.history
        return list(plan.actions)

    def model_process(self) -> simpy.events.Event:
        while True:
            yield self.env.timeout(self.model_period_s)
            for action in self.step_model():
                self.apply(action)

    def vm_process(self) -> simpy.events.Event:
        while True:
            yield self.env.timeout(self.vm_period_s)
            for action in self.step_vm():
                self.apply(action)

    def apply(self, action: Action) -> None:
        now = self.env.now
        decision = {"t_s": round(now, 2), "level": action.level, "action": action.action, "target": action.target}
        if action.action == "add_worker":  # what a step was sized on: where the VM level's cost comes from
            decision.update(count=action.count, **{k: action.inputs.get(k) for k in VM_STEP_INPUTS})
        self.decisions.append(decision)
        worker = self.workers.get(action.worker or action.target)
        if action.action == "add_worker":
            for _ in range(action.count):
                self.env.process(self.start_worker())
        elif action.action == "drain_worker" and worker:
            worker.draining = True
        elif action.action == "undrain" and worker:
            worker.draining = False
        elif action.action == "remove_worker" and worker:
            worker.gone = True
            worker.dead_at = now
            worker.instances.clear()
        elif worker is None or worker.dead_at is not None:
            return
        elif action.action in {"add_replica", "place"}:
            inst = worker.instances.get(action.variant or "")
            candidate = self.candidate(action.variant)
            if inst is None:
                inst = self.load(worker, candidate, now)
                inst.replicas = action.count
            else:
                inst.replicas += action.count
        elif action.action == "remove_replica" and action.variant in worker.instances:
            inst = worker.instances[action.variant]
            inst.replicas = max(1, inst.replicas - action.count)
        elif action.action in {"upgrade", "downgrade"}:
            old = worker.instances.pop(action.variant or "", None)
            inst = self.load(worker, self.candidate(action.to_variant), now)
            inst.replicas = action.count
            if old is not None:
                inst.window = old.window  # the queries it served stay in the window statistics
        elif action.action == "unload":
            worker.instances.pop(action.variant or "", None)

    def candidate(self, key: str | None) -> Candidate:
        return next(c for c in self.candidates if c.key == key)

    def start_worker(self) -> simpy.events.Event:
        self.pending += 1
        worker = self.add_worker(ready=False)  # billed while it starts, as a VM is
        yield self.env.timeout(self.rng.uniform(*self.startup_s))
        self.pending -= 1
        worker.ready = True
        self.decisions.append({"t_s": round(self.env.now, 2), "level": "vm", "action": "worker_started"})

    def sample_process(self) -> simpy.events.Event:
        """The fleet and the queries between samples: where in the day misses and cost come from."""
        seen = Tally()
        while True:
            arrived = sum(t.arrived for t in self.tally.values())
            missed = sum(_feasible_misses(t) for t in self.tally.values())
            rejected = sum(t.rejected for t in self.tally.values())
            alive = [w for w in self.workers.values() if w.dead_at is None and not w.gone]
            self.timeline.append(
                {
                    "t_s": round(self.env.now, 1),
                    "workers": len(alive),
                    "ready": sum(1 for w in alive if w.ready and not w.draining),
                    "starting": sum(1 for w in alive if not w.ready),
                    "draining": sum(1 for w in alive if w.draining),
                    "replicas": sum(
                        i.replicas for w in self.workers.values() if not w.gone for i in w.instances.values()
                    ),
                    "offered_qps": round(self.arrivals.rate(self.env.now), 1)
                    if isinstance(self.arrivals, Day)
                    else None,
                    "queries": arrived - seen.arrived,
                    "misses": missed - seen.missed,
                    "rejected": rejected - seen.rejected,
                }
            )
            seen.arrived, seen.missed, seen.rejected = arrived, missed, rejected
            yield self.env.timeout(max(self.length_s / 200, self.tick_s))

    # -- running --------------------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.perf_counter()
        self.env.process(self.tick())
        self.env.process(self.failures_process())
        self.env.process(self.sample_process())
        if self.setup.model_level:
            self.env.process(self.model_process())
        if self.setup.vm_level:
            self.env.process(self.vm_process())
        self.env.run(until=self.length_s)
        wall = time.perf_counter() - started
        return self.report(wall)

    def report(self, wall_s: float) -> dict:
        total = Tally()
        for t in self.tally.values():
            for f in (
                "arrived",
                "in_time",
                "missed",
                "failed",
                "rejected",
                "timed_out",
                "shed",
                "infeasible",
                "missed_infeasible",
            ):
                setattr(total, f, getattr(total, f) + getattr(t, f))
            total.accuracy_sum += t.accuracy_sum
            total.hist += t.hist
            for k, v in t.served_by.items():
                total.served_by[k] += v
        served = total.in_time + total.missed + total.failed
        feasible = total.arrived - total.infeasible
        actions = [d for d in self.decisions if d["level"] in ("model", "vm") and d["action"] != "worker_started"]
        minutes = self.length_s / 60.0
        cost = self.worker_seconds * self.cores * PRICES["cpu-core"] / 3600.0
        return {
            "setup": self.setup.name,
            "queries": total.arrived,
            "in_time": total.in_time,
            "missed": total.missed,
            "failed": total.failed,
            "rejected": total.rejected,
            "timed_out": total.timed_out,
            "shed": total.shed,
            "conserved": total.arrived
            == total.in_time + total.missed + total.failed + total.rejected + total.timed_out + total.shed,
            "slo_miss_rate": round(_feasible_misses(total) / max(1, feasible), 5),
            "infeasible": total.infeasible,
            "reject_rate": round(total.rejected / max(1, total.arrived), 5),
            "mean_accuracy": round(total.accuracy_sum / max(1, served), 4),
            "p50_ms": total.p(0.50),
            "p99_ms": total.p(0.99),
            "cost_usd": round(cost, 4),
            "worker_hours": round(self.worker_seconds / 3600.0, 3),
            "peak_workers": self.peak_workers,
            "decisions": len(actions),
            "decisions_per_minute": round(len(actions) / minutes, 2),
            "decisions_by_action": dict(sorted(_count(d["action"] for d in actions).items())),
            "flapping": self.flapping(),
            "policy_calls": dict(self.policy_calls),
            "by_class": {
                c: {
                    "queries": t.arrived,
                    "slo_miss_rate": round(_feasible_misses(t) / max(1, t.arrived - t.infeasible), 5),
                    "p99_ms": t.p(0.99),
                }
                for c, t in self.tally.items()
            },
            "served_by": dict(sorted(total.served_by.items(), key=lambda kv: -kv[1])[:8]),
            "chunks_capped": self.chunks_capped,
            "wall_s": round(wall_s, 1),
            "select_wall_s": round(self.select_wall_s, 1),
            "policy_wall_s": round(self.policy_wall_s, 1),
            "simulated_queries_per_wall_s": round(total.arrived / max(wall_s, 1e-9)),
            "timeline": self.timeline,
            "vm_steps": [d for d in self.decisions if d["action"] == "add_worker"],
        }

    def flapping(self) -> dict:
        """Workers added then drained or removed within ``vm_cooldown_s``, replicas added then removed within
        ``cooldown_s`` on the same instance."""
        added: dict[str, float] = {}
        up: dict[str, float] = {}
        workers = replicas = 0
        for d in self.decisions:
            if d["action"] == "worker_started":
                continue
            if d["action"] in ("add_replica", "place", "upgrade"):
                up[d["target"]] = d["t_s"]
            elif d["action"] in ("remove_replica", "downgrade", "unload"):
                if d["target"] in up and d["t_s"] - up[d["target"]] < self.config.cooldown_s:
                    replicas += 1
        started = sorted(d["t_s"] for d in self.decisions if d["action"] == "worker_started")
        for w in self.workers.values():
            added[w.id] = w.started_at
        for d in self.decisions:
            if d["action"] in ("drain_worker", "remove_worker") and d["target"] in added:
                born = added[d["target"]]
                if born > 0 and d["t_s"] - born < self.config.vm_cooldown_s:
                    workers += 1
        return {"workers": workers, "replicas": replicas, "workers_started": len(started)}


def _feasible_misses(t: Tally) -> int:
    """Late, failed or timed out among the queries that were feasible when selected (what the targets count)."""
    return t.missed - t.missed_infeasible + t.failed + t.timed_out


def _count(items) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for i in items:
        out[i] += 1
    return out


# ------------------------------------------------------------------------------------------ experiments


def fleet_classes(candidates: Sequence[Candidate] = ()) -> list[QueryClass]:
    """Three kinds of client of the digits task; the accurate one (the CNN's) grows from 20% to 60% of traffic.

    A floor no variant of the home reaches is lowered to the best accuracy there (a quickly trained zoo's CNN
    scores 0.87 and its large MLP 0.98, not the full zoo's 0.99): the class still asks for the most accurate
    model, and the report lists the floors used."""
    best = max((c.accuracy or 0.0 for c in candidates), default=1.0)
    return [
        QueryClass("tight", budget_ms=20.0, floor=min(0.95, best), rows=8, share_start=0.4, share_end=0.2),
        QueryClass("cheap", budget_ms=50.0, floor=0.0, rows=8, share_start=0.4, share_end=0.2),
        QueryClass("accurate", budget_ms=400.0, floor=min(0.99, best), rows=16, share_start=0.2, share_end=0.6),
    ]


def core_s_per_query(sim_probe: FleetSim, fraction: float, cores: int) -> float:
    """Busy core-seconds per query of the mix at ``fraction`` of the day (the idle-system picks at their best batch)."""
    shares = [c.share(fraction) for c in sim_probe.classes]
    total = sum(shares)
    core_s = 0.0
    for cls, s in zip(sim_probe.classes, shares, strict=True):
        pick = sim_probe.pick_idle(cls)
        k, service_s = sim_probe.batch_plan(Instance("probe", pick, 1, 0.0), cls.rows, cls.budget_ms)
        core_s += s / total * service_s / k * (pick.variant.threads or cores)
    return core_s


def peak_workers_for(sim_probe: FleetSim, day: Day, config: PolicyConfig, cores: int) -> tuple[float, float]:
    """Busy cores per query/s at the start and end mixes (the idle-system picks at their best batch)."""
    per_qps = [core_s_per_query(sim_probe, fraction, cores) for fraction in (0.0, 0.5, 1.0)]
    return max(per_qps), sum(per_qps) / len(per_qps)


def tracking_bound(sim_probe: FleetSim, day: Day, cores: int, utilization: float, startup_s: float) -> float:
    """Worker-seconds of a clairvoyant fleet that holds, every second, exactly the workers the offered load needs at
    ``utilization`` (bursts included, at the idle-system picks' best batches), each worker it adds billed for
    ``startup_s`` more: what any policy sizing for that utilization pays at least on this day, to compare with the
    target of half static provisioning's cost."""
    fractions = np.linspace(0.0, 1.0, 21)
    per_query = [core_s_per_query(sim_probe, x, cores) for x in fractions]
    times = np.arange(0.0, day.length_s, 1.0)
    need = np.array([day.rate(t) * np.interp(t / day.length_s, fractions, per_query) for t in times])
    workers = need / (cores * utilization)
    return float(workers.sum() + np.clip(np.diff(workers), 0.0, None).sum() * startup_s)


def fleet_policy(args: argparse.Namespace) -> PolicyConfig:
    """The production policy, told the two facts of this fleet's provider it asks for: how long a worker takes to
    start (``vm_startup_s``: the mean of ``STARTUP_S``) and how long an added worker is kept at least
    (``vm_min_lifetime_s``).

    The default minimum lifetime (600 s) is for VMs billed by the minute or hour, whose start-up is minutes. This
    fleet is billed by the second from the request, so keeping an idle worker is pure cost, and giving one back
    that is needed again costs a start-up (billed, with misses meanwhile): keeping it for one start-up at most is
    the break-even rule (ski rental: never worse than twice the best choice made knowing the future). Kept 600 s, the
    workers a burst called for outlived it by most of a compressed day (``--vm-min-lifetime-s 600`` reproduces it).
    For the same reason the fleet is drained back to target below 50% utilization (``vm_low_utilization``) rather
    than the model level's 30%: between the two a worker's idle cores are paid for by the second (2,880 s day,
    60-worker peak: 0.70% misses at 0.513x static-peak's cost at 0.5, 0.73% at 0.522x at 0.45; no flapping).
    """
    return PolicyConfig(
        vm_startup_s=args.vm_startup_s,
        vm_min_lifetime_s=args.vm_min_lifetime_s,
        vm_low_utilization=args.vm_low_utilization,
    )


def run_fleet(args: argparse.Namespace, candidates: list[Candidate]) -> dict:
    classes = fleet_classes(candidates)
    config = fleet_policy(args)
    probe = FleetSim(
        candidates,
        classes,
        Setup("probe", False, False, 0, False),
        arrivals=None,
        length_s=1.0,
        cores=args.cores,
        memory_mb=args.memory_mb,
        config=config,
        tick_s=1.0,
        group=args.group,
    )
    peak_core_s, mean_core_s = peak_workers_for(probe, Day(1, 1, 1), config, args.cores)
    # The day's peak is set so that provisioning for it at the policies' target utilization takes --workers.
    peak_qps = args.workers * args.cores * config.target_utilization / peak_core_s
    day = Day(args.day_s, trough_qps=args.trough_qps, peak_qps=peak_qps)
    grid = np.linspace(0, args.day_s, 2001)
    mean_qps = float(np.mean([day.rate(t) for t in grid]))
    mean_workers = max(1, math.ceil(mean_qps * mean_core_s / (args.cores * config.target_utilization)))
    failures = [(0.40 * args.day_s, "worker"), (0.62 * args.day_s, "zone")]
    setups = [
        Setup("infaas", True, True, max(2, args.start_workers), False),
        Setup("static-peak", False, False, args.workers, True),
        Setup("static-mean", False, False, mean_workers, True),
        Setup("infaas-model-level-only", True, False, mean_workers, True),
    ]
    if args.setups:
        setups = [s for s in setups if s.name in args.setups]
    runs = {}
    for setup in setups:
        sim = FleetSim(
            candidates,
            classes,
            setup,
            arrivals=day,
            length_s=args.day_s,
            cores=args.cores,
            memory_mb=args.memory_mb,
            config=config,
            tick_s=args.tick,
            group=args.group,
            failures=failures,
            max_workers=args.max_workers,
            seed=args.seed,
        )
        runs[setup.name] = sim.run()
        r = runs[setup.name]
        print(
            f"{setup.name}: {r['queries']} queries, misses {r['slo_miss_rate']:.2%}, rejected {r['reject_rate']:.2%}, "
            f"cost ${r['cost_usd']}, peak workers {r['peak_workers']}, {r['decisions_per_minute']} decisions/min, "
            f"{r['simulated_queries_per_wall_s']} q/wall-s ({r['wall_s']} s)",
            flush=True,
        )
    peak_cost = runs.get("static-peak", {}).get("cost_usd")
    static_s = runs.get("static-peak", {}).get("worker_hours", 0.0) * 3600.0
    startup = sum(STARTUP_S) / 2
    bounds = {
        f"at_{u:g}": tracking_bound(probe, day, args.cores, u, startup)
        for u in (config.target_utilization, config.high_utilization)
    }
    return {
        "day": {
            "length_s": args.day_s,
            "trough_qps": args.trough_qps,
            "peak_qps": round(peak_qps, 1),
            "mean_qps": round(mean_qps, 1),
            "bursts": [list(b) for b in day.bursts],
            "classes": [c.__dict__ for c in classes],
            "failures": [{"t_s": t, "what": w} for t, w in failures],
        },
        "fleet": {
            "worker_cores": args.cores,
            "worker_memory_mb": args.memory_mb,
            "peak_provisioned_workers": args.workers,
            "mean_provisioned_workers": mean_workers,
            "tick_s": args.tick,
            "group": args.group,
            "startup_s": list(STARTUP_S),
            "billing": "per second, from the request",
        },
        "policy": {
            "vm_startup_s": config.vm_startup_s,
            "vm_min_lifetime_s": config.vm_min_lifetime_s,
            "target_utilization": config.target_utilization,
            "high_utilization": config.high_utilization,
            "low_utilization": config.low_utilization,
            "vm_low_utilization": config.vm_low_utilization,
        },
        "tracking_bound": {
            "what": " ".join(tracking_bound.__doc__.split(":")[0].split()),
            "worker_s": {k: round(v) for k, v in bounds.items()},
            "vs_static_peak": {k: round(v / static_s, 3) for k, v in bounds.items()} if static_s else None,
        },
        "runs": runs,
        "cost_vs_static_peak": {name: round(r["cost_usd"] / peak_cost, 3) for name, r in runs.items() if peak_cost},
    }


def trace_replay(measured: dict, level: str, samples: int) -> tuple[list[QueryClass], deque, float]:
    """The classes and arrivals ``benchmarks/trace.py`` replayed at ``level`` (a key of ``measured["levels"]``).

    Rebuilt as trace.py built them: the spike at ``level`` × the calibrated capacity, base and step as the recorded
    fractions of it, the same seed, and ``samples`` validation inputs (the draw of each query's input is part of the
    random stream). ``rates_qps`` is rounded to 0.1 q/s, so it is not read; the level's recorded ``queries`` check
    the reconstruction (``validate``).
    """
    from benchmarks.trace import QueryClass as TraceClass
    from benchmarks.trace import Shape, make_trace

    tr = measured["trace"]
    duration = tr["duration_s"]
    spike = float(level) * measured["calibration"]["capacity_qps"]
    s_from, s_to = tr["spike_window_s"]
    shape = Shape(
        duration=duration,
        base=tr["shape"]["base"] * spike,
        step=tr["shape"]["step"] * spike,
        spike=spike,
        spike_from=s_from / duration,
        spike_to=s_to / duration,
        ramp_s=tr.get("spike_ramp_s", 0.0),
    )
    classes = [TraceClass(**c) for c in tr["classes"]]
    trace = make_trace(classes, shape, samples, tr["seed"])
    sim_classes = [QueryClass(c.name, c.budget_ms, c.floor, c.rows, c.share, c.share, c.on_infeasible) for c in classes]
    return sim_classes, deque((a.at_s, a.cls.name) for a in trace), duration


def trace_config(measured: dict) -> PolicyConfig:
    """The policy ``benchmarks/trace.py`` ran with: its recorded thresholds and periods, and the cool-downs it sets
    (``trace.main``; not recorded in trace.json)."""
    p = measured["policy"]
    return PolicyConfig(
        high_utilization=p["high_utilization"],
        target_utilization=p["target_utilization"],
        low_utilization=p["low_utilization"],
        idle_unload_s=15.0,
        up_periods=p["up_periods"],
        down_periods=p["down_periods"],
        cooldown_s=1.5,
        down_after_up_s=6.0,
        vm_up_periods=2,
        vm_down_periods=3,
        vm_cooldown_s=4.0,
        vm_down_after_up_s=10.0,
        drain_timeout_s=10.0,
    )


VALIDATION_TOLERANCE = {"miss_rate_abs": 0.01, "p99_ratio": (0.5, 2.0)}


def trace_host(measured: dict, level: str) -> Host:
    """The host of trace.json's infaas run at ``level`` (``Host``), from what the file recorded; never fitted.

    With the run's CPU on record (trace.py's ``process.cpu_s``: the process's CPU seconds over the replay, every
    thread; ``process.host_cpu_s``: the whole machine's busy CPU seconds over the same time, from /proc/stat;
    ``process.wall_s``): the path's work per query is the process's CPU less its model runs' (each served query at
    its variant's profiled p50 for its rows, ``variants`` in trace.json, times the variant's threads), over every
    query the level offered (the infeasible class is parsed, selected and refused on the same interpreter); the other
    processes' cores are the machine's busy CPU less the process's, over the wall time.

    Files without them (before that field): the path's work is the engine's own measurement of its serving path,
    ``estimates.overhead_ms`` (the median of a query's latency less its worker's time) of the *lowest* level, the
    least contended, one number for every level (a wall time: an upper bound on the path's CPU); the host's other
    load was not recorded, so none is modelled (the load average at the start is no measure of the run's).
    """
    from benchmarks.trace import WORKER_CORES

    cores = int(measured.get("machine", {}).get("cpus") or WORKER_CORES)
    row = measured["levels"][level]
    run = row["setups"]["infaas"]
    process = run.get("process") or {}
    if all(k in process for k in ("cpu_s", "host_cpu_s", "wall_s")):
        rows = {c["name"]: c["rows"] for c in measured["trace"]["classes"]}
        variants = measured["variants"]
        per_rows = max(rows.values())  # trace.py's queries all carry the same rows (``trace.ROWS``)
        runs_ms = sum(
            n * variants[key][f"p50_b{per_rows}_ms"] * (variants[key]["threads"] or WORKER_CORES)
            for key, n in run["served_by"].items()
            if key in variants
        )
        path_ms = max(0.0, (process["cpu_s"] * 1000.0 - runs_ms) / row["queries"])
        other = max(0.0, (process["host_cpu_s"] - process["cpu_s"]) / process["wall_s"])
        source = (
            f"level {level}: process CPU {process['cpu_s']} s less the served runs' profiled {runs_ms / 1000:.2f} s "
            f"over {row['queries']} queries; the machine's other busy CPU over {process['wall_s']} s"
        )
        return Host(cores, round(path_ms, 4), round(other, 3), source)
    lowest = min(measured["levels"], key=float)
    overhead = measured["levels"][lowest]["setups"]["infaas"].get("estimates", {}).get("overhead_ms", 0.0)
    source = f"estimates.overhead_ms of level {lowest} (the engine's median path time); host's other load not recorded"
    return Host(cores, float(overhead), 0.0, source)


def trace_outcome(sim: FleetSim, names: Collection[str]) -> dict:
    """What ``benchmarks/trace.py``'s ``tally`` reports of the classes ``names``, from the simulation's counts: the
    miss rate is late, failed and timed-out queries over all of them (503s and 429s counted apart, not misses), the
    percentiles are of the answered queries' latencies."""
    total = Tally()
    for name in names:
        t = sim.tally[name]
        for f in ("arrived", "in_time", "missed", "failed", "rejected", "timed_out", "shed"):
            setattr(total, f, getattr(total, f) + getattr(t, f))
        total.hist += t.hist
    n = max(1, total.arrived)
    status = {
        "ok": total.in_time,
        "late": total.missed,
        "failed": total.failed,
        "timed-out": total.timed_out,
        "rejected": total.rejected,
        "shed": total.shed,
    }
    return {
        "queries": total.arrived,
        "miss_rate": round((total.missed + total.failed + total.timed_out) / n, 4),
        "reject_rate": round(total.rejected / n, 4),
        "shed_rate": round(total.shed / n, 4),
        "p50_ms": total.p(0.50),
        "p99_ms": total.p(0.99),
        "by_status": {k: v for k, v in status.items() if v},
    }


def validate(args: argparse.Namespace, candidates: list[Candidate]) -> dict:
    """Replay each load level of ``benchmarks/trace.py``'s recorded run (``args.trace_json``) on its setup and host
    (in-process workers of ``WORKER_CORES`` cores, at most the recorded ``deployment.max_workers``; its autoscaler
    periods and statistics window; the machine's cores shared with the serving path's interpreter and the host's
    other work, ``Host`` from ``trace_host``); compare the feasible queries' miss rate and p99, counted as trace.py
    counts them (``trace_outcome``), with the run's at that level."""
    from benchmarks.trace import WORKER_CORES, WORKER_MEMORY_MB
    from infaas.examples.zoo import load_digits_split

    measured = json.loads(Path(args.trace_json).read_text())
    samples = len(load_digits_split()[2])  # trace.py draws each query's input among the zoo's validation set
    config = trace_config(measured)
    lo, hi = VALIDATION_TOLERANCE["p99_ratio"]
    out: dict = {"trace_json": str(args.trace_json), "tolerance": VALIDATION_TOLERANCE, "levels": {}}
    for level, row in measured["levels"].items():
        classes, arrivals, duration = trace_replay(measured, level, samples)
        if len(arrivals) != row["queries"]:
            raise ValueError(f"level {level}: rebuilt {len(arrivals)} queries, trace.json has {row['queries']}")
        # Every query takes the interpreter's time, the infeasible class's too (parsed, selected, refused); what is
        # compared is trace.py's feasible group, its infeasible classes left out.
        infeasible = set(measured.get("infeasible_classes", {}))
        host = trace_host(measured, level)
        sim = FleetSim(
            candidates,
            classes,
            Setup("trace-replay", True, True, 1, False),
            arrivals=arrivals,
            length_s=duration,
            cores=WORKER_CORES,
            memory_mb=WORKER_MEMORY_MB,
            config=config,
            tick_s=0.01,
            group=4,
            model_period_s=0.5,
            vm_period_s=1.5,
            stats_window_s=3.0,
            startup_s=(0.05, 0.2),  # in-process workers start at once
            max_workers=measured.get("deployment", {}).get("max_workers", 4),
            seed=args.seed,
            host=host,
        )
        report = sim.run()
        got = trace_outcome(sim, [c.name for c in classes if c.name not in infeasible])
        want = row["setups"]["infaas"]["feasible"]
        ratio = got["p99_ms"] / want["p99_ms"] if want.get("p99_ms") else 0.0
        out["levels"][level] = {
            "host": host.__dict__,
            "measured": {k: want.get(k) for k in ("queries", "miss_rate", "reject_rate", "shed_rate", "p99_ms")}
            | {"by_status": want.get("by_status")},
            "simulated": got | {"peak_workers": report["peak_workers"]},
            "simulated_by_class": report["by_class"],
            "decisions_by_action": report["decisions_by_action"],
            "miss_rate_within": abs(got["miss_rate"] - want["miss_rate"]) <= VALIDATION_TOLERANCE["miss_rate_abs"],
            "p99_ratio": round(ratio, 3),
            "p99_within": lo <= ratio <= hi,
        }
    out["within_tolerance"] = all(v["miss_rate_within"] and v["p99_within"] for v in out["levels"].values())
    return out


def _provenance(args: argparse.Namespace) -> dict:
    """The code and the host a run read (the simulation is untimed; its wall times depend on the load)."""

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        # Uncommitted changes in what the simulation imports (others' work in progress shares the checkout).
        "dirty_paths": git(
            "status", "--porcelain", "--", "benchmarks/fleet_sim.py", "autoscaler", "infaas"
        ).splitlines(),
        "home": str(args.home),
        "argv": sys.argv[1:],
        "load_average_start": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/T-home"), help="a registered, profiled zoo home")
    parser.add_argument("--workers", type=int, default=1000, help="peak provisioning: the fleet sized for the peak")
    parser.add_argument("--start-workers", type=int, default=4)
    parser.add_argument("--max-workers", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--memory-mb", type=float, default=4096.0)
    parser.add_argument("--day-s", type=float, default=1440.0, help="the compressed day (1440: one minute an hour)")
    parser.add_argument("--trough-qps", type=float, default=20.0)
    parser.add_argument("--tick", type=float, default=1.0)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--setups", nargs="*")
    parser.add_argument(
        "--vm-startup-s",
        type=float,
        default=sum(STARTUP_S) / 2,
        help="the start-up the VM level is told (0: it sizes for the demand now, as before)",
    )
    parser.add_argument(
        "--vm-min-lifetime-s",
        type=float,
        default=STARTUP_S[1],
        help="an added worker's minimum lifetime (default: the longest start-up; see fleet_policy)",
    )
    parser.add_argument(
        "--vm-low-utilization", type=float, default=0.5, help="the VM level's scale-down threshold (see fleet_policy)"
    )
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--validation-only", action="store_true", help="replay trace.json's levels, no fleet day")
    parser.add_argument(
        "--trace-json", type=Path, default=RESULTS / "trace.json", help="the recorded trace.py run to validate against"
    )
    parser.add_argument(
        "--out", type=Path, help="default: results/fleet_sim.json, or fleet_sim_validation.json with --validation-only"
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = RESULTS / ("fleet_sim_validation.json" if args.validation_only else "fleet_sim.json")
    candidates = load_candidates(args.home)
    report: dict = {"what": __doc__, "variants": len(candidates), "provenance": _provenance(args)}
    # Runs of one --seed on one catalog repeat exactly; a home another process writes to changes under them (two
    # 1,000-worker runs ten minutes apart on one home: static-peak 0.26% and 0.25% misses, infaas 4.2% and 1.7%).
    catalog = repr(sorted((c.key, c.variant.profiles) for c in candidates)).encode()
    report["provenance"]["catalog_sha256"] = hashlib.sha256(catalog).hexdigest()[:16]
    if not args.skip_validation:
        started = time.perf_counter()
        report["validation"] = validate(args, candidates)
        report["validation"]["wall_s"] = round(time.perf_counter() - started, 1)
        print("validation:", json.dumps(report["validation"]), flush=True)
    if not args.validation_only:
        report.update(run_fleet(args, candidates))
    report["provenance"]["load_average_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
