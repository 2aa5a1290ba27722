"""Replay one bursty open-loop trace against three deployments of the example zoo and compare them.

What is real: the four zoo models (trained offline, ``infaas.examples.zoo``), their variants built and
profiled by the real pipeline (registration → ``build_variants`` job → profiler), the real
``QueryEngine`` (selector, candidate cache, live state), real ``LocalWorker``s with ONNX Runtime
sessions, adaptive batching and replicas, and the real autoscaler loop (both levels) and its
``InProcessProvider``. Every latency is measured wall-clock from the query's *scheduled* arrival (so
dispatch lag under load counts) to its answer.

What is simulated: the time scale is compressed (a two-minute trace; autoscaler periods of 0.5 s and
1.5 s instead of 1 s and 10 s), and every "worker" is a ``LocalWorker`` in this process. They all share
this machine's cores: a worker added by the VM-level autoscaler adds *accounted* capacity (its declared
cores are billed from the moment it starts until it is stopped), not physical CPU. Cost is therefore
price table × declared worker core-seconds held, the way a VM bill would be. The same holds for the
fixed deployments: (c)'s workers are billed for the peak but run on the same two cores, so its misses
say little; its cost is the point of comparison.

The trace's rates are given in units of what one core serves of the accurate class's best variant
(from its profile), so the same trace shape exercises the same decisions on a faster or slower machine:
by default the step needs most of one replica and the spike two.

Setups (same trace, run one after the other in one process):

a. ``infaas``: per-query selection by latency budget and accuracy floor, both autoscalers on;
b. ``fixed-accurate``: the most accurate variant, one replica, one worker, for every query;
c. ``fixed-peak``: the fastest variant meeting the highest accuracy floor, with enough replicas
   (and workers) for the peak rate, held for the whole trace.

Run from the repository root: ``python -m benchmarks.trace`` (builds the zoo into ``--zoo`` first if it is
not there, which takes ~2-15 min on two cores; the three setups then ~8 min). ``--home DIR`` keeps the
registered, profiled zoo for the next run.
Writes ``benchmarks/results/trace.json`` and ``trace.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from autoscaler import Autoscaler, PolicyConfig
from autoscaler.providers.inprocess import InProcessProvider
from infaas.catalog import VariantInfo
from infaas.config import Settings
from infaas.engine import Query
from infaas.examples.zoo import TASK, load_zoo
from infaas.live_state import MemoryLiveState
from infaas.registration import RegistrationRequest, register_model
from infaas.selector import ProfileCurve, Requirements
from infaas.services import Services, build_services
from infaas.worker import LocalWorker

log = logging.getLogger("trace")
ROOT = Path(__file__).resolve().parents[1]
WORKER_CORES = 2
WORKER_MEMORY_MB = 2048.0
SAMPLE_S = 0.25
ROWS = 256  # rows per query (clients send mini-batches); INFAAS_MAX_BATCH_PER_QUERY allows 256
PROFILED_BATCH = 64  # the largest batch the variant builds profile
ACCURATE_BUDGET_MS = 100.0  # the latency budget of the class that asks for the highest accuracy floor


# ------------------------------------------------------------------------------------------ the trace


@dataclass(frozen=True)
class QueryClass:
    """A kind of client: its share of the traffic, its latency budget and its accuracy floor."""

    name: str
    share: float
    budget_ms: float
    floor: float
    rows: int  # samples per query: clients send mini-batches


@dataclass(frozen=True)
class Arrival:
    at_s: float
    cls: QueryClass
    sample: int


@dataclass(frozen=True)
class Shape:
    """The offered load: base rate, a step up from 25% to 65% of the trace, a spike inside the step.

    The spike may ramp up (``ramp_s``) instead of jumping: the autoscalers react to measured load (a
    windowed rate, then a few periods of hysteresis), so a zero-time jump far past one replica's capacity
    can only be absorbed by headroom, while a burst that builds over seconds is what they can follow.

    With ``burst_class`` set, the spike is one tenant bursting: the step's traffic keeps its class mix
    and only the extra ``spike - step`` queries/s are of that class. Without it the whole mix scales up.
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
                cls = burst
            else:
                cls = rng.choices(classes, weights)[0]
            out.append(Arrival(t, cls, rng.randrange(samples - cls.rows)))


# -------------------------------------------------------------------------------------- measurements


@dataclass
class Outcome:
    at_s: float
    cls: str
    latency_ms: float
    missed: bool
    accuracy: float | None
    variant: str


@dataclass
class Run:
    """What one setup did over the trace."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, workers, replicas)
    started_wall: float = 0.0  # time.time() when the trace clock started
    decisions: list[dict] = field(default_factory=list)  # the autoscaler's, with trace time t_s
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def summary(self, duration: float, prices: dict[str, float]) -> dict:
        done = [o for o in self.outcomes if o.accuracy is not None]
        per_core_s = prices["cpu-core"] / 3600.0
        worker_core_s = sum(w * WORKER_CORES * SAMPLE_S for _t, w, _r in self.samples)
        latencies = np.array([o.latency_ms for o in self.outcomes]) if self.outcomes else np.zeros(1)
        by_class = {}
        for name in sorted({o.cls for o in self.outcomes}):
            group = [o for o in self.outcomes if o.cls == name]
            by_class[name] = {
                "queries": len(group),
                "slo_miss_rate": round(sum(o.missed for o in group) / len(group), 4),
                "p99_ms": round(float(np.percentile([o.latency_ms for o in group], 99)), 2),
            }
        served: dict[str, int] = {}
        for o in done:
            served[o.variant] = served.get(o.variant, 0) + 1
        return {
            "queries": len(self.outcomes),
            "answered": len(done),
            "slo_miss_rate": round(sum(o.missed for o in self.outcomes) / max(1, len(self.outcomes)), 4),
            "mean_accuracy": round(float(np.mean([o.accuracy for o in done])), 4) if done else None,
            "throughput_qps": round(len(done) / duration, 2),
            "goodput_qps": round(sum(not o.missed for o in done) / duration, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2),
            "worker_core_seconds": round(worker_core_s, 1),
            "cost_usd": round(worker_core_s * per_core_s, 6),
            "max_workers": max((w for _t, w, _r in self.samples), default=0),
            "max_replicas": max((r for _t, _w, r in self.samples), default=0),
            "by_class": by_class,
            "served_by": dict(sorted(served.items(), key=lambda kv: -kv[1])),
        }


def replay(
    trace: list[Arrival],
    inputs: np.ndarray,
    serve: Callable[[Arrival, np.ndarray, float], tuple[str, float | None]],
    run: Run,
    sample: Callable[[], tuple[int, int]],
    threads: int = 48,
) -> None:
    """Open loop: submit each query at its scheduled time whatever the backlog; latency from the schedule."""
    stop = threading.Event()
    run.started_wall = time.time()
    start = time.perf_counter()

    def sampler() -> None:
        while not stop.is_set():
            workers, replicas = sample()
            run.samples.append((time.perf_counter() - start, workers, replicas))
            stop.wait(SAMPLE_S)

    def one(arrival: Arrival) -> None:
        scheduled = start + arrival.at_s
        waited = time.perf_counter() - scheduled
        if waited * 1000.0 > arrival.cls.budget_ms:
            # Every client thread was stuck behind a backlog until past this query's budget: the client
            # gives up without sending it (a miss), as a real one with a timeout would.
            run.add(Outcome(arrival.at_s, arrival.cls.name, waited * 1000.0, True, None, "timed-out"))
            return
        deadline = time.monotonic() + (scheduled + arrival.cls.budget_ms / 1000.0 - time.perf_counter())
        try:
            rows = inputs[arrival.sample : arrival.sample + arrival.cls.rows]
            variant, accuracy = serve(arrival, rows, deadline)
        except Exception as exc:  # a failed query is a missed one
            log.debug("query failed: %s", exc)
            variant, accuracy = "error", None
        latency = (time.perf_counter() - scheduled) * 1000.0
        missed = accuracy is None or latency > arrival.cls.budget_ms or accuracy < arrival.cls.floor
        run.add(Outcome(arrival.at_s, arrival.cls.name, latency, missed, accuracy, variant))

    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(threads) as pool:
        for arrival in trace:
            delay = start + arrival.at_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, arrival)
    stop.set()
    watcher.join()


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
        max_workers=4,
        worker_cores=WORKER_CORES,
        worker_memory_mb=WORKER_MEMORY_MB,
        profile_max_seconds=2.0,
        heartbeat_s=0.25,
    )
    services = build_services(settings)
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
        if all(s in {"ready", "failed"} for s in statuses.values()):
            break
        time.sleep(1.0)
    log.info("models: %s", {m.name: m.status for m in services.metadata.list_models()})
    return services


def ready_variants(services: Services) -> list[VariantInfo]:
    return [v for _m, v in services.metadata.ready_variants() if v.accuracy is not None]


def run_infaas(services: Services, trace: list[Arrival], inputs: np.ndarray, config: PolicyConfig) -> Run:
    """Setup (a): the engine picks a variant per query; both autoscalers run."""
    services.start_serving()
    engine = services.engine
    provider = InProcessProvider(
        services.store, engine.live, memory_budget_mb=WORKER_MEMORY_MB, cores=WORKER_CORES, heartbeat_s=0.25
    )
    scaler = Autoscaler(services, provider=provider, config=config, stats_window_s=3.0)
    accuracy = {v.key: v.accuracy for v in ready_variants(services)}
    run = Run("infaas")

    def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        remaining_ms = max(0.1, (deadline - time.monotonic()) * 1000.0)
        requirements = Requirements(task=TASK, latency_ms=remaining_ms, min_accuracy=arrival.cls.floor)
        how = engine.infer(Query(requirements, {"input": x}, tenant=arrival.cls.name)).served_by
        key = f"{how.model}/{how.variant}"
        return key, accuracy.get(key)

    def sample() -> tuple[int, int]:
        return len(engine.live.workers()), sum(i.replicas for i in engine.live.instances())

    _warm(serve, trace, inputs)
    scaler_started = time.time()
    scaler.start()
    try:
        replay(trace, inputs, serve, run, sample)
    finally:
        scaler.stop()
        engine.workers.stop()  # the next setups run their own workers
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
        if _utc(d.at).timestamp() >= scaler_started  # not an earlier run's, when --home is reused
    ]
    return run


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def run_fixed(
    name: str, services: Services, variant: VariantInfo, workers: int, replicas: int, trace: list[Arrival], inputs
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
    outstanding = [0] * workers
    lock = threading.Lock()
    run = Run(name)

    def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        with lock:  # least-outstanding balancing, as a load balancer in front of fixed replicas would do
            i = min(range(workers), key=lambda k: outstanding[k])
            outstanding[i] += 1
        try:
            pool[i].infer(variant, {"input": x}, deadline)
        finally:
            with lock:
                outstanding[i] -= 1
        return variant.key, variant.accuracy

    _warm(serve, trace, inputs)
    try:
        replay(trace, inputs, serve, run, lambda: (workers, replicas))
    finally:
        for w in pool:
            w.stop()
    return run


def _warm(serve: Callable[[Arrival, np.ndarray, float], tuple[str, float | None]], trace, inputs) -> None:
    """Load what each query class uses before the clock starts (cold loads are not the point here)."""
    seen = {a.cls.name: a for a in trace}
    for arrival in seen.values():
        for _ in range(3):
            try:
                serve(arrival, inputs[: arrival.cls.rows], time.monotonic() + 10.0)
            except Exception:
                log.debug("warm-up query failed", exc_info=True)


# ------------------------------------------------------------------------------------------ reporting


def plot(runs: list[Run], trace: list[Arrival], duration: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.arange(0, math.ceil(duration) + 1)
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    counts, _ = np.histogram([a.at_s for a in trace], bins=bins)
    axes[0].step(bins[:-1], counts, where="post", color="black")
    axes[0].set_ylabel("offered load (qps)")
    for run in runs:
        t = [s[0] for s in run.samples]
        axes[1].step(t, [s[2] for s in run.samples], where="post", label=f"{run.name} replicas")
        axes[1].step(t, [s[1] for s in run.samples], where="post", linestyle="--", label=f"{run.name} workers")
        p99 = []
        for lo in bins[:-1]:
            window = [o.latency_ms for o in run.outcomes if lo <= o.at_s < lo + 1]
            p99.append(np.percentile(window, 99) if window else np.nan)
        axes[2].plot(bins[:-1] + 0.5, p99, label=run.name)
    colours = {
        "add_replica": "tab:green",
        "place": "tab:olive",
        "upgrade": "tab:purple",
        "add_worker": "tab:red",
        "worker_started": "tab:pink",
        "remove_replica": "tab:cyan",
        "downgrade": "tab:brown",
        "unload": "tab:gray",
        "drain_worker": "tab:blue",
        "remove_worker": "navy",
        "undrain": "tab:orange",
    }
    labelled: set[str] = set()
    for run in runs:
        for d in run.decisions:
            colour = colours.get(d["action"], "black")
            for ax in axes:
                ax.axvline(d["t_s"], color=colour, linestyle=":", linewidth=1.0, alpha=0.8)
            if d["action"] not in labelled:
                labelled.add(d["action"])
                axes[0].plot([], [], color=colour, linestyle=":", label=f"{run.name}: {d['action']}")
    if labelled:
        axes[0].legend(fontsize=7, ncol=3, title="autoscaler decisions", title_fontsize=7)
    axes[1].set_ylabel("replicas / workers")
    axes[1].legend(fontsize=7, ncol=3)
    axes[2].set_yscale("log")
    axes[2].set_ylabel("p99 latency (ms), 1 s bins")
    axes[2].set_xlabel("trace time (s)")
    axes[2].legend(fontsize=8)
    fig.suptitle("bursty open-loop trace: infaas vs fixed deployments")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path(tempfile.gettempdir()) / "infaas-zoo")
    parser.add_argument("--quick-zoo", action="store_true", help="train the zoo briefly if it must be built")
    parser.add_argument("--duration", type=float, default=120.0, help="trace length, seconds")
    rate_unit = "in queries/s one core serves with the accurate class's best variant (per profile)"
    parser.add_argument("--base", type=float, default=0.35, help=f"base rate, {rate_unit}")
    parser.add_argument("--step", type=float, default=0.8, help=f"rate after the step up, {rate_unit}")
    parser.add_argument("--spike", type=float, default=1.9, help=f"rate during the spike, {rate_unit}")
    parser.add_argument("--spike-from", type=float, default=0.45, help="spike start, fraction of the trace")
    parser.add_argument("--spike-to", type=float, default=0.6, help="spike end, fraction of the trace")
    parser.add_argument(
        "--burst-class", choices=["tight", "cheap", "accurate"], help="the spike's extra queries are all of this class"
    )
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds the spike takes to build up")
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
    parser.add_argument(
        "--only", choices=["infaas", "fixed-accurate", "fixed-peak"], action="append", help="run only these setups"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("infaas").setLevel(logging.WARNING)

    if not (args.zoo / "zoo.json").exists():
        from infaas.examples.zoo import build_zoo

        build_zoo(args.zoo, quick=args.quick_zoo)
    zoo = load_zoo(args.zoo)
    inputs = np.load(zoo[0].validation_path)["inputs"].astype(np.float32)

    with tempfile.TemporaryDirectory(prefix="infaas-trace-") as scratch:
        services = prepare(args.zoo, args.home or Path(scratch))
        try:
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
            # models meet.
            high_floor = round(((ranked[0].accuracy or 0) + (ranked[1].accuracy or 0)) / 2, 4)
            top_model = ranked[0].model_name
            top_fast = min(
                (v for v in by_model[top_model] if (v.accuracy or 0.0) >= high_floor),
                key=lambda v: ProfileCurve.of(v).service_ms(ROWS),
            )
            classes = [
                QueryClass("tight", 0.25, 10.0, 0.9, ROWS),
                QueryClass("cheap", 0.25, 50.0, 0.0, ROWS),
                QueryClass("accurate", 0.5, ACCURATE_BUDGET_MS, high_floor, ROWS),
            ]
            # Rates are set in units of what one core serves of the top model's best variant (queries of
            # ROWS rows per second, from its profile), so the trace means the same on a fast and on a slow
            # machine: a spike past 1 needs a second replica, on a second core.
            unit_qps = (
                max(
                    max(p.throughput_per_s for p in v.profiles) / max(1, v.threads or WORKER_CORES)
                    for v in by_model[top_model]
                    if (v.accuracy or 0.0) >= high_floor
                )
                / ROWS
            )
            rates = {"base": args.base * unit_qps, "step": args.step * unit_qps, "spike": args.spike * unit_qps}
            shape = Shape(
                args.duration,
                rates["base"],
                rates["step"],
                rates["spike"],
                args.spike_from,
                args.spike_to,
                args.burst_class,
                args.ramp,
            )
            trace = make_trace(classes, shape, len(inputs), args.seed)
            log.info("trace: %d queries over %.0f s; classes %s", len(trace), args.duration, classes)

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
            peak_rows = rates["spike"] * ROWS
            peak_replicas = max(1, math.ceil(peak_rows / (profile.throughput_per_s * config.target_utilization)))
            per_worker = max(1, WORKER_CORES // max(1, top_fast.threads or WORKER_CORES))
            peak_workers = math.ceil(peak_replicas / per_worker)

            setups = {
                "infaas": lambda: run_infaas(services, trace, inputs, config),
                "fixed-accurate": lambda: run_fixed("fixed-accurate", services, most_accurate, 1, 1, trace, inputs),
                "fixed-peak": lambda: run_fixed(
                    "fixed-peak", services, top_fast, peak_workers, peak_replicas, trace, inputs
                ),
            }
            runs = [run() for name, run in setups.items() if not args.only or name in args.only]
        finally:
            services.close()

    prices = dict(Settings().prices)
    report = {
        "what_is_real": __doc__.split("What is simulated")[0].split("What is real: ")[1].strip(),
        "what_is_simulated": "What is simulated" + __doc__.split("What is simulated")[1].split("Setups")[0].rstrip(),
        "trace": {
            "duration_s": args.duration,
            "rates_qps": {k: round(v, 1) for k, v in rates.items()},
            "rates_in_cores_of_the_accurate_variant": {"base": args.base, "step": args.step, "spike": args.spike},
            "one_core_qps": round(unit_qps, 1),
            "spike_window_s": [args.spike_from * args.duration, args.spike_to * args.duration],
            "burst_class": args.burst_class,
            "spike_ramp_s": args.ramp,
            "queries": len(trace),
            "classes": [asdict(c) for c in classes],
            "seed": args.seed,
            "models_too_slow_for_the_accurate_budget": sorted(set(by_model) - set(feasible)),
        },
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
            "infaas": {"description": "per-query selection, model- and VM-level autoscalers on"},
            "fixed-accurate": {"description": f"{most_accurate.key}, 1 replica, 1 worker"},
            "fixed-peak": {
                "description": f"{top_fast.key} (fastest meeting floor {high_floor}), {peak_replicas} replicas on "
                f"{peak_workers} worker(s), sized for the {rates['spike']:.0f} qps × {ROWS} rows peak at "
                f"{config.target_utilization:.0%} of its profiled {profile.throughput_per_s:.0f} rows/s"
            },
        },
        "policy": {
            k: getattr(config, k)
            for k in ("high_utilization", "target_utilization", "low_utilization", "up_periods", "down_periods")
        },
        "prices": prices,
        "worker_cores": WORKER_CORES,
    }
    for run in runs:
        report["setups"][run.name].update(run.summary(args.duration, prices))
    for run in runs:
        if run.name == "infaas":
            by_action: dict[str, int] = {}
            for d in run.decisions:
                by_action[d["action"]] = by_action.get(d["action"], 0) + 1
            report["setups"]["infaas"]["decisions_by_action"] = dict(sorted(by_action.items()))
            report["setups"]["infaas"]["decisions"] = run.decisions
    report["setups"] = {k: v for k, v in report["setups"].items() if "queries" in v}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trace.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, trace, args.duration, args.out / "trace.png")
    for run in runs:
        s = report["setups"][run.name]
        print(
            f"{run.name:15s} by class { {c: v['slo_miss_rate'] for c, v in s['by_class'].items()} }  "
            f"decisions {s.get('decisions_by_action')}"
        )
        print(
            f"{run.name:15s} miss {s['slo_miss_rate']:.2%}  acc {s['mean_accuracy']}  thr {s['throughput_qps']}/s  "
            f"p99 {s['p99_ms']} ms  cost ${s['cost_usd']:.6f}  max workers {s['max_workers']} "
            f"replicas {s['max_replicas']}"
        )


if __name__ == "__main__":
    main()
