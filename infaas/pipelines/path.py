"""The serving path's own time in a pipeline query, as the estimator models it: work measured once, queued for
the interpreter it needs.

A pipeline query spends time that no profile holds: outside its stages (a thread picking it up, the inputs
checked, its arrival written, the DAG's row bookkeeping: ``entry``), around each stage's run (selection, the
hand-over to the instance and back: ``stage``), and each served run takes longer than the profiler's back-to-back
runs (``excess``: the zoo CNN's INT8 run was profiled at p50 2.4 ms and served at 2.8 ms). The first two are
Python in the front end's one process: one thread at a time holds the interpreter, so when queries overlap
their path work waits for it, and the path's time grows with the rate even where every stage has replicas to
spare. So the estimator does not take a path time learnt at each rate (session 7 learnt it from a replay at the
same rate just before each measured one: within +-20% in one run, -73% in the next, where the 30 s window had
not seen what the measured minute did) but the path's *work*, measured once with nothing overlapping
(``measure``: queries served one after another), and queues it in the simulation for ``threads`` interpreters
(``infaas.pipelines.simulator``), so its waiting follows the rate the simulation is asked about.

Only the CPU part of a query's path holds the interpreter: its serving thread's CPU time (``time.thread_time``),
spread over its entry and stages in proportion to their times. The rest -- a thread being woken, a sleep ending
late, the thread descheduled by the host's other work -- is a plain delay that overlapping queries suffer side
by side, not one after another: queued whole, the path measured on a host at load 7 (entry p99 13 ms) made
the bursty benchmark's sample trace (CV² 4: clusters of near-simultaneous queries) wait 86 ms with every stage
at 64 replicas.

``measure`` serves sequential queries through the real path (``serve_pipeline``) and splits each answer
(``split``): entry = the query's latency less its stages' times; stage = a stage's time less its queue wait and
run; excess = the run less its variant's profiled median at the run's batch. The planner takes the same
``ServingPath`` (``infaas.pipelines.planner``), so a plan is judged with the time the path adds, and the plan
document stores it (``to_json``: quantiles, with how it was obtained), so a re-plan and the tuner use the
same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from infaas.catalog import ModelInfo
from infaas.engine import QueryEngine
from infaas.pipelines.serving import PipelineAnswer, serve_pipeline
from infaas.pipelines.spec import PipelineSpec
from infaas.selector import ProfileCurve

QUANTILES = 200  # stored points per sample set: midpoints of 200 equal-probability bins, each drawn equally often


def _samples(values: Iterable[float], what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not out:
        raise ValueError(f"{what}: no samples")
    if not all(np.isfinite(out)):
        raise ValueError(f"{what}: samples must be finite")
    return out


def _aligned(values: Iterable[float], times: tuple[float, ...], what: str) -> tuple[float, ...]:
    """CPU parts, one per time sample, each between 0 and its time."""
    out = _samples(values, what)
    if len(out) != len(times):
        raise ValueError(f"{what}: {len(out)} samples for {len(times)} times")
    if any(c < 0 or c > max(t, 0.0) + 1e-9 for c, t in zip(out, times, strict=True)):
        raise ValueError(f"{what}: each CPU part must lie between 0 and its sample's time")
    return out


def _ranked(times: tuple[float, ...], cpu: tuple[float, ...] | None) -> tuple[list[float], list[float] | None]:
    """``QUANTILES`` samples picked at equal-probability ranks of ``times`` (midpoints), each with its CPU part."""
    order = np.argsort(times, kind="stable")
    picks = order[np.minimum(((np.arange(QUANTILES) + 0.5) / QUANTILES * len(times)).astype(int), len(times) - 1)]
    return (
        [round(float(times[i]), 4) for i in picks],
        None if cpu is None else [round(min(float(cpu[i]), float(times[i])), 4) for i in picks],
    )


@dataclass(frozen=True)
class ServingPath:
    """What the serving path adds to a pipeline query, as samples (ms) drawn per query or per stage visit.

    ``entry`` and ``stage`` are the path's times; ``entry_cpu`` and ``stage_cpu``, aligned sample by sample
    with them, the part of each that is CPU work, queued for ``threads`` interpreters in the simulation (the
    rest is a plain delay; without them the whole time is work). ``excess`` is added to a stage's runs and holds
    its replica, as the run does. ``source`` says how it was obtained (shown with every estimate made with it)."""

    entry: tuple[float, ...]
    stage: Mapping[str, tuple[float, ...]]
    excess: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    threads: int = 1
    source: str = ""
    entry_cpu: tuple[float, ...] | None = None
    stage_cpu: Mapping[str, tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        object.__setattr__(self, "entry", _samples(self.entry, "entry"))
        object.__setattr__(self, "stage", {n: _samples(v, f"stage {n}") for n, v in self.stage.items()})
        object.__setattr__(self, "excess", {n: _samples(v, f"excess {n}") for n, v in self.excess.items()})
        if self.entry_cpu is not None:
            object.__setattr__(self, "entry_cpu", _aligned(self.entry_cpu, self.entry, "entry_cpu"))
        if self.stage_cpu is not None:
            cpu = {n: _aligned(self.stage_cpu[n], v, f"stage_cpu {n}") for n, v in self.stage.items()}
            object.__setattr__(self, "stage_cpu", cpu)

    def draw(self, rng: np.random.Generator, stage: str | None = None) -> tuple[float, float]:
        """One sample of the entry (or of ``stage``'s path): (its time, the CPU part of it), ms."""
        if stage is None:
            times, cpu = self.entry, self.entry_cpu
        else:
            times, cpu = self.stage[stage], (self.stage_cpu or {}).get(stage)
        i = int(rng.integers(len(times)))
        return times[i], times[i] if cpu is None else cpu[i]

    def work_ms(self, visits: Mapping[str, float]) -> float:
        """Mean interpreter work per query when stage ``n`` is reached by a share ``visits[n]`` of queries."""
        entry = self.entry if self.entry_cpu is None else self.entry_cpu
        cpu = self.stage if self.stage_cpu is None else self.stage_cpu
        return float(np.mean(entry)) + sum(
            share * float(np.mean(cpu[n])) for n, share in visits.items() if n in self.stage
        )

    def to_json(self) -> dict[str, Any]:
        """``QUANTILES`` samples of each set at equal-probability ranks (a draw from them keeps the tail), each
        with its CPU part, and how it was obtained."""
        entry, entry_cpu = _ranked(self.entry, self.entry_cpu)
        stages = {n: _ranked(v, (self.stage_cpu or {}).get(n)) for n, v in self.stage.items()}
        out: dict[str, Any] = {
            "entry_ms": entry,
            "stage_ms": {n: times for n, (times, _cpu) in stages.items()},
            "excess_ms": {n: _ranked(v, None)[0] for n, v in self.excess.items()},
            "threads": self.threads,
            "source": self.source,
        }
        if entry_cpu is not None:
            out["entry_cpu_ms"] = entry_cpu
        if self.stage_cpu is not None:
            out["stage_cpu_ms"] = {n: cpu for n, (_times, cpu) in stages.items()}
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ServingPath:
        stage_cpu = raw.get("stage_cpu_ms")
        return cls(
            entry=tuple(raw["entry_ms"]),
            stage={n: tuple(v) for n, v in raw["stage_ms"].items()},
            excess={n: tuple(v) for n, v in raw.get("excess_ms", {}).items()},
            threads=int(raw.get("threads", 1)),
            source=str(raw.get("source", "")),
            entry_cpu=tuple(raw["entry_cpu_ms"]) if "entry_cpu_ms" in raw else None,
            stage_cpu={n: tuple(v) for n, v in stage_cpu.items()} if stage_cpu is not None else None,
        )


@dataclass(frozen=True)
class Split:
    """One answered query's time, split as the estimator models it (ms)."""

    latency: float
    entry: float  # outside every stage
    stage: dict[str, float]  # per stage run: its time less queue and run
    queue: dict[str, float]
    service: dict[str, float]
    batch: dict[str, int]
    variant: dict[str, str]
    cpu: float | None = None  # the serving thread's CPU time for the query, where measured

    def cpu_share(self) -> float:
        """The share of the path's time (entry and stages) that was the serving thread's CPU: 1 unmeasured."""
        total = self.entry + sum(self.stage.values())
        if self.cpu is None or total <= 0:
            return 1.0
        return min(1.0, max(0.0, self.cpu / total))


def split(answer: PipelineAnswer, latency_ms: float, cpu_ms: float | None = None) -> Split:
    """``answer``'s time as entry, per-stage path, queue and run; stages the query did not reach are left out.
    ``cpu_ms``: the serving thread's CPU time for it, where measured."""
    entry = latency_ms
    parts: dict[str, dict[str, Any]] = {"stage": {}, "queue": {}, "service": {}, "batch": {}, "variant": {}}
    for name, stage in answer.stages.items():
        if "variant" not in stage:
            continue
        parts["stage"][name] = stage["stage_ms"] - stage["service_ms"] - stage["queue_ms"]
        parts["queue"][name] = stage["queue_ms"]
        parts["service"][name] = stage["service_ms"]
        parts["batch"][name] = int(stage["batch"])
        parts["variant"][name] = f"{stage['model']}/{stage['variant']}"
        entry -= stage["stage_ms"]
    return Split(latency_ms, entry, **parts, cpu=cpu_ms)


def from_splits(splits: list[Split], curves: Mapping[str, ProfileCurve], source: str, threads: int = 1) -> ServingPath:
    """The path as sampled by ``splits``; ``curves`` per ``model/variant`` served (for the runs' excess)."""
    names = sorted({n for s in splits for n in s.stage})
    measured = all(s.cpu is not None for s in splits)
    return ServingPath(
        entry=tuple(s.entry for s in splits),
        stage={n: tuple(s.stage[n] for s in splits if n in s.stage) for n in names},
        entry_cpu=tuple(max(0.0, s.entry) * s.cpu_share() for s in splits) if measured else None,
        stage_cpu={n: tuple(max(0.0, s.stage[n]) * s.cpu_share() for s in splits if n in s.stage) for n in names}
        if measured
        else None,
        excess={
            n: tuple(
                s.service[n] - curves[s.variant[n]].service_ms(s.batch[n])
                for s in splits
                if n in s.stage and s.variant[n] in curves
            )
            for n in names
            if any(n in s.stage and s.variant[n] in curves for s in splits)
        },
        threads=threads,
        source=source,
    )


def serve_counted(
    engine: QueryEngine,
    spec: PipelineSpec,
    plan: Mapping[str, Any] | None,
    inputs: Mapping[str, Any],
    allowed: Callable[[ModelInfo], bool],
    tenant: str,
    arrived_at: float | None = None,
) -> tuple[PipelineAnswer, float]:
    """``serve_pipeline`` in this thread, with the thread's CPU time (ms) for it: the query's Python work."""
    started = time.thread_time()
    answer = serve_pipeline(engine, spec, plan, inputs, allowed, tenant, arrived_at)
    return answer, (time.thread_time() - started) * 1000.0


def measure(
    engine: QueryEngine,
    spec: PipelineSpec,
    plan: Mapping[str, Any] | None,
    rows: list[Mapping[str, Any]],
    curves: Mapping[str, ProfileCurve],
    *,
    queries: int,
    gap_s: float,
    allowed: Callable[[ModelInfo], bool],
    tenant: str,
) -> ServingPath:
    """The path's work, measured once: ``queries`` queries served one after another through the real path
    (``rows`` cycled as their inputs), each handed to a waiting thread as the front end hands a request (the
    thread's wake-up is part of the path), ``gap_s`` idle between them, so none overlaps another and what each
    spends is its own work, not a wait for another's. Each is timed from when it was due, before the sleep
    that waits for it ends, as a replay or a client times it: the late wake-up of a sleep counts. The serving
    thread's CPU time for each (``serve_counted``) is the part of its path that holds the interpreter."""
    if queries < 100:
        raise ValueError(f"queries must be at least 100 (a p99 of fewer is their maximum), got {queries}")
    if gap_s < 0:
        raise ValueError(f"gap_s must not be negative, got {gap_s}")
    splits = []
    with ThreadPoolExecutor(max_workers=1) as pool:  # handed to a waiting thread, as a front end hands a request
        for i in range(queries):
            due = time.perf_counter() + gap_s
            time.sleep(gap_s)  # timed from when it was due, as an open-loop client times a query
            answer, cpu_ms = pool.submit(
                serve_counted, engine, spec, plan, rows[i % len(rows)], allowed, tenant
            ).result()
            splits.append(split(answer, (time.perf_counter() - due) * 1000.0, cpu_ms))
    source = (
        f"measured once: {queries} queries served one after another through the serving path, "
        f"{gap_s * 1000:g} ms apart, at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    )
    return from_splits(splits, curves, source)


__all__ = ["QUANTILES", "ServingPath", "Split", "from_splits", "measure", "serve_counted", "split"]
