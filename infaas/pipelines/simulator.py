"""The estimator: a discrete-event simulation (SimPy) of a pipeline on an arrival trace, InferLine's estimator.

What is modelled, each as the serving path does it:

* Each query walks the DAG: a stage is reached when every stage it reads from was, and each conditional edge
  into it lets the query through with the pass rate measured on validation rows (``infaas.pipelines.scale``),
  drawn per query. The stages it reaches run one after another in the pipeline's order, as the serving path
  runs them (``infaas.pipelines.dag.run_dag``, in the query's thread): two stages that read only the input do
  not overlap, so a query's latency is the sum of its stages', not the longest branch's.
* Each stage is one instance with ``replicas`` sessions and one FIFO, run by the worker's real rules
  (``infaas.worker.instance``): a query that finds a free replica and nobody waiting runs at once, alone;
  otherwise it queues, and one free replica at a time gathers a batch by the instance's pure batching rule
  (``flush_at``: until the batch is full or the oldest has waited one full-batch service time) and takes it
  by ``batch_size``.
* A batch's service time is drawn from the measured profile at its size: log-normal with the profiled p50 as
  median and the profiled p99 as 99th percentile (``ProfileCurve.service_ms``/``tail_ms``, interpolated the
  way the selector reads them), plus ``excess_ms``: what a served run takes beyond the profile at its batch,
  measured on the serving path (a constant or samples; 0 by default). The profiler times runs back to
  back; a served run comes after the core sat idle or ran other work (caches and the predictor cold, a
  sleeping core woken): the zoo CNN's INT8 run was profiled at p50 2.4 / p99 3.3 ms and served at 2.8 / 5.0 ms
  at 10 queries/s, the logistic regression's at 0.006 ms and 0.14 ms. It holds the replica, as the run does.
* The serving path's own time (``infaas.pipelines.path.ServingPath``, measured once with no query overlapping
  another): each query's time outside its stages (``entry``, before its first stage) and around each stage's
  run (``stage``, before the stage's queue, holding no replica). Its CPU part (``entry_cpu``/``stage_cpu``,
  the serving thread's CPU time where measured) is *work for the front end's interpreter*: ``threads`` of
  them (one process: one holds the GIL at a time), FIFO, so a query whose path work finds the interpreter busy
  with another's waits for it; the rest is a plain delay. That wait is what makes the path slower as the rate
  rises with nothing else changed; session 7 instead learnt the path's time from a replay at each rate just
  before the measured one, which was within +-20% in one run and -73% in the next. Without a path
  (``path=None``) a query spends no time outside the stages' queues and runs.

It returns the P99 (and P50) of end-to-end latency, each stage's utilisation (busy replica time over
replica time) and the share of its visits that found no free replica and queued (``queued``): with a batch cap
above 1 a queued visit waits for a batch up to one full-batch service time (38 ms for the zoo CNN's INT8
variant, against a 2.5 ms run), so whether more than 1% of queries queue decides where the P99 lies.

Asked only whether a configuration meets an objective (``over_ms``), it stops as soon as enough queries have
finished later than it that the P99 cannot come back under it (``late_limit``): the same answer as the whole
trace gives, without simulating the rest (the planner's probes, most of which fail).
``benchmarks/fleet_sim.py`` simulates a fleet in ticks with chunks of queries; a pipeline needs
per-query paths and per-query batching, which is why this is its own event model; the two share the batching
rule (both import ``flush_at``/``batch_size``) and read the same profiles.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import simpy

from infaas.pipelines.path import ServingPath
from infaas.pipelines.spec import Arrivals, PipelineSpec
from infaas.selector import ProfileCurve
from infaas.worker.instance import batch_size, flush_at

_Z99 = 2.3263  # standard normal 99th percentile


@dataclass(frozen=True)
class StageConfig:
    """How a stage runs: its variant's profile curve, the largest batch a replica gathers, its replicas."""

    curve: ProfileCurve
    max_batch: int
    replicas: int
    excess_ms: float | tuple[float, ...] = 0.0  # added to each run's profiled time: a constant, or samples


@dataclass(frozen=True)
class SimResult:
    """End-to-end latency percentiles (ms) over the trace's queries, and each stage's utilisation. ``stopped``:
    the run ended once the P99 was known to exceed ``over_ms`` (``p99_ms`` is then ``inf``, the rest covers the
    queries finished by then)."""

    p99_ms: float
    p50_ms: float
    queries: int
    utilisation: dict[str, float]
    latencies_ms: np.ndarray = field(repr=False, compare=False)
    queued: dict[str, float] = field(default_factory=dict)  # per stage: share of its visits that queued
    stopped: bool = False
    interpreter: float = 0.0  # the serving path's interpreters' busy share (0 without a path)

    def miss_rate(self, objective_ms: float) -> float:
        return float(np.mean(self.latencies_ms > objective_ms)) if self.queries else 0.0


def late_limit(queries: int) -> int:
    """How many queries over an objective make the P99 (``np.percentile``'s linear interpolation) exceed it for
    certain: once the value at ``floor(0.99 (n - 1))`` in sorted order is over, so is the interpolated P99."""
    return queries - math.floor(0.99 * (queries - 1))


def arrival_times(arrivals: Arrivals, seed: int = 0) -> np.ndarray:
    """The trace (seconds), or one generated with gamma gaps of the rate and CV² (``burstiness``) asked for:
    CV² = 1 is Poisson, larger is burstier, as InferLine generates its synthetic traces."""
    if arrivals.trace:
        times = np.asarray(arrivals.trace, dtype=np.float64)
        return times - times[0]
    assert arrivals.rate_per_s is not None
    rng = np.random.default_rng(seed)
    count = max(2, int(arrivals.rate_per_s * arrivals.duration_s))
    shape = 1.0 / arrivals.burstiness
    gaps = rng.gamma(shape, arrivals.burstiness / arrivals.rate_per_s, size=count)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


class _Request:
    __slots__ = ("enqueued", "done")

    def __init__(self, enqueued: float, done: simpy.Event) -> None:
        self.enqueued = enqueued
        self.done = done


class _Stage:
    """One instance: replicas, a FIFO, one gathering replica at a time (``infaas.worker.instance.Instance``)."""

    def __init__(self, env: simpy.Environment, config: StageConfig, rng: np.random.Generator) -> None:
        self.env = env
        self.config = config
        self.rng = rng
        self.free = config.replicas
        self.pending: deque[_Request] = deque()
        self.gathering = False
        self.wake: simpy.Event | None = None
        self.busy_s = 0.0
        self.visits = 0
        self.queued = 0

    def submit(self, request: _Request) -> None:
        self.visits += 1
        if self.free and not self.pending:
            self.free -= 1
            self.env.process(self._run([request]))
            return
        self.queued += 1
        self.pending.append(request)
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()
        self._kick()

    def _kick(self) -> None:
        if self.pending and self.free and not self.gathering:
            self.gathering = True
            self.free -= 1
            self.env.process(self._gather())

    def _gather(self):  # type: ignore[no-untyped-def]  # a SimPy process
        curve, cap = self.config.curve, self.config.max_batch
        while True:
            if len(self.pending) >= cap:  # one row each: a full batch is waiting, flush now (as flush_at says)
                break
            at = flush_at([(r.enqueued, 1, None) for r in self.pending], cap, curve)
            if at is None or self.env.now >= at:
                break
            self.wake = self.env.event()
            yield self.wake | self.env.timeout(at - self.env.now)
        taken = batch_size([1] * min(len(self.pending), cap), cap)  # the first ``cap`` decide it
        batch = [self.pending.popleft() for _ in range(taken)]
        self.gathering = False
        yield from self._run(batch)

    def _service_s(self, batch: int) -> float:
        curve = self.config.curve
        median, tail = curve.service_ms(batch), curve.tail_ms(batch)
        sigma = math.log(tail / median) / _Z99 if tail > median > 0 else 0.0
        excess = self.config.excess_ms
        if not isinstance(excess, float | int):
            excess = excess[self.rng.integers(len(excess))]
        return max(0.0, median * math.exp(sigma * self.rng.standard_normal()) + excess) / 1000.0

    def _run(self, batch: list[_Request]):  # type: ignore[no-untyped-def]
        service = self._service_s(len(batch))
        self.busy_s += service
        yield self.env.timeout(service)
        for request in batch:
            request.done.succeed()
        self.free += 1
        self._kick()


def simulate(
    spec: PipelineSpec,
    stages: Mapping[str, StageConfig],
    edge_pass: Mapping[int, float],
    arrivals: np.ndarray,
    *,
    seed: int = 0,
    path: ServingPath | None = None,
    over_ms: float | None = None,
) -> SimResult:
    """Simulate every query of ``arrivals`` (seconds) through the pipeline; latencies from arrival to the last
    stage it reached finishing. ``path``: the serving path's work, queued for its interpreters (see the module
    docstring); none by default. ``over_ms``: stop once the P99 is known to exceed it (``late_limit`` queries
    finished later)."""
    env = simpy.Environment()
    interpreter = simpy.Resource(env, capacity=path.threads) if path is not None else None
    finished = env.event()  # every query done, or enough late ones to decide
    late = [0, late_limit(len(arrivals)), 0]  # late so far, the limit, finished so far
    rng = np.random.default_rng(seed)
    runners = {name: _Stage(env, stages[name], np.random.default_rng([seed, i])) for i, name in enumerate(spec.order)}
    parents = {name: spec.parents(name) for name in spec.order}
    gates = {
        name: [(i, e.source_stage) for i, e in enumerate(spec.edges) if e.target_stage == name and e.when is not None]
        for name in spec.order
    }
    latencies = np.zeros(len(arrivals))
    interpreter_busy = [0.0]

    def path_of() -> list[str]:
        reached: set[str] = set()
        for name in spec.order:
            if not parents[name] <= reached:
                continue
            if all(rng.random() < edge_pass.get(i, 1.0) for i, _source in gates[name]):
                reached.add(name)
        return [n for n in spec.order if n in reached]

    def work(stage: str | None):  # type: ignore[no-untyped-def]  # a SimPy process
        """One draw of the path's time (the entry, or ``stage``'s): its delay, then its CPU part once the
        interpreter is free (FIFO)."""
        if path is None or (stage is not None and stage not in path.stage):
            return
        ms, cpu_ms = path.draw(rng, stage)
        if ms > cpu_ms:
            yield env.timeout((ms - cpu_ms) / 1000.0)
        if cpu_ms <= 0:
            return
        with interpreter.request() as turn:
            yield turn
            interpreter_busy[0] += cpu_ms / 1000.0
            yield env.timeout(cpu_ms / 1000.0)

    def query(index: int, at: float):  # type: ignore[no-untyped-def]
        yield from work(None)
        for name in path_of():  # in ``spec.order``, one at a time, as ``run_dag`` runs them
            yield from work(name)  # selection and the hand-over, holding no replica
            done = env.event()
            runners[name].submit(_Request(env.now, done))
            yield done
        latencies[index] = (env.now - at) * 1000.0
        late[2] += 1
        if over_ms is not None and latencies[index] > over_ms:
            late[0] += 1
        if (late[2] == len(arrivals) or late[0] >= late[1]) and not finished.triggered:
            finished.succeed()

    def source():  # type: ignore[no-untyped-def]
        for index, at in enumerate(arrivals):
            if at > env.now:
                yield env.timeout(at - env.now)
            env.process(query(index, float(at)))

    env.process(source())
    env.run(until=finished if len(arrivals) else None)
    stopped = late[2] < len(arrivals)
    horizon = max(env.now, 1e-9)
    utilisation = {name: r.busy_s / (horizon * stages[name].replicas) for name, r in runners.items()}
    return SimResult(
        p99_ms=math.inf if stopped else float(np.percentile(latencies, 99)),
        p50_ms=float(np.percentile(latencies, 50)),
        queries=len(latencies),
        utilisation=utilisation,
        latencies_ms=latencies,
        queued={name: r.queued / r.visits if r.visits else 0.0 for name, r in runners.items()},
        stopped=stopped,
        interpreter=interpreter_busy[0] / (horizon * path.threads) if path is not None else 0.0,
    )


__all__ = ["SimResult", "StageConfig", "arrival_times", "late_limit", "simulate"]
